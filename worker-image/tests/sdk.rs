//! The SDK against an in-process fake broker: request shapes and the worker's behaviours.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_wire::{ErrorCode, TaskId, error_types};
use sluice_worker::{CancelReason, StepContext, StepError, Worker};
use support::{FakeBroker, config, empty, task};
use tokio::sync::{Notify, mpsc};

const BOUND: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct ChargeInput {
    amount: u64,
}

#[derive(Serialize)]
struct ChargeOutput {
    charged: u64,
    flow: String,
}

type Running = (
    sluice_worker::ShutdownHandle,
    tokio::task::JoinHandle<Result<(), sluice_worker::Error>>,
);

/// Runs the worker in the background; returns its shutdown handle and join handle.
fn spawn(worker: Worker) -> Running {
    let handle = worker.shutdown_handle();
    let join = tokio::spawn(worker.run_until(std::future::pending()));
    (handle, join)
}

/// Shuts the worker down and waits (bounded) for `run_until` to return `Ok`.
async fn stop((handle, join): Running) {
    handle.shutdown();
    tokio::time::timeout(BOUND, join)
        .await
        .expect("worker stops in time")
        .expect("worker task")
        .expect("worker result");
}

fn ok_handler(_ctx: StepContext, _input: Value) -> impl Future<Output = Result<Value, StepError>> {
    std::future::ready(Ok(json!(1)))
}

#[tokio::test]
async fn claims_runs_typed_handler_and_completes() {
    let broker = FakeBroker::start().await;
    let token = tempfile("tok-1");
    let mut charge = task("charge_payment", "charge", json!({"amount": 1999}));
    charge.instance = Some(4);
    charge.id = TaskId::from_parts("shop", "order-1", "charge", Some(4));
    charge.attempt = 2;
    broker.push(charge.clone());

    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let worker = Worker::new(
        config(&broker)
            .with_concurrency(3)
            .with_token_path(&token.path),
    )
    .handler(
        "charge_payment",
        move |ctx: StepContext, input: ChargeInput| {
            let seen = seen_tx.clone();
            async move {
                seen.send((
                    ctx.namespace().to_owned(),
                    ctx.flow_run_name().to_owned(),
                    ctx.step().to_owned(),
                    ctx.instance(),
                    ctx.attempt(),
                    ctx.task_id().to_string(),
                    ctx.worker().to_owned(),
                ))
                .unwrap();
                Ok(ChargeOutput {
                    charged: input.amount,
                    flow: ctx.flow_run_name().to_owned(),
                })
            }
        },
    )
    .handler("refund", ok_handler);
    let running = spawn(worker);

    let state = broker
        .wait_for("the completion", |s| !s.completes.is_empty())
        .await;
    let claim = &state.claims[0];
    assert_eq!(claim.pool, "payments");
    assert_eq!(claim.worker, "worker-0");
    assert_eq!(claim.handlers, vec!["charge_payment", "refund"]);
    assert_eq!(claim.capacity, 3);
    assert_eq!(claim.wait_seconds, 1);
    let complete = &state.completes[0];
    assert_eq!(complete.id, charge.id);
    assert_eq!(complete.attempt, 2);
    assert_eq!(complete.worker, "worker-0");
    assert_eq!(complete.output, json!({"charged": 1999, "flow": "order-1"}));
    assert_eq!(
        seen_rx.recv().await.unwrap(),
        (
            "shop".into(),
            "order-1".into(),
            "charge".into(),
            Some(4),
            2,
            "shop/order-1/charge/4".into(),
            "worker-0".into()
        )
    );
    assert!(
        state
            .authorizations
            .iter()
            .all(|a| a.as_deref() == Some("Bearer tok-1"))
    );

    // The token file rotates: the next request carries the new token.
    std::fs::write(&token.path, "tok-2\n").unwrap();
    broker.push(task("refund", "refund", empty()));
    let state = broker
        .wait_for("the second completion", |s| s.completes.len() == 2)
        .await;
    assert_eq!(
        state.authorizations.last().unwrap().as_deref(),
        Some("Bearer tok-2")
    );
    assert!(state.fails.is_empty());
    stop(running).await;
}

