//! One batch of a FlowRun's status writer, as a pure function: the observed FlowRun, the events that arrived
//! since the last write (worker results, claims, losses, finished children) and the time go in; out comes
//! what to write, what to answer each event's sender, what to hand the broker and which side effects follow.
//! [`super::writer`] only carries the plan out, in this order: write the status (if anything changed) →
//! acknowledge the applied events → hand the decided tasks to the broker → side effects, off the lane.
//!
//! Keeping this free of I/O is what lets the durability invariants be checked on random event orders
//! (`operator/tests/batch_properties.rs`):
//! 1. a task is handed out only if its attempt is in the status the plan writes;
//! 2. an event is acknowledged as applied only if the plan's status records it (it waits for the write);
//! 3. a Succeeded step stays Succeeded with its output and is never handed out again;
//! 4. an event for an older attempt or an ended step changes nothing.

use jiff::Timestamp;
use serde_json::Value;

use crate::api::{FlowRun, FlowRunStatus};
use crate::engine::{
    self, Admission, Decision, Event, FlowMeta, FlowRunInput, Folded, Limits, Note,
};

/// What becomes of one event of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Folded into the new status: acknowledge once that status is persisted.
    Applied,
    /// Already recorded (a worker repeating a report): acknowledge at once.
    Duplicate,
    /// About an attempt that is not current, or a step or run that has ended.
    Stale(String),
    /// About a step, instance or attempt this run does not know.
    Unknown(String),
}

impl Reply {
    /// Whether the sender must wait for the write before it hears the answer.
    pub fn waits_for_write(&self) -> bool {
        matches!(self, Reply::Applied)
    }
}

/// Everything one batch decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// One reply per event, in the order of the events.
    pub replies: Vec<Reply>,
    /// The engine's decision on the status after every event: the status to persist, the tasks the broker
    /// queues once it is persisted, children to create or cancel, workers to stop, the next wake-up.
    pub decision: Decision,
    /// The JSON merge patch from the observed status to `decision.status` (only changed fields; never
    /// `signals`, which users own). Empty when nothing changed.
    pub patch: Value,
    /// The status to write in place of the observed one: `decision.status` with the observed `signals`.
    /// The writer sends it fenced by the observed version, so it can never overwrite a newer signal.
    pub replacement: Value,
    /// Notes for Kubernetes Events, from the events and the decision, in order.
    pub notes: Vec<Note>,
}

impl Plan {
    /// Whether the plan needs a status write.
    pub fn needs_write(&self) -> bool {
        !engine::patch::is_empty(&self.patch)
    }

    /// Whether anything beyond the status and the broker follows (children, Events), to run off the lane.
    pub fn has_side_effects(&self) -> bool {
        !self.decision.create_children.is_empty()
            || !self.decision.cancel_children.is_empty()
            || !self.notes.is_empty()
    }
}

