//! Scenario tests of a forEach over a `flow` step: each instance is a child FlowRun.

use super::*;
use crate::engine::ChildOutcome;

fn fan_out(max_parallel: u32) -> serde_json::Value {
    json!({
        "pool": "p",
        "input": {"regions": ["eu", "us", "ap"]},
        "steps": [{
            "name": "deploy",
            "forEach": "${{ input.regions }}",
            "maxParallel": max_parallel,
            "flow": {"templateRef": {"name": "deploy-region", "input": {"region": "${{ item }}", "slot": "${{ index }}"}}},
        }],
        "output": "${{ steps.deploy.output }}",
    })
}

fn finished(h: &mut H, index: u32, outcome: ChildOutcome) -> Result<EventOutcome, Refusal> {
    h.event(Event::InstanceChildFinished {
        step: "deploy".into(),
        index,
        child: format!("order-1-deploy-{index}"),
        outcome,
    })
}

#[test]
fn children_start_up_to_max_parallel_with_their_item_and_the_outputs_come_back_in_order() {
    let mut h = H::new(fan_out(2));
    let d = h.decide();
    assert!(d.tasks.is_empty(), "instances are children, not tasks");
    let names: Vec<&str> = d.create_children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["order-1-deploy-0", "order-1-deploy-1"]);
    let reference = d.create_children[1].spec.template_ref.clone().unwrap();
    assert_eq!(reference.name, "deploy-region");
    assert_eq!(reference.input, Some(json!({"region": "us", "slot": 1})));
    let inst = h.status.steps["deploy"].instances.clone().unwrap();
    assert_eq!(inst.total, 3);
    assert_eq!(inst.active["0"].child.as_deref(), Some("order-1-deploy-0"));

    // The second child ends first; the third starts in its place.
    assert!(matches!(
        finished(
            &mut h,
            1,
            ChildOutcome::Succeeded(Some(json!({"region": "us"})))
        ),
        Ok(EventOutcome::Applied { .. })
    ));
    assert!(
        matches!(
            finished(
                &mut h,
                1,
                ChildOutcome::Succeeded(Some(json!({"region": "us"})))
            ),
            Ok(EventOutcome::Duplicate)
        ),
        "a repeated end is a duplicate"
    );
    let d = h.decide();
    let names: Vec<&str> = d.create_children.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["order-1-deploy-0", "order-1-deploy-2"],
        "running children are asked for again, the next one starts"
    );
    finished(
        &mut h,
        2,
        ChildOutcome::Succeeded(Some(json!({"region": "ap"}))),
    )
    .unwrap();
    finished(
        &mut h,
        0,
        ChildOutcome::Succeeded(Some(json!({"region": "eu"}))),
    )
    .unwrap();
    let d = h.decide();
    assert!(d.create_children.is_empty());
    assert_eq!(h.phase("deploy"), StepPhase::Succeeded);
    assert_eq!(h.flow_phase(), FlowPhase::Succeeded);
    assert_eq!(
        h.status.output,
        Some(json!([{"region": "eu"}, {"region": "us"}, {"region": "ap"}]))
    );
}

#[test]
fn a_failed_child_fails_the_step_and_cancels_the_other_children() {
    let mut h = H::new(fan_out(3));
    h.decide();
    finished(
        &mut h,
        1,
        ChildOutcome::Failed("step \"roll\" failed".into()),
    )
    .unwrap();
    let d = h.decide();
    assert_eq!(h.phase("deploy"), StepPhase::Failed);
    assert_eq!(h.flow_phase(), FlowPhase::Failed);
    let error = h.status.steps["deploy"].error.clone().unwrap();
    assert_eq!(error.type_, "ChildFailed");
    assert!(
        error.message.contains("order-1-deploy-1"),
        "{}",
        error.message
    );
    let mut cancelled = d.cancel_children.clone();
    cancelled.sort();
    assert_eq!(cancelled, ["order-1-deploy-0", "order-1-deploy-2"]);
    assert!(
        finished(&mut h, 0, ChildOutcome::Succeeded(None)).is_err(),
        "a cancelled instance's late end changes nothing"
    );
}

#[test]
fn an_unknown_instance_child_is_refused() {
    let mut h = H::new(fan_out(1));
    h.decide();
    let r = h.event(Event::InstanceChildFinished {
        step: "deploy".into(),
        index: 0,
        child: "someone-else".into(),
        outcome: ChildOutcome::Succeeded(None),
    });
    assert!(matches!(r, Err(Refusal::UnknownChild { .. })), "{r:?}");
    assert!(
        finished(&mut h, 2, ChildOutcome::Succeeded(None)).is_err(),
        "not started"
    );
}

#[test]
fn cancelling_the_run_cancels_the_running_children() {
    let mut h = H::new(fan_out(2));
    h.decide();
    h.spec.cancel = true;
    let d = h.decide();
    assert_eq!(h.flow_phase(), FlowPhase::Cancelled);
    let mut cancelled = d.cancel_children.clone();
    cancelled.sort();
    cancelled.dedup();
    assert_eq!(cancelled, ["order-1-deploy-0", "order-1-deploy-1"]);
}