#[tokio::test]
async fn claims_ask_only_for_free_slots() {
    let broker = FakeBroker::start().await;
    broker.push(task("block", "s", empty()));
    let release = Arc::new(Notify::new());
    let gate = Arc::clone(&release);
    let worker = Worker::new(config(&broker).with_concurrency(2)).handler(
        "block",
        move |_ctx: StepContext, _: Value| {
            let gate = Arc::clone(&gate);
            async move {
                gate.notified().await;
                Ok::<_, StepError>(json!("released"))
            }
        },
    );
    let running = spawn(worker);
    let state = broker
        .wait_for("a claim while the task runs", |s| s.claims.len() >= 2)
        .await;
    assert_eq!(state.claims[0].capacity, 2);
    assert_eq!(state.claims[1].capacity, 1, "one slot is busy");
    release.notify_one();
    broker
        .wait_for("the completion", |s| !s.completes.is_empty())
        .await;
    stop(running).await;
}

#[tokio::test]
async fn completion_is_retried_until_acknowledged() {
    let broker = FakeBroker::start().await;
    broker.program(|s| s.complete_errors_left = 2);
    broker.push(task("h", "s", empty()));
    let worker = Worker::new(config(&broker)).handler("h", |_ctx: StepContext, _: Value| async {
        Ok::<_, StepError>(json!({"done": true}))
    });
    let running = spawn(worker);
    // Concurrency 1: the next claim is only sent once the task (and its reporting) is over.
    let state = broker
        .wait_for("the claim after the task", |s| s.claims.len() >= 2)
        .await;
    assert_eq!(state.completes.len(), 3, "two 503s then the ack");
    assert!(state.completes.iter().all(|c| c == &state.completes[0]));
    assert_eq!(state.completes[0].output, json!({"done": true}));
    stop(running).await;
}

#[tokio::test]
async fn stale_attempt_stops_reporting() {
    let broker = FakeBroker::start().await;
    broker.program(|s| s.complete_error = Some(ErrorCode::StaleAttempt));
    broker.push(task("h", "s", empty()));
    let worker = Worker::new(config(&broker)).handler("h", ok_handler);
    let running = spawn(worker);
    let state = broker
        .wait_for("the claim after the task", |s| s.claims.len() >= 2)
        .await;
    assert_eq!(state.completes.len(), 1, "a 409 is not retried");
    assert!(state.fails.is_empty());
    stop(running).await;
}

#[tokio::test]
async fn heartbeat_cancel_cancels_the_context() {
    let broker = FakeBroker::start().await;
    broker.program(|s| s.heartbeat_cancel = true);
    let mut long = task("wait", "approve", empty());
    long.heartbeat_interval_seconds = 1;
    long.attempt = 3;
    broker.push(long.clone());
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&reasons);
    let worker = Worker::new(config(&broker)).handler("wait", move |ctx: StepContext, _: Value| {
        let seen = Arc::clone(&seen);
        async move {
            ctx.cancelled().await;
            seen.lock().unwrap().push(ctx.cancel_reason());
            Err::<Value, _>(ctx.cancellation_error())
        }
    });
    let running = spawn(worker);
    let state = broker
        .wait_for("the cancelled failure", |s| !s.fails.is_empty())
        .await;
    let heartbeat = &state.heartbeats[0];
    assert_eq!(heartbeat.id, long.id);
    assert_eq!(heartbeat.attempt, 3);
    assert_eq!(heartbeat.worker, "worker-0");
    let fail = &state.fails[0];
    assert_eq!(fail.id, long.id);
    assert_eq!(fail.attempt, 3);
    assert_eq!(fail.error.error_type, error_types::CANCELLED);
    assert!(!fail.retryable);
    assert_eq!(
        *reasons.lock().unwrap(),
        vec![Some(CancelReason::Requested)]
    );
    stop(running).await;
}

