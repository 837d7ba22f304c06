//! The worker ↔ broker wire protocol of Sluice: request and response bodies, serde only.
//!
//! Workers (the Rust SDK, the generic exec worker, or anything that speaks HTTP + JSON) talk to the operator's
//! **broker** over plain HTTP. Every body is JSON with `camelCase` field names. This crate is the single home of
//! those shapes: the broker (in the operator) and the worker SDK both depend on it.
//!
//! # Endpoints
//!
//! All endpoints are `POST` with `Content-Type: application/json` and answer JSON.
//!
//! | path                          | body                 | 200 answer            |
//! |-------------------------------|----------------------|-----------------------|
//! | [`CLAIM_PATH`] `/v1/claim`    | [`ClaimRequest`]     | [`ClaimResponse`]     |
//! | [`HEARTBEAT_PATH`] `/v1/tasks/heartbeat` | [`HeartbeatRequest`] | [`HeartbeatResponse`] |
//! | [`COMPLETE_PATH`] `/v1/tasks/complete`   | [`CompleteRequest`]  | [`Ack`]               |
//! | [`FAIL_PATH`] `/v1/tasks/fail`           | [`FailRequest`]      | [`Ack`]               |
//!
//! * **claim** is a long poll: the broker answers as soon as at least one task is available for the worker's
//!   pool and handlers (at most `capacity` tasks), or with an empty list when `waitSeconds` ran out. A task is
//!   handed out only after its attempt is recorded in the FlowRun status. Tasks are taken from the queue at the
//!   moment the answer is produced: if the worker goes away while the poll waits, nothing is handed out. A task
//!   whose answer was lost on the way is recovered like a lost worker (no heartbeat ⇒ released as retryable).
//! * **heartbeat** keeps an attempt alive. The worker sends one every [`Task::heartbeat_interval_seconds`];
//!   the broker declares the attempt lost when it has been silent for a few intervals (its choice). The answer
//!   says whether the worker must stop ([`HeartbeatResponse::cancel`], e.g. the FlowRun was cancelled).
//!   A heartbeat may also be a long poll ([`HeartbeatRequest::wait_seconds`]): the broker holds it until the
//!   attempt is cancelled (and answers `cancel: true` at once) or the wait is over, so a worker that sends the
//!   next heartbeat as soon as one is answered learns of a cancellation within a round trip.
//! * **complete** / **fail** report the attempt's result. The broker acknowledges (200) only after the result is
//!   persisted in the FlowRun status, so a worker retries (with backoff) until it gets an answer. Repeating a
//!   report of the same attempt is harmless: the broker answers 200 again ([`Ack::duplicate`]).
//!
//! # Identity and fencing
//!
//! A task is named by its [`TaskId`] (opaque to workers) and its `attempt` number. The attempt is the fencing
//! token: every heartbeat and report carries both, and the broker refuses any call for an attempt that is not
//! the step's current one with **409** ([`ErrorCode::StaleAttempt`]) — e.g. the worker was declared lost and
//! the step was retried elsewhere. A worker that gets 409 stops working on that attempt and stops retrying.
//!
//! # Status codes
//!
//! Every non-200 answer carries an [`ErrorBody`].
//!
//! | status | meaning | worker's reaction |
//! |--------|---------|-------------------|
//! | 200 | done | — |
//! | 400 | malformed request ([`ErrorCode::BadRequest`]) | a bug: log, back off |
//! | 401 | missing or invalid token ([`ErrorCode::Unauthorized`]) | re-read the token, back off, retry |
//! | 403 | token valid but not allowed to serve this pool ([`ErrorCode::Forbidden`]) | back off, retry |
//! | 409 | stale attempt or unknown task ([`ErrorCode::StaleAttempt`], [`ErrorCode::UnknownTask`]) | stop: the attempt is fenced |
//! | 413 | body larger than the broker accepts ([`ErrorCode::PayloadTooLarge`]) | report a non-retryable failure of type [`error_types::OUTPUT_TOO_LARGE`] instead |
//! | 503 | broker not ready / not the leader ([`ErrorCode::Unavailable`]) | back off, retry |
//! | other 5xx | broker trouble ([`ErrorCode::Internal`]) | back off, retry |
//!
//! # Authentication
//!
//! Every request carries `Authorization: Bearer <token>` ([`AUTHORIZATION_HEADER`], [`BEARER_PREFIX`]) where the
//! token is the pod's projected service-account token for the audience [`TOKEN_AUDIENCE`], read from the file
//! named by [`env::TOKEN_PATH`]. The kubelet rotates that file, so workers re-read it for every request.
//!
//! # Retryability
//!
//! A failure carries an error `type`, a message, an optional process `exitCode` and the worker's opinion
//! `retryable`. The **engine**, not the worker, makes the final decision from the step's retry policy
//! (`nonRetryableErrors` lists error types, `nonRetryableExitCodes` lists exit codes, `maxAttempts` bounds
//! everything); `retryable: false` from a worker always ends the step.
#![forbid(unsafe_code)]

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Path of the long-poll claim endpoint ([`ClaimRequest`] → [`ClaimResponse`]).
pub const CLAIM_PATH: &str = "/v1/claim";
/// Path of the heartbeat endpoint ([`HeartbeatRequest`] → [`HeartbeatResponse`]).
pub const HEARTBEAT_PATH: &str = "/v1/tasks/heartbeat";
/// Path of the completion endpoint ([`CompleteRequest`] → [`Ack`]).
pub const COMPLETE_PATH: &str = "/v1/tasks/complete";
/// Path of the failure endpoint ([`FailRequest`] → [`Ack`]).
pub const FAIL_PATH: &str = "/v1/tasks/fail";

