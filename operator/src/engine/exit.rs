//! Exit steps (`spec.onExit`) and the run's deadline (`spec.activeDeadline`).
//!
//! Exit steps are scheduled as ordinary steps placed after the main ones, each depending on every main step:
//! the DAG then gives them every main step's output in their expressions, and the scheduler lets a main
//! dependency of an exit step count as done once it ended, whatever its phase. When the main steps end, the
//! run records how (`status.mainOutcome`) before its exit steps start; that record is what their `flow.phase`
//! shows, and the phase the run ends with once they are done (unless one of them fails). Recording it keeps
//! the outcome fixed while the exit steps run: a deadline passed or a cancel asked for later changes nothing.

use std::borrow::Cow;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::timers::{after, parse_duration};
use crate::api::{FlowRunSpec, FlowRunStatus, MainOutcome, StepPhase};

/// The steps the engine schedules: `spec.steps`, then `spec.onExit`, each exit step depending on every main
/// step. Borrowed as it is when the run has no exit steps.
pub fn scheduled(spec: &FlowRunSpec) -> Cow<'_, FlowRunSpec> {
    if spec.on_exit.is_empty() {
        return Cow::Borrowed(spec);
    }
    let mut all = spec.clone();
    let exits = std::mem::take(&mut all.on_exit);
    for mut step in exits {
        for main in &spec.steps {
            if !step.depends_on.contains(&main.name) {
                step.depends_on.push(main.name.clone());
            }
        }
        all.steps.push(step);
    }
    Cow::Owned(all)
}

/// When the run's `activeDeadline` passes: counted from `status.startedAt`; none before the run started or
/// without a deadline (or with one that does not parse: validation reports it).
pub fn deadline(spec: &FlowRunSpec, status: &FlowRunStatus) -> Option<Timestamp> {
    let limit = parse_duration(spec.active_deadline.as_deref()?).ok()?;
    let started = status.started_at.as_ref()?.0;
    Some(after(started, limit))
}

/// What exit steps see as `flow`: the main steps' outcome and the names of the main steps that failed.
pub fn flow_variable(outcome: &MainOutcome, spec: &FlowRunSpec, status: &FlowRunStatus) -> Value {
    let failed: Vec<&str> = spec
        .steps
        .iter()
        .filter(|s| {
            status
                .steps
                .get(&s.name)
                .is_some_and(|st| st.phase == StepPhase::Failed)
        })
        .map(|s| s.name.as_str())
        .collect();
    json!({
        "phase": outcome.phase,
        "reason": outcome.reason,
        "message": outcome.message,
        "failedSteps": failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::FlowPhase;
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn spec(v: Value) -> FlowRunSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn exit_steps_come_after_the_main_steps_and_depend_on_all_of_them() {
        let s = spec(json!({
            "pool": "p",
            "steps": [{"name": "a", "handler": "h"}, {"name": "b", "handler": "h", "dependsOn": ["a"]}],
            "onExit": [{"name": "undo", "handler": "h"}, {"name": "tell", "handler": "h", "dependsOn": ["undo"]}],
        }));
        let all = scheduled(&s);
        let names: Vec<&str> = all.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "undo", "tell"]);
        assert!(all.on_exit.is_empty());
        assert_eq!(all.steps[2].depends_on, ["a", "b"]);
        assert_eq!(all.steps[3].depends_on, ["undo", "a", "b"]);
        let plain = spec(json!({"pool": "p", "steps": [{"name": "a", "handler": "h"}]}));
        assert!(matches!(scheduled(&plain), Cow::Borrowed(_)));
    }

    #[test]
    fn the_deadline_counts_from_the_start() {
        let s = spec(json!({"steps": [{"name": "a", "sleep": "1h"}], "activeDeadline": "5s"}));
        let mut status = FlowRunStatus::default();
        assert_eq!(deadline(&s, &status), None, "not started");
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        status.started_at = Some(Time(t));
        assert_eq!(
            deadline(&s, &status),
            Some("2026-01-01T00:00:05Z".parse().unwrap())
        );
    }

    #[test]
    fn the_flow_variable_names_the_failed_main_steps() {
        let s =
            spec(json!({"steps": [{"name": "a", "sleep": "1s"}, {"name": "b", "sleep": "1s"}]}));
        let mut status = FlowRunStatus::default();
        status.steps.entry("a".into()).or_default().phase = StepPhase::Succeeded;
        status.steps.entry("b".into()).or_default().phase = StepPhase::Failed;
        let outcome = MainOutcome {
            phase: FlowPhase::Failed,
            reason: "StepFailed".into(),
            message: "step \"b\" failed".into(),
        };
        let v = flow_variable(&outcome, &s, &status);
        assert_eq!(v["phase"], "Failed");
        assert_eq!(v["failedSteps"], json!(["b"]));
    }
}
