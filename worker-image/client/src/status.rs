//! What a run looks like from outside: a summary of its status, and how a finished run ended.

use serde_json::Value;
use sluice_api::{FlowPhase, FlowRun, StepError, StepPhase};

use crate::error::{FailedStep, RunFailure};

/// A summary of a run's status, from [`Run::status`](crate::Run::status).
///
/// ```no_run
/// # async fn demo(run: sluice_client::Run) -> sluice_client::Result<()> {
/// let status = run.status().await?;
/// println!("{} is {:?} ({})", status.name, status.phase, status.progress.as_deref().unwrap_or("0/0"));
/// for step in &status.steps {
///     println!("  {} {:?} attempt {}", step.name, step.phase, step.attempts);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RunStatus {
    /// Namespace of the FlowRun.
    pub namespace: String,
    /// Name of the FlowRun.
    pub name: String,
    /// Phase of the run (`Pending` until the operator first wrote a status).
    pub phase: FlowPhase,
    /// Finished steps out of all steps, e.g. `3/6`, once the operator wrote it.
    pub progress: Option<String>,
    /// Every step of the spec, in spec order, with its state.
    pub steps: Vec<StepSummary>,
    /// The flow's output, once it Succeeded.
    pub output: Option<Value>,
    /// Why the run is in its phase: the message of its `Ready` condition (the failed step and its error,
    /// the validation problems, …), when there is one.
    pub message: Option<String>,
}

/// One step in a [`RunStatus`].
///
/// ```
/// use sluice_client::StepSummary;
/// use sluice_client::api::StepPhase;
/// # let step = StepSummary::default();
/// if step.phase == StepPhase::Waiting {
///     println!("{} waits for signal {:?}", step.name, step.signal);
/// }
/// ```
#[derive(Clone, Debug, PartialEq, Default)]
#[non_exhaustive]
pub struct StepSummary {
    /// Name of the step.
    pub name: String,
    /// Its phase (`Pending` when the operator recorded nothing for it yet).
    pub phase: StepPhase,
    /// Number of its current (or last) attempt; 0 before the first.
    pub attempts: u32,
    /// Its last error, if any.
    pub error: Option<StepError>,
    /// The signal it waits for (or consumed).
    pub signal: Option<String>,
    /// Why it is in its phase, when the operator said (for example why it was Skipped).
    pub message: Option<String>,
}

/// The phase of a FlowRun as the client sees it: `Pending` before the operator wrote a status.
pub(crate) fn phase(fr: &FlowRun) -> FlowPhase {
    fr.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
}

/// Whether the run has ended for good. A Failed run with a retry request the operator has not answered yet
/// (`spec.retryRequest` differs from `status.retry.request`) is about to run again, so it has not.
pub(crate) fn has_ended(fr: &FlowRun) -> bool {
    let phase = phase(fr);
    if phase == FlowPhase::Failed
        && let Some(token) = &fr.spec.retry_request
    {
        let answered = fr
            .status
            .as_ref()
            .and_then(|s| s.retry.as_ref())
            .is_some_and(|r| &r.request == token);
        return answered;
    }
    phase.is_terminal()
}

/// The message of condition `type_`, when it has one.
fn condition(fr: &FlowRun, type_: &str) -> Option<(String, String)> {
    fr.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.reason.clone(), c.message.clone()))
}

pub(crate) fn summary(fr: &FlowRun) -> RunStatus {
    let status = fr.status.as_ref();
    let steps = fr
        .spec
        .steps
        .iter()
        .map(|step| {
            let s = status.and_then(|s| s.steps.get(&step.name));
            StepSummary {
                name: step.name.clone(),
                phase: s.map(|s| s.phase).unwrap_or_default(),
                attempts: s.map_or(0, |s| s.attempts),
                error: s.and_then(|s| s.error.clone()),
                signal: s
                    .and_then(|s| s.signal.clone())
                    .or_else(|| step.wait_for_signal.as_ref().map(|w| w.name.clone())),
                message: s.and_then(|s| s.message.clone()),
            }
        })
        .collect();
    RunStatus {
        namespace: fr.metadata.namespace.clone().unwrap_or_default(),
        name: fr.metadata.name.clone().unwrap_or_default(),
        phase: phase(fr),
        progress: status.and_then(|s| s.progress.clone()),
        steps,
        output: status.and_then(|s| s.output.clone()),
        message: condition(fr, "Ready")
            .map(|(_, message)| message)
            .filter(|m| !m.is_empty()),
    }
}

