//! FlowTemplates, the pure part: checking a run's `templateRef.input` against the template's declared inputs
//! and building the flow the run takes from the template. No I/O: the FlowRun controller reads the template
//! and writes the result (`flowrun::template`).
//!
//! A run takes its flow from the template once, when it starts: the template's steps, exit steps and output,
//! its pool, defaults and deadline where the run sets none, and the checked input with the template's
//! defaults filled in. From then on the run is an ordinary FlowRun.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::api::{
    FlowRunSpec, FlowTemplate, FlowTemplateSpec, InputType, TemplateInput, TemplateSource,
};
use crate::engine::output::check_depth;

#[cfg(test)]
mod tests;

/// Condition reason and Event reason of a run whose input does not match the template's declared inputs.
pub const INVALID_INPUT: &str = "InvalidInput";
/// Condition reason and Event reason of a run whose template does not exist.
pub const TEMPLATE_NOT_FOUND: &str = "TemplateNotFound";
/// Condition reason and Event reason of a run whose template cannot be used (a default of the wrong type).
pub const INVALID_TEMPLATE: &str = "InvalidTemplate";

/// Why a run cannot take its flow from its template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The run's `templateRef.input` does not match the declared inputs: one message per problem, each
    /// naming its field (`templateRef.input.amount: expected number, got string "12"`).
    #[error("{}", .0.join("; "))]
    InvalidInput(Vec<String>),
    /// The template itself is unusable: one message per problem, naming the template's field.
    #[error("{}", .0.join("; "))]
    InvalidTemplate(Vec<String>),
}

impl TemplateError {
    /// The CamelCase reason of the run's condition and Event.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => INVALID_INPUT,
            Self::InvalidTemplate(_) => INVALID_TEMPLATE,
        }
    }
}

/// Whether a run still has to take its flow from its template: it names one and has no steps yet.
pub fn awaits_template(spec: &FlowRunSpec) -> bool {
    spec.template_ref.is_some() && spec.steps.is_empty()
}

