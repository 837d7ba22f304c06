//! The CEL rules of the CRDs (`x-kubernetes-validations`), evaluated locally with kube's `cel` feature on
//! valid and invalid FlowRuns and WorkerPools: every invalid object is refused with exactly the rule's
//! message, and every valid one passes.

use serde_json::{Value, json};
use sluice_operator::api::{FlowRun, FlowTemplate, WorkerPool};

/// The failures of the CEL rules for a FlowRun with this spec, as `path: message`.
fn flowrun_errors(spec: Value) -> Vec<String> {
    let obj = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "FlowRun",
        "metadata": {"name": "test"},
        "spec": spec,
    });
    let fr: FlowRun = serde_json::from_value(obj).expect("the spec parses into FlowRun");
    match fr.validate_cel() {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn workerpool_errors(spec: Value) -> Vec<String> {
    let obj = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "WorkerPool",
        "metadata": {"name": "test"},
        "spec": spec,
    });
    let wp: WorkerPool = serde_json::from_value(obj).expect("the spec parses into WorkerPool");
    match wp.validate_cel() {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

#[track_caller]
fn refused(errors: Vec<String>, expected: &str) {
    assert_eq!(
        errors,
        [expected.to_string()],
        "expected exactly one failure"
    );
}

#[track_caller]
fn accepted(errors: Vec<String>) {
    assert!(errors.is_empty(), "expected no failure, got {errors:#?}");
}

/// A valid spec with the given steps.
fn spec(steps: Value) -> Value {
    json!({"pool": "orders", "steps": steps})
}

#[test]
fn a_flow_using_every_kind_of_step_is_accepted() {
    accepted(flowrun_errors(json!({
        "pool": "orders",
        "input": {"orderId": "1234", "items": ["a", "b"]},
        "defaults": {
            "retry": {"maxAttempts": 3, "initialBackoff": "1s", "backoffFactor": 2, "maxBackoff": "5m"},
            "timeout": "10m",
            "heartbeatTimeout": "30s",
        },
        "steps": [
            {"name": "charge", "handler": "charge_payment", "retry": {"nonRetryableErrors": ["card_declined"]}},
            {"name": "reserve", "handler": "reserve_inventory", "forEach": "${{ input.items }}", "maxParallel": 2},
            {"name": "approval", "dependsOn": ["charge"], "waitForSignal": {"name": "manager-approval", "timeout": "72h"}},
            {"name": "cooling-off", "dependsOn": ["approval"], "sleep": "30m"},
            {"name": "deadline", "until": "2026-12-01T09:00:00Z"},
            {"name": "later", "until": "${{ input.shipAt }}"},
            {"name": "ship", "dependsOn": ["reserve", "cooling-off"], "handler": "ship_order", "pool": "shipping",
             "when": "${{ steps.approval.output.approved == true }}", "timeout": "0.5s"},
            {"name": "invoice", "dependsOn": ["ship"], "flow": {"spec": {"steps": [{"name": "x", "sleep": "1s"}]}}},
        ],
        "output": {"tracking": "${{ steps.ship.output.tracking }}"},
    })));
}

// Duplicate step names, dependsOn entries that name no step, steps that do nothing or more than one thing,
// sleep next to until, a step in its own dependsOn and handler steps without a pool are refused by the chart's
// step-graph policy, whose messages name them (tests/e2e/bad-input, on the real API server), not by the CRD's
// rules: those run on every status write too.

/// Every rule of the FlowRun CRD that the API server evaluates per step, found by walking the schema.
fn rules_under(schema: &Value, path: &str, found: &mut Vec<String>) {
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        for rule in rules {
            found.push(format!("{path}: {}", rule["rule"]));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            rules_under(sub, &format!("{path}.{name}"), found);
        }
    }
    for key in ["items", "additionalProperties"] {
        if schema[key].is_object() {
            rules_under(&schema[key], &format!("{path}[]"), found);
        }
    }
}

#[test]
fn no_flowrun_rule_reads_the_fields_of_each_step() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(FlowRun::crd()).unwrap();
    let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut rules = Vec::new();
    rules_under(root, "", &mut rules);
    // Rules on a step's own string fields (its name, handler, durations) read one value; a rule on the step
    // object reads its fields through a schema lookup each, on every status write of the run.
    let per_step: Vec<&String> = rules
        .iter()
        .filter(|r| {
            let (path, rule) = r.split_once(": ").unwrap();
            (path == ".spec.steps[]" || path == ".spec.onExit[]" || rule.contains("steps.all("))
                || (path == ".spec"
                    && rule.contains("self.steps.")
                    && !rule.contains("size(self.steps)"))
        })
        .collect();
    assert!(
        per_step.is_empty(),
        "rules evaluated per step on every write: {per_step:#?}"
    );
    assert!(
        rules.iter().any(|r| r.starts_with(".spec.steps[].name: ")),
        "the walk finds the step name rule: {rules:#?}"
    );
}

