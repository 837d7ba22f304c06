//! The machine-readable picture of a FlowRun that `status -o json` prints and every other view is drawn
//! from. Its shape is these serde types; fields are only ever added (`version` says which shape).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use sluice_api::{FlowPhase, FlowRun, InstancesStatus, RetryOutcome, Step, StepError, StepPhase};

/// `kind` of the document.
pub const REPORT_KIND: &str = "FlowRunReport";
/// `version` of the document's shape.
pub const REPORT_VERSION: u32 = 1;

/// A FlowRun as `kubectl sluice status -o json` prints it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FlowRunReport {
    /// Always `FlowRunReport`.
    pub kind: String,
    /// Shape of the document, 1.
    pub version: u32,
    /// Name of the FlowRun.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Phase of the run (Pending before the operator saw it).
    pub phase: FlowPhase,
    /// Finished steps out of all steps, e.g. `3/6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// When the first step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Seconds from start to end, or to now while the run goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    /// Why the run failed or was cancelled (the message of its `Succeeded` condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How the main steps ended, in a run with exit steps (`status.mainOutcome`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_outcome: Option<sluice_api::MainOutcome>,
    /// Why the run waits for a slot of its concurrency key (the message of its `Admitted` condition while it
    /// is False).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for_slot: Option<String>,
    /// Whether `spec.suspend` is set.
    pub suspended: bool,
    /// Whether `spec.cancel` is set.
    pub cancel_requested: bool,
    /// The last retry request the operator acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryReport>,
    /// Steps in the order of `spec.steps`, then the exit steps of `spec.onExit`.
    pub steps: Vec<StepReport>,
}

/// The last retry request and what the operator did with it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetryReport {
    /// The token.
    pub request: String,
    /// Retried or Ignored.
    pub outcome: RetryOutcome,
    /// What was re-run, or why it was ignored.
    pub message: String,
    /// Retries carried out so far.
    pub count: u32,
}

/// What a step does.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum StepKind {
    /// Runs a handler on a worker.
    Handler,
    /// Waits for a signal.
    Signal,
    /// Sleeps (`sleep` or `until`).
    Sleep,
    /// Runs a child FlowRun.
    Flow,
}

/// One step.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    /// Name of the step.
    pub name: String,
    /// What it does.
    pub kind: StepKind,
    /// The handler, for handler steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Steps it depends on.
    pub depends_on: Vec<String>,
    /// Whether it is an exit step (`spec.onExit`): it runs once the main steps ended.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_exit: bool,
    /// Its phase.
    pub phase: StepPhase,
    /// Current (or last) attempt number; 0 when none was made.
    pub attempts: u32,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Seconds from start to end, or to now while it goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<i64>,
    /// Worker (pod) running the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
    /// Why the step is in its phase, when the operator said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The signal it waits for or consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The child FlowRun of a flow step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
    /// forEach instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstancesReport>,
}

/// An error of an attempt.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReport {
    /// Error type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Message (as stored, already truncated by the operator).
    pub message: String,
    /// Attempt it belongs to.
    pub attempt: u32,
    /// Exit code of an exec-worker command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// forEach instances: counts, and detail for those that have not Succeeded.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstancesReport {
    /// Number of instances.
    pub total: u32,
    /// Succeeded.
    pub succeeded: u32,
    /// Failed for good.
    pub failed: u32,
    /// Started and not ended (Ready, Running, Retrying).
    pub active: u32,
    /// Not started yet.
    pub not_started: u32,
    /// Instances that started and have not Succeeded, by index.
    pub not_succeeded: Vec<InstanceReport>,
}

/// One forEach instance that has not Succeeded.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    /// Its index.
    pub index: u32,
    /// Its phase.
    pub phase: StepPhase,
    /// Current (or last) attempt.
    pub attempts: u32,
    /// Worker running it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Its last error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReport>,
}

