//! The generated CRDs: `crds/` and the Helm chart's copy (`charts/sluice/crds/`) are up to date, every field is documented for `kubectl explain`, the CRD
//! niceties (printer columns, short names, category, subresources) are there, and the schema carries the
//! bounds the API server's CEL cost estimator needs.

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use serde_json::Value;
use sluice_operator::crds;

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds")
}

/// The chart's copy: Helm installs the CRDs from here (and never deletes them).
fn chart_crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/sluice/crds")
}

fn version(crd: &CustomResourceDefinition) -> &CustomResourceDefinitionVersion {
    assert_eq!(crd.spec.versions.len(), 1, "one served version");
    &crd.spec.versions[0]
}

fn schema(crd: &CustomResourceDefinition) -> Value {
    serde_json::to_value(
        version(crd)
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("openAPIV3Schema"),
    )
    .unwrap()
}

fn crd(kind: &str) -> CustomResourceDefinition {
    crds::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD of kind {kind}"))
}

/// The schema node at a path such as `spec.steps[].name` (`[]` steps into array items, `{}` into map values).
fn node<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut cur = schema;
    for part in path.split('.') {
        let (name, suffix) = match part.find(['[', '{']) {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        cur = cur
            .get("properties")
            .and_then(|p| p.get(name))
            .unwrap_or_else(|| panic!("no property {name} in path {path}"));
        for step in suffix.as_bytes().chunks(2) {
            let key = if step == b"[]" {
                "items"
            } else {
                "additionalProperties"
            };
            cur = cur
                .get(key)
                .unwrap_or_else(|| panic!("no {key} at {name} in path {path}"));
        }
    }
    cur
}

#[test]
fn crds_dir_matches_the_types() {
    assert_dir_matches_the_types(&crds_dir(), "crds/");
}

#[test]
fn the_charts_crds_match_the_types() {
    assert_dir_matches_the_types(&chart_crds_dir(), "charts/sluice/crds/");
}

fn assert_dir_matches_the_types(dir: &std::path::Path, shown: &str) {
    let expected = crds::files().expect("CRDs serialize to YAML");
    for (file, yaml) in &expected {
        let on_disk = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            on_disk == *yaml,
            "{shown} is stale: run `make crds` ({file} differs from what the types in operator/api generate)"
        );
    }
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{shown} exists: {e}"))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    present.sort();
    let mut wanted: Vec<String> = expected.into_iter().map(|(f, _)| f).collect();
    wanted.sort();
    assert_eq!(
        present, wanted,
        "{shown} is stale: run `make crds` (and remove files no type generates)"
    );
}

#[test]
fn yaml_round_trips_to_the_same_crds() {
    // The YAML writer folds long strings; reading the files back must give exactly the generated CRDs.
    for crd in crds::all() {
        let yaml = crds::to_yaml(&crd).unwrap();
        let back: Value = serde_saphyr::from_str(&yaml).expect("generated YAML parses");
        assert_eq!(
            back,
            serde_json::to_value(&crd).unwrap(),
            "{}",
            crds::file_name(&crd)
        );
    }
    let stream = crds::all_yaml().unwrap();
    let docs: Vec<Value> =
        serde_saphyr::from_str_multiple(&stream).expect("multi-document YAML parses");
    assert_eq!(docs.len(), 4);
    assert_eq!(docs[0]["metadata"]["name"], "flowruns.sluice.dev");
    assert_eq!(docs[1]["metadata"]["name"], "workerpools.sluice.dev");
    assert_eq!(docs[2]["metadata"]["name"], "cronflows.sluice.dev");
    assert_eq!(docs[3]["metadata"]["name"], "flowtemplates.sluice.dev");
}

