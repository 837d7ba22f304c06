//! The CustomResourceDefinitions generated from the API types, as written to `crds/` by `make crds`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;
use schemars::Schema;
use schemars::transform::{RecursiveTransform, Transform};

use crate::{CronFlow, FlowRun, FlowTemplate, WorkerPool};
use open::{open_map_entries, open_object_except};
use transform::{kubernetes_integer_format, unwrap_description};

pub mod open;
pub mod transform;

/// First line of every generated file, so that nobody edits them by hand.
pub const HEADER: &str = "# Generated from operator/api by `make crds`; do not edit.\n";

/// Every CRD (FlowRun, WorkerPool, CronFlow, FlowTemplate), with every schema finished by [`finish`]. Use these rather than
/// `FlowRun::crd()` and the like, which lack the finishing.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        flowrun(),
        finish(WorkerPool::crd()),
        finish(CronFlow::crd()),
        finish(FlowTemplate::crd()),
    ]
}

/// The FlowRun CRD, finished, with `status.steps` and most of the status open (see [`open`] for why).
fn flowrun() -> CustomResourceDefinition {
    let mut crd = finish(FlowRun::crd());
    for version in &mut crd.spec.versions {
        if let Some(props) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let opened = open_map_entries(props, &["status", "steps"]);
            assert!(
                opened,
                "the FlowRun schema has status.steps as a map of objects"
            );
            let opened = open_object_except(
                props,
                &["status"],
                &["signals", "phase", "template", "steps"],
            );
            assert!(opened, "the FlowRun schema has a status object");
        }
    }
    crd
}

/// Rewrites every node of the CRD's schemas, once, for what the derives cannot say once for every field:
/// - integer formats become the ones Kubernetes knows (`int32`, `int64`) instead of schemars' `uint32`,
///   `uint64`, ..., which `kubectl apply` warns about, with the Rust type's range kept as bounds
///   ([`kubernetes_integer_format`]);
/// - descriptions lose the line breaks of doc comments wrapped in the source, keeping paragraphs, list items
///   and code ([`unwrap_description`]), so that `kubectl explain` shows running text.
pub fn finish(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(props) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            *props = finish_schema(props);
        }
    }
    crd
}

fn finish_schema(props: &JSONSchemaProps) -> JSONSchemaProps {
    let value = serde_json::to_value(props).expect("a JSONSchemaProps serializes");
    let mut schema = Schema::try_from(value).expect("a JSONSchemaProps is a JSON object");
    RecursiveTransform(kubernetes_integer_format).transform(&mut schema);
    RecursiveTransform(unwrap_description).transform(&mut schema);
    serde_json::from_value(schema.to_value()).expect("the finished schema is a JSONSchemaProps")
}

/// File name of a CRD in `crds/`: `<plural>.<group>.yaml`, i.e. its `metadata.name`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as a YAML document, with the generated-file header.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::SerializeError> {
    Ok(format!("{HEADER}{}", serde_saphyr::to_string(crd)?))
}

/// The files of `crds/`: (file name, YAML text).
pub fn files() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    all()
        .iter()
        .map(|crd| Ok((file_name(crd), to_yaml(crd)?)))
        .collect()
}