/// The HTTP header that carries the worker's token.
pub const AUTHORIZATION_HEADER: &str = "Authorization";
/// Prefix of the [`AUTHORIZATION_HEADER`] value; the token follows it.
pub const BEARER_PREFIX: &str = "Bearer ";
/// The audience of the projected service-account token workers present (and the broker checks with a
/// TokenReview).
pub const TOKEN_AUDIENCE: &str = "sluice-broker";

/// The longest long poll a worker may ask for, in seconds ([`ClaimRequest::wait_seconds`]).
pub const MAX_WAIT_SECONDS: u32 = 30;
/// Recommended limit on a failure message, in bytes: workers keep the *last* bytes of longer messages (the end
/// of a stderr is where the cause usually is) and the broker truncates anything longer.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 2048;

/// Names of the environment variables of the worker protocol.
pub mod env {
    /// Base URL of the broker, e.g. `http://sluice-broker.sluice-system.svc:8081`. Required.
    pub const BROKER_URL: &str = "SLUICE_BROKER_URL";
    /// The WorkerPool this worker serves. Required.
    pub const POOL: &str = "SLUICE_POOL";
    /// File holding the projected service-account token; re-read on every request because it rotates. When
    /// unset, requests carry no `Authorization` header (local development).
    pub const TOKEN_PATH: &str = "SLUICE_TOKEN_PATH";
    /// The worker's name in claims and reports. Defaults to [`POD_NAME`], then the host name.
    pub const WORKER_NAME: &str = "SLUICE_WORKER_NAME";
    /// The pod's name (downward API), the default of [`WORKER_NAME`].
    pub const POD_NAME: &str = "POD_NAME";
    /// The pod's namespace (downward API), sent with claims as the pool's namespace.
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// How many tasks a worker process runs at once (≥ 1). Default 1.
    pub const CONCURRENCY: &str = "SLUICE_CONCURRENCY";
    /// Seconds a worker lets in-flight tasks finish after SIGTERM before failing them as retryable. Default 25
    /// (Kubernetes' default termination grace period is 30 s).
    pub const SHUTDOWN_GRACE_SECONDS: &str = "SLUICE_SHUTDOWN_GRACE_SECONDS";

