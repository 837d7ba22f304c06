//! `kubectl sluice`: a kubectl plugin for Sluice FlowRuns.
//!
//! Installed as the `kubectl-sluice` binary on `PATH`, kubectl finds it and passes every argument after
//! `sluice` verbatim. The commands read FlowRuns and write only what users may write: `spec.cancel`,
//! `spec.suspend` and `spec.retryRequest` (merge patches of the spec) and `status.signals` (a merge patch of the
//! status subresource). Step state is the operator's alone (design invariant 8).
//!
//! The pure parts — the report built from a FlowRun ([`report`]), its text tree ([`tree`]), the graph
//! ([`graph`]) and the watch's change lines ([`watch`]) — are unit-tested on fixture statuses; the commands in
//! [`cmd`] are thin shells that talk to the API server.

#![forbid(unsafe_code)]

pub mod cli;
pub mod cmd;
pub mod graph;
pub mod kubeconfig;
pub mod report;
pub mod style;
pub mod tree;
pub mod ui;
pub mod watch;

pub use cli::Cli;

/// Field manager of every write the plugin makes.
pub const FIELD_MANAGER: &str = "kubectl-sluice";

/// Errors of the plugin's commands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// The FlowRun does not exist.
    #[error("flowrun {name:?} not found in namespace {namespace:?}")]
    NotFound {
        /// Its name.
        name: String,
        /// The namespace looked in.
        namespace: String,
    },
    /// The CronFlow does not exist.
    #[error("cronflow {name:?} not found in namespace {namespace:?}")]
    CronFlowNotFound {
        /// Its name.
        name: String,
        /// The namespace looked in.
        namespace: String,
    },
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A signal payload is not JSON.
    #[error("{flag}: not valid JSON: {problem}")]
    InvalidJson {
        /// The flag that gave it (`--data` or `--file`).
        flag: String,
        /// What is wrong, with line and column.
        problem: String,
    },
    /// A file named on the command line could not be read.
    #[error("{flag}: cannot read {path}: {source}")]
    ReadFile {
        /// The flag that named it.
        flag: String,
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Retry of a run that has not Failed.
    #[error("flowrun {name:?} is {phase}, not Failed: there is nothing to retry")]
    NotFailed {
        /// The FlowRun.
        name: String,
        /// Its phase.
        phase: String,
    },
    /// The operator did not act in time.
    #[error("{0}")]
    Timeout(String),
    /// The FlowRun was deleted while being watched.
    #[error("flowrun {0:?} was deleted")]
    Deleted(String),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    /// A watch failed.
    #[error("watch: {0}")]
    Watch(String),
    /// The web view's server could not start.
    #[error("ui: {0}")]
    Serve(String),
}

/// Result type of the plugin.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    /// The plugin is a client of the API types only: building it must not build the operator (its engine,
    /// broker and controllers).
    #[test]
    fn the_plugin_does_not_depend_on_the_operator() {
        let manifest = include_str!("../Cargo.toml");
        let dependencies = manifest
            .split("\n[")
            .find(|section| section.starts_with("dependencies]"))
            .expect("Cargo.toml has a [dependencies] section");
        assert!(
            dependencies.contains("sluice-api"),
            "the plugin should use the sluice-api crate:\n{dependencies}"
        );
        assert!(
            !dependencies.contains("sluice-operator"),
            "the plugin depends on the operator crate:\n{dependencies}"
        );
    }
}