/// Collects the paths of schema properties without a description. Free-form nodes
/// (`x-kubernetes-preserve-unknown-fields`) need a description themselves but are not descended into. The
/// elements of a list or map need one when they are structured objects (`kubectl explain` shows the list's or
/// map's own description for elements that are scalars or free-form JSON).
fn undocumented(node: &Value, path: &str, missing: &mut Vec<String>) {
    let described = node
        .get("description")
        .and_then(Value::as_str)
        .is_some_and(|d| !d.trim().is_empty());
    let element = path.ends_with("[]") || path.ends_with("{}");
    let scalar = node
        .get("type")
        .is_some_and(|t| t != "object" && t != "array");
    let free_form = node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        && node.get("properties").is_none();
    let exempt = element && (scalar || free_form);
    if !described && !exempt {
        missing.push(path.to_string());
    }
    if node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            undocumented(child, &format!("{path}.{name}"), missing);
        }
    }
    if let Some(items) = node.get("items") {
        undocumented(items, &format!("{path}[]"), missing);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        undocumented(values, &format!("{path}{{}}"), missing);
    }
}

#[test]
fn every_field_has_a_description() {
    for crd in crds::all() {
        let mut missing = vec![];
        undocumented(&schema(&crd), &crd.spec.names.kind, &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a description (kubectl explain shows nothing): {missing:#?}"
        );
    }
}

#[test]
fn crd_names_columns_and_subresources() {
    let fr = crd("FlowRun");
    assert_eq!(fr.metadata.name.as_deref(), Some("flowruns.sluice.dev"));
    assert_eq!(fr.spec.group, "sluice.dev");
    assert_eq!(fr.spec.scope, "Namespaced");
    assert_eq!(fr.spec.names.short_names, Some(vec!["fr".to_string()]));
    assert_eq!(fr.spec.names.categories, Some(vec!["sluice".to_string()]));
    let v = version(&fr);
    assert_eq!(v.name, "v1alpha1");
    assert!(v.served && v.storage);
    let subresources = v.subresources.as_ref().expect("FlowRun subresources");
    assert!(
        subresources.status.is_some(),
        "FlowRun has the status subresource"
    );
    assert!(subresources.scale.is_none());
    // The TTL controller watches finished runs by `status.phase` (a field selector needs it selectable).
    let selectable: Vec<&str> = v
        .selectable_fields
        .iter()
        .flatten()
        .map(|f| f.json_path.as_str())
        .collect();
    assert_eq!(selectable, [".status.phase"]);
    let columns: Vec<(&str, &str, &str)> = v
        .additional_printer_columns
        .as_ref()
        .expect("FlowRun printer columns")
        .iter()
        .map(|c| (c.name.as_str(), c.type_.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Phase", "string", ".status.phase"),
            ("Progress", "string", ".status.progress"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ]
    );

    let wp = crd("WorkerPool");
    assert_eq!(wp.metadata.name.as_deref(), Some("workerpools.sluice.dev"));
    assert_eq!(wp.spec.scope, "Namespaced");
    assert_eq!(wp.spec.names.short_names, Some(vec!["wp".to_string()]));
    assert_eq!(wp.spec.names.categories, Some(vec!["sluice".to_string()]));
    let v = version(&wp);
    let subresources = v.subresources.as_ref().expect("WorkerPool subresources");
    assert!(
        subresources.status.is_some(),
        "WorkerPool has the status subresource"
    );
    let scale = subresources
        .scale
        .as_ref()
        .expect("WorkerPool scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(
        scale.label_selector_path.as_deref(),
        Some(".status.selector")
    );
    // `kubectl get wp`: the mode, desired/current/ready pods and the queue; `-o wide` adds the steps in flight
    // and why the pool last changed size.
    let columns: Vec<(&str, &str, &str, i32)> = v
        .additional_printer_columns
        .as_ref()
        .expect("WorkerPool printer columns")
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.type_.as_str(),
                c.json_path.as_str(),
                c.priority.unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("Mode", "string", ".status.scaling.mode", 0),
            ("Desired", "integer", ".status.scaling.desiredReplicas", 0),
            ("Current", "integer", ".status.replicas", 0),
            ("Ready", "integer", ".status.readyReplicas", 0),
            ("Queue", "integer", ".status.queueDepth", 0),
            ("Age", "date", ".metadata.creationTimestamp", 0),
            ("In-Flight", "integer", ".status.inFlight", 1),
            ("Last-Scale", "string", ".status.scaling.lastScaleReason", 1),
        ]
    );
    // Every column shows a field of the schema, of the column's type.
    let s = schema(&wp);
    for c in v.additional_printer_columns.as_ref().unwrap() {
        if c.json_path == ".metadata.creationTimestamp" {
            continue;
        }
        let field = node(&s, c.json_path.trim_start_matches('.'));
        assert_eq!(field["type"], c.type_.as_str(), "type of {}", c.json_path);
        assert!(
            c.description.as_ref().is_some_and(|d| !d.is_empty()),
            "column {} has a description",
            c.name
        );
    }
    assert_eq!(
        node(&s, "status.scaling.mode")["enum"],
        serde_json::json!(["QueueDepth", "External", "Manual"])
    );
    // The scale subresource paths exist in the schema with the types an HPA expects.
    assert_eq!(node(&s, "spec.replicas")["type"], "integer");
    assert_eq!(node(&s, "status.replicas")["type"], "integer");
    assert_eq!(node(&s, "status.selector")["type"], "string");
}

