//! The status of a WorkerPool, computed purely from what the controller observed. Conditions keep their
//! `lastTransitionTime` while their status does not change, so an unchanged pool computes an equal status and
//! the controller skips the write.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::autoscale::{Scale, change_reason};
use super::build::selector_string;
use crate::api::{ScalingMode, ScalingStatus, WorkerPoolStatus};
use crate::broker::queue::{PoolDemand, WorkerInfo};

/// Condition: the pool has a worker that can take steps (or is scaled to zero on purpose).
pub const AVAILABLE: &str = "Available";
/// Condition: the autoscaler (or the External/Manual rule) is in charge; the reason says what it did.
pub const SCALING_ACTIVE: &str = "ScalingActive";
/// Condition: queued steps name a handler that no live worker of the pool serves.
pub const HANDLERS_MISSING: &str = "HandlersMissing";

/// Everything the status is computed from.
pub struct Observed<'a> {
    /// The pool's name.
    pub name: &'a str,
    /// The pool's `metadata.generation`.
    pub generation: Option<i64>,
    /// The status as it is now (for transition times).
    pub previous: Option<&'a WorkerPoolStatus>,
    /// The pool's Deployment, as last seen.
    pub deployment: Option<&'a Deployment>,
    /// The broker's demand for the pool.
    pub demand: &'a PoolDemand,
    /// The workers the broker heard of.
    pub workers: &'a [WorkerInfo],
    /// The pool's heartbeat timeout (liveness of workers).
    pub heartbeat_timeout: Duration,
    /// The pool's scaling mode (`spec.scaling.mode` or its default).
    pub mode: ScalingMode,
    /// The scaling decision, or why there is none.
    pub scale: Result<&'a Scale, String>,
    /// Now.
    pub now: Timestamp,
}

/// The status of the pool.
pub fn compute(o: &Observed<'_>) -> WorkerPoolStatus {
    let dep_status = o.deployment.and_then(|d| d.status.as_ref());
    let replicas = dep_status.and_then(|s| s.replicas).unwrap_or(0);
    let ready = dep_status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let available = dep_status.and_then(|s| s.available_replicas).unwrap_or(0);
    let desired = o
        .deployment
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas);
    let live: Vec<&WorkerInfo> = o
        .workers
        .iter()
        .filter(|w| w.is_live(o.now, o.heartbeat_timeout))
        .collect();

    let mut conditions = Vec::new();
    let (status, reason, message) = match (o.deployment, desired) {
        (None, _) => (
            "False",
            "DeploymentMissing",
            "the worker Deployment is not created yet".to_owned(),
        ),
        (Some(_), Some(0)) => (
            "True",
            "ScaledToZero",
            "no worker pods: scaled to zero until steps are queued".to_owned(),
        ),
        (Some(_), _) if available > 0 => (
            "True",
            "WorkersAvailable",
            format!(
                "{available} worker pods available, {} workers live",
                live.len()
            ),
        ),
        (Some(_), _) => (
            "False",
            "NoWorkerAvailable",
            format!("none of {replicas} worker pods is available yet"),
        ),
    };
    conditions.push(condition(o, AVAILABLE, status, reason, message));

    let (status, reason, message) = match &o.scale {
        Ok(scale) => ("True", scale.reason, scale.message.clone()),
        Err(problem) => ("False", "InvalidSpec", problem.clone()),
    };
    conditions.push(condition(o, SCALING_ACTIVE, status, reason, message));

    let served: BTreeSet<&String> = live.iter().flat_map(|w| w.handlers.iter()).collect();
    let missing: Vec<&str> = o
        .demand
        .handlers_queued
        .iter()
        .filter(|h| !served.contains(h))
        .map(String::as_str)
        .collect();
    let (status, reason, message) = if missing.is_empty() {
        (
            "False",
            "HandlersServed",
            "every queued step names a handler a live worker serves".to_owned(),
        )
    } else if live.is_empty() {
        (
            "Unknown",
            "NoLiveWorkers",
            format!(
                "steps wait for handlers {}; no live worker yet to tell whether the image serves them",
                missing.join(", ")
            ),
        )
    } else {
        (
            "True",
            "NoWorkerServes",
            format!(
                "queued steps name handlers no live worker serves: {}; register them in the worker image",
                missing.join(", ")
            ),
        )
    };
    conditions.push(condition(o, HANDLERS_MISSING, status, reason, message));

    WorkerPoolStatus {
        observed_generation: o.generation,
        replicas,
        ready_replicas: ready,
        selector: Some(selector_string(o.name)),
        queue_depth: o.demand.queued,
        in_flight: o.demand.in_flight,
        oldest_waiting_seconds: o.demand.oldest_wait.map(|d| d.as_secs()),
        live_workers: u32::try_from(live.len()).unwrap_or(u32::MAX),
        scaling: Some(scaling(o)),
        conditions,
    }
}

