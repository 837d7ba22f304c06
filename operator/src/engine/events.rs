//! Events from the outside world, folded into the status with fencing (design invariant 4).
//!
//! Every event about a handler attempt names the attempt ([`AttemptRef`]). The rules, in order:
//! 1. A repeat of an event already recorded is a [`EventOutcome::Duplicate`]: a completion of attempt N of a
//!    step that Succeeded with attempt N, a failure of attempt N when the recorded last error is attempt N's,
//!    a claim of the running attempt by the same worker, a completion of attempt N that was recorded as an
//!    `OutputTooLarge` or `StatusTooLarge` failure. The broker acknowledges it again (200) and nothing changes.
//! 2. An event for a step that is terminal, or for an attempt other than the current one, or for an attempt
//!    that already failed (Retrying), is refused as [`Refusal::Stale`] (the broker answers 409) and nothing
//!    changes. A Succeeded step therefore never changes again.
//! 3. Otherwise the event is applied. Completions and failures are accepted while the attempt is `Ready` as
//!    well as `Running`: the broker answers claims from memory and the claim is written later, so a fast worker
//!    may finish before its claim is persisted.
//!
//! An output or error message that would take the status past its budget fails the attempt for good with
//! `StatusTooLarge` instead (see [`super::budget`]); `statusBytes` of the new status is the running estimate,
//! corrected by the next decision's measurement.
//!
//! forEach instances that Succeeded keep only their output (not their attempt number, to stay compact), so
//! any completion of a Succeeded instance is treated as a duplicate; other events for it are stale.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;
use thiserror::Error;

use super::attempt::{Slot, fail_attempt};
use super::budget::{Room, STATUS_TOO_LARGE, grown_by, json_len, status_bytes, touched_bytes};
use super::decision::{AttemptRef, Note};
use super::output::{
    CHILD_FAILED, HEARTBEAT_LOST, OUTPUT_TOO_DEEP, OUTPUT_TOO_LARGE, TIMEOUT, check_output,
    json_size, normalize, step_error, stored,
};
use super::timers::{after, past};
use super::{Ctx, FlowRunInput};
use crate::api::{FlowPhase, FlowRunStatus, Step, StepPhase, StepStatus};

/// Why an attempt failed, as the worker reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFailure {
    /// The error type (matched by `nonRetryableErrors`).
    pub error_type: String,
    /// A human message; truncated to 2 KiB (keeping the end) when recorded.
    pub message: String,
    /// The process exit code, if any (matched by `nonRetryableExitCodes`).
    pub exit_code: Option<i32>,
}

/// How a child FlowRun ended.
#[derive(Clone, Debug, PartialEq)]
pub enum ChildOutcome {
    /// The child Succeeded with this output (its `status.output`).
    Succeeded(Option<Value>),
    /// The child Failed, with the message of its `Succeeded` condition.
    Failed(String),
    /// The child was Cancelled.
    Cancelled,
}

/// Something that happened outside the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A worker claimed the attempt at `at` (the broker's clock); the engine records the worker, the start
    /// time and the attempt's deadline (`at` + timeout, see [`super::Task::deadline_if_claimed_at`]).
    Claimed {
        /// The attempt.
        attempt: AttemptRef,
        /// The worker (pod name).
        worker: String,
        /// When the broker handed the task out.
        at: Timestamp,
    },
    /// The attempt succeeded with this output.
    Completed {
        /// The attempt.
        attempt: AttemptRef,
        /// The output; over `maxOutputBytes` it becomes a non-retryable `OutputTooLarge` failure.
        output: Value,
    },
    /// The attempt failed.
    Failed {
        /// The attempt.
        attempt: AttemptRef,
        /// What went wrong.
        error: TaskFailure,
        /// The worker's opinion; `false` ends the step whatever the retry policy says.
        retryable: bool,
    },
    /// The broker saw the attempt's deadline pass (retryable `Timeout`). `decide` notices deadlines too; this
    /// event lets the broker report it without waiting for the next decision.
    TimedOut {
        /// The attempt.
        attempt: AttemptRef,
    },
    /// The worker stopped heartbeating or its pod went away (retryable `HeartbeatLost`, invariant 7).
    HeartbeatLost {
        /// The attempt.
        attempt: AttemptRef,
    },
    /// A child FlowRun of a `flow` step ended.
    ChildFinished {
        /// The parent's step.
        step: String,
        /// The child's name.
        child: String,
        /// How it ended.
        outcome: ChildOutcome,
    },
    /// The child FlowRun of one instance of a forEach over a `flow` step ended.
    InstanceChildFinished {
        /// The parent's step.
        step: String,
        /// The instance's index.
        index: u32,
        /// The child's name.
        child: String,
        /// How it ended.
        outcome: ChildOutcome,
    },
}

