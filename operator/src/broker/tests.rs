//! The broker's HTTP rules, exercised through its router with an in-memory sink (request shapes and status
//! codes; the persistence behind the sink is tested with the FlowRun status writer on a real API server).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_wire::{FlowRunRef, Task, TaskId};
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::Broker;
use super::auth::{AuthError, Authenticator, TrustAll, WorkerIdentity};
use super::queue::QueuedTask;
use super::sink::{Claimed, Outcome, Recorded, Report, ResultSink, SinkError, TaskRef};

/// What the scripted sink does when the broker asks it to load a run.
type OnLoad = Box<dyn Fn(&TaskRef) + Send>;

/// A sink that records every report and answers from a script (default: Applied).
#[derive(Default)]
struct ScriptedSink {
    answers: Mutex<Vec<Result<Recorded, SinkError>>>,
    reports: Mutex<Vec<Report>>,
    claims: Mutex<Vec<Claimed>>,
    notify: Mutex<Option<mpsc::UnboundedSender<Report>>>,
    /// What loading a run does (as the status writer adopts the run's running attempts), and the runs loaded.
    on_load: Mutex<Option<OnLoad>>,
    loaded: Mutex<Vec<TaskRef>>,
}

impl ResultSink for Arc<ScriptedSink> {
    fn record(&self, report: Report) -> BoxFuture<'static, Result<Recorded, SinkError>> {
        self.reports.lock().unwrap().push(report.clone());
        if let Some(tx) = self.notify.lock().unwrap().as_ref() {
            let _ = tx.send(report);
        }
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop()
            .unwrap_or(Ok(Recorded::Applied));
        Box::pin(async move { answer })
    }

    fn claimed(&self, claims: Vec<Claimed>) {
        self.claims.lock().unwrap().extend(claims);
    }

    fn load(&self, task: &TaskRef) -> BoxFuture<'static, ()> {
        self.loaded.lock().unwrap().push(task.clone());
        if let Some(on_load) = self.on_load.lock().unwrap().as_ref() {
            on_load(task);
        }
        Box::pin(async {})
    }
}

/// Authenticates the token `pool-<name>` as the pod `w1` of that pool in namespace `ns`; anything else is
/// refused.
struct PoolTokens;

impl Authenticator for PoolTokens {
    fn authenticate(
        &self,
        token: Option<&str>,
    ) -> BoxFuture<'static, Result<WorkerIdentity, AuthError>> {
        let result = match token.and_then(|t| t.strip_prefix("pool-")) {
            Some(pool) => Ok(WorkerIdentity {
                namespace: Some("ns".into()),
                pod: Some("w1".into()),
                pool: Some(pool.to_owned()),
            }),
            None => Err(AuthError::Unauthorized("no valid token".into())),
        };
        Box::pin(async move { result })
    }
}

fn queued(step: &str, attempt: u32, pool: &str) -> QueuedTask {
    QueuedTask {
        task: Task {
            id: TaskId::from_parts("ns", "fr", step, None),
            attempt,
            handler: "h".into(),
            input: json!({"n": 1}),
            deadline: None,
            heartbeat_interval_seconds: 1,
            flow_run: FlowRunRef {
                namespace: "ns".into(),
                name: "fr".into(),
                uid: "uid".into(),
            },
            step: step.into(),
            instance: None,
        },
        pool: format!("ns/{pool}"),
        timeout: None,
        heartbeat_timeout: Duration::from_millis(300),
    }
}

fn broker_with(auth: impl Authenticator) -> (Broker, Arc<ScriptedSink>) {
    let sink = Arc::new(ScriptedSink::default());
    let broker = Broker::new(Arc::new(sink.clone()), Arc::new(auth));
    broker.set_ready(true);
    (broker, sink)
}

