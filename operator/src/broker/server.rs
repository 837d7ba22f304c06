//! The broker's HTTP shell: axum handlers around the in-memory [`TaskQueue`], the [`ResultSink`] that
//! persists results, and the [`Authenticator`] that names the caller.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use prometheus_client::metrics::histogram::Histogram;
use sluice_wire::{
    Ack, CLAIM_PATH, COMPLETE_PATH, ClaimRequest, ClaimResponse, CompleteRequest, ErrorBody,
    ErrorCode, FAIL_PATH, FailRequest, HEARTBEAT_PATH, HeartbeatRequest, HeartbeatResponse,
    MAX_ERROR_MESSAGE_BYTES, MAX_WAIT_SECONDS, TaskId, truncate_message,
};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::auth::{AuthError, Authenticator, WorkerIdentity};
use super::queue::{Fenced, LostAttempt, Offer, PoolDemand, QueuedTask, TaskQueue, WorkerInfo};
use super::sink::{Claimed, Outcome, Recorded, Report, ResultSink, SinkError, TaskRef};
use super::waiters::{HeldHeartbeats, PollWaiters};

/// Largest request body the broker reads. Step outputs are capped far lower by the engine (64 KiB by default);
/// this only keeps a misbehaving worker from making the operator buffer without bound.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Path of the queue-depth endpoint of one pool, shaped for KEDA's `metrics-api` scaler:
/// `GET /v1/pools/{namespace}/{name}/metrics` answers [`PoolMetrics`] (`{"queueDepth": n, "inFlight": n,
/// "oldestWaitingSeconds": n}`; use `valueLocation: queueDepth`). It needs no token (it reveals counts only)
/// and answers 503 on a replica that does not lead.
pub const POOL_METRICS_PATH: &str = "/v1/pools/{namespace}/{name}/metrics";

/// The body of [`POOL_METRICS_PATH`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolMetrics {
    /// Steps queued for the pool and not yet claimed.
    pub queue_depth: u32,
    /// Steps workers of the pool are running.
    pub in_flight: u32,
    /// Age in seconds of the oldest queued step (0 when none is queued).
    pub oldest_waiting_seconds: u64,
}

/// The broker: shared by the HTTP handlers and the FlowRun controller that feeds it.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

struct Shared {
    /// The queue and the requests waiting on it, under one lock: a request registers in the same critical
    /// section in which it found nothing to do, so no wake-up falls in between.
    state: Mutex<Inner>,
    sink: Arc<dyn ResultSink>,
    auth: Arc<dyn Authenticator>,
    /// False until this replica leads.
    ready: AtomicBool,
    /// True while the runs are still being loaded after this replica began to lead.
    loading: AtomicBool,
    /// Where claims report how long their attempts waited in the queue.
    dispatch_latency: Option<Histogram>,
}

/// What the broker's lock guards.
#[derive(Default)]
struct Inner {
    queue: TaskQueue,
    /// Long polls waiting for a task, per pool, oldest first.
    polls: PollWaiters,
    /// Heartbeats held until their attempt is cancelled.
    heartbeats: HeldHeartbeats,
}

impl Inner {
    /// Wakes one waiting poll per handler of `pool` with queued tasks: a poll that was woken but went away
    /// before it claimed passes its wake-up on, so the task it was woken for is not left waiting for the
    /// next offer.
    fn pass_on_wakeup(&mut self, pool: &str) {
        for (handler, _) in self.queue.queued_handlers(pool) {
            self.polls.wake_one(pool, &handler);
        }
    }
}

/// The qualified name of a pool: namespace and name.
fn pool_key(namespace: &str, pool: &str) -> String {
    format!("{namespace}/{pool}")
}