    /// Exec worker: the FlowRun's name, in the command's environment.
    pub const FLOWRUN: &str = "SLUICE_FLOWRUN";
    /// Exec worker: the FlowRun's namespace, in the command's environment.
    pub const FLOWRUN_NAMESPACE: &str = "SLUICE_FLOWRUN_NAMESPACE";
    /// Exec worker: the FlowRun's uid, in the command's environment.
    pub const FLOWRUN_UID: &str = "SLUICE_FLOWRUN_UID";
    /// Exec worker: the step's name, in the command's environment.
    pub const STEP: &str = "SLUICE_STEP";
    /// Exec worker: the attempt number (1-based), in the command's environment.
    pub const ATTEMPT: &str = "SLUICE_ATTEMPT";
    /// Exec worker: the forEach instance index, in the command's environment only for forEach steps.
    pub const INSTANCE: &str = "SLUICE_INSTANCE";
    /// Exec worker: the task id; with [`ATTEMPT`] a unique key, handy for idempotency.
    pub const TASK_ID: &str = "SLUICE_TASK_ID";
    /// Exec worker: the handler name the command was registered under.
    pub const HANDLER: &str = "SLUICE_HANDLER";
    /// Exec worker: the attempt's deadline (RFC 3339), only when the task has one.
    pub const DEADLINE: &str = "SLUICE_DEADLINE";
}

/// Well-known values of [`TaskError::error_type`] produced by Sluice itself. Handlers may use any other type;
/// retry policies match types by exact string.
pub mod error_types {
    /// A generic retryable error (e.g. a handler's `?` on an I/O error).
    pub const ERROR: &str = "Error";
    /// The worker was shutting down and the grace period ran out; the step should run elsewhere.
    pub const WORKER_SHUTDOWN: &str = "WorkerShutdown";
    /// The attempt's deadline passed while the handler was running.
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    /// The broker asked the worker to stop (heartbeat answer `cancel: true`).
    pub const CANCELLED: &str = "Cancelled";
    /// The handler panicked.
    pub const HANDLER_PANICKED: &str = "HandlerPanicked";
    /// The step input could not be decoded into the handler's input type.
    pub const INVALID_INPUT: &str = "InvalidInput";
    /// The handler's output could not be encoded as JSON.
    pub const INVALID_OUTPUT: &str = "InvalidOutput";
    /// The output is larger than the broker accepts.
    pub const OUTPUT_TOO_LARGE: &str = "OutputTooLarge";
    /// No handler of that name is registered on the worker (the broker only hands out tasks for the handlers a
    /// claim names, so this points at a bug).
    pub const UNKNOWN_HANDLER: &str = "UnknownHandler";
    /// Exec worker: the command exited with a non-zero code ([`super::TaskError::exit_code`] is set).
    pub const NON_ZERO_EXIT: &str = "NonZeroExit";
    /// Exec worker: the command was killed by a signal.
    pub const KILLED: &str = "Killed";
    /// Exec worker: the command could not be started.
    pub const SPAWN_FAILED: &str = "SpawnFailed";
    /// Broker: the worker stopped heartbeating (or its pod went away) and the attempt was released.
    pub const WORKER_LOST: &str = "WorkerLost";
}

/// Opaque identity of a task (one step, or one forEach instance of a step, of one FlowRun).
///
/// The broker builds it, by convention `namespace/flowrun/step[/index]@uid` ([`TaskId::for_run`]; ids without
/// the `@uid` suffix, from [`TaskId::from_parts`], are the older form); workers must treat it as an opaque string
/// and send it back unchanged. Together with the attempt number it names one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub String);

