//! [`StepContext`]: what a handler knows about the attempt it runs, and its cancellation signal.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use sluice_wire::{FlowRunRef, Task, TaskId, error_types};
use tokio_util::sync::CancellationToken;

use crate::error::StepError;

/// Why a step's context was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelReason {
    /// The broker asked the worker to stop (heartbeat answer `cancel: true`, e.g. the FlowRun was cancelled).
    Requested,
    /// The broker refused a heartbeat with 409: another attempt owns the step now; nothing will be reported.
    Fenced,
    /// The attempt's deadline passed.
    DeadlineExceeded,
    /// The worker is shutting down and the grace period ran out.
    Shutdown,
}

impl CancelReason {
    /// The failure a handler returns when it stops because of this reason (see
    /// [`StepContext::cancellation_error`]).
    pub fn to_step_error(self) -> StepError {
        match self {
            CancelReason::Requested => {
                StepError::fatal(error_types::CANCELLED, "the step was cancelled")
            }
            CancelReason::Fenced => StepError::retryable(
                "the attempt is no longer current (the step was given to another attempt)",
            )
            .with_type(error_types::CANCELLED),
            CancelReason::DeadlineExceeded => StepError::retryable("the attempt's deadline passed")
                .with_type(error_types::DEADLINE_EXCEEDED),
            CancelReason::Shutdown => {
                StepError::retryable("the worker shut down before the step finished")
                    .with_type(error_types::WORKER_SHUTDOWN)
            }
        }
    }
}

/// The context of one attempt, handed to the handler with its input. Cheap to clone.
///
/// Long-running handlers should watch [`StepContext::cancelled`] (e.g. in a `tokio::select!`) and return
/// [`StepContext::cancellation_error`] when it fires: the worker waits a short grace period for that before it
/// drops the handler's future.
#[derive(Clone, Debug)]
pub struct StepContext {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    task_id: TaskId,
    attempt: u32,
    handler: String,
    flow_run: FlowRunRef,
    step: String,
    instance: Option<u32>,
    deadline: Option<SystemTime>,
    worker: String,
    token: CancellationToken,
    reason: OnceLock<CancelReason>,
}

impl StepContext {
    /// A context for `task` run by `worker`, not tied to any running worker: for testing handlers.
    ///
    /// Cancel it through [`StepContext::cancellation_token`].
    pub fn detached(task: &Task, worker: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                task_id: task.id.clone(),
                attempt: task.attempt,
                handler: task.handler.clone(),
                flow_run: task.flow_run.clone(),
                step: task.step.clone(),
                instance: task.instance,
                deadline: task.deadline.as_deref().and_then(parse_deadline),
                worker: worker.into(),
                token: CancellationToken::new(),
                reason: OnceLock::new(),
            }),
        }
    }

    /// Cancels the context for `reason` (the first reason wins).
    pub(crate) fn cancel(&self, reason: CancelReason) {
        let _ = self.inner.reason.set(reason);
        self.inner.token.cancel();
    }

    /// The task's opaque id.
    pub fn task_id(&self) -> &TaskId {
        &self.inner.task_id
    }

    /// The attempt number (1-based). `(task_id, attempt)` is unique: a good idempotency key.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The handler name the task was claimed for.
    pub fn handler(&self) -> &str {
        &self.inner.handler
    }

    /// The FlowRun the step belongs to.
    pub fn flow_run(&self) -> &FlowRunRef {
        &self.inner.flow_run
    }

    /// The FlowRun's namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.flow_run.namespace
    }

    /// The FlowRun's name.
    pub fn flow_run_name(&self) -> &str {
        &self.inner.flow_run.name
    }

    /// The step's name.
    pub fn step(&self) -> &str {
        &self.inner.step
    }

    /// The forEach instance index, for forEach steps.
    pub fn instance(&self) -> Option<u32> {
        self.inner.instance
    }

    /// When the attempt times out, if the step has a timeout.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.inner.deadline
    }

    /// This worker's name.
    pub fn worker(&self) -> &str {
        &self.inner.worker
    }

    /// Whether the context was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.inner.token.is_cancelled()
    }

    /// Completes when the context is cancelled (see [`StepContext::cancel_reason`] for why).
    pub async fn cancelled(&self) {
        self.inner.token.cancelled().await;
    }

    /// The cancellation token (a clone), to hand to code that takes one.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.inner.token.clone()
    }

    /// Why the context was cancelled; `None` while it is not (or when it was cancelled through the token).
    pub fn cancel_reason(&self) -> Option<CancelReason> {
        self.inner.reason.get().copied()
    }

    /// The error to return after stopping because of a cancellation: `Cancelled` (not retryable) when the
    /// broker asked, `DeadlineExceeded` / `WorkerShutdown` (retryable) otherwise.
    pub fn cancellation_error(&self) -> StepError {
        self.cancel_reason()
            .unwrap_or(CancelReason::Requested)
            .to_step_error()
    }
}

/// Parses an RFC 3339 deadline; an unparsable one is ignored (the broker enforces it anyway).
pub(crate) fn parse_deadline(text: &str) -> Option<SystemTime> {
    match text.parse::<jiff::Timestamp>() {
        Ok(timestamp) => Some(SystemTime::from(timestamp)),
        Err(error) => {
            tracing::warn!(deadline = text, %error, "ignoring an unparsable task deadline");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn task() -> Task {
        Task {
            id: TaskId::from_parts("ns", "flow", "step", Some(3)),
            attempt: 2,
            handler: "h".into(),
            input: json!(null),
            deadline: Some("2030-01-01T00:00:00Z".into()),
            heartbeat_interval_seconds: 10,
            flow_run: FlowRunRef {
                namespace: "ns".into(),
                name: "flow".into(),
                uid: "u".into(),
            },
            step: "step".into(),
            instance: Some(3),
        }
    }

    #[test]
    fn exposes_the_task() {
        let ctx = StepContext::detached(&task(), "w");
        assert_eq!(ctx.task_id().as_str(), "ns/flow/step/3");
        assert_eq!(ctx.attempt(), 2);
        assert_eq!(ctx.namespace(), "ns");
        assert_eq!(ctx.flow_run_name(), "flow");
        assert_eq!(ctx.step(), "step");
        assert_eq!(ctx.instance(), Some(3));
        assert_eq!(ctx.worker(), "w");
        let expected = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000);
        assert_eq!(ctx.deadline(), Some(expected));
    }

    #[tokio::test]
    async fn first_cancel_reason_wins() {
        let ctx = StepContext::detached(&task(), "w");
        assert!(!ctx.is_cancelled());
        ctx.cancel(CancelReason::DeadlineExceeded);
        ctx.cancel(CancelReason::Shutdown);
        ctx.cancelled().await;
        assert_eq!(ctx.cancel_reason(), Some(CancelReason::DeadlineExceeded));
        let error = ctx.cancellation_error();
        assert_eq!(error.error_type(), error_types::DEADLINE_EXCEEDED);
        assert!(error.is_retryable());
        assert!(!CancelReason::Requested.to_step_error().is_retryable());
    }
}