/// The JSON type name of a value, for messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `v` is a value of type `t`.
pub fn matches_type(t: InputType, v: &Value) -> bool {
    match (t, v) {
        (InputType::String, Value::String(_))
        | (InputType::Number, Value::Number(_))
        | (InputType::Boolean, Value::Bool(_))
        | (InputType::Object, Value::Object(_))
        | (InputType::Array, Value::Array(_)) => true,
        // JSON does not tell 3 from 3.0, and neither does JSON Schema's integer.
        (InputType::Integer, Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

/// `got string "12"`: the type and a short rendering of a value.
fn describe(v: &Value) -> String {
    const MAX: usize = 64;
    let mut text = v.to_string();
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    match v {
        Value::Null => "null".to_owned(),
        _ => format!("{} {text}", type_name(v)),
    }
}

/// The field path of an input: `templateRef.input.amount`, or `templateRef.input['order-id']` for a name that
/// is not an identifier.
fn input_path(name: &str) -> String {
    let ident = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ident {
        format!("templateRef.input.{name}")
    } else {
        format!("templateRef.input[{name:?}]")
    }
}

/// Checks `given` (a run's `templateRef.input`) against the declared `inputs` of template `template`, and
/// returns the run's input: the given values, and the defaults of the inputs not given. Every problem is
/// reported at once, in the order of the input names.
pub fn check_input(
    template: &str,
    inputs: &BTreeMap<String, TemplateInput>,
    given: Option<&Value>,
) -> Result<Map<String, Value>, TemplateError> {
    let empty = Map::new();
    let given = match given {
        None => &empty,
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(TemplateError::InvalidInput(vec![format!(
                "templateRef.input: expected an object of inputs keyed by name, got {}",
                describe(other)
            )]));
        }
    };
    let mut problems = Vec::new();
    let mut template_problems = Vec::new();
    let mut input = Map::new();
    for (name, declared) in inputs {
        let t = declared.type_;
        if declared.required && declared.default.is_some() {
            template_problems.push(format!(
                "FlowTemplate {template}: spec.inputs.{name}: an input is either required or has a default: remove default, or set required to false"
            ));
        }
        match given.get(name) {
            Some(v) if matches_type(t, v) => {
                input.insert(name.clone(), v.clone());
            }
            Some(v) => problems.push(format!(
                "{}: expected {}, got {}",
                input_path(name),
                t.as_str(),
                describe(v)
            )),
            None if declared.required => problems.push(format!(
                "{}: required by FlowTemplate {template}, but not given",
                input_path(name)
            )),
            None => match &declared.default {
                Some(d) if matches_type(t, d) => {
                    input.insert(name.clone(), d.clone());
                }
                Some(d) => template_problems.push(format!(
                    "FlowTemplate {template}: spec.inputs.{name}.default: expected {}, got {}",
                    t.as_str(),
                    describe(d)
                )),
                None => {}
            },
        }
    }
    let unknown: Vec<&String> = given.keys().filter(|k| !inputs.contains_key(*k)).collect();
    for name in unknown {
        let mut message = format!(
            "{}: FlowTemplate {template} declares no such input",
            input_path(name)
        );
        if inputs.is_empty() {
            message.push_str(" (it takes none)");
        } else {
            let declared: Vec<&str> = inputs.keys().map(String::as_str).collect();
            let _ = write!(message, " (it declares {})", declared.join(", "));
        }
        problems.push(message);
    }
    if !template_problems.is_empty() {
        return Err(TemplateError::InvalidTemplate(template_problems));
    }
    if !problems.is_empty() {
        return Err(TemplateError::InvalidInput(problems));
    }
    Ok(input)
}

/// What a run takes from its template.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The run's spec with the template's flow in it.
    pub spec: FlowRunSpec,
    /// The template version it came from, for `status.template`.
    pub source: TemplateSource,
}

/// The run's spec once it took its flow from `template`: steps, exit steps and output from the template;
/// pool, defaults and activeDeadline from the template where the run sets none; `input` the checked input
/// with defaults filled in. Everything else of the run (suspend, cancel, ttl, ...) stays.
pub fn resolve(run: &FlowRunSpec, template: &FlowTemplate) -> Result<Resolved, TemplateError> {
    let name = template.metadata.name.clone().unwrap_or_default();
    let t: &FlowTemplateSpec = &template.spec;
    // The CRD refuses steps and exit steps next to templateRef; input and output are free-form, which its
    // rules cannot see, so they are refused here rather than silently replaced.
    let mut own = Vec::new();
    if run.input.is_some() {
        own.push(
            "spec.input: a run of a FlowTemplate takes its input from spec.templateRef.input: move it there"
                .to_owned(),
        );
    }
    if run.output.is_some() {
        own.push(format!(
            "spec.output: a run of a FlowTemplate takes its output from FlowTemplate {name}: remove it"
        ));
    }
    if !own.is_empty() {
        return Err(TemplateError::InvalidInput(own));
    }
    let given = run.template_ref.as_ref().and_then(|r| r.input.as_ref());
    let input = Value::Object(check_input(&name, &t.inputs, given)?);
    // Users' values are held to MAX_JSON_DEPTH at admission; the input is written by the operator.
    check_depth(&input)
        .map_err(|e| TemplateError::InvalidInput(vec![format!("templateRef.input {e}")]))?;
    let mut spec = run.clone();
    spec.steps.clone_from(&t.steps);
    spec.on_exit.clone_from(&t.on_exit);
    spec.output.clone_from(&t.output);
    spec.input = Some(input);
    if spec.pool.is_none() {
        spec.pool.clone_from(&t.pool);
    }
    if spec.defaults.is_none() {
        spec.defaults.clone_from(&t.defaults);
    }
    if spec.active_deadline.is_none() {
        spec.active_deadline.clone_from(&t.active_deadline);
    }
    if spec.concurrency.is_none() {
        spec.concurrency.clone_from(&t.concurrency);
    }
    Ok(Resolved {
        spec,
        source: source_of(template),
    })
}

/// The version of `template` a run records in `status.template`.
pub fn source_of(template: &FlowTemplate) -> TemplateSource {
    TemplateSource {
        name: template.metadata.name.clone().unwrap_or_default(),
        uid: template.metadata.uid.clone().unwrap_or_default(),
        resource_version: template
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default(),
        generation: template.metadata.generation,
    }
}

/// The JSON merge patch that writes what a run took from its template into its spec: only the fields the
/// template brings (a merge patch replaces lists whole, so the steps are exactly the template's).
pub fn spec_patch(resolved: &FlowRunSpec) -> Value {
    let full = serde_json::to_value(resolved).unwrap_or_default();
    let mut spec = Map::new();
    for key in [
        "steps",
        "onExit",
        "output",
        "input",
        "pool",
        "defaults",
        "activeDeadline",
    ] {
        if let Some(v) = full.get(key) {
            spec.insert(key.to_owned(), v.clone());
        }
    }
    serde_json::json!({ "spec": spec })
}
