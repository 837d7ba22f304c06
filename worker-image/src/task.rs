//! The life of one claimed attempt: run the handler, heartbeat, honour cancel and deadline, report the result
//! until the broker acknowledges it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sluice_wire::{
    CompleteRequest, FailRequest, HeartbeatRequest, Task, TaskError, TaskId, error_types,
};
use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, warn};

use crate::backoff::Backoff;
use crate::client::BrokerClient;
use crate::config::Config;
use crate::context::{CancelReason, StepContext};
use crate::error::{StepError, chain};
use crate::handler::ErasedHandler;

/// How long after the start of an attempt its first heartbeat goes out.
const FIRST_HEARTBEAT_DELAY: Duration = Duration::from_millis(200);

/// What a running attempt shares with the worker loop.
pub(crate) struct TaskEnv {
    pub(crate) client: BrokerClient,
    pub(crate) config: Arc<Config>,
    /// Cancelled when the shutdown grace period has run out: stop at once and fail as retryable.
    pub(crate) force_stop: CancellationToken,
}

/// How the handler ended.
enum Outcome {
    /// It returned (or panicked).
    Finished(Result<Result<Value, StepError>, JoinError>),
    /// It was dropped after a cancellation it did not honour in time.
    Abandoned(CancelReason),
}

/// The report to send.
enum Report {
    Complete(Value),
    Fail(TaskError, bool),
}

/// Runs one attempt from claim to acknowledged report.
pub(crate) async fn run_task(
    env: Arc<TaskEnv>,
    handler: Option<Arc<dyn ErasedHandler>>,
    task: Task,
) {
    let span = tracing::info_span!(
        "task",
        id = %task.id,
        attempt = task.attempt,
        handler = %task.handler,
    );
    run_attempt(&env, handler, task).instrument(span).await;
}

async fn run_attempt(env: &TaskEnv, handler: Option<Arc<dyn ErasedHandler>>, mut task: Task) {
    let Some(handler) = handler else {
        warn!("no handler registered for this task");
        let error = StepError::fatal(
            error_types::UNKNOWN_HANDLER,
            format!(
                "worker {} has no handler {:?}",
                env.config.worker_name, task.handler
            ),
        );
        send_report(env, &task, Report::Fail(error.to_task_error(), false)).await;
        return;
    };
    let input = std::mem::take(&mut task.input);
    let ctx = StepContext::detached(&task, env.config.worker_name.clone());
    debug!("handler starting");
    let outcome = supervise(env, &task, &ctx, handler.call(ctx.clone(), input)).await;
    if ctx.cancel_reason() == Some(CancelReason::Fenced) {
        info!("attempt fenced by the broker; not reporting");
        return;
    }
    let report = match outcome {
        Outcome::Finished(Ok(Ok(output))) => Report::Complete(output),
        Outcome::Finished(Ok(Err(error))) => {
            info!(%error, retryable = error.is_retryable(), "handler failed");
            Report::Fail(error.to_task_error(), error.is_retryable())
        }
        Outcome::Finished(Err(join_error)) => {
            let message = panic_message(join_error);
            error!(message, "handler panicked");
            let error = StepError::retryable(message).with_type(error_types::HANDLER_PANICKED);
            Report::Fail(error.to_task_error(), true)
        }
        Outcome::Abandoned(reason) => {
            warn!(?reason, "handler dropped after cancellation");
            let error = reason.to_step_error();
            Report::Fail(error.to_task_error(), error.is_retryable())
        }
    };
    send_report(env, &task, report).await;
}

/// Runs the handler future in its own tokio task (so a panic is caught), next to heartbeats, the deadline and
/// the shutdown deadline.
async fn supervise(
    env: &TaskEnv,
    task: &Task,
    ctx: &StepContext,
    future: crate::handler::BoxFuture<Result<Value, StepError>>,
) -> Outcome {
    let mut handle = tokio::spawn(future);
    let stop = async {
        let reason = tokio::select! {
            () = env.force_stop.cancelled() => CancelReason::Shutdown,
            () = sleep_until_deadline(ctx.deadline()) => CancelReason::DeadlineExceeded,
            reason = heartbeats(env, task) => reason,
        };
        ctx.cancel(reason);
        if reason != CancelReason::Shutdown {
            // Give the handler a moment to notice and return its own answer.
            tokio::select! {
                () = tokio::time::sleep(env.config.cancel_grace) => {}
                () = env.force_stop.cancelled() => {}
            }
        }
        reason
    };
    tokio::select! {
        result = &mut handle => Outcome::Finished(result),
        reason = stop => {
            handle.abort();
            Outcome::Abandoned(reason)
        }
    }
}

