//! The shared harness for every cluster test in Sluice.
//!
//! - [`cluster`] gives a [`kube::Client`] for the one local cluster of this test run: `SLUICE_KUBECONFIG` if set,
//!   else `tests/scripts/cluster.sh up`, started once per process and shared by parallel test binaries through a
//!   file lock.
//! - [`TestNamespace`] gives each test its own namespace, deleted when the test ends.
//! - [`kubectl`] and [`helm`] run the real kubectl and helm against that cluster.
//! - [`wait_for`], [`wait_for_list`] and [`wait_deleted`] are bounded waits on watches whose timeout errors say
//!   what was awaited and what was last seen.
//! - [`InProcessOperator`] runs the operator (FlowRun runtime, optionally the WorkerPool controller) in the test
//!   process; [`http_request`] talks raw HTTP/1.1 to its endpoints.
//! - [`HelmRelease`] installs the operator with the real chart (its pod run by the process kubelet).
//! - [`install_crds`], [`OperatorProcess`] (the real `sluice-operator run`) and [`worker_deployment`] /
//!   [`worker_pod`] (example workers run by the process kubelet) put Sluice itself on the cluster.
//! - [`python_venv`] / [`python`] give the project's Python environment (`tests/scripts/python-venv.sh`).

mod cluster;
mod error;
mod http;
mod in_process;
mod jwt;
mod kubectl;
mod namespace;
mod operator;
mod port;
mod python;
mod release;
mod wait;

pub use cluster::{cluster, cluster_config, cluster_dir, kubeconfig_path, pod_log, repo_root};
pub use error::HarnessError;
pub use http::{HttpResponse, http_request};
pub use in_process::{
    Executions, InProcessOperator, InProcessOptions, METRICS_SERVICE, start_doubling_worker,
    start_logging_workers,
};
pub use jwt::jwt_claims;
pub use kubectl::{Kubectl, helm, helm_path, kubectl, kubectl_path, tool_path};
pub use namespace::TestNamespace;
pub use operator::{
    EXAMPLE_WORKER_IMAGE, OperatorProcess, POOL_LABEL, TOKEN_MOUNT_PATH, build_binaries,
    build_release_operator, cargo_test_env, container_pid, install_crds, worker_deployment,
    worker_pod, worker_pod_spec,
};
pub use port::free_port;
pub use python::{python, python_venv};
pub use release::{
    CHART, HOST_POD_IP_ANNOTATION, HelmRelease, OPERATOR_IMAGE_TAG, merge_values, pod_is_ready,
};
pub use wait::{api_service_available, hpa_condition_true, wait_deleted, wait_for, wait_for_list};

/// Result type of the harness.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// Logs of the test process (the in-process operator's among them) into the test's captured output, filtered
/// by `RUST_LOG` (default: info, with the operator at debug). Safe to call from every test.
pub fn init_test_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sluice_operator=debug".into()),
        )
        .with_test_writer()
        .try_init();
}
