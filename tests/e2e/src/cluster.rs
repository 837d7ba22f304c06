//! One local cluster per test run.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{HarnessError, Result};

/// The repository root (this crate lives in `tests/e2e`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// The cluster's state dir, as `tests/scripts/cluster.sh` computes it.
pub fn cluster_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_CLUSTER_DIR") {
        return PathBuf::from(dir);
    }
    std::env::temp_dir().join("sluice-cluster")
}

/// What the process kubelet logged for `container` of pod `namespace/pod` so far (every run, appended), or an
/// empty string when there is no such log. For diagnostics in failure messages.
pub fn pod_log(namespace: &str, pod: &str, container: &str) -> String {
    let path = cluster_dir()
        .join("kubelet/pods")
        .join(format!("{namespace}_{pod}"))
        .join(format!("{container}.log"));
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The kubeconfig of this run's cluster, starting the cluster on first use.
///
/// `SLUICE_KUBECONFIG` wins when set. Otherwise `tests/scripts/cluster.sh up` runs once per process (a
/// `OnceLock`), under an exclusive file lock beside the cluster dir so that parallel test binaries wait for one
/// another and reuse the cluster the first one started. This blocks; async callers use [`cluster`].
pub fn kubeconfig_path() -> Result<PathBuf> {
    static PATH: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| ensure_cluster().map_err(|e| e.to_string()))
        .clone()
        .map_err(|reason| HarnessError::ClusterStart {
            script: cluster_script(),
            reason,
        })
}

fn cluster_script() -> PathBuf {
    repo_root().join("tests/scripts/cluster.sh")
}

fn ensure_cluster() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SLUICE_KUBECONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let dir = cluster_dir();
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(HarnessError::io(format!("creating {}", parent.display())))?;
    let lock_path = dir.with_extension("lock");
    let lock = lock_file(&lock_path)?;
    let script = cluster_script();
    tracing::info!(script = %script.display(), "starting or reusing the local cluster");
    let output = Command::new("bash")
        .arg(&script)
        .arg("up")
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(HarnessError::io(format!("running {}", script.display())))?;
    drop(lock);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(HarnessError::ClusterStart {
            script,
            reason: format!("{}; stdout:\n{stdout}", output.status),
        });
    }
    let last = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    // Accept both a bare path and a `READY <path>` line.
    let path = PathBuf::from(last.strip_prefix("READY ").unwrap_or(last).trim());
    if !path.is_file() {
        return Err(HarnessError::ClusterStart {
            script,
            reason: format!("its last stdout line {last:?} is not a kubeconfig file"),
        });
    }
    Ok(path)
}

fn lock_file(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(HarnessError::io(format!("opening lock {}", path.display())))?;
    file.lock()
        .map_err(HarnessError::io(format!("locking {}", path.display())))?;
    Ok(file)
}

/// A client for this run's cluster (see [`kubeconfig_path`]).
///
/// Each call builds a fresh client: a client is bound to the tokio runtime that created it, and every
/// `#[tokio::test]` has its own runtime.
pub async fn cluster() -> Result<Client> {
    client_for(&kubeconfig_path_async().await?).await
}

/// [`kubeconfig_path`] off the async runtime (it may start the cluster).
async fn kubeconfig_path_async() -> Result<PathBuf> {
    tokio::task::spawn_blocking(kubeconfig_path)
        .await
        .map_err(|e| HarnessError::ClusterStart {
            script: cluster_script(),
            reason: e.to_string(),
        })?
}

/// The client configuration of this run's cluster (see [`kubeconfig_path`]), for clients built with layers of
/// their own (the in-process operator counts its requests).
pub async fn cluster_config() -> Result<kube::Config> {
    config_for(&kubeconfig_path_async().await?).await
}

pub(crate) async fn client_for(path: &Path) -> Result<Client> {
    Client::try_from(config_for(path).await?).map_err(HarnessError::Client)
}

async fn config_for(path: &Path) -> Result<kube::Config> {
    // Several rustls providers may be compiled into a workspace build (kube: ring, reqwest: aws-lc-rs).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| HarnessError::Kubeconfig {
        path: path.to_path_buf(),
        source,
    })?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| HarnessError::Kubeconfig {
            path: path.to_path_buf(),
            source,
        })
}