fn ts(t: &Option<Time>) -> Option<Timestamp> {
    t.as_ref().map(|t| t.0)
}

fn seconds(start: Option<Timestamp>, end: Option<Timestamp>, now: Timestamp) -> Option<i64> {
    let start = start?;
    let end = end.unwrap_or(now);
    Some(end.duration_since(start).as_secs().max(0))
}

fn error(e: &Option<StepError>) -> Option<ErrorReport> {
    e.as_ref().map(|e| ErrorReport {
        type_: e.type_.clone(),
        message: e.message.clone(),
        attempt: e.attempt,
        exit_code: e.exit_code,
    })
}

fn kind(step: &Step) -> StepKind {
    if step.handler.is_some() {
        StepKind::Handler
    } else if step.wait_for_signal.is_some() {
        StepKind::Signal
    } else if step.flow.is_some() {
        StepKind::Flow
    } else {
        StepKind::Sleep
    }
}

fn instances(inst: &InstancesStatus) -> InstancesReport {
    let mut not_succeeded: Vec<InstanceReport> = inst
        .active
        .iter()
        .filter_map(|(k, one)| {
            Some(InstanceReport {
                index: k.parse().ok()?,
                phase: one.phase,
                attempts: one.attempts,
                worker: one.worker.clone(),
                error: error(&one.error),
            })
        })
        .collect();
    not_succeeded.sort_by_key(|i| i.index);
    let active = not_succeeded
        .iter()
        .filter(|i| !i.phase.is_terminal())
        .count() as u32;
    let started = inst.outputs.len() as u32 + inst.active.len() as u32;
    InstancesReport {
        total: inst.total,
        succeeded: inst.succeeded,
        failed: inst.failed,
        active,
        not_started: inst.total.saturating_sub(started.max(inst.succeeded)),
        not_succeeded,
    }
}

impl FlowRunReport {
    /// The report of a FlowRun as of `now` (which only the running durations depend on).
    pub fn new(fr: &FlowRun, now: Timestamp) -> Self {
        let status = fr.status.clone().unwrap_or_default();
        let phase = status.phase.unwrap_or_default();
        let message = if matches!(phase, FlowPhase::Failed | FlowPhase::Cancelled) {
            status
                .conditions
                .iter()
                .find(|c| c.type_ == "Succeeded")
                .map(|c| c.message.clone())
                .filter(|m| !m.is_empty())
        } else {
            None
        };
        let waiting_for_slot = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Admitted" && c.status == "False")
            .map(|c| c.message.clone())
            .filter(|_| !phase.is_terminal());
        let main = fr.spec.steps.iter().map(|step| (step, false));
        let exit = fr.spec.on_exit.iter().map(|step| (step, true));
        let steps = main
            .chain(exit)
            .map(|(step, on_exit)| {
                let st = status.steps.get(&step.name).cloned().unwrap_or_default();
                let started = ts(&st.started_at);
                let finished = ts(&st.finished_at);
                StepReport {
                    name: step.name.clone(),
                    kind: kind(step),
                    handler: step.handler.clone(),
                    depends_on: step.depends_on.clone(),
                    on_exit,
                    phase: st.phase,
                    attempts: st.attempts,
                    started_at: started,
                    finished_at: finished,
                    duration_seconds: seconds(started, finished, now),
                    worker: st.worker.clone(),
                    error: error(&st.error),
                    message: st.message.clone(),
                    signal: st.signal.clone(),
                    child: st.child.clone(),
                    instances: st.instances.as_ref().map(instances),
                }
            })
            .collect();
        let started = ts(&status.started_at);
        let finished = ts(&status.finished_at);
        Self {
            kind: REPORT_KIND.into(),
            version: REPORT_VERSION,
            name: fr.metadata.name.clone().unwrap_or_default(),
            namespace: fr.metadata.namespace.clone().unwrap_or_default(),
            phase,
            progress: status.progress.clone(),
            started_at: started,
            finished_at: finished,
            duration_seconds: seconds(started, finished, now),
            message,
            main_outcome: status.main_outcome.clone(),
            waiting_for_slot,
            suspended: fr.spec.suspend,
            cancel_requested: fr.spec.cancel,
            retry: status.retry.as_ref().map(|r| RetryReport {
                request: r.request.clone(),
                outcome: r.outcome,
                message: r.message.clone(),
                count: r.count,
            }),
            steps,
        }
    }

