//! The operator's external metrics API on the local control plane: the API server's aggregator reaches it over
//! HTTPS (front-proxy client certificate, request-header authentication, SubjectAccessReview), and the real
//! HorizontalPodAutoscaler controller of kube-controller-manager scales a WorkerPool on `sluice_queue_depth`
//! through the pool's scale subresource, with no metrics adapter.
//!
//! The operator (FlowRun runtime, WorkerPool controller, external metrics server) runs in this test process;
//! the queue is filled by a FlowRun whose handler no worker serves.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice_e2e::{
    InProcessOperator, InProcessOptions, TestNamespace, api_service_available, build_binaries,
    cluster, hpa_condition_true, init_test_logs, install_crds, kubeconfig_path, wait_for,
};
use sluice_operator::api::{FlowRun, WorkerPool};
use sluice_operator::external_metrics::tls::api_service_name;

/// Reads the metric through the API server as `client`: status and body.
async fn read_metric(client: &Client, namespace: &str, pool: &str) -> Result<(u16, Value)> {
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/sluice_queue_depth?labelSelector=pool%3D{pool}"
    );
    let request = http::Request::get(&path).body(Vec::new())?;
    match client.request::<Value>(request).await {
        Ok(body) => Ok((200, body)),
        Err(kube::Error::Api(e)) => Ok((e.code, json!({"message": e.message}))),
        Err(e) => Err(e.into()),
    }
}

fn replicas_are(n: i32) -> impl Fn(Option<&Deployment>) -> bool {
    move |d: Option<&Deployment>| {
        d.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas) == Some(n)
    }
}

#[tokio::test]
async fn an_hpa_scales_a_pool_on_its_queue_depth_from_the_operators_external_metrics_api()
-> Result<()> {
    init_test_logs();
    let client = cluster().await?;
    install_crds(&client).await?;
    build_binaries().await?;
    let ns = TestNamespace::new("wp-hpa").await?;
    let mut op = InProcessOperator::start_with(
        ns.client(),
        ns.name(),
        InProcessOptions::default()
            .worker_pools()
            .external_metrics(),
    )
    .await?;
    let result = scale(&client, &ns, &op).await;
    op.unregister_external_metrics().await?;
    result?;
    ns.cleanup().await?;
    Ok(())
}

async fn scale(client: &Client, ns: &TestNamespace, op: &InProcessOperator) -> Result<()> {
    let registered = Instant::now();
    let services: Api<APIService> = Api::all(client.clone());
    wait_for(
        &services,
        &api_service_name(),
        api_service_available,
        Duration::from_secs(60),
        "the aggregator to find the external metrics API available",
    )
    .await?;
    println!(
        "FIGURE external metrics APIService Available {:?} after registration",
        registered.elapsed()
    );

    let pools: Api<WorkerPool> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let pool: WorkerPool = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "WorkerPool",
        "metadata": {"name": "ext"},
        "spec": {
            // The scale subresource needs spec.replicas to exist before an HPA can read it.
            "replicas": 1,
            "scaling": {"mode": "External"},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "worker", "image": "sluice/test-shell:dev",
                                "args": ["-c", "exec sleep 3600"]}]
            }}
        }
    }))?;
    pools.create(&PostParams::default(), &pool).await?;
    wait_for(
        &deployments,
        "ext",
        replicas_are(1),
        Duration::from_secs(60),
        "pool ext at 1 replica",
    )
    .await?;

    // Through the aggregator: the admin reads 0; a user without access is refused by the operator's
    // SubjectAccessReview (the aggregator passes the user on in request headers).
    let (code, body) = read_metric(client, ns.name(), "ext").await?;
    ensure!(code == 200, "admin read: {code} {body}");
    assert_eq!(body["kind"], "ExternalMetricValueList", "{body}");
    assert_eq!(body["items"][0]["value"], "0", "{body}");
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig_path()?)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{}:default", ns.name()));
    let stranger = Client::try_from(config)?;
    let (code, body) = read_metric(&stranger, ns.name(), "ext").await?;
    ensure!(
        code == 403,
        "a service account without access should be refused: {code} {body}"
    );

    // The HPA on the queue depth: 10 queued steps per worker.
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "ext"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "sluice.dev/v1alpha1", "kind": "WorkerPool", "name": "ext"},
            "minReplicas": 1, "maxReplicas": 6,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": "sluice_queue_depth", "selector": {"matchLabels": {"pool": "ext"}}},
                "target": {"type": "AverageValue", "averageValue": "10"}
            }}]
        }
    }))?;
    hpas.create(&PostParams::default(), &hpa).await?;
    wait_for(
        &hpas,
        "ext",
        hpa_condition_true("ScalingActive"),
        Duration::from_secs(60),
        "the HPA to read the external metric (ScalingActive True)",
    )
    .await?;

    // 40 steps no worker serves: the HPA should want ceil(40 / 10) = 4 workers.
    let flows: Api<FlowRun> = ns.api();
    let steps: Vec<Value> = (0..40)
        .map(|i| json!({"name": format!("s{i}"), "handler": "nobody-serves-this"}))
        .collect();
    let fr: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "load"},
        "spec": {"pool": "ext", "steps": steps}
    }))?;
    flows.create(&PostParams::default(), &fr).await?;
    let started = Instant::now();
    while op.broker().demand(ns.name(), "ext").queued < 40 {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the 40 steps never reached the queue"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queue_full = Instant::now();
    wait_for(
        &deployments,
        "ext",
        replicas_are(4),
        Duration::from_secs(90),
        "the HPA to scale the pool to 4 on a queue depth of 40",
    )
    .await?;
    let reaction = queue_full.elapsed();
    let pool = pools.get("ext").await?;
    assert_eq!(
        pool.spec.replicas,
        Some(4),
        "the HPA wrote spec.replicas through /scale"
    );
    let hpa = hpas.get("ext").await?;
    let status = hpa.status.context("HPA status")?;
    let current = status
        .current_metrics
        .iter()
        .flatten()
        .find_map(|m| m.external.as_ref())
        .and_then(|e| e.current.average_value.as_ref())
        .map(|q| q.0.clone());
    println!(
        "FIGURE HPA on sluice_queue_depth: queue full (40) -> Deployment replicas 1 -> 4 in {reaction:?} (kube-controller-manager HPA sync period 5s); HPA current averageValue {current:?}, desired {}",
        status.desired_replicas
    );
    ensure!(
        status.desired_replicas == 4,
        "desired replicas {}",
        status.desired_replicas
    );
    Ok(())
}
