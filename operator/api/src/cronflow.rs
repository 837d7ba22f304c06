//! The `CronFlow` custom resource: a FlowRun started on a schedule, as a CronJob starts Jobs.
//!
//! The operator creates one FlowRun per schedule slot, named `<cronflow>-<unix seconds of the slot>`, so a slot
//! is started at most once whatever happens to the operator (a second create is refused by the API server). The
//! runs carry an owner reference to their CronFlow (they go with it) and the label [`CRONFLOW_LABEL`].

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, OwnerReference, Time};
use kube::{CustomResource, KubeSchema, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{FlowRun, FlowRunSpec};

/// Label on every FlowRun a CronFlow started (scheduled or triggered by hand), naming the CronFlow.
pub const CRONFLOW_LABEL: &str = "sluice.dev/cronflow";

/// Label on every FlowRun a CronFlow started: `Scheduled` for a schedule slot, `Manual` for a run started by
/// `kubectl sluice cron trigger`.
pub const TRIGGER_LABEL: &str = "sluice.dev/trigger";

/// Annotation on a scheduled FlowRun: the slot it was started for (RFC 3339), which its name also encodes.
pub const SCHEDULED_AT_ANNOTATION: &str = "sluice.dev/scheduled-at";

/// Longest CronFlow name: a run's name adds `-` and 10 digits and must stay within the 253 characters of a
/// Kubernetes object name.
pub const MAX_CRONFLOW_NAME: usize = 242;

/// A CronFlow starts a FlowRun on a schedule, as a CronJob starts Jobs: `spec.flowRun` is the template of
/// every run, `spec.schedule` (cron syntax, optionally with seconds) in `spec.timeZone` says when.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
// Printer columns repeat `type_ = ...`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "CronFlow",
    namespaced,
    status = "CronFlowStatus",
    shortname = "cf",
    category = "sluice",
    cel,
    derive = "PartialEq",
    derive = "Default",
    doc = "A CronFlow starts a FlowRun on a schedule, as a CronJob starts Jobs: spec.flowRun is the template of every run, spec.schedule (cron syntax, optionally with seconds) in spec.timeZone says when.",
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".spec.schedule",
        description = "The cron schedule."
    ),
    printcolumn(
        name = "Suspend",
        type_ = "boolean",
        json_path = ".spec.suspend",
        description = "Whether new runs are held back."
    ),
    printcolumn(
        name = "Active",
        type_ = "integer",
        json_path = ".status.activeCount",
        description = "Runs of this CronFlow that have not finished."
    ),
    printcolumn(
        name = "Last Schedule",
        type_ = "date",
        json_path = ".status.lastScheduleTime",
        description = "The slot of the last scheduled run."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // No field path: the API server accepts field paths into the declared schema only, and metadata's is open.
    validation = Rule::new("size(self.metadata.name) <= 242")
        .message("metadata.name of a CronFlow has at most 242 characters: its runs are named <name>-<10 digits>, and a name has at most 253"),
    // The same rule as a FlowRun's: a run of a template takes its flow from the template.
    validation = Rule::new(
        "!has(self.spec.flowRun.spec.templateRef) || ((!has(self.spec.flowRun.spec.steps) || size(self.spec.flowRun.spec.steps) == 0) && !has(self.spec.flowRun.spec.onExit))"
    )
    .message("spec.flowRun.spec.templateRef runs a FlowTemplate, which brings the steps and exit steps: remove steps and onExit from spec.flowRun.spec, or remove templateRef")
)]
#[serde(rename_all = "camelCase")]
pub struct CronFlowSpec {
    /// When runs start, in cron syntax: five fields `minute hour day-of-month month day-of-week` (e.g.
    /// `0 3 * * *`, daily at 03:00), or six with a leading seconds field (`*/10 * * * * *`, every 10 seconds),
    /// or one of `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`. Fields take `*`, lists `1,15`, ranges
    /// `1-5`, steps `*/15`, month and weekday names, and `L`, `W`, `#` in the day fields. A run starts at each
    /// time that matches, in `spec.timeZone`. A schedule the CRD rules cannot check and the operator cannot
    /// parse leaves the CronFlow `Ready=False` with reason `InvalidSchedule`.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(
        validation = Rule::new(
            r"self.matches('^@(yearly|annually|monthly|weekly|daily|hourly)$') || self.matches('^\\s*\\S+(\\s+\\S+){4,5}\\s*$')"
        )
        .message("schedule must be five cron fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * *'), six with a leading seconds field (e.g. '*/10 * * * * *'), or @hourly, @daily, @weekly, @monthly or @yearly"),
        validation = Rule::new("!self.contains('TZ=')")
            .message("schedule must not set a time zone (TZ= or CRON_TZ=): set spec.timeZone instead"),
    )]
    pub schedule: String,

    /// IANA time zone the schedule is read in, such as `Europe/Berlin` or `America/New_York` (default `UTC`).
    /// Across daylight saving changes, a time that does not exist that day (clocks go forward) runs at the
    /// first time after the gap, and a time that happens twice (clocks go back) runs once; schedules with
    /// wildcards or steps in the seconds, minutes or hours fields follow the clock instead. An unknown name
    /// leaves the CronFlow `Ready=False` with reason `InvalidSchedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        validation = Rule::new(r"self.matches('^[A-Za-z][A-Za-z0-9_+\\-]*(/[A-Za-z0-9_+\\-]+)*$')")
            .message("timeZone must be an IANA time zone name such as Europe/Berlin, America/New_York or UTC")
    )]
    pub time_zone: Option<String>,

    /// Template of every run: the labels and annotations of its metadata, and its spec, written like a
    /// FlowRun's.
    pub flow_run: FlowRunTemplate,

    /// What to do when a run is due while an earlier run of this CronFlow has not finished. `Allow` (default)
    /// starts it anyway. `Forbid` does not start it while another run is active; the slot waits, and starts
    /// late when the active run finishes, unless `startingDeadlineSeconds` has passed by then (as a CronJob).
    /// `Replace` cancels the active runs (`spec.cancel`) and starts the new one.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,

    /// A run that cannot start within this many seconds of its scheduled time (the operator was down, or
    /// `Forbid` held it back) is not started at all and counts as missed. Unset: no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 31_536_000))]
    pub starting_deadline_seconds: Option<u32>,

    /// What happens to slots that came due while the operator was not running. `RunOnce` (default, as a
    /// CronJob): the latest of them starts once, as soon as the operator is back, within
    /// `startingDeadlineSeconds`; the earlier ones are reported missed. `Skip`: none of them starts; the next
    /// slot runs as usual. Missed slots are reported with a `MissedSchedule` Event. (Slots missed while the
    /// CronFlow was suspended are not covered: see `suspend`.)
    #[serde(default)]
    pub missed_schedule_policy: MissedSchedulePolicy,

    /// How many finished runs that Succeeded to keep (default 3); older ones are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub successful_runs_history_limit: Option<u32>,

    /// How many finished runs that Failed or were Cancelled to keep (default 1); older ones are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub failed_runs_history_limit: Option<u32>,

    /// true holds back new runs (runs already started go on); set back to false to resume. As with a CronJob,
    /// the latest slot missed while suspended starts once on resume, unless `startingDeadlineSeconds` has
    /// passed for it (set a deadline to skip such slots).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
}

