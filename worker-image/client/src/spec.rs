//! When two FlowRun specs are "the same run": the comparison behind idempotent starts.

use serde_json::{Map, Value};
use sluice_api::FlowRunSpec;

/// Fields of the spec that steer a run after it started (anyone may set them: [`Run::cancel`](crate::Run::cancel),
/// `kubectl sluice cancel|suspend|resume|retry`). They are not part of what the run *is*, so a start compares
/// without them: starting `order-42` again after it was cancelled is the same run, not a conflict.
const RUN_CONTROLS: [&str; 3] = ["cancel", "suspend", "retryRequest"];

/// Fields the operator copies from the template into a run of a FlowTemplate (`spec.templateRef`): they are
/// the template's, not what the starter asked for, so they are not compared.
const FROM_TEMPLATE: [&str; 4] = ["steps", "onExit", "output", "input"];

/// Fields the operator copies from the template only where the run sets none: compared when the starter set
/// them.
const TEMPLATE_FALLBACKS: [&str; 3] = ["pool", "defaults", "activeDeadline"];

/// Most differences listed; more are summarised, so an error message stays readable.
const MAX_LISTED: usize = 10;

/// Where `stored` differs from `sent`, as JSON paths (`spec.input.amount`, `spec.steps[1].handler`); empty when
/// they declare the same run.
///
/// The comparison is on the JSON the API server stores, not on Rust values: numbers compare by value (the API
/// server writes the float `1.0` back as `1`), a field set to its empty default (`suspend: false`, an empty
/// `dependsOn`) equals a field left out, and the run controls `cancel`, `suspend` and `retryRequest` are
/// ignored. For a run of a FlowTemplate (`spec.templateRef` sent), what the operator copies from the
/// template into the stored spec is not compared: the steps, exit steps, output and input always, the pool,
/// defaults and deadline unless `sent` sets them; `templateRef` itself (template name and input) is.
/// Fields only the API server could have added (schema defaults, admission mutations) are not
/// guessed here: [`Client::start`](crate::Client::start) asks the API server for its own rendering of the
/// sent spec (a dry-run create) before it calls two specs different.
///
/// ```
/// use serde_json::json;
/// use sluice_client::spec_differences;
/// use sluice_client::api::FlowRunSpec;
///
/// let sent: FlowRunSpec = serde_json::from_value(json!({
///     "pool": "p", "input": {"amount": 1.0}, "steps": [{"name": "a", "handler": "h"}]
/// })).unwrap();
/// let stored: FlowRunSpec = serde_json::from_value(json!({
///     "pool": "p", "input": {"amount": 1}, "cancel": true, "steps": [{"name": "a", "handler": "h"}]
/// })).unwrap();
/// assert!(spec_differences(&sent, &stored).is_empty());
///
/// let other: FlowRunSpec = serde_json::from_value(json!({
///     "pool": "p", "input": {"amount": 2}, "steps": [{"name": "a", "handler": "h"}]
/// })).unwrap();
/// assert_eq!(spec_differences(&sent, &other), ["spec.input.amount"]);
/// ```
pub fn spec_differences(sent: &FlowRunSpec, stored: &FlowRunSpec) -> Vec<String> {
    let (mut sent_json, mut stored_json) = (identity(sent), identity(stored));
    if sent.template_ref.is_some()
        && let (Value::Object(sent_map), Value::Object(stored_map)) =
            (&mut sent_json, &mut stored_json)
    {
        for key in FROM_TEMPLATE {
            sent_map.remove(key);
            stored_map.remove(key);
        }
        for key in TEMPLATE_FALLBACKS {
            if !sent_map.contains_key(key) {
                stored_map.remove(key);
            }
        }
    }
    let mut out = Vec::new();
    diff("spec", &sent_json, &stored_json, &mut out);
    if out.len() > MAX_LISTED {
        let more = out.len() - MAX_LISTED;
        out.truncate(MAX_LISTED);
        out.push(format!("{more} more"));
    }
    out
}

/// The spec as JSON without the run controls. Serializing a `FlowRunSpec` cannot fail (string keys, no
/// custom serializers), so a failure would only lose the comparison's detail, never report a false match:
/// `Null` against a real spec differs.
fn identity(spec: &FlowRunSpec) -> Value {
    let mut value = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        for key in RUN_CONTROLS {
            map.remove(key);
        }
    }
    value
}

fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => diff_objects(path, a, b, out),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let same = match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                // At least one is a float (or an integer beyond i64/u64 on the other side): by value.
                _ => x.as_f64() == y.as_f64(),
            };
            if !same {
                out.push(path.to_owned());
            }
        }
        _ if a == b => {}
        _ => out.push(path.to_owned()),
    }
}

