//! The local control plane (tests/controlplane) behaves like a real cluster: it is ready, it has the process
//! node, RBAC is enforced, service-account tokens are issued and reviewed, controllers run, and custom
//! resources with status and scale subresources are served.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice_e2e::{
    TestNamespace, hpa_condition_true, kubeconfig_path, kubectl, wait_deleted, wait_for,
};

const NODE: &str = "sluice-local";
const WAIT: Duration = Duration::from_secs(60);

/// A client that authenticates with `token` instead of the admin token of the kubeconfig.
async fn client_with_token(token: &str) -> Result<Client> {
    let path = tokio::task::spawn_blocking(kubeconfig_path).await??;
    let kubeconfig = Kubeconfig::read_from(&path)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.auth_info = serde_json::from_value::<AuthInfo>(json!({ "token": token }))?;
    Ok(Client::try_from(config)?)
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// A token for a ServiceAccount from the TokenRequest API; `spec` is a TokenRequestSpec as JSON.
async fn request_token(sas: &Api<ServiceAccount>, name: &str, spec: Value) -> Result<String> {
    let request: TokenRequest = serde_json::from_value(json!({ "spec": spec }))?;
    let created = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await?;
    let status = serde_json::to_value(&created)?;
    let token = status["status"]["token"]
        .as_str()
        .context("TokenRequest without a token")?;
    Ok(token.to_string())
}

async fn token_review(client: &Client, token: &str, audiences: &[&str]) -> Result<TokenReview> {
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review: TokenReview = serde_json::from_value(json!({
        "spec": { "token": token, "audiences": audiences }
    }))?;
    Ok(reviews.create(&PostParams::default(), &review).await?)
}

#[tokio::test]
async fn readyz_is_ok_through_the_real_kubectl() -> Result<()> {
    let readyz = kubectl(["get", "--raw", "/readyz"]).ok().await?;
    assert_eq!(readyz.trim(), "ok");
    let verbose = kubectl(["get", "--raw", "/readyz?verbose"]).ok().await?;
    assert!(verbose.contains("[+]etcd ok"), "{verbose}");
    // The binary is stamped with the Kubernetes version it was built from.
    let version: Value = serde_json::from_str(&kubectl(["version", "-o", "json"]).ok().await?)?;
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(server.starts_with("v1.36."), "server version {version}");
    Ok(())
}

#[tokio::test]
async fn the_process_node_is_listed_ready() -> Result<()> {
    let ns = TestNamespace::new("cp-node").await?;
    let nodes: Api<Node> = Api::all(ns.client());
    let is_ready = |node: Option<&Node>| {
        node.and_then(|n| n.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    wait_for(
        &nodes,
        NODE,
        is_ready,
        WAIT,
        &format!("node {NODE} to be Ready"),
    )
    .await?;

    let listed = kubectl(["get", "nodes", "--no-headers"]).ok().await?;
    let line = listed
        .lines()
        .find(|l| l.split_whitespace().next() == Some(NODE))
        .with_context(|| format!("kubectl get nodes does not list {NODE}:\n{listed}"))?;
    assert_eq!(line.split_whitespace().nth(1), Some("Ready"), "{line}");
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn rbac_denies_a_service_account_without_a_role() -> Result<()> {
    let ns = TestNamespace::new("cp-rbac").await?;
    let sas: Api<ServiceAccount> = ns.api();
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("nobody".into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    sas.create(&PostParams::default(), &sa).await?;
    let token = request_token(&sas, "nobody", json!({ "expirationSeconds": 600 })).await?;

    let as_nobody: Api<Pod> = Api::namespaced(client_with_token(&token).await?, ns.name());
    let err = as_nobody
        .list(&Default::default())
        .await
        .expect_err("a ServiceAccount without any role listed pods");
    assert_eq!(status_code(&err), Some(403), "{err}");

    // The token itself is fine: granting a Role makes the same request succeed.
    let roles: Api<Role> = ns.api();
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "pod-reader" },
                "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["list"] }]
            }))?,
        )
        .await?;
    let bindings: Api<RoleBinding> = ns.api();
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "nobody-reads-pods" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader" },
                "subjects": [{ "kind": "ServiceAccount", "name": "nobody", "namespace": ns.name() }]
            }))?,
        )
        .await?;
    // RBAC reaches the authorizer through an informer: a bounded poll for the grant to apply.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match as_nobody.list(&Default::default()).await {
            Ok(_) => break,
            Err(e) if status_code(&e) == Some(403) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => bail!("listing pods after the RoleBinding: {e}"),
        }
    }
    // Still only what the role allows.
    let cms: Api<ConfigMap> = Api::namespaced(client_with_token(&token).await?, ns.name());
    let err = cms
        .list(&Default::default())
        .await
        .expect_err("pod-reader listed configmaps");
    assert_eq!(status_code(&err), Some(403), "{err}");
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_pod_bound_token_is_reviewed_and_names_its_pod() -> Result<()> {
    let ns = TestNamespace::new("cp-token").await?;
    let client = ns.client();
    let sas: Api<ServiceAccount> = ns.api();
    sas.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: ObjectMeta {
                name: Some("worker".into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        },
    )
    .await?;
    // The pod is assigned to a node that does not exist, so no kubelet ever runs it: only its identity
    // matters here.
    let pods: Api<Pod> = ns.api();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "token-holder" },
        "spec": {
            "nodeName": "sluice-e2e-no-such-node",
            "serviceAccountName": "worker",
            "containers": [{ "name": "main", "image": "sluice/none:dev" }]
        }
    }))?;
    let pod = pods.create(&PostParams::default(), &pod).await?;
    let uid = pod.metadata.uid.clone().context("pod without uid")?;

    let audience = "sluice-e2e";
    let spec = json!({
        "audiences": [audience],
        "expirationSeconds": 600,
        "boundObjectRef": { "apiVersion": "v1", "kind": "Pod", "name": "token-holder", "uid": uid }
    });
    let token = request_token(&sas, "worker", spec).await?;

    let claims = sluice_e2e::jwt_claims(&token)?;
    assert_eq!(claims["aud"], json!([audience]), "{claims}");
    assert_eq!(
        claims["iss"], "https://kubernetes.default.svc.cluster.local",
        "{claims}"
    );
    assert_eq!(claims["kubernetes.io"]["namespace"], ns.name(), "{claims}");
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["name"], "worker",
        "{claims}"
    );
    assert_eq!(
        claims["kubernetes.io"]["pod"]["name"], "token-holder",
        "{claims}"
    );
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"],
        uid.as_str(),
        "{claims}"
    );

    let review = token_review(&client, &token, &[audience]).await?;
    let status = review.status.context("TokenReview without status")?;
    assert_eq!(status.authenticated, Some(true), "{status:?}");
    let user = status.user.context("authenticated without a user")?;
    assert_eq!(
        user.username.as_deref(),
        Some(format!("system:serviceaccount:{}:worker", ns.name()).as_str())
    );
    let extra = user.extra.unwrap_or_default();
    assert_eq!(
        extra.get("authentication.kubernetes.io/pod-name"),
        Some(&vec!["token-holder".to_string()]),
        "{extra:?}"
    );

    // Audiences are checked...
    let wrong = token_review(&client, &token, &["someone-else"]).await?;
    assert_ne!(wrong.status.and_then(|s| s.authenticated), Some(true));

    // ...and so is the bound pod: once it is gone, the token no longer authenticates.
    pods.delete("token-holder", &DeleteParams::default().grace_period(0))
        .await?;
    wait_deleted(&pods, "token-holder", WAIT, "the token's pod to be deleted").await?;
    // The API server caches successful token authentications for 10s: a bounded poll.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let after = token_review(&client, &token, &[audience]).await?;
        if after.status.and_then(|s| s.authenticated) != Some(true) {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the token still authenticates 30s after its pod was deleted"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn the_garbage_collector_deletes_dependents() -> Result<()> {
    let ns = TestNamespace::new("cp-gc").await?;
    let cms: Api<ConfigMap> = ns.api();
    let owner = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            },
        )
        .await?;
    let dependent = ConfigMap {
        metadata: ObjectMeta {
            name: Some("dependent".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "owner".into(),
                uid: owner.metadata.uid.clone().context("owner without uid")?,
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    cms.create(&PostParams::default(), &dependent).await?;
    cms.delete("owner", &DeleteParams::background()).await?;
    wait_deleted(
        &cms,
        "dependent",
        WAIT,
        "the garbage collector to delete the dependent",
    )
    .await?;
    ns.cleanup().await?;
    Ok(())
}

/// A tiny CRD with status and scale subresources, in a group of its own per test run.
fn widget_crd(group: &str) -> Result<CustomResourceDefinition> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": format!("widgets.{group}") },
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList" },
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": { "type": "object", "properties": {
                            "replicas": { "type": "integer", "minimum": 0 }
                        }},
                        "status": { "type": "object", "properties": {
                            "replicas": { "type": "integer" },
                            "selector": { "type": "string" }
                        }}
                    }
                }},
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                        "labelSelectorPath": ".status.selector"
                    }
                }
            }]
        }
    }))?)
}

