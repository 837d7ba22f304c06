//! What one status write sends: the status that replaces the stored one, and the merge patch of what changed.
//!
//! The operator writes a run's status by replacing it (a PUT of the status subresource) fenced by the
//! `resourceVersion` it decided on. A replacement costs the API server one decode of the body; a merge patch
//! costs it an encode of the stored object, the merge and a decode of the result, and on a run written once
//! a step that difference is a quarter of the step's latency (see `docs/design.md`).
//!
//! Users deliver signals by writing `status.signals` while the operator writes step state. The replacement
//! carries `signals` exactly as observed, and the fence makes the API server refuse it (409) if anyone wrote
//! after that observation: the writer then reads the run afresh and decides again, so a signal written in
//! between is never overwritten (design invariant 5).
//!
//! The merge patch (RFC 7386) names only the changed fields and never `signals`; the writer uses it to know
//! whether anything changed at all, and logs it. Arrays (like `conditions` or an array output) are replaced
//! whole.

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

/// The status a write replaces the stored one with: `decided`, with `signals` exactly as `observed` holds
/// them (the operator never writes signals; the write is fenced by the version `observed` came from).
pub fn status_replacement(observed: &FlowRunStatus, decided: &FlowRunStatus) -> Value {
    let mut status = serde_json::to_value(decided).unwrap_or_else(|_| Value::Object(Map::new()));
    if let Value::Object(m) = &mut status {
        match serde_json::to_value(&observed.signals) {
            Ok(signals) if !observed.signals.is_empty() => {
                m.insert("signals".into(), signals);
            }
            _ => {
                m.remove("signals");
            }
        }
    }
    status
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

    proptest::proptest! {
        /// Every status write sends every output again, so what it sends must decode to the very same
        /// numbers, not ones a rounding step off (the reason serde_json's `float_roundtrip` is on).
        #[test]
        fn numbers_in_outputs_survive_every_rewrite(x in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL) {
            let old = status(json!({"steps": {"a": {"phase": "Succeeded", "attempts": 1, "output": {"x": x}}}}));
            let mut written = old.clone();
            for _ in 0..3 {
                let sent = status_replacement(&FlowRunStatus::default(), &written).to_string();
                written = serde_json::from_str(&sent).unwrap();
            }
            proptest::prop_assert_eq!(written, old);
        }
    }

    #[test]
    fn the_replacement_is_the_decided_status_with_the_observed_signals() {
        let mut old = status(json!({
            "phase": "Running",
            "steps": {"a": {"phase": "Running", "attempts": 1, "worker": "w1"}},
            "signals": {"go": {"payload": {"approved": true}}},
        }));
        let mut new = old.clone();
        new.signals.clear();
        new.signals.insert("made-up".into(), Signal::default());
        let a = new.steps.get_mut("a").unwrap();
        a.phase = StepPhase::Succeeded;
        a.worker = None;
        a.output = Some(json!({"n": 0.1, "none": null}));
        assert_eq!(
            status_replacement(&old, &new),
            json!({
                "phase": "Running",
                "steps": {"a": {"phase": "Succeeded", "attempts": 1, "output": {"n": 0.1, "none": null}}},
                "signals": {"go": {"payload": {"approved": true}}},
            }),
            "a field the decision dropped is absent; signals are the observed ones"
        );
        old.signals.clear();
        assert!(
            status_replacement(&old, &new).get("signals").is_none(),
            "no observed signals: none written"
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
