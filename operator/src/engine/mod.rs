//! The pure flow engine: from a FlowRun's spec, its status and the current time, decide what happens next.
//!
//! Nothing here does I/O, reads the clock or draws random numbers: time is an argument, the jitter of retry
//! backoffs is a hash, so the same inputs always give the same result. The FlowRun controller, the worker broker
//! and the status writer are thin shells around two entry points:
//!
//! * [`decide`] — given the status, compute the next status and the side effects: tasks to queue, child flows
//!   to create or cancel, workers to stop, Kubernetes events, and when to wake up.
//! * [`apply_event`] — fold one event from the outside world (a worker claimed, completed or failed an attempt,
//!   an attempt timed out or lost its heartbeat, a child flow finished) into the status, with fencing: events of
//!   an old attempt or of a finished step are refused, repeated ones are recognized as duplicates.
//!
//! `spec.cancel`, `spec.suspend` and the signals users write in `status.signals` are read by [`decide`]; the
//! engine never changes `status.signals`.
//!
//! # Choices worth knowing
//! * **Attempt reservation**: when a handler step (or forEach instance) becomes ready, `decide` records attempt
//!   N (phase `Ready`, `attempts: N`) in the same status that queues its [`Task`]; the broker hands the task out
//!   only after that status is persisted, and can answer claims from memory.
//! * **Fail fast**: when a step fails for good and does not have `continueOnFailure`, no new step starts and
//!   every step still running is Cancelled in the same decision (their workers are asked to stop, their late
//!   results are refused); the run ends Failed at once, with the failed step named in its condition.
//! * **Suspend** holds everything that would dispatch work: Pending steps, retries whose backoff ran out, new
//!   forEach instances, and queued (Ready) attempts, which are withheld from [`Decision::tasks`] until resumed.
//!   Attempts already claimed run to their end; sleeps and signal waits keep going.
//! * **Conditions**: `Ready` is True once the run Succeeded (False otherwise, the reason says why: Pending,
//!   Running, Suspended, StepFailed, Invalid, OutputFailed, Cancelled); `Succeeded` is Unknown while the run
//!   goes on, then True or False; `Invalid` is True when validation failed (its message lists every
//!   problem); `Suspended` follows `spec.suspend` while the run goes on. All carry `observedGeneration`.
//! * **Outputs** are stored without `null` object members (merge patches would drop them anyway) and are
//!   refused above `maxOutputBytes` as a non-retryable `OutputTooLarge` failure; `statusBytes` is measured by
//!   every decision and estimated by every event.
//! * **Status budget**: a step that would grow the status past [`Limits::max_status_bytes`] fails with
//!   `StatusTooLarge`, naming what grew (see [`budget`]); a forEach fans out over at most 10,000 items and
//!   runs 64 instances at once unless `maxParallel` says otherwise.
//! * **forEach** is supported on handler steps; `input` defaults to the item. **Child flows** get the
//!   parent's `pool` and `defaults` when they set none; only their `input` is resolved with the parent's
//!   values.
//! * **Retry of a Failed run** is requested with a new `spec.retryRequest` token and carried out by
//!   [`decide`] (see [`rerun`]): failed and cancelled steps go back to Pending with their attempt numbers
//!   kept (the retry policy counts afresh from `retryBase`), Succeeded steps stay, and the run is Running
//!   again; `status.retry` records the last token acted on.
//! * **Timestamps** written by the engine are whole seconds (how Kubernetes stores them); future ones are
//!   rounded up so that no timer fires early.

mod attempt;
pub mod budget;
pub mod child;
pub mod concurrency;
pub mod dag;
mod decision;
pub mod events;
pub mod exit;
pub mod expr;
pub mod foreach;
pub mod output;
pub mod patch;
pub mod rerun;
pub mod retry;
mod schedule;
pub mod timers;
pub mod validate;

use std::time::Duration;

use jiff::Timestamp;

pub use budget::Limits;
pub use concurrency::Admission;
pub use decision::{AttemptRef, ChildFlowRequest, Decision, Note, NoteKind, RunningAttempt, Task};
pub use events::{
    ChildOutcome, Event, EventOutcome, Folded, Refusal, TaskFailure, apply_event,
    apply_event_in_place,
};
pub use patch::{status_patch, status_replacement};
pub use schedule::{decide, running_attempts};
pub use validate::{ValidationError, ValidationErrors, validate};

use crate::api::{FlowRun, FlowRunSpec, FlowRunStatus, Step};
use dag::Dag;
use retry::EffectivePolicy;

/// Default heartbeat timeout of handler steps.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

/// Identity of the FlowRun being decided on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowMeta {
    /// `metadata.uid`: seeds the retry jitter.
    pub uid: String,
    /// `metadata.name`: prefix of child FlowRun names.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.generation`: copied to `observedGeneration` and the conditions.
    pub generation: Option<i64>,
}

