//! The attempt life cycle shared by plain handler steps and forEach instances:
//! Ready(N) → Running(N) → Succeeded | Retrying(N) → Ready(N+1) … | Failed.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Ctx;
use super::decision::Note;
use super::retry::{FailureKind, JitterKey, Verdict, verdict};
use crate::api::{InstanceStatus, Step, StepError, StepPhase, StepStatus};

/// Mutable view of the attempt fields of a step or an instance.
pub(crate) struct Slot<'a> {
    pub phase: &'a mut StepPhase,
    pub attempts: &'a mut u32,
    pub error: &'a mut Option<StepError>,
    pub worker: &'a mut Option<String>,
    pub wake_at: &'a mut Option<Time>,
    pub deadline: &'a mut Option<Time>,
    /// Attempts made before the run's last retry request: the retry policy counts from here.
    pub retry_base: u32,
    /// When the step began: the retry budget (`maxDuration`) counts from here.
    pub started: Option<Timestamp>,
}

impl<'a> Slot<'a> {
    pub fn of_step(s: &'a mut StepStatus) -> Self {
        Self {
            phase: &mut s.phase,
            attempts: &mut s.attempts,
            error: &mut s.error,
            worker: &mut s.worker,
            wake_at: &mut s.wake_at,
            deadline: &mut s.deadline,
            retry_base: s.retry_base,
            started: s.started_at.as_ref().map(|t| t.0),
        }
    }

    /// An instance's slot; `started` is its forEach step's start.
    pub fn of_instance(s: &'a mut InstanceStatus, started: Option<Timestamp>) -> Self {
        Self {
            phase: &mut s.phase,
            attempts: &mut s.attempts,
            error: &mut s.error,
            worker: &mut s.worker,
            wake_at: &mut s.wake_at,
            deadline: &mut s.deadline,
            retry_base: s.retry_base,
            started,
        }
    }

    /// Reserves the next attempt: phase Ready, attempts + 1.
    pub fn reserve_next(&mut self) {
        *self.phase = StepPhase::Ready;
        *self.attempts += 1;
        *self.worker = None;
        *self.wake_at = None;
        *self.deadline = None;
    }
}

/// Records the failure of the slot's current attempt and decides, with the step's retry policy, between
/// Retrying (with a backoff) and Failed. Returns the note to report.
pub(crate) fn fail_attempt(
    ctx: &Ctx<'_>,
    step: &Step,
    instance: Option<u32>,
    slot: &mut Slot<'_>,
    error: StepError,
    retryable: bool,
) -> Note {
    let policy = ctx.policy(step);
    let attempt = *slot.attempts;
    // After a retry of the run the policy starts afresh: it sees attempts counted from the retry.
    let counted = attempt.saturating_sub(slot.retry_base).max(1);
    let kind = FailureKind {
        error_type: &error.type_,
        exit_code: error.exit_code,
        retryable,
    };
    let key = JitterKey {
        uid: &ctx.meta.uid,
        step: &step.name,
        instance,
        attempt: counted,
    };
    let what = match instance {
        Some(i) => format!("step {:?} instance {i}", step.name),
        None => format!("step {:?}", step.name),
    };
    let v = verdict(&policy, &kind, key, ctx.now, slot.started);
    let numbered = if slot.retry_base > 0 {
        format!(
            "attempt {attempt} ({counted} of {} since the run was retried)",
            policy.max_attempts
        )
    } else {
        format!("attempt {attempt} of {}", policy.max_attempts)
    };
    let described = if error.message.is_empty() {
        error.type_.clone()
    } else {
        format!("{}: {}", error.type_, error.message)
    };
    *slot.worker = None;
    *slot.deadline = None;
    *slot.error = Some(error);
    match v {
        Verdict::Retry { backoff, wake_at } => {
            *slot.phase = StepPhase::Retrying;
            *slot.wake_at = Some(Time(wake_at));
            Note::normal(
                "RetryScheduled",
                Some(&step.name),
                format!(
                    "{what} {numbered} failed ({described}); retrying in {:.1}s",
                    backoff.as_secs_f64()
                ),
            )
        }
        Verdict::GiveUp(why) => {
            *slot.phase = StepPhase::Failed;
            *slot.wake_at = None;
            Note::warning(
                "StepFailed",
                Some(&step.name),
                format!(
                    "{what} failed at attempt {attempt}: {} ({described})",
                    why.explain(&policy)
                ),
            )
        }
    }
}
