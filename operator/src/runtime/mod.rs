//! The one wiring of the operator: which parts run, how they share the broker, and in which order they start.
//! `sluice-operator run` and the tests that run the operator inside their own process both build it here and
//! differ only in the options they pick, so what the tests prove is what the binary does.
//!
//! ```text
//! Operator::builder(client)        scope, worker authentication, WorkerPool controller, external metrics
//!     .build().await               reads what serving needs (request-header CA) and makes the certificate
//! operator.serve(listener, drain)  every replica: the worker broker (503 until it leads) and the external
//!                                  metrics API, until `drain`
//! operator.lead(shutdown)          the leader: rebuild the queue from FlowRun statuses → open the broker →
//!                                  publish the metrics CA → FlowRun controllers, loss detector, deletion of
//!                                  expired finished runs, CronFlow controller and WorkerPool controller
//!                                  until `shutdown`
//! ```
//! The WorkerPool controller starts only after the rebuild: before it the broker knows no demand and would
//! scale every pool down.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use kube::Client;
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::broker::Broker;
use crate::broker::auth::Authenticator;
use crate::broker::listener;
use crate::broker::tokenreview::TokenReviewAuthenticator;
use crate::context::Scope;
use crate::cronflow::controller::CronFlowController;
use crate::engine::Limits;
use crate::external_metrics::cert::{CertStore, CertificateSource};
use crate::external_metrics::{self, tls};
use crate::flowrun::ttl::TtlController;
use crate::flowrun::{self, FlowRunRuntime};
use crate::telemetry::Metrics;
use crate::workerpool::controller::WorkerPoolController;
use crate::workerpool::{WorkerPoolConfig, WriteCounts};

/// Errors of starting or running the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The FlowRun side failed (the rebuild of the queue).
    #[error("FlowRuns: {0}")]
    FlowRun(#[from] flowrun::Error),
    /// The external metrics API cannot be served.
    #[error("external metrics API: {0}")]
    ExternalMetrics(#[from] external_metrics::Error),
    /// A server stopped with an error.
    #[error("serving: {0}")]
    Serve(#[from] std::io::Error),
}

impl Error {
    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::FlowRun(e) => e.metric_label(),
            Error::ExternalMetrics(_) => "external_metrics",
            Error::Serve(_) => "serve",
        }
    }
}

/// How the external metrics API (`external.metrics.k8s.io`) is served.
pub struct ExternalMetricsConfig {
    /// Where it listens (HTTPS); bound by the caller, so a test can take any free port.
    pub listener: TcpListener,
    /// The Service the `APIService` sends the aggregator to, whose name the certificate carries.
    pub service: String,
    /// That Service's namespace (the operator's own).
    pub namespace: String,
    /// A directory with `tls.crt` and `tls.key` (a mounted Secret, e.g. from cert-manager) to serve instead of
    /// a generated certificate.
    pub cert_dir: Option<PathBuf>,
}

/// Chooses what an [`Operator`] runs.
pub struct OperatorBuilder {
    client: Client,
    scope: Scope,
    auth: Option<Arc<dyn Authenticator>>,
    metrics: Metrics,
    instance: Option<String>,
    worker_pools: Option<WorkerPoolConfig>,
    external_metrics: Option<ExternalMetricsConfig>,
    default_ttl_seconds: Option<u32>,
    limits: Limits,
}

impl OperatorBuilder {
    /// Watch only `scope` (default: every namespace).
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// Authenticate workers with `auth` (default: their service-account tokens, by TokenReview).
    pub fn authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Record metrics into `metrics` (default: a fresh registry).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Report Events as coming from `instance` (the pod name).
    pub fn instance(mut self, instance: Option<String>) -> Self {
        self.instance = instance;
        self
    }

    /// Also run the WorkerPool controller while leading; worker pods reach the broker at `broker_url`.
    pub fn worker_pools(mut self, broker_url: impl Into<String>) -> Self {
        self.worker_pools = Some(WorkerPoolConfig {
            broker_url: broker_url.into(),
        });
        self
    }

