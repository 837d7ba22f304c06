//! The `FlowRun` custom resource: one run of a flow, declared as a DAG of steps.
//!
//! The spec is what the user declares; the status is where the operator keeps the state of every step, so that
//! everything the engine needs after an operator restart lives in the API server (design invariant 6). Users
//! deliver signals by writing `status.signals` through the status subresource; the operator never writes that map.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schema::{duration_string, optional_any_json, positive_duration_string};
use crate::{TemplateRef, TemplateSource};

pub mod packed;

/// A FlowRun declares a flow: a DAG of steps with inputs, outputs, retries, timeouts, signals, timers, fan-out
/// and child flows. The Sluice operator runs it to completion and records each step's state in `status.steps`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
// Printer columns repeat `type_ = ...`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "FlowRun",
    namespaced,
    status = "FlowRunStatus",
    shortname = "fr",
    category = "sluice",
    cel,
    derive = "PartialEq",
    derive = "Default",
    doc = "A FlowRun declares a flow: a DAG of steps with inputs, outputs, retries, timeouts, signals, timers, fan-out and child flows. The Sluice operator runs it to completion and records each step's state in status.steps.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    // `--field-selector status.phase=...`: the operator watches only finished runs for their time to live,
    // and users can list runs by phase.
    selectable = ".status.phase",
    // On the whole object, because a run of a template gets its steps copied into its spec by the operator:
    // that is allowed once `status.template` records the template (which the operator writes first), and only
    // then. (Status is dropped on create, so a new run never has it.) No field path: see CronFlow's rule.
    // `input` and `output` are free-form, which CEL cannot see; the operator refuses them next to templateRef.
    validation = Rule::new(
        "!has(self.spec.templateRef) || (has(self.status) && has(self.status.template)) || ((!has(self.spec.steps) || size(self.spec.steps) == 0) && !has(self.spec.onExit))"
    )
    .message("spec.templateRef runs a FlowTemplate, which brings the steps and exit steps: remove spec.steps and spec.onExit, or remove spec.templateRef"),
    validation = Rule::new("has(self.spec.templateRef) == has(oldSelf.spec.templateRef)")
        .message("spec.templateRef cannot be added to or removed from an existing FlowRun: create a new FlowRun")
)]
#[x_kube(
    validation = Rule::new("(has(self.steps) && size(self.steps) > 0) || has(self.templateRef)")
        .message("a flow needs steps: list them in spec.steps, or set spec.templateRef to run a FlowTemplate")
        .field_path(".steps")
        .reason(Reason::FieldValueRequired),
    // Unique step names, dependsOn entries that name steps, what each step does and a pool for every handler
    // step are checked by the chart's step-graph ValidatingAdmissionPolicy, whose messages name the culprits,
    // and by the operator before a run starts (reason Invalid, naming them too). Not here: the API server
    // evaluates a CRD's rules on every write, status writes included, and rules that look into each step
    // (`has(...)` on its fields) cost a FlowRun's per-step status write more than the rest of its validation.
)]
#[serde(rename_all = "camelCase")]
pub struct FlowRunSpec {
    /// Name of the WorkerPool (in the FlowRun's namespace) whose workers run handler steps, unless a step names
    /// another pool. Required when any step has a `handler`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pool: Option<String>,

    /// Input of the flow: any JSON value, visible to expressions as `input`. Nested at most 32 levels deep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_any_json")]
    pub input: Option<Value>,

    /// Settings every step inherits unless it sets its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<StepDefaults>,

    /// The steps of the flow. Steps without `dependsOn` start at once; the others start when every step they
    /// depend on has Succeeded or been Skipped. At most 200 steps. Required unless `templateRef` is set (then
    /// the operator copies the template's steps here when the run starts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 200))]
    pub steps: Vec<Step>,