impl TaskId {
    /// Wraps an id string.
    pub fn new(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    /// Builds the id `namespace/flowrun/step[/index]@uid` of a task of the FlowRun with UID `uid` (broker side).
    /// The UID tells a FlowRun from an earlier one of the same name: a worker of a deleted run must not report
    /// into its re-created namesake. An empty `uid` gives the older form of [`TaskId::from_parts`].
    pub fn for_run(
        namespace: &str,
        flow_run: &str,
        uid: &str,
        step: &str,
        instance: Option<u32>,
    ) -> Self {
        let Self(id) = Self::from_parts(namespace, flow_run, step, instance);
        if uid.is_empty() {
            Self(id)
        } else {
            Self(format!("{id}@{uid}"))
        }
    }

    /// Builds the older id `namespace/flowrun/step[/index]`, without the FlowRun's UID (broker side).
    pub fn from_parts(namespace: &str, flow_run: &str, step: &str, instance: Option<u32>) -> Self {
        match instance {
            Some(index) => Self(format!("{namespace}/{flow_run}/{step}/{index}")),
            None => Self(format!("{namespace}/{flow_run}/{step}")),
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for TaskId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for TaskId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

/// `POST /v1/claim`: ask for up to `capacity` tasks, waiting up to `wait_seconds` for one to be available.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRequest {
    /// The WorkerPool the worker serves; the broker checks the token's service account may serve it.
    pub pool: String,
    /// The worker's name (its pod name), recorded in the step's status and sent back in every report.
    pub worker: String,
    /// The handler names this worker can run; only tasks for these are handed out. Not empty.
    pub handlers: Vec<String>,
    /// Free slots: the most tasks the answer may hold (≥ 1).
    pub capacity: u32,
    /// How long the broker may hold the request when no task is available (0 ..= [`MAX_WAIT_SECONDS`]).
    pub wait_seconds: u32,
    /// Namespace of the pool: the worker pod's namespace ([`env::POD_NAMESPACE`]). With token authentication
    /// the token says which namespace the worker is in and a different value here is refused; without it
    /// (local development) this names the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl ClaimRequest {
    /// Checks the request's bounds (broker side); the error describes every problem, for a 400 answer.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.pool.is_empty() {
            problems.push("pool must not be empty".to_owned());
        }
        if self.worker.is_empty() {
            problems.push("worker must not be empty".to_owned());
        }
        if self.handlers.is_empty() {
            problems.push("handlers must not be empty".to_owned());
        }
        if self.handlers.iter().any(String::is_empty) {
            problems.push("handler names must not be empty".to_owned());
        }
        if self.capacity == 0 {
            problems.push("capacity must be at least 1".to_owned());
        }
        if self.wait_seconds > MAX_WAIT_SECONDS {
            problems.push(format!("waitSeconds must be at most {MAX_WAIT_SECONDS}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// Answer to [`ClaimRequest`]: the tasks handed to this worker, empty when the poll timed out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimResponse {
    /// At most `capacity` tasks; each one's attempt is already recorded in its FlowRun's status.
    pub tasks: Vec<Task>,
}

/// Which FlowRun a task belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRunRef {
    /// The FlowRun's namespace.
    pub namespace: String,
    /// The FlowRun's name.
    pub name: String,
    /// The FlowRun's uid (distinguishes a re-created FlowRun of the same name).
    pub uid: String,
}

/// One attempt of one step (or one forEach instance of a step) handed to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    /// The task's opaque id; sent back in every heartbeat and report.
    pub id: TaskId,
    /// The attempt number, 1-based: the fencing token sent back with the id.
    pub attempt: u32,
    /// The handler to run (one of the claim's `handlers`).
    pub handler: String,
    /// The step's input (for a forEach instance: the instance's input).
    pub input: Value,
    /// When this attempt times out (RFC 3339, UTC), if the step has a timeout. The worker should stop the
    /// handler by then; the engine treats the attempt as failed (retryable, [`error_types::DEADLINE_EXCEEDED`])
    /// whatever the worker does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Seconds between heartbeats (≥ 1).
    pub heartbeat_interval_seconds: u32,
    /// The FlowRun the step belongs to.
    pub flow_run: FlowRunRef,
    /// The step's name.
    pub step: String,
    /// The forEach instance index, for forEach steps only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<u32>,
}

/// `POST /v1/tasks/heartbeat`: the attempt is still running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRequest {
    /// The task's id.
    pub id: TaskId,
    /// The attempt being run.
    pub attempt: u32,
    /// The worker's name.
    pub worker: String,
    /// How long the broker may hold the request while the attempt goes on, in seconds: it answers as soon as
    /// the attempt is cancelled, else when the wait is over. `0` (the default, and what workers that predate
    /// this field send) answers at once. The broker caps the wait (at [`MAX_WAIT_SECONDS`], and below the
    /// attempt's heartbeat timeout), so the answer may come sooner; a held heartbeat keeps the attempt alive.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wait_seconds: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Answer to [`HeartbeatRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    /// `true` when the worker must stop the attempt (the FlowRun was cancelled, …). The worker cancels the
    /// handler and still reports its outcome (a failure of type [`error_types::CANCELLED`] if it stopped).
    #[serde(default)]
    pub cancel: bool,
}

/// `POST /v1/tasks/complete`: the attempt succeeded with this output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteRequest {
    /// The task's id.
    pub id: TaskId,
    /// The attempt that succeeded.
    pub attempt: u32,
    /// The worker's name.
    pub worker: String,
    /// The step's output. The broker caps its serialized size (default 64 KiB); a larger output is recorded as
    /// a non-retryable failure of type [`error_types::OUTPUT_TOO_LARGE`] (and acknowledged).
    pub output: Value,
}

/// Why an attempt failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskError {
    /// A short machine-readable type, matched by the retry policy's `nonRetryableErrors` (see
    /// [`error_types`] for the ones Sluice produces).
    #[serde(rename = "type")]
    pub error_type: String,
    /// A human-readable message (at most [`MAX_ERROR_MESSAGE_BYTES`], keeping the end).
    pub message: String,
    /// The process exit code, when the failure is a process exit (exec worker); matched by the retry policy's
    /// `nonRetryableExitCodes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// `POST /v1/tasks/fail`: the attempt failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailRequest {
    /// The task's id.
    pub id: TaskId,
    /// The attempt that failed.
    pub attempt: u32,
    /// The worker's name.
    pub worker: String,
    /// What went wrong.
    pub error: TaskError,
    /// The worker's opinion: `false` ends the step now; `true` lets the step's retry policy decide.
    pub retryable: bool,
}