    /// Also serve the external metrics API, so a HorizontalPodAutoscaler can scale pools on queue depth.
    pub fn external_metrics(mut self, config: ExternalMetricsConfig) -> Self {
        self.external_metrics = Some(config);
        self
    }

    /// Delete finished FlowRuns without a `spec.ttlSecondsAfterFinished` this many seconds after they
    /// finished (default `None`: keep them).
    pub fn default_ttl_seconds_after_finished(mut self, seconds: Option<u32>) -> Self {
        self.default_ttl_seconds = seconds;
        self
    }

    /// Fail a step that would grow its FlowRun's status past `bytes` of JSON (default 1 MiB).
    pub fn max_status_bytes(mut self, bytes: u64) -> Self {
        self.limits.max_status_bytes = bytes;
        self
    }

    /// Builds the operator. With the external metrics API this reads the API server's request-header
    /// authentication settings and loads or generates the serving certificate, and fails if either is missing.
    pub async fn build(self) -> Result<Operator, Error> {
        let auth = self
            .auth
            .unwrap_or_else(|| Arc::new(TokenReviewAuthenticator::new(self.client.clone())));
        let flowruns = FlowRunRuntime::new(
            self.client.clone(),
            auth,
            self.metrics.clone(),
            self.scope.clone(),
            self.instance.clone(),
            self.limits,
        );
        let broker = flowruns.broker();
        let ttl = TtlController::new(
            self.client.clone(),
            self.scope.clone(),
            self.default_ttl_seconds,
            self.metrics.clone(),
        );
        let cronflows = CronFlowController::new(
            self.client.clone(),
            self.scope.clone(),
            self.metrics.clone(),
            self.instance.clone(),
        );
        let pools = self.worker_pools.map(|config| {
            WorkerPoolController::new(
                self.client.clone(),
                broker.clone(),
                self.metrics.clone(),
                self.scope.clone(),
                config,
                self.instance.clone(),
            )
        });
        let (external, publish) = match self.external_metrics {
            None => (None, None),
            Some(config) => {
                let (server, publish) =
                    ExternalMetricsServer::prepare(&self.client, &broker, config).await?;
                (Some(server), publish)
            }
        };
        Ok(Operator {
            client: self.client,
            flowruns,
            broker,
            ttl,
            cronflows,
            pools,
            external: Mutex::new(external),
            publish_ca: publish,
            metrics: self.metrics,
        })
    }
}

/// The external metrics server, ready to serve.
struct ExternalMetricsServer {
    listener: TcpListener,
    router: axum::Router,
    tls: Arc<rustls::ServerConfig>,
    allowed_names: Vec<String>,
    certs: Arc<CertStore>,
}

/// The CA the leader publishes in the `APIService`, and the Service it must point at.
struct PublishCa {
    ca_pem: String,
    namespace: String,
    service: String,
}

impl ExternalMetricsServer {
    async fn prepare(
        client: &Client,
        broker: &Broker,
        config: ExternalMetricsConfig,
    ) -> Result<(Self, Option<PublishCa>), Error> {
        let auth = tls::RequestHeaderAuth::load(client.clone()).await?;
        let source = match config.cert_dir {
            Some(dir) => CertificateSource::Directory(dir),
            None => CertificateSource::Generate {
                service: config.service.clone(),
                namespace: config.namespace.clone(),
            },
        };
        let certs = CertStore::new(source)?;
        let publish = certs.ca_bundle().map(|ca| PublishCa {
            ca_pem: ca.to_owned(),
            namespace: config.namespace.clone(),
            service: config.service.clone(),
        });
        let tls = tls::server_config(certs.clone(), &auth)?;
        let router = external_metrics::router(
            broker.clone(),
            auth.headers.clone(),
            Arc::new(external_metrics::SubjectAccessReviewer::new(client.clone())),
        );
        Ok((
            Self {
                listener: config.listener,
                router,
                tls,
                allowed_names: auth.allowed_names,
                certs,
            },
            publish,
        ))
    }
}