/// Heartbeats until the broker asks to cancel or fences the attempt. Each heartbeat asks the broker to hold it
/// for one interval (a long poll that the broker answers at once on a cancel), and the next one goes out as
/// soon as it is answered, so a cancel reaches the handler within a round trip. Heartbeats never go out more
/// often than one per interval, so a broker that answers at once (an error, or one that predates held
/// heartbeats) sees the plain cadence of one per interval.
async fn heartbeats(env: &TaskEnv, task: &Task) -> CancelReason {
    let interval_seconds = task.heartbeat_interval_seconds.max(1);
    let interval = Duration::from_secs(interval_seconds.into());
    let request = HeartbeatRequest {
        id: task.id.clone(),
        attempt: task.attempt,
        worker: env.config.worker_name.clone(),
        wait_seconds: interval_seconds,
    };
    // The claim counts as heard of: the first heartbeat waits a moment, so handlers that finish at once cost
    // none, yet a cancel right after the start still arrives well within a second.
    let mut next = tokio::time::Instant::now() + interval.min(FIRST_HEARTBEAT_DELAY);
    loop {
        tokio::time::sleep_until(next).await;
        next = tokio::time::Instant::now() + interval;
        match env.client.heartbeat(&request).await {
            Ok(answer) if answer.cancel => {
                info!("broker asked to cancel");
                return CancelReason::Requested;
            }
            Ok(_) => {}
            Err(error) if error.is_fenced() => {
                warn!(error = %chain(&error), "heartbeat refused: attempt fenced");
                return CancelReason::Fenced;
            }
            Err(error) => warn!(error = %chain(&error), "heartbeat failed"),
        }
    }
}

async fn sleep_until_deadline(deadline: Option<SystemTime>) {
    match deadline {
        Some(deadline) => {
            let left = deadline
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(left).await;
        }
        None => std::future::pending().await,
    }
}

/// Sends the report until the broker acknowledges it (or fences the attempt).
async fn send_report(env: &TaskEnv, task: &Task, mut report: Report) {
    let mut backoff = Backoff::new(env.config.backoff_initial, env.config.backoff_max);
    let worker = env.config.worker_name.clone();
    loop {
        let result = match &report {
            Report::Complete(output) => {
                let request = CompleteRequest {
                    id: task.id.clone(),
                    attempt: task.attempt,
                    worker: worker.clone(),
                    output: output.clone(),
                };
                env.client.complete(&request).await
            }
            Report::Fail(error, retryable) => {
                let request = FailRequest {
                    id: task.id.clone(),
                    attempt: task.attempt,
                    worker: worker.clone(),
                    error: error.clone(),
                    retryable: *retryable,
                };
                env.client.fail(&request).await
            }
        };
        match result {
            Ok(ack) => {
                debug!(duplicate = ack.duplicate, "report acknowledged");
                return;
            }
            Err(error) if error.is_fenced() => {
                info!(error = %chain(&error), "report refused: attempt fenced");
                return;
            }
            Err(error) if error.status() == Some(413) && matches!(report, Report::Complete(_)) => {
                warn!(error = %chain(&error), "output too large for the broker");
                report = too_large(&task.id);
            }
            Err(error) if error.status() == Some(400) => {
                // Our request is malformed: repeating it cannot help. The broker will release the attempt
                // when its heartbeats stop.
                error!(error = %chain(&error), "report rejected as malformed; giving up");
                return;
            }
            Err(error) => {
                let delay = backoff.next_delay();
                warn!(error = %chain(&error), ?delay, "report failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn too_large(id: &TaskId) -> Report {
    let error = StepError::fatal(
        error_types::OUTPUT_TOO_LARGE,
        format!("the output of {id} is larger than the broker accepts"),
    );
    Report::Fail(error.to_task_error(), false)
}

fn panic_message(error: JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .map(|message| format!("handler panicked: {message}"))
            .unwrap_or_else(|| "handler panicked".to_owned()),
        Err(error) => format!("handler task ended abnormally: {error}"),
    }
}