#[test]
fn limits_refuse_zero_and_negative_values() {
    let fr = schema(&crd("FlowRun"));
    for (path, min) in [
        ("spec.defaults.retry.maxAttempts", 1.0),
        ("spec.defaults.retry.backoffFactor", 1.0),
        ("spec.defaults.maxOutputBytes", 1.0),
        ("spec.steps[].retry.maxAttempts", 1.0),
        ("spec.steps[].retry.backoffFactor", 1.0),
        ("spec.steps[].retry.nonRetryableExitCodes[]", 1.0),
        ("spec.steps[].maxParallel", 1.0),
    ] {
        assert_eq!(
            node(&fr, path)["minimum"].as_f64(),
            Some(min),
            "minimum of {path}"
        );
    }
    // 0 is a valid time to live (delete at once); negatives are not.
    assert_eq!(
        node(&fr, "spec.ttlSecondsAfterFinished")["minimum"].as_f64(),
        Some(0.0)
    );
    assert_eq!(node(&fr, "spec.ttlSecondsAfterFinished")["type"], "integer");
    let wp = schema(&crd("WorkerPool"));
    for (path, min) in [
        ("spec.replicas", 0.0),
        ("spec.concurrency", 1.0),
        ("spec.scaling.minReplicas", 0.0),
        ("spec.scaling.maxReplicas", 1.0),
        ("spec.scaling.targetStepsPerWorker", 1.0),
    ] {
        assert_eq!(
            node(&wp, path)["minimum"].as_f64(),
            Some(min),
            "minimum of {path}"
        );
    }
    // Timeouts must be positive durations: the pattern refuses negatives, a CEL rule refuses zero.
    for path in [
        "spec.defaults.timeout",
        "spec.defaults.heartbeatTimeout",
        "spec.steps[].timeout",
        "spec.steps[].heartbeatTimeout",
        "spec.steps[].waitForSignal.timeout",
    ] {
        let n = node(&fr, path);
        assert!(n["pattern"].is_string(), "{path} has a duration pattern");
        assert_eq!(
            n["x-kubernetes-validations"][0]["rule"], "self.matches('[1-9]')",
            "{path}"
        );
    }
    assert_eq!(
        node(&wp, "spec.heartbeatTimeout")["x-kubernetes-validations"][0]["rule"],
        "self.matches('[1-9]')"
    );
}

#[test]
fn lists_and_strings_that_rules_walk_are_bounded() {
    // Without maxItems/maxLength the API server's cost estimator assumes lists and strings as large as a
    // request, and refuses the CRD's rules as too expensive.
    let fr = schema(&crd("FlowRun"));
    for (path, key, max) in [
        // No minItems: a run of a FlowTemplate starts without steps (a rule asks for steps or templateRef).
        ("spec.steps", "maxItems", 200),
        ("spec.steps[].name", "maxLength", 63),
        ("spec.steps[].dependsOn", "maxItems", 20),
        ("spec.steps[].dependsOn[]", "maxLength", 63),
        ("spec.steps[].handler", "maxLength", 253),
        ("spec.steps[].pool", "maxLength", 253),
        ("spec.pool", "maxLength", 253),
        ("spec.steps[].when", "maxLength", 4096),
        ("spec.steps[].until", "maxLength", 4096),
        ("spec.steps[].waitForSignal.name", "maxLength", 253),
        ("spec.steps[].retry.nonRetryableErrors", "maxItems", 50),
        ("spec.steps[].retry.nonRetryableExitCodes", "maxItems", 50),
        // Bounds a flood of signals at admission, and the cost of the rule on signal names.
        ("status.signals", "maxProperties", 256),
    ] {
        assert_eq!(node(&fr, path)[key].as_u64(), Some(max), "{key} of {path}");
    }
    assert!(node(&fr, "spec.steps").get("minItems").is_none());
    let ft = schema(&crd("FlowTemplate"));
    for (path, key, max) in [
        ("spec.steps", "maxItems", 200),
        ("spec.steps", "minItems", 1),
        ("spec.onExit", "maxItems", 50),
        ("spec.steps[].name", "maxLength", 63),
        ("spec.steps[].dependsOn", "maxItems", 20),
        ("spec.inputs", "maxProperties", 64),
    ] {
        assert_eq!(node(&ft, path)[key].as_u64(), Some(max), "{key} of {path}");
    }
}

