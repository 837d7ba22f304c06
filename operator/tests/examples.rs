//! Every manifest in `examples/` parses into its typed resource without unknown or misspelt fields, passes the
//! CRDs' CEL rules, and (FlowRuns, the flows runs take from FlowTemplates, and the run templates of CronFlows)
//! passes the engine's validation; the FlowRuns name a WorkerPool the examples define; a CronFlow's schedule
//! parses in its time zone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;
use sluice_operator::api::{CronFlow, FlowRun, FlowTemplate, WorkerPool};
use sluice_operator::cronflow::schedule::Schedule;
use sluice_operator::{engine, template};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Every YAML document of every file in `examples/`, with its file name.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut docs = vec![];
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed: Vec<Value> = serde_saphyr::from_str_multiple(&text)
            .unwrap_or_else(|e| panic!("{name} is not valid YAML: {e}"));
        assert!(!parsed.is_empty(), "{name} holds no manifest");
        docs.extend(parsed.into_iter().map(|d| (name.clone(), d)));
    }
    docs
}

/// JSON numbers compared by value (`2` and `2.0` are the same backoff factor).
fn normalize(v: &Value) -> Value {
    match v {
        Value::Number(n) => serde_json::json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        other => other.clone(),
    }
}

/// The typed resource must keep every field of the manifest: serde ignores unknown fields, so a typo such as
/// `dependOn` would otherwise pass silently.
fn assert_round_trips(file: &str, raw: &Value, typed: Value) {
    assert_eq!(
        normalize(&raw["spec"]),
        normalize(&typed["spec"]),
        "{file}: the spec has fields the type does not know (a typo?) or that it drops"
    );
}

#[test]
fn the_promised_examples_exist() {
    for file in [
        "order-flow.yaml",
        "approval-flow.yaml",
        "fanout-flow.yaml",
        "job-pool.yaml",
        "workerpool.yaml",
        "cronflow.yaml",
        "flowtemplate.yaml",
    ] {
        assert!(
            examples_dir().join(file).is_file(),
            "examples/{file} is missing"
        );
    }
}

#[test]
fn every_example_is_valid() {
    let docs = documents();
    let mut pools = BTreeSet::new();
    let mut used_pools = vec![];
    let mut flowruns = 0;
    let mut templates = BTreeMap::new();
    for (file, raw) in docs.iter().filter(|(_, raw)| raw["kind"] == "FlowTemplate") {
        let ft: FlowTemplate = serde_json::from_value(raw.clone())
            .unwrap_or_else(|e| panic!("{file}: not a FlowTemplate: {e}"));
        assert_round_trips(file, raw, serde_json::to_value(&ft).unwrap());
        if let Err(errors) = ft.validate_cel() {
            panic!("{file}: refused by the CRD's CEL rules: {errors:#?}");
        }
        used_pools.extend(ft.spec.pool.iter().map(|p| (file.clone(), p.clone())));
        templates.insert(ft.metadata.name.clone().expect("FlowTemplate name"), ft);
    }
    for (file, raw) in &docs {
        assert_eq!(raw["apiVersion"], "sluice.dev/v1alpha1", "{file}");
        match raw["kind"].as_str() {
            Some("FlowTemplate") => {}
            Some("FlowRun") => {
                flowruns += 1;
                let fr: FlowRun = serde_json::from_value(raw.clone())
                    .unwrap_or_else(|e| panic!("{file}: not a FlowRun: {e}"));
                assert_round_trips(file, raw, serde_json::to_value(&fr).unwrap());
                if let Err(errors) = fr.validate_cel() {
                    panic!("{file}: refused by the CRD's CEL rules: {errors:#?}");
                }
                // A run of a template is validated as the flow it takes from the template.
                let spec = match &fr.spec.template_ref {
                    Some(reference) => {
                        let template = templates.get(&reference.name).unwrap_or_else(|| {
                            panic!("{file}: no example defines FlowTemplate {}", reference.name)
                        });
                        template::resolve(&fr.spec, template)
                            .unwrap_or_else(|e| panic!("{file}: the template refuses the run: {e}"))
                            .spec
                    }
                    None => fr.spec.clone(),
                };
                if let Err(errors) = engine::validate(&spec) {
                    panic!("{file}: refused by engine validation: {errors}");
                }
                used_pools.extend(fr.spec.pool.iter().map(|p| (file.clone(), p.clone())));
                used_pools.extend(
                    fr.spec
                        .steps
                        .iter()
                        .filter_map(|s| s.pool.clone())
                        .map(|p| (file.clone(), p)),
                );
            }
            Some("WorkerPool") => {
                let wp: WorkerPool = serde_json::from_value(raw.clone())
                    .unwrap_or_else(|e| panic!("{file}: not a WorkerPool: {e}"));
                assert_round_trips(file, raw, serde_json::to_value(&wp).unwrap());
                if let Err(errors) = wp.validate_cel() {
                    panic!("{file}: refused by the CRD's CEL rules: {errors:#?}");
                }
                let containers = &raw["spec"]["template"]["spec"]["containers"];
                assert!(
                    containers.as_array().is_some_and(|c| !c.is_empty()),
                    "{file}: the pod template has no container"
                );
                pools.insert(wp.metadata.name.clone().expect("WorkerPool name"));
            }
            Some("CronFlow") => {
                let cf: CronFlow = serde_json::from_value(raw.clone())
                    .unwrap_or_else(|e| panic!("{file}: not a CronFlow: {e}"));
                assert_round_trips(file, raw, serde_json::to_value(&cf).unwrap());
                if let Err(errors) = cf.validate_cel() {
                    panic!("{file}: refused by the CRD's CEL rules: {errors:#?}");
                }
                if let Err(e) = Schedule::parse(&cf.spec.schedule, cf.spec.time_zone.as_deref()) {
                    panic!("{file}: {e}");
                }
                let template = &cf.spec.flow_run.spec;
                if let Err(errors) = engine::validate(template) {
                    panic!("{file}: the run template is refused by engine validation: {errors}");
                }
                used_pools.extend(template.pool.iter().map(|p| (file.clone(), p.clone())));
            }
            other => panic!("{file}: unexpected kind {other:?}"),
        }
    }
    assert!(flowruns >= 4, "examples hold at least four FlowRuns");
    for (file, pool) in used_pools {
        assert!(
            pools.contains(&pool),
            "{file} runs on WorkerPool {pool}, which no example defines"
        );
    }
}
