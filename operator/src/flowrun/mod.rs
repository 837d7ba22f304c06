//! Running FlowRuns: the controller that drives the engine, the status writer that is the single writer of
//! step state, the side effects of decisions, the runtime that ties them to the broker, and the deletion of
//! finished runs whose time to live has passed (`ttl`).

pub mod batch;
pub mod cache;
pub mod controller;
pub mod effects;
pub mod linger;
pub mod slots;
pub mod template;
pub mod ttl;
pub mod writer;

use std::future::Future;
use std::sync::Arc;

use futures::future::{BoxFuture, join_all};
use futures::{FutureExt, StreamExt};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::api::FlowRun;
use crate::broker::Broker;
use crate::broker::auth::Authenticator;
use crate::context::Scope;
use crate::telemetry::Metrics;
use effects::Effects;
use writer::StatusWriter;

/// Errors of the FlowRun controller.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(String),
    /// The status writer of a FlowRun stopped before answering.
    #[error("the status writer stopped")]
    WriterGone,
}

impl Error {
    /// A short label for the `sluice_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::WriterGone => "writer_gone",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e.to_string())
    }
}

/// The FlowRun side of the operator: status writer, broker and controller.
pub struct FlowRunRuntime {
    client: Client,
    broker: Broker,
    writer: Arc<StatusWriter>,
    metrics: Metrics,
    scope: Scope,
    /// The pod name Events are reported from.
    instance: Option<String>,
}

impl FlowRunRuntime {
    /// Builds the runtime; nothing runs until [`FlowRunRuntime::run`]. Events are reported from `instance` (the
    /// pod name); every run is decided within `limits`.
    pub fn new(
        client: Client,
        auth: Arc<dyn Authenticator>,
        metrics: Metrics,
        scope: Scope,
        instance: Option<String>,
        limits: crate::engine::Limits,
    ) -> Self {
        let writer = StatusWriter::new(
            client.clone(),
            Effects::new(client.clone(), instance.clone()),
            metrics.clone(),
            limits,
        );
        let broker = Broker::with_dispatch_histogram(
            Arc::new(writer.clone()),
            auth,
            metrics.dispatch_latency.clone(),
        );
        writer.attach(broker.clone());
        Self {
            client,
            broker,
            writer,
            metrics,
            scope,
            instance,
        }
    }

    /// The broker, to serve its router.
    pub fn broker(&self) -> Broker {
        self.broker.clone()
    }

    /// Runs the controllers, the loader and the loss detector until `shutdown`. Open the broker first: it
    /// serves at once, while the loader brings every run in (see [`FlowRunRuntime::load`]). Closes the broker
    /// when it returns.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let shutdown = shutdown.shared();
        let ctx = Arc::new(controller::Context {
            writer: self.writer.clone(),
            templates: template::TemplateResolver::new(
                self.client.clone(),
                crate::context::event_recorder(self.client.clone(), self.instance.clone()),
            ),
            metrics: self.metrics.clone(),
        });
        let cache = self.writer.cache();
        self.broker.set_loading(true);
        let mut tasks: Vec<BoxFuture<'static, ()>> = Vec::new();
        let children = self
            .scope
            .apis::<kube::core::PartialObjectMeta<FlowRun>>(&self.client);
        let runs = self.scope.apis::<cache::CachedFlowRun>(&self.client);
        for (api, children) in runs.into_iter().zip(children) {
            tasks.push(Box::pin(controller::run(
                api,
                children,
                ctx.clone(),
                cache.clone(),
                shutdown.clone(),
            )));
        }
        let broker = self.broker.clone();
        tasks.push(Box::pin(
            async move { broker.run_loss_detector(shutdown).await },
        ));
        let load = self.load();
        tasks.push(Box::pin(load));
        join_all(tasks).await;
        cache.clear();
        self.broker.set_ready(false);
    }

    /// Brings every run with work in flight into the writer and the broker after the controllers' caches
    /// hold their first list (invariant 6): queued attempts are offered again, running ones adopted with a
    /// fresh heartbeat window. The broker serves meanwhile; a heartbeat for an attempt not loaded yet loads
    /// its run first instead of being refused. Idle runs (waiting for a signal, a timer) are left to the
    /// controllers, which reconcile every run of their first list anyway: loading them here too would decide
    /// each twice. A run that fails to load is logged and left to its controller's retries: it never holds up
    /// the others.
    fn load(&self) -> impl Future<Output = ()> + Send + 'static {
        let (writer, broker) = (self.writer.clone(), self.broker.clone());
        async move {
            let cache = writer.cache();
            cache.wait_until_ready().await;
            let runs: Vec<Arc<cache::CachedFlowRun>> = cache
                .all()
                .into_iter()
                .filter(|fr| !fr.is_finished() && fr.has_work_in_flight())
                .collect();
            let total = runs.len();
            futures::stream::iter(runs)
                .for_each_concurrent(LOAD_CONCURRENCY, |fr| {
                    let writer = writer.clone();
                    async move {
                        let (namespace, name) = (fr.namespace().unwrap_or_default(), fr.name_any());
                        if let Err(e) = writer.reconcile(&namespace, &name, Some(fr)).await {
                            warn!(%namespace, flowrun = %name, error = %e, "cannot load FlowRun; its controller retries");
                        }
                    }
                })
                .await;
            broker.set_loading(false);
            info!(flowruns = total, "loaded every FlowRun with work in flight");
        }
    }
}

/// How many runs the loader brings in at once.
const LOAD_CONCURRENCY: usize = 64;