impl Event {
    /// The attempt the event is about, for attempt events.
    pub fn attempt(&self) -> Option<&AttemptRef> {
        match self {
            Event::Claimed { attempt, .. }
            | Event::Completed { attempt, .. }
            | Event::Failed { attempt, .. }
            | Event::TimedOut { attempt }
            | Event::HeartbeatLost { attempt } => Some(attempt),
            Event::ChildFinished { .. } | Event::InstanceChildFinished { .. } => None,
        }
    }
}

/// An event the engine accepted.
#[derive(Clone, Debug, PartialEq)]
pub enum EventOutcome {
    /// The event changed the status; persist it, then acknowledge.
    Applied {
        /// The new status (`signals` untouched).
        status: Box<FlowRunStatus>,
        /// Kubernetes-event-worthy notes.
        notes: Vec<Note>,
    },
    /// The event was already recorded; nothing changes, acknowledge again.
    Duplicate,
}

/// An event the engine refused; nothing changes. The broker answers 409.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Refusal {
    /// No step of that name in the spec.
    #[error("no step named {step:?} in this flow")]
    UnknownStep {
        /// The step named by the event.
        step: String,
    },
    /// The step is not a forEach step, or has no such instance.
    #[error("step {step:?} has no instance {instance:?}")]
    UnknownInstance {
        /// The step.
        step: String,
        /// The instance named by the event.
        instance: Option<u32>,
    },
    /// The event does not fit the kind of step (a completion for a sleep step ...).
    #[error("step {step:?} is not a {expected} step")]
    WrongKind {
        /// The step.
        step: String,
        /// The kind the event needs.
        expected: &'static str,
    },
    /// The attempt was never dispatched.
    #[error("{attempt} was never dispatched")]
    NotDispatched {
        /// The attempt named by the event.
        attempt: AttemptRef,
    },
    /// The attempt is not the current one, already failed, or the step has ended.
    #[error("{attempt} is stale: the step is {phase:?} at attempt {current}")]
    Stale {
        /// The attempt named by the event.
        attempt: AttemptRef,
        /// The current attempt.
        current: u32,
        /// The step's (or instance's) phase.
        phase: StepPhase,
    },
    /// The child named by the event is not the step's child.
    #[error("step {step:?} does not run child {child:?}")]
    UnknownChild {
        /// The step.
        step: String,
        /// The child named by the event.
        child: String,
    },
    /// The run has ended.
    #[error("the run has ended ({phase:?})")]
    FlowFinished {
        /// The run's phase.
        phase: FlowPhase,
    },
}

impl Refusal {
    /// Whether the refusal is about an attempt that is not current (the wire's `StaleAttempt`) rather than
    /// about something unknown (`UnknownTask`).
    pub fn is_stale(&self) -> bool {
        matches!(self, Refusal::Stale { .. } | Refusal::FlowFinished { .. })
    }
}

/// Folds one event into the status. See the module documentation for the fencing rules.
pub fn apply_event(
    flow: &FlowRunInput<'_>,
    event: &Event,
    now: Timestamp,
) -> Result<EventOutcome, Refusal> {
    let mut status = flow.status.clone();
    let room = Room::new(flow.status, flow.limits);
    Ok(match fold(flow, &room, &mut status, event, now)? {
        Folded::Duplicate => EventOutcome::Duplicate,
        Folded::Applied(notes) => EventOutcome::Applied {
            status: Box::new(status),
            notes,
        },
    })
}

/// What [`apply_event_in_place`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Folded {
    /// The event changed the status; these are its Kubernetes-event-worthy notes.
    Applied(Vec<Note>),
    /// The event was already recorded; nothing changed.
    Duplicate,
}

/// Folds one event into `status` itself, as [`apply_event`] does into a copy: the status writer folds a
/// batch of events into one status, and copying a big forEach's status for each of its events cost more than
/// the events. A refusal or a duplicate leaves `status` as it was (every rule checks before it changes
/// anything). `flow.status` is only what the message of a `StatusTooLarge` failure breaks down: the status as
/// last written; the room left is the one of `status`.
pub fn apply_event_in_place(
    flow: &FlowRunInput<'_>,
    status: &mut FlowRunStatus,
    event: &Event,
    now: Timestamp,
) -> Result<Folded, Refusal> {
    let room = Room::sized(flow.status, status, flow.limits);
    fold(flow, &room, status, event, now)
}