    /// Runs a FlowTemplate (in the same namespace) instead of listing the steps here: `{name, input}`. When
    /// the run starts, the operator checks `input` against the template's declared inputs (a mismatch fails
    /// the run with reason InvalidInput, naming the field; a template that does not exist, with reason
    /// TemplateNotFound), then copies the template's `steps`, `onExit` and `output` into this spec, its
    /// `pool`, `defaults` and `activeDeadline` where this spec sets none, and the checked input with defaults
    /// filled in as `spec.input`; `status.template` records the template version. Editing or deleting the
    /// template later never changes this run. With `templateRef`, leave `steps`, `onExit`, `output` and
    /// `input` out (a run that sets `input` or `output` fails with reason InvalidInput). It cannot be added,
    /// changed or removed once the run exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self == oldSelf")
            .message("spec.templateRef cannot be changed once the FlowRun exists: create a new FlowRun to run another template or input")
    )]
    pub template_ref: Option<TemplateRef>,

    /// Exit steps: they run once the steps of `spec.steps` have ended, whatever the outcome (Succeeded,
    /// Failed, Cancelled, or past `activeDeadline`), for clean-up, notifications or saga compensations. Their
    /// expressions see every step as `steps.<name>` and the outcome of the main steps as `flow.phase`
    /// (Succeeded, Failed or Cancelled) and `flow.failedSteps` (names of the steps that failed). They are steps
    /// like the others: their names share one namespace with `spec.steps`, and their `dependsOn` names other
    /// exit steps (each starts once the main steps ended and its own dependencies are done). The run ends when
    /// they have: with the outcome of the main steps, or Failed (reason ExitStepFailed) if an exit step failed.
    /// At most 50.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub on_exit: Vec<Step>,

    /// The longest the run may take from its start (`status.startedAt`), as a duration such as `30s`, `10m` or
    /// `2h`. Past it, every main step still going is cancelled (running workers are asked to stop), the run
    /// fails with reason DeadlineExceeded, and its exit steps (`onExit`) still run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_duration_string")]
    pub active_deadline: Option<String>,

    /// A limit on how many runs may be Running at once: runs of one namespace with the same `key` share
    /// `limit` slots. A run that finds every slot taken stays Pending (its `Admitted` condition says which
    /// runs hold the slots) until one of them ends; waiting runs start in the order they were created. A run
    /// holds its slot from its start until it ends (exit steps included); a retried run waits for a slot again.
    /// The slots are counted from the runs' statuses (`status.concurrency`), so they survive operator restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,

    /// Output of the flow, usually built from step outputs with expressions such as
    /// `${{ steps.ship.output.tracking }}`. Defaults to nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_any_json")]
    pub output: Option<Value>,

    /// true pauses the dispatch of new steps; steps already running finish. Set back to false to resume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// true cancels the run: no new step starts, running workers are asked to stop, and the run ends Cancelled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,

    /// Asks for a retry of a Failed run: an opaque token (for example the current time, which is what
    /// `kubectl sluice retry` writes). When it differs from `status.retry.request` and the run has Failed, the
    /// operator re-runs the steps that Failed or were Cancelled because of the failure, keeps the Succeeded
    /// ones, and the run goes back to Running. A new token on a run that has not Failed is recorded in
    /// `status.retry` and otherwise ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub retry_request: Option<String>,

    /// Seconds after the run finished (Succeeded, Failed or Cancelled) when the operator deletes it, with its
    /// child FlowRuns. Counted from `status.finishedAt`; 0 deletes the run as soon as it finishes, and a run
    /// retried before then counts again from its next end. Unset: the operator-wide default, if any (the
    /// operator's `--default-ttl-seconds-after-finished`, Helm value `defaultTtlSecondsAfterFinished`); with
    /// neither, the run is kept until it is deleted by hand. Ignored on child FlowRuns (of `flow` steps): they
    /// are deleted with their parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<u32>,
}

/// A concurrency limit shared by the runs with the same key (`spec.concurrency`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Concurrency {
    /// Runs of one namespace with the same key share the limit: a fixed string such as `nightly-report`, or
    /// exactly one expression over the run's input such as `${{ input.tenant }}` (it must yield a string or
    /// a number). The resolved key is recorded in `status.concurrency.key`; one longer than 253 characters
    /// fails the run with reason Invalid.
    #[schemars(length(min = 1, max = 4096))]
    pub key: String,

    /// How many runs with this key may be Running at once, from 1 to 10000. Each run is admitted by its own
    /// limit, so runs that share a key should agree on it.
    #[schemars(range(min = 1, max = 10000))]
    pub limit: u32,
}