#[tokio::test]
async fn a_cancel_reaches_the_handler_through_its_held_heartbeat_at_once() {
    let broker = FakeBroker::start().await;
    // An interval of 20 s: a worker that only heartbeats once per interval would notice the cancel after 20 s.
    let mut long = task("wait", "s", empty());
    long.heartbeat_interval_seconds = 20;
    broker.push(long);
    let (cancelled_tx, mut cancelled_rx) = mpsc::unbounded_channel();
    let worker = Worker::new(config(&broker)).handler("wait", move |ctx: StepContext, _: Value| {
        let cancelled = cancelled_tx.clone();
        async move {
            ctx.cancelled().await;
            cancelled.send(Instant::now()).unwrap();
            Err::<Value, _>(ctx.cancellation_error())
        }
    });
    let running = spawn(worker);
    let state = broker
        .wait_for("a held heartbeat", |s| !s.heartbeats.is_empty())
        .await;
    assert_eq!(
        state.heartbeats[0].wait_seconds, 20,
        "the heartbeat asks to be held for one interval"
    );
    let cancel_sent = Instant::now();
    broker.program(|s| s.heartbeat_cancel = true);
    let noticed = tokio::time::timeout(BOUND, cancelled_rx.recv())
        .await
        .expect("the handler's context is cancelled")
        .unwrap();
    let latency = noticed - cancel_sent;
    assert!(
        latency < Duration::from_millis(500),
        "the cancel reached the handler after {latency:?}"
    );
    let state = broker
        .wait_for("the cancelled failure", |s| !s.fails.is_empty())
        .await;
    assert_eq!(state.fails[0].error.error_type, error_types::CANCELLED);
    assert_eq!(state.heartbeats.len(), 1, "one heartbeat was enough");
    stop(running).await;
}

#[tokio::test]
async fn heartbeats_follow_each_other_as_soon_as_one_is_answered() {
    let broker = FakeBroker::start().await;
    // Held for one second each by the fake broker: the next goes out at once, not a second later.
    let mut long = task("wait", "s", empty());
    long.heartbeat_interval_seconds = 1;
    broker.push(long);
    let release = Arc::new(Notify::new());
    let gate = Arc::clone(&release);
    let worker =
        Worker::new(config(&broker)).handler("wait", move |_ctx: StepContext, _: Value| {
            let gate = Arc::clone(&gate);
            async move {
                gate.notified().await;
                Ok::<_, StepError>(json!("done"))
            }
        });
    let running = spawn(worker);
    let started = Instant::now();
    broker
        .wait_for("a fourth heartbeat", |s| s.heartbeats.len() >= 4)
        .await;
    let took = started.elapsed();
    // Three holds of one second plus the first heartbeat's short delay, with no gap between them.
    assert!(
        took < Duration::from_millis(3800),
        "four heartbeats took {took:?}"
    );
    release.notify_one();
    broker
        .wait_for("the completion", |s| !s.completes.is_empty())
        .await;
    stop(running).await;
}

#[tokio::test]
async fn fenced_heartbeat_cancels_and_reports_nothing() {
    let broker = FakeBroker::start().await;
    broker.program(|s| s.heartbeat_error = Some(ErrorCode::StaleAttempt));
    let mut long = task("wait", "s", empty());
    long.heartbeat_interval_seconds = 1;
    broker.push(long);
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&reasons);
    let worker = Worker::new(config(&broker)).handler("wait", move |ctx: StepContext, _: Value| {
        let seen = Arc::clone(&seen);
        async move {
            ctx.cancelled().await;
            seen.lock().unwrap().push(ctx.cancel_reason());
            Ok::<_, StepError>(json!("finished anyway"))
        }
    });
    let running = spawn(worker);
    let state = broker
        .wait_for("the claim after the task", |s| s.claims.len() >= 2)
        .await;
    assert_eq!(state.heartbeats.len(), 1);
    assert!(state.completes.is_empty() && state.fails.is_empty());
    assert_eq!(*reasons.lock().unwrap(), vec![Some(CancelReason::Fenced)]);
    stop(running).await;
}