fn fold(
    flow: &FlowRunInput<'_>,
    room: &Room<'_>,
    status: &mut FlowRunStatus,
    event: &Event,
    now: Timestamp,
) -> Result<Folded, Refusal> {
    let scheduled = super::exit::scheduled(flow.spec);
    let declared = flow.spec;
    let flow = &FlowRunInput {
        spec: &scheduled,
        ..*flow
    };
    let ctx = Ctx::new(flow, declared, now);
    let flow_phase = status.phase.unwrap_or_default();
    let bytes_before = status.status_bytes;
    let mut notes = Vec::new();
    let (touched_step, touched_instance) = match event {
        Event::ChildFinished { step, .. } => (step.as_str(), None),
        Event::InstanceChildFinished { step, index, .. } => (step.as_str(), Some(*index)),
        _ => {
            let a = event.attempt().expect("attempt event");
            (a.step.as_str(), a.instance)
        }
    };
    let touched = |status: &FlowRunStatus| {
        status
            .steps
            .get(touched_step)
            .map_or(0, |st| touched_bytes(st, touched_instance))
    };
    let touched_before = touched(status);
    let outcome = match event {
        Event::ChildFinished {
            step,
            child,
            outcome,
        } => child_finished(
            &ctx, room, status, flow_phase, step, child, outcome, &mut notes,
        )?,
        Event::InstanceChildFinished {
            step,
            index,
            child,
            outcome,
        } => instance_child_finished(
            &ctx,
            room,
            status,
            flow_phase,
            (step, *index),
            child,
            outcome,
            &mut notes,
        )?,
        _ => {
            let a = event.attempt().expect("attempt event");
            let (_, step) = ctx.step(&a.step).ok_or_else(|| Refusal::UnknownStep {
                step: a.step.clone(),
            })?;
            if step.handler.is_none() {
                return Err(Refusal::WrongKind {
                    step: a.step.clone(),
                    expected: "handler",
                });
            }
            let st = status
                .steps
                .get_mut(&a.step)
                .ok_or_else(|| Refusal::NotDispatched { attempt: a.clone() })?;
            match (a.instance, step.for_each.is_some()) {
                (None, false) => plain(&ctx, room, step, st, flow_phase, event, a, &mut notes)?,
                (Some(i), true) => {
                    instance(&ctx, room, step, st, flow_phase, event, a, i, &mut notes)?
                }
                _ => {
                    return Err(Refusal::UnknownInstance {
                        step: a.step.clone(),
                        instance: a.instance,
                    });
                }
            }
        }
    };
    Ok(match outcome {
        Change::Duplicate => Folded::Duplicate,
        Change::Applied => {
            // Only one step changed: its growth updates the estimate without measuring the whole status.
            let estimate = match bytes_before {
                Some(before) => grown_by(before, touched(status) as i64 - touched_before as i64),
                None => status_bytes(status),
            };
            status.status_bytes = Some(estimate);
            Folded::Applied(notes)
        }
    })
}

enum Change {
    Applied,
    Duplicate,
}

/// Rule 1 and 2 of the module documentation for one attempt slot.
fn fence(
    phase: StepPhase,
    attempts: u32,
    error: Option<&crate::api::StepError>,
    worker: Option<&str>,
    flow_phase: FlowPhase,
    event: &Event,
    a: &AttemptRef,
) -> Result<Change, Refusal> {
    let recorded_error = |t: &str| error.is_some_and(|e| e.attempt == a.attempt && e.type_ == t);
    let duplicate = match event {
        Event::Claimed { worker: w, .. } => {
            phase == StepPhase::Running && attempts == a.attempt && worker == Some(w.as_str())
        }
        // A completion refused as too large (or too deep) was recorded as that attempt's failure: repeating
        // it is harmless.
        Event::Completed { .. } => {
            (phase == StepPhase::Succeeded && attempts == a.attempt)
                || recorded_error(OUTPUT_TOO_LARGE)
                || recorded_error(OUTPUT_TOO_DEEP)
                || recorded_error(STATUS_TOO_LARGE)
        }
        Event::Failed { error: e, .. } => {
            recorded_error(&e.error_type) || recorded_error(STATUS_TOO_LARGE)
        }
        Event::TimedOut { .. } => recorded_error(TIMEOUT),
        Event::HeartbeatLost { .. } => recorded_error(HEARTBEAT_LOST),
        Event::ChildFinished { .. } | Event::InstanceChildFinished { .. } => false,
    };
    if duplicate {
        return Ok(Change::Duplicate);
    }
    if phase.is_terminal()
        || attempts != a.attempt
        || !matches!(phase, StepPhase::Ready | StepPhase::Running)
    {
        if attempts == 0 || (a.attempt > attempts && !phase.is_terminal()) {
            return Err(Refusal::NotDispatched { attempt: a.clone() });
        }
        return Err(Refusal::Stale {
            attempt: a.clone(),
            current: attempts,
            phase,
        });
    }
    if flow_phase.is_terminal() {
        return Err(Refusal::FlowFinished { phase: flow_phase });
    }
    Ok(Change::Applied)
}

