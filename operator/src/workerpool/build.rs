//! The Deployment of a WorkerPool, built purely from the pool and the operator's configuration.
//!
//! What the builder adds to `spec.template`:
//! - the label [`POOL_LABEL`]`=<pool>` on the pods, and the Deployment's selector on exactly that label;
//! - in every container: `SLUICE_BROKER_URL`, `SLUICE_POOL`, `SLUICE_CONCURRENCY`, `POD_NAME` and
//!   `POD_NAMESPACE` (downward API), and `SLUICE_TOKEN_PATH` pointing into a projected service-account token
//!   (audience [`sluice_wire::TOKEN_AUDIENCE`], one hour, rotated by the kubelet) mounted read-only at
//!   [`TOKEN_MOUNT_PATH`];
//! - an owner reference to the pool (controller, blocking deletion), so deleting the pool deletes the
//!   Deployment and its pods (garbage collection);
//! - the annotation [`SPEC_HASH_ANNOTATION`], a digest of everything above except `replicas`, so the controller
//!   can tell from its cache whether an apply would change anything (and skip the write when not).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, PodTemplateSpec, ProjectedVolumeSource,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};
use sluice_wire::env;

use super::Error;
use crate::api::WorkerPool;

/// Label naming the pool of a worker pod (the broker authorizes workers by it).
pub const POOL_LABEL: &str = "sluice.dev/pool";
/// Annotation with the digest of the Deployment as built, `replicas` excluded.
pub const SPEC_HASH_ANNOTATION: &str = "sluice.dev/spec-hash";
/// Name of the projected token volume added to worker pods.
pub const TOKEN_VOLUME: &str = "sluice-broker-token";
/// Where the token volume is mounted in every container.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/sluice";
/// File name of the token inside [`TOKEN_MOUNT_PATH`].
pub const TOKEN_FILE: &str = "token";
/// Lifetime asked for the projected token; the kubelet renews it at 80%.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// `POD_NAMESPACE`, set from the downward API.
pub const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";

/// The label selector string of a pool's pods (`status.selector`, read by an HPA through the scale
/// subresource).
pub fn selector_string(pool_name: &str) -> String {
    format!("{POOL_LABEL}={pool_name}")
}

/// The Deployment of `pool` with `replicas` pods, talking to the broker at `broker_url`. Its name is the
/// pool's name.
pub fn build_deployment(
    pool: &WorkerPool,
    broker_url: &str,
    replicas: i32,
) -> Result<Deployment, Error> {
    let name = pool
        .metadata
        .name
        .clone()
        .ok_or_else(|| Error::InvalidSpec("the WorkerPool has no name".into()))?;
    let namespace = pool
        .metadata
        .namespace
        .clone()
        .ok_or_else(|| Error::InvalidSpec("the WorkerPool has no namespace".into()))?;
    let mut owner = pool.controller_owner_ref(&()).ok_or_else(|| {
        Error::InvalidSpec("the WorkerPool has no uid yet (not read from the API server)".into())
    })?;
    // Foreground deletion of the pool waits for the Deployment.
    owner.block_owner_deletion = Some(true);
    let template = build_template(pool, &name, broker_url)?;
    let selector = BTreeMap::from([(POOL_LABEL.to_owned(), name.clone())]);

    let mut deployment = Deployment {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace),
            labels: Some(selector.clone()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: None,
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    };
    let hash = spec_hash(&deployment)?;
    deployment
        .annotations_mut()
        .insert(SPEC_HASH_ANNOTATION.to_owned(), hash);
    if let Some(spec) = deployment.spec.as_mut() {
        spec.replicas = Some(replicas);
    }
    Ok(deployment)
}