/// Settings every step inherits unless it sets its own.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepDefaults {
    /// Retry policy of handler steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,

    /// Time one attempt of a handler step may take, as a duration such as `30s`, `10m` or `1h30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_duration_string")]
    pub timeout: Option<String>,

    /// A worker that sends no heartbeat for this long is presumed lost and its attempt fails as retryable
    /// (for example `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_duration_string")]
    pub heartbeat_timeout: Option<String>,

    /// Largest accepted output of a single step or forEach instance, in bytes of JSON (default 65536). A larger
    /// output fails the attempt with a clear message, which keeps the FlowRun far below the API server's object
    /// size limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 262144))]
    pub max_output_bytes: Option<u32>,
}

/// How a failed attempt of a handler step is retried: exponential backoff with full jitter, capped.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Total number of attempts, including the first (default 3). 1 means no retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_attempts: Option<u32>,

    /// Backoff before the second attempt, as a duration such as `1s` (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_string")]
    pub initial_backoff: Option<String>,

    /// Factor the backoff grows by after each failed attempt (default 2, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub backoff_factor: Option<f64>,

    /// Upper bound of the backoff, as a duration such as `5m` (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_string")]
    pub max_backoff: Option<String>,

    /// Total time budget for retries, as a duration such as `10m`, counted from the step's first attempt
    /// (`startedAt`; for a forEach, the step's start): no retry is scheduled whose attempt would begin after
    /// it, and the step fails instead (whatever `maxAttempts` still allows). Unset: no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_duration_string")]
    pub max_duration: Option<String>,

    /// Error types (as reported by the handler) that fail the step at once, without retry. At most 50.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 253)))]
    pub non_retryable_errors: Vec<String>,

    /// Exit codes (1 to 255) of an exec-worker command that fail the step at once, without retry. At most 50.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(range(min = 1, max = 255)))]
    pub non_retryable_exit_codes: Vec<i32>,
}

/// One step of a flow. A step does exactly one thing: run a `handler`, wait for a signal (`waitForSignal`),
/// sleep (`sleep` or `until`), or run a child flow (`flow`).
// That it does exactly one, sleeps or waits until (not both) and does not depend on itself is checked by the
// chart's step-graph policy and by the operator, not by rules here: see FlowRunSpec.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Name of the step, unique in the flow; the key of its entry in `status.steps`. Lower-case letters,
    /// digits and '-', at most 63 characters. Expressions refer to a name with '-' as `steps['cooling-off']`.
    #[schemars(length(max = 63))]
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message(
            "step name must be a DNS label: lower-case letters, digits and '-', starting and ending with a letter or digit (e.g. cooling-off)"
        )
    )]
    pub name: String,

    /// Steps that must have Succeeded (or been Skipped) before this one starts. At most 20 (a step that
    /// gathers more results fans in from one `forEach` step instead).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // 200 steps x 20 dependsOn keeps the dependsOn rule under the API server's runtime cost limit per rule
    // (with 50, a maximal FlowRun is refused with "actual cost limit exceeded").
    #[schemars(length(max = 20), inner(length(max = 63)))]
    pub depends_on: Vec<String>,

    /// Condition, as an expression `${{ ... }}`; when it is false the step is Skipped and its dependents still
    /// run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub when: Option<String>,

    /// Input of the step: any JSON value; strings may hold `${{ ... }}` expressions over `input`,
    /// `steps.<name>.output`, `item` and `index`. A string that is exactly one expression keeps its JSON type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_any_json")]
    pub input: Option<Value>,

    /// Name of a handler registered by the workers of the pool; the step runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(
        validation = Rule::new(r"self.matches('^[^\\s]+$')")
            .message("handler must name a handler registered by the pool's workers (e.g. charge_payment): it must not be empty or contain spaces")
    )]
    pub handler: Option<String>,

    /// WorkerPool that runs this step, overriding `spec.pool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pool: Option<String>,

    /// Wait until a signal of this name is written to `status.signals`; its payload becomes the step's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_signal: Option<SignalWait>,

    /// Sleep for this long, as a duration such as `30s` or `72h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "duration_string")]
    pub sleep: Option<String>,

    /// Sleep until this time (RFC 3339, e.g. `2026-12-01T09:00:00Z`), or an expression that yields one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    #[x_kube(
        validation = Rule::new(
            r"self.startsWith('${{') || self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$')"
        )
        .message("until must be an RFC 3339 time such as 2026-12-01T09:00:00Z, or an expression ${{ ... }} that yields one")
    )]
    pub until: Option<String>,

    /// Run a child FlowRun, owned by this one; the step ends with the child's output or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<ChildFlow>,

    /// Fan out: an array, or an expression yielding one; the step runs once per element, with the element as
    /// `item` and its position as `index`. The step's output is the array of instance outputs in index order.
    /// On a handler step each instance is a task; on a `flow` step each instance is a child FlowRun (named
    /// `<run>-<step>-<index>`), whose `input` (inline or `templateRef.input`) may use `item` and `index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_any_json")]
    pub for_each: Option<Value>,

    /// With `forEach`, how many instances may run at once (default 64). A forEach fans out over at most
    /// 10000 items; more fail the step with `TooManyItems`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_parallel: Option<u32>,

    /// Retry policy of this step, overriding `spec.defaults.retry` field by field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,

    /// Time one attempt may take, overriding `spec.defaults.timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_duration_string")]
    pub timeout: Option<String>,

    /// Heartbeat timeout of this step's workers, overriding `spec.defaults.heartbeatTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_duration_string")]
    pub heartbeat_timeout: Option<String>,

    /// true lets the flow go on when this step fails: its dependents treat it as done, with no output.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_failure: bool,
}