/// What an applicable attempt event does to a slot. Returns the output when the attempt succeeded.
fn apply_to_slot(
    ctx: &Ctx<'_>,
    room: &Room<'_>,
    step: &Step,
    instance: Option<u32>,
    slot: &mut Slot<'_>,
    event: &Event,
    notes: &mut Vec<Note>,
) -> Option<Value> {
    let attempt = *slot.attempts;
    let failure = |t: &str, m: String, code: Option<i32>| step_error(t, &m, code, attempt);
    let (error, retryable) = match event {
        Event::Claimed { worker, at, .. } => {
            *slot.phase = StepPhase::Running;
            *slot.worker = Some(worker.clone());
            *slot.deadline = ctx.timeout(step).map(|t| Time(after(*at, t)));
            return None;
        }
        Event::Completed { output, .. } => match check_output(output, ctx.max_output()) {
            Ok(()) => match room.admit("the output", json_size(output)) {
                Ok(()) => {
                    *slot.phase = StepPhase::Succeeded;
                    *slot.deadline = None;
                    *slot.wake_at = None;
                    return Some(output.clone());
                }
                Err(msg) => (failure(STATUS_TOO_LARGE, msg, None), false),
            },
            Err(refused) => (failure(refused.type_, refused.message, None), false),
        },
        Event::Failed {
            error, retryable, ..
        } => {
            let reported = failure(&error.error_type, error.message.clone(), error.exit_code);
            match room.admit("the error", json_len(&reported)) {
                Ok(()) => (reported, *retryable),
                // A retry would record another such error: the attempt fails for good, naming the cause.
                Err(msg) => {
                    let cause = sluice_wire::truncate_message(&reported.message, 200);
                    let msg = format!(
                        "{msg} (the attempt failed with {}: {cause})",
                        reported.type_
                    );
                    (failure(STATUS_TOO_LARGE, msg, error.exit_code), false)
                }
            }
        }
        Event::TimedOut { .. } => (
            failure(
                TIMEOUT,
                format!("attempt {attempt} did not finish before its deadline"),
                None,
            ),
            true,
        ),
        Event::HeartbeatLost { .. } => (
            failure(
                HEARTBEAT_LOST,
                format!(
                    "worker {} stopped heartbeating during attempt {attempt}",
                    slot.worker.as_deref().unwrap_or("(unknown)")
                ),
                None,
            ),
            true,
        ),
        Event::ChildFinished { .. } | Event::InstanceChildFinished { .. } => return None,
    };
    notes.push(fail_attempt(ctx, step, instance, slot, error, retryable));
    None
}

#[allow(clippy::too_many_arguments)]
fn plain(
    ctx: &Ctx<'_>,
    room: &Room<'_>,
    step: &Step,
    st: &mut StepStatus,
    flow_phase: FlowPhase,
    event: &Event,
    a: &AttemptRef,
    notes: &mut Vec<Note>,
) -> Result<Change, Refusal> {
    if let Change::Duplicate = fence(
        st.phase,
        st.attempts,
        st.error.as_ref(),
        st.worker.as_deref(),
        flow_phase,
        event,
        a,
    )? {
        return Ok(Change::Duplicate);
    }
    if let Event::Claimed { at, .. } = event {
        st.started_at.get_or_insert_with(|| past(*at));
    }
    let mut slot = Slot::of_step(st);
    let output = apply_to_slot(ctx, room, step, None, &mut slot, event, notes);
    if let Some(out) = output {
        st.output = stored(out);
    }
    if st.phase.is_terminal() {
        st.finished_at = Some(past(ctx.now));
    }
    Ok(Change::Applied)
}

