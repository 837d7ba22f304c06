//! Output size limits and error truncation: with the status budget ([`super::budget`]), what keeps a FlowRun
//! far below the API server's 1.5 MiB object limit.

use serde_json::Value;

use super::budget::json_len;
use crate::api::{FlowRunSpec, MAX_JSON_DEPTH, StepError};

/// Largest accepted single output when `spec.defaults.maxOutputBytes` is not set.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Longest error message kept in status; longer ones keep their end, where the cause usually is.
pub const MAX_MESSAGE_BYTES: usize = sluice_wire::MAX_ERROR_MESSAGE_BYTES;

/// Error type of an output over the limit.
pub const OUTPUT_TOO_LARGE: &str = "OutputTooLarge";
/// Error type of an output nested deeper than [`MAX_JSON_DEPTH`].
pub const OUTPUT_TOO_DEEP: &str = "OutputTooDeep";
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

/// Why an output is not recorded: its error type ([`OUTPUT_TOO_LARGE`] or [`OUTPUT_TOO_DEEP`]) and a message
/// that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRefused {
    pub type_: &'static str,
    pub message: String,
}

/// Checks one output against the size limit and [`MAX_JSON_DEPTH`]: a deeper value would make the FlowRun
/// unreadable for JSON decoders (the operator's among them), so it is never written.
pub fn check_output(v: &Value, max: usize) -> Result<(), OutputRefused> {
    let size = json_size(v);
    if size > max {
        return Err(OutputRefused {
            type_: OUTPUT_TOO_LARGE,
            message: format!(
                "the output is {size} bytes of JSON, more than the limit of {max} bytes (spec.defaults.maxOutputBytes): \
                 store large data elsewhere (an object store, a volume) and return a reference to it"
            ),
        });
    }
    check_depth(v).map_err(|message| OutputRefused {
        type_: OUTPUT_TOO_DEEP,
        message: format!("the output {message}"),
    })
}

/// Checks that `v` nests at most [`MAX_JSON_DEPTH`] levels of objects and arrays; the error completes a
/// sentence whose subject is the value ("the output ...", "child input ...").
pub fn check_depth(v: &Value) -> Result<(), String> {
    if exceeds_depth(v, MAX_JSON_DEPTH) {
        Err(format!(
            "nests JSON objects and arrays deeper than {MAX_JSON_DEPTH} levels, more than Sluice records \
             (JSON decoders refuse deeply nested documents): flatten it or pass it by reference"
        ))
    } else {
        Ok(())
    }
}

/// Whether `v` nests more than `max` levels of objects and arrays (`{}` and `[]` are one level, a scalar
/// none). Iterative, and it stops at the first value past the bound, so any value costs at most its size.
pub fn exceeds_depth(v: &Value, max: usize) -> bool {
    // Values still to look at, with the depth of the container holding them (0 for `v`).
    let mut todo = vec![(v, 0usize)];
    while let Some((v, outer)) = todo.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if outer + 1 > max {
            return true;
        }
        todo.extend(children.map(|c| (c, outer + 1)));
    }
    false
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
        assert_eq!(e.type_, OUTPUT_TOO_LARGE);
        assert!(e.message.contains("12 bytes"), "{e:?}");
        assert!(e.message.contains("limit of 10 bytes"), "{e:?}");
    }

    fn nested(depth: usize) -> Value {
        let mut v = json!("leaf");
        for i in 0..depth {
            v = if i % 2 == 0 {
                json!([v])
            } else {
                json!({"k": v})
            };
        }
        v
    }

    #[test]
    fn depth_counts_objects_and_arrays() {
        assert!(!exceeds_depth(&json!(1), 0));
        assert!(exceeds_depth(&json!([]), 0));
        assert!(!exceeds_depth(&json!({}), 1));
        assert!(!exceeds_depth(&json!({"a": [1, {"b": 2}], "c": []}), 3));
        assert!(exceeds_depth(&json!({"a": [1, {"b": [2]}], "c": []}), 3));
        assert!(!exceeds_depth(&nested(MAX_JSON_DEPTH), MAX_JSON_DEPTH));
        assert!(exceeds_depth(&nested(MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH));
        // Far deeper than any recursive walk could go: no stack overflow, and the answer is found early.
        let mut deep = json!(0);
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        assert!(exceeds_depth(&deep, MAX_JSON_DEPTH));
        // Dropping a value this deep recurses in serde_json; leak it instead of overflowing the test's stack.
        std::mem::forget(deep);
    }

    #[test]
    fn refuses_deep_outputs_with_a_clear_message() {
        assert!(check_output(&nested(MAX_JSON_DEPTH), 1 << 20).is_ok());
        let e = check_output(&nested(MAX_JSON_DEPTH + 1), 1 << 20).unwrap_err();
        assert_eq!(e.type_, OUTPUT_TOO_DEEP);
        assert!(
            e.message
                .contains("the output nests JSON objects and arrays deeper than 32 levels"),
            "{}",
            e.message
        );
        // Size is checked first: a deep and large output is too large.
        let e = check_output(&nested(MAX_JSON_DEPTH + 1), 10).unwrap_err();
        assert_eq!(e.type_, OUTPUT_TOO_LARGE);
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
