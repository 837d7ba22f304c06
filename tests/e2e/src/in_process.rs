//! The operator inside the test process: the FlowRun runtime (status writer, controllers, broker on a loopback
//! port) and, when asked, the WorkerPool controller, for tests and benchmarks that want to read the broker's
//! memory or the controller's write counts directly.

use std::sync::Arc;

use kube::Client;
use sluice_operator::broker::Broker;
use sluice_operator::broker::auth::{Authenticator, TrustAll};
use sluice_operator::flowrun::{FlowRunRuntime, Scope};
use sluice_operator::telemetry::Metrics;
use sluice_operator::workerpool::controller::WorkerPoolController;
use sluice_operator::workerpool::{WorkerPoolConfig, WriteCounts};
use tokio::sync::watch;

use crate::{HarnessError, Result};

/// What an [`InProcessOperator`] runs besides the FlowRun runtime, and how its broker authenticates workers.
#[derive(Clone)]
pub struct InProcessOptions {
    auth: Arc<dyn Authenticator>,
    worker_pools: bool,
}

impl Default for InProcessOptions {
    /// A broker trusting every caller (workers name their pool `namespace/pool`), no WorkerPool controller.
    fn default() -> Self {
        Self {
            auth: Arc::new(TrustAll),
            worker_pools: false,
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
}

/// The operator leading for one namespace. Stopped when dropped.
pub struct InProcessOperator {
    url: String,
    broker: Broker,
    pool_writes: Option<WriteCounts>,
    stop: watch::Sender<bool>,
}

impl InProcessOperator {
    /// The FlowRun runtime alone, its broker trusting every caller.
    pub async fn start(client: Client, namespace: &str) -> Result<Self> {
        Self::start_with(client, namespace, InProcessOptions::default()).await
    }

    /// Starts what `options` say for `namespace` with `client`; the broker opens once the runtime has rebuilt
    /// its queue.
    pub async fn start_with(
        client: Client,
        namespace: &str,
        options: InProcessOptions,
    ) -> Result<Self> {
        let scope = Scope::Namespaces(vec![namespace.to_owned()]);
        let metrics = Metrics::new();
        let runtime =
            FlowRunRuntime::new(client.clone(), options.auth, metrics.clone(), scope.clone());
        let broker = runtime.broker();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(HarnessError::io("binding the broker"))?;
        let addr = listener
            .local_addr()
            .map_err(HarnessError::io("reading the broker address"))?;
        let url = format!("http://{addr}");
        let (stop, rx) = watch::channel(false);
        let until = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let router = broker.router();
        let http_stop = until(rx.clone());
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(http_stop)
                .await
        });
        let pool_writes = options.worker_pools.then(|| {
            let pools = WorkerPoolController::new(
                client,
                broker.clone(),
                metrics,
                scope,
                WorkerPoolConfig {
                    broker_url: url.clone(),
                },
            );
            let writes = pools.writes();
            let pools_stop = until(rx.clone());
            tokio::spawn(async move { pools.run(pools_stop).await });
            writes
        });
        let lead_stop = until(rx);
        tokio::spawn(async move { runtime.lead(lead_stop).await });
        Ok(Self {
            url,
            broker,
            pool_writes,
            stop,
        })
    }

    /// The broker's base URL.
    pub fn broker_url(&self) -> &str {
        &self.url
    }

    /// The broker, to read its memory (queue depth, workers) directly.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The WorkerPool controller's API writes so far; `None` when it does not run
    /// ([`InProcessOptions::worker_pools`]).
    pub fn pool_writes(&self) -> Option<&WriteCounts> {
        self.pool_writes.as_ref()
    }
}

impl Drop for InProcessOperator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