#[allow(clippy::too_many_arguments)]
fn instance(
    ctx: &Ctx<'_>,
    room: &Room<'_>,
    step: &Step,
    st: &mut StepStatus,
    flow_phase: FlowPhase,
    event: &Event,
    a: &AttemptRef,
    index: u32,
    notes: &mut Vec<Note>,
) -> Result<Change, Refusal> {
    let unknown = || Refusal::UnknownInstance {
        step: a.step.clone(),
        instance: Some(index),
    };
    let Some(inst) = st.instances.as_mut() else {
        return Err(Refusal::NotDispatched { attempt: a.clone() });
    };
    if index >= inst.total {
        return Err(unknown());
    }
    let key = index.to_string();
    let succeeded =
        inst.outputs.contains_key(&key) || (st.phase == StepPhase::Succeeded && inst.total > 0);
    if succeeded {
        return match event {
            Event::Completed { .. } => Ok(Change::Duplicate),
            _ => Err(Refusal::Stale {
                attempt: a.clone(),
                current: a.attempt,
                phase: StepPhase::Succeeded,
            }),
        };
    }
    let Some(mut one) = inst.active.remove(&key) else {
        if st.phase.is_terminal() {
            return Err(Refusal::Stale {
                attempt: a.clone(),
                current: 0,
                phase: st.phase,
            });
        }
        return Err(Refusal::NotDispatched { attempt: a.clone() });
    };
    let fenced = fence(
        one.phase,
        one.attempts,
        one.error.as_ref(),
        one.worker.as_deref(),
        flow_phase,
        event,
        a,
    );
    let change = match fenced {
        Ok(Change::Applied) => Change::Applied,
        other => {
            inst.active.insert(key, one);
            return other;
        }
    };
    if let Event::Claimed { at, .. } = event {
        st.started_at.get_or_insert_with(|| past(*at));
    }
    let output = apply_to_slot(
        ctx,
        room,
        step,
        Some(index),
        &mut Slot::of_instance(&mut one, st.started_at.as_ref().map(|t| t.0)),
        event,
        notes,
    );
    match output {
        Some(out) => {
            inst.outputs.insert(key, normalize(out));
            inst.succeeded += 1;
        }
        None => {
            if one.phase == StepPhase::Failed {
                inst.failed += 1;
            }
            inst.active.insert(key, one);
        }
    }
    Ok(change)
}

#[allow(clippy::too_many_arguments)]
fn child_finished(
    ctx: &Ctx<'_>,
    room: &Room<'_>,
    status: &mut FlowRunStatus,
    flow_phase: FlowPhase,
    step_name: &str,
    child: &str,
    outcome: &ChildOutcome,
    notes: &mut Vec<Note>,
) -> Result<Change, Refusal> {
    let unknown_child = || Refusal::UnknownChild {
        step: step_name.to_owned(),
        child: child.to_owned(),
    };
    let st = child_step(ctx, status, step_name, child, false)?;
    if st.child.as_deref() != Some(child) {
        return Err(unknown_child());
    }
    if st.phase.is_terminal() {
        let same = match outcome {
            ChildOutcome::Succeeded(_) => st.phase == StepPhase::Succeeded,
            _ => {
                st.phase == StepPhase::Failed
                    && st.error.as_ref().is_some_and(|e| e.type_ == CHILD_FAILED)
            }
        };
        if same {
            return Ok(Change::Duplicate);
        }
        return Err(Refusal::Stale {
            attempt: AttemptRef::step(step_name, st.attempts),
            current: st.attempts,
            phase: st.phase,
        });
    }
    if flow_phase.is_terminal() {
        return Err(Refusal::FlowFinished { phase: flow_phase });
    }
    match child_output(ctx, room, child, outcome) {
        Ok(out) => {
            st.phase = StepPhase::Succeeded;
            st.output = stored(out);
        }
        Err((t, msg)) => {
            st.phase = StepPhase::Failed;
            st.error = Some(step_error(t, &msg, None, st.attempts));
            notes.push(Note::warning(
                "StepFailed",
                Some(step_name),
                format!("step {step_name:?} failed: {msg}"),
            ));
        }
    }
    st.finished_at = Some(past(ctx.now));
    Ok(Change::Applied)
}

