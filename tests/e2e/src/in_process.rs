//! The operator inside the test process, built by the same [`Operator::builder`] as `sluice-operator run` (the
//! harness only picks options): the FlowRun runtime with its broker on a loopback port and, when asked, the
//! WorkerPool controller and the external metrics API, for tests and benchmarks that want to read the broker's
//! memory or the controller's write counts directly.

use std::net::Ipv4Addr;
use std::sync::Arc;

use kube::Client;
use serde_json::json;
use sluice_operator::broker::Broker;
use sluice_operator::broker::auth::{Authenticator, TrustAll};
use sluice_operator::context::Scope;
use sluice_operator::external_metrics::{self, tls};
use sluice_operator::runtime::{ExternalMetricsConfig, Operator};
use sluice_operator::telemetry::Metrics;
use sluice_operator::telemetry::api_calls::counted_client;
use sluice_operator::workerpool::WriteCounts;
use tokio::sync::watch;

use crate::{HarnessError, Result};

/// What an [`InProcessOperator`] runs besides the FlowRun runtime, and how its broker authenticates workers.
#[derive(Clone)]
pub struct InProcessOptions {
    auth: Arc<dyn Authenticator>,
    worker_pools: bool,
    external_metrics: bool,
}

impl Default for InProcessOptions {
    /// A broker trusting every caller (workers name their pool `namespace/pool`), no WorkerPool controller.
    fn default() -> Self {
        Self {
            auth: Arc::new(TrustAll),
            worker_pools: false,
            external_metrics: false,
        }
    }
}

impl InProcessOptions {
    /// Authenticates workers with `auth` (the real TokenReview authenticator for tests with worker pods).
    pub fn authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = auth;
        self
    }

    /// Also runs the WorkerPool controller, giving worker pods the broker's loopback URL.
    pub fn worker_pools(mut self) -> Self {
        self.worker_pools = true;
        self
    }

    /// Also serves the external metrics API and registers it with the API server's aggregator, as the
    /// operator does in a cluster: HTTPS on a non-loopback address of this machine (the aggregator dials
    /// endpoint addresses, which may not be loopback ones), behind the Service [`METRICS_SERVICE`] of the
    /// namespace with a hand-made EndpointSlice (and Endpoints) naming that address, and the cluster-wide
    /// `APIService` `v1beta1.external.metrics.k8s.io`. Call [`InProcessOperator::unregister_external_metrics`]
    /// before the test ends: an APIService whose backend is gone leaves the API server's discovery
    /// incomplete (dropping the operator removes it too, best effort).
    pub fn external_metrics(mut self) -> Self {
        self.external_metrics = true;
        self
    }
}

/// The Service behind which an [`InProcessOperator`] serves the external metrics API.
pub const METRICS_SERVICE: &str = "sluice-metrics";

/// The operator leading for one namespace. Stopped when dropped.
pub struct InProcessOperator {
    url: String,
    operator: Arc<Operator>,
    external_metrics: Option<Client>,
    stop: watch::Sender<bool>,
}

impl InProcessOperator {
    /// The FlowRun runtime alone, its broker trusting every caller.
    pub async fn start(client: Client, namespace: &str) -> Result<Self> {
        Self::start_with(client, namespace, InProcessOptions::default()).await
    }

