//! Scenario tests of concurrency limits (`spec.concurrency`): what the engine does with the shell's verdict
//! on a slot.

use super::*;

fn limited(key: &str) -> serde_json::Value {
    json!({
        "pool": "reports",
        "input": {"tenant": "acme"},
        "concurrency": {"key": key, "limit": 2},
        "steps": [{"name": "build", "handler": "build"}],
    })
}

fn waiting(holders: &[&str], ahead: usize) -> Admission {
    Admission::Waiting {
        holders: holders.iter().map(|h| h.to_string()).collect(),
        ahead,
    }
}

#[test]
fn a_run_without_a_slot_stays_pending_with_its_key_and_why_and_starts_nothing() {
    let mut h = H::new(limited("${{ input.tenant }}"));
    h.admission = waiting(&["r1", "r2"], 1);
    let d = h.decide();
    assert!(d.tasks.is_empty(), "nothing starts without a slot");
    assert_eq!(h.flow_phase(), FlowPhase::Pending);
    assert_eq!(h.phase("build"), StepPhase::Pending);
    let slot = h.status.concurrency.clone().expect("status.concurrency");
    assert_eq!(slot.key, "acme");
    assert!(slot.admitted_at.is_none());
    let (status, reason, message) = h.condition("Admitted");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ConcurrencyLimit")
    );
    assert_eq!(
        message,
        "waiting for a slot of concurrency key \"acme\": 2 of 2 held by r1, r2; 1 older run waits first"
    );
    assert_eq!(h.condition("Ready").1, "ConcurrencyLimit");
    assert!(h.status.started_at.is_none(), "it has not started");
    assert!(
        d.wake_at.is_some(),
        "a waiting run looks at the slots again on its own"
    );
    assert!(d.notes.iter().any(|n| n.reason == "WaitingForSlot"));

    // Looking again with the same verdict changes nothing and says nothing new.
    let again = h.decide();
    assert!(again.notes.is_empty(), "{:?}", again.notes);
    assert!(engine_patch_is_empty(&d.status, &again.status));
}

fn engine_patch_is_empty(before: &FlowRunStatus, after: &FlowRunStatus) -> bool {
    patch::is_empty(&status_patch(before, after))
}

#[test]
fn a_granted_run_records_its_admission_and_starts_and_keeps_its_slot_without_asking_again() {
    let mut h = H::new(limited("nightly"));
    h.admission = waiting(&["r1", "r2"], 0);
    h.decide();
    h.admission = Admission::Granted;
    h.advance(30);
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["build attempt 1"]);
    let slot = h.status.concurrency.clone().unwrap();
    assert_eq!(slot.key, "nightly");
    assert!(slot.admitted_at.is_some());
    assert_eq!(h.condition("Admitted").0, "True");
    assert!(d.notes.iter().any(|n| n.reason == "Admitted"));
    assert!(concurrency::holds_slot(&h.status));

    // Once admitted, the shell's verdict no longer matters.
    h.admission = Admission::NotAsked;
    h.claim("build", 1);
    h.complete("build", 1, json!({"ok": true}));
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
    assert!(
        !concurrency::holds_slot(&h.status),
        "a finished run gives its slot back"
    );
}

#[test]
fn nobody_counted_means_the_run_waits() {
    let mut h = H::new(limited("k"));
    let d = h.decide();
    assert!(d.tasks.is_empty());
    assert_eq!(h.flow_phase(), FlowPhase::Pending);
    assert_eq!(h.condition("Admitted").0, "False");
}

#[test]
fn a_run_cancelled_while_it_waits_ends_cancelled_without_a_slot() {
    let mut spec = limited("k");
    spec["cancel"] = json!(true);
    spec["onExit"] = json!([{"name": "notify", "handler": "notify"}]);
    let mut h = H::new(spec);
    h.admission = Admission::Granted;
    let d = h.decide();
    assert!(d.tasks.is_empty(), "neither main nor exit steps run");
    assert_eq!(h.flow_phase(), FlowPhase::Cancelled);
    assert!(
        h.status
            .concurrency
            .as_ref()
            .is_none_or(|c| c.admitted_at.is_none())
    );
}

#[test]
fn a_key_that_does_not_resolve_fails_the_run_naming_the_field() {
    let mut h = H::new(limited("${{ input.region }}"));
    h.admission = Admission::Granted;
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    let (_, reason, message) = h.condition("Ready");
    assert_eq!(reason, "Invalid");
    assert!(message.contains("spec.concurrency.key"), "{message}");
}

#[test]
fn a_key_using_steps_is_refused_by_validation() {
    let mut spec = limited("${{ steps.build.output }}");
    spec["steps"] = json!([{"name": "build", "handler": "build"}]);
    let mut h = H::new(spec);
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    let (_, _, message) = h.condition("Invalid");
    assert!(
        message.contains("spec.concurrency.key") && message.contains("sees only input"),
        "{message}"
    );
}

#[test]
fn a_retried_run_waits_for_a_slot_again() {
    let mut h = H::new(limited("k"));
    h.admission = Admission::Granted;
    h.decide();
    h.claim("build", 1);
    h.fail("build", 1, "Boom", false);
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    assert!(!concurrency::needs_admission(&h.spec, Some(&h.status)));

    h.spec.retry_request = Some("again".into());
    assert!(concurrency::needs_admission(&h.spec, Some(&h.status)));
    h.admission = waiting(&["other-1", "other-2"], 0);
    let d = h.decide();
    assert!(d.tasks.is_empty(), "no slot, no step");
    assert_eq!(h.flow_phase(), FlowPhase::Pending);
    assert!(h.status.concurrency.as_ref().unwrap().admitted_at.is_none());

    h.admission = Admission::Granted;
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["build attempt 2"]);
    assert_eq!(h.flow_phase(), FlowPhase::Running);
}