/// The status of the `flow` step a child's end is reported for (`fan_out`: a forEach over a `flow` step),
/// refusing steps of another kind and steps not started.
fn child_step<'s>(
    ctx: &Ctx<'_>,
    status: &'s mut FlowRunStatus,
    step_name: &str,
    child: &str,
    fan_out: bool,
) -> Result<&'s mut StepStatus, Refusal> {
    let (_, step) = ctx.step(step_name).ok_or_else(|| Refusal::UnknownStep {
        step: step_name.to_owned(),
    })?;
    if step.flow.is_none() || (fan_out && step.for_each.is_none()) {
        return Err(Refusal::WrongKind {
            step: step_name.to_owned(),
            expected: if fan_out { "flow with forEach" } else { "flow" },
        });
    }
    status
        .steps
        .get_mut(step_name)
        .ok_or_else(|| Refusal::UnknownChild {
            step: step_name.to_owned(),
            child: child.to_owned(),
        })
}

/// What a child's end gives its step or instance: the child's output, when it Succeeded with an output the
/// step may record; otherwise the error type and message the step or instance fails with.
fn child_output(
    ctx: &Ctx<'_>,
    room: &Room<'_>,
    child: &str,
    outcome: &ChildOutcome,
) -> Result<Value, (&'static str, String)> {
    match outcome {
        ChildOutcome::Succeeded(out) => {
            let out = out.clone().unwrap_or(Value::Null);
            check_output(&out, ctx.max_output())
                .map_err(|refused| (refused.type_, refused.message))?;
            room.admit("the child flow's output", json_size(&out))
                .map_err(|msg| (STATUS_TOO_LARGE, msg))?;
            Ok(out)
        }
        ChildOutcome::Failed(msg) => {
            Err((CHILD_FAILED, format!("child flow {child} failed: {msg}")))
        }
        ChildOutcome::Cancelled => Err((CHILD_FAILED, format!("child flow {child} was cancelled"))),
    }
}

/// The end of the child FlowRun of instance `index` of a forEach over a `flow` step: a Succeeded child gives
/// the instance its output, any other end fails the instance (and, at the next decision, the step).
#[allow(clippy::too_many_arguments)]
fn instance_child_finished(
    ctx: &Ctx<'_>,
    room: &Room<'_>,
    status: &mut FlowRunStatus,
    flow_phase: FlowPhase,
    (step_name, index): (&str, u32),
    child: &str,
    outcome: &ChildOutcome,
    notes: &mut Vec<Note>,
) -> Result<Change, Refusal> {
    let unknown_child = || Refusal::UnknownChild {
        step: step_name.to_owned(),
        child: child.to_owned(),
    };
    let st = child_step(ctx, status, step_name, child, true)?;
    let key = index.to_string();
    let step_phase = st.phase;
    let inst = st.instances.as_mut().ok_or_else(unknown_child)?;
    let succeeded = matches!(outcome, ChildOutcome::Succeeded(_));
    // A Succeeded instance keeps its output until the step ends, then only the step's output does.
    if inst.outputs.contains_key(&key) || (step_phase == StepPhase::Succeeded && succeeded) {
        return if succeeded {
            Ok(Change::Duplicate)
        } else {
            Err(unknown_child())
        };
    }
    let one = inst.active.get_mut(&key).ok_or_else(unknown_child)?;
    if one.child.as_deref() != Some(child) {
        return Err(unknown_child());
    }
    if one.phase.is_terminal() {
        let same = !succeeded
            && one.phase == StepPhase::Failed
            && one.error.as_ref().is_some_and(|e| e.type_ == CHILD_FAILED);
        if same {
            return Ok(Change::Duplicate);
        }
        return Err(Refusal::Stale {
            attempt: AttemptRef::instance(step_name, index, one.attempts),
            current: one.attempts,
            phase: one.phase,
        });
    }
    if flow_phase.is_terminal() {
        return Err(Refusal::FlowFinished { phase: flow_phase });
    }
    match child_output(ctx, room, child, outcome) {
        Ok(out) => {
            inst.active.remove(&key);
            inst.outputs.insert(key, normalize(out));
            inst.succeeded += 1;
        }
        Err((t, msg)) => {
            one.phase = StepPhase::Failed;
            one.error = Some(step_error(t, &msg, None, one.attempts));
            inst.failed += 1;
            notes.push(Note::warning(
                "InstanceFailed",
                Some(step_name),
                format!("step {step_name:?} instance {index} failed: {msg}"),
            ));
        }
    }
    Ok(Change::Applied)
}
