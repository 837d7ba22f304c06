//! What the web view's JSON endpoints and live streams send: a row per FlowRun for the list, and for one run
//! its [`FlowRunReport`] (the document of `status -o json`) with what the page needs besides — the run's
//! metadata, input, signals, the instances of each forEach step as one character each, and its Events.
//!
//! Step outputs and the outputs of forEach instances stay out of the run's view (a 5,000-instance step would
//! send them on every change); the step panel asks for one step's [`StepDetail`] when it is opened.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use serde::Serialize;
use serde_json::Value;
use sluice_api::{FlowPhase, FlowRun, InstancesStatus, Step, StepPhase, StepStatus};

use crate::report::FlowRunReport;

/// Most forEach instance outputs a [`StepDetail`] carries; the rest are counted in `outputsOmitted`.
pub const MAX_DETAIL_OUTPUTS: usize = 100;
/// Most Events a run's view carries (the newest).
pub const MAX_EVENTS: usize = 100;

/// One row of the list of FlowRuns.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Phase (Pending before the operator saw it).
    pub phase: FlowPhase,
    /// Finished steps out of all steps, e.g. `3/6`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// `metadata.creationTimestamp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<Timestamp>,
    /// When the first step started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When the run ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// `spec.pool`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The template it runs, for a run of a FlowTemplate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Number of steps (exit steps included).
    pub steps: usize,
    /// `spec.suspend`.
    pub suspended: bool,
    /// `spec.cancel`.
    pub cancel_requested: bool,
    /// The FlowRun this one is the child of, when a flow step started it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

fn parent(fr: &FlowRun) -> Option<String> {
    fr.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.kind == "FlowRun")
        .map(|o| o.name.clone())
}

impl RunSummary {
    /// The row of a FlowRun.
    pub fn new(fr: &FlowRun) -> Self {
        let status = fr.status.as_ref();
        Self {
            namespace: fr.metadata.namespace.clone().unwrap_or_default(),
            name: fr.metadata.name.clone().unwrap_or_default(),
            phase: status.and_then(|s| s.phase).unwrap_or_default(),
            progress: status.and_then(|s| s.progress.clone()),
            created: fr.metadata.creation_timestamp.as_ref().map(|t| t.0),
            started_at: status.and_then(|s| s.started_at.as_ref()).map(|t| t.0),
            finished_at: status.and_then(|s| s.finished_at.as_ref()).map(|t| t.0),
            pool: fr.spec.pool.clone(),
            template: fr.spec.template_ref.as_ref().map(|t| t.name.clone()),
            labels: fr.metadata.labels.clone().unwrap_or_default(),
            steps: fr.spec.steps.len() + fr.spec.on_exit.len(),
            suspended: fr.spec.suspend,
            cancel_requested: fr.spec.cancel,
            parent: parent(fr),
        }
    }
}

/// What the page shows of a step besides its [`crate::report::StepReport`].
#[derive(Serialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepExtra {
    /// Whether the step fans out over `forEach`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub for_each: bool,
    /// Its `when` condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Its `sleep` duration or `until` time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sleep: Option<String>,
    /// When a sleeping step wakes, or a retrying step's next attempt becomes ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<Timestamp>,
    /// When the current attempt, or the signal wait, times out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
    /// Whether it has an output (fetched with the step's detail).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub has_output: bool,
    /// forEach instances, one character each by index (see [`instance_char`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_states: Option<String>,
}

/// A signal delivered to the run and not consumed yet, or consumed (then a step names it).
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SignalView {
    /// Its name.
    pub name: String,
    /// Its payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// A step that waits, or waited, for a signal.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AwaitedSignal {
    /// The step.
    pub step: String,
    /// The signal's name.
    pub signal: String,
    /// The step's phase (Waiting while it waits).
    pub phase: StepPhase,
}

/// One Event about the run.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    /// Normal or Warning.
    #[serde(rename = "type")]
    pub type_: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub message: String,
    /// How many times it happened.
    pub count: i32,
    /// When it last happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    /// Who reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl EventView {
    /// The view of a core/v1 Event (events.k8s.io Events read through core/v1 too).
    pub fn new(e: &Event) -> Self {
        let last_seen = e
            .event_time
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
            .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let series = e.series.as_ref().and_then(|s| s.count);
        Self {
            type_: e.type_.clone().unwrap_or_else(|| "Normal".into()),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: series.or(e.count).unwrap_or(1).max(1),
            last_seen: e
                .series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref())
                .map(|t| t.0)
                .or(last_seen),
            source: e
                .reporting_component
                .clone()
                .filter(|c| !c.is_empty())
                .or_else(|| e.source.as_ref().and_then(|s| s.component.clone())),
        }
    }
}