#[test]
fn step_names_must_be_dns_labels() {
    let msg = "spec.steps[0].name: step name must be a DNS label: lower-case letters, digits and '-', \
               starting and ending with a letter or digit (e.g. cooling-off)";
    for bad in [
        "Charge",
        "cooling_off",
        "-charge",
        "charge-",
        "",
        "a b",
        "ship.order",
    ] {
        let errors = flowrun_errors(spec(json!([{"name": bad, "sleep": "1s"}])));
        assert!(
            errors.iter().any(|e| e == msg),
            "name {bad:?} should be refused, got {errors:#?}"
        );
    }
    for good in ["a", "charge", "cooling-off", "step-2", "0", &"a".repeat(63)] {
        accepted(flowrun_errors(spec(json!([{"name": good, "sleep": "1s"}]))));
    }
}

#[test]
fn handler_and_signal_names_must_not_be_empty() {
    let handler = "spec.steps[0].handler: handler must name a handler registered by the pool's workers \
                   (e.g. charge_payment): it must not be empty or contain spaces";
    refused(
        flowrun_errors(spec(json!([{"name": "a", "handler": ""}]))),
        handler,
    );
    refused(
        flowrun_errors(spec(json!([{"name": "a", "handler": "charge payment"}]))),
        handler,
    );
    refused(
        flowrun_errors(spec(json!([{"name": "a", "waitForSignal": {"name": ""}}]))),
        "spec.steps[0].waitForSignal.name: waitForSignal.name must name the signal (e.g. manager-approval): \
         it must not be empty or contain spaces",
    );
}

#[test]
fn until_must_be_a_time_or_an_expression() {
    refused(
        flowrun_errors(spec(json!([{"name": "a", "until": "tomorrow"}]))),
        "spec.steps[0].until: until must be an RFC 3339 time such as 2026-12-01T09:00:00Z, or an expression \
         ${{ ... }} that yields one",
    );
    for good in [
        "2026-12-01T09:00:00Z",
        "2026-12-01T09:00:00.5+02:00",
        "${{ input.at }}",
    ] {
        accepted(flowrun_errors(spec(json!([{"name": "a", "until": good}]))));
    }
}

#[test]
fn zero_timeouts_are_refused() {
    let zero = |path: &str| {
        format!("{path}: must be a positive duration such as 30s, 10m or 1h30m, not zero")
    };
    refused(
        flowrun_errors(spec(
            json!([{"name": "a", "handler": "h", "timeout": "0s"}]),
        )),
        &zero("spec.steps[0].timeout"),
    );
    refused(
        flowrun_errors(spec(
            json!([{"name": "a", "handler": "h", "heartbeatTimeout": "0m0s"}]),
        )),
        &zero("spec.steps[0].heartbeatTimeout"),
    );
    refused(
        flowrun_errors(spec(
            json!([{"name": "a", "waitForSignal": {"name": "go", "timeout": "0.0h"}}]),
        )),
        &zero("spec.steps[0].waitForSignal.timeout"),
    );
    let mut s = spec(json!([{"name": "a", "handler": "h"}]));
    s["defaults"] = json!({"timeout": "0ms", "heartbeatTimeout": "10s"});
    refused(flowrun_errors(s), &zero("spec.defaults.timeout"));
    // Zero-length sleeps and backoffs are fine: they are not limits.
    let mut s = spec(json!([{"name": "a", "sleep": "0s"}, {"name": "b", "handler": "h"}]));
    s["defaults"] = json!({"retry": {"initialBackoff": "0s"}});
    accepted(flowrun_errors(s));
}

/// The largest FlowRun the schema allows for the list rules: 200 steps with 63-character names, each
/// depending on (up to) the 20 steps before it.
fn maximal_spec() -> Value {
    let name = |i: usize| format!("step-{i:03}-{}", "x".repeat(54));
    let steps: Vec<Value> = (0..200usize)
        .map(|i| {
            let deps: Vec<String> = (i.saturating_sub(20)..i).map(name).collect();
            json!({"name": name(i), "handler": "h", "dependsOn": deps})
        })
        .collect();
    spec(Value::Array(steps))
}