    /// Starts what `options` say for `namespace` with `client`, through the same wiring as
    /// `sluice-operator run` ([`Operator::builder`]); the broker opens once the queue is rebuilt.
    pub async fn start_with(
        client: Client,
        namespace: &str,
        options: InProcessOptions,
    ) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(HarnessError::io("binding the broker"))?;
        let addr = listener
            .local_addr()
            .map_err(HarnessError::io("reading the broker address"))?;
        let url = format!("http://{addr}");
        // The operator's own client counts its requests, as in `sluice-operator run`.
        let metrics = Metrics::new();
        let counted = counted_client(crate::cluster_config().await?, &metrics)
            .map_err(HarnessError::Client)?;
        let mut builder = Operator::builder(counted)
            .metrics(metrics)
            .scope(Scope::Namespaces(vec![namespace.to_owned()]))
            .authenticator(options.auth);
        if options.worker_pools {
            builder = builder.worker_pools(url.clone());
        }
        if options.external_metrics {
            builder = builder.external_metrics(install_external_metrics(&client, namespace).await?);
        }
        let operator = Arc::new(
            builder
                .build()
                .await
                .map_err(|e| HarnessError::Process(format!("building the operator: {e}")))?,
        );
        let (stop, rx) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let serving = operator.clone();
        let serve_stop = until(rx.clone());
        tokio::spawn(async move { serving.serve(listener, serve_stop).await });
        let leading = operator.clone();
        let lead_stop = until(rx);
        tokio::spawn(async move { leading.lead(lead_stop).await });
        Ok(Self {
            url,
            operator,
            external_metrics: options.external_metrics.then_some(client),
            stop,
        })
    }

    /// The broker's base URL.
    pub fn broker_url(&self) -> &str {
        &self.url
    }

    /// The broker, to read its memory (queue depth, workers) directly.
    pub fn broker(&self) -> Broker {
        self.operator.broker()
    }

    /// The operator's metrics (API requests by verb, status patches, ...).
    pub fn metrics(&self) -> Metrics {
        self.operator.metrics()
    }

    /// The WorkerPool controller's API writes so far; `None` when it does not run
    /// ([`InProcessOptions::worker_pools`]).
    pub fn pool_writes(&self) -> Option<WriteCounts> {
        self.operator.pool_writes()
    }

    /// Deletes the external metrics `APIService` (see [`InProcessOptions::external_metrics`]).
    pub async fn unregister_external_metrics(&mut self) -> Result<()> {
        if let Some(client) = self.external_metrics.take() {
            tls::unregister(client)
                .await
                .map_err(|e| HarnessError::Process(format!("deleting the APIService: {e}")))?;
        }
        Ok(())
    }
}

impl Drop for InProcessOperator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if self.external_metrics.is_some() {
            // Drop cannot wait for the client: kubectl, synchronously.
            if let Ok(kubectl) = crate::kubectl_path() {
                let _ = std::process::Command::new(kubectl)
                    .args([
                        "delete",
                        "apiservice",
                        &tls::api_service_name(),
                        "--ignore-not-found",
                    ])
                    .env("KUBECONFIG", crate::kubeconfig_path().unwrap_or_default())
                    .output();
            }
        }
    }
}

/// An IPv4 address of this machine that is not a loopback one.
fn host_address() -> Result<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .map_err(|e| HarnessError::Process(format!("listing network interfaces: {e}")))?
        .filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()))
        .find(|ip| !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified())
        .ok_or_else(|| {
            HarnessError::Process(
                "this machine has no non-loopback IPv4 address for the aggregator to dial".into(),
            )
        })
}

/// What the chart installs for the external metrics API, made by hand for an operator in this process: a
/// listener on a non-loopback address of this machine (the aggregator dials endpoint addresses, which may not
/// be loopback ones), the Service [`METRICS_SERVICE`] with an EndpointSlice (and Endpoints) naming that
/// address — there is no pod for the endpoint controllers to find — and the `APIService`
/// `v1beta1.external.metrics.k8s.io` without a CA bundle, which the operator publishes when it leads.
async fn install_external_metrics(
    client: &Client,
    namespace: &str,
) -> Result<ExternalMetricsConfig> {
    let address = host_address()?;
    let listener = tokio::net::TcpListener::bind((address, 0))
        .await
        .map_err(HarnessError::io("binding the external metrics port"))?;
    let port = listener
        .local_addr()
        .map_err(HarnessError::io("reading the external metrics address"))?
        .port();
    let objects = [
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": METRICS_SERVICE, "namespace": namespace},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]}
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": METRICS_SERVICE, "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": METRICS_SERVICE}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
        }),
        json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": METRICS_SERVICE, "namespace": namespace},
            "subsets": [{"addresses": [{"ip": address.to_string()}],
                         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]
        }),
        json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": tls::api_service_name()},
            "spec": {
                "group": external_metrics::GROUP, "version": external_metrics::VERSION,
                "service": {"namespace": namespace, "name": METRICS_SERVICE, "port": 443},
                "groupPriorityMinimum": 100, "versionPriority": 100
            }
        }),
    ];
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        let (group, version) = match object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .split_once('/')
        {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (String::new(), "v1".to_owned()),
        };
        let gvk = kube::api::GroupVersionKind::gvk(&group, &version, &kind);
        let resource = kube::api::ApiResource::from_gvk(&gvk);
        let api: kube::Api<kube::api::DynamicObject> = if kind == "APIService" {
            kube::Api::all_with(client.clone(), &resource)
        } else {
            kube::Api::namespaced_with(client.clone(), namespace, &resource)
        };
        let object: kube::api::DynamicObject = serde_json::from_value(object)
            .map_err(|e| HarnessError::Process(format!("{kind}: {e}")))?;
        api.patch(
            &object.metadata.name.clone().unwrap_or_default(),
            &kube::api::PatchParams::apply("sluice-e2e").force(),
            &kube::api::Patch::Apply(&object),
        )
        .await
        .map_err(HarnessError::kube(format!(
            "applying the {kind} for external metrics"
        )))?;
    }
    tracing::info!(%address, port, namespace, "external metrics API installed for the in-process operator");
    Ok(ExternalMetricsConfig {
        listener,
        service: METRICS_SERVICE.to_owned(),
        namespace: namespace.to_owned(),
        cert_dir: None,
    })
}

