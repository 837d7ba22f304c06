//! Validation beyond what the CRD's CEL rules can check: cycles, expressions and what they refer to,
//! durations, times, step kinds. Every problem is reported at once, with a field path and a hint, so a user
//! fixes a FlowRun in one round.

use std::collections::BTreeSet;
use std::fmt;

use thiserror::Error;

use super::dag::Dag;
use super::expr::{self, ExprError, VARIABLES};
use super::timers::{parse_duration, parse_time};
use crate::api::{ChildFlow, FlowRunSpec, RetryPolicy, SignalWait, Step};

/// Longest step name (a label, so child FlowRun names and events stay valid).
pub const MAX_STEP_NAME: usize = 63;

/// One problem of a FlowRun spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Field path such as `spec.steps[2].dependsOn[0]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when there is something useful to say.
    pub hint: Option<String>,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

/// Every problem of a FlowRun spec.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{} problem(s): {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<ValidationError>);

/// What a step does: exactly one of these.
#[derive(Debug, Clone, Copy)]
pub enum StepKind<'a> {
    /// Run a handler on a worker.
    Handler(&'a str),
    /// Wait for a signal.
    Signal(&'a SignalWait),
    /// Sleep for a duration.
    Sleep(&'a str),
    /// Sleep until a time (RFC 3339 or an expression).
    Until(&'a str),
    /// Run a child flow.
    Flow(&'a ChildFlow),
}

/// The kind of a step, or the list of kinds it sets when that is not exactly one.
pub fn step_kind(step: &Step) -> Result<StepKind<'_>, Vec<&'static str>> {
    let mut kinds = Vec::new();
    let mut found = Vec::new();
    if let Some(h) = &step.handler {
        kinds.push(StepKind::Handler(h));
        found.push("handler");
    }
    if let Some(s) = &step.wait_for_signal {
        kinds.push(StepKind::Signal(s));
        found.push("waitForSignal");
    }
    if let Some(s) = &step.sleep {
        kinds.push(StepKind::Sleep(s));
        found.push("sleep");
    }
    if let Some(u) = &step.until {
        kinds.push(StepKind::Until(u));
        found.push("until");
    }
    if let Some(f) = &step.flow {
        kinds.push(StepKind::Flow(f));
        found.push("flow");
    }
    match kinds.as_slice() {
        [one] => Ok(*one),
        _ => Err(found),
    }
}

/// Whether a string is a valid step name: lower-case letters, digits and '-', starting and ending with a
/// letter or digit, at most [`MAX_STEP_NAME`] characters.
pub fn is_valid_step_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_STEP_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Validates a spec and lists every problem.
pub fn validate(spec: &FlowRunSpec) -> Result<(), ValidationErrors> {
    let mut v = Validator::default();
    v.spec(spec, "spec");
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(v.errors))
    }
}

/// Where an expression is, which decides what it may refer to.
#[derive(Clone, Copy)]
struct Scope<'a> {
    steps: &'a [Step],
    dag: &'a Dag,
    /// The step the expression belongs to (`None` for `spec.output`, which sees every step).
    step: Option<usize>,
    /// Whether `item` and `index` exist (the input of a forEach step).
    item: bool,
    /// Whether `flow` exists (an exit step).
    flow: bool,
}

#[derive(Default)]
struct Validator {
    errors: Vec<ValidationError>,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>, hint: Option<String>) {
        self.errors.push(ValidationError {
            path: path.into(),
            message: message.into(),
            hint,
        });
    }

    fn spec(&mut self, spec: &FlowRunSpec, base: &str) {
        if spec.steps.is_empty() {
            self.err(
                format!("{base}.steps"),
                "a flow needs at least one step",
                None,
            );
        }
        if let Some(d) = &spec.defaults {
            let p = format!("{base}.defaults");
            self.positive_duration(&format!("{p}.timeout"), d.timeout.as_deref());
            self.positive_duration(
                &format!("{p}.heartbeatTimeout"),
                d.heartbeat_timeout.as_deref(),
            );
            if let Some(r) = &d.retry {
                self.retry(&format!("{p}.retry"), r);
            }
            if d.max_output_bytes == Some(0) {
                self.err(
                    format!("{p}.maxOutputBytes"),
                    "must be at least 1",
                    Some("leave it out for the default of 65536".into()),
                );
            }
        }

        self.positive_duration(
            &format!("{base}.activeDeadline"),
            spec.active_deadline.as_deref(),
        );
        if let Some(c) = &spec.concurrency {
            self.concurrency_key(&c.key, &format!("{base}.concurrency.key"));
        }
        // Exit steps are checked as the engine schedules them: after the main steps, depending on all.
        let main = spec.steps.len();
        let path = |i: usize| {
            if i < main {
                format!("{base}.steps[{i}]")
            } else {
                format!("{base}.onExit[{}]", i - main)
            }
        };
        let scheduled = super::exit::scheduled(spec);
        let spec: &FlowRunSpec = &scheduled;
        let dag = Dag::new(&spec.steps);
        let mut seen = BTreeSet::new();
        for (i, step) in spec.steps.iter().enumerate() {
            let p = path(i);
            if !is_valid_step_name(&step.name) {
                self.err(
                    format!("{p}.name"),
                    format!("{:?} is not a valid step name", step.name),
                    Some(format!(
                        "use lower-case letters, digits and '-', at most {MAX_STEP_NAME} characters"
                    )),
                );
            }
            if !seen.insert(step.name.as_str()) {
                self.err(
                    format!("{p}.name"),
                    format!("duplicate step name {:?}", step.name),
                    Some("step names must be unique".into()),
                );
            }
            self.step(spec, &dag, i, main, &p);
        }
        // A step depending on itself is reported above.
        for cycle in dag.cycles.iter().filter(|c| c.len() > 1) {
            let names: Vec<&str> = cycle
                .iter()
                .chain(cycle.first())
                .map(|&i| spec.steps[i].name.as_str())
                .collect();
            // dependsOn points backwards along the walk: name[k] depends on name[k+1].
            self.err(
                format!("{}.dependsOn", path(cycle[0])),
                format!("dependency cycle: {}", names.join(" → ")),
                Some("remove one of these dependsOn entries".into()),
            );
        }
        if let Some(output) = &spec.output {
            let scope = Scope {
                steps: &spec.steps,
                dag: &dag,
                step: None,
                item: false,
                flow: false,
            };
            self.expressions_in(output, &format!("{base}.output"), scope);
        }
    }

    fn step(&mut self, spec: &FlowRunSpec, dag: &Dag, i: usize, main: usize, p: &str) {
        let step = &spec.steps[i];
        for (j, dep) in step.depends_on.iter().enumerate() {
            if i < main && dag.index.get(dep).is_some_and(|&d| d >= main) {
                self.err(
                    format!("{p}.dependsOn[{j}]"),
                    format!(
                        "{dep:?} is an exit step (spec.onExit), which runs after every main step"
                    ),
                    Some("a main step can depend on main steps only".into()),
                );
            } else if dep == &step.name {
                self.err(
                    format!("{p}.dependsOn[{j}]"),
                    format!("step {:?} depends on itself", step.name),
                    None,
                );
            } else if !dag.index.contains_key(dep) {
                self.err(
                    format!("{p}.dependsOn[{j}]"),
                    format!("unknown step {dep:?}"),
                    Some(known_steps(&spec.steps)),
                );
            }
        }

        let kind = match step_kind(step) {
            Ok(k) => Some(k),
            Err(found) => {
                let found = if found.is_empty() {
                    "none".to_owned()
                } else {
                    found.join(", ")
                };
                self.err(
                    p.to_owned(),
                    format!(
                        "a step does exactly one of handler, waitForSignal, sleep or until, flow; found: {found}"
                    ),
                    None,
                );
                None
            }
        };
        let is_handler = matches!(kind, Some(StepKind::Handler(_)));
        let scope = Scope {
            steps: &spec.steps,
            dag,
            step: Some(i),
            item: false,
            flow: i >= main,
        };

        match kind {
            Some(StepKind::Handler(h)) => {
                if h.trim().is_empty() {
                    self.err(format!("{p}.handler"), "empty handler name", None);
                }
                if step.pool.is_none() && spec.pool.is_none() {
                    self.err(
                        format!("{p}.pool"),
                        "a handler step needs a WorkerPool",
                        Some("set spec.pool, or pool on the step".into()),
                    );
                }
            }
            Some(StepKind::Signal(s)) => {
                if s.name.trim().is_empty() {
                    self.err(format!("{p}.waitForSignal.name"), "empty signal name", None);
                }
                self.positive_duration(&format!("{p}.waitForSignal.timeout"), s.timeout.as_deref());
            }
            Some(StepKind::Sleep(d)) => {
                if let Err(e) = parse_duration(d) {
                    self.err(format!("{p}.sleep"), e.to_string(), None);
                }
            }
            Some(StepKind::Until(u)) => {
                if expr::has_placeholder(u) {
                    self.template(u, &format!("{p}.until"), scope);
                } else if let Err(e) = parse_time(u) {
                    self.err(format!("{p}.until"), e, None);
                }
            }
            Some(StepKind::Flow(f)) => {
                // A forEach child's input sees the instance's `item` and `index`.
                let scope = Scope {
                    item: step.for_each.is_some(),
                    ..scope
                };
                self.child_flow(spec, f, &format!("{p}.flow"), scope)
            }
            None => {}
        }

        let is_flow = matches!(kind, Some(StepKind::Flow(_)));
        if !is_handler {
            for (field, set) in [
                ("retry", step.retry.is_some()),
                ("timeout", step.timeout.is_some()),
                ("heartbeatTimeout", step.heartbeat_timeout.is_some()),
                ("forEach", step.for_each.is_some() && !is_flow),
            ] {
                if set && kind.is_some() {
                    self.err(
                        format!("{p}.{field}"),
                        if field == "forEach" {
                            "forEach applies to handler and flow steps only".to_owned()
                        } else {
                            format!("{field} applies to handler steps only")
                        },
                        None,
                    );
                }
            }
        }
        if let Some(r) = &step.retry {
            self.retry(&format!("{p}.retry"), r);
        }
        self.positive_duration(&format!("{p}.timeout"), step.timeout.as_deref());
        self.positive_duration(
            &format!("{p}.heartbeatTimeout"),
            step.heartbeat_timeout.as_deref(),
        );
        match (step.max_parallel, &step.for_each) {
            (Some(_), None) => self.err(
                format!("{p}.maxParallel"),
                "maxParallel needs forEach",
                Some("remove maxParallel, or add forEach".into()),
            ),
            (Some(0), Some(_)) => self.err(format!("{p}.maxParallel"), "must be at least 1", None),
            _ => {}
        }
        if let Some(fe) = &step.for_each {
            match fe {
                serde_json::Value::String(s) => {
                    if expr::single_expression(s).is_none() {
                        self.err(
                            format!("{p}.forEach"),
                            "a forEach string must be exactly one expression `${{ ... }}`",
                            Some("for example forEach: \"${{ input.items }}\"".into()),
                        );
                    }
                    self.template(s, &format!("{p}.forEach"), scope);
                }
                serde_json::Value::Array(_) => {
                    self.expressions_in(fe, &format!("{p}.forEach"), scope)
                }
                _ => self.err(
                    format!("{p}.forEach"),
                    "forEach must be an array or an expression `${{ ... }}` yielding one",
                    None,
                ),
            }
        }
        if let Some(when) = &step.when {
            match expr::condition_expression(when) {
                Ok("") => self.err(format!("{p}.when"), "empty condition", None),
                Ok(e) => self.expression(e, &format!("{p}.when"), scope),
                Err(e) => self.err(format!("{p}.when"), e.to_string(), None),
            }
        }
        if let Some(input) = &step.input {
            let scope = Scope {
                item: step.for_each.is_some(),
                ..scope
            };
            self.expressions_in(input, &format!("{p}.input"), scope);
        }
    }

    fn child_flow(&mut self, parent: &FlowRunSpec, flow: &ChildFlow, p: &str, scope: Scope<'_>) {
        // A child of a FlowTemplate checks its input against the template when it starts; here only the
        // parent's expressions in that input can be checked.
        let spec = match (&flow.spec, &flow.template_ref) {
            (Some(spec), None) => spec,
            (None, Some(reference)) => {
                if let Some(input) = &reference.input {
                    self.expressions_in(input, &format!("{p}.templateRef.input"), scope);
                }
                return;
            }
            _ => {
                self.err(
                    p.to_owned(),
                    "flow needs exactly one of spec and templateRef",
                    Some("keep the inline spec or the FlowTemplate reference".into()),
                );
                return;
            }
        };
        let p = &format!("{p}.spec");
        let mut child: FlowRunSpec = match serde_json::from_value(spec.clone()) {
            Ok(c) => c,
            Err(e) => {
                self.err(p.to_owned(), format!("not a FlowRun spec: {e}"), None);
                return;
            }
        };
        // Like `child::child_spec`, the child inherits the parent's pool and defaults when it sets none.
        if child.pool.is_none() {
            child.pool.clone_from(&parent.pool);
        }
        if child.defaults.is_none() {
            child.defaults.clone_from(&parent.defaults);
        }
        // The child's input is resolved with the parent's values; the rest is the child's own flow.
        if let Some(input) = &child.input {
            self.expressions_in(input, &format!("{p}.input"), scope);
        }
        self.spec(&child, p);
    }

    fn retry(&mut self, p: &str, r: &RetryPolicy) {
        if r.max_attempts == Some(0) {
            self.err(
                format!("{p}.maxAttempts"),
                "must be at least 1 (1 means no retry)",
                None,
            );
        }
        if let Some(f) = r.backoff_factor
            && !(f.is_finite() && f >= 1.0)
        {
            self.err(format!("{p}.backoffFactor"), "must be at least 1", None);
        }
        for (field, d) in [
            ("initialBackoff", &r.initial_backoff),
            ("maxBackoff", &r.max_backoff),
        ] {
            if let Some(d) = d
                && let Err(e) = parse_duration(d)
            {
                self.err(format!("{p}.{field}"), e.to_string(), None);
            }
        }
        self.positive_duration(&format!("{p}.maxDuration"), r.max_duration.as_deref());
    }

    fn positive_duration(&mut self, path: &str, d: Option<&str>) {
        let Some(d) = d else { return };
        match parse_duration(d) {
            Ok(v) if v.is_zero() => self.err(path, "must be longer than zero", None),
            Ok(_) => {}
            Err(e) => self.err(path, e.to_string(), None),
        }
    }

    /// Checks every expression in a JSON value.
    fn expressions_in(&mut self, value: &serde_json::Value, path: &str, scope: Scope<'_>) {
        for (p, e) in expr::expressions_in(value, path) {
            match e {
                Ok(e) => self.expression(&e, &p, scope),
                Err(e) => self.err(p, e.to_string(), None),
            }
        }
    }

    /// Checks every expression in a template string.
    /// A concurrency key is resolved before any step ran: a fixed string, or one expression over `input`.
    fn concurrency_key(&mut self, key: &str, path: &str) {
        if !expr::has_placeholder(key) {
            return;
        }
        let Some(e) = expr::single_expression(key) else {
            self.err(
                path,
                format!("{key:?} must be a fixed string or exactly one expression"),
                Some("for example key: \"${{ input.tenant }}\"".into()),
            );
            return;
        };
        match expr::references(e) {
            Ok(refs) => {
                if let Some(other) = refs.variables.iter().find(|v| v.as_str() != "input") {
                    self.err(
                        path,
                        format!(
                            "expression `{e}` uses {other:?}; a concurrency key sees only input"
                        ),
                        Some("the key is resolved before any step runs".into()),
                    );
                }
            }
            Err(ExprError::Parse { message, .. }) => self.err(
                path,
                format!("expression `{e}` does not parse: {message}"),
                None,
            ),
            Err(other) => self.err(path, other.to_string(), None),
        }
    }

    fn template(&mut self, text: &str, path: &str, scope: Scope<'_>) {
        self.expressions_in(&serde_json::Value::String(text.to_owned()), path, scope);
    }

    /// Parses one expression and checks the steps and variables it refers to.
    fn expression(&mut self, e: &str, path: &str, scope: Scope<'_>) {
        let refs = match expr::references(e) {
            Ok(r) => r,
            Err(ExprError::Parse { message, .. }) => {
                self.err(
                    path,
                    format!("expression `{e}` does not parse: {message}"),
                    None,
                );
                return;
            }
            Err(other) => {
                self.err(path, other.to_string(), None);
                return;
            }
        };
        for var in &refs.variables {
            if !VARIABLES.contains(&var.as_str()) {
                self.err(
                    path,
                    format!("expression `{e}` uses unknown variable {var:?}"),
                    Some(
                        "expressions see input, steps, in forEach steps item and index, and in exit steps flow".into(),
                    ),
                );
            } else if var == "flow" && !scope.flow {
                self.err(
                    path,
                    format!("expression `{e}` uses \"flow\", which exists only in exit steps (spec.onExit)"),
                    None,
                );
            } else if (var == "item" || var == "index") && !scope.item {
                self.err(
                    path,
                    format!("expression `{e}` uses {var:?}, which exists only in the input of a forEach step"),
                    None,
                );
            }
        }
        for name in &refs.steps {
            let Some(&j) = scope.dag.index.get(name) else {
                let dashed: Vec<&str> = scope
                    .steps
                    .iter()
                    .map(|s| s.name.as_str())
                    .filter(|s| s.starts_with(&format!("{name}-")))
                    .collect();
                let hint = if let Some(d) = dashed.first() {
                    format!("names with '-' are written steps['{d}']")
                } else {
                    known_steps(scope.steps)
                };
                self.err(
                    path,
                    format!("expression `{e}` refers to unknown step {name:?}"),
                    Some(hint),
                );
                continue;
            };
            if let Some(i) = scope.step {
                if i == j {
                    self.err(
                        path,
                        format!("expression `{e}` refers to its own step {name:?}"),
                        None,
                    );
                } else if !scope.dag.upstream[i].contains(&j) {
                    self.err(
                        path,
                        format!(
                            "expression `{e}` refers to step {name:?}, which is not upstream of {:?}",
                            scope.steps[i].name
                        ),
                        Some(format!(
                            "add {name:?} to dependsOn (directly or through another step)"
                        )),
                    );
                }
            }
        }
    }
}

