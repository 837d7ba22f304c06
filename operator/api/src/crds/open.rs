//! `status.steps` of a FlowRun is kept open in the CRD schema (`x-kubernetes-preserve-unknown-fields`), with the
//! fields of an entry listed in its description instead of a typed schema; so are the status's other fields,
//! except `signals` (written by users), `phase` (a selectable field) and `template` (read by a CEL rule).
//!
//! Why: the API server walks the typed schema of everything in an object on every write (pruning, validation,
//! field ownership), and the step entries are most of a running FlowRun. On a 20-step run, one status PATCH took
//! about twice as long with the entries typed as with them open (measured on the local control plane, 1 writer:
//! about 180 against 320 PATCHes a second), and a step of a chain is one such PATCH. Nothing is lost by not
//! checking them there: the operator is the only writer of step state (users may write `status.signals` only,
//! which the chart's admission policy enforces), and it writes them from the typed Rust structs. The Rust types
//! stay the single source of truth: the field list is rendered from their schema. With the steps open, typing the
//! rest of the status (its conditions above all) still cost a little under a tenth of a status write: a 20-step
//! run's PATCH went from about 305 to 330 a second, and the step-to-step p50 of 4 concurrent chains from
//! 10.7-11.2 to 9.8-10.1 ms.

use std::fmt::Write as _;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

/// How deep nested fields are listed (an entry's `instances.active.<index>.error.type` is the deepest).
const MAX_DEPTH: usize = 4;

/// Replaces the typed schema of the map at `path` (property names from the root, e.g. `["status", "steps"]`)
/// with an open object whose description lists the fields of one entry. Returns whether the path was found.
pub fn open_map_entries(root: &mut JSONSchemaProps, path: &[&str]) -> bool {
    let mut node = root;
    for name in path {
        match node.properties.as_mut().and_then(|p| p.get_mut(*name)) {
            Some(child) => node = child,
            None => return false,
        }
    }
    let Some(JSONSchemaPropsOrBool::Schema(entry)) = node.additional_properties.as_ref() else {
        return false;
    };
    let mut description = node.description.clone().unwrap_or_default();
    description.push_str(
        "\n\nEach entry has the fields below. The API server keeps them as written without checking them \
         against a schema: only the operator writes them.\n\n",
    );
    list_fields(entry, 0, &mut description);
    *node = JSONSchemaProps {
        type_: Some("object".into()),
        description: Some(description.trim_end().to_owned()),
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..JSONSchemaProps::default()
    };
    true
}

/// Keeps the properties `typed` of the object at `path` in its schema and leaves its other fields open
/// (`x-kubernetes-preserve-unknown-fields`), listed in its description instead. Returns whether the path was
/// found.
pub fn open_object_except(root: &mut JSONSchemaProps, path: &[&str], typed: &[&str]) -> bool {
    let mut node = root;
    for name in path {
        match node.properties.as_mut().and_then(|p| p.get_mut(*name)) {
            Some(child) => node = child,
            None => return false,
        }
    }
    let Some(properties) = node.properties.as_mut() else {
        return false;
    };
    let (kept, listed) = std::mem::take(properties)
        .into_iter()
        .partition(|(name, _)| typed.contains(&name.as_str()));
    *properties = kept;
    let listed = JSONSchemaProps {
        properties: Some(listed),
        ..JSONSchemaProps::default()
    };
    let mut description = node.description.clone().unwrap_or_default();
    let names: Vec<String> = typed.iter().map(|name| format!("`{name}`")).collect();
    let _ = write!(
        description,
        "\n\nBesides {}, which have a schema of their own, it has the fields below. The API server keeps \
         them as written without checking them against a schema: only the operator writes them.\n\n",
        names.join(", ")
    );
    list_fields(&listed, 0, &mut description);
    node.description = Some(description.trim_end().to_owned());
    node.x_kubernetes_preserve_unknown_fields = Some(true);
    true
}

/// One markdown list item per field of `schema` (`- `name` (type): description`), nested fields indented under
/// their object's item.
fn list_fields(schema: &JSONSchemaProps, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    for (name, field) in schema.properties.iter().flatten() {
        let text = field
            .description
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(out, "{indent}- `{name}` ({}): {text}", type_name(field));
        if depth + 1 < MAX_DEPTH
            && let Some(fields) = fields_of(field)
        {
            list_fields(fields, depth + 1, out);
        }
    }
}

/// The schema holding the fields listed under `field`: its own for an object, its entries' for a map or a list
/// of objects.
fn fields_of(field: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    if field.properties.as_ref().is_some_and(|p| !p.is_empty()) {
        return Some(field);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(item)) = field.items.as_ref() {
        return item
            .properties
            .as_ref()
            .is_some_and(|p| !p.is_empty())
            .then_some(item.as_ref());
    }
    match field.additional_properties.as_ref() {
        Some(JSONSchemaPropsOrBool::Schema(entry))
            if entry.properties.as_ref().is_some_and(|p| !p.is_empty()) =>
        {
            Some(entry)
        }
        _ => None,
    }
}