/// An SDK worker in this process serving pool `pool` of `namespace` on `operator`'s broker with one handler,
/// `double` (`{"n": n}` → `{"n": 2n}`; anything else fails fatally with `BadInput`), until its handle shuts it
/// down.
pub fn start_doubling_worker(
    operator: &InProcessOperator,
    namespace: &str,
) -> sluice_worker::ShutdownHandle {
    use sluice_worker::{Config, StepContext, StepError, Worker};
    let config = Config::new(
        operator.broker_url(),
        format!("{namespace}/pool"),
        "worker-1",
    );
    let worker = Worker::new(config).handler(
        "double",
        |_ctx: StepContext, input: serde_json::Value| async move {
            let n = input["n"]
                .as_i64()
                .ok_or_else(|| StepError::fatal("BadInput", "n must be a number"))?;
            Ok(json!({ "n": n * 2 }))
        },
    );
    let handle = worker.shutdown_handle();
    tokio::spawn(async move { worker.run_until(std::future::pending()).await });
    handle
}

/// Handler executions a side-effect log saw: (FlowRun, step) → the attempts that ran, in order.
pub type Executions = std::collections::BTreeMap<(String, String), Vec<u32>>;

/// Starts one in-process SDK worker per broker URL for the pool `namespace/pool`, 4 slots each, serving the
/// handler `work`: it sleeps `input.ms` (100 by default), records the execution in `log`, and returns
/// `{"step": ..., "attempt": ...}`. Workers retry the broker within half a second, so they ride out operator
/// restarts. For tests that prove nothing is lost or recorded twice.
pub fn start_logging_workers(
    broker_urls: &[String],
    namespace: &str,
    log: &std::sync::Arc<std::sync::Mutex<Executions>>,
) -> Vec<sluice_worker::ShutdownHandle> {
    use sluice_worker::{Config, StepContext, Worker};
    broker_urls
        .iter()
        .enumerate()
        .map(|(w, url)| {
            let log = log.clone();
            let mut config = Config::new(url, format!("{namespace}/pool"), format!("worker-{w}"));
            config.backoff_max = std::time::Duration::from_millis(500);
            let worker = Worker::new(config).concurrency(4).handler(
                "work",
                move |ctx: StepContext, input: serde_json::Value| {
                    let log = log.clone();
                    async move {
                        let ms = input["ms"].as_u64().unwrap_or(100);
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                        log.lock()
                            .unwrap()
                            .entry((ctx.flow_run_name().to_owned(), ctx.step().to_owned()))
                            .or_default()
                            .push(ctx.attempt());
                        Ok(json!({"step": ctx.step(), "attempt": ctx.attempt()}))
                    }
                },
            );
            let handle = worker.shutdown_handle();
            tokio::spawn(async move { worker.run_until(std::future::pending()).await });
            handle
        })
        .collect()
}