async fn post(
    broker: &Broker,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = Request::post(path).header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let response = broker
        .router()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

fn claim_body(pool: &str, wait: u32) -> Value {
    json!({"pool": pool, "worker": "w1", "handlers": ["h"], "capacity": 2, "waitSeconds": wait})
}

#[tokio::test]
async fn not_ready_answers_503() {
    let (broker, _) = broker_with(TrustAll);
    broker.set_ready(false);
    let (status, body) = post(&broker, "/v1/claim", None, claim_body("ns/p", 0)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "unavailable");
}

#[tokio::test]
async fn malformed_and_out_of_bounds_claims_are_400() {
    let (broker, _) = broker_with(TrustAll);
    let (status, body) = post(&broker, "/v1/claim", None, json!({"pool": "ns/p"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "badRequest");
    let (status, body) = post(&broker, "/v1/claim", None, claim_body("ns/p", 999)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["message"].as_str().unwrap().contains("waitSeconds"),
        "{body}"
    );
    let (status, body) = post(&broker, "/v1/claim", None, claim_body("p", 0)).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "unqualified pool without auth: {body}"
    );
}

#[tokio::test]
async fn long_poll_returns_a_task_offered_while_waiting() {
    let (broker, sink) = broker_with(TrustAll);
    let waiting = {
        let broker = broker.clone();
        tokio::spawn(async move { post(&broker, "/v1/claim", None, claim_body("ns/p", 10)).await })
    };
    // Give the poll a chance to start waiting; correctness doesn't depend on it (an offer before the wait is
    // found by the first look), only which path is exercised.
    tokio::task::yield_now().await;
    broker.offer([queued("a", 1, "p")]);
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the long poll should return once a task is offered")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tasks"][0]["step"], "a");
    assert_eq!(body["tasks"][0]["attempt"], 1);
    assert_eq!(
        sink.claims.lock().unwrap().len(),
        1,
        "the claim is passed on for the batched write"
    );
}

#[tokio::test]
async fn empty_poll_returns_an_empty_list() {
    let (broker, _) = broker_with(TrustAll);
    broker.offer([queued("a", 1, "other")]);
    let (status, body) = post(&broker, "/v1/claim", None, claim_body("ns/p", 0)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tasks"], json!([]));
}

#[tokio::test]
async fn completion_is_acked_after_persisting_and_repeats_are_duplicates() {
    let (broker, sink) = broker_with(TrustAll);
    broker.offer([queued("a", 1, "p")]);
    post(&broker, "/v1/claim", None, claim_body("ns/p", 0)).await;
    let done = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w1", "output": {"ok": true}});
    let (status, body) = post(&broker, "/v1/tasks/complete", None, done.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["duplicate"], false);
    assert_eq!(
        sink.reports.lock().unwrap()[0].outcome,
        Outcome::Completed(json!({"ok": true}))
    );
    // The queue forgot the task; the sink (the status) knows the attempt already succeeded.
    sink.answers.lock().unwrap().push(Ok(Recorded::Duplicate));
    let (status, body) = post(&broker, "/v1/tasks/complete", None, done).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["duplicate"], true);
}

#[tokio::test]
async fn stale_attempts_get_409_without_touching_status() {
    let (broker, sink) = broker_with(TrustAll);
    broker.offer([queued("a", 2, "p")]);
    post(&broker, "/v1/claim", None, claim_body("ns/p", 0)).await;
    let late = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w0", "output": 1});
    let (status, body) = post(&broker, "/v1/tasks/complete", None, late).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "staleAttempt");
    assert!(sink.reports.lock().unwrap().is_empty());
    let hb = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w0"});
    let (status, _) = post(&broker, "/v1/tasks/heartbeat", None, hb).await;
    assert_eq!(status, StatusCode::CONFLICT);
    // When the queue no longer knows the task, the sink's verdict decides.
    sink.answers
        .lock()
        .unwrap()
        .push(Err(SinkError::Stale("attempt 3 exists".into())));
    let gone = json!({"id": "ns/fr/b", "attempt": 1, "worker": "w0", "error": {"type": "Boom", "message": "x"}, "retryable": true});
    let (status, body) = post(&broker, "/v1/tasks/fail", None, gone).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["code"], "staleAttempt");
}

