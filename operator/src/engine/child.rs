//! Child flows: the deterministic name of a `flow` step's child FlowRun, and its resolved spec.

use super::expr::{self, Vars};
use super::output::check_depth;
use super::validate::validate;
use crate::api::{ChildFlow, FlowRunSpec, TemplateRef};

/// Longest child name: a DNS label, so the name also works as a label value and in pod-related names.
pub const MAX_CHILD_NAME: usize = 63;

/// The child FlowRun's name: `<parent>-<step>`, or when that is longer than 63 characters, its first 54
/// characters and a hash of the whole (`-` + 8 hex digits), so two long names never collide by truncation.
pub fn child_name(parent: &str, step: &str) -> String {
    let full = format!("{parent}-{step}");
    if full.len() <= MAX_CHILD_NAME {
        return full;
    }
    let hash = fnv1a32(full.as_bytes());
    let mut prefix: String = full.chars().take(MAX_CHILD_NAME - 9).collect();
    while prefix.ends_with('-') || prefix.ends_with('.') {
        prefix.pop();
    }
    format!("{prefix}-{hash:08x}")
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The child's spec: the step's `flow.spec` with the parent's expressions in its `input` resolved, the
/// parent's `pool` and `defaults` inherited when the child sets none, and validated.
///
/// Only `input` is resolved with the parent's values: the child's own steps hold expressions about the
/// child (`${{ input.x }}` means the child's input there).
///
/// For `flow.templateRef`, the child is a run of that FlowTemplate: its spec is the reference with the
/// parent's expressions in `input` resolved, and nothing else. The child checks the input and takes its flow
/// (pool and defaults included) from the template itself when it starts, like any run of a template, so the
/// engine needs no template here and stays pure.
pub fn child_spec(
    flow: &ChildFlow,
    parent: &FlowRunSpec,
    vars: &Vars,
) -> Result<FlowRunSpec, String> {
    let resolve_input = |input: &serde_json::Value| -> Result<serde_json::Value, String> {
        let input = expr::resolve(input, vars).map_err(|e| format!("child input: {e}"))?;
        // The child FlowRun is written by the operator, past the admission check users' specs get.
        check_depth(&input).map_err(|e| format!("child input {e}"))?;
        Ok(input)
    };
    let raw = match (&flow.spec, &flow.template_ref) {
        (Some(raw), None) => raw,
        (None, Some(reference)) => {
            let input = reference.input.as_ref().map(resolve_input).transpose()?;
            return Ok(FlowRunSpec {
                template_ref: Some(TemplateRef {
                    name: reference.name.clone(),
                    input,
                }),
                ..FlowRunSpec::default()
            });
        }
        _ => return Err("flow needs exactly one of spec and templateRef".to_owned()),
    };
    let mut spec: FlowRunSpec = serde_json::from_value(raw.clone())
        .map_err(|e| format!("the child flow spec is not a FlowRun spec: {e}"))?;
    if let Some(input) = &spec.input {
        spec.input = Some(resolve_input(input)?);
    }
    if spec.pool.is_none() {
        spec.pool.clone_from(&parent.pool);
    }
    if spec.defaults.is_none() {
        spec.defaults.clone_from(&parent.defaults);
    }
    spec.cancel = false;
    spec.suspend = false;
    validate(&spec).map_err(|e| format!("the child flow spec is invalid: {e}"))?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_are_deterministic_and_short() {
        assert_eq!(child_name("order-1", "invoice"), "order-1-invoice");
        let long = child_name(&"p".repeat(60), "invoice");
        assert_eq!(long.len(), 63);
        assert_eq!(long, child_name(&"p".repeat(60), "invoice"));
        assert_ne!(long, child_name(&"p".repeat(60), "invoicf"));
        assert!(long.starts_with(&"p".repeat(54)));
        // A cut right after a '-' does not leave "--".
        let dashed = child_name(&format!("{}-x", "a".repeat(53)), "step");
        assert!(!dashed.contains("--"), "{dashed}");
    }

    #[test]
    fn resolves_only_the_input_and_inherits_the_pool() {
        let flow = ChildFlow {
            spec: Some(json!({
                "input": {"tracking": "${{ input.t }}"},
                "steps": [{"name": "bill", "handler": "bill", "input": "${{ input.tracking }}"}],
            })),
            template_ref: None,
        };
        let parent = FlowRunSpec {
            pool: Some("orders".into()),
            ..Default::default()
        };
        let vars = Vars::new(&json!({"t": "TRK"}), &serde_json::Map::new());
        let spec = child_spec(&flow, &parent, &vars).unwrap();
        assert_eq!(spec.input, Some(json!({"tracking": "TRK"})));
        assert_eq!(spec.pool.as_deref(), Some("orders"));
        assert_eq!(spec.steps[0].input, Some(json!("${{ input.tracking }}")));
    }

    #[test]
    fn invalid_children_are_errors() {
        let parent = FlowRunSpec::default();
        let vars = Vars::new(&json!({}), &serde_json::Map::new());
        let e = child_spec(
            &ChildFlow {
                spec: Some(json!({"steps": 3})),
                template_ref: None,
            },
            &parent,
            &vars,
        )
        .unwrap_err();
        assert!(e.contains("not a FlowRun spec"), "{e}");
        let e = child_spec(
            &ChildFlow {
                spec: Some(json!({"steps": [{"name": "x", "handler": "h"}]})),
                template_ref: None,
            },
            &parent,
            &vars,
        )
        .unwrap_err();
        assert!(e.contains("needs a WorkerPool"), "{e}");
    }

    #[test]
    fn a_template_child_is_the_reference_with_its_input_resolved() {
        let flow = ChildFlow {
            spec: None,
            template_ref: Some(TemplateRef {
                name: "expense".into(),
                input: Some(json!({"reportId": "${{ input.id }}", "amount": "${{ input.n * 2 }}"})),
            }),
        };
        // The parent's pool is not inherited: the template brings its own.
        let parent = FlowRunSpec {
            pool: Some("orders".into()),
            ..Default::default()
        };
        let vars = Vars::new(&json!({"id": "r-1", "n": 4}), &serde_json::Map::new());
        let spec = child_spec(&flow, &parent, &vars).unwrap();
        assert_eq!(
            spec,
            FlowRunSpec {
                template_ref: Some(TemplateRef {
                    name: "expense".into(),
                    input: Some(json!({"reportId": "r-1", "amount": 8})),
                }),
                ..Default::default()
            }
        );
        // An expression that fails is the step's InvalidInput, before any child exists.
        let bad = ChildFlow {
            spec: None,
            template_ref: Some(TemplateRef {
                name: "expense".into(),
                input: Some(json!({"x": "${{ input.missing.deeper }}"})),
            }),
        };
        assert!(
            child_spec(&bad, &parent, &vars)
                .unwrap_err()
                .starts_with("child input")
        );
        let neither = ChildFlow::default();
        assert!(child_spec(&neither, &parent, &vars).is_err());
    }
}
