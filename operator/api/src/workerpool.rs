//! The `WorkerPool` custom resource: a pod template of a user's worker image, scaled by the operator.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::{duration_string, pod_template, positive_duration_string};

/// A WorkerPool runs the workers of a flow binary: the operator owns a Deployment built from `spec.template`,
/// scales it by queue depth (or lets an HPA scale it through the scale subresource), and reaps failed and lost
/// worker pods, releasing their steps for retry.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
// Printer columns repeat `type_ = ...`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "WorkerPool",
    namespaced,
    status = "WorkerPoolStatus",
    shortname = "wp",
    category = "sluice",
    cel,
    derive = "PartialEq",
    derive = "Default",
    doc = "A WorkerPool runs the workers of a flow binary: the operator owns a Deployment built from spec.template, scales it by queue depth (or lets an HPA scale it through the scale subresource), and reaps failed and lost worker pods, releasing their steps for retry.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".status.scaling.mode",
        description = "The scaling mode in force: QueueDepth, External or Manual."
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.scaling.desiredReplicas",
        description = "Worker pods the scaling mode asks for."
    ),
    printcolumn(
        name = "Current",
        type_ = "integer",
        json_path = ".status.replicas",
        description = "Worker pods that exist."
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Worker pods that are ready."
    ),
    printcolumn(
        name = "Queue",
        type_ = "integer",
        json_path = ".status.queueDepth",
        description = "Steps queued and not yet claimed by a worker."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // Shown by `kubectl get -o wide`.
    printcolumn(
        name = "In-Flight",
        type_ = "integer",
        json_path = ".status.inFlight",
        priority = 1,
        description = "Steps workers are running now."
    ),
    printcolumn(
        name = "Last-Scale",
        type_ = "string",
        json_path = ".status.scaling.lastScaleReason",
        priority = 1,
        description = "Why the operator last changed the number of worker pods."
    )
)]
#[x_kube(
    validation = Rule::new(
        "!has(self.scaling) || !has(self.scaling.mode) || self.scaling.mode != 'Manual' || has(self.replicas)"
    )
    .message("spec.replicas is required with scaling.mode Manual: set the number of worker pods")
    .field_path(".replicas")
    .reason(Reason::FieldValueRequired),
)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolSpec {
    /// Pod template of the workers: a container running the user's worker binary (built on the Sluice SDK, or
    /// the exec worker). The operator adds the broker URL, the pool name and a service-account token for the
    /// broker.
    #[schemars(schema_with = "pod_template")]
    pub template: PodTemplateSpec,

    /// Number of worker pods. With scaling mode External an HPA, KEDA or `kubectl scale` writes it through the
    /// scale subresource; with Manual it is used as written; with QueueDepth it is ignored (the operator sizes
    /// the Deployment from queued and running steps and reports the size in `status.replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// Steps one worker runs at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub concurrency: Option<u32>,

    /// How the number of workers is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,

    /// A worker that sends no heartbeat for this long is presumed lost: its pod is reaped and its steps are
    /// retried elsewhere (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_duration_string")]
    pub heartbeat_timeout: Option<String>,
}

/// How the number of workers of a pool is chosen.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new(
        "!has(self.minReplicas) || self.minReplicas <= (has(self.maxReplicas) ? self.maxReplicas : 10)"
    )
    .message("scaling.minReplicas must not exceed scaling.maxReplicas (default 10): lower minReplicas or raise maxReplicas")
    .field_path(".minReplicas"),
    validation = Rule::new(
        "!has(self.mode) || self.mode == 'QueueDepth' || !(has(self.minReplicas) || has(self.maxReplicas) || has(self.targetStepsPerWorker) || has(self.scaleDownDelay))"
    )
    .message(
        "scaling.minReplicas, maxReplicas, targetStepsPerWorker and scaleDownDelay apply only to mode QueueDepth: remove them, or set mode QueueDepth"
    )
    .reason(Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
pub struct Scaling {
    /// QueueDepth (default): the operator sets replicas from queued and running steps. External: an HPA or KEDA
    /// sets `spec.replicas` through the scale subresource. Manual: `spec.replicas` as written.
    #[serde(default)]
    pub mode: ScalingMode,

    /// Fewest workers in QueueDepth mode (default 0: scale to zero when idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_replicas: Option<i32>,

    /// Most workers in QueueDepth mode (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_replicas: Option<i32>,

    /// Queued plus running steps one worker should carry in QueueDepth mode (default: the pool's concurrency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_steps_per_worker: Option<u32>,

    /// How long demand must stay lower before the pool scales down, as a duration such as `60s` (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_string")]
    pub scale_down_delay: Option<String>,
}

/// How the number of workers of a pool is chosen.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScalingMode {
    /// The operator sets replicas from queued and running steps.
    #[default]
    QueueDepth,
    /// An HPA or KEDA sets `spec.replicas` through the scale subresource.
    External,
    /// `spec.replicas` as written.
    Manual,
}

/// Observed state of a WorkerPool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Worker pods that exist (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,

    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Label selector of the worker pods, as a string (what an HPA needs from the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Steps queued for this pool and not yet claimed by a worker.
    #[serde(default)]
    pub queue_depth: u32,

    /// Steps of this pool that workers are running now.
    #[serde(default)]
    pub in_flight: u32,

    /// Age in seconds of the oldest queued step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_waiting_seconds: Option<u64>,

    /// Workers that sent a claim or heartbeat within the heartbeat timeout.
    #[serde(default)]
    pub live_workers: u32,

    /// Which scaling mode sizes the pool, the size it asks for, and why the size last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingStatus>,

    /// Conditions of the pool: `Available`, `ScalingActive`, `HandlersMissing`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// How a pool is scaled: the mode in force, the number of worker pods it asks for, and the last change of that
/// number. The `ScalingActive` condition says why the size is what it is right now.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScalingStatus {
    /// The scaling mode in force: `spec.scaling.mode`, or QueueDepth when it is not set.
    #[serde(default)]
    pub mode: ScalingMode,

    /// Worker pods the mode asks for: the replicas the operator sets on the worker Deployment. Unset until the
    /// spec is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub desired_replicas: Option<i32>,

    /// Why the number of desired worker pods last changed, for example `scaled up from 1 to 10: 40 queued + 0
    /// running steps at 4 per worker → 10 replicas (min 0, max 10)`. The operator also reports every change it
    /// makes to the Deployment as an Event (reason ScaledUp or ScaledDown) with this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,

    /// When the number of desired worker pods last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}