impl Broker {
    /// A broker that persists through `sink` and authenticates with `auth`. It answers 503 until
    /// [`Broker::set_ready`].
    pub fn new(sink: Arc<dyn ResultSink>, auth: Arc<dyn Authenticator>) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(Inner::default()),
                sink,
                auth,
                ready: AtomicBool::new(false),
                loading: AtomicBool::new(false),
                dispatch_latency: None,
            }),
        }
    }

    /// A broker like [`Broker::new`] that observes each claimed attempt's time in the queue (from being queued,
    /// that is recorded as Ready in status, to a worker's claim) in `dispatch_latency` (seconds).
    pub fn with_dispatch_histogram(
        sink: Arc<dyn ResultSink>,
        auth: Arc<dyn Authenticator>,
        dispatch_latency: Histogram,
    ) -> Self {
        let mut broker = Self::new(sink, auth);
        if let Some(shared) = Arc::get_mut(&mut broker.shared) {
            shared.dispatch_latency = Some(dispatch_latency);
        }
        broker
    }

    /// The worker-facing HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route(CLAIM_PATH, post(claim))
            .route(HEARTBEAT_PATH, post(heartbeat))
            .route(COMPLETE_PATH, post(complete))
            .route(FAIL_PATH, post(fail))
            .route(POOL_METRICS_PATH, get(pool_metrics))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// Opens or closes the broker to workers (leadership gained or lost). Closing answers every waiting long
    /// poll and held heartbeat with 503 at once.
    pub fn set_ready(&self, ready: bool) {
        self.shared.ready.store(ready, Ordering::SeqCst);
        if !ready {
            // Under the lock, after the store: a request either registered before (and is woken here) or
            // checks readiness after (and sees false).
            let mut inner = self.inner();
            inner.polls.wake_all();
            inner.heartbeats.wake_all();
        }
    }

    /// Marks whether the runs are still being loaded (after a restart or a lease hand-over). Meanwhile a
    /// heartbeat for an attempt the queue does not know loads its run instead of being refused.
    pub fn set_loading(&self, loading: bool) {
        self.shared.loading.store(loading, Ordering::SeqCst);
    }

    /// Whether the runs are still being loaded.
    pub fn is_loading(&self) -> bool {
        self.shared.loading.load(Ordering::SeqCst)
    }

    /// Whether the broker serves workers.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the index consistent (every method finishes its own changes
        // before anything can panic), so a poisoned lock is taken over rather than propagated.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues attempts already recorded in status. Each newly queued task wakes the one oldest long poll that
    /// serves its handler. `pool` of each task must be the qualified `namespace/name` of its WorkerPool.
    pub fn offer(&self, tasks: impl IntoIterator<Item = QueuedTask>) {
        let now = Timestamp::now();
        let mut guard = self.inner();
        let inner = &mut *guard;
        for task in tasks {
            let id = task.task.id.clone();
            let outcome = inner.queue.offer(task, now);
            if outcome == Offer::Replaced {
                // The older attempt's worker, if any, learns at once that it is fenced.
                inner.heartbeats.wake(&id);
            }
            if matches!(outcome, Offer::Queued | Offer::Replaced)
                && let Some((pool, handler)) = inner.queue.route(&id)
            {
                inner.polls.wake_one(pool, handler);
            }
        }
    }

    /// Records attempts that status shows running (after a restart), with a fresh heartbeat window.
    pub fn adopt_running(&self, tasks: impl IntoIterator<Item = (QueuedTask, String)>) {
        let now = Timestamp::now();
        let mut inner = self.inner();
        for (task, worker) in tasks {
            inner.queue.adopt_running(task, &worker, now);
        }
    }

    /// Drops the queued tasks of a FlowRun that `keep` rejects and asks workers of its claimed ones to stop,
    /// answering their held heartbeats at once.
    pub fn retain_flow_run(
        &self,
        namespace: &str,
        name: &str,
        keep: impl FnMut(&TaskId, u32) -> bool,
    ) -> Vec<TaskId> {
        let mut inner = self.inner();
        let cancelled = inner.queue.retain_flow_run(namespace, name, keep);
        for id in &cancelled {
            inner.heartbeats.wake(id);
        }
        cancelled
    }

    /// Asks the worker of one task to stop, answering its held heartbeats at once.
    pub fn cancel(&self, id: &TaskId) {
        let mut inner = self.inner();
        if inner.queue.cancel(id) {
            inner.heartbeats.wake(id);
        }
    }

    /// Demand of a pool (qualified `namespace/name`).
    pub fn demand(&self, namespace: &str, pool: &str) -> PoolDemand {
        self.inner()
            .queue
            .demand(&pool_key(namespace, pool), Timestamp::now())
    }

    /// The pools of `namespace` with a known task or worker, by name.
    pub fn pools(&self, namespace: &str) -> std::collections::BTreeSet<String> {
        let prefix = format!("{namespace}/");
        self.inner()
            .queue
            .pools()
            .into_iter()
            .filter_map(|p| p.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// The workers of a pool heard of (qualified by `namespace`), with the attempts each holds.
    pub fn workers(&self, namespace: &str, pool: &str) -> Vec<WorkerInfo> {
        self.inner().queue.workers(&pool_key(namespace, pool))
    }

    /// Forgets a worker of a pool whose pod is gone.
    pub fn forget_worker(&self, namespace: &str, pool: &str, worker: &str) {
        self.inner()
            .queue
            .forget_worker(&pool_key(namespace, pool), worker);
    }

    /// Releases, as retryable failures, the attempts held by worker `worker` of pool `namespace/pool` whose pod
    /// is gone, and returns them (each is released once: a second call returns nothing).
    pub async fn release_worker(
        &self,
        namespace: &str,
        pool: &str,
        worker: &str,
    ) -> Vec<LostAttempt> {
        let lost = {
            let mut inner = self.inner();
            let lost = inner.queue.take_worker(&pool_key(namespace, pool), worker);
            wake_released(&mut inner, &lost);
            lost
        };
        self.release(lost.clone()).await;
        lost
    }

    /// Declares silent attempts lost until `shutdown` resolves. Each lost attempt is persisted as a retryable
    /// failure once (invariant 7); a release the sink could not persist is tried again.
    pub async fn run_loss_detector(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let lost = {
                let mut inner = self.inner();
                let lost = inner.queue.take_lost(Timestamp::now());
                wake_released(&mut inner, &lost);
                lost
            };
            self.release(lost).await;
            let next = self.inner().queue.next_loss_check();
            let wait = next
                .map(|t| {
                    let d = t.duration_since(Timestamp::now());
                    Duration::try_from(d).unwrap_or(Duration::ZERO)
                })
                .unwrap_or(Duration::from_secs(1))
                .clamp(Duration::from_millis(50), Duration::from_secs(1));
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn release(&self, lost: Vec<LostAttempt>) {
        for attempt in lost {
            let Some(task) = TaskRef::parse(&attempt.id) else {
                continue;
            };
            warn!(task = %attempt.id, attempt = attempt.attempt, worker = %attempt.worker, "worker lost, releasing attempt");
            let report = Report {
                task,
                attempt: attempt.attempt,
                worker: attempt.worker.clone(),
                outcome: Outcome::Lost,
            };
            match self.shared.sink.record(report).await {
                Ok(_) | Err(SinkError::Stale(_)) | Err(SinkError::Unknown(_)) => {
                    self.inner().queue.finish(&attempt.id, attempt.attempt);
                }
                Err(SinkError::Unavailable(e)) => {
                    // Put it back as claimed-and-silent so the next round tries again.
                    warn!(task = %attempt.id, error = %e, "could not persist a lost attempt yet");
                    self.inner().queue.retry_release(attempt);
                }
            }
        }
    }
}

/// Answers the held heartbeats of released attempts: their workers are fenced (409) at once.
fn wake_released(inner: &mut Inner, lost: &[LostAttempt]) {
    for attempt in lost {
        inner.heartbeats.wake(&attempt.id);
    }
}

#[cfg(test)]
impl Broker {
    /// Long polls of pool `namespace/pool` waiting in line.
    pub(crate) fn waiting_polls(&self, namespace: &str, pool: &str) -> usize {
        self.inner().polls.waiting(&pool_key(namespace, pool))
    }

    /// Wake-ups delivered to long polls so far.
    pub(crate) fn poll_wakeups(&self) -> u64 {
        self.inner().polls.wakeups()
    }

    /// Heartbeats held now.
    pub(crate) fn held_heartbeats(&self) -> usize {
        self.inner().heartbeats.len()
    }
}

/// A broker error answer.
#[derive(Debug)]
struct ApiError(ErrorBody);

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(ErrorBody::new(code, message))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match e {
            AuthError::Unauthorized(_) => ErrorCode::Unauthorized,
            AuthError::Forbidden(_) => ErrorCode::Forbidden,
            AuthError::Unavailable(_) => ErrorCode::Unavailable,
        };
        Self::new(code, e.to_string())
    }
}