/// `status.scaling`: the mode, the replicas of the decision, and the last change of those replicas (kept while
/// they do not change, so that an unchanged pool computes an equal status; kept too while the spec is invalid
/// and there is no decision).
fn scaling(o: &Observed<'_>) -> ScalingStatus {
    let previous = o
        .previous
        .and_then(|s| s.scaling.clone())
        .unwrap_or_default();
    let (desired_replicas, last_scale_reason, last_scale_time) = match &o.scale {
        Ok(scale) if previous.desired_replicas != Some(scale.replicas) => (
            Some(scale.replicas),
            Some(change_reason(
                previous.desired_replicas,
                scale.replicas,
                scale,
            )),
            Some(Time(o.now)),
        ),
        _ => (
            previous.desired_replicas,
            previous.last_scale_reason,
            previous.last_scale_time,
        ),
    };
    ScalingStatus {
        mode: o.mode,
        desired_replicas,
        last_scale_reason,
        last_scale_time,
    }
}

fn condition(
    o: &Observed<'_>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> Condition {
    let previous = o
        .previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(o.now),
    };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: o.generation,
        last_transition_time,
    }
}

/// Whether `next` differs from `previous` in anything worth a write.
pub fn changed(previous: Option<&WorkerPoolStatus>, next: &WorkerPoolStatus) -> bool {
    previous != Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + jiff::SignedDuration::from_secs(secs)
    }

    fn deployment(replicas: i32, available: i32) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"replicas": replicas, "selector": {}, "template": {}},
            "status": {"replicas": replicas, "readyReplicas": available, "availableReplicas": available}
        }))
        .unwrap()
    }

    fn worker(handlers: &[&str], last_seen: i64) -> WorkerInfo {
        WorkerInfo {
            name: "w".into(),
            last_seen: at(last_seen),
            polling: false,
            handlers: handlers.iter().map(|s| s.to_string()).collect(),
            in_flight: 0,
        }
    }

    fn scale() -> Scale {
        Scale {
            replicas: 2,
            reason: "QueueDepth",
            message: "m".into(),
        }
    }

    fn cond<'a>(s: &'a WorkerPoolStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn status_reports_counts_selector_and_conditions() {
        let dep = deployment(2, 1);
        let demand = PoolDemand {
            queued: 3,
            in_flight: 1,
            oldest_wait: Some(Duration::from_millis(4500)),
            handlers_queued: ["charge".to_string(), "ship".to_string()].into(),
        };
        let workers = [worker(&["charge"], 0), worker(&["ship"], -100)];
        let sc = scale();
        let o = Observed {
            name: "orders",
            generation: Some(3),
            previous: None,
            deployment: Some(&dep),
            demand: &demand,
            workers: &workers,
            heartbeat_timeout: Duration::from_secs(30),
            mode: ScalingMode::QueueDepth,
            scale: Ok(&sc),
            now: at(10),
        };
        let s = compute(&o);
        assert_eq!((s.replicas, s.ready_replicas), (2, 1));
        assert_eq!(s.selector.as_deref(), Some("sluice.dev/pool=orders"));
        assert_eq!(
            (s.queue_depth, s.in_flight, s.oldest_waiting_seconds),
            (3, 1, Some(4))
        );
        assert_eq!(s.live_workers, 1, "the worker silent for 110 s is not live");
        assert_eq!(cond(&s, AVAILABLE).status, "True");
        let missing = cond(&s, HANDLERS_MISSING);
        assert_eq!(
            (missing.status.as_str(), missing.reason.as_str()),
            ("True", "NoWorkerServes")
        );
        assert!(missing.message.contains("ship") && !missing.message.contains("charge"));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );

        // Same observation later: equal status (transition times kept), so no write.
        let o2 = Observed {
            previous: Some(&s),
            now: at(11),
            ..o
        };
        let s2 = compute(&o2);
        assert!(!changed(Some(&s), &s2));
    }

    #[test]
    fn scaling_says_the_mode_and_why_the_size_last_changed() {
        let demand = PoolDemand::default();
        let dep = deployment(1, 1);
        let observe =
            |previous: Option<&WorkerPoolStatus>, scale: Result<&Scale, String>, now: i64| {
                compute(&Observed {
                    name: "p",
                    generation: Some(1),
                    previous,
                    deployment: Some(&dep),
                    demand: &demand,
                    workers: &[],
                    heartbeat_timeout: Duration::from_secs(30),
                    mode: ScalingMode::QueueDepth,
                    scale,
                    now: at(now),
                })
            };
        let one = Scale {
            replicas: 1,
            reason: "QueueDepth",
            message: "0 queued + 1 running steps at 4 per worker → 1 replicas (min 0, max 10)"
                .into(),
        };
        let first = observe(None, Ok(&one), 0);
        let scaling = first.scaling.clone().unwrap();
        assert_eq!(scaling.mode, ScalingMode::QueueDepth);
        assert_eq!(scaling.desired_replicas, Some(1));
        assert_eq!(
            scaling.last_scale_reason.as_deref(),
            Some(
                "started with 1: 0 queued + 1 running steps at 4 per worker → 1 replicas (min 0, max 10)"
            )
        );
        assert_eq!(scaling.last_scale_time, Some(Time(at(0))));

        // 40 queued: the decision goes to 10; the reason says from what, to what, and why.
        let ten = Scale {
            replicas: 10,
            reason: "ScaledUpToMax",
            message: "40 queued + 0 running steps at 4 per worker → 10 replicas (min 0, max 10)"
                .into(),
        };
        let second = observe(Some(&first), Ok(&ten), 5);
        let scaling = second.scaling.clone().unwrap();
        assert_eq!(scaling.desired_replicas, Some(10));
        assert_eq!(
            scaling.last_scale_reason.as_deref(),
            Some(
                "scaled up from 1 to 10: 40 queued + 0 running steps at 4 per worker → 10 replicas (min 0, max 10)"
            )
        );
        assert_eq!(scaling.last_scale_time, Some(Time(at(5))));

        // Same size, other demand: the last change stays as it was.
        let still_ten = Scale {
            message: "38 queued + 2 running steps at 4 per worker → 10 replicas (min 0, max 10)"
                .into(),
            ..ten.clone()
        };
        let third = observe(Some(&second), Ok(&still_ten), 6);
        assert_eq!(third.scaling, second.scaling);

        // An invalid spec has no decision: the last one is kept, the mode is still shown.
        let invalid = compute(&Observed {
            name: "p",
            generation: Some(2),
            previous: Some(&third),
            deployment: Some(&dep),
            demand: &demand,
            workers: &[],
            heartbeat_timeout: Duration::from_secs(30),
            mode: ScalingMode::Manual,
            scale: Err("spec.replicas is required".into()),
            now: at(7),
        });
        let scaling = invalid.scaling.unwrap();
        assert_eq!(scaling.mode, ScalingMode::Manual);
        assert_eq!(scaling.desired_replicas, Some(10));
        assert_eq!(scaling.last_scale_time, Some(Time(at(5))));
    }

    #[test]
    fn transitions_move_the_time_and_errors_show() {
        let demand = PoolDemand::default();
        let first = compute(&Observed {
            name: "p",
            generation: Some(1),
            previous: None,
            deployment: None,
            demand: &demand,
            workers: &[],
            heartbeat_timeout: Duration::from_secs(30),
            mode: ScalingMode::QueueDepth,
            scale: Err("scaling.scaleDownDelay: bad".into()),
            now: at(0),
        });
        assert_eq!(cond(&first, AVAILABLE).reason, "DeploymentMissing");
        assert_eq!(cond(&first, SCALING_ACTIVE).status, "False");
        assert_eq!(cond(&first, HANDLERS_MISSING).status, "False");
        let dep = deployment(0, 0);
        let sc = scale();
        let second = compute(&Observed {
            name: "p",
            generation: Some(1),
            previous: Some(&first),
            deployment: Some(&dep),
            demand: &demand,
            workers: &[],
            heartbeat_timeout: Duration::from_secs(30),
            mode: ScalingMode::QueueDepth,
            scale: Ok(&sc),
            now: at(5),
        });
        let a = cond(&second, AVAILABLE);
        assert_eq!(
            (a.status.as_str(), a.reason.as_str()),
            ("True", "ScaledToZero")
        );
        assert_eq!(a.last_transition_time, Time(at(5)));
        assert_eq!(
            cond(&second, HANDLERS_MISSING).last_transition_time,
            Time(at(0)),
            "unchanged status keeps its transition time"
        );
    }
}
