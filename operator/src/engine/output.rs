//! Output size limits and error truncation: with the status budget ([`super::budget`]), what keeps a FlowRun
//! far below the API server's 1.5 MiB object limit.

use serde_json::Value;

use super::budget::json_len;
use crate::api::{FlowRunSpec, StepError};

/// Largest accepted single output when `spec.defaults.maxOutputBytes` is not set.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Longest error message kept in status; longer ones keep their end, where the cause usually is.
pub const MAX_MESSAGE_BYTES: usize = sluice_wire::MAX_ERROR_MESSAGE_BYTES;

/// Error type of an output over the limit.
pub const OUTPUT_TOO_LARGE: &str = "OutputTooLarge";
/// Error type of an expression that could not be evaluated, or a child spec that is invalid.
pub const INVALID_INPUT: &str = "InvalidInput";
/// Error type of an attempt, or a signal wait, that ran out of time.
pub const TIMEOUT: &str = "Timeout";
/// Error type of an attempt whose worker stopped heartbeating.
pub const HEARTBEAT_LOST: &str = "HeartbeatLost";
/// Error type of a child flow that failed or was cancelled.
pub const CHILD_FAILED: &str = "ChildFailed";

/// The output limit of a flow.
pub fn max_output_bytes(spec: &FlowRunSpec) -> usize {
    spec.defaults
        .as_ref()
        .and_then(|d| d.max_output_bytes)
        .map_or(DEFAULT_MAX_OUTPUT_BYTES, |n| n.max(1) as usize)
}

/// Size of a value as compact JSON.
pub fn json_size(v: &Value) -> usize {
    json_len(v)
}

/// Checks one output against the limit; the error message says what to do.
pub fn check_output(v: &Value, max: usize) -> Result<(), String> {
    let size = json_size(v);
    if size > max {
        Err(format!(
            "the output is {size} bytes of JSON, more than the limit of {max} bytes (spec.defaults.maxOutputBytes): \
             store large data elsewhere (an object store, a volume) and return a reference to it"
        ))
    } else {
        Ok(())
    }
}

/// A step error with its message truncated to [`MAX_MESSAGE_BYTES`].
pub fn step_error(type_: &str, message: &str, exit_code: Option<i32>, attempt: u32) -> StepError {
    StepError {
        type_: truncate(type_, 256),
        message: sluice_wire::truncate_message(message, MAX_MESSAGE_BYTES),
        exit_code,
        attempt,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The form in which an output is stored: `null` members of objects are dropped (recursively; array
/// elements are kept). Status is written with JSON merge patches, where a `null` member means "delete",
/// so the API server would drop them anyway; dropping them here keeps the engine's status identical to what
/// it reads back. A missing field and `null` read the same in expressions.
pub fn normalize(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, normalize(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

/// A stored output: normalized, and `None` for `null` (a merge patch cannot store a `null` field).
pub fn stored(v: Value) -> Option<Value> {
    match normalize(v) {
        Value::Null => None,
        v => Some(v),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::StepDefaults;

    #[test]
    fn limit_defaults_to_64_kib() {
        assert_eq!(max_output_bytes(&FlowRunSpec::default()), 65536);
        let spec = FlowRunSpec {
            defaults: Some(StepDefaults {
                max_output_bytes: Some(10),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(max_output_bytes(&spec), 10);
    }

    #[test]
    fn refuses_large_outputs_with_a_clear_message() {
        assert!(check_output(&json!("0123456"), 10).is_ok());
        let e = check_output(&json!("0123456789"), 10).unwrap_err();
        assert!(e.contains("12 bytes"), "{e}");
        assert!(e.contains("limit of 10 bytes"), "{e}");
    }

    #[test]
    fn truncates_messages_keeping_the_end() {
        let long = format!("{}THE CAUSE", "x".repeat(10_000));
        let e = step_error("Error", &long, Some(1), 2);
        assert!(e.message.len() <= MAX_MESSAGE_BYTES);
        assert!(e.message.ends_with("THE CAUSE"));
        assert_eq!(e.attempt, 2);
    }

    #[test]
    fn outputs_are_stored_without_null_members() {
        assert_eq!(
            stored(json!({"a": null, "b": {"c": null, "d": 1}, "e": [null, {"f": null}]})),
            Some(json!({"b": {"d": 1}, "e": [null, {}]}))
        );
        assert_eq!(stored(json!(null)), None);
        assert_eq!(stored(json!(0)), Some(json!(0)));
    }
}