impl From<Fenced> for ApiError {
    fn from(e: Fenced) -> Self {
        let code = match e {
            Fenced::UnknownTask(_) => ErrorCode::UnknownTask,
            Fenced::StaleAttempt { .. } | Fenced::WrongWorker { .. } => ErrorCode::StaleAttempt,
        };
        Self::new(code, e.to_string())
    }
}

impl From<SinkError> for ApiError {
    fn from(e: SinkError) -> Self {
        let code = match e {
            SinkError::Stale(_) => ErrorCode::StaleAttempt,
            SinkError::Unknown(_) => ErrorCode::UnknownTask,
            SinkError::Unavailable(_) => ErrorCode::Unavailable,
        };
        Self::new(code, e.to_string())
    }
}

/// The authenticated caller of a request, extracted before its body is read.
struct Caller(WorkerIdentity);

impl FromRequestParts<Broker> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        broker: &Broker,
    ) -> Result<Self, Self::Rejection> {
        if !broker.is_ready() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "this operator replica is not serving workers (not the leader, or still rebuilding its queue)",
            ));
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix(sluice_wire::BEARER_PREFIX))
            .map(str::trim);
        let identity = broker.shared.auth.authenticate(token).await?;
        Ok(Caller(identity))
    }
}

/// JSON body extraction that answers malformed bodies with the protocol's 400.
struct Body<T>(T);