/// A short name of a field's type, as `kubectl explain` would say it, with the values of an enum.
fn type_name(field: &JSONSchemaProps) -> String {
    let name = match (field.type_.as_deref(), field.format.as_deref()) {
        (Some("object"), _) => match field.additional_properties.as_ref() {
            Some(JSONSchemaPropsOrBool::Schema(_)) if fields_of(field).is_some() => {
                "map of objects"
            }
            Some(_) => "map",
            None => "object",
        },
        (Some("array"), _) if fields_of(field).is_some() => "list of objects",
        (Some("string"), Some("date-time")) => "time",
        (Some(t), _) => t,
        (None, _) => "any JSON",
    };
    match field.enum_.as_deref() {
        Some(values) if !values.is_empty() => {
            let values: Vec<String> = values
                .iter()
                .map(|v| {
                    format!(
                        "`{}`",
                        v.0.as_str().map_or_else(|| v.0.to_string(), str::to_owned)
                    )
                })
                .collect();
            format!("{name}, one of {}", values.join(", "))
        }
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FlowRun;
    use kube::CustomResourceExt;

    fn steps_schema(root: &JSONSchemaProps) -> &JSONSchemaProps {
        &root.properties.as_ref().unwrap()["status"]
            .properties
            .as_ref()
            .unwrap()["steps"]
    }

    /// The first words of a field's own description: enough to find it in a listing.
    fn first_words(field: &JSONSchemaProps) -> String {
        let text = field.description.as_deref().unwrap_or_default();
        text.split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn flowrun_schema() -> JSONSchemaProps {
        FlowRun::crd().spec.versions[0]
            .schema
            .clone()
            .and_then(|s| s.open_api_v3_schema)
            .expect("the FlowRun CRD has a schema")
    }

    #[test]
    fn the_step_map_is_open_and_lists_every_field_of_an_entry_with_its_description() {
        let mut root = flowrun_schema();
        let Some(JSONSchemaPropsOrBool::Schema(typed_entry)) =
            steps_schema(&root).additional_properties.clone()
        else {
            panic!("the derived schema types status.steps as a map of objects");
        };
        assert!(open_map_entries(&mut root, &["status", "steps"]));
        let open = steps_schema(&root);
        assert_eq!(open.x_kubernetes_preserve_unknown_fields, Some(true));
        assert!(open.additional_properties.is_none() && open.properties.is_none());
        let description = open.description.as_deref().unwrap();
        assert!(
            description.starts_with("State of each step"),
            "the field's own description comes first: {description}"
        );
        for (name, field) in typed_entry.properties.as_ref().unwrap() {
            let first_words = first_words(field);
            assert!(
                description.contains(&format!("- `{name}` ("))
                    && description.contains(&first_words),
                "{name} ({first_words}) is missing from: {description}"
            );
        }
        // Nested: the fields of an error, and of a forEach instance (a map of objects), indented under them.
        assert!(description.contains("\n  - `type` (string): Type of the error"));
        assert!(description.contains("- `active` (map of objects)"));
        assert!(description.contains("\n    - `attempts` (integer)"));
        assert!(
            description
                .contains("- `outputs` (string): Outputs of Succeeded instances: one string")
        );
        assert!(description.contains("- `phase` (string, one of `Pending`, "));
    }

    #[test]
    fn the_status_keeps_the_named_fields_typed_and_lists_the_others_with_their_descriptions() {
        let mut root = flowrun_schema();
        let status = |root: &JSONSchemaProps| root.properties.as_ref().unwrap()["status"].clone();
        let typed = status(&root).properties.unwrap();
        let kept = ["signals", "phase"];
        assert!(open_object_except(&mut root, &["status"], &kept));
        let open = status(&root);
        assert_eq!(open.x_kubernetes_preserve_unknown_fields, Some(true));
        let still: Vec<&String> = open.properties.as_ref().unwrap().keys().collect();
        assert_eq!(still, ["phase", "signals"]);
        assert_eq!(
            open.properties.as_ref().unwrap()["signals"],
            typed["signals"]
        );
        let description = open.description.as_deref().unwrap();
        assert!(
            description.contains("Besides `signals`, `phase`, which have a schema of their own")
        );
        for (name, field) in &typed {
            let listed = description.contains(&format!("\n- `{name}` ("));
            assert_eq!(
                listed,
                !kept.contains(&name.as_str()),
                "{name}: {description}"
            );
            if listed {
                assert!(
                    description.contains(&first_words(field)),
                    "{name}: {description}"
                );
            }
        }
        // The fields of a condition are listed under it.
        assert!(
            description.contains("- `conditions` (list of objects)"),
            "{description}"
        );
        assert!(
            description.contains("\n  - `lastTransitionTime` (time)"),
            "{description}"
        );
        assert!(!open_object_except(
            &mut root,
            &["status", "noSuchField"],
            &kept
        ));
    }

    #[test]
    fn a_path_that_is_not_a_map_of_objects_is_left_alone() {
        let mut root = flowrun_schema();
        let before = root.clone();
        assert!(!open_map_entries(&mut root, &["status", "phase"]));
        assert!(!open_map_entries(&mut root, &["status", "noSuchField"]));
        assert_eq!(root, before);
    }
}