/// The Events of a run as the page lists them: newest first, at most [`MAX_EVENTS`].
pub fn events(events: &[Event]) -> Vec<EventView> {
    let mut views: Vec<EventView> = events.iter().map(EventView::new).collect();
    views.sort_by_key(|v| std::cmp::Reverse(v.last_seen));
    views.truncate(MAX_EVENTS);
    views
}

/// Everything the FlowRun page draws.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunView {
    /// The report of `status -o json`: phase, progress, timings, and each step.
    pub run: FlowRunReport,
    /// The list row (metadata: created, pool, labels, parent, template).
    pub summary: RunSummary,
    /// `metadata.uid`.
    pub uid: String,
    /// `spec.input`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// `status.output`, once the run Succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// More about each step, by name.
    pub steps: BTreeMap<String, StepExtra>,
    /// Signals delivered (`status.signals`).
    pub signals: Vec<SignalView>,
    /// Steps that wait or waited for a signal.
    pub awaited: Vec<AwaitedSignal>,
}

/// The character of a forEach instance in [`StepExtra::instance_states`]: `S` Succeeded, `F` Failed, `R`
/// Running, `Q` Ready, `T` Retrying (its next attempt waits), `W` Waiting, `Z` Sleeping, `K` Skipped, `C`
/// Cancelled, `.` not started.
pub fn instance_char(phase: StepPhase) -> char {
    match phase {
        StepPhase::Pending => '.',
        StepPhase::Ready => 'Q',
        StepPhase::Running => 'R',
        StepPhase::Retrying => 'T',
        StepPhase::Waiting => 'W',
        StepPhase::Sleeping => 'Z',
        StepPhase::Succeeded => 'S',
        StepPhase::Failed => 'F',
        StepPhase::Skipped => 'K',
        StepPhase::Cancelled => 'C',
    }
}

/// The instances of a forEach step as one character each, by index. Instances with an output Succeeded, those
/// in `active` are in their phase; when the status counts more Succeeded instances than it keeps outputs for
/// (a finished step's outputs become its output array), the first unlisted ones are the Succeeded ones.
pub fn instance_states(inst: &InstancesStatus) -> String {
    let total = inst.total as usize;
    let mut states = vec![None; total];
    let mut succeeded = 0;
    for key in inst.outputs.keys() {
        if let Some(c) = key.parse::<usize>().ok().and_then(|i| states.get_mut(i)) {
            *c = Some('S');
            succeeded += 1;
        }
    }
    for (key, one) in &inst.active {
        if let Some(c) = key.parse::<usize>().ok().and_then(|i| states.get_mut(i)) {
            *c = Some(instance_char(one.phase));
        }
    }
    let mut unlisted_succeeded = (inst.succeeded as usize).saturating_sub(succeeded);
    states
        .into_iter()
        .map(|c| {
            c.unwrap_or_else(|| {
                if unlisted_succeeded > 0 {
                    unlisted_succeeded -= 1;
                    'S'
                } else {
                    '.'
                }
            })
        })
        .collect()
}

fn step_extra(step: &Step, status: Option<&StepStatus>) -> StepExtra {
    StepExtra {
        for_each: step.for_each.is_some(),
        when: step.when.clone(),
        sleep: step.sleep.clone().or_else(|| step.until.clone()),
        wake_at: status.and_then(|s| s.wake_at.as_ref()).map(|t| t.0),
        deadline: status.and_then(|s| s.deadline.as_ref()).map(|t| t.0),
        has_output: status.is_some_and(|s| s.output.is_some()),
        instance_states: status
            .and_then(|s| s.instances.as_ref())
            .map(instance_states),
    }
}