/// How a Failed run failed: the reason and message of its `Succeeded` condition and its failed steps.
pub(crate) fn failure(fr: &FlowRun) -> RunFailure {
    let (reason, message) = condition(fr, "Succeeded").unwrap_or_default();
    let status = fr.status.as_ref();
    let failed_steps = fr
        .spec
        .steps
        .iter()
        .filter_map(|step| {
            let s = status?.steps.get(&step.name)?;
            // A forEach step's failed instance carries the error when the step has none of its own.
            let error = s.error.clone().or_else(|| {
                s.instances
                    .as_ref()?
                    .active
                    .values()
                    .find(|i| i.phase == StepPhase::Failed)?
                    .error
                    .clone()
            });
            (s.phase == StepPhase::Failed).then(|| FailedStep {
                name: step.name.clone(),
                attempts: s.attempts,
                error,
            })
        })
        .collect();
    RunFailure {
        namespace: fr.metadata.namespace.clone().unwrap_or_default(),
        name: fr.metadata.name.clone().unwrap_or_default(),
        reason,
        message,
        failed_steps,
    }
}

/// The message of a Cancelled run's `Succeeded` condition.
pub(crate) fn cancel_message(fr: &FlowRun) -> String {
    condition(fr, "Succeeded")
        .map(|(_, message)| message)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(v: Value) -> FlowRun {
        serde_json::from_value(v).expect("a valid FlowRun")
    }

    fn failed_run() -> FlowRun {
        run(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "order-42", "namespace": "shop"},
            "spec": {"pool": "p", "steps": [
                {"name": "charge", "handler": "charge_payment"},
                {"name": "ship", "handler": "ship", "dependsOn": ["charge"]},
                {"name": "fan", "handler": "h", "forEach": [1, 2]},
            ]},
            "status": {
                "phase": "Failed", "progress": "2/3",
                "steps": {
                    "charge": {"phase": "Failed", "attempts": 3, "error": {"type": "card_declined", "message": "over the limit", "attempt": 3}},
                    "ship": {"phase": "Cancelled"},
                    "fan": {"phase": "Failed", "attempts": 1, "instances": {"total": 2, "succeeded": 1, "failed": 1,
                        "active": {"1": {"phase": "Failed", "attempts": 2, "error": {"type": "Timeout", "message": "attempt 2 timed out"}}}}},
                },
                "conditions": [
                    {"type": "Succeeded", "status": "False", "reason": "StepFailed", "message": "step \"charge\" failed: card_declined: over the limit", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "Ready", "status": "False", "reason": "StepFailed", "message": "step \"charge\" failed", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                ],
            },
        }))
    }

    #[test]
    fn a_failure_names_the_failed_steps_and_their_errors_in_spec_order() {
        let f = failure(&failed_run());
        assert_eq!(
            (f.namespace.as_str(), f.name.as_str()),
            ("shop", "order-42")
        );
        assert_eq!(f.reason, "StepFailed");
        assert!(f.message.contains("card_declined"), "{}", f.message);
        let names: Vec<_> = f.failed_steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["charge", "fan"]);
        assert_eq!(f.failed_steps[0].attempts, 3);
        assert_eq!(
            f.failed_steps[0].error.as_ref().unwrap().type_,
            "card_declined"
        );
        assert_eq!(f.failed_steps[1].error.as_ref().unwrap().type_, "Timeout");
        assert_eq!(
            f.to_string(),
            "flowrun shop/order-42 failed (StepFailed): step \"charge\" failed: card_declined: over the limit"
        );
    }

    #[test]
    fn the_summary_lists_every_step_in_spec_order() {
        let s = summary(&failed_run());
        assert_eq!(s.phase, FlowPhase::Failed);
        assert_eq!(s.progress.as_deref(), Some("2/3"));
        assert_eq!(s.message.as_deref(), Some("step \"charge\" failed"));
        let steps: Vec<_> = s.steps.iter().map(|s| (s.name.as_str(), s.phase)).collect();
        assert_eq!(
            steps,
            [
                ("charge", StepPhase::Failed),
                ("ship", StepPhase::Cancelled),
                ("fan", StepPhase::Failed)
            ]
        );

        let fresh = run(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "new"},
            "spec": {"steps": [{"name": "wait", "waitForSignal": {"name": "go"}}]},
        }));
        let s = summary(&fresh);
        assert_eq!(s.phase, FlowPhase::Pending);
        assert_eq!(s.steps[0].phase, StepPhase::Pending);
        assert_eq!(s.steps[0].signal.as_deref(), Some("go"));
        assert_eq!(s.message, None);
    }

    #[test]
    fn a_failed_run_with_an_unanswered_retry_request_has_not_ended() {
        let mut fr = failed_run();
        assert!(has_ended(&fr));
        fr.spec.retry_request = Some("t1".into());
        assert!(!has_ended(&fr), "the operator is about to retry it");
        fr.status.as_mut().unwrap().retry = Some(sluice_api::RetryStatus {
            request: "t1".into(),
            ..Default::default()
        });
        assert!(
            has_ended(&fr),
            "the request was answered and the run failed again"
        );
    }
}