/// Wait for a signal delivered through `status.signals.<name>`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SignalWait {
    /// Name of the signal: the key users write under `status.signals`.
    #[schemars(length(max = 253))]
    #[x_kube(
        validation = Rule::new(r"self.matches('^[^\\s]+$')")
            .message("waitForSignal.name must name the signal (e.g. manager-approval): it must not be empty or contain spaces")
    )]
    pub name: String,

    /// How long to wait before the step fails with a timeout, as a duration such as `72h` (default: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_duration_string")]
    pub timeout: Option<String>,
}

/// A child flow run by a step: an inline spec, or a FlowTemplate. Exactly one of the two (checked when the run
/// starts: `spec` is free-form, which the CRD's rules cannot see).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ChildFlow {
    /// Spec of the child FlowRun, written like a FlowRun's `spec`; strings may hold expressions over the
    /// parent's values. It is validated when the step starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_any_json")]
    pub spec: Option<Value>,

    /// Run a FlowTemplate as the child: `{name, input}`. Strings in `input` may hold expressions over the
    /// parent's values; the child FlowRun is created with this `templateRef` and checks its input against the
    /// template's declared inputs when it starts, as any run of a template does (it takes its pool and
    /// defaults from the template, not from the parent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<TemplateRef>,
}

/// How the main steps of a run with exit steps ended.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MainOutcome {
    /// Succeeded, Failed or Cancelled.
    pub phase: FlowPhase,
    /// Why, in one word: Succeeded, StepFailed, DeadlineExceeded or Cancelled.
    pub reason: String,
    /// Why, for people: which step failed and how, or what cancelled the run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Phase of a whole FlowRun.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FlowPhase {
    /// Accepted, no step started yet.
    #[default]
    Pending,
    /// At least one step started and the run has not finished.
    Running,
    /// Every step Succeeded or was Skipped (or failed with `continueOnFailure`).
    Succeeded,
    /// A step failed, or the flow is invalid (see the `Invalid` condition).
    Failed,
    /// Cancelled through `spec.cancel`.
    Cancelled,
}

impl FlowPhase {
    /// Whether the run has ended and will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// Phase of one step.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StepPhase {
    /// Waiting for the steps it depends on.
    #[default]
    Pending,
    /// Queued for a worker; its attempt number is recorded.
    Ready,
    /// A worker is running the current attempt, or a child flow is running.
    Running,
    /// The last attempt failed and the next one waits for its backoff (`wakeAt`).
    Retrying,
    /// Waiting for a signal (`signal`).
    Waiting,
    /// Sleeping until `wakeAt`.
    Sleeping,
    /// Finished with an output; never changes again.
    Succeeded,
    /// Failed for good; `error` holds the last error.
    Failed,
    /// Not run because its `when` was false.
    Skipped,
    /// Not run, or stopped, because the run was cancelled.
    Cancelled,
}