#[tokio::test]
async fn while_runs_load_a_heartbeat_for_an_unknown_attempt_loads_its_run_instead_of_being_refused()
{
    let (broker, sink) = broker_with(TrustAll);
    let adopting = broker.clone();
    *sink.on_load.lock().unwrap() = Some(Box::new(move |_task: &TaskRef| {
        adopting.adopt_running([(queued("a", 1, "p"), "w1".to_owned())]);
    }));
    let hb = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w1"});

    broker.set_loading(true);
    let (status, body) = post(&broker, "/v1/tasks/heartbeat", None, hb.clone()).await;
    assert_eq!(
        (status, body["cancel"].clone()),
        (StatusCode::OK, json!(false)),
        "{body}"
    );
    assert_eq!(
        sink.loaded
            .lock()
            .unwrap()
            .iter()
            .map(|t| (t.namespace.as_str(), t.flow_run.as_str()))
            .collect::<Vec<_>>(),
        [("ns", "fr")],
        "the heartbeat's run was loaded once"
    );

    // Once everything is loaded, an attempt the queue does not know is refused without loading anything.
    broker.set_loading(false);
    let unknown = json!({"id": "ns/fr/b", "attempt": 1, "worker": "w1"});
    let (status, _) = post(&broker, "/v1/tasks/heartbeat", None, unknown).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(sink.loaded.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_heartbeat_for_a_queued_attempt_claims_it_for_that_worker() {
    // After a restart the status may show an attempt Ready whose worker had claimed it (the claim was not
    // written yet): that worker keeps it, and it is not handed out a second time.
    let (broker, sink) = broker_with(TrustAll);
    broker.offer([queued("a", 1, "p")]);
    let hb = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w1"});
    let (status, body) = post(&broker, "/v1/tasks/heartbeat", None, hb).await;
    assert_eq!(
        (status, body["cancel"].clone()),
        (StatusCode::OK, json!(false)),
        "{body}"
    );
    let claims = sink.claims.lock().unwrap().clone();
    assert_eq!(
        claims
            .iter()
            .map(|c| (c.task.step.as_str(), c.attempt, c.worker.as_str()))
            .collect::<Vec<_>>(),
        [("a", 1, "w1")]
    );
    let (_, body) = post(&broker, "/v1/claim", None, claim_body("ns/p", 0)).await;
    assert_eq!(body["tasks"], json!([]), "handed out again: {body}");
    // An older attempt's heartbeat is still fenced.
    broker.offer([queued("b", 2, "p")]);
    let old = json!({"id": "ns/fr/b", "attempt": 1, "worker": "w1"});
    let (status, _) = post(&broker, "/v1/tasks/heartbeat", None, old).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn heartbeat_answers_cancel() {
    let (broker, _) = broker_with(TrustAll);
    broker.offer([queued("a", 1, "p")]);
    post(&broker, "/v1/claim", None, claim_body("ns/p", 0)).await;
    let hb = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w1"});
    let (status, body) = post(&broker, "/v1/tasks/heartbeat", None, hb.clone()).await;
    assert_eq!(
        (status, body["cancel"].clone()),
        (StatusCode::OK, json!(false))
    );
    broker.cancel(&TaskId::new("ns/fr/a"));
    let (_, body) = post(&broker, "/v1/tasks/heartbeat", None, hb).await;
    assert_eq!(body["cancel"], true);
}

#[tokio::test]
async fn callers_only_touch_their_own_pool() {
    let (broker, sink) = broker_with(PoolTokens);
    broker.offer([queued("a", 1, "p")]);
    let (status, body) = post(&broker, "/v1/claim", None, claim_body("p", 0)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = post(&broker, "/v1/claim", Some("pool-q"), claim_body("p", 0)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = post(&broker, "/v1/claim", Some("pool-p"), claim_body("p", 0)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tasks"].as_array().unwrap().len(), 1);
    let report = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w1", "output": null});
    let (status, _) = post(
        &broker,
        "/v1/tasks/complete",
        Some("pool-q"),
        report.clone(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a pod of pool q may not complete pool p's task"
    );
    assert!(sink.reports.lock().unwrap().is_empty());
    let (status, _) = post(&broker, "/v1/tasks/complete", Some("pool-p"), report).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_finished_task_is_still_reported_only_by_its_own_pool() {
    let (broker, sink) = broker_with(PoolTokens);
    broker.offer([queued("a", 1, "p")]);
    let (status, _) = post(&broker, "/v1/claim", Some("pool-p"), claim_body("p", 0)).await;
    assert_eq!(status, StatusCode::OK);
    let report = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w1", "output": null});
    let (status, _) = post(
        &broker,
        "/v1/tasks/complete",
        Some("pool-p"),
        report.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The queue forgot the task; a worker of another pool is refused all the same, before the sink is asked.
    let (status, body) = post(
        &broker,
        "/v1/tasks/complete",
        Some("pool-q"),
        report.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = post(
        &broker,
        "/v1/tasks/heartbeat",
        Some("pool-q"),
        json!({"id": "ns/fr/a", "attempt": 1, "worker": "w1"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(sink.reports.lock().unwrap().len(), 1);
    // Its own pool's repeated report still reaches the sink, which acknowledges it again.
    sink.answers.lock().unwrap().push(Ok(Recorded::Duplicate));
    let (status, body) = post(&broker, "/v1/tasks/complete", Some("pool-p"), report).await;
    assert_eq!(
        (status, body["duplicate"].clone()),
        (StatusCode::OK, json!(true))
    );
}

#[tokio::test]
async fn a_token_bound_to_a_pod_speaks_only_under_that_pods_name() {
    let (broker, sink) = broker_with(PoolTokens);
    broker.offer([queued("a", 1, "p")]);
    let mut claim = claim_body("p", 0);
    claim["worker"] = json!("w2");
    let (status, body) = post(&broker, "/v1/claim", Some("pool-p"), claim).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("pod w1"),
        "{body}"
    );
    let (status, body) = post(&broker, "/v1/claim", Some("pool-p"), claim_body("p", 0)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["tasks"].as_array().unwrap().len(), 1, "w1 claimed it");
    // Another pod's token cannot heartbeat or report as w1 ... (PoolTokens' pods are all w1: name w2 instead)
    let as_w2 = |body: Value| {
        let mut body = body;
        body["worker"] = json!("w2");
        body
    };
    let hb = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w1"});
    let (status, _) = post(
        &broker,
        "/v1/tasks/heartbeat",
        Some("pool-p"),
        as_w2(hb.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let done = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w1", "output": 1});
    let (status, _) = post(
        &broker,
        "/v1/tasks/complete",
        Some("pool-p"),
        as_w2(done.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let failed = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w1",
        "error": {"type": "Boom", "message": "x"}, "retryable": true});
    let (status, _) = post(&broker, "/v1/tasks/fail", Some("pool-p"), as_w2(failed)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(sink.reports.lock().unwrap().is_empty());
    // ... while the pod itself can.
    let (status, _) = post(&broker, "/v1/tasks/heartbeat", Some("pool-p"), hb).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(&broker, "/v1/tasks/complete", Some("pool-p"), done).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn silent_workers_are_released_once_as_lost() {
    let (broker, sink) = broker_with(TrustAll);
    let (tx, mut rx) = mpsc::unbounded_channel();
    *sink.notify.lock().unwrap() = Some(tx);
    broker.offer([queued("a", 1, "p")]);
    post(&broker, "/v1/claim", None, claim_body("ns/p", 0)).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let detector = {
        let broker = broker.clone();
        tokio::spawn(async move {
            broker
                .run_loss_detector(async {
                    let _ = stop_rx.await;
                })
                .await
        })
    };
    let report = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a silent attempt should be released within its heartbeat timeout")
        .unwrap();
    assert_eq!((report.attempt, report.outcome), (1, Outcome::Lost));
    // The late answer of the lost worker is refused.
    let late = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w1", "output": 1});
    sink.answers
        .lock()
        .unwrap()
        .push(Err(SinkError::Stale("released".into())));
    let (status, _) = post(&broker, "/v1/tasks/complete", None, late).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let _ = stop_tx.send(());
    detector.await.unwrap();
    let lost = sink
        .reports
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.outcome == Outcome::Lost)
        .count();
    assert_eq!(lost, 1, "released exactly once");
}

#[tokio::test]
async fn pool_metrics_endpoint_serves_queue_depth_for_keda() {
    let (broker, _) = broker_with(TrustAll);
    broker.offer([
        queued("a", 1, "p"),
        queued("b", 1, "p"),
        queued("c", 1, "other"),
    ]);
    let (status, _) = post(
        &broker,
        "/v1/claim",
        None,
        json!({"pool": "ns/p", "worker": "w1", "handlers": ["h"], "capacity": 1, "waitSeconds": 0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let get = |path: &str| {
        let broker = broker.clone();
        let req = Request::get(path).body(Body::empty()).unwrap();
        async move {
            let response = broker.router().oneshot(req).await.unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (status, body) = get("/v1/pools/ns/p/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["queueDepth"], 1);
    assert_eq!(body["inFlight"], 1);
    // The claim registered its worker, and the finished poll left it idle and not polling.
    let workers = broker.workers("ns", "p");
    assert_eq!(workers.len(), 1);
    assert_eq!(
        (
            workers[0].name.as_str(),
            workers[0].in_flight,
            workers[0].polling
        ),
        ("w1", 1, false)
    );
    broker.set_ready(false);
    let (status, _) = get("/v1/pools/ns/p/metrics").await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "only the leader knows the queue"
    );
}

#[tokio::test]
async fn a_claim_names_its_namespace_when_no_token_does() {
    let (broker, _) = broker_with(TrustAll);
    broker.offer([queued("a", 1, "p")]);
    let mut body = claim_body("p", 0);
    body["namespace"] = json!("ns");
    let (status, body) = post(&broker, "/v1/claim", None, body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tasks"].as_array().unwrap().len(), 1);

    // With a token, the token's namespace wins and another one is refused.
    let (broker, _) = broker_with(PoolTokens);
    let mut body = claim_body("p", 0);
    body["namespace"] = json!("elsewhere");
    let (status, body) = post(&broker, "/v1/claim", Some("pool-p"), body).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("namespace"),
        "{body}"
    );
}

#[tokio::test]
async fn claims_observe_how_long_attempts_waited() {
    let sink = Arc::new(ScriptedSink::default());
    let histogram = prometheus_client::metrics::histogram::Histogram::new([0.001, 1.0, 10.0]);
    let broker =
        Broker::with_dispatch_histogram(Arc::new(sink), Arc::new(TrustAll), histogram.clone());
    broker.set_ready(true);
    broker.offer([queued("a", 1, "p"), queued("b", 1, "p")]);
    let (status, body) = post(&broker, "/v1/claim", None, claim_body("ns/p", 0)).await;
    assert_eq!(
        (status, body["tasks"].as_array().unwrap().len()),
        (StatusCode::OK, 2)
    );
    let mut text = String::new();
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register("dispatch", "test", histogram);
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(text.contains("dispatch_count 2"), "{text}");
}

/// Waits (at most 5 s) until `condition` holds; panics naming `what` otherwise.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A long poll of worker `worker` for handler `h` of pool `ns/p`, in the background; it answers its status,
/// body and how long it took.
fn spawn_poll(
    broker: &Broker,
    worker: &str,
    wait: u32,
) -> tokio::task::JoinHandle<(StatusCode, Value, Duration)> {
    let broker = broker.clone();
    let body = json!({"pool": "ns/p", "worker": worker, "handlers": ["h"], "capacity": 1, "waitSeconds": wait});
    tokio::spawn(async move {
        let started = Instant::now();
        let (status, body) = post(&broker, "/v1/claim", None, body).await;
        (status, body, started.elapsed())
    })
}

fn claimed_by(sink: &ScriptedSink) -> Vec<String> {
    sink.claims
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.worker.clone())
        .collect()
}

#[tokio::test]
async fn one_offer_wakes_exactly_one_of_many_waiting_polls() {
    let (broker, sink) = broker_with(TrustAll);
    let polls: Vec<_> = (0..5)
        .map(|i| spawn_poll(&broker, &format!("w{i}"), 1))
        .collect();
    wait_until("five waiting polls", || {
        broker.waiting_polls("ns", "p") == 5
    })
    .await;

    // A task for a handler none of them serves wakes nobody.
    let mut other = queued("x", 1, "p");
    other.task.handler = "g".into();
    broker.offer([other]);
    assert_eq!(broker.poll_wakeups(), 0);

    broker.offer([queued("a", 1, "p")]);
    wait_until("one poll to claim the task", || {
        !sink.claims.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(broker.poll_wakeups(), 1, "one offer, one wake-up");
    assert_eq!(
        broker.waiting_polls("ns", "p"),
        4,
        "the other polls keep waiting"
    );
    let mut handed_out = 0;
    for poll in polls {
        let (status, body, took) = poll.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        match body["tasks"].as_array().unwrap().len() {
            0 => assert!(
                took >= Duration::from_millis(900),
                "an empty poll returned after {took:?}, before its 1 s wait"
            ),
            n => handed_out += n,
        }
    }
    assert_eq!(handed_out, 1);
    assert_eq!(broker.poll_wakeups(), 1, "timeouts wake nobody else");
    assert_eq!(broker.waiting_polls("ns", "p"), 0);
}

#[tokio::test]
async fn waiting_polls_are_served_oldest_first() {
    let (broker, sink) = broker_with(TrustAll);
    let mut polls = Vec::new();
    for (i, worker) in ["first", "second", "third"].into_iter().enumerate() {
        polls.push(spawn_poll(&broker, worker, 1));
        wait_until(&format!("{worker} to wait"), || {
            broker.waiting_polls("ns", "p") == i + 1
        })
        .await;
    }
    broker.offer([queued("a", 1, "p")]);
    wait_until("a claim", || sink.claims.lock().unwrap().len() == 1).await;
    broker.offer([queued("b", 1, "p")]);
    wait_until("a second claim", || sink.claims.lock().unwrap().len() == 2).await;
    assert_eq!(claimed_by(&sink), ["first", "second"]);
    let (_, body, _) = polls.pop().unwrap().await.unwrap();
    assert_eq!(body["tasks"], json!([]), "the youngest poll timed out");
}

#[tokio::test]
async fn closing_the_broker_answers_waiting_polls_and_held_heartbeats_with_503() {
    let (broker, _) = broker_with(TrustAll);
    let mut task = queued("a", 1, "p");
    task.heartbeat_timeout = Duration::from_secs(20);
    broker.offer([task]);
    post(&broker, "/v1/claim", None, claim_body("ns/p", 0)).await;
    let poll = spawn_poll(&broker, "w2", 10);
    let heartbeat = spawn_heartbeat(&broker, 10);
    wait_until("a waiting poll and a held heartbeat", || {
        broker.waiting_polls("ns", "p") == 1 && broker.held_heartbeats() == 1
    })
    .await;
    broker.set_ready(false);
    let (status, _, took) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the poll is answered")
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (status, _, _) = tokio::time::timeout(Duration::from_secs(5), heartbeat)
        .await
        .expect("the heartbeat is answered")
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// A heartbeat of attempt 1 of `ns/fr/a` by `w1` asking to be held `wait` seconds, in the background; it
/// answers its status, body and how long it took.
fn spawn_heartbeat(
    broker: &Broker,
    wait: u32,
) -> tokio::task::JoinHandle<(StatusCode, Value, Duration)> {
    let broker = broker.clone();
    let body = json!({"id": "ns/fr/a", "attempt": 1, "worker": "w1", "waitSeconds": wait});
    tokio::spawn(async move {
        let started = Instant::now();
        let (status, body) = post(&broker, "/v1/tasks/heartbeat", None, body).await;
        (status, body, started.elapsed())
    })
}

#[tokio::test]
async fn a_held_heartbeat_is_answered_within_100ms_of_a_cancel() {
    type Cancel = fn(&Broker);
    let sources: [(&str, Cancel); 2] = [
        ("Broker::cancel", |b| b.cancel(&TaskId::new("ns/fr/a"))),
        ("retain_flow_run", |b| {
            b.retain_flow_run("ns", "fr", |_, _| false);
        }),
    ];
    for (source, cancel) in sources {
        let (broker, _) = broker_with(TrustAll);
        let mut task = queued("a", 1, "p");
        task.heartbeat_timeout = Duration::from_secs(20);
        broker.offer([task]);
        post(&broker, "/v1/claim", None, claim_body("ns/p", 0)).await;
        let heartbeat = spawn_heartbeat(&broker, 5);
        wait_until("the heartbeat to be held", || broker.held_heartbeats() == 1).await;
        let cancelled_at = Instant::now();
        cancel(&broker);
        let (status, body, _) = tokio::time::timeout(Duration::from_secs(5), heartbeat)
            .await
            .unwrap_or_else(|_| panic!("{source}: the held heartbeat was not answered"))
            .unwrap();
        let latency = cancelled_at.elapsed();
        assert_eq!(
            (status, &body["cancel"]),
            (StatusCode::OK, &json!(true)),
            "{source}"
        );
        assert!(
            latency < Duration::from_millis(100),
            "{source}: answered {latency:?} after the cancel"
        );
        assert_eq!(broker.held_heartbeats(), 0);
    }
}

#[tokio::test]
async fn held_heartbeats_keep_their_attempt_alive() {
    let (broker, sink) = broker_with(TrustAll);
    let (tx, mut rx) = mpsc::unbounded_channel();
    *sink.notify.lock().unwrap() = Some(tx);
    // Heartbeat timeout 300 ms: a heartbeat asking to be held 1 s is held 150 ms at most.
    broker.offer([queued("a", 1, "p")]);
    post(&broker, "/v1/claim", None, claim_body("ns/p", 0)).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let detector = {
        let broker = broker.clone();
        tokio::spawn(async move {
            broker
                .run_loss_detector(async {
                    let _ = stop_rx.await;
                })
                .await
        })
    };
    // A worker that sends the next heartbeat as soon as one is answered, for four heartbeat timeouts.
    let started = Instant::now();
    let mut heartbeats = 0;
    while started.elapsed() < Duration::from_millis(1200) {
        let (status, body, took) = spawn_heartbeat(&broker, 1).await.unwrap();
        assert_eq!(
            (status, &body["cancel"]),
            (StatusCode::OK, &json!(false)),
            "{body}"
        );
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(300),
            "held {took:?}: more than 100 ms, less than the 300 ms heartbeat timeout"
        );
        heartbeats += 1;
    }
    assert!(heartbeats >= 4, "{heartbeats} heartbeats");
    assert!(
        sink.reports.lock().unwrap().is_empty(),
        "an attempt with held heartbeats was declared lost"
    );
    // Silence now: the detector, which was running all along, releases it.
    let report = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the silent attempt is released")
        .unwrap();
    assert_eq!(report.outcome, Outcome::Lost);
    let _ = stop_tx.send(());
    detector.await.unwrap();
}
