//! The CronFlow CRD: names, printer columns and subresources as `kubectl get cronflows` shows them, and its CEL
//! rules evaluated locally (kube's `cel` feature) on valid and invalid CronFlows, each refused with a message
//! naming the field and the fix.

use serde_json::{Value, json};
use sluice_operator::api::CronFlow;
use sluice_operator::crds;

fn cronflow_errors(name: &str, spec: Value) -> Vec<String> {
    let cf: CronFlow = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "CronFlow",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("the spec parses into CronFlow");
    match cf.validate_cel() {
        Ok(()) => vec![],
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn with_schedule(schedule: &str, time_zone: Option<&str>) -> Value {
    let mut spec = json!({
        "schedule": schedule,
        "flowRun": {"spec": {"steps": [{"name": "nap", "sleep": "1s"}]}},
    });
    if let Some(tz) = time_zone {
        spec["timeZone"] = json!(tz);
    }
    spec
}

#[test]
fn names_columns_and_subresources() {
    let crd = crds::all()
        .into_iter()
        .find(|c| c.spec.names.kind == "CronFlow")
        .expect("a CronFlow CRD");
    assert_eq!(crd.metadata.name.as_deref(), Some("cronflows.sluice.dev"));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["cf".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["sluice".to_string()]));
    let v = &crd.spec.versions[0];
    assert!(v.subresources.as_ref().is_some_and(|s| s.status.is_some()));
    let columns: Vec<(&str, &str, &str)> = v
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.type_.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Schedule", "string", ".spec.schedule"),
            ("Suspend", "boolean", ".spec.suspend"),
            ("Active", "integer", ".status.activeCount"),
            ("Last Schedule", "date", ".status.lastScheduleTime"),
            ("Age", "date", ".metadata.creationTimestamp"),
        ]
    );
    let schema = serde_json::to_value(v.schema.as_ref().unwrap()).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(
        spec["concurrencyPolicy"]["enum"],
        json!(["Allow", "Forbid", "Replace"])
    );
    assert_eq!(
        spec["missedSchedulePolicy"]["enum"],
        json!(["RunOnce", "Skip"])
    );
    // The run template is a FlowRun spec, with the FlowRun's own rules.
    assert!(
        spec["flowRun"]["properties"]["spec"]["x-kubernetes-validations"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    );
}

#[test]
fn valid_schedules_are_accepted() {
    for (schedule, tz) in [
        ("0 3 * * *", None),
        ("*/2 * * * * *", Some("Europe/Berlin")),
        ("@hourly", Some("America/New_York")),
        ("0 9 * * MON-FRI", Some("UTC")),
        ("30 2 L * *", Some("Etc/GMT+5")),
    ] {
        assert_eq!(
            cronflow_errors("nightly", with_schedule(schedule, tz)),
            Vec::<String>::new(),
            "{schedule}"
        );
    }
}

#[test]
fn bad_input_is_refused_naming_the_field() {
    let refused = |name: &str, spec: Value, expected: &str| {
        assert_eq!(
            cronflow_errors(name, spec),
            [expected.to_string()],
            "expected exactly one failure"
        );
    };
    refused(
        "nightly",
        with_schedule("every day", None),
        "spec.schedule: schedule must be five cron fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * *'), six with a leading seconds field (e.g. '*/10 * * * * *'), or @hourly, @daily, @weekly, @monthly or @yearly",
    );
    refused(
        "nightly",
        with_schedule("CRON_TZ=UTC 0 3 * * *", None),
        "spec.schedule: schedule must not set a time zone (TZ= or CRON_TZ=): set spec.timeZone instead",
    );
    refused(
        "nightly",
        with_schedule("0 3 * * *", Some("Berlin time")),
        "spec.timeZone: timeZone must be an IANA time zone name such as Europe/Berlin, America/New_York or UTC",
    );
    let long = cronflow_errors(&"x".repeat(243), with_schedule("0 3 * * *", None));
    assert!(
        long.len() == 1 && long[0].ends_with(
            "metadata.name of a CronFlow has at most 242 characters: its runs are named <name>-<10 digits>, and a name has at most 253"
        ),
        "{long:?}"
    );
    assert!(cronflow_errors(&"x".repeat(242), with_schedule("0 3 * * *", None)).is_empty());
    // The FlowRun template's own rules apply.
    let mut spec = with_schedule("0 3 * * *", None);
    spec["flowRun"]["spec"]["steps"] = json!([{"name": "Idle", "sleep": "1s"}]);
    refused(
        "nightly",
        spec,
        "spec.flowRun.spec.steps[0].name: step name must be a DNS label: lower-case letters, digits and '-', \
         starting and ending with a letter or digit (e.g. cooling-off)",
    );
}
