//! The operator's FlowRun runtime (status writer, controllers, broker) inside the test process: for tests and
//! benchmarks whose workers also run in the process, built on the SDK, without pod tokens.

use std::sync::Arc;

use kube::Client;
use sluice_operator::broker::auth::TrustAll;
use sluice_operator::flowrun::{FlowRunRuntime, Scope};
use sluice_operator::telemetry::Metrics;
use tokio::sync::watch;

use crate::{HarnessError, Result};

/// The FlowRun runtime leading for one namespace, its broker on a free loopback port trusting every caller
/// (workers name their pool `namespace/pool`). Stopped when dropped.
pub struct InProcessOperator {
    url: String,
    stop: watch::Sender<bool>,
}

impl InProcessOperator {
    /// Starts the runtime for `namespace` with `client`; it opens its broker once it has rebuilt its queue.
    pub async fn start(client: Client, namespace: &str) -> Result<Self> {
        let runtime = FlowRunRuntime::new(
            client,
            Arc::new(TrustAll),
            Metrics::new(),
            Scope::Namespaces(vec![namespace.to_owned()]),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(HarnessError::io("binding the broker"))?;
        let addr = listener
            .local_addr()
            .map_err(HarnessError::io("reading the broker address"))?;
        let (stop, rx) = watch::channel(false);
        let router = runtime.broker().router();
        let mut http_stop = rx.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|s| *s).await;
                })
                .await
        });
        let mut lead_stop = rx;
        tokio::spawn(async move {
            runtime
                .lead(async move {
                    let _ = lead_stop.wait_for(|s| *s).await;
                })
                .await
        });
        Ok(Self {
            url: format!("http://{addr}"),
            stop,
        })
    }

    /// The broker's base URL.
    pub fn broker_url(&self) -> &str {
        &self.url
    }
}

impl Drop for InProcessOperator {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
