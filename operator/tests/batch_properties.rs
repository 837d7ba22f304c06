//! Property tests of the status writer's pure batch function (`flowrun::batch::plan`): random flows, driven
//! through many batches whose events arrive in random orders — claims, results, failures, losses, repeated
//! and stale reports — as workers and the broker would send them.
//!
//! After every batch, for every order of its events:
//! 1. every task the plan hands to the broker has its attempt reserved (Ready, that attempt number) in the
//!    status the plan writes;
//! 2. a result answered `Applied` is in the written status: the plan writes, the status it writes (which
//!    replaces the stored one) is exactly the decided status with the observed signals, and its merge patch of
//!    what changed, applied as the API server would, gives the same;
//! 3. a step that had Succeeded keeps its phase, attempt and output, and is never handed out again;
//! 4. the refused and repeated events change nothing: planning without them gives the same status.

use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_operator::api::{FlowRun, FlowRunStatus, Signal, StepPhase};
use sluice_operator::engine::patch::apply_merge_patch;
use sluice_operator::engine::{AttemptRef, Event, Limits, NOT_ASKED, TaskFailure};
use sluice_operator::flowrun::batch::{Reply, plan};

/// A random DAG of 1–6 handler steps with 1–3 attempts each.
fn flow() -> impl Strategy<Value = FlowRun> {
    proptest::collection::vec(
        (proptest::collection::vec(any::<usize>(), 0..3), 1u32..4),
        1..7,
    )
    .prop_map(|raw| {
        let steps: Vec<Value> = raw
            .into_iter()
            .enumerate()
            .map(|(i, (deps, attempts))| {
                let mut deps: Vec<String> = if i == 0 {
                    Vec::new()
                } else {
                    deps.into_iter().map(|d| format!("s{}", d % i)).collect()
                };
                deps.sort();
                deps.dedup();
                json!({
                    "name": format!("s{i}"), "handler": "h", "dependsOn": deps,
                    "retry": {"maxAttempts": attempts, "initialBackoff": "1s"}
                })
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "generation": 1},
            "spec": {"pool": "pool", "steps": steps}
        }))
        .expect("a valid FlowRun")
    })
}

/// An event, chosen relative to the status when the batch is built: which kind, which step (an index into
/// the steps), and how far its attempt is off the current one (0: current; otherwise stale or unknown).
#[derive(Clone, Debug)]
struct Pick {
    kind: u8,
    step: usize,
    offset: i8,
}

fn picks() -> impl Strategy<Value = Vec<Vec<(Pick, u32)>>> {
    let pick = (
        0u8..6,
        any::<usize>(),
        prop_oneof![6 => Just(0i8), 1 => -2i8..3],
    )
        .prop_map(|(kind, step, offset)| Pick { kind, step, offset });
    // Batches of events, each with a sort key that shuffles the batch.
    proptest::collection::vec(proptest::collection::vec((pick, any::<u32>()), 0..6), 1..25)
}

fn event(status: &FlowRunStatus, names: &[String], pick: &Pick, now: Timestamp) -> Event {
    let step = &names[pick.step % names.len()];
    let current = status.steps.get(step).map_or(0, |s| s.attempts);
    let attempt = AttemptRef::step(
        step.clone(),
        (i64::from(current) + i64::from(pick.offset)).max(0) as u32,
    );
    match pick.kind {
        0 | 1 => Event::Claimed {
            attempt,
            worker: format!("w{}", pick.step % 3),
            at: now,
        },
        2 => Event::Completed {
            attempt,
            output: json!({"by": step, "n": pick.step}),
        },
        3 => Event::Failed {
            attempt,
            error: TaskFailure {
                error_type: "Boom".into(),
                message: "boom".into(),
                exit_code: None,
            },
            retryable: pick.step.is_multiple_of(2),
        },
        4 => Event::HeartbeatLost { attempt },
        _ => Event::TimedOut { attempt },
    }
}