/// Default of `successfulRunsHistoryLimit`, as a CronJob's.
pub const DEFAULT_SUCCESSFUL_HISTORY: u32 = 3;
/// Default of `failedRunsHistoryLimit`, as a CronJob's.
pub const DEFAULT_FAILED_HISTORY: u32 = 1;

impl CronFlowSpec {
    /// `successfulRunsHistoryLimit` or its default.
    pub fn successful_history(&self) -> u32 {
        self.successful_runs_history_limit
            .unwrap_or(DEFAULT_SUCCESSFUL_HISTORY)
    }

    /// `failedRunsHistoryLimit` or its default.
    pub fn failed_history(&self) -> u32 {
        self.failed_runs_history_limit
            .unwrap_or(DEFAULT_FAILED_HISTORY)
    }
}

/// The template of a CronFlow's runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FlowRunTemplate {
    /// Labels and annotations every run gets (besides `sluice.dev/cronflow` and `sluice.dev/trigger`, which
    /// the operator sets).
    #[serde(default, skip_serializing_if = "FlowRunTemplateMeta::is_empty")]
    pub metadata: FlowRunTemplateMeta,

    /// Spec of every run, as a FlowRun's `spec`.
    pub spec: FlowRunSpec,
}

/// Labels and annotations of a CronFlow's runs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FlowRunTemplateMeta {
    /// Labels of every run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: BTreeMap<String, String>,

    /// Annotations of every run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,
}