impl<T, S> axum::extract::FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
                ))
            }
            Err(rejection) => Err(ApiError::new(ErrorCode::BadRequest, rejection.body_text())),
        }
    }
}

/// The namespace and pool a claim is for: the caller's namespace (from its token), or, when the authenticator
/// names none (development only), the claim's `namespace` or a `namespace/pool` pool string.
fn claim_pool(
    caller: &WorkerIdentity,
    pool: &str,
    claimed_namespace: Option<&str>,
) -> Result<(String, String), ApiError> {
    let (namespace, name) = match (&caller.namespace, pool.split_once('/')) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "pool: name the WorkerPool without a namespace; the token says which namespace it is in",
            ));
        }
        (Some(ns), None) => {
            if claimed_namespace.is_some_and(|claimed| claimed != ns) {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!("namespace: this worker's token belongs to namespace {ns}"),
                ));
            }
            (ns.clone(), pool.to_owned())
        }
        (None, Some((ns, name))) => (ns.to_owned(), name.to_owned()),
        (None, None) => match claimed_namespace {
            Some(ns) if !ns.is_empty() => (ns.to_owned(), pool.to_owned()),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "namespace: without authentication a claim must name its namespace (POD_NAMESPACE) or write \
                     the pool as `namespace/name`",
                ));
            }
        },
    };
    if !caller.may_serve(&namespace, &name) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this worker's pod does not belong to WorkerPool {namespace}/{name}"),
        ));
    }
    Ok((namespace, name))
}

