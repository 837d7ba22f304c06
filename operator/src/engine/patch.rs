//! The status merge patch: only what changed, and never `signals`.
//!
//! Users deliver signals by patching `status.signals` through the status subresource while the operator
//! writes step state. A JSON merge patch (RFC 7386) that names only the changed top-level fields and the
//! changed step keys cannot overwrite a signal written in between (design invariant 5).
//!
//! Merge-patch limits worth knowing: a `null` inside a patched object means "delete", so nulls nested in an
//! output object are dropped by the API server (the engine treats a missing field and `null` alike); arrays
//! (like `conditions` or an array output) are replaced whole.

use serde_json::{Map, Value};

use crate::api::FlowRunStatus;

/// A merge patch `{"status": {...}}` turning `old` into `new`, touching only changed top-level fields and
/// changed step entries (and inside them only the changed fields). `signals` is never included.
/// Returns `{"status": {}}` when nothing changed; see [`is_empty`].
pub fn status_patch(old: &FlowRunStatus, new: &FlowRunStatus) -> Value {
    let mut old = serde_json::to_value(old).unwrap_or(Value::Null);
    let mut new = serde_json::to_value(new).unwrap_or(Value::Null);
    for v in [&mut old, &mut new] {
        if let Value::Object(m) = v {
            m.remove("signals");
        }
    }
    let status = match diff(&old, &new) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let mut patch = Map::new();
    patch.insert("status".into(), Value::Object(status));
    Value::Object(patch)
}

/// Whether a patch from [`status_patch`] changes nothing.
pub fn is_empty(patch: &Value) -> bool {
    patch
        .get("status")
        .and_then(Value::as_object)
        .is_none_or(Map::is_empty)
}

/// Merge-patch diff: objects recurse (a merge patch merges objects, so a removed key must be sent as
/// `null` at its own level); anything else that changed is replaced whole.
fn diff(old: &Value, new: &Value) -> Value {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return new.clone();
    };
    let mut out = Map::new();
    for (k, v) in new {
        match old.get(k) {
            Some(o) if o == v => {}
            Some(o) => {
                out.insert(k.clone(), diff(o, v));
            }
            None => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            out.insert(k.clone(), Value::Null);
        }
    }
    Value::Object(out)
}

/// Applies a merge patch (RFC 7386) to a JSON value; used by tests to check patches round-trip.
pub fn apply_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            t.remove(k);
        } else {
            apply_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::{FlowPhase, Signal, StepPhase, StepStatus};

    fn status(v: Value) -> FlowRunStatus {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn touches_only_changed_fields_and_steps() {
        let old = status(json!({
            "phase": "Running", "progress": "1/3",
            "steps": {
                "a": {"phase": "Succeeded", "attempts": 1, "output": {"x": 1}},
                "b": {"phase": "Running", "attempts": 2, "worker": "w1", "deadline": "2026-01-01T00:00:00Z"},
                "c": {"phase": "Pending"},
            },
        }));
        let mut new = old.clone();
        new.progress = Some("2/3".into());
        let b = new.steps.get_mut("b").unwrap();
        b.phase = StepPhase::Succeeded;
        b.deadline = None;
        b.output = Some(json!({"y": 2}));
        let patch = status_patch(&old, &new);
        assert_eq!(
            patch,
            json!({"status": {
                "progress": "2/3",
                "steps": {"b": {"phase": "Succeeded", "deadline": null, "output": {"y": 2}}},
            }})
        );
    }

    #[test]
    fn never_touches_signals() {
        let mut old = FlowRunStatus::default();
        old.signals.insert(
            "s".into(),
            Signal {
                payload: Some(json!(1)),
            },
        );
        let mut new = FlowRunStatus {
            phase: Some(FlowPhase::Running),
            ..Default::default()
        };
        new.signals.insert("other".into(), Signal::default());
        let patch = status_patch(&old, &new);
        assert_eq!(patch, json!({"status": {"phase": "Running"}}));
        assert!(!is_empty(&patch));
        assert!(is_empty(&status_patch(&old, &old)));
    }

    #[test]
    fn new_steps_and_removed_fields() {
        let old = status(json!({"phase": "Pending", "output": {"a": 1}}));
        let mut new = status(json!({"phase": "Pending"}));
        new.steps.insert("a".into(), StepStatus::default());
        assert_eq!(
            status_patch(&old, &new),
            json!({"status": {"steps": {"a": {"phase": "Pending"}}, "output": null}})
        );
    }

    #[test]
    fn patch_round_trips_while_signals_are_kept() {
        let old = status(json!({
            "phase": "Running",
            "steps": {"a": {"phase": "Running", "attempts": 1, "worker": "w"}, "b": {"phase": "Waiting", "signal": "go"}},
            "conditions": [{"type": "Ready", "status": "False", "reason": "Running", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }));
        let new = status(json!({
            "phase": "Running",
            "steps": {"a": {"phase": "Retrying", "attempts": 1, "error": {"type": "X", "attempt": 1}, "wakeAt": "2026-01-01T00:00:05Z"},
                      "b": {"phase": "Waiting", "signal": "go"}},
            "conditions": [{"type": "Ready", "status": "False", "reason": "Running", "message": "0/2", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }));
        // The object on the server got a signal in between.
        let mut server = serde_json::to_value(&old).unwrap();
        server["signals"] = json!({"go": {"payload": {"ok": true}}});
        apply_merge_patch(&mut server, &status_patch(&old, &new)["status"]);
        let mut expected = serde_json::to_value(&new).unwrap();
        expected["signals"] = json!({"go": {"payload": {"ok": true}}});
        assert_eq!(server, expected);
    }
}