/// Answer to [`CompleteRequest`] and [`FailRequest`]: the result is persisted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// `true` when this attempt's result had already been recorded (a repeated report); the first one wins.
    #[serde(default)]
    pub duplicate: bool,
}

/// Machine-readable reason of a non-200 answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorCode {
    /// 400: the body is malformed or out of bounds.
    BadRequest,
    /// 401: no token, or the token is invalid or expired.
    Unauthorized,
    /// 403: the token's service account may not serve this pool.
    Forbidden,
    /// 409: the attempt is not the step's current one (retried elsewhere, step finished, flow cancelled).
    StaleAttempt,
    /// 409: no such task (the FlowRun or step no longer exists).
    UnknownTask,
    /// 413: the body is larger than the broker accepts.
    PayloadTooLarge,
    /// 503: the broker is not ready (not the leader, still rebuilding its queue).
    Unavailable,
    /// 500: anything else.
    Internal,
    /// A code this version of the protocol does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status the broker answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::StaleAttempt | ErrorCode::UnknownTask => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal | ErrorCode::Unknown => 500,
        }
    }
}

/// The body of every non-200 answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl ErrorBody {
    /// An error body with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// Keeps the last `max_bytes` bytes of `message` (on a character boundary), prefixed with `…` when cut.
///
/// Failure messages keep their end because that is where a stderr or an error chain says what went wrong.
pub fn truncate_message(message: &str, max_bytes: usize) -> String {
    if message.len() <= max_bytes {
        return message.to_owned();
    }
    const ELLIPSIS: &str = "…";
    let keep = max_bytes.saturating_sub(ELLIPSIS.len());
    let mut start = message.len() - keep;
    while !message.is_char_boundary(start) {
        start += 1;
    }
    format!("{ELLIPSIS}{}", &message[start..])
}

#[cfg(test)]
mod tests;