#[tokio::test]
async fn a_crd_with_status_and_scale_subresources_is_served() -> Result<()> {
    let ns = TestNamespace::new("cp-crd").await?;
    let client = ns.client();
    let group = format!("{}.e2e.sluice.dev", ns.name());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_name = format!("widgets.{group}");
    crds.create(&PostParams::default(), &widget_crd(&group)?)
        .await?;
    let established = |crd: Option<&CustomResourceDefinition>| {
        crd.and_then(|c| c.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
    };
    let result = run_widget_checks(&ns, &client, &group, &crds, &crd_name, established).await;
    crds.delete(&crd_name, &DeleteParams::default()).await?;
    result?;
    ns.cleanup().await?;
    Ok(())
}

async fn run_widget_checks(
    ns: &TestNamespace,
    client: &Client,
    group: &str,
    crds: &Api<CustomResourceDefinition>,
    crd_name: &str,
    established: impl kube::runtime::wait::Condition<CustomResourceDefinition>,
) -> Result<()> {
    wait_for(
        crds,
        crd_name,
        established,
        WAIT,
        &format!("CRD {crd_name} to be Established"),
    )
    .await?;

    let resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", "Widget"), "widgets");
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &resource);
    let mut widget = DynamicObject::new("w", &resource);
    widget.data = json!({ "spec": { "replicas": 2 } });
    widgets.create(&PostParams::default(), &widget).await?;

    // /scale reflects spec.replicas and writes through to it.
    let scale = widgets.get_scale("w").await?;
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2));
    widgets
        .patch_scale(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 3 } })),
        )
        .await?;
    let stored = widgets.get("w").await?;
    assert_eq!(stored.data["spec"]["replicas"], 3);

    // The real kubectl scales it too.
    kubectl([
        "scale",
        "-n",
        ns.name(),
        &format!("widgets.{group}/w"),
        "--replicas=4",
    ])
    .ok()
    .await?;
    assert_eq!(widgets.get("w").await?.data["spec"]["replicas"], 4);

    // Status only changes through /status.
    widgets
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "replicas": 99 } })),
        )
        .await?;
    ensure!(
        widgets.get("w").await?.data["status"]["replicas"].is_null(),
        "the main resource wrote status"
    );
    widgets
        .patch_status(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "replicas": 4, "selector": "app=widget" } })),
        )
        .await?;
    let raw = kubectl([
        "get",
        "--raw",
        &format!("/apis/{group}/v1/namespaces/{}/widgets/w/scale", ns.name()),
    ])
    .ok()
    .await?;
    let scale: Value = serde_json::from_str(&raw)?;
    assert_eq!(scale["kind"], "Scale", "{scale}");
    assert_eq!(scale["spec"]["replicas"], 4, "{scale}");
    assert_eq!(scale["status"]["replicas"], 4, "{scale}");
    assert_eq!(scale["status"]["selector"], "app=widget", "{scale}");

    // The horizontal-pod-autoscaler controller reaches the widget through /scale and, with no metrics server,
    // reports that it cannot get metrics instead of failing.
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    hpas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": { "name": "w" },
            "spec": {
                "scaleTargetRef": { "apiVersion": format!("{group}/v1"), "kind": "Widget", "name": "w" },
                "minReplicas": 1,
                "maxReplicas": 5,
                "metrics": [{ "type": "Resource", "resource": {
                    "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 50 }
                }}]
            }
        }))?,
    )
    .await?;
    let able_to_scale = hpa_condition_true("AbleToScale");
    wait_for(
        &hpas,
        "w",
        able_to_scale,
        WAIT,
        "the HPA controller to read the widget's scale",
    )
    .await?;
    Ok(())
}