impl StepPhase {
    /// Whether the step has ended and will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }
}

/// Deepest nesting of JSON objects and arrays (`{}` and `[]` count one level, a scalar none) Sluice accepts in
/// a FlowRun's free-form values: `spec.input`, `spec.output`, a step's `input`, `forEach` and `flow.spec`, a
/// signal payload, and every output it records. JSON decoders refuse documents nested deeper than 128 levels, and
/// a list of FlowRuns nests its values about 10 levels down, so this leaves a wide margin. Deeper user values are
/// refused at admission by the chart's `flowrun-json-depth` policy; deeper outputs fail their step.
pub const MAX_JSON_DEPTH: usize = 32;

/// Most signals a FlowRun's `status.signals` holds: one per step that waits for one, with room to spare.
/// More are refused at admission, so a flood of signals cannot grow a status without bound.
pub const MAX_SIGNALS: usize = 256;

/// Observed state of a FlowRun. The operator writes every field except `signals`, which users write.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FlowRunStatus {
    /// Phase of the run: Pending, Running, Succeeded, Failed or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<FlowPhase>,

    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// When the first step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the run ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,

    /// Finished steps out of all steps, e.g. `3/6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// State of each step, keyed by step name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, StepStatus>,

    /// Signals delivered by users, keyed by signal name. Write them with
    /// `kubectl patch flowrun NAME --subresource=status --type=merge -p '{"status":{"signals":{"NAME":{"payload":{...}}}}}'`.
    /// A signal waits here until a step consumes it; the operator never changes this map. At most 256
    /// signals, with names of at most 253 characters; they count towards the operator's status budget
    /// (`--max-status-bytes`), and a payload becomes a step's output only up to `maxOutputBytes`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_SIGNALS))]
    #[x_kube(
        validation = Rule::new("self.all(name, size(name) <= 253)")
            .message("a signal name has at most 253 characters")
    )]
    pub signals: BTreeMap<String, Signal>,

    /// Output of the flow, from `spec.output`, once it Succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_any_json")]
    pub output: Option<Value>,

    /// How the main steps (`spec.steps`) ended, in a run with exit steps (`spec.onExit`): recorded when they
    /// end, before the exit steps start. Exit steps see it as `flow.phase`, `flow.reason` and `flow.message`;
    /// the run ends with this phase once they are done, unless one of them fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_outcome: Option<MainOutcome>,

    /// Size of this FlowRun's status in bytes of JSON, to watch against the object size limit: measured by
    /// every decision of the operator, estimated between them. A step that would take it past the operator's
    /// budget (`--max-status-bytes`, default 1 MiB) fails with `StatusTooLarge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_bytes: Option<u64>,

    /// Conditions of the run: `Ready`, `Succeeded`, `Invalid`, `Suspended`, and `Admitted` for a run with
    /// `spec.concurrency` (False with reason ConcurrencyLimit while it waits for a slot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The last `spec.retryRequest` the operator acted on, and what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryStatus>,

    /// For a run of a FlowTemplate (`spec.templateRef`): the template version whose flow the run took when
    /// it started (name, uid, resourceVersion, generation). Later edits of the template do not change the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateSource>,

    /// For a run with `spec.concurrency`: its resolved key and, once it holds a slot, when it was admitted. A
    /// run with `admittedAt` that has not finished holds one of the key's slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyStatus>,
}

/// Where a run with a concurrency limit stands (`status.concurrency`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrencyStatus {
    /// The key the run's `spec.concurrency.key` resolved to.
    pub key: String,

    /// When the run got its slot; unset while it waits for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_at: Option<Time>,
}

