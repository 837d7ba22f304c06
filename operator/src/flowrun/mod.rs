//! Running FlowRuns: the controller that drives the engine, the status writer that is the single writer of
//! step state, the side effects of decisions, the runtime that ties them to the broker, and the deletion of
//! finished runs whose time to live has passed (`ttl`).

pub mod batch;
pub mod controller;
pub mod effects;
pub mod ttl;
pub mod writer;

use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use kube::Client;
use kube::api::ListParams;
use tracing::info;

use crate::api::FlowRun;
use crate::broker::Broker;
use crate::broker::auth::Authenticator;
use crate::context::Scope;
use crate::telemetry::Metrics;
use effects::Effects;
use writer::StatusWriter;

/// Errors of the FlowRun controller.
#[derive(Debug, thiserror::Error)]
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
}

impl FlowRunRuntime {
    /// Builds the runtime; nothing runs until [`FlowRunRuntime::rebuild`] and [`FlowRunRuntime::run`]. Events
    /// are reported from `instance` (the pod name).
    pub fn new(
        client: Client,
        auth: Arc<dyn Authenticator>,
        metrics: Metrics,
        scope: Scope,
        instance: Option<String>,
    ) -> Self {
        let writer = StatusWriter::new(
            client.clone(),
            Effects::new(client.clone(), instance),
            metrics.clone(),
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
        }
    }

    /// The broker, to serve its router.
    pub fn broker(&self) -> Broker {
        self.broker.clone()
    }

    /// Runs the controllers and the loss detector until `shutdown`; call [`FlowRunRuntime::rebuild`] first and
    /// open the broker in between. Closes the broker when it returns.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let shutdown = shutdown.shared();
        let ctx = Arc::new(controller::Context {
            writer: self.writer.clone(),
            metrics: self.metrics.clone(),
        });
        let mut tasks: Vec<BoxFuture<'static, ()>> = Vec::new();
        for api in self.scope.apis::<FlowRun>(&self.client) {
            tasks.push(Box::pin(controller::run(
                api,
                ctx.clone(),
                shutdown.clone(),
            )));
        }
        let broker = self.broker.clone();
        tasks.push(Box::pin(
            async move { broker.run_loss_detector(shutdown).await },
        ));
        join_all(tasks).await;
        self.broker.set_ready(false);
    }

    /// Reconciles every FlowRun once, so that queued attempts are offered again and running ones adopted with
    /// a fresh heartbeat window before any worker is answered.
    pub async fn rebuild(&self) -> Result<(), Error> {
        let mut n = 0;
        for api in self.scope.apis::<FlowRun>(&self.client) {
            let list = api.list(&ListParams::default()).await?;
            for fr in list.items {
                let terminal = fr
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(|p| p.is_terminal());
                if terminal {
                    continue;
                }
                let namespace = kube::ResourceExt::namespace(&fr).unwrap_or_default();
                let name = kube::ResourceExt::name_any(&fr);
                // The listed object is current: the lane starts from it without another read.
                self.writer
                    .reconcile(&namespace, &name, Some(Arc::new(fr)))
                    .await?;
                n += 1;
            }
        }
        info!(flowruns = n, "rebuilt the broker queue");
        Ok(())
    }
}