impl FlowRunTemplateMeta {
    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.annotations.is_empty()
    }
}

/// What to do when a run is due while an earlier one has not finished.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConcurrencyPolicy {
    /// Start it anyway: runs may overlap.
    #[default]
    Allow,
    /// Do not start it while another run is active.
    Forbid,
    /// Cancel the active runs and start the new one.
    Replace,
}

/// What happens to slots that came due while the operator was not running.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MissedSchedulePolicy {
    /// The latest missed slot starts once, within `startingDeadlineSeconds`.
    #[default]
    RunOnce,
    /// No missed slot starts.
    Skip,
}

/// Observed state of a CronFlow, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CronFlowStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The slot of the last run the schedule started (its scheduled time, not when it was created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,

    /// When the last run of this CronFlow that Succeeded finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,

    /// Names of the runs of this CronFlow that have not finished, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<String>,

    /// Number of entries in `active` (the ACTIVE column of `kubectl get cronflows`).
    #[serde(default)]
    pub active_count: u32,

    /// The next time the schedule starts a run, unless the CronFlow is suspended or its schedule invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,

    /// Conditions of the CronFlow: `Ready` (False with reason `InvalidSchedule` when the schedule or time
    /// zone cannot be used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Why a run was started: by the schedule or by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// For the schedule slot at these Unix seconds.
    Scheduled(i64),
    /// By hand (`kubectl sluice cron trigger`), at these Unix seconds.
    Manual(i64),
}

/// Name of the run a CronFlow named `cronflow` starts for the slot at `unix_seconds`.
pub fn scheduled_run_name(cronflow: &str, unix_seconds: i64) -> String {
    format!("{cronflow}-{unix_seconds}")
}

/// Prefix of the (server-generated) names of runs started by hand: `<cronflow>-manual-`.
pub fn manual_run_prefix(cronflow: &str) -> String {
    // Keep the generated name within 253 characters (the API server appends 5 characters).
    let keep = MAX_CRONFLOW_NAME.min(253 - "-manual-".len() - 5);
    let base: String = cronflow.chars().take(keep).collect();
    format!("{base}-manual-")
}

impl CronFlow {
    /// The FlowRun this CronFlow starts for `trigger`: the template's labels, annotations and spec, the
    /// labels naming the CronFlow and the trigger, and an owner reference to the CronFlow (so the garbage
    /// collector deletes it with the CronFlow). A scheduled run is named after its slot; a manual one gets a
    /// generated name (`generateName`).
    pub fn flow_run(&self, trigger: Trigger) -> FlowRun {
        let name = self.name_any();
        let mut labels = self.spec.flow_run.metadata.labels.clone();
        let mut annotations = self.spec.flow_run.metadata.annotations.clone();
        labels.insert(CRONFLOW_LABEL.to_owned(), name.clone());
        let mut metadata = ObjectMeta {
            namespace: self.namespace(),
            ..ObjectMeta::default()
        };
        match trigger {
            Trigger::Scheduled(secs) => {
                labels.insert(TRIGGER_LABEL.to_owned(), "Scheduled".to_owned());
                if let Ok(at) = k8s_openapi::jiff::Timestamp::from_second(secs) {
                    annotations.insert(SCHEDULED_AT_ANNOTATION.to_owned(), at.to_string());
                }
                metadata.name = Some(scheduled_run_name(&name, secs));
            }
            Trigger::Manual(_) => {
                labels.insert(TRIGGER_LABEL.to_owned(), "Manual".to_owned());
                metadata.generate_name = Some(manual_run_prefix(&name));
            }
        }
        metadata.labels = Some(labels);
        metadata.annotations = (!annotations.is_empty()).then_some(annotations);
        metadata.owner_references = Some(vec![OwnerReference {
            api_version: CronFlow::api_version(&()).into_owned(),
            kind: CronFlow::kind(&()).into_owned(),
            name,
            uid: self.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        FlowRun {
            metadata,
            spec: self.spec.flow_run.spec.clone(),
            status: None,
        }
    }
}