/// Every rule and message expression of both CRDs, with the path of its schema node.
fn rules(node: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    if let Some(list) = node
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        out.extend(list.iter().map(|r| (path.to_string(), r.clone())));
    }
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            rules(child, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = node.get("items") {
        rules(items, &format!("{path}[]"), out);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        rules(values, &format!("{path}{{}}"), out);
    }
}

#[test]
fn every_rule_compiles_and_explains_itself() {
    use kube::core::cel::compile_schema;
    for crd in crds::all() {
        let s = schema(&crd);
        let mut found = vec![];
        rules(&s, &crd.spec.names.kind, &mut found);
        assert!(!found.is_empty(), "{} has CEL rules", crd.spec.names.kind);
        for (path, rule) in &found {
            let text = rule["rule"].as_str().expect("rule text");
            let message = rule
                .get("message")
                .or_else(|| rule.get("messageExpression"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            assert!(!message.is_empty(), "rule at {path} has a message: {text}");
            assert!(
                !message.contains('\n'),
                "messages must be one line: {message}"
            );
        }
        let compiled = compile_schema(&s);
        fn errors(c: &kube::core::cel::CompiledSchema, out: &mut Vec<String>) {
            out.extend(c.compilation_errors().iter().map(|e| e.to_string()));
            c.properties.values().for_each(|p| errors(p, out));
            if let Some(i) = &c.items {
                errors(i, out);
            }
            if let Some(a) = &c.additional_properties {
                errors(a, out);
            }
        }
        let mut errs = vec![];
        errors(&compiled, &mut errs);
        assert!(errs.is_empty(), "rules that do not compile: {errs:#?}");
    }
}

#[test]
fn flowtemplate_names_columns_and_documentation() {
    let ft = crd("FlowTemplate");
    assert_eq!(
        ft.metadata.name.as_deref(),
        Some("flowtemplates.sluice.dev")
    );
    assert_eq!(ft.spec.scope, "Namespaced");
    assert_eq!(ft.spec.names.short_names, Some(vec!["ft".to_string()]));
    assert_eq!(ft.spec.names.categories, Some(vec!["sluice".to_string()]));
    let v = version(&ft);
    // A definition, not something the operator reports on: no status.
    assert!(v.subresources.as_ref().is_none_or(|s| s.status.is_none()));
    let columns: Vec<(&str, &str)> = v
        .additional_printer_columns
        .as_ref()
        .expect("FlowTemplate printer columns")
        .iter()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Pool", ".spec.pool"),
            ("Description", ".spec.description"),
            ("Age", ".metadata.creationTimestamp"),
        ]
    );
    // `kubectl explain flowtemplate.spec.inputs.<name>`: every field says what it is.
    let s = schema(&ft);
    let input = &s["properties"]["spec"]["properties"]["inputs"]["additionalProperties"];
    for field in ["type", "description", "default", "required"] {
        assert!(
            input["properties"][field]["description"].is_string(),
            "spec.inputs.<name>.{field} is documented"
        );
    }
    assert_eq!(
        input["properties"]["type"]["enum"],
        serde_json::json!(["string", "number", "integer", "boolean", "object", "array"])
    );
    let fr = schema(&crd("FlowRun"));
    let template_ref = node(&fr, "spec.templateRef");
    assert!(template_ref["description"].is_string());
    assert!(node(&fr, "status.template.resourceVersion")["description"].is_string());
}
