//! Running WorkerPools: a controller that owns one Deployment per pool (built from `spec.template` with what
//! workers need injected), scales it from the broker's queue depth (or leaves that to an HPA/KEDA writing
//! `spec.replicas` through the scale subresource), reaps failed and silent worker pods, and publishes the
//! pool's status.
//!
//! The pure parts — the Deployment builder ([`build`]), the autoscaler ([`autoscale`]), the reaper's
//! decisions ([`reaper`]) and the status ([`status`]) — are unit-tested; [`controller`] is the thin kube-runtime
//! shell around them.

pub mod autoscale;
pub mod build;
pub mod controller;
pub mod reaper;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Errors of the WorkerPool controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The pool's spec cannot be turned into a Deployment or a scaling policy.
    #[error("invalid WorkerPool: {0}")]
    InvalidSpec(String),
    /// A Deployment with the pool's name exists and is not owned by the pool.
    #[error(
        "Deployment {0} exists and is not owned by this WorkerPool: rename the pool or delete it"
    )]
    NotOwned(String),
    /// An object could not be serialized.
    #[error("serializing: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// A short label for the `sluice_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::InvalidSpec(_) => "invalid_spec",
            Error::NotOwned(_) => "not_owned",
            Error::Serialize(_) => "serialize",
        }
    }
}

/// What the WorkerPool controller needs from the operator's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerPoolConfig {
    /// Base URL under which worker pods reach the broker (`SLUICE_BROKER_URL` of every worker), e.g.
    /// `http://sluice-broker.sluice-system.svc:8081`.
    pub broker_url: String,
}

/// Counts of the API writes the WorkerPool controller made, by kind (for tests and figures). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct WriteCounts(Arc<WriteCountsInner>);

#[derive(Debug, Default)]
struct WriteCountsInner {
    deployments: AtomicU64,
    statuses: AtomicU64,
    pod_patches: AtomicU64,
    pod_deletes: AtomicU64,
    events: AtomicU64,
}

/// A snapshot of [`WriteCounts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    /// Deployment server-side applies.
    pub deployments: u64,
    /// WorkerPool status writes.
    pub statuses: u64,
    /// Pod annotation patches (pod-deletion-cost).
    pub pod_patches: u64,
    /// Pod deletions by the reaper.
    pub pod_deletes: u64,
    /// Events published.
    pub events: u64,
}

impl Writes {
    /// Every write.
    pub fn total(&self) -> u64 {
        self.deployments + self.statuses + self.pod_patches + self.pod_deletes + self.events
    }
}

impl WriteCounts {
    /// The counts so far.
    pub fn snapshot(&self) -> Writes {
        let c = &self.0;
        Writes {
            deployments: c.deployments.load(Ordering::Relaxed),
            statuses: c.statuses.load(Ordering::Relaxed),
            pod_patches: c.pod_patches.load(Ordering::Relaxed),
            pod_deletes: c.pod_deletes.load(Ordering::Relaxed),
            events: c.events.load(Ordering::Relaxed),
        }
    }

    fn deployment(&self) {
        self.0.deployments.fetch_add(1, Ordering::Relaxed);
    }
    fn status(&self) {
        self.0.statuses.fetch_add(1, Ordering::Relaxed);
    }
    fn pod_patch(&self) {
        self.0.pod_patches.fetch_add(1, Ordering::Relaxed);
    }
    fn pod_delete(&self) {
        self.0.pod_deletes.fetch_add(1, Ordering::Relaxed);
    }
    fn event(&self) {
        self.0.events.fetch_add(1, Ordering::Relaxed);
    }
}