/// Refuses a request naming a `worker` other than the pod its token is bound to. Attempts are fenced by worker
/// name, so a pod that could speak under another's name could heartbeat or report for that pod's attempts.
fn check_worker(caller: &WorkerIdentity, worker: &str) -> Result<(), ApiError> {
    match &caller.pod {
        Some(pod) if pod != worker => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("worker: this token belongs to pod {pod}; a worker must use its pod's name"),
        )),
        _ => Ok(()),
    }
}

/// Checks that the caller may report on a task: it names itself as the pod of its token, the task's FlowRun is
/// in the caller's namespace, and (when the queue knows it, or remembers it among the tasks that left it
/// recently) the task belongs to the caller's pool.
fn authorize_task(
    broker: &Broker,
    caller: &WorkerIdentity,
    id: &TaskId,
    worker: &str,
) -> Result<TaskRef, ApiError> {
    check_worker(caller, worker)?;
    let task = TaskRef::parse(id)
        .ok_or_else(|| ApiError::new(ErrorCode::UnknownTask, format!("no task has the id {id}")))?;
    if caller
        .namespace
        .as_deref()
        .is_some_and(|ns| ns != task.namespace)
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("task {id} is not in this worker's namespace"),
        ));
    }
    if let (Some(own), Some(pool)) = (&caller.pool, broker.inner().queue.pool_of(id))
        && pool != pool_key(&task.namespace, own)
    {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("task {id} belongs to another WorkerPool"),
        ));
    }
    Ok(task)
}

async fn claim(
    State(broker): State<Broker>,
    Caller(caller): Caller,
    Body(req): Body<ClaimRequest>,
) -> Result<Json<ClaimResponse>, ApiError> {
    req.validate()
        .map_err(|problems| ApiError::new(ErrorCode::BadRequest, problems))?;
    check_worker(&caller, &req.worker)?;
    let (namespace, pool) = claim_pool(&caller, &req.pool, req.namespace.as_deref())?;
    let key = pool_key(&namespace, &pool);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(req.wait_seconds));
    // The worker registry sees the poll open now and close when this future ends, however it ends.
    broker
        .inner()
        .queue
        .poll_started(&key, &req.worker, &req.handlers, Timestamp::now());
    let _poll = PollGuard {
        broker: broker.clone(),
        pool: key.clone(),
        worker: req.worker.clone(),
    };
    let mut place = PlaceInLine {
        broker: broker.clone(),
        pool: key.clone(),
        ticket: None,
        waiting: false,
    };
    loop {
        let woken = match look(&broker, &mut place, &req)? {
            Look::Claimed(tasks) => return Ok(Json(ClaimResponse { tasks })),
            Look::Wait(woken) => woken,
        };
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            return Ok(Json(ClaimResponse { tasks: Vec::new() }));
        }
    }
}

/// What a long poll found when it looked at the queue.
enum Look {
    /// Tasks it claimed.
    Claimed(Vec<sluice_wire::Task>),
    /// Nothing: it waits in line for this wake-up.
    Wait(oneshot::Receiver<()>),
}

