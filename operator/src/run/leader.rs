//! Leader election on a `coordination.k8s.io/v1` Lease, with `kube-lease-manager`.
//!
//! [`Leadership::start`] campaigns in the background and publishes "this replica leads" on a
//! [`watch::Receiver<bool>`]. The lease lasts [`LEASE_DURATION_SECONDS`]; the holder renews it
//! [`LEASE_GRACE_SECONDS`] before it expires.
//!
//! Stepping down is deliberately one-way: when a renewal fails while leading (the API server is unreachable or
//! slow, so the lease may expire and another replica may take it), the campaign reports `false` and stops for
//! good, without ever renewing again. The process is expected to exit then (see `run`), so a replica never
//! believes it leads while another one does for longer than the renewal's own timeout.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

/// How long a lease is valid after its last renewal.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// How long before expiry the holder renews; also the tolerated clock skew between replicas.
pub const LEASE_GRACE_SECONDS: u64 = 5;
/// Bound on releasing the lease at shutdown (past it the lease simply expires).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

// The holder must have time to renew, and the lease manager panics otherwise.
const _: () = assert!(0 < LEASE_GRACE_SECONDS && LEASE_GRACE_SECONDS < LEASE_DURATION_SECONDS);

/// Where and as whom to campaign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Name of the Lease object.
    pub name: String,
    /// Namespace of the Lease object.
    pub namespace: String,
    /// This replica's identity (unique among replicas; stable across restarts of the same pod).
    pub identity: String,
}

/// Why leader election could not start.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Creating or reading the Lease failed.
    #[error("cannot use lease {namespace}/{name}: {source}")]
    Lease {
        /// Namespace of the Lease.
        namespace: String,
        /// Name of the Lease.
        name: String,
        /// What the lease manager said.
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
}

/// A running campaign for the lease.
pub struct Leadership {
    leader: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Creates the Lease if needed and starts campaigning. `client` should have short request timeouts (a
    /// renewal that hangs longer than [`LEASE_GRACE_SECONDS`] would outlive the lease).
    pub async fn start(client: Client, config: LeaseConfig) -> Result<Self, LeaderError> {
        let manager = LeaseManagerBuilder::new(client, &config.name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(LEASE_DURATION_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            .with_field_manager(format!("sluice-operator-{}", config.identity))
            .build()
            .await
            .map_err(|source| LeaderError::Lease {
                namespace: config.namespace.clone(),
                name: config.name.clone(),
                source,
            })?;
        let (tx, leader) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        info!(lease = %config.name, namespace = %config.namespace, identity = %config.identity, "campaigning for leadership");
        let task = tokio::spawn(campaign(manager, config, tx, stopped));
        Ok(Self {
            leader,
            stop: Some(stop),
            task,
        })
    }

    /// Whether this replica leads, now and as it changes. After a step-down it stays `false`.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Stops campaigning and releases the lease if this replica holds it, so another replica takes over at once
    /// instead of after expiry.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            warn!(error = %e, "the leader election task ended abnormally");
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Without an explicit release the lease is left to expire.
        self.task.abort();
    }
}

async fn campaign(
    manager: LeaseManager,
    config: LeaseConfig,
    tx: watch::Sender<bool>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => {
                tx.send_replace(false);
                match tokio::time::timeout(RELEASE_TIMEOUT, manager.release()).await {
                    Ok(Ok(())) => info!(lease = %config.name, identity = %config.identity, "lease released"),
                    Ok(Err(e)) => warn!(lease = %config.name, error = %e, "releasing the lease failed; it will expire"),
                    Err(_) => warn!(lease = %config.name, "releasing the lease timed out; it will expire"),
                }
                return;
            }
            changed = manager.changed() => match changed {
                Ok(leading) => {
                    failures = 0;
                    if leading {
                        info!(lease = %config.name, identity = %config.identity, "became the leader");
                    } else {
                        warn!(lease = %config.name, identity = %config.identity, "lost the lease");
                    }
                    tx.send_replace(leading);
                }
                Err(e) if *tx.borrow() => {
                    // The renewal failed: the lease may expire before the next try. Step down for good (see
                    // the module docs); the next renewal would otherwise race a new leader.
                    error!(lease = %config.name, identity = %config.identity, error = %e, "renewing the lease failed; stepping down");
                    // No release either: it could race a replica that already took the expired lease.
                    tx.send_replace(false);
                    return;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = retry_delay(failures);
                    warn!(lease = %config.name, error = %e, retry_in_ms = wait.as_millis() as u64, "leader election failed; retrying");
                    tokio::select! {
                        _ = &mut stopped => { tx.send_replace(false); return; }
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// Capped exponential backoff for failed campaigns: 500 ms, 1 s, 2 s, ... up to 10 s.
fn retry_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(5);
    Duration::from_millis(500u64 << exp).min(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_ten_seconds() {
        assert_eq!(retry_delay(1), Duration::from_millis(500));
        assert_eq!(retry_delay(2), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(2));
        assert_eq!(retry_delay(100), Duration::from_secs(10));
    }
}
