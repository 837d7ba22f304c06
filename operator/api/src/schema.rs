//! Schema fragments the derives can't express: free-form JSON, Go-style durations, the worker pod template.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Pattern of a Go duration as Kubernetes writes them (`300ms`, `30s`, `1h30m`); checked at `kubectl apply`.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// Any JSON value (object, array, string, number, bool), kept as written.
pub fn any_json(_: &mut SchemaGenerator) -> Schema {
    json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// An optional JSON value of any type.
pub fn optional_any_json(g: &mut SchemaGenerator) -> Schema {
    any_json(g)
}

/// An optional duration string such as `30s` or `1h30m`.
pub fn duration_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": DURATION_PATTERN,
        "maxLength": 32,
    })
}

/// A duration string that must not be zero, for timeouts: `0s` would fail every attempt at once.
pub fn positive_duration_string(g: &mut SchemaGenerator) -> Schema {
    let mut schema = duration_string(g);
    schema.insert(
        "x-kubernetes-validations".into(),
        serde_json::json!([{
            "rule": "self.matches('[1-9]')",
            "message": "must be a positive duration such as 30s, 10m or 1h30m, not zero",
        }]),
    );
    schema
}

/// A pod template. Kept open in the schema (the API server validates it fully when the operator creates the
/// Deployment) so that the CRD stays small enough for client-side `kubectl apply`.
pub fn pod_template(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
