use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in the harness; each message says what the harness was doing.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("starting the local cluster with {script}: {reason}")]
    ClusterStart { script: PathBuf, reason: String },
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building a client: {0}")]
    Client(#[source] kube::Error),
    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last_seen}")]
    Timeout {
        what: String,
        timeout: Duration,
        last_seen: String,
    },
    #[error("watch failed while waiting for {what}: {source}")]
    Watch {
        what: String,
        #[source]
        source: kube::runtime::watcher::Error,
    },
    #[error("kubectl {args}: {reason}")]
    Kubectl { args: String, reason: String },
    #[error("building the Sluice binaries: {0}")]
    Build(String),
    #[error("{0}")]
    Process(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    pub(crate) fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Self::Kube { action, source }
    }
}
