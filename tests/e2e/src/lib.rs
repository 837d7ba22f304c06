//! The shared harness for every cluster test in Sluice.
//!
//! - [`cluster`] gives a [`kube::Client`] for the one local cluster of this test run: `SLUICE_KUBECONFIG` if set,
//!   else `tests/scripts/cluster.sh up`, started once per process and shared by parallel test binaries through a
//!   file lock.
//! - [`TestNamespace`] gives each test its own namespace, deleted when the test ends.
//! - [`kubectl`] runs the real kubectl against that cluster.
//! - [`wait_for`], [`wait_for_list`] and [`wait_deleted`] are bounded waits on watches whose timeout errors say
//!   what was awaited and what was last seen.

mod cluster;
mod error;
mod kubectl;
mod namespace;
mod wait;

pub use cluster::{cluster, kubeconfig_path, repo_root};
pub use error::HarnessError;
pub use kubectl::{Kubectl, kubectl, kubectl_path};
pub use namespace::TestNamespace;
pub use wait::{wait_deleted, wait_for, wait_for_list};

/// Result type of the harness.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