fn diff_objects(path: &str, a: &Map<String, Value>, b: &Map<String, Value>, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for key in keys {
        // A merge patch and the API server drop `null` members: absent and null are the same.
        let x = a.get(key).unwrap_or(&Value::Null);
        let y = b.get(key).unwrap_or(&Value::Null);
        diff(&format!("{path}.{key}"), x, y, out);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(v: Value) -> FlowRunSpec {
        serde_json::from_value(v).expect("a valid spec")
    }

    #[test]
    fn equal_specs_and_empty_defaults_do_not_differ() {
        let a = spec(json!({"pool": "p", "steps": [{"name": "a", "handler": "h"}]}));
        let b = spec(json!({
            "pool": "p", "suspend": false,
            "steps": [{"name": "a", "handler": "h", "dependsOn": [], "continueOnFailure": false}]
        }));
        assert!(spec_differences(&a, &b).is_empty());
    }

    #[test]
    fn run_controls_are_not_part_of_the_identity() {
        let a = spec(json!({"pool": "p", "steps": [{"name": "a", "handler": "h"}]}));
        let b = spec(json!({
            "pool": "p", "cancel": true, "suspend": true, "retryRequest": "t1",
            "steps": [{"name": "a", "handler": "h"}]
        }));
        assert!(spec_differences(&a, &b).is_empty());
        assert!(spec_differences(&b, &a).is_empty());
    }

    #[test]
    fn numbers_compare_by_value() {
        let a = spec(
            json!({"input": {"x": 1.0, "y": 2.5, "z": -3}, "steps": [{"name": "a", "sleep": "1s"}]}),
        );
        let b = spec(
            json!({"input": {"x": 1, "y": 2.5, "z": -3.0}, "steps": [{"name": "a", "sleep": "1s"}]}),
        );
        assert!(spec_differences(&a, &b).is_empty());
        let c = spec(
            json!({"input": {"x": 1, "y": 2.25, "z": -3}, "steps": [{"name": "a", "sleep": "1s"}]}),
        );
        assert_eq!(spec_differences(&a, &c), ["spec.input.y"]);
    }

    #[test]
    fn differences_name_their_paths() {
        let a = spec(json!({
            "pool": "p", "input": {"order": "42", "lines": [1, 2]},
            "steps": [{"name": "a", "handler": "h"}, {"name": "b", "handler": "h", "dependsOn": ["a"]}]
        }));
        let b = spec(json!({
            "pool": "q", "input": {"order": "42", "lines": [1, 2, 3], "extra": true},
            "steps": [{"name": "a", "handler": "h"}, {"name": "b", "handler": "g", "dependsOn": ["a"]}]
        }));
        assert_eq!(
            spec_differences(&a, &b),
            [
                "spec.input.extra",
                "spec.input.lines",
                "spec.pool",
                "spec.steps[1].handler"
            ]
        );
    }

    #[test]
    fn a_template_run_is_compared_by_its_template_and_input_not_by_the_copied_flow() {
        let sent = spec(json!({"templateRef": {"name": "t", "input": {"n": 1.0}}}));
        // What the operator made of it: the template's flow, pool and defaults copied in.
        let resolved = spec(json!({
            "templateRef": {"name": "t", "input": {"n": 1}},
            "pool": "from-template", "defaults": {"timeout": "1m"}, "activeDeadline": "1h",
            "input": {"n": 1, "currency": "EUR"},
            "steps": [{"name": "a", "handler": "h"}], "output": "${{ steps.a.output }}"
        }));
        assert!(spec_differences(&sent, &resolved).is_empty());

        let other_input = spec(json!({"templateRef": {"name": "t", "input": {"n": 2}}}));
        assert_eq!(
            spec_differences(&other_input, &resolved),
            ["spec.templateRef.input.n"]
        );
        let other_template = spec(json!({"templateRef": {"name": "u", "input": {"n": 1}}}));
        assert_eq!(
            spec_differences(&other_template, &resolved),
            ["spec.templateRef.name"]
        );
        // A pool the starter sets is its own, and compared.
        let own_pool =
            spec(json!({"pool": "mine", "templateRef": {"name": "t", "input": {"n": 1}}}));
        assert_eq!(spec_differences(&own_pool, &resolved), ["spec.pool"]);
        // An inline spec is not the template run, nor the other way round.
        let inline =
            spec(json!({"pool": "from-template", "steps": [{"name": "a", "handler": "h"}]}));
        assert!(!spec_differences(&inline, &resolved).is_empty());
        let inline_stored = spec(json!({"pool": "p", "steps": [{"name": "a", "handler": "h"}]}));
        assert_eq!(
            spec_differences(&sent, &inline_stored),
            ["spec.templateRef"]
        );
    }

    #[test]
    fn long_lists_of_differences_are_summarised() {
        let a = spec(json!({"input": {}, "steps": [{"name": "a", "sleep": "1s"}]}));
        let many: Map<String, Value> = (0..15).map(|i| (format!("k{i:02}"), json!(i))).collect();
        let b = spec(json!({"input": many, "steps": [{"name": "a", "sleep": "1s"}]}));
        let d = spec_differences(&a, &b);
        assert_eq!(d.len(), MAX_LISTED + 1);
        assert_eq!(d.last().map(String::as_str), Some("5 more"));
    }
}
