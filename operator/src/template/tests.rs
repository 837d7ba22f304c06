//! The input check and the resolution of a run from its template, on fixtures.

use serde_json::{Value, json};

use super::*;
use crate::api::{FlowRunSpec, FlowTemplate, TemplateRef};

/// The template of the tests: an expense approval with a required string, a required number, an integer with a
/// default and an optional object.
fn template() -> FlowTemplate {
    serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "FlowTemplate",
        "metadata": {"name": "expense", "uid": "u-1", "resourceVersion": "42", "generation": 3},
        "spec": {
            "pool": "examples",
            "activeDeadline": "1h",
            "defaults": {"timeout": "30s"},
            "inputs": {
                "reportId": {"type": "string", "required": true},
                "amount": {"type": "number", "required": true, "description": "in euros"},
                "copies": {"type": "integer", "default": 1},
                "meta": {"type": "object"},
            },
            "steps": [
                {"name": "submit", "handler": "record_expense", "input": "${{ input }}"},
                {"name": "approval", "dependsOn": ["submit"], "waitForSignal": {"name": "ok"}},
            ],
            "onExit": [{"name": "notify", "handler": "notify_employee"}],
            "output": "${{ steps.submit.output }}",
        }
    }))
    .unwrap()
}

fn run(input: Value) -> FlowRunSpec {
    FlowRunSpec {
        template_ref: Some(TemplateRef {
            name: "expense".into(),
            input: Some(input),
        }),
        ..FlowRunSpec::default()
    }
}