/// Folds `events`, in order, into the status of `observed`, then decides at `now`, within `limits` (the
/// operator's status budget), with `admission` the verdict on a concurrency slot the run waits for.
pub fn plan(
    observed: &FlowRun,
    events: &[Event],
    now: Timestamp,
    limits: Limits,
    admission: &Admission,
) -> Plan {
    let meta = FlowMeta::of(observed);
    let before: FlowRunStatus = observed.status.clone().unwrap_or_default();
    // One copy for the whole batch: the events fold into it in place.
    let mut status = before.clone();
    let mut notes = Vec::new();
    let mut replies = Vec::with_capacity(events.len());
    let written = FlowRunInput {
        meta: &meta,
        spec: &observed.spec,
        status: &before,
        limits,
        admission,
    };
    for event in events {
        let reply = match engine::apply_event_in_place(&written, &mut status, event, now) {
            Ok(Folded::Applied(more)) => {
                notes.extend(more);
                Reply::Applied
            }
            Ok(Folded::Duplicate) => Reply::Duplicate,
            Err(refusal) if refusal.is_stale() => Reply::Stale(refusal.to_string()),
            Err(refusal) => Reply::Unknown(refusal.to_string()),
        };
        replies.push(reply);
    }
    let input = FlowRunInput {
        meta: &meta,
        spec: &observed.spec,
        status: &status,
        limits,
        admission,
    };
    let decision = engine::decide(&input, now);
    notes.extend(decision.notes.iter().cloned());
    let patch = engine::status_patch(&before, &decision.status);
    let replacement = engine::status_replacement(&before, &decision.status);
    Plan {
        replies,
        decision,
        patch,
        replacement,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::api::StepPhase;
    use crate::engine::AttemptRef;

    fn chain() -> FlowRun {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "c", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": {"pool": "p", "steps": [
                {"name": "a", "handler": "h"},
                {"name": "b", "handler": "h", "dependsOn": ["a"]}
            ]}
        }))
        .unwrap()
    }

    /// The run after its first write: `a` attempt 1 reserved.
    fn started(now: Timestamp) -> FlowRun {
        let mut fr = chain();
        let first = plan(&fr, &[], now, Limits::default(), &Admission::NotAsked);
        assert!(first.needs_write());
        fr.status = Some(first.decision.status);
        fr
    }

    #[test]
    fn a_new_run_reserves_its_first_attempt_before_handing_it_out() {
        let now = Timestamp::now();
        let p = plan(&chain(), &[], now, Limits::default(), &Admission::NotAsked);
        assert!(p.needs_write());
        assert_eq!(p.decision.tasks.len(), 1);
        let task = &p.decision.tasks[0];
        let st = &p.decision.status.steps[&task.attempt.step];
        assert_eq!(st.phase, StepPhase::Ready);
        assert_eq!(st.attempts, task.attempt.attempt);
    }

    #[test]
    fn a_result_and_the_next_attempt_are_one_write() {
        let now = Timestamp::now();
        let fr = started(now);
        let claimed = Event::Claimed {
            attempt: AttemptRef::step("a", 1),
            worker: "w".into(),
            at: now,
        };
        let done = Event::Completed {
            attempt: AttemptRef::step("a", 1),
            output: json!({"x": 1}),
        };
        let p = plan(
            &fr,
            &[claimed, done],
            now,
            Limits::default(),
            &Admission::NotAsked,
        );
        assert_eq!(p.replies, [Reply::Applied, Reply::Applied]);
        assert!(p.needs_write());
        let steps = &p.patch["status"]["steps"];
        assert_eq!(steps["a"]["phase"], "Succeeded");
        assert_eq!(
            steps["b"]["phase"], "Ready",
            "b is reserved in the same write"
        );
        assert_eq!(p.decision.tasks.len(), 1);
        assert_eq!(p.decision.tasks[0].attempt, AttemptRef::step("b", 1));
        assert!(!p.has_side_effects());
    }

    #[test]
    fn stale_and_repeated_reports_change_nothing() {
        let now = Timestamp::now();
        let fr = started(now);
        let done = Event::Completed {
            attempt: AttemptRef::step("a", 1),
            output: Value::Null,
        };
        let mut after = fr.clone();
        after.status = Some(
            plan(
                &fr,
                std::slice::from_ref(&done),
                now,
                Limits::default(),
                &Admission::NotAsked,
            )
            .decision
            .status,
        );

        let old = Event::Completed {
            attempt: AttemptRef::step("a", 0),
            output: Value::Null,
        };
        let p = plan(
            &after,
            &[done, old],
            now,
            Limits::default(),
            &Admission::NotAsked,
        );
        assert_eq!(p.replies[0], Reply::Duplicate);
        assert!(matches!(p.replies[1], Reply::Stale(_) | Reply::Unknown(_)));
        assert!(!p.needs_write(), "nothing to write: {}", p.patch);

        let unknown = Event::Completed {
            attempt: AttemptRef::step("nope", 1),
            output: Value::Null,
        };
        assert!(matches!(
            plan(
                &after,
                &[unknown],
                now,
                Limits::default(),
                &Admission::NotAsked
            )
            .replies[0],
            Reply::Unknown(_)
        ));
    }
}
