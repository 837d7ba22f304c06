//! Worker authentication against the real API server: the operator's TokenReview authenticator turns a pod's
//! projected token (Sluice audience) into namespace, pod and WorkerPool; anything else is refused with the right
//! error; the broker answers 401/403 from it; and the ClusterRoles of `deploy/sluice.yaml` (rendered from the chart) are enough for it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice_e2e::{TestNamespace, http_request, kubeconfig_path, kubectl, repo_root};
use sluice_operator::broker::Broker;
use sluice_operator::broker::auth::{AuthError, Authenticator, WorkerIdentity};
use sluice_operator::broker::sink::{Claimed, Recorded, Report, ResultSink, SinkError};
use sluice_operator::broker::tokenreview::{POOL_LABEL, TokenReviewAuthenticator};

/// The audience workers' projected tokens carry (`sluice_wire::TOKEN_AUDIENCE`).
const AUDIENCE: &str = "sluice-broker";

/// A namespace with a worker ServiceAccount and two pods that never run (assigned to a node that does not
/// exist): `worker-a`, labelled as a worker of pool `a`, and `plain`, with no pool label.
struct Fixture {
    ns: TestNamespace,
    sas: Api<ServiceAccount>,
}

impl Fixture {
    async fn new(prefix: &str) -> Result<Self> {
        let ns = TestNamespace::new(prefix).await?;
        let sas: Api<ServiceAccount> = ns.api();
        sas.create(&PostParams::default(), &service_account("worker"))
            .await?;
        let pods: Api<Pod> = ns.api();
        for (name, labels) in [
            ("worker-a", json!({ POOL_LABEL: "a" })),
            ("plain", json!({ "app": "not-a-worker" })),
        ] {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": { "name": name, "labels": labels },
                "spec": {
                    "nodeName": "sluice-e2e-no-such-node",
                    "serviceAccountName": "worker",
                    "containers": [{ "name": "main", "image": "sluice/none:dev" }]
                }
            }))?;
            pods.create(&PostParams::default(), &pod).await?;
        }
        Ok(Self { ns, sas })
    }

    /// Deletes the namespace. Its pods are bound to a node no kubelet runs, so nobody would ever confirm
    /// their graceful deletion: they are deleted at once first (else the namespace stays Terminating).
    async fn cleanup(self) -> Result<()> {
        let pods: Api<Pod> = self.ns.api();
        for name in ["worker-a", "plain"] {
            match pods
                .delete(name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.ns.cleanup().await?;
        Ok(())
    }

    /// A token of the `worker` ServiceAccount for `audience`, bound to `pod` when given.
    async fn token(&self, audience: &str, pod: Option<&str>) -> Result<String> {
        let mut spec = json!({ "audiences": [audience], "expirationSeconds": 600 });
        if let Some(pod) = pod {
            let pods: Api<Pod> = self.ns.api();
            let uid = pods
                .get(pod)
                .await?
                .metadata
                .uid
                .context("pod without uid")?;
            spec["boundObjectRef"] =
                json!({ "apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid });
        }
        request_token(&self.sas, "worker", spec).await
    }

    fn authenticator(&self) -> TokenReviewAuthenticator {
        TokenReviewAuthenticator::new(self.ns.client())
    }
}

fn service_account(name: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    }
}

async fn request_token(sas: &Api<ServiceAccount>, name: &str, spec: Value) -> Result<String> {
    let request: TokenRequest = serde_json::from_value(json!({ "spec": spec }))?;
    let created = sas
        .create_token_request(name, &PostParams::default(), &request)
        .await?;
    created
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .context("TokenRequest without a token")
}

/// A client that authenticates with `token` instead of the admin token of the kubeconfig.
async fn client_with_token(token: &str) -> Result<Client> {
    let path = tokio::task::spawn_blocking(kubeconfig_path).await??;
    let kubeconfig = Kubeconfig::read_from(&path)?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.auth_info = serde_json::from_value::<AuthInfo>(json!({ "token": token }))?;
    Ok(Client::try_from(config)?)
}

fn kind(err: &AuthError) -> &'static str {
    match err {
        AuthError::Unauthorized(_) => "unauthorized",
        AuthError::Forbidden(_) => "forbidden",
        AuthError::Unavailable(_) => "unavailable",
    }
}

#[tokio::test]
async fn a_pod_bound_sluice_token_names_namespace_pod_and_pool() -> Result<()> {
    let fx = Fixture::new("auth-ok").await?;
    let auth = fx.authenticator();
    let token = fx.token(AUDIENCE, Some("worker-a")).await?;
    let identity = auth.authenticate(Some(&token)).await?;
    assert_eq!(
        identity,
        WorkerIdentity {
            namespace: Some(fx.ns.name().to_owned()),
            pod: Some("worker-a".into()),
            pool: Some("a".into()),
        }
    );
    assert!(identity.may_serve(fx.ns.name(), "a"));
    assert!(!identity.may_serve(fx.ns.name(), "b"));
    assert!(!identity.may_serve("other-namespace", "a"));
    // Served again (from the cache) with the same answer.
    assert_eq!(auth.authenticate(Some(&token)).await?, identity);
    fx.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn another_audience_a_garbage_token_or_none_is_unauthorized() -> Result<()> {
    let fx = Fixture::new("auth-401").await?;
    let auth = fx.authenticator();
    let other_audience = fx.token("someone-else", Some("worker-a")).await?;
    // The same pod's token for the API server's own audience is no broker token either.
    let api_audience =
        request_token(&fx.sas, "worker", json!({ "expirationSeconds": 600 })).await?;
    for (what, token) in [
        (
            "a token for another audience",
            Some(other_audience.as_str()),
        ),
        (
            "a token for the API server's audience",
            Some(api_audience.as_str()),
        ),
        ("a garbage token", Some("not-a-token")),
        (
            "a JWT-shaped garbage token",
            Some("eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        ),
        ("no token", None),
    ] {
        let err = auth
            .authenticate(token)
            .await
            .err()
            .with_context(|| format!("{what} was accepted"))?;
        assert_eq!(kind(&err), "unauthorized", "{what}: {err}");
    }
    fx.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_pod_without_the_pool_label_or_an_unbound_token_is_forbidden() -> Result<()> {
    let fx = Fixture::new("auth-403").await?;
    let auth = fx.authenticator();

    let plain = fx.token(AUDIENCE, Some("plain")).await?;
    let err = auth.authenticate(Some(&plain)).await.unwrap_err();
    assert_eq!(kind(&err), "forbidden", "{err}");
    assert!(
        err.to_string().contains(&format!(
            "pod {}/plain is not a worker of any WorkerPool",
            fx.ns.name()
        )),
        "{err}"
    );

    let unbound = fx.token(AUDIENCE, None).await?;
    let err = auth.authenticate(Some(&unbound)).await.unwrap_err();
    assert_eq!(kind(&err), "forbidden", "{err}");
    assert!(err.to_string().contains("not bound to a pod"), "{err}");
    fx.cleanup().await?;
    Ok(())
}

/// A sink the broker never reaches in these tests (no task is ever queued).
struct NoSink;

impl ResultSink for NoSink {
    fn record(&self, _report: Report) -> BoxFuture<'static, Result<Recorded, SinkError>> {
        Box::pin(async { Err(SinkError::Unavailable("no sink in this test".into())) })
    }

    fn claimed(&self, _claims: Vec<Claimed>) {}
}

/// POSTs a claim for `pool` to the broker at `addr` and returns the HTTP status code.
async fn claim(addr: std::net::SocketAddr, token: Option<&str>, pool: &str) -> Result<u16> {
    let body = json!({
        "pool": pool, "worker": "worker-a", "handlers": ["h"], "capacity": 1, "waitSeconds": 0
    })
    .to_string();
    ensure!(addr.ip().is_loopback(), "the broker listens on loopback");
    let status = http_request(addr.port(), "POST", "/v1/claim", token, &body)
        .await?
        .status;
    Ok(status)
}

#[tokio::test]
async fn the_broker_answers_401_and_403_from_the_real_token_review() -> Result<()> {
    let fx = Fixture::new("auth-broker").await?;
    let broker = Broker::new(Arc::new(NoSink), Arc::new(fx.authenticator()));
    broker.set_ready(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(axum::serve(listener, broker.router()).into_future());

    let pool_a = fx.token(AUDIENCE, Some("worker-a")).await?;
    let plain = fx.token(AUDIENCE, Some("plain")).await?;
    assert_eq!(claim(addr, None, "a").await?, 401, "no token");
    assert_eq!(
        claim(addr, Some("garbage"), "a").await?,
        401,
        "garbage token"
    );
    assert_eq!(
        claim(addr, Some(&pool_a), "b").await?,
        403,
        "pool a's pod claiming for pool b"
    );
    assert_eq!(
        claim(addr, Some(&plain), "a").await?,
        403,
        "a pod of no pool"
    );
    assert_eq!(
        claim(addr, Some(&pool_a), "a").await?,
        200,
        "pool a's pod claiming for pool a"
    );

    server.abort();
    fx.cleanup().await?;
    Ok(())
}

/// The objects of `deploy/sluice.yaml`, as kubectl parses them.
async fn deploy_rbac() -> Result<Vec<Value>> {
    let file = repo_root().join("deploy/sluice.yaml");
    let file = file
        .to_str()
        .context("non-UTF-8 repository path")?
        .to_owned();
    let out = kubectl(["create", "--dry-run=client", "-o", "json", "-f", &file])
        .ok()
        .await?;
    // One JSON document per object (or a List, depending on the kubectl version).
    let mut objects = Vec::new();
    for doc in serde_json::Deserializer::from_str(&out).into_iter::<Value>() {
        let doc = doc?;
        match doc["items"].as_array() {
            Some(items) => objects.extend(items.iter().cloned()),
            None => objects.push(doc),
        }
    }
    Ok(objects)
}

#[tokio::test]
async fn deploy_rbac_is_enough_to_authenticate_workers() -> Result<()> {
    let fx = Fixture::new("auth-rbac").await?;
    let client = fx.ns.client();
    let objects = deploy_rbac().await?;
    let cluster_roles: Vec<ClusterRole> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .map(|o| serde_json::from_value(o.clone()))
        .collect::<Result<_, _>>()?;
    ensure!(
        !cluster_roles.is_empty(),
        "deploy/sluice.yaml has no ClusterRole"
    );

    // The operator's ClusterRoles, under names of this test, bound to a ServiceAccount of this namespace.
    fx.sas
        .create(&PostParams::default(), &service_account("operator"))
        .await?;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let mut created = Vec::new();
    for role in &cluster_roles {
        let name = format!(
            "{}-{}",
            fx.ns.name(),
            role.metadata.name.as_deref().unwrap_or("role")
        );
        let copy = ClusterRole {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            rules: role.rules.clone(),
            ..ClusterRole::default()
        };
        roles.create(&PostParams::default(), &copy).await?;
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": { "name": name },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name },
            "subjects": [{ "kind": "ServiceAccount", "name": "operator", "namespace": fx.ns.name() }]
        }))?;
        bindings.create(&PostParams::default(), &binding).await?;
        created.push(name);
    }

    let result = async {
        let operator_token =
            request_token(&fx.sas, "operator", json!({ "expirationSeconds": 600 })).await?;
        let operator = client_with_token(&operator_token).await?;
        let auth = TokenReviewAuthenticator::new(operator);
        let worker = fx.token(AUDIENCE, Some("worker-a")).await?;
        // RBAC changes reach the authorizer's cache quickly but not instantly: allow a few seconds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match auth.authenticate(Some(&worker)).await {
                Ok(identity) => {
                    assert_eq!(identity.pool.as_deref(), Some("a"));
                    assert_eq!(identity.pod.as_deref(), Some("worker-a"));
                    return anyhow::Ok(());
                }
                Err(AuthError::Unavailable(e)) if tokio::time::Instant::now() < deadline => {
                    eprintln!("not yet: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    anyhow::bail!("the operator's RBAC does not let it authenticate a worker: {e}")
                }
            }
        }
    }
    .await;

    for name in created {
        let _ = bindings.delete(&name, &DeleteParams::default()).await;
        let _ = roles.delete(&name, &DeleteParams::default()).await;
    }
    result?;
    fx.cleanup().await?;
    Ok(())
}