/// One look at the queue for a long poll: the tasks it claims or, when there are none, a place in line,
/// registered in the same critical section so that no offer falls in between.
fn look(broker: &Broker, place: &mut PlaceInLine, req: &ClaimRequest) -> Result<Look, ApiError> {
    let (tasks, waits) = {
        let mut guard = broker.inner();
        let inner = &mut *guard;
        // Out of line while looking: a wake-up meant for this poll is consumed by this look.
        if place.waiting {
            inner
                .polls
                .unregister(&place.pool, place.ticket.unwrap_or_default());
            place.waiting = false;
        }
        if !broker.is_ready() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "this operator replica stopped serving workers",
            ));
        }
        let tasks = inner.queue.claim(
            &place.pool,
            &req.handlers,
            req.capacity,
            &req.worker,
            Timestamp::now(),
        );
        if tasks.is_empty() {
            let (wake, woken) = oneshot::channel();
            let ticket = *place.ticket.get_or_insert_with(|| inner.polls.ticket());
            inner
                .polls
                .register(&place.pool, ticket, &req.handlers, wake);
            place.waiting = true;
            return Ok(Look::Wait(woken));
        }
        (tasks, inner.queue.take_dispatch_waits())
    };
    if let Some(histogram) = &broker.shared.dispatch_latency {
        for wait in waits {
            histogram.observe(wait.as_secs_f64());
        }
    }
    let claims = tasks
        .iter()
        .filter_map(|t| {
            Some(Claimed {
                task: TaskRef::parse(&t.id)?,
                attempt: t.attempt,
                worker: req.worker.clone(),
            })
        })
        .collect();
    broker.shared.sink.claimed(claims);
    debug!(pool = %place.pool, worker = %req.worker, tasks = tasks.len(), "tasks claimed");
    Ok(Look::Claimed(tasks))
}

/// A long poll's place in its pool's line. Dropped while registered (the poll timed out or its worker went
/// away), it leaves the line; if it was woken in the meantime, it passes the wake-up on.
struct PlaceInLine {
    broker: Broker,
    pool: String,
    /// Assigned at the first registration and kept, so a poll woken for nothing keeps its place.
    ticket: Option<u64>,
    /// Registered, or woken and not yet looked.
    waiting: bool,
}

impl Drop for PlaceInLine {
    fn drop(&mut self) {
        let (true, Some(ticket)) = (self.waiting, self.ticket) else {
            return;
        };
        let mut inner = self.broker.inner();
        if !inner.polls.unregister(&self.pool, ticket) {
            inner.pass_on_wakeup(&self.pool);
        }
    }
}

/// Marks a long poll ended in the worker registry when dropped.
struct PollGuard {
    broker: Broker,
    pool: String,
    worker: String,
}

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.broker
            .inner()
            .queue
            .poll_ended(&self.pool, &self.worker, Timestamp::now());
    }
}

/// Queue depth of one pool for external autoscalers (see [`POOL_METRICS_PATH`]).
async fn pool_metrics(
    State(broker): State<Broker>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<PoolMetrics>, ApiError> {
    if !broker.is_ready() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "this operator replica does not lead: ask the leader",
        ));
    }
    let demand = broker.demand(&namespace, &name);
    Ok(Json(PoolMetrics {
        queue_depth: demand.queued,
        in_flight: demand.in_flight,
        oldest_waiting_seconds: demand.oldest_wait.map_or(0, |d| d.as_secs()),
    }))
}

async fn heartbeat(
    State(broker): State<Broker>,
    Caller(caller): Caller,
    Body(req): Body<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let task = authorize_task(&broker, &caller, &req.id, &req.worker)?;
    if broker.is_loading() && broker.inner().queue.pool_of(&req.id).is_none() {
        // Just after a restart the run of this attempt may not be loaded yet: load it now, so the worker is
        // answered from its status instead of being refused, and check the caller again against it.
        broker.shared.sink.load(&task).await;
        authorize_task(&broker, &caller, &req.id, &req.worker)?;
    }
    let claimed = broker.inner().queue.claim_by_heartbeat(
        &req.id,
        req.attempt,
        &req.worker,
        Timestamp::now(),
    );
    if claimed {
        info!(task = %req.id, attempt = req.attempt, worker = %req.worker, "a queued attempt's worker heartbeats: claimed by it");
        broker.shared.sink.claimed(vec![Claimed {
            task,
            attempt: req.attempt,
            worker: req.worker.clone(),
        }]);
    }
    // The attempt is refreshed when the heartbeat arrives ...
    let (woken, ticket, hold) = {
        let mut guard = broker.inner();
        let inner = &mut *guard;
        let cancel = inner
            .queue
            .heartbeat(&req.id, req.attempt, &req.worker, Timestamp::now())?;
        let hold = heartbeat_hold(req.wait_seconds, inner.queue.heartbeat_timeout(&req.id));
        if cancel || hold.is_zero() {
            return Ok(Json(HeartbeatResponse { cancel }));
        }
        let (wake, woken) = oneshot::channel();
        (woken, inner.heartbeats.hold(&req.id, wake), hold)
    };
    let held = HeldHeartbeat {
        broker: broker.clone(),
        id: req.id.clone(),
        ticket,
    };
    let _ = tokio::time::timeout(hold, woken).await;
    drop(held);
    if !broker.is_ready() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "this operator replica stopped serving workers",
        ));
    }
    // ... and again when it is answered: the worker was there all along.
    let cancel =
        broker
            .inner()
            .queue
            .heartbeat(&req.id, req.attempt, &req.worker, Timestamp::now())?;
    Ok(Json(HeartbeatResponse { cancel }))
}