/// Digest (SHA-256, first 16 hex digits) of a Deployment's JSON. k8s-openapi serializes fields in a fixed order
/// and maps as sorted `BTreeMap`s, so equal objects give equal digests.
fn spec_hash(deployment: &Deployment) -> Result<String, Error> {
    let bytes = serde_json::to_vec(deployment)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    Ok(digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn build_template(
    pool: &WorkerPool,
    name: &str,
    broker_url: &str,
) -> Result<PodTemplateSpec, Error> {
    let mut template = pool.spec.template.clone();
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    match labels.get(POOL_LABEL) {
        Some(existing) if existing != name => {
            return Err(Error::InvalidSpec(format!(
                "spec.template.metadata.labels[{POOL_LABEL}] is {existing:?}, but the pool is {name:?}: remove the label (the operator sets it)"
            )));
        }
        _ => {
            labels.insert(POOL_LABEL.to_owned(), name.to_owned());
        }
    }
    let pod = template.spec.as_mut().ok_or_else(|| {
        Error::InvalidSpec("spec.template.spec is missing: give the worker container".into())
    })?;
    if pod.containers.is_empty() {
        return Err(Error::InvalidSpec(
            "spec.template.spec.containers is empty: give the worker container".into(),
        ));
    }

    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != TOKEN_VOLUME);
    volumes.push(token_volume());

    let concurrency = pool.spec.concurrency.unwrap_or(1).to_string();
    let injected = [
        plain(env::BROKER_URL, broker_url),
        plain(env::POOL, name),
        plain(env::CONCURRENCY, &concurrency),
        field(env::POD_NAME, "metadata.name"),
        field(POD_NAMESPACE_ENV, "metadata.namespace"),
        plain(env::TOKEN_PATH, &format!("{TOKEN_MOUNT_PATH}/{TOKEN_FILE}")),
    ];
    for container in &mut pod.containers {
        inject(container, &injected);
    }
    Ok(template)
}

/// Sets the injected variables (replacing same-named ones the user wrote) and mounts the token.
fn inject(container: &mut Container, injected: &[EnvVar]) {
    let vars = container.env.get_or_insert_with(Vec::new);
    vars.retain(|v| !injected.iter().any(|i| i.name == v.name));
    vars.extend(injected.iter().cloned());
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    mounts.retain(|m| m.name != TOKEN_VOLUME && m.mount_path != TOKEN_MOUNT_PATH);
    mounts.push(VolumeMount {
        name: TOKEN_VOLUME.to_owned(),
        mount_path: TOKEN_MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
}

fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(sluice_wire::TOKEN_AUDIENCE.to_owned()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: TOKEN_FILE.to_owned(),
                }),
                ..VolumeProjection::default()
            }]),
            default_mode: None,
        }),
        ..Volume::default()
    }
}

fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn pool(yaml: &str) -> WorkerPool {
        serde_saphyr::from_str(yaml).expect("fixture parses as a WorkerPool")
    }

    /// Builds the fixture pool and compares with the expected Deployment (set `SLUICE_UPDATE_FIXTURES=1` to
    /// rewrite the expectation after a deliberate change, then review the diff).
    fn check_fixture(name: &str, input: &str, expected: &str, replicas: i32) {
        let built = build_deployment(&pool(input), "http://broker.test:8081", replicas).unwrap();
        let got: Value = serde_json::to_value(&built).unwrap();
        if std::env::var_os("SLUICE_UPDATE_FIXTURES").is_some() {
            let path = format!(
                "{}/src/workerpool/fixtures/{name}.deployment.yaml",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::write(&path, serde_saphyr::to_string(&got).unwrap()).unwrap();
            return;
        }
        let want: Value = serde_saphyr::from_str(expected).unwrap();
        assert_eq!(
            got,
            want,
            "fixture {name}: got\n{}",
            serde_saphyr::to_string(&got).unwrap()
        );
    }

    #[test]
    fn basic_pool_fixture() {
        check_fixture(
            "basic",
            include_str!("fixtures/basic.pool.yaml"),
            include_str!("fixtures/basic.deployment.yaml"),
            2,
        );
    }

    #[test]
    fn user_env_labels_and_volumes_are_kept_and_ours_win() {
        check_fixture(
            "override",
            include_str!("fixtures/override.pool.yaml"),
            include_str!("fixtures/override.deployment.yaml"),
            0,
        );
    }

    #[test]
    fn hash_ignores_replicas_and_follows_the_template() {
        let p = pool(include_str!("fixtures/basic.pool.yaml"));
        let hash = |p: &WorkerPool, r| {
            build_deployment(p, "http://b", r)
                .unwrap()
                .annotations()
                .get(SPEC_HASH_ANNOTATION)
                .cloned()
                .unwrap()
        };
        assert_eq!(hash(&p, 1), hash(&p, 7));
        let mut edited = p.clone();
        edited.spec.template.spec.as_mut().unwrap().containers[0].image = Some("other:2".into());
        assert_ne!(hash(&p, 1), hash(&edited, 1));
    }

    #[test]
    fn refuses_templates_it_cannot_run() {
        let mut p = pool(include_str!("fixtures/basic.pool.yaml"));
        p.spec
            .template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POOL_LABEL.into(), "someone-else".into());
        let err = build_deployment(&p, "http://b", 1).unwrap_err();
        assert!(err.to_string().contains("someone-else"), "{err}");

        let mut p = pool(include_str!("fixtures/basic.pool.yaml"));
        p.metadata.uid = None;
        assert!(matches!(
            build_deployment(&p, "http://b", 1),
            Err(Error::InvalidSpec(_))
        ));
        let mut p = pool(include_str!("fixtures/basic.pool.yaml"));
        p.spec.template.spec.as_mut().unwrap().containers.clear();
        assert!(matches!(
            build_deployment(&p, "http://b", 1),
            Err(Error::InvalidSpec(_))
        ));
    }

    #[test]
    fn selector_string_matches_the_pod_label() {
        assert_eq!(selector_string("orders"), "sluice.dev/pool=orders");
    }
}