#[tokio::test]
async fn deadline_cancels_the_context() {
    let broker = FakeBroker::start().await;
    let mut timed = task("wait", "s", empty());
    let deadline = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(300);
    timed.deadline = Some(deadline.to_string());
    broker.push(timed);
    let worker =
        Worker::new(config(&broker)).handler("wait", |ctx: StepContext, _: Value| async move {
            ctx.cancelled().await;
            Err::<Value, _>(ctx.cancellation_error())
        });
    let running = spawn(worker);
    let state = broker
        .wait_for("the deadline failure", |s| !s.fails.is_empty())
        .await;
    assert_eq!(
        state.fails[0].error.error_type,
        error_types::DEADLINE_EXCEEDED
    );
    assert!(state.fails[0].retryable);
    stop(running).await;
}

#[tokio::test]
async fn cancelled_handler_that_ignores_the_signal_is_dropped_after_the_cancel_grace() {
    let broker = FakeBroker::start().await;
    broker.program(|s| s.heartbeat_cancel = true);
    let mut long = task("stubborn", "s", empty());
    long.heartbeat_interval_seconds = 1;
    broker.push(long);
    let mut cfg = config(&broker);
    cfg.cancel_grace = Duration::from_millis(100);
    let worker = Worker::new(cfg).handler("stubborn", |_ctx: StepContext, _: Value| async {
        std::future::pending::<Result<Value, StepError>>().await
    });
    let running = spawn(worker);
    let state = broker
        .wait_for("the cancelled failure", |s| !s.fails.is_empty())
        .await;
    assert_eq!(state.fails[0].error.error_type, error_types::CANCELLED);
    assert!(!state.fails[0].retryable);
    stop(running).await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_then_fails_the_rest_as_retryable() {
    let broker = FakeBroker::start().await;
    broker.push(task("quick", "a", empty()));
    broker.push(task("stuck", "b", empty()));
    let release = Arc::new(Notify::new());
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<StepContext>();
    let quick_release = Arc::clone(&release);
    let quick_started = started_tx.clone();
    let mut cfg = config(&broker).with_concurrency(2);
    cfg.shutdown_grace = Duration::from_millis(500);
    let worker = Worker::new(cfg)
        .handler("quick", move |ctx: StepContext, _: Value| {
            let release = Arc::clone(&quick_release);
            let started = quick_started.clone();
            async move {
                started.send(ctx).unwrap();
                release.notified().await;
                Ok::<_, StepError>(json!("drained"))
            }
        })
        .handler("stuck", move |ctx: StepContext, _: Value| {
            let started = started_tx.clone();
            async move {
                started.send(ctx).unwrap();
                // Ignores cancellation: only the end of the grace period stops it.
                std::future::pending::<Result<Value, StepError>>().await
            }
        });
    let (handle, join) = spawn(worker);
    let mut contexts = Vec::new();
    for _ in 0..2 {
        let ctx = tokio::time::timeout(BOUND, started_rx.recv())
            .await
            .expect("both handlers start")
            .unwrap();
        contexts.push(ctx);
    }
    handle.shutdown();
    release.notify_one();
    let started = Instant::now();
    tokio::time::timeout(BOUND, join)
        .await
        .expect("worker stops in time")
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the grace period is honoured"
    );

    let state = broker.snapshot();
    assert_eq!(state.claims.len(), 1, "no claim after the shutdown");
    assert_eq!(state.claims[0].capacity, 2);
    assert_eq!(state.completes.len(), 1);
    assert_eq!(state.completes[0].output, json!("drained"));
    assert_eq!(state.fails.len(), 1);
    let stuck = contexts.iter().find(|c| c.handler() == "stuck").unwrap();
    assert_eq!(&state.fails[0].id, stuck.task_id());
    assert_eq!(
        state.fails[0].error.error_type,
        error_types::WORKER_SHUTDOWN
    );
    assert!(state.fails[0].retryable);
    assert!(stuck.is_cancelled());
    assert_eq!(stuck.cancel_reason(), Some(CancelReason::Shutdown));
    let quick = contexts.iter().find(|c| c.handler() == "quick").unwrap();
    assert!(!quick.is_cancelled());
}

