//! The `FlowTemplate` custom resource: a reusable flow definition with declared inputs, run by a FlowRun's
//! `spec.templateRef` (or a `flow` step's `templateRef`).
//!
//! A run copies the template's flow into its own spec when the operator first looks at it, and records the
//! template's version in `status.template`; from then on it is an ordinary FlowRun, so editing or deleting a
//! template never changes a run that has started.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schema::{optional_any_json, positive_duration_string};
use crate::{Step, StepDefaults};

/// Most inputs a FlowTemplate declares.
pub const MAX_TEMPLATE_INPUTS: usize = 64;

/// A FlowTemplate is a reusable flow: the steps, exit steps, output, pool and defaults of a FlowRun, and the
/// inputs the flow takes. A FlowRun runs it with `spec.templateRef: {name, input}`; the operator checks the
/// input against `spec.inputs` and copies the flow into the run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
// Printer columns repeat `type_ = ...`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "FlowTemplate",
    namespaced,
    shortname = "ft",
    category = "sluice",
    cel,
    derive = "PartialEq",
    derive = "Default",
    doc = "A FlowTemplate is a reusable flow: the steps, exit steps, output, pool and defaults of a FlowRun, and the inputs the flow takes. A FlowRun runs it with spec.templateRef: {name, input}; the operator checks the input against spec.inputs and copies the flow into the run.",
    printcolumn(
        name = "Pool",
        type_ = "string",
        json_path = ".spec.pool",
        description = "The WorkerPool that runs the handler steps."
    ),
    printcolumn(
        name = "Description",
        type_ = "string",
        json_path = ".spec.description",
        description = "What the flow does."
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
// Unique step names and dependsOn entries that name steps are checked by the chart's step-graph
// ValidatingAdmissionPolicy, whose messages name the culprits (a CRD rule's message cannot, within the API
// server's cost budget), and by the operator when a run starts.
#[serde(rename_all = "camelCase")]
pub struct FlowTemplateSpec {
    /// What the flow does, for people (shown by `kubectl get flowtemplates`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// The inputs the flow takes, by name: each with a type, and either `required: true` or an optional
    /// `default`. A run gives them in `spec.templateRef.input`; the operator refuses input of the wrong type,
    /// a missing required input and any input not declared here, fills in the defaults, and the result is the
    /// run's `spec.input` (`input.<name>` in expressions). Names are identifiers (letters, digits and `_`,
    /// not starting with a digit). At most 64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = MAX_TEMPLATE_INPUTS))]
    #[x_kube(
        validation = Rule::new("self.all(name, name.matches('^[A-Za-z_][A-Za-z0-9_]*$') && size(name) <= 63)")
            .message("input names must be identifiers of at most 63 characters (letters, digits and _, not starting with a digit, e.g. orderId), so that expressions can read them as input.<name>")
    )]
    pub inputs: BTreeMap<String, TemplateInput>,

    /// Name of the WorkerPool whose workers run handler steps, unless a step names another pool. A run that
    /// sets its own `spec.pool` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pool: Option<String>,

    /// Settings every step inherits unless it sets its own, as in a FlowRun. A run that sets its own
    /// `spec.defaults` overrides them (as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<StepDefaults>,

    /// The steps of the flow, as in a FlowRun's `spec.steps`: expressions read the run's input (the checked
    /// `templateRef.input` with defaults filled in) as `input`. At most 200 steps.
    #[schemars(length(min = 1, max = 200))]
    pub steps: Vec<Step>,

    /// Exit steps, as in a FlowRun's `spec.onExit`: they run once the main steps have ended, whatever the
    /// outcome. At most 50.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub on_exit: Vec<Step>,

    /// Output of the flow, as in a FlowRun's `spec.output`, usually built from step outputs with expressions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_any_json")]
    pub output: Option<Value>,

    /// The longest a run may take from its start, as in a FlowRun's `spec.activeDeadline` (e.g. `10m`). A run
    /// that sets its own overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "positive_duration_string")]
    pub active_deadline: Option<String>,

    /// A limit on how many runs may be Running at once, as in a FlowRun's `spec.concurrency` (its key may be an
    /// expression over the checked input). A run that sets its own overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<crate::Concurrency>,
}

/// One declared input of a FlowTemplate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateInput {
    /// JSON type of the value: `string`, `number` (any number), `integer` (a number without a fractional
    /// part), `boolean`, `object` or `array`. `null` is not a value of any type.
    #[serde(rename = "type")]
    pub type_: InputType,

    /// What the input means, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Value used when a run does not give this input; it must be of the declared `type` (a run of a template
    /// whose default does not match fails with reason InvalidTemplate). Without a default, an input that is
    /// not required is simply absent from `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_any_json")]
    pub default: Option<Value>,

    /// true: every run must give this input (a run without it fails with reason InvalidInput). A required
    /// input has no `default` (runs of a template that sets both fail with reason InvalidTemplate; `default`
    /// is free-form, which the CRD's rules cannot see).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
}

/// JSON type of a template input.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// A JSON string.
    #[default]
    String,
    /// Any JSON number.
    Number,
    /// A JSON number without a fractional part (`3` or `3.0`).
    Integer,
    /// true or false.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

impl InputType {
    /// The name used in the CRD and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Integer => "integer",
            Self::Boolean => "boolean",
            Self::Object => "object",
            Self::Array => "array",
        }
    }
}

/// A reference to a FlowTemplate in the run's namespace, with the input for it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// Name of the FlowTemplate, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
            .message("templateRef.name must be the name of a FlowTemplate: lower-case letters, digits, '-' and '.' (e.g. expense-approval)")
    )]
    pub name: String,

    /// The template's inputs, as an object keyed by input name (see the template's `spec.inputs`). Checked
    /// when the run starts: a value of the wrong type, a missing required input or an input the template does
    /// not declare fails the run with reason InvalidInput, naming the field. In a `flow` step, strings may
    /// hold expressions over the parent's values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_any_json")]
    pub input: Option<Value>,
}

/// The FlowTemplate version a run took its flow from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSource {
    /// Name of the FlowTemplate.
    pub name: String,

    /// UID of the FlowTemplate: a template deleted and created again under the same name has another.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,

    /// `metadata.resourceVersion` of the FlowTemplate when the run took its flow.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,

    /// `metadata.generation` of the FlowTemplate when the run took its flow (it grows with every spec change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}