impl RunView {
    /// The view of a FlowRun as of `now`.
    pub fn new(fr: &FlowRun, now: Timestamp) -> Self {
        let status = fr.status.clone().unwrap_or_default();
        let all_steps = || fr.spec.steps.iter().chain(&fr.spec.on_exit);
        let steps = all_steps()
            .map(|s| (s.name.clone(), step_extra(s, status.steps.get(&s.name))))
            .collect();
        let awaited = all_steps()
            .filter_map(|s| {
                let wait = s.wait_for_signal.as_ref()?;
                Some(AwaitedSignal {
                    step: s.name.clone(),
                    signal: wait.name.clone(),
                    phase: status
                        .steps
                        .get(&s.name)
                        .map(|st| st.phase)
                        .unwrap_or_default(),
                })
            })
            .collect();
        Self {
            run: FlowRunReport::new(fr, now),
            summary: RunSummary::new(fr),
            uid: fr.metadata.uid.clone().unwrap_or_default(),
            input: fr.spec.input.clone(),
            output: status.output.clone(),
            steps,
            signals: status
                .signals
                .iter()
                .map(|(name, s)| SignalView {
                    name: name.clone(),
                    payload: s.payload.clone(),
                })
                .collect(),
            awaited,
        }
    }
}

/// One step in full, for the step panel: its spec (input as written, handler, retry, ...) and its status (output,
/// error, timings), with at most [`MAX_DETAIL_OUTPUTS`] forEach instance outputs.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepDetail {
    /// The step as the run's spec declares it.
    pub spec: Step,
    /// Its status (absent before the operator wrote one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StepStatus>,
    /// Outputs of a forEach step's Succeeded instances so far, keyed by index, decoded (the status stores them
    /// packed in one string, taken out of `status` here), at most [`MAX_DETAIL_OUTPUTS`] of them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub instance_outputs: BTreeMap<String, Value>,
    /// forEach instance outputs left out of `instanceOutputs`.
    #[serde(skip_serializing_if = "is_zero")]
    pub outputs_omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl StepDetail {
    /// The detail of step `name`, or None when the run has no such step.
    pub fn new(fr: &FlowRun, name: &str) -> Option<Self> {
        let spec = fr
            .spec
            .steps
            .iter()
            .chain(&fr.spec.on_exit)
            .find(|s| s.name == name)?
            .clone();
        let mut status = fr.status.as_ref().and_then(|s| s.steps.get(name)).cloned();
        let mut instance_outputs = status
            .as_mut()
            .and_then(|s| s.instances.as_mut())
            .map(|inst| std::mem::take(&mut inst.outputs))
            .unwrap_or_default();
        let mut omitted = 0;
        if instance_outputs.len() > MAX_DETAIL_OUTPUTS {
            omitted = instance_outputs.len() - MAX_DETAIL_OUTPUTS;
            let mut by_index: Vec<(usize, String)> = instance_outputs
                .keys()
                .map(|k| (k.parse().unwrap_or(usize::MAX), k.clone()))
                .collect();
            by_index.sort();
            let keep: std::collections::BTreeSet<String> = by_index
                .into_iter()
                .take(MAX_DETAIL_OUTPUTS)
                .map(|(_, k)| k)
                .collect();
            instance_outputs.retain(|k, _| keep.contains(k));
        }
        Some(Self {
            spec,
            status,
            instance_outputs,
            outputs_omitted: omitted,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fanout(total: u32) -> FlowRun {
        let outputs: serde_json::Map<String, Value> = (0..total)
            .filter(|i| i % 3 != 1)
            .map(|i| (i.to_string(), json!({"i": i})))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "fan", "namespace": "ns", "uid": "u1",
                         "labels": {"team": "a"},
                         "ownerReferences": [{"apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
                                              "name": "parent-1", "uid": "p"}]},
            "spec": {"pool": "p", "input": {"x": 1}, "steps": [
                {"name": "each", "handler": "h", "forEach": "${{ input.items }}"},
                {"name": "ok", "dependsOn": ["each"], "waitForSignal": {"name": "go"}},
                {"name": "nap", "dependsOn": ["ok"], "sleep": "5s", "when": "${{ true }}"},
            ]},
            "status": {"phase": "Running", "progress": "0/3",
                       "signals": {"go": {"payload": {"yes": true}}},
                       "steps": {
                "each": {"phase": "Running", "instances": {
                    "total": total, "succeeded": outputs.len(), "outputs": outputs,
                    "active": {"1": {"phase": "Running", "attempts": 1}, "4": {"phase": "Failed", "attempts": 3}}}},
                "ok": {"phase": "Waiting", "signal": "go"},
            }}
        }))
        .unwrap()
    }

    #[test]
    fn a_for_each_step_is_one_step_with_a_character_per_instance() {
        let view = RunView::new(&fanout(7), Timestamp::UNIX_EPOCH);
        let each = &view.steps["each"];
        assert!(each.for_each);
        // 0 S, 1 R (active), 2 S, 3 S, 4 F (active), 5 S, 6 S; 7 is the total, so index 7 does not exist.
        assert_eq!(each.instance_states.as_deref(), Some("SRSSFSS"));
        assert_eq!(view.run.steps.len(), 3);
        assert_eq!(view.steps["nap"].sleep.as_deref(), Some("5s"));
        assert_eq!(view.steps["nap"].when.as_deref(), Some("${{ true }}"));
        assert_eq!(
            view.awaited,
            [AwaitedSignal {
                step: "ok".into(),
                signal: "go".into(),
                phase: StepPhase::Waiting
            }]
        );
        assert_eq!(view.signals[0].payload, Some(json!({"yes": true})));
        assert_eq!(view.summary.parent.as_deref(), Some("parent-1"));
        assert_eq!(view.summary.labels["team"], "a");
        assert_eq!(view.summary.steps, 3);
        // No outputs in the view: a big fan-out stays small.
        let text = serde_json::to_string(&view).unwrap();
        assert!(!text.contains("\"outputs\""), "{text}");
    }

    #[test]
    fn a_finished_for_each_without_instance_outputs_shows_them_succeeded() {
        let inst: InstancesStatus =
            serde_json::from_value(json!({"total": 4, "succeeded": 3, "failed": 1,
                                          "active": {"2": {"phase": "Failed", "attempts": 3}}}))
            .unwrap();
        assert_eq!(instance_states(&inst), "SSFS");
        let inst: InstancesStatus =
            serde_json::from_value(json!({"total": 3, "succeeded": 1, "outputs": {"1": 2}}))
                .unwrap();
        assert_eq!(instance_states(&inst), ".S.");
    }

    #[test]
    fn a_big_fan_out_stays_small_and_its_detail_is_capped() {
        let fr = fanout(5000);
        let view = RunView::new(&fr, Timestamp::UNIX_EPOCH);
        let states = view.steps["each"].instance_states.clone().unwrap();
        assert_eq!(states.len(), 5000);
        let bytes = serde_json::to_vec(&view).unwrap().len();
        assert!(bytes < 20_000, "{bytes} bytes");
        let detail = StepDetail::new(&fr, "each").unwrap();
        let outputs = &detail.instance_outputs;
        assert_eq!(outputs.len(), MAX_DETAIL_OUTPUTS);
        // The browser gets the outputs decoded, once: not also packed in the step's status.
        let wire = serde_json::to_value(&detail).unwrap();
        assert_eq!(wire["instanceOutputs"]["2"], json!({"i": 2}));
        assert!(
            wire["status"]["instances"].get("outputs").is_none(),
            "{}",
            wire["status"]
        );
        assert!(
            outputs.contains_key("0") && outputs.contains_key("2") && !outputs.contains_key("1")
        );
        // 5,000 instances, a third of them (i % 3 == 1) without an output.
        assert_eq!(detail.outputs_omitted, 3333 - MAX_DETAIL_OUTPUTS);
        assert!(StepDetail::new(&fr, "nope").is_none());
    }

    #[test]
    fn events_are_newest_first() {
        let list: Vec<Event> = serde_json::from_value(json!([
            {"metadata": {"name": "a"}, "involvedObject": {}, "type": "Normal", "reason": "Started",
             "message": "one", "lastTimestamp": "2026-01-01T00:00:00Z", "count": 2},
            {"metadata": {"name": "b"}, "involvedObject": {}, "type": "Warning", "reason": "StepFailed",
             "message": "two", "eventTime": "2026-01-01T00:01:00.000000Z", "reportingComponent": "sluice"},
        ]))
        .unwrap();
        let views = events(&list);
        assert_eq!(views[0].reason, "StepFailed");
        assert_eq!(views[0].source.as_deref(), Some("sluice"));
        assert_eq!(views[1].count, 2);
    }
}