fn known_steps(steps: &[Step]) -> String {
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    format!("known steps: {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(v: serde_json::Value) -> FlowRunSpec {
        serde_json::from_value(v).unwrap()
    }

    fn problems(v: serde_json::Value) -> Vec<ValidationError> {
        match validate(&spec(v)) {
            Ok(()) => Vec::new(),
            Err(e) => e.0,
        }
    }

    fn paths(v: serde_json::Value) -> Vec<String> {
        problems(v).into_iter().map(|e| e.path).collect()
    }

    #[test]
    fn the_order_flow_is_valid() {
        let s = json!({
            "pool": "orders",
            "input": {"orderId": "1234", "items": ["a", "b"]},
            "defaults": {"retry": {"maxAttempts": 3, "initialBackoff": "1s", "backoffFactor": 2, "maxBackoff": "5m"},
                         "timeout": "10m", "heartbeatTimeout": "30s"},
            "steps": [
                {"name": "charge", "handler": "charge_payment",
                 "input": {"orderId": "${{ input.orderId }}"}, "retry": {"maxAttempts": 5, "nonRetryableErrors": ["card_declined"]}},
                {"name": "reserve", "handler": "reserve_inventory", "forEach": "${{ input.items }}", "maxParallel": 2,
                 "input": {"sku": "${{ item }}", "n": "${{ index }}"}},
                {"name": "approval", "dependsOn": ["charge"], "waitForSignal": {"name": "manager-approval", "timeout": "72h"}},
                {"name": "cooling-off", "dependsOn": ["approval"], "sleep": "30m"},
                {"name": "ship", "dependsOn": ["reserve", "cooling-off"], "handler": "ship_order",
                 "when": "${{ steps.approval.output.approved == true }}",
                 "input": {"charge": "${{ steps.charge.output }}", "slept": "${{ steps['cooling-off'].phase }}"}},
                {"name": "invoice", "dependsOn": ["ship"], "flow": {"spec": {
                    "input": {"tracking": "${{ steps.ship.output.tracking }}"},
                    "pool": "billing",
                    "steps": [{"name": "bill", "handler": "bill", "input": "${{ input.tracking }}"}]}}},
            ],
            "output": {"tracking": "${{ steps.ship.output.tracking }}"},
        });
        assert_eq!(problems(s), vec![]);
    }

    #[test]
    fn reports_unknown_and_self_dependencies() {
        let p = paths(json!({"pool": "p", "steps": [
            {"name": "a", "handler": "h", "dependsOn": ["nope", "a"]},
        ]}));
        assert_eq!(
            p,
            ["spec.steps[0].dependsOn[0]", "spec.steps[0].dependsOn[1]"]
        );
    }

    #[test]
    fn reports_cycles() {
        let e = problems(json!({"pool": "p", "steps": [
            {"name": "a", "handler": "h", "dependsOn": ["c"]},
            {"name": "b", "handler": "h", "dependsOn": ["a"]},
            {"name": "c", "handler": "h", "dependsOn": ["b"]},
        ]}));
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].path, "spec.steps[0].dependsOn");
        assert_eq!(e[0].message, "dependency cycle: a → c → b → a");
    }

    #[test]
    fn exactly_one_kind_and_pool() {
        let p = paths(json!({"steps": [
            {"name": "none"},
            {"name": "two", "handler": "h", "sleep": "1s"},
            {"name": "nopool", "handler": "h"},
            {"name": "both-times", "sleep": "1s", "until": "2026-01-01T00:00:00Z"},
        ]}));
        assert_eq!(
            p,
            [
                "spec.steps[0]",
                "spec.steps[1]",
                "spec.steps[2].pool",
                "spec.steps[3]"
            ]
        );
    }

    #[test]
    fn bad_durations_and_times() {
        let p = paths(json!({"pool": "p",
            "defaults": {"timeout": "10 minutes", "retry": {"maxBackoff": "-1s"}},
            "steps": [
                {"name": "a", "sleep": "forever"},
                {"name": "b", "until": "next tuesday"},
                {"name": "c", "handler": "h", "timeout": "0s", "heartbeatTimeout": "5x"},
                {"name": "d", "waitForSignal": {"name": "s", "timeout": "3d"}},
        ]}));
        assert_eq!(
            p,
            [
                "spec.defaults.timeout",
                "spec.defaults.retry.maxBackoff",
                "spec.steps[0].sleep",
                "spec.steps[1].until",
                "spec.steps[2].timeout",
                "spec.steps[2].heartbeatTimeout",
                "spec.steps[3].waitForSignal.timeout",
            ]
        );
    }

    #[test]
    fn expression_references() {
        let e = problems(json!({"pool": "p", "steps": [
            {"name": "a", "handler": "h"},
            {"name": "cooling-off", "sleep": "1s"},
            {"name": "b", "handler": "h", "input": {
                "x": "${{ steps.a.output }}",
                "y": "${{ steps.cooling-off.output }}",
                "z": "${{ steps.ghost.output }}",
                "w": "${{ steps.b.output }}",
                "v": "${{ item }}",
                "u": "${{ nope.x }}",
                "t": "${{ 1 + }}",
                "s": "${{ input.x",
            }},
            {"name": "c", "handler": "h", "dependsOn": ["b"], "when": "${{ steps.a.phase == 'Succeeded' }}"},
        ]}));
        let got: Vec<(String, String)> = e
            .iter()
            .map(|e| (e.path.clone(), e.message.clone()))
            .collect();
        let has = |path: &str, needle: &str| {
            assert!(
                got.iter().any(|(p, m)| p == path && m.contains(needle)),
                "missing {path}: {needle} in {got:#?}"
            )
        };
        has("spec.steps[2].input.x", "not upstream");
        has("spec.steps[2].input.y", "unknown step \"cooling\"");
        assert!(
            e.iter()
                .any(|e| e.hint.as_deref()
                    == Some("names with '-' are written steps['cooling-off']"))
        );
        has("spec.steps[2].input.z", "unknown step \"ghost\"");
        has("spec.steps[2].input.w", "its own step");
        has(
            "spec.steps[2].input.v",
            "only in the input of a forEach step",
        );
        has("spec.steps[2].input.u", "unknown variable \"nope\"");
        has("spec.steps[2].input.t", "does not parse");
        has("spec.steps[2].input.s", "unterminated");
        // Upstream through b: allowed? No: `a` is not upstream of c (c depends on b only, b has no deps).
        has("spec.steps[3].when", "not upstream");
        // `steps.cooling-off` also reads a variable `off`.
        has("spec.steps[2].input.y", "unknown variable \"off\"");
        assert_eq!(got.len(), 10, "{got:#?}");
    }

    #[test]
    fn transitive_upstream_is_allowed() {
        let e = problems(json!({"pool": "p", "steps": [
            {"name": "a", "handler": "h"},
            {"name": "b", "handler": "h", "dependsOn": ["a"]},
            {"name": "c", "handler": "h", "dependsOn": ["b"], "input": "${{ steps.a.output }}"},
        ], "output": "${{ steps.c.output }}"}));
        assert_eq!(e, vec![]);
    }

    #[test]
    fn foreach_rules() {
        let p = paths(json!({"pool": "p", "steps": [
            {"name": "a", "handler": "h", "maxParallel": 2},
            {"name": "b", "handler": "h", "forEach": 5},
            {"name": "c", "handler": "h", "forEach": "input.items"},
            {"name": "d", "sleep": "1s", "forEach": [1, 2]},
            {"name": "e", "handler": "h", "forEach": ["${{ input.a }}", 2], "maxParallel": 1, "input": "${{ item }}"},
        ]}));
        assert_eq!(
            p,
            [
                "spec.steps[0].maxParallel",
                "spec.steps[1].forEach",
                "spec.steps[2].forEach",
                "spec.steps[3].forEach"
            ]
        );
    }

    #[test]
    fn retry_and_timeouts_on_handlers_only() {
        let p = paths(json!({"pool": "p", "steps": [
            {"name": "a", "sleep": "1s", "retry": {"maxAttempts": 2}, "timeout": "1s"},
            {"name": "b", "handler": "h", "retry": {"maxAttempts": 0, "backoffFactor": 0.5}},
        ]}));
        assert_eq!(
            p,
            [
                "spec.steps[0].retry",
                "spec.steps[0].timeout",
                "spec.steps[1].retry.maxAttempts",
                "spec.steps[1].retry.backoffFactor"
            ]
        );
    }

    #[test]
    fn names() {
        let p = paths(json!({"pool": "p", "steps": [
            {"name": "Bad_Name", "sleep": "1s"},
            {"name": "ok", "sleep": "1s"},
            {"name": "ok", "sleep": "1s"},
            {"name": "x".repeat(64), "sleep": "1s"},
        ]}));
        assert_eq!(
            p,
            [
                "spec.steps[0].name",
                "spec.steps[2].name",
                "spec.steps[3].name"
            ]
        );
        assert!(
            problems(json!({"steps": []}))[0]
                .message
                .contains("at least one step")
        );
    }

    #[test]
    fn child_flows_are_validated_with_their_own_paths() {
        let p = paths(json!({"steps": [
            {"name": "a", "flow": {"spec": {"steps": [{"name": "x", "handler": "h", "dependsOn": ["y"]}]}}},
            {"name": "b", "flow": {"spec": {"steps": 5}}},
        ]}));
        assert_eq!(
            p,
            [
                "spec.steps[0].flow.spec.steps[0].dependsOn[0]",
                "spec.steps[0].flow.spec.steps[0].pool",
                "spec.steps[1].flow.spec"
            ]
        );
        // The child inherits the parent's pool.
        assert_eq!(
            paths(json!({"pool": "p", "steps": [
                {"name": "c", "flow": {"spec": {"steps": [{"name": "x", "handler": "h"}]}}},
            ]})),
            Vec::<String>::new()
        );
    }

    #[test]
    fn message_lists_every_problem() {
        let err = validate(&spec(json!({"steps": [
            {"name": "a", "handler": "h", "dependsOn": ["zz"]},
        ]})))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("2 problem(s): "), "{text}");
        assert!(
            text.contains("spec.steps[0].pool: a handler step needs a WorkerPool (set spec.pool")
        );
        assert!(text.contains("spec.steps[0].dependsOn[0]: unknown step \"zz\" (known steps: a)"));
    }
}