/// What the operator did with the last `spec.retryRequest`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetryStatus {
    /// The `spec.retryRequest` token acted on; a different token in the spec is a new request.
    pub request: String,

    /// Retried (the run went back to Running) or Ignored (the run had not Failed).
    pub outcome: RetryOutcome,

    /// What was re-run, or why the request was ignored.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,

    /// When the operator acted on the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,

    /// How many retries of this run were carried out so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub count: u32,
}

/// What the operator did with a retry request.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RetryOutcome {
    /// The run had Failed: its failed and cancelled steps went back to Pending and the run to Running.
    #[default]
    Retried,
    /// The run had not Failed, so there was nothing to retry.
    Ignored,
}

/// A signal delivered to a FlowRun.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Signal {
    /// Payload of the signal: any JSON value, nested at most 32 levels deep. It becomes the output of the step
    /// that waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_any_json")]
    pub payload: Option<Value>,
}

/// State of one step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// Phase of the step.
    pub phase: StepPhase,

    /// Number of the current (or last) attempt; attempt numbers start at 1. Events of older attempts are
    /// refused.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,

    /// Output of the step once it Succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_any_json")]
    pub output: Option<Value>,

    /// The last error, truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,

    /// When the step's first attempt started (or its wait or sleep began).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,

    /// When the step ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,

    /// Worker (pod name) running the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,

    /// When a sleeping step wakes, or a retrying step's next attempt becomes ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<Time>,

    /// When the current attempt, or the signal wait, times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,

    /// Signal this step waits for, or consumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,

    /// Name of the child FlowRun of a `flow` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,

    /// Instances of a `forEach` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<InstancesStatus>,

    /// Why the step is in its phase, when that is not obvious (for example why it was Skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// Attempts made before the run was last retried through `spec.retryRequest`: the retry policy's
    /// `maxAttempts` counts from here, while attempt numbers keep increasing so that late reports of older
    /// attempts are still refused. For a `flow` step, the number of its child runs before the current one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry_base: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An error of a step attempt.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepError {
    /// Type of the error as reported by the handler (e.g. `card_declined`), or one of Sluice's own:
    /// `Timeout`, `HeartbeatLost`, `OutputTooLarge`, `OutputTooDeep` (an output nesting objects and arrays
    /// more than 32 levels deep), `StatusTooLarge` (the step would have grown the status past the operator's
    /// budget), `TooManyItems` (a forEach over too many items), `InvalidInput`, `ChildFailed`.
    #[serde(rename = "type")]
    pub type_: String,

    /// Message of the error, truncated to a few KiB.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,

    /// Exit code of an exec-worker command, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,

    /// Attempt this error belongs to.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
}

/// Compact state of the instances of a `forEach` step: counts, the outputs of Succeeded instances, and detail
/// only for instances that are active or failed, so that large fan-outs stay small.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstancesStatus {
    /// Number of instances (elements of the `forEach` array).
    pub total: u32,

    /// Number of Succeeded instances.
    #[serde(default)]
    pub succeeded: u32,

    /// Number of instances that failed for good.
    #[serde(default)]
    pub failed: u32,

    /// Outputs of Succeeded instances: one string holding a JSON object from instance index to output, such
    /// as `{"0":{"ok":true},"2":"done"}`. It is a string and not a map because the API server's cost of every
    /// status write grows with the number of fields, and a big fan-out holds one output per instance until the
    /// step ends (then they move to the step's `output`). `kubectl sluice ui` shows them decoded.
    #[serde(default, with = "packed", skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "packed::schema")]
    pub outputs: BTreeMap<String, Value>,

    /// Instances that started and have not Succeeded, keyed by index. Instances not listed here nor in
    /// `outputs` have not started.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub active: BTreeMap<String, InstanceStatus>,
}

/// State of one `forEach` instance that started and has not Succeeded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Phase of the instance.
    pub phase: StepPhase,

    /// Number of the current (or last) attempt.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,

    /// The last error, truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,

    /// Worker (pod name) running the current attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,

    /// When a retrying instance's next attempt becomes ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<Time>,

    /// When the current attempt times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,

    /// Attempts made before the run was last retried through `spec.retryRequest` (see the step's
    /// `retryBase`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry_base: u32,

    /// Name of the instance's child FlowRun, for a forEach over a `flow` step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
}
