//! The reaper's decisions: which worker pods to delete. Pure: the pod, what the broker heard of its worker and
//! the time are arguments. The controller deletes the pods, releases their attempts at once
//! ([`crate::broker::Broker::release_worker`], counted as retryable failures and fenced) and publishes Events.
//!
//! A pod is reaped when
//! - its phase is `Failed` (an evicted pod is `Failed` with reason `Evicted`);
//! - a container is in `CrashLoopBackOff` after at least [`CRASH_LOOP_RESTARTS`] restarts;
//! - its worker stopped talking: the broker heard of it before, no long poll of it is open, and neither a poll
//!   nor a heartbeat came for longer than the pool's `heartbeatTimeout` (a frozen or wedged process).
//!
//! Pods already being deleted are left alone: their worker is draining after SIGTERM.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use crate::broker::queue::WorkerInfo;

/// Restarts after which a container in `CrashLoopBackOff` gets its pod reaped.
pub const CRASH_LOOP_RESTARTS: i32 = 3;

/// Why a pod is reaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reap {
    /// The pod failed (or was evicted).
    Failed {
        /// The pod's `status.reason` (`Evicted`, ...), if any.
        reason: Option<String>,
    },
    /// A container keeps crashing.
    CrashLoop {
        /// The container.
        container: String,
        /// Its restart count.
        restarts: i32,
    },
    /// The worker stopped polling and heartbeating.
    Silent {
        /// How long it has been silent.
        silent_for: Duration,
    },
}

impl Reap {
    /// The Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Reap::Failed { reason } if reason.as_deref() == Some("Evicted") => "WorkerEvicted",
            Reap::Failed { .. } => "WorkerFailed",
            Reap::CrashLoop { .. } => "WorkerCrashLooping",
            Reap::Silent { .. } => "WorkerSilent",
        }
    }

    /// A sentence for the Event.
    pub fn message(&self, pod: &str) -> String {
        match self {
            Reap::Failed { reason } => format!(
                "worker pod {pod} failed ({}); deleted it and released its steps",
                reason.as_deref().unwrap_or("phase Failed")
            ),
            Reap::CrashLoop {
                container,
                restarts,
            } => format!(
                "container {container} of worker pod {pod} is crash-looping after {restarts} restarts; deleted the pod and released its steps"
            ),
            Reap::Silent { silent_for } => format!(
                "worker {pod} sent no claim or heartbeat for {}s (past heartbeatTimeout); deleted the pod and released its steps",
                silent_for.as_secs()
            ),
        }
    }
}

/// Whether to reap `pod`, whose worker the broker knows as `worker` (if it heard of it).
pub fn decide(
    pod: &Pod,
    worker: Option<&WorkerInfo>,
    heartbeat_timeout: Duration,
    now: Timestamp,
) -> Option<Reap> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    match status.phase.as_deref() {
        Some("Failed") => {
            return Some(Reap::Failed {
                reason: status.reason.clone(),
            });
        }
        Some("Running") => {}
        _ => return None,
    }
    for cs in status.container_statuses.iter().flatten() {
        let waiting = cs
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref());
        if waiting == Some("CrashLoopBackOff") && cs.restart_count >= CRASH_LOOP_RESTARTS {
            return Some(Reap::CrashLoop {
                container: cs.name.clone(),
                restarts: cs.restart_count,
            });
        }
    }
    let worker = worker?;
    if worker.polling {
        return None;
    }
    let silent_for = now.duration_since(worker.last_seen).unsigned_abs();
    (silent_for > heartbeat_timeout).then_some(Reap::Silent { silent_for })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn at(secs: i64) -> Timestamp {
        "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + jiff::SignedDuration::from_secs(secs)
    }

    fn pod(yaml: &str) -> Pod {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const RUNNING: &str = r#"
metadata: {name: w-1}
status:
  phase: Running
  containerStatuses:
    - name: worker
      image: x
      imageID: ""
      ready: true
      restartCount: 0
      state: {running: {}}
"#;

    fn worker(last_seen: i64, polling: bool) -> WorkerInfo {
        WorkerInfo {
            name: "w-1".into(),
            last_seen: at(last_seen),
            polling,
            handlers: BTreeSet::new(),
            in_flight: 1,
        }
    }

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn healthy_and_unknown_workers_are_kept() {
        let p = pod(RUNNING);
        assert_eq!(
            decide(&p, None, T, at(1000)),
            None,
            "never heard of: not judged"
        );
        assert_eq!(decide(&p, Some(&worker(0, false)), T, at(30)), None);
        assert_eq!(
            decide(&p, Some(&worker(0, true)), T, at(1000)),
            None,
            "an open long poll is alive"
        );
    }

    #[test]
    fn silent_workers_are_reaped_after_the_timeout() {
        let p = pod(RUNNING);
        assert_eq!(
            decide(&p, Some(&worker(0, false)), T, at(31)),
            Some(Reap::Silent {
                silent_for: Duration::from_secs(31)
            })
        );
        let mut deleting = p.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(0)));
        assert_eq!(
            decide(&deleting, Some(&worker(0, false)), T, at(100)),
            None,
            "a pod being deleted drains"
        );
    }

    #[test]
    fn failed_and_evicted_pods_are_reaped() {
        let p = pod("metadata: {name: w-1}\nstatus: {phase: Failed, reason: Evicted}\n");
        let r = decide(&p, None, T, at(0)).unwrap();
        assert_eq!(r.reason(), "WorkerEvicted");
        let p = pod("metadata: {name: w-1}\nstatus: {phase: Failed}\n");
        assert_eq!(decide(&p, None, T, at(0)).unwrap().reason(), "WorkerFailed");
        let p = pod("metadata: {name: w-1}\nstatus: {phase: Pending}\n");
        assert_eq!(decide(&p, None, T, at(0)), None);
    }

    #[test]
    fn crash_loops_are_reaped_past_the_threshold() {
        let crashing = |restarts: i32| {
            pod(&format!(
                r#"
metadata: {{name: w-1}}
status:
  phase: Running
  containerStatuses:
    - name: worker
      image: x
      imageID: ""
      ready: false
      restartCount: {restarts}
      state: {{waiting: {{reason: CrashLoopBackOff}}}}
"#
            ))
        };
        assert_eq!(decide(&crashing(2), None, T, at(0)), None);
        assert_eq!(
            decide(&crashing(3), None, T, at(0)),
            Some(Reap::CrashLoop {
                container: "worker".into(),
                restarts: 3
            })
        );
    }
}