#[test]
fn the_largest_flow_the_schema_allows_is_accepted() {
    accepted(flowrun_errors(maximal_spec()));
}

fn pod_template() -> Value {
    json!({"spec": {"containers": [{"name": "worker", "image": "sluice/worker-example:dev"}]}})
}

#[test]
fn workerpools_in_every_mode_are_accepted() {
    accepted(workerpool_errors(json!({"template": pod_template()})));
    accepted(workerpool_errors(json!({
        "template": pod_template(),
        "concurrency": 4,
        "heartbeatTimeout": "30s",
        "scaling": {"mode": "QueueDepth", "minReplicas": 0, "maxReplicas": 5, "targetStepsPerWorker": 8,
                    "scaleDownDelay": "60s"},
    })));
    accepted(workerpool_errors(json!({
        "template": pod_template(), "scaling": {"mode": "QueueDepth", "minReplicas": 10},
    })));
    accepted(workerpool_errors(
        json!({"template": pod_template(), "scaling": {"mode": "External"}}),
    ));
    accepted(workerpool_errors(json!({
        "template": pod_template(), "replicas": 3, "scaling": {"mode": "Manual"},
    })));
}

#[test]
fn min_replicas_above_max_replicas_is_refused() {
    let msg = "spec.scaling.minReplicas: scaling.minReplicas must not exceed scaling.maxReplicas (default 10): \
               lower minReplicas or raise maxReplicas";
    refused(
        workerpool_errors(
            json!({"template": pod_template(), "scaling": {"minReplicas": 5, "maxReplicas": 2}}),
        ),
        msg,
    );
    refused(
        workerpool_errors(json!({"template": pod_template(), "scaling": {"minReplicas": 11}})),
        msg,
    );
}

#[test]
fn queue_depth_settings_outside_queue_depth_mode_are_refused() {
    let msg = "spec.scaling: scaling.minReplicas, maxReplicas, targetStepsPerWorker and scaleDownDelay apply \
               only to mode QueueDepth: remove them, or set mode QueueDepth";
    refused(
        workerpool_errors(
            json!({"template": pod_template(), "scaling": {"mode": "External", "maxReplicas": 4}}),
        ),
        msg,
    );
    refused(
        workerpool_errors(json!({
            "template": pod_template(), "replicas": 2, "scaling": {"mode": "Manual", "scaleDownDelay": "1m"},
        })),
        msg,
    );
}

#[test]
fn manual_mode_needs_replicas() {
    refused(
        workerpool_errors(json!({"template": pod_template(), "scaling": {"mode": "Manual"}})),
        "spec.replicas: spec.replicas is required with scaling.mode Manual: set the number of worker pods",
    );
}

#[test]
fn zero_heartbeat_timeout_of_a_pool_is_refused() {
    refused(
        workerpool_errors(json!({"template": pod_template(), "heartbeatTimeout": "0s"})),
        "spec.heartbeatTimeout: must be a positive duration such as 30s, 10m or 1h30m, not zero",
    );
}

/// Child flows (`flow.spec`) are free-form JSON the CRD rules never see, so the engine's validation must
/// refuse everything the rules refuse.
#[test]
fn engine_validation_refuses_what_the_rules_refuse() {
    use sluice_operator::api::FlowRunSpec;
    // The checks of the steps as a whole and of what each step does are the step-graph policy's and the
    // engine's: see `the_engine_refuses_what_the_step_graph_policy_refuses`.
    let cases = [
        spec(json!([{"name": "Cooling_Off", "sleep": "1s"}])),
        spec(json!([{"name": "a", "handler": ""}])),
        spec(json!([{"name": "a", "waitForSignal": {"name": ""}}])),
        spec(json!([{"name": "a", "until": "tomorrow"}])),
        spec(json!([{"name": "a", "handler": "h", "timeout": "0s"}])),
    ];
    let mut missed = vec![];
    for case in cases {
        assert!(
            !flowrun_errors(case.clone()).is_empty(),
            "the rules refuse {case}"
        );
        let spec: FlowRunSpec = serde_json::from_value(case.clone()).unwrap();
        if sluice_operator::engine::validate(&spec).is_ok() {
            missed.push(case);
        }
    }
    assert!(
        missed.is_empty(),
        "engine validation accepts specs the CRD rules refuse: {missed:#?}"
    );
}