#[cfg(test)]
mod template_child_tests {
    use serde_json::json;

    use super::*;

    fn paths(spec: serde_json::Value) -> Vec<String> {
        let spec: FlowRunSpec = serde_json::from_value(spec).unwrap();
        match validate(&spec) {
            Ok(()) => vec![],
            Err(e) => e.0.into_iter().map(|e| e.path).collect(),
        }
    }

    #[test]
    fn a_template_child_has_its_input_expressions_checked_and_one_kind_only() {
        assert_eq!(
            paths(json!({"steps": [
                {"name": "c", "flow": {"templateRef": {"name": "t", "input": {"x": "${{ input.a }}"}}}},
            ]})),
            Vec::<String>::new()
        );
        assert_eq!(
            paths(json!({"steps": [
                {"name": "c", "flow": {"templateRef": {"name": "t", "input": {"x": "${{ steps.nope.output }}"}}}},
            ]})),
            ["spec.steps[0].flow.templateRef.input.x"]
        );
        for flow in [
            json!({}),
            json!({"templateRef": {"name": "t"}, "spec": {"steps": [{"name": "x", "sleep": "1s"}]}}),
        ] {
            assert_eq!(
                paths(json!({"steps": [{"name": "c", "flow": flow}]})),
                ["spec.steps[0].flow"]
            );
        }
    }
}