/// What the engine reads: the FlowRun's identity, spec and current status.
#[derive(Clone, Copy, Debug)]
pub struct FlowRunInput<'a> {
    /// Identity of the FlowRun.
    pub meta: &'a FlowMeta,
    /// Its spec.
    pub spec: &'a FlowRunSpec,
    /// Its current status (the default, empty status for a new FlowRun).
    pub status: &'a FlowRunStatus,
    /// What the operator bounds in every run (the status budget).
    pub limits: Limits,
    /// For a run with `spec.concurrency` that holds no slot yet: whether it may take one now (counted by the
    /// shell, which sees the other runs).
    pub admission: &'a Admission,
}

/// The admission of runs nobody counted slots for.
pub static NOT_ASKED: Admission = Admission::NotAsked;

static EMPTY_STATUS: FlowRunStatus = FlowRunStatus {
    phase: None,
    observed_generation: None,
    started_at: None,
    finished_at: None,
    progress: None,
    steps: std::collections::BTreeMap::new(),
    signals: std::collections::BTreeMap::new(),
    output: None,
    main_outcome: None,
    status_bytes: None,
    conditions: Vec::new(),
    retry: None,
    template: None,
    concurrency: None,
};

impl FlowMeta {
    /// The identity of a FlowRun object.
    pub fn of(fr: &FlowRun) -> Self {
        Self {
            uid: fr.metadata.uid.clone().unwrap_or_default(),
            name: fr.metadata.name.clone().unwrap_or_default(),
            namespace: fr.metadata.namespace.clone().unwrap_or_default(),
            generation: fr.metadata.generation,
        }
    }
}

impl<'a> FlowRunInput<'a> {
    /// The input for a FlowRun object and its identity (see [`FlowMeta::of`]), with the default limits.
    pub fn new(meta: &'a FlowMeta, fr: &'a FlowRun) -> Self {
        Self {
            meta,
            spec: &fr.spec,
            status: fr.status.as_ref().unwrap_or(&EMPTY_STATUS),
            limits: Limits::default(),
            admission: &NOT_ASKED,
        }
    }
}

/// What both entry points need: the flow, its graph and the time.
pub(crate) struct Ctx<'a> {
    pub meta: &'a FlowMeta,
    /// The steps as scheduled: the main steps, then the exit steps (see [`exit::scheduled`]).
    pub spec: &'a FlowRunSpec,
    /// The spec as written (what validation reports on).
    pub declared: &'a FlowRunSpec,
    /// How many of `spec.steps` are main steps; the rest are exit steps.
    pub main: usize,
    pub dag: Dag,
    pub now: Timestamp,
    pub limits: Limits,
}

impl<'a> Ctx<'a> {
    /// `flow.spec` is the spec as scheduled ([`exit::scheduled`] of `declared`).
    pub fn new(flow: &FlowRunInput<'a>, declared: &'a FlowRunSpec, now: Timestamp) -> Self {
        Self {
            meta: flow.meta,
            spec: flow.spec,
            declared,
            main: declared.steps.len(),
            dag: Dag::new(&flow.spec.steps),
            now,
            limits: flow.limits,
        }
    }

    /// Whether step `i` is an exit step.
    pub fn is_exit(&self, i: usize) -> bool {
        i >= self.main
    }

    pub fn step(&self, name: &str) -> Option<(usize, &'a Step)> {
        let i = *self.dag.index.get(name)?;
        Some((i, &self.spec.steps[i]))
    }

    pub fn policy(&self, step: &Step) -> EffectivePolicy {
        retry::effective_policy(
            self.spec.defaults.as_ref().and_then(|d| d.retry.as_ref()),
            step.retry.as_ref(),
        )
    }

    pub fn timeout(&self, step: &Step) -> Option<Duration> {
        step.timeout
            .as_deref()
            .or(self
                .spec
                .defaults
                .as_ref()
                .and_then(|d| d.timeout.as_deref()))
            .and_then(|t| timers::parse_duration(t).ok())
            .filter(|d| !d.is_zero())
    }

    pub fn heartbeat_timeout(&self, step: &Step) -> Duration {
        step.heartbeat_timeout
            .as_deref()
            .or(self
                .spec
                .defaults
                .as_ref()
                .and_then(|d| d.heartbeat_timeout.as_deref()))
            .and_then(|t| timers::parse_duration(t).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT)
    }

    pub fn pool(&self, step: &Step) -> String {
        step.pool
            .clone()
            .or_else(|| self.spec.pool.clone())
            .unwrap_or_default()
    }

    pub fn max_output(&self) -> usize {
        output::max_output_bytes(self.spec)
    }
}

#[cfg(test)]
mod tests;