/// A run of a FlowTemplate: `templateRef` instead of steps, and then nothing of the flow itself.
#[test]
fn a_run_names_its_steps_or_a_template_but_not_both() {
    accepted(flowrun_errors(json!({
        "templateRef": {"name": "expense-approval", "input": {"amount": 1}},
        "pool": "orders",
        "ttlSecondsAfterFinished": 60,
    })));
    refused(
        flowrun_errors(json!({"pool": "orders"})),
        "spec.steps: a flow needs steps: list them in spec.steps, or set spec.templateRef to run a FlowTemplate",
    );
    refused(
        flowrun_errors(json!({"pool": "orders", "steps": []})),
        "spec.steps: a flow needs steps: list them in spec.steps, or set spec.templateRef to run a FlowTemplate",
    );
    for extra in [
        json!({"steps": [{"name": "a", "handler": "h"}]}),
        json!({"onExit": [{"name": "a", "handler": "h"}]}),
    ] {
        let mut spec = json!({"pool": "orders", "templateRef": {"name": "t"}});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        refused(
            flowrun_errors(spec),
            "spec.templateRef runs a FlowTemplate, which brings the steps and exit steps: remove spec.steps and spec.onExit, or remove spec.templateRef",
        );
    }
}

#[test]
fn a_flow_step_runs_an_inline_spec_or_a_template() {
    accepted(flowrun_errors(spec(json!([
        {"name": "child", "flow": {"templateRef": {"name": "expense-approval", "input": {"id": "${{ input.id }}"}}}},
    ]))));
    // Exactly one of spec and templateRef: `spec` is free-form, which CEL cannot see, so the engine checks it
    // (engine::validate).
}

fn flowtemplate_errors(spec: Value) -> Vec<String> {
    let obj = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "FlowTemplate",
        "metadata": {"name": "test"},
        "spec": spec,
    });
    let ft: FlowTemplate = serde_json::from_value(obj).expect("the spec parses into FlowTemplate");
    match ft.validate_cel() {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn template_inputs_are_identifiers() {
    let steps = json!([{"name": "a", "handler": "h", "input": "${{ input.orderId }}"}]);
    accepted(flowtemplate_errors(json!({
        "pool": "orders",
        "inputs": {
            "orderId": {"type": "string", "required": true},
            "copies": {"type": "integer", "default": 1},
            "note": {"type": "string"},
        },
        "steps": steps,
    })));
    refused(
        flowtemplate_errors(json!({
            "inputs": {"order-id": {"type": "string"}},
            "steps": steps,
        })),
        "spec.inputs: input names must be identifiers of at most 63 characters (letters, digits and _, not starting with a digit, e.g. orderId), so that expressions can read them as input.<name>",
    );
}

/// Without the chart's step-graph policy, the engine refuses the graphs it refuses, naming the culprit.
#[test]
fn the_engine_refuses_what_the_step_graph_policy_refuses() {
    use sluice_operator::api::FlowRunSpec;
    for (case, culprit) in [
        (
            spec(json!([{"name": "a", "sleep": "1s"}, {"name": "a", "sleep": "1s"}])),
            "duplicate step name \"a\"",
        ),
        (
            spec(json!([{"name": "a", "sleep": "1s", "dependsOn": ["b"]}])),
            "spec.steps[0].dependsOn[0]: unknown step \"b\"",
        ),
        (
            spec(json!([{"name": "a", "sleep": "1s", "dependsOn": ["a"]}])),
            "step \"a\" depends on itself",
        ),
        (
            spec(json!([{"name": "a"}])),
            "spec.steps[0]: a step does exactly one of handler, waitForSignal, sleep or until, flow; found: none",
        ),
        (
            spec(json!([{"name": "a", "handler": "h", "sleep": "1s"}])),
            "spec.steps[0]: a step does exactly one of handler, waitForSignal, sleep or until, flow; found: handler, sleep",
        ),
        (
            spec(json!([{"name": "a", "sleep": "1s", "until": "2026-12-01T09:00:00Z"}])),
            "spec.steps[0]: a step does exactly one of handler, waitForSignal, sleep or until, flow; found: sleep, until",
        ),
        (
            json!({"steps": [{"name": "a", "handler": "h"}]}),
            "spec.steps[0].pool: a handler step needs a WorkerPool",
        ),
    ] {
        assert!(
            flowrun_errors(case.clone()).is_empty(),
            "the CRD accepts {case}"
        );
        let spec: FlowRunSpec = serde_json::from_value(case.clone()).unwrap();
        let errors = sluice_operator::engine::validate(&spec)
            .expect_err("the engine refuses it")
            .to_string();
        assert!(errors.contains(culprit), "{errors}");
    }
}