/// Every CRD as one multi-document YAML stream, as `sluice-operator crd` prints it.
pub fn all_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let docs = all().iter().map(to_yaml).collect::<Result<Vec<_>, _>>()?;
    Ok(docs.join("---\n"))
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// The formats the API server recognizes (k8s.io/apiextensions-apiserver `GetUnrecognizedFormats`, v1.36),
    /// by the schema's type; any other draws `Warning: unrecognized format` at `kubectl apply`. String formats
    /// are compared with dashes removed, as the API server does (`date-time` is `datetime`).
    fn known_to_kubernetes(type_: Option<&str>, format: &str) -> bool {
        const STRING_FORMATS: [&str; 26] = [
            "bsonobjectid",
            "uri",
            "email",
            "hostname",
            "ipv4",
            "ipv6",
            "cidr",
            "mac",
            "uuid",
            "uuid3",
            "uuid4",
            "uuid5",
            "isbn",
            "isbn10",
            "isbn13",
            "creditcard",
            "ssn",
            "hexcolor",
            "rgbcolor",
            "byte",
            "password",
            "date",
            "duration",
            "datetime",
            "k8s-short-name",
            "k8s-long-name",
        ];
        match type_ {
            None | Some("string") => {
                STRING_FORMATS.contains(&format.replace('-', "").as_str())
                    || STRING_FORMATS.contains(&format)
            }
            Some("integer") => ["int32", "int64"].contains(&format),
            Some("number") => ["float", "double"].contains(&format),
            Some(_) => false,
        }
    }

    /// Every `format` anywhere in `node`, with its path and the `type` beside it.
    fn formats(node: &Value, path: &str, out: &mut Vec<(String, Option<String>, String)>) {
        match node {
            Value::Object(map) => {
                if let Some(format) = map.get("format").and_then(Value::as_str) {
                    let type_ = map.get("type").and_then(Value::as_str).map(str::to_owned);
                    out.push((path.to_owned(), type_, format.to_owned()));
                }
                for (key, child) in map {
                    formats(child, &format!("{path}.{key}"), out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    formats(child, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_format_is_known_to_kubernetes() {
        for crd in all() {
            let mut found = vec![];
            formats(&serde_json::to_value(&crd).unwrap(), "", &mut found);
            assert!(
                found
                    .iter()
                    .any(|(_, t, _)| t.as_deref() == Some("integer")),
                "the walk finds the integer fields of {}",
                file_name(&crd)
            );
            let unknown: Vec<_> = found
                .iter()
                .filter(|(_, t, f)| !known_to_kubernetes(t.as_deref(), f))
                .collect();
            assert!(
                unknown.is_empty(),
                "{}: formats the API server does not know (kubectl apply warns about them): {unknown:#?}",
                file_name(&crd)
            );
        }
        // The formats the raw derive output has, which the test must catch.
        for (type_, format) in [
            ("integer", "uint32"),
            ("integer", "uint64"),
            ("number", "int32"),
        ] {
            assert!(!known_to_kubernetes(Some(type_), format));
        }
        assert!(known_to_kubernetes(Some("string"), "date-time"));
    }

    /// The schema node at a path of property names (`[]` steps into array items).
    fn node(crd: &CustomResourceDefinition, path: &str) -> Value {
        let schema = serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .unwrap(),
        )
        .unwrap();
        let mut cur = schema;
        for part in path.split('.') {
            let (name, items) = match part.strip_suffix("[]") {
                Some(name) => (name, true),
                None => (part, false),
            };
            cur = cur["properties"][name].take();
            if items {
                cur = cur["items"].take();
            }
            assert!(cur.is_object(), "no property {name} in {path}");
        }
        cur
    }

    fn crd(kind: &str) -> CustomResourceDefinition {
        all()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .unwrap()
    }

    #[test]
    fn unsigned_fields_are_kubernetes_integers_with_their_range() {
        let fr = crd("FlowRun");
        // The FlowRun status is open in the CRD (see `open`): its integers as typed before that.
        let fr_status = finish(FlowRun::crd());
        let wp = crd("WorkerPool");
        let cases: [(&CustomResourceDefinition, &str, &str, f64, Option<f64>); 5] = [
            // u32 without a declared bound: int64 holds every u32 (the API server enforces the int32 range).
            (
                &fr_status,
                "status.retry.count",
                "int64",
                0.0,
                Some(4_294_967_295.0),
            ),
            (
                &wp,
                "status.queueDepth",
                "int64",
                0.0,
                Some(4_294_967_295.0),
            ),
            // u32 with bounds of its own that fit int32.
            (&wp, "spec.concurrency", "int32", 1.0, Some(1000.0)),
            (&fr, "spec.steps[].maxParallel", "int32", 1.0, Some(10000.0)),
            // u64.
            (&fr_status, "status.statusBytes", "int64", 0.0, None),
        ];
        for (crd, path, format, minimum, maximum) in cases {
            let n = node(crd, path);
            assert_eq!(n["type"], "integer", "{path}");
            assert_eq!(n["format"], format, "{path}");
            assert_eq!(n["minimum"].as_f64(), Some(minimum), "minimum of {path}");
            assert_eq!(n["maximum"].as_f64(), maximum, "maximum of {path}");
        }
    }

    /// Every description anywhere in `node`.
    fn descriptions(node: &Value, out: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                if let Some(d) = map.get("description").and_then(Value::as_str) {
                    out.push(d.to_owned());
                }
                map.values().for_each(|v| descriptions(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| descriptions(v, out)),
            _ => {}
        }
    }

    #[test]
    fn descriptions_are_paragraphs_not_source_lines() {
        // `template`'s doc comment spans three source lines.
        assert_eq!(
            node(&crd("WorkerPool"), "spec.template")["description"],
            "Pod template of the workers: a container running the user's worker binary (built on the Sluice SDK, \
             or the exec worker). The operator adds the broker URL, the pool name and a service-account token for \
             the broker."
        );
        assert_eq!(
            node(&crd("FlowRun"), "spec.defaults.maxOutputBytes")["description"],
            "Largest accepted output of a single step or forEach instance, in bytes of JSON (default 65536). A \
             larger output fails the attempt with a clear message, which keeps the FlowRun far below the API \
             server's object size limit."
        );
        for crd in all() {
            let mut found = vec![];
            descriptions(&serde_json::to_value(&crd).unwrap(), &mut found);
            assert!(found.len() > 20, "the walk finds the descriptions");
            for d in found {
                // A line break is left only where it separates paragraphs, list items or code.
                assert_eq!(
                    transform::unwrap_lines(&d),
                    d,
                    "a description with line breaks from the source"
                );
            }
        }
    }
}