fn input_errors(input: Value) -> Vec<String> {
    match resolve(&run(input), &template()) {
        Err(TemplateError::InvalidInput(problems)) => problems,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn given_inputs_are_kept_and_defaults_filled_in() {
    let r = resolve(
        &run(json!({"reportId": "42", "amount": 315.2})),
        &template(),
    )
    .unwrap();
    assert_eq!(
        r.spec.input,
        Some(json!({"reportId": "42", "amount": 315.2, "copies": 1}))
    );
    let r = resolve(
        &run(json!({"reportId": "42", "amount": 3, "copies": 2.0, "meta": {"a": [1]}})),
        &template(),
    )
    .unwrap();
    assert_eq!(
        r.spec.input,
        Some(json!({"reportId": "42", "amount": 3, "copies": 2.0, "meta": {"a": [1]}}))
    );
}

#[test]
fn a_value_of_the_wrong_type_is_refused_naming_the_field() {
    assert_eq!(
        input_errors(json!({"reportId": "42", "amount": "12"})),
        ["templateRef.input.amount: expected number, got string \"12\""]
    );
    assert_eq!(
        input_errors(json!({"reportId": 42, "amount": 1, "copies": 1.5})),
        [
            "templateRef.input.copies: expected integer, got number 1.5",
            "templateRef.input.reportId: expected string, got number 42",
        ]
    );
    assert_eq!(
        input_errors(json!({"reportId": "1", "amount": 1, "meta": null})),
        ["templateRef.input.meta: expected object, got null"]
    );
}

#[test]
fn missing_required_and_unknown_inputs_are_refused() {
    assert_eq!(
        input_errors(json!({"amount": 1, "colour": "red", "order-id": 7})),
        [
            "templateRef.input.reportId: required by FlowTemplate expense, but not given",
            "templateRef.input.colour: FlowTemplate expense declares no such input (it declares amount, copies, meta, reportId)",
            "templateRef.input[\"order-id\"]: FlowTemplate expense declares no such input (it declares amount, copies, meta, reportId)",
        ]
    );
    // No input at all: every required one is missing.
    let spec = FlowRunSpec {
        template_ref: Some(TemplateRef {
            name: "expense".into(),
            input: None,
        }),
        ..FlowRunSpec::default()
    };
    let e = resolve(&spec, &template()).unwrap_err();
    assert_eq!(e.reason(), INVALID_INPUT);
    assert!(
        e.to_string().contains("templateRef.input.amount: required"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("templateRef.input.reportId: required"),
        "{e}"
    );
}

#[test]
fn input_that_is_not_an_object_is_refused() {
    assert_eq!(
        input_errors(json!(["42", 1])),
        ["templateRef.input: expected an object of inputs keyed by name, got array [\"42\",1]"]
    );
}

#[test]
fn a_default_of_the_wrong_type_is_the_templates_fault() {
    let mut t = template();
    t.spec.inputs.get_mut("copies").unwrap().default = Some(json!("one"));
    let e = resolve(&run(json!({"reportId": "1", "amount": 1})), &t).unwrap_err();
    assert_eq!(e.reason(), INVALID_TEMPLATE);
    assert_eq!(
        e.to_string(),
        "FlowTemplate expense: spec.inputs.copies.default: expected integer, got string \"one\""
    );
    // Given, the input does not need the default.
    assert!(resolve(&run(json!({"reportId": "1", "amount": 1, "copies": 2})), &t).is_ok());
}

#[test]
fn long_values_are_cut_in_messages() {
    let e = input_errors(json!({"reportId": "1", "amount": "x".repeat(500)}));
    assert!(e[0].len() < 140, "{}", e[0]);
    assert!(e[0].ends_with('…'), "{}", e[0]);
}

#[test]
fn the_run_takes_the_flow_and_keeps_its_own_settings() {
    let mut spec = run(json!({"reportId": "42", "amount": 1}));
    spec.pool = Some("mine".into());
    spec.ttl_seconds_after_finished = Some(60);
    spec.suspend = true;
    let t = template();
    let r = resolve(&spec, &t).unwrap();
    assert_eq!(r.spec.steps, t.spec.steps);
    assert_eq!(r.spec.on_exit, t.spec.on_exit);
    assert_eq!(r.spec.output, t.spec.output);
    assert_eq!(r.spec.pool.as_deref(), Some("mine"), "the run's pool wins");
    assert_eq!(
        r.spec.defaults, t.spec.defaults,
        "the template's defaults fill in"
    );
    assert_eq!(r.spec.active_deadline.as_deref(), Some("1h"));
    assert_eq!(r.spec.ttl_seconds_after_finished, Some(60));
    assert!(r.spec.suspend);
    assert_eq!(
        r.spec.template_ref, spec.template_ref,
        "the reference stays"
    );
    assert_eq!(
        r.source,
        TemplateSource {
            name: "expense".into(),
            uid: "u-1".into(),
            resource_version: "42".into(),
            generation: Some(3),
        }
    );
    assert!(awaits_template(&spec));
    assert!(!awaits_template(&r.spec));
    crate::engine::validate(&r.spec).expect("the resolved spec is a valid flow");
}

#[test]
fn the_patch_writes_only_what_the_template_brings() {
    let mut spec = run(json!({"reportId": "42", "amount": 1}));
    spec.ttl_seconds_after_finished = Some(60);
    let r = resolve(&spec, &template()).unwrap();
    let patch = spec_patch(&r.spec);
    let keys: Vec<&str> = patch["spec"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "activeDeadline",
            "defaults",
            "input",
            "onExit",
            "output",
            "pool",
            "steps"
        ]
    );
    assert_eq!(patch["spec"]["steps"][1]["waitForSignal"]["name"], "ok");
    assert_eq!(patch["spec"]["input"]["copies"], 1);
}

#[test]
fn a_template_without_inputs_takes_none() {
    let mut t = template();
    t.spec.inputs.clear();
    let r = resolve(&run(json!({})), &t).unwrap();
    assert_eq!(r.spec.input, Some(json!({})));
    let e = resolve(&run(json!({"x": 1})), &t).unwrap_err();
    assert_eq!(
        e.to_string(),
        "templateRef.input.x: FlowTemplate expense declares no such input (it takes none)"
    );
}

#[test]
fn a_run_of_a_template_sets_no_input_or_output_of_its_own() {
    let mut spec = run(json!({"reportId": "1", "amount": 1}));
    spec.input = Some(json!({"reportId": "1"}));
    spec.output = Some(json!("mine"));
    let e = resolve(&spec, &template()).unwrap_err();
    assert_eq!(e.reason(), INVALID_INPUT);
    assert_eq!(
        e.to_string(),
        "spec.input: a run of a FlowTemplate takes its input from spec.templateRef.input: move it there; \
         spec.output: a run of a FlowTemplate takes its output from FlowTemplate expense: remove it"
    );
}

#[test]
fn a_required_input_with_a_default_is_the_templates_fault() {
    let mut t = template();
    t.spec.inputs.get_mut("amount").unwrap().default = Some(json!(1));
    let e = resolve(&run(json!({"reportId": "1", "amount": 1})), &t).unwrap_err();
    assert_eq!(e.reason(), INVALID_TEMPLATE);
    assert_eq!(
        e.to_string(),
        "FlowTemplate expense: spec.inputs.amount: an input is either required or has a default: remove default, or set required to false"
    );
}