#[tokio::test]
async fn shutdown_while_idle_abandons_the_long_poll() {
    let broker = FakeBroker::start().await;
    let mut cfg = config(&broker);
    cfg.wait_seconds = 30;
    let worker = Worker::new(cfg).handler("h", ok_handler);
    let running = spawn(worker);
    broker
        .wait_for("the long poll", |s| !s.claims.is_empty())
        .await;
    let started = Instant::now();
    stop(running).await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn broker_errors_are_backed_off_and_survived() {
    let broker = FakeBroker::start().await;
    broker.program(|s| s.claim_errors_left = 3);
    broker.push(task("h", "s", empty()));
    let worker = Worker::new(config(&broker)).handler("h", ok_handler);
    let running = spawn(worker);
    let state = broker
        .wait_for("the completion", |s| !s.completes.is_empty())
        .await;
    // Three 503s, then the claim that got the task (and perhaps the next long poll already).
    assert_eq!(state.claim_errors_left, 0);
    assert!(state.claims.len() >= 4, "{}", state.claims.len());
    stop(running).await;
}

#[tokio::test]
async fn handler_errors_invalid_input_and_panics_are_reported() {
    let broker = FakeBroker::start().await;
    broker.push(task("charge", "declined", json!({"amount": 0})));
    broker.push(task("charge", "bad-input", json!({"amount": "lots"})));
    broker.push(task("charge", "flaky", json!({"amount": 7})));
    broker.push(task("panics", "p", empty()));
    broker.push(task("nobody", "unknown", empty()));
    let worker = Worker::new(config(&broker).with_concurrency(5))
        .handler(
            "charge",
            |_ctx: StepContext, input: ChargeInput| async move {
                if input.amount == 0 {
                    return Err(StepError::fatal("CardDeclined", "nothing to charge"));
                }
                // `?` on any error is a retryable failure.
                Err(std::io::Error::other("gateway timeout"))?;
                Ok(json!(input.amount))
            },
        )
        .handler("panics", |_ctx: StepContext, input: Value| async move {
            let n = input["n"].as_u64().expect("bug in handler");
            Ok::<_, StepError>(json!(n))
        });
    let running = spawn(worker);
    let state = broker
        .wait_for("five failures", |s| s.fails.len() == 5)
        .await;
    let by_step = |step: &str| {
        state
            .fails
            .iter()
            .find(|f| f.id.as_str().ends_with(&format!("/{step}")))
            .unwrap_or_else(|| panic!("no failure for {step}"))
            .clone()
    };
    let declined = by_step("declined");
    assert_eq!(declined.error.error_type, "CardDeclined");
    assert!(!declined.retryable);
    let bad = by_step("bad-input");
    assert_eq!(bad.error.error_type, error_types::INVALID_INPUT);
    assert!(!bad.retryable);
    let flaky = by_step("flaky");
    assert_eq!(flaky.error.error_type, error_types::ERROR);
    assert_eq!(flaky.error.message, "gateway timeout");
    assert!(flaky.retryable);
    let panicked = by_step("p");
    assert_eq!(panicked.error.error_type, error_types::HANDLER_PANICKED);
    assert!(panicked.error.message.contains("bug in handler"));
    assert!(panicked.retryable);
    // A task for a handler this worker does not serve (a broker bug) is failed, not dropped.
    let unknown = by_step("unknown");
    assert_eq!(unknown.error.error_type, error_types::UNKNOWN_HANDLER);
    assert!(!unknown.retryable);
    stop(running).await;
}

#[tokio::test]
async fn misconfigured_workers_do_not_start() {
    let broker = FakeBroker::start().await;
    let no_handlers = Worker::new(config(&broker));
    assert!(matches!(
        no_handlers.run_until(async {}).await,
        Err(sluice_worker::Error::NoHandlers)
    ));
    let twice = Worker::new(config(&broker))
        .handler("h", ok_handler)
        .handler("h", ok_handler);
    assert!(matches!(
        twice.run_until(async {}).await,
        Err(sluice_worker::Error::DuplicateHandler(name)) if name == "h"
    ));
    let zero = Worker::new(config(&broker))
        .concurrency(0)
        .handler("h", ok_handler);
    assert!(matches!(
        zero.run_until(async {}).await,
        Err(sluice_worker::Error::InvalidConfig { .. })
    ));
}

/// A temporary file removed on drop.
struct TempFile {
    path: std::path::PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn tempfile(contents: &str) -> TempFile {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("sluice-worker-test-{}-{n}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    TempFile { path }
}
