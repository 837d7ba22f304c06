//! What the engine hands back to its shell: the new status and the side effects to carry out.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

use super::timers::after;
use crate::api::{FlowRunSpec, FlowRunStatus};

/// Names one attempt of one step, or of one forEach instance of a step: the fencing token of every event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptRef {
    /// The step's name.
    pub step: String,
    /// The forEach instance index, for forEach steps.
    pub instance: Option<u32>,
    /// The attempt number, 1-based.
    pub attempt: u32,
}

impl AttemptRef {
    /// An attempt of a plain step.
    pub fn step(step: impl Into<String>, attempt: u32) -> Self {
        Self {
            step: step.into(),
            instance: None,
            attempt,
        }
    }

    /// An attempt of a forEach instance.
    pub fn instance(step: impl Into<String>, index: u32, attempt: u32) -> Self {
        Self {
            step: step.into(),
            instance: Some(index),
            attempt,
        }
    }
}

impl std::fmt::Display for AttemptRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.instance {
            Some(i) => write!(f, "{}[{i}] attempt {}", self.step, self.attempt),
            None => write!(f, "{} attempt {}", self.step, self.attempt),
        }
    }
}

/// A queued attempt of a handler step (or forEach instance) that a worker of `pool` serving `handler` may
/// claim. Its attempt number is already recorded in the status this task comes with (design invariant 1).
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// Which attempt.
    pub attempt: AttemptRef,
    /// The WorkerPool that runs it.
    pub pool: String,
    /// The handler to run.
    pub handler: String,
    /// The resolved input (expressions evaluated).
    pub input: Value,
    /// Time one attempt may take, counted from the claim; `None` means no limit.
    pub timeout: Option<Duration>,
    /// Silence after which the broker declares the worker lost.
    pub heartbeat_timeout: Duration,
    /// `true` when this decision reserved the attempt; `false` when it was queued by an earlier decision and
    /// is listed again so the broker can rebuild its queue from any decision.
    pub fresh: bool,
}

impl Task {
    /// The deadline of this attempt when claimed at `claimed_at` (the broker tells the worker, the engine
    /// records the same value on [`super::Event::Claimed`]).
    pub fn deadline_if_claimed_at(&self, claimed_at: Timestamp) -> Option<Timestamp> {
        self.timeout.map(|t| after(claimed_at, t))
    }
}

/// An attempt the status shows claimed by a worker (phase Running). After an operator restart the broker
/// learns of in-flight attempts from these and gives each a fresh heartbeat window (design invariant 6).
#[derive(Clone, Debug, PartialEq)]
pub struct RunningAttempt {
    /// The attempt, with its pool, handler and timeouts; `input` is `null` (the worker already has it) and
    /// `fresh` is false.
    pub task: Task,
    /// The worker running it.
    pub worker: Option<String>,
    /// When it times out, if it has a timeout.
    pub deadline: Option<Timestamp>,
}

/// A child FlowRun to create (idempotently: it may already exist, the name is deterministic).
#[derive(Clone, Debug, PartialEq)]
pub struct ChildFlowRequest {
    /// The parent's step that runs the child.
    pub step: String,
    /// The child's name, in the parent's namespace; the parent should own it.
    pub name: String,
    /// The child's spec, with the parent's expressions in its `input` resolved.
    pub spec: FlowRunSpec,
}

/// Whether a note is routine or a problem (the Kubernetes event type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// Kubernetes event type `Normal`.
    Normal,
    /// Kubernetes event type `Warning`.
    Warning,
}

/// Something worth a Kubernetes Event.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    /// Normal or Warning.
    pub kind: NoteKind,
    /// A CamelCase reason such as `StepFailed` or `RetryScheduled`.
    pub reason: &'static str,
    /// A human message.
    pub message: String,
    /// The step concerned, if any.
    pub step: Option<String>,
}

impl Note {
    pub(crate) fn normal(reason: &'static str, step: Option<&str>, message: String) -> Self {
        Self {
            kind: NoteKind::Normal,
            reason,
            message,
            step: step.map(str::to_owned),
        }
    }

    pub(crate) fn warning(reason: &'static str, step: Option<&str>, message: String) -> Self {
        Self {
            kind: NoteKind::Warning,
            reason,
            message,
            step: step.map(str::to_owned),
        }
    }
}

/// Everything [`super::decide`] concluded.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The complete new status. `signals` is copied unchanged (users own it); write it with
    /// [`super::status_replacement`], fenced by the observed version, so a signal written since is never
    /// overwritten.
    pub status: FlowRunStatus,
    /// Every queued attempt of this FlowRun (phase Ready), fresh or not. The broker replaces its queue entries
    /// of this FlowRun with this list, after the status is persisted. Empty while the run is suspended.
    pub tasks: Vec<Task>,
    /// Child FlowRuns that must exist (listed while their step runs; creating an existing one is a no-op).
    pub create_children: Vec<ChildFlowRequest>,
    /// Names of child FlowRuns to cancel (set their `spec.cancel`). Listed in every decision of a run whose
    /// children were stopped, so a crash between the status write and the cancel is repaired.
    pub cancel_children: Vec<String>,
    /// Attempts whose workers should stop (their step was cancelled, or the attempt timed out); the broker
    /// answers their next heartbeat with `cancel: true` (or 409, since they are no longer current).
    pub cancel_workers: Vec<AttemptRef>,
    /// Kubernetes-event-worthy notes, in the order they happened.
    pub notes: Vec<Note>,
    /// When to call `decide` again at the latest (earliest timer, backoff or deadline), always after `now`;
    /// `None` when only an event can move the run.
    pub wake_at: Option<Timestamp>,
}