/// The operator, built; see the module docs for what runs when.
pub struct Operator {
    client: Client,
    flowruns: FlowRunRuntime,
    broker: Broker,
    ttl: TtlController,
    cronflows: CronFlowController,
    pools: Option<WorkerPoolController>,
    external: Mutex<Option<ExternalMetricsServer>>,
    publish_ca: Option<PublishCa>,
    metrics: Metrics,
}

impl Operator {
    /// Starts choosing what runs; everything not chosen keeps its default.
    pub fn builder(client: Client) -> OperatorBuilder {
        OperatorBuilder {
            client,
            scope: Scope::All,
            auth: None,
            metrics: Metrics::new(),
            instance: None,
            worker_pools: None,
            external_metrics: None,
            default_ttl_seconds: None,
            limits: Limits::default(),
        }
    }

    /// The broker (its queue and workers, for readiness and tests).
    pub fn broker(&self) -> Broker {
        self.broker.clone()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The WorkerPool controller's API writes so far, when it runs.
    pub fn pool_writes(&self) -> Option<WriteCounts> {
        self.pools.as_ref().map(WorkerPoolController::writes)
    }

    /// Serves the worker broker on `broker` and, when configured, the external metrics API, until `drain`
    /// resolves (open requests are finished first). Call it once; every replica serves, and answers 503 while
    /// it does not lead.
    pub async fn serve(
        &self,
        broker: TcpListener,
        drain: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let drain = drain.shared();
        let external = self
            .external
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(server) = external {
            let addr = server.listener.local_addr().ok();
            info!(addr = ?addr, "serving the external metrics API");
            tokio::spawn(server.certs.clone().keep_current(drain.clone()));
            tokio::spawn(tls::serve(
                server.listener,
                server.router,
                server.tls,
                server.allowed_names,
                drain.clone(),
            ));
        }
        axum::serve(listener::without_nagle(broker), self.broker.router())
            .with_graceful_shutdown(drain)
            .await?;
        Ok(())
    }

    /// Leads until `shutdown`: opens the broker at once, loads every FlowRun into it from the controllers'
    /// caches (invariant 6: the queue is rebuilt from statuses, as each run is loaded), publishes the external
    /// metrics CA, and runs the controllers. The broker is closed again when it returns.
    pub async fn lead(
        &self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let shutdown = shutdown.shared();
        self.broker.set_loading(true);
        self.broker.set_ready(true);
        info!("broker open: FlowRuns load from their statuses as the caches fill");
        let publish = async {
            if let Some(ca) = &self.publish_ca {
                tokio::select! {
                    () = publish_until_done(&self.client, ca) => {}
                    () = shutdown.clone() => {}
                }
            }
        };
        let pools = async {
            if let Some(pools) = &self.pools {
                pools.run(shutdown.clone()).await;
            }
        };
        tokio::join!(
            self.flowruns.run(shutdown.clone()),
            self.ttl.run(shutdown.clone()),
            self.cronflows.run(shutdown.clone()),
            pools,
            publish
        );
        self.broker.set_ready(false);
        Ok(())
    }
}

/// Publishes the generated CA in the `APIService`, retrying API failures with back-off; an `APIService` that
/// is missing or belongs to another provider is reported once and left alone.
async fn publish_until_done(client: &Client, ca: &PublishCa) {
    let mut wait = Duration::from_secs(1);
    loop {
        match tls::publish_ca_bundle(client.clone(), &ca.ca_pem, &ca.namespace, &ca.service).await {
            Ok(()) => return,
            Err(
                e @ (external_metrics::Error::Kube(_)
                | external_metrics::Error::ApiServiceMissing(_)),
            ) => {
                warn!(error = %e, retry_in_s = wait.as_secs(), "cannot publish the external metrics CA yet");
            }
            Err(e) => {
                error!(error = %e, "the external metrics API is served but not registered");
                return;
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(60));
    }
}
