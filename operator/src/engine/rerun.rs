//! Retry of a Failed run, requested through `spec.retryRequest` (what `kubectl sluice retry` writes).
//!
//! The operator stays the only writer of step state (design invariant 8): users only write a new opaque token
//! in the spec, and [`super::decide`] compares it with `status.retry.request`, the last token it acted on.
//!
//! When a new token appears on a Failed run, the run is re-run from the point of failure:
//! * Succeeded and Skipped steps are untouched (invariant 3), and so are Succeeded forEach instances and steps
//!   that Failed with `continueOnFailure` (their dependents already treated them as done).
//! * Every other step that Failed or was Cancelled goes back to Pending, and starts again in the same decision
//!   once its dependencies allow. Its attempt number is kept, so the next attempt is a higher number and
//!   late reports of the old attempts stay refused (invariant 4); `retryBase` records where the retry policy
//!   starts counting again, so the step gets its full `maxAttempts` anew.
//! * A forEach step keeps its Succeeded instances (and their outputs); its failed and cancelled instances
//!   that had an attempt get the next one at once (at most as many as were in flight, so `maxParallel`
//!   holds), and the others start again as the fan-out proceeds.
//! * A `flow` step runs a new child FlowRun: the failed child keeps its name, and the new one is named after
//!   the step and the number of the run (`<parent>-<step>-retry<N>`).
//! * The run goes back to Running: its conditions are recomputed, so the failure condition is cleared.
//!
//! A new token on a run that has not Failed (running, Succeeded, Cancelled) is recorded as Ignored, with a
//! Warning event saying why.

use jiff::Timestamp;

use super::decision::Note;
use super::timers::past;
use crate::api::{
    FlowPhase, FlowRunSpec, FlowRunStatus, RetryOutcome, RetryStatus, StepPhase, StepStatus,
};

/// What [`apply_retry_request`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAction {
    /// No new token.
    None,
    /// The Failed run was reset for a retry.
    Retried,
    /// A new token on a run that had not Failed.
    Ignored,
}

/// Whether a step's state goes back to Pending on a retry.
fn reruns(st: &StepStatus, continue_on_failure: bool) -> bool {
    match st.phase {
        StepPhase::Failed => !continue_on_failure,
        StepPhase::Cancelled => true,
        _ => false,
    }
}

/// Acts on a new `spec.retryRequest`, if any: resets a Failed run for a retry, or records the request as
/// ignored. Pure; returns what it did and pushes the notes to report.
pub fn apply_retry_request(
    spec: &FlowRunSpec,
    status: &mut FlowRunStatus,
    now: Timestamp,
    notes: &mut Vec<Note>,
) -> RetryAction {
    let Some(token) = spec.retry_request.as_deref() else {
        return RetryAction::None;
    };
    if status.retry.as_ref().is_some_and(|r| r.request == token) {
        return RetryAction::None;
    }
    let count = status.retry.as_ref().map_or(0, |r| r.count);
    let phase = status.phase.unwrap_or_default();
    if phase != FlowPhase::Failed {
        let message = format!("the run is {phase:?}, not Failed: there is nothing to retry");
        notes.push(Note::warning("RetryIgnored", None, message.clone()));
        status.retry = Some(RetryStatus {
            request: token.to_owned(),
            outcome: RetryOutcome::Ignored,
            message,
            time: Some(past(now)),
            count,
        });
        return RetryAction::Ignored;
    }

    let mut rerun = Vec::new();
    for step in &spec.steps {
        let Some(st) = status.steps.get_mut(&step.name) else {
            continue;
        };
        if !reruns(st, step.continue_on_failure) {
            continue;
        }
        rerun.push(step.name.clone());
        st.finished_at = None;
        st.wake_at = None;
        st.deadline = None;
        st.worker = None;
        st.message = None;
        if step.flow.is_some() {
            // The number of child runs so far; the next child gets a new name.
            st.retry_base = st.retry_base.saturating_add(1);
            st.child = None;
            st.phase = StepPhase::Pending;
            continue;
        }
        st.retry_base = st.attempts;
        match st.instances.as_mut() {
            Some(inst) if step.for_each.is_some() => {
                // Succeeded instances keep their outputs; the others run again.
                inst.failed = 0;
                inst.active.retain(|_, one| one.attempts > 0);
                for one in inst.active.values_mut() {
                    one.retry_base = one.attempts;
                    one.phase = StepPhase::Ready;
                    one.attempts += 1;
                    one.worker = None;
                    one.wake_at = None;
                    one.deadline = None;
                }
                st.phase = StepPhase::Running;
            }
            _ => {
                st.phase = StepPhase::Pending;
                st.started_at = None;
                st.signal = None;
            }
        }
    }
    let message = if rerun.is_empty() {
        "no step to re-run; the run is evaluated again".to_owned()
    } else {
        format!("re-running {}", rerun.join(", "))
    };
    notes.push(Note::normal(
        "RetryRequested",
        None,
        format!("retry requested: {message}"),
    ));
    status.phase = Some(FlowPhase::Running);
    status.finished_at = None;
    status.output = None;
    status.retry = Some(RetryStatus {
        request: token.to_owned(),
        outcome: RetryOutcome::Retried,
        message,
        time: Some(past(now)),
        count: count.saturating_add(1),
    });
    RetryAction::Retried
}

/// The name of the child run of a `flow` step: the first child is `<parent>-<step>`; after `runs` earlier
/// children (see [`apply_retry_request`]) it is `<parent>-<step>-retry<runs>`.
pub fn child_name_for(parent: &str, step: &str, runs: u32) -> String {
    if runs == 0 {
        super::child::child_name(parent, step)
    } else {
        super::child::child_name(parent, &format!("{step}-retry{runs}"))
    }
}
