//! Running CronFlows: FlowRuns started on a schedule, as a CronJob starts Jobs.
//!
//! [`schedule`] decides, as a pure function of the spec, the status, the runs and the time, what to do: which
//! slot to start, which runs to cancel or delete, what to record. [`controller`] is the thin kube-runtime shell
//! that lists the runs, carries the plan out and writes the status.

pub mod controller;
pub mod schedule;

/// Errors of the CronFlow controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object could not be serialized.
    #[error("serializing: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl Error {
    /// A short label for the `sluice_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Serialize(_) => "serialize",
        }
    }
}