fn check_batch(
    before: &FlowRun,
    events: &[Event],
    now: Timestamp,
) -> Result<FlowRunStatus, TestCaseError> {
    let p = plan(before, events, now, Limits::default(), &NOT_ASKED);
    let old = before.status.clone().unwrap_or_default();
    let new = &p.decision.status;
    // What the write puts in place of the stored status.
    let written: FlowRunStatus = serde_json::from_value(p.replacement.clone()).unwrap();

    // 1. Handed-out tasks are reserved in the written status.
    for task in &p.decision.tasks {
        let st = written.steps.get(&task.attempt.step);
        prop_assert!(
            st.is_some_and(|s| s.phase == StepPhase::Ready && s.attempts == task.attempt.attempt),
            "task {:?} is not reserved in the status: {:?}",
            task.attempt,
            st
        );
    }

    // 2. Applied events are written; the patch gives exactly the decided status.
    // (Claims excepted: two claims of one attempt may cancel out, and nobody waits for a claim's answer.)
    let results_applied = events
        .iter()
        .zip(&p.replies)
        .any(|(e, r)| *r == Reply::Applied && !matches!(e, Event::Claimed { .. }));
    if results_applied {
        prop_assert!(
            p.needs_write(),
            "an applied event but nothing to write: {:?} -> {:?}",
            events,
            p.replies
        );
    }
    prop_assert_eq!(
        &written.signals,
        &old.signals,
        "the write does not keep the observed signals"
    );
    let mut decided_with_observed_signals = new.clone();
    decided_with_observed_signals.signals = old.signals.clone();
    prop_assert_eq!(
        &written,
        &decided_with_observed_signals,
        "the written status is not the decided one"
    );
    prop_assert_eq!(
        p.needs_write(),
        written != old,
        "a plan writes exactly when the status it would write differs from the observed one"
    );
    let mut patched = serde_json::to_value(&old).unwrap();
    apply_merge_patch(&mut patched, &p.patch["status"]);
    let patched: FlowRunStatus = serde_json::from_value(patched).unwrap();
    prop_assert_eq!(
        &patched,
        new,
        "the merge patch does not give the decided status"
    );

    // 3. Succeeded steps never change and are never handed out.
    for (name, st) in &old.steps {
        if st.phase == StepPhase::Succeeded {
            let now_st = &new.steps[name];
            prop_assert_eq!(now_st.phase, StepPhase::Succeeded);
            prop_assert_eq!(now_st.attempts, st.attempts);
            prop_assert_eq!(&now_st.output, &st.output);
            prop_assert!(!p.decision.tasks.iter().any(|t| &t.attempt.step == name));
        }
    }

    // 4. Refused and repeated events change nothing.
    let applied: Vec<Event> = events
        .iter()
        .zip(&p.replies)
        .filter(|(_, r)| **r == Reply::Applied)
        .map(|(e, _)| e.clone())
        .collect();
    let without = plan(before, &applied, now, Limits::default(), &NOT_ASKED);
    prop_assert_eq!(
        &without.decision.status,
        new,
        "refused or repeated events changed the status"
    );
    Ok(p.decision.status)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn batches_keep_the_durability_invariants_in_every_order(fr in flow(), batches in picks()) {
        let names: Vec<String> = fr.spec.steps.iter().map(|s| s.name.clone()).collect();
        let mut fr = fr;
        let mut now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for (i, batch) in batches.iter().enumerate() {
            // Now and then a user writes a signal between two batches: every write keeps it as observed.
            if batch.len() % 2 == 1 {
                let mut status = fr.status.clone().unwrap_or_default();
                status.signals.insert(format!("user-{i}"), Signal { payload: Some(json!({"n": i})) });
                fr.status = Some(status);
            }
            let status = fr.status.clone().unwrap_or_default();
            let mut events: Vec<(u32, Event)> = batch
                .iter()
                .map(|(pick, key)| (*key, event(&status, &names, pick, now)))
                .collect();
            // The order in which they were generated, and a shuffled one.
            let in_order: Vec<Event> = events.iter().map(|(_, e)| e.clone()).collect();
            check_batch(&fr, &in_order, now)?;
            events.sort_by_key(|(k, _)| *k);
            let shuffled: Vec<Event> = events.into_iter().map(|(_, e)| e).collect();
            let next = check_batch(&fr, &shuffled, now)?;
            fr.status = Some(next);
            now = now.checked_add(SignedDuration::from_millis(700)).unwrap();
        }
    }
}
