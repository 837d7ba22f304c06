//! The CustomResourceDefinitions generated from the API types, as written to `crds/` by `make crds`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{FlowRun, WorkerPool};

/// First line of every generated file, so that nobody edits them by hand.
pub const HEADER: &str = "# Generated from operator/api by `make crds`; do not edit.\n";

/// Both CRDs, FlowRun first.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![FlowRun::crd(), WorkerPool::crd()]
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

/// Both CRDs as one multi-document YAML stream, as `sluice-operator crd` prints it.
pub fn all_yaml() -> Result<String, serde_saphyr::SerializeError> {
    let docs = all().iter().map(to_yaml).collect::<Result<Vec<_>, _>>()?;
    Ok(docs.join("---\n"))
}
