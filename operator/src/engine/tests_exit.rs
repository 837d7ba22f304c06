//! Scenario tests of exit steps (`spec.onExit`), the run's deadline (`spec.activeDeadline`) and the retry
//! budget (`retry.maxDuration`).

use super::*;

/// book → charge → ship, with compensations that run only when the main steps failed.
fn saga() -> serde_json::Value {
    json!({
        "pool": "orders",
        "steps": [
            {"name": "book", "handler": "book"},
            {"name": "charge", "handler": "charge", "dependsOn": ["book"]},
            {"name": "ship", "handler": "ship", "dependsOn": ["charge"]},
        ],
        "onExit": [
            {"name": "refund", "handler": "refund", "when": "${{ flow.phase == 'Failed' && steps.charge.phase == 'Succeeded' }}",
             "input": {"failed": "${{ flow.failedSteps }}", "charge": "${{ steps.charge.output }}"}},
            {"name": "unbook", "handler": "unbook", "when": "${{ flow.phase == 'Failed' }}", "dependsOn": ["refund"]},
        ],
    })
}

fn run_main_through_ship(h: &mut H, ship_fails: bool) {
    for (step, output) in [
        ("book", json!({"booking": "B1"})),
        ("charge", json!({"payment": "P1"})),
    ] {
        let d = h.decide();
        assert_eq!(names(&d.tasks), [format!("{step} attempt 1")]);
        h.claim(step, 1);
        h.complete(step, 1, output);
    }
    h.decide();
    h.claim("ship", 1);
    if ship_fails {
        h.fail("ship", 1, "NoStock", false);
    } else {
        h.complete("ship", 1, json!({"tracking": "T1"}));
    }
}

#[test]
fn a_failed_main_step_runs_the_compensations_and_the_run_ends_failed_with_their_outputs() {
    let mut h = H::new(saga());
    run_main_through_ship(&mut h, true);
    let d = h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Running, "exit steps to run");
    let outcome = h
        .status
        .main_outcome
        .clone()
        .expect("main outcome recorded");
    assert_eq!(outcome.phase, FlowPhase::Failed);
    assert_eq!(outcome.reason, "StepFailed");
    assert_eq!(names(&d.tasks), ["refund attempt 1"]);
    assert_eq!(
        d.tasks[0].input,
        json!({"failed": ["ship"], "charge": {"payment": "P1"}}),
        "exit steps see flow.failedSteps and every main step's output"
    );
    h.claim("refund", 1);
    h.complete("refund", 1, json!({"refunded": "P1"}));
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["unbook attempt 1"]);
    h.claim("unbook", 1);
    h.complete("unbook", 1, json!({"unbooked": "B1"}));
    let d = h.decide();
    assert!(d.tasks.is_empty());
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    assert_eq!(
        h.status.steps["refund"].output,
        Some(json!({"refunded": "P1"}))
    );
    assert_eq!(
        h.status.steps["unbook"].output,
        Some(json!({"unbooked": "B1"}))
    );
    let (status, reason, message) = h.condition("Succeeded");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "StepFailed"));
    assert!(message.contains("ship"), "{message}");
}

#[test]
fn exit_steps_whose_condition_is_false_are_skipped_and_the_run_keeps_the_main_outcome() {
    let mut h = H::new(saga());
    run_main_through_ship(&mut h, false);
    let d = h.decide();
    assert!(d.tasks.is_empty(), "{:?}", names(&d.tasks));
    assert_eq!(h.phase("refund"), StepPhase::Skipped);
    assert_eq!(h.phase("unbook"), StepPhase::Skipped);
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
}

#[test]
fn a_failed_exit_step_fails_a_run_whose_main_steps_succeeded() {
    let mut h = H::new(json!({
        "pool": "p",
        "steps": [{"name": "work", "handler": "work"}],
        "onExit": [{"name": "notify", "handler": "notify", "input": "${{ flow.phase }}"}],
    }));
    h.decide();
    h.claim("work", 1);
    h.complete("work", 1, json!(1));
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["notify attempt 1"]);
    assert_eq!(d.tasks[0].input, json!("Succeeded"));
    h.claim("notify", 1);
    h.fail("notify", 1, "SmtpDown", false);
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    let (_, reason, message) = h.condition("Succeeded");
    assert_eq!(reason, "ExitStepFailed");
    assert!(
        message.contains("notify") && message.contains("Succeeded"),
        "{message}"
    );
}

#[test]
fn a_cancelled_run_still_runs_its_exit_steps_and_ends_cancelled() {
    let mut h = H::new(json!({
        "pool": "p",
        "steps": [{"name": "work", "handler": "work"}],
        "onExit": [{"name": "cleanup", "handler": "cleanup"}],
    }));
    h.decide();
    h.claim("work", 1);
    h.spec.cancel = true;
    let d = h.decide();
    assert_eq!(h.phase("work"), StepPhase::Cancelled);
    assert_eq!(d.cancel_workers, [AttemptRef::step("work", 1)]);
    assert_eq!(names(&d.tasks), ["cleanup attempt 1"]);
    assert_eq!(h.flow_phase(), FlowPhase::Running);
    h.claim("cleanup", 1);
    h.complete("cleanup", 1, json!(null));
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Cancelled);
    assert_eq!(h.condition("Succeeded").1, "Cancelled");
}