/// How long to hold a heartbeat that asked to wait `wait_seconds`. At most half the attempt's heartbeat
/// timeout: while a heartbeat is held the attempt counts as last seen at its arrival, so the other half is left
/// for the answer to travel and the next heartbeat to arrive before the loss detector would call it lost.
fn heartbeat_hold(wait_seconds: u32, heartbeat_timeout: Option<Duration>) -> Duration {
    let asked = Duration::from_secs(u64::from(wait_seconds.min(MAX_WAIT_SECONDS)));
    asked.min(heartbeat_timeout.unwrap_or_default() / 2)
}

/// A held heartbeat; dropped (answered, or its worker went away), it is no longer held.
struct HeldHeartbeat {
    broker: Broker,
    id: TaskId,
    ticket: u64,
}

impl Drop for HeldHeartbeat {
    fn drop(&mut self) {
        self.broker
            .inner()
            .heartbeats
            .release(&self.id, self.ticket);
    }
}

async fn complete(
    State(broker): State<Broker>,
    Caller(caller): Caller,
    Body(req): Body<CompleteRequest>,
) -> Result<Json<Ack>, ApiError> {
    let task = authorize_task(&broker, &caller, &req.id, &req.worker)?;
    report(
        &broker,
        Report {
            task,
            attempt: req.attempt,
            worker: req.worker,
            outcome: Outcome::Completed(req.output),
        },
        &req.id,
    )
    .await
}

async fn fail(
    State(broker): State<Broker>,
    Caller(caller): Caller,
    Body(mut req): Body<FailRequest>,
) -> Result<Json<Ack>, ApiError> {
    let task = authorize_task(&broker, &caller, &req.id, &req.worker)?;
    req.error.message = truncate_message(&req.error.message, MAX_ERROR_MESSAGE_BYTES);
    report(
        &broker,
        Report {
            task,
            attempt: req.attempt,
            worker: req.worker,
            outcome: Outcome::Failed {
                error: req.error,
                retryable: req.retryable,
            },
        },
        &req.id,
    )
    .await
}

/// Persists a result, then acknowledges it. The queue answers stale attempts at once; a task the queue no
/// longer knows goes to the sink anyway, which tells a repeated report (acknowledged again) from a stale one.
async fn report(broker: &Broker, report: Report, id: &TaskId) -> Result<Json<Ack>, ApiError> {
    match broker
        .inner()
        .queue
        .check(id, report.attempt, &report.worker)
    {
        Ok(()) | Err(Fenced::UnknownTask(_)) => {}
        Err(fenced) => return Err(fenced.into()),
    }
    let attempt = report.attempt;
    let recorded = broker.shared.sink.record(report).await?;
    broker.inner().queue.finish(id, attempt);
    if recorded == Recorded::Duplicate {
        info!(task = %id, attempt, "repeated report acknowledged again");
    }
    Ok(Json(Ack {
        duplicate: recorded == Recorded::Duplicate,
    }))
}