    /// The step of that name.
    pub fn step(&self, name: &str) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use serde_json::json;
    use sluice_api::FlowRun;

    /// A running order flow: a fan-out with one failing instance, a step with two parents, a long error.
    pub fn order() -> FlowRun {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "order-1", "namespace": "shop"},
            "spec": {"pool": "p", "steps": [
                {"name": "charge", "handler": "charge_payment"},
                {"name": "reserve", "handler": "reserve_stock"},
                {"name": "pack", "handler": "pack", "forEach": [1, 2, 3, 4], "dependsOn": ["charge"]},
                {"name": "ship", "handler": "ship", "dependsOn": ["pack", "reserve"]},
                {"name": "approve", "waitForSignal": {"name": "ok"}},
            ]},
            "status": {
                "phase": "Running", "progress": "2/5", "startedAt": "2026-03-01T12:00:00Z",
                "steps": {
                    "charge": {"phase": "Succeeded", "attempts": 1, "startedAt": "2026-03-01T12:00:00Z",
                               "finishedAt": "2026-03-01T12:00:04Z", "output": {"id": "c1"}},
                    "reserve": {"phase": "Retrying", "attempts": 2, "startedAt": "2026-03-01T12:00:00Z",
                                "error": {"type": "Timeout", "attempt": 2,
                                          "message": format!("the stock service did not answer {}", "in time ".repeat(30))}},
                    "pack": {"phase": "Running", "startedAt": "2026-03-01T12:00:05Z", "instances": {
                        "total": 4, "succeeded": 1, "failed": 0, "outputs": {"0": 1},
                        "active": {"1": {"phase": "Running", "attempts": 1, "worker": "worker-a"},
                                   "2": {"phase": "Retrying", "attempts": 1,
                                         "error": {"type": "flaky", "message": "try again", "attempt": 1}}}}},
                    "ship": {"phase": "Pending"},
                    "approve": {"phase": "Waiting", "signal": "ok", "startedAt": "2026-03-01T12:00:00Z"},
                },
            },
        }))
        .expect("fixture")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_follows_the_status() {
        let now: Timestamp = "2026-03-01T12:01:00Z".parse().unwrap();
        let r = FlowRunReport::new(&fixtures::order(), now);
        assert_eq!((r.kind.as_str(), r.version), ("FlowRunReport", 1));
        assert_eq!(r.phase, FlowPhase::Running);
        assert_eq!(r.duration_seconds, Some(60));
        let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["charge", "reserve", "pack", "ship", "approve"]);
        let charge = r.step("charge").unwrap();
        assert_eq!(charge.duration_seconds, Some(4));
        // Running steps count up to now.
        assert_eq!(r.step("pack").unwrap().duration_seconds, Some(55));
        assert_eq!(r.step("ship").unwrap().duration_seconds, None);
        let inst = r.step("pack").unwrap().instances.clone().unwrap();
        assert_eq!(
            (
                inst.total,
                inst.succeeded,
                inst.active,
                inst.not_started,
                inst.failed
            ),
            (4, 1, 2, 1, 0)
        );
        assert_eq!(inst.not_succeeded[0].worker.as_deref(), Some("worker-a"));
        assert_eq!(r.step("approve").unwrap().kind, StepKind::Signal);
        // The JSON document round-trips through its own types and uses camelCase.
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["steps"][2]["instances"]["notSucceeded"].is_array());
        assert_eq!(v["steps"][1]["error"]["type"], "Timeout");
        let back: FlowRunReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