#[test]
fn past_its_deadline_a_run_fails_its_handler_is_stopped_and_its_exit_steps_run() {
    let mut h = H::new(json!({
        "pool": "p",
        "activeDeadline": "5s",
        "steps": [{"name": "slow", "handler": "slow"}],
        "onExit": [{"name": "report", "handler": "report", "input": "${{ flow.reason }}"}],
    }));
    let d = h.decide();
    h.claim("slow", 1);
    let started = h.status.started_at.clone().unwrap().0;
    assert_eq!(
        d.wake_at,
        Some(
            started
                .checked_add(jiff::SignedDuration::from_secs(5))
                .unwrap()
        ),
        "the deadline is a wake-up"
    );
    h.advance(4);
    let d = h.decide();
    assert_eq!(h.phase("slow"), StepPhase::Running, "not yet");
    assert!(d.cancel_workers.is_empty());
    h.advance(1);
    let d = h.decide();
    assert_eq!(h.phase("slow"), StepPhase::Cancelled);
    assert_eq!(d.cancel_workers, [AttemptRef::step("slow", 1)]);
    assert_eq!(names(&d.tasks), ["report attempt 1"]);
    assert_eq!(d.tasks[0].input, json!("DeadlineExceeded"));
    // A late result of the stopped handler changes nothing.
    assert!(
        h.event(Event::Completed {
            attempt: AttemptRef::step("slow", 1),
            output: json!(1),
        })
        .is_err()
    );
    h.claim("report", 1);
    h.advance(60);
    h.complete("report", 1, json!("sent"));
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    assert_eq!(h.condition("Succeeded").1, "DeadlineExceeded");
}

#[test]
fn past_its_deadline_a_run_without_exit_steps_fails_at_once() {
    let mut h = H::new(json!({
        "pool": "p",
        "activeDeadline": "5s",
        "steps": [{"name": "slow", "handler": "slow"}],
    }));
    h.decide();
    h.claim("slow", 1);
    h.advance(5);
    let d = h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    assert_eq!(d.cancel_workers, [AttemptRef::step("slow", 1)]);
    assert_eq!(h.condition("Succeeded").1, "DeadlineExceeded");
}

#[test]
fn a_retried_run_reruns_the_main_steps_then_the_exit_steps_that_did_not_succeed() {
    let mut h = H::new(saga());
    run_main_through_ship(&mut h, true);
    h.decide();
    h.claim("refund", 1);
    h.complete("refund", 1, json!({"refunded": "P1"}));
    h.decide();
    h.claim("unbook", 1);
    h.fail("unbook", 1, "Down", false);
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    h.spec.retry_request = Some("r1".into());
    let d = h.decide();
    assert!(h.status.main_outcome.is_none(), "the main steps run again");
    assert_eq!(names(&d.tasks), ["ship attempt 2"]);
    assert_eq!(h.phase("refund"), StepPhase::Succeeded, "invariant 3");
    h.claim("ship", 2);
    h.fail("ship", 2, "NoStock", false);
    let d = h.decide();
    assert_eq!(names(&d.tasks), ["unbook attempt 2"]);
}

#[test]
fn exit_steps_are_validated_in_their_own_place() {
    let spec: FlowRunSpec = serde_json::from_value(json!({
        "pool": "p",
        "activeDeadline": "soon",
        "steps": [{"name": "a", "handler": "h", "dependsOn": ["z"]}, {"name": "b", "handler": "h", "input": "${{ flow.phase }}"}],
        "onExit": [{"name": "z", "handler": "h", "dependsOn": ["nope"]}],
    }))
    .unwrap();
    let errors = validate(&spec).unwrap_err().to_string();
    for expected in [
        "spec.activeDeadline",
        "spec.steps[0].dependsOn[0]: \"z\" is an exit step",
        "spec.steps[1].input",
        "exists only in exit steps",
        "spec.onExit[0].dependsOn[0]: unknown step \"nope\"",
    ] {
        assert!(errors.contains(expected), "{expected:?} not in {errors}");
    }
}

#[test]
fn a_retry_budget_fails_the_step_when_the_next_attempt_would_start_past_it() {
    let mut h = H::new(json!({
        "pool": "p",
        "steps": [{"name": "flaky", "handler": "h",
                   "retry": {"maxAttempts": 100, "initialBackoff": "10s", "backoffFactor": 1, "maxDuration": "60s"}}],
    }));
    h.decide();
    let mut attempt = 1;
    loop {
        h.claim("flaky", attempt);
        h.advance(20);
        h.fail("flaky", attempt, "Flaky", true);
        if h.phase("flaky") == StepPhase::Failed {
            break;
        }
        assert_eq!(h.phase("flaky"), StepPhase::Retrying);
        h.advance(10);
        h.decide();
        attempt += 1;
        assert!(attempt < 10, "the budget never ran out");
    }
    // Each round takes 20 s of work and up to 10 s of backoff: the budget of 60 s allows three attempts
    // at most, far below maxAttempts.
    assert!((2..=3).contains(&attempt), "failed at attempt {attempt}");
    let message = &h.status.steps["flaky"].error.as_ref().unwrap().message;
    assert!(!message.is_empty());
    h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    let (_, _, condition) = h.condition("Succeeded");
    assert!(condition.contains("flaky"), "{condition}");
}
