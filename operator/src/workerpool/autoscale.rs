//! The autoscaler: how many worker pods a pool should have. Pure: time and demand are arguments.
//!
//! - **QueueDepth**: the recommendation is `clamp(ceil((queued + inFlight) / targetStepsPerWorker), min, max)`.
//!   Scale-up follows it at once. Scale-down follows the *highest* recommendation in force during the last
//!   `scaleDownDelay` (the HPA's stabilization window; a recommendation holds until the next one), so replicas
//!   drop only once demand has been observed lower for the whole delay,
//!   and never below the number of workers that are running steps (busy workers survive a scale-down).
//! - **External**: `spec.replicas` as an HPA, KEDA or `kubectl scale` wrote it through the scale subresource
//!   (unset: keep what the Deployment has, 1 for a new pool).
//! - **Manual**: `spec.replicas` as written.

use std::collections::VecDeque;
use std::time::Duration;

use jiff::Timestamp;

use super::Error;
use crate::api::{ScalingMode, WorkerPoolSpec};
use crate::engine::timers::parse_duration;

/// Default `scaling.maxReplicas`.
pub const DEFAULT_MAX_REPLICAS: i32 = 10;
/// Default `scaling.scaleDownDelay`.
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(60);
/// Default `heartbeatTimeout`.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

/// A pool's scaling rules, resolved from its spec with defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// The mode.
    pub mode: ScalingMode,
    /// `spec.replicas`.
    pub spec_replicas: Option<i32>,
    /// Fewest replicas (QueueDepth).
    pub min: i32,
    /// Most replicas (QueueDepth).
    pub max: i32,
    /// Steps one worker should carry (QueueDepth).
    pub target: u32,
    /// Stabilization window of scale-downs (QueueDepth).
    pub scale_down_delay: Duration,
}

impl Policy {
    /// Resolves the policy of a spec.
    pub fn from_spec(spec: &WorkerPoolSpec) -> Result<Self, Error> {
        let scaling = spec.scaling.clone().unwrap_or_default();
        let min = scaling.min_replicas.unwrap_or(0).max(0);
        let max = scaling.max_replicas.unwrap_or(DEFAULT_MAX_REPLICAS).max(1);
        if min > max {
            return Err(Error::InvalidSpec(format!(
                "scaling.minReplicas {min} exceeds scaling.maxReplicas {max}"
            )));
        }
        let scale_down_delay = match scaling.scale_down_delay.as_deref() {
            Some(text) => parse_duration(text)
                .map_err(|e| Error::InvalidSpec(format!("scaling.scaleDownDelay: {e}")))?,
            None => DEFAULT_SCALE_DOWN_DELAY,
        };
        Ok(Self {
            mode: scaling.mode,
            spec_replicas: spec.replicas,
            min,
            max,
            target: scaling
                .target_steps_per_worker
                .unwrap_or_else(|| spec.concurrency.unwrap_or(1))
                .max(1),
            scale_down_delay,
        })
    }
}

/// The heartbeat timeout of a pool's workers.
pub fn heartbeat_timeout(spec: &WorkerPoolSpec) -> Result<Duration, Error> {
    match spec.heartbeat_timeout.as_deref() {
        Some(text) => {
            parse_duration(text).map_err(|e| Error::InvalidSpec(format!("heartbeatTimeout: {e}")))
        }
        None => Ok(DEFAULT_HEARTBEAT_TIMEOUT),
    }
}

/// The load of a pool right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Steps queued and not claimed.
    pub queued: u32,
    /// Steps running.
    pub in_flight: u32,
    /// Workers running at least one step.
    pub busy_workers: u32,
}

/// What the autoscaler remembers of one pool between reconciles: its recent recommendations.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    recommendations: VecDeque<(Timestamp, i32)>,
}

/// The autoscaler's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scale {
    /// Replicas the Deployment should have.
    pub replicas: i32,
    /// Why, as a condition reason (`ScalingActive`).
    pub reason: &'static str,
    /// Why, for people.
    pub message: String,
}

/// The replicas QueueDepth mode recommends for `load`, before stabilization.
pub fn recommend(policy: &Policy, load: Load) -> i32 {
    let demand = u64::from(load.queued) + u64::from(load.in_flight);
    let wanted = demand.div_ceil(u64::from(policy.target.max(1)));
    let wanted = i32::try_from(wanted).unwrap_or(i32::MAX);
    wanted.clamp(policy.min, policy.max)
}

/// Decides the replicas of a pool whose Deployment has `current` replicas (`None`: no Deployment yet).
pub fn decide(
    policy: &Policy,
    load: Load,
    current: Option<i32>,
    memory: &mut Memory,
    now: Timestamp,
) -> Scale {
    match policy.mode {
        ScalingMode::Manual => {
            let replicas = policy.spec_replicas.unwrap_or(1).max(0);
            Scale {
                replicas,
                reason: "Manual",
                message: format!("spec.replicas is {replicas}, as written"),
            }
        }
        ScalingMode::External => match policy.spec_replicas {
            Some(replicas) => Scale {
                replicas: replicas.max(0),
                reason: "External",
                message: format!(
                    "spec.replicas is {replicas}, set through the scale subresource (HPA, KEDA or kubectl scale)"
                ),
            },
            None => {
                let replicas = current.unwrap_or(1);
                Scale {
                    replicas,
                    reason: "External",
                    message: format!(
                        "waiting for an autoscaler to set spec.replicas through the scale subresource; keeping {replicas}"
                    ),
                }
            }
        },
        ScalingMode::QueueDepth => queue_depth(policy, load, current, memory, now),
    }
}

fn queue_depth(
    policy: &Policy,
    load: Load,
    current: Option<i32>,
    memory: &mut Memory,
    now: Timestamp,
) -> Scale {
    let wanted = recommend(policy, load);
    let window = jiff::SignedDuration::try_from(policy.scale_down_delay)
        .unwrap_or(jiff::SignedDuration::MAX);
    if memory.recommendations.is_empty()
        && let Some(current) = current
    {
        // A fresh memory (new pool, or an operator restart) starts as if the current size had just been
        // recommended, so a restart never shortcuts the scale-down delay.
        memory.recommendations.push_back((now, current));
    }
    memory.recommendations.push_back((now, wanted));
    // A recommendation holds until the next one: drop the oldest only once its successor is itself older than
    // the window, so the front is the recommendation in force `scaleDownDelay` ago.
    while memory
        .recommendations
        .get(1)
        .is_some_and(|(at, _)| now.duration_since(*at) >= window)
    {
        memory.recommendations.pop_front();
    }
    let stable = memory
        .recommendations
        .iter()
        .map(|(_, r)| *r)
        .max()
        .unwrap_or(wanted);
    let demand = format!(
        "{} queued + {} running steps at {} per worker → {wanted}",
        load.queued, load.in_flight, policy.target
    );
    let bounded = format!("{demand} replicas (min {}, max {})", policy.min, policy.max);
    let Some(current) = current else {
        return Scale {
            replicas: wanted,
            reason: "QueueDepth",
            message: bounded,
        };
    };
    if wanted >= current {
        let reason = if wanted == policy.max && wanted > current {
            "ScaledUpToMax"
        } else {
            "QueueDepth"
        };
        return Scale {
            replicas: wanted,
            reason,
            message: bounded,
        };
    }
    // Lower demand: go down only to the highest recommendation of the delay window, and keep busy workers.
    let busy = i32::try_from(load.busy_workers).unwrap_or(i32::MAX);
    let target = stable.max(busy).clamp(policy.min, policy.max).min(current);
    if target < current {
        Scale {
            replicas: target,
            reason: "ScaledDown",
            message: format!(
                "{demand}; demand stayed lower for {:?}: {target} replicas",
                policy.scale_down_delay
            ),
        }
    } else if stable.max(busy) >= current {
        Scale {
            replicas: current,
            reason: "ScaleDownDelayed",
            message: format!(
                "{demand}; keeping {current} for scaleDownDelay {:?} (or for busy workers) before scaling down",
                policy.scale_down_delay
            ),
        }
    } else {
        Scale {
            replicas: current,
            reason: "QueueDepth",
            message: format!("{demand}; keeping {current} replicas"),
        }
    }
}

/// Why the desired replicas of a pool changed from `from` (`None`: the pool's first decision) to `to` because of
/// `scale`: the text of `status.scaling.lastScaleReason` and of the operator's scaling Events.
pub fn change_reason(from: Option<i32>, to: i32, scale: &Scale) -> String {
    let change = match from {
        None => format!("started with {to}"),
        Some(from) if to > from => format!("scaled up from {from} to {to}"),
        Some(from) if to < from => format!("scaled down from {from} to {to}"),
        Some(_) => format!("kept {to}"),
    };
    format!("{change}: {}", scale.message)
}

/// An Event about a change of the worker Deployment's replicas the operator made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleEvent {
    /// `ScaledUp` or `ScaledDown`.
    pub reason: &'static str,
    /// Why, as in `status.scaling.lastScaleReason`.
    pub note: String,
}

/// The Event of an apply that set the Deployment's replicas from `from` to `to` because of `scale`; `None` when
/// the replicas did not change, or the Deployment is new (creating it is no scale change).
pub fn scale_event(from: Option<i32>, to: i32, scale: &Scale) -> Option<ScaleEvent> {
    let reason = match from? {
        from if to > from => "ScaledUp",
        from if to < from => "ScaledDown",
        _ => return None,
    };
    Some(ScaleEvent {
        reason,
        note: change_reason(from, to, scale),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Scaling;

    fn at(secs: i64) -> Timestamp {
        "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap() + jiff::SignedDuration::from_secs(secs)
    }

    fn policy(min: i32, max: i32, target: u32, delay_secs: u64) -> Policy {
        Policy {
            mode: ScalingMode::QueueDepth,
            spec_replicas: None,
            min,
            max,
            target,
            scale_down_delay: Duration::from_secs(delay_secs),
        }
    }

    fn load(queued: u32, in_flight: u32, busy: u32) -> Load {
        Load {
            queued,
            in_flight,
            busy_workers: busy,
        }
    }

    #[test]
    fn recommendation_is_ceil_of_demand_over_target_clamped() {
        let p = policy(0, 10, 4, 60);
        assert_eq!(recommend(&p, load(0, 0, 0)), 0);
        assert_eq!(recommend(&p, load(1, 0, 0)), 1);
        assert_eq!(recommend(&p, load(4, 0, 0)), 1);
        assert_eq!(recommend(&p, load(3, 2, 0)), 2);
        assert_eq!(recommend(&p, load(40, 0, 0)), 10);
        assert_eq!(recommend(&p, load(400, 0, 0)), 10, "clamped to max");
        assert_eq!(
            recommend(&policy(2, 10, 4, 60), load(0, 0, 0)),
            2,
            "clamped to min"
        );
        assert_eq!(
            recommend(&p, load(u32::MAX, u32::MAX, 0)),
            10,
            "no overflow"
        );
    }

    #[test]
    fn scales_up_at_once_and_down_only_after_the_delay() {
        let p = policy(0, 10, 4, 30);
        let mut m = Memory::default();
        let s = decide(&p, load(0, 0, 0), None, &mut m, at(0));
        assert_eq!(s.replicas, 0, "a new idle pool starts at min");
        let s = decide(&p, load(40, 0, 0), Some(0), &mut m, at(1));
        assert_eq!((s.replicas, s.reason), (10, "ScaledUpToMax"));
        // Demand falls to 8 (2 replicas) at t=10; replicas stay 10 until it has been lower for 30 s.
        for t in [10, 20, 31, 39] {
            let s = decide(&p, load(0, 8, 0), Some(10), &mut m, at(t));
            assert_eq!((s.replicas, s.reason), (10, "ScaleDownDelayed"), "t={t}");
        }
        let s = decide(&p, load(0, 8, 0), Some(10), &mut m, at(40));
        assert_eq!((s.replicas, s.reason), (2, "ScaledDown"));
        // Idle from t=41: back to min (0) after another delay.
        assert_eq!(
            decide(&p, load(0, 0, 0), Some(2), &mut m, at(41)).replicas,
            2
        );
        assert_eq!(
            decide(&p, load(0, 0, 0), Some(2), &mut m, at(70)).replicas,
            2
        );
        let s = decide(&p, load(0, 0, 0), Some(2), &mut m, at(71));
        assert_eq!(s.replicas, 0, "scaled to zero");
    }

    #[test]
    fn a_spike_inside_the_window_restarts_the_delay() {
        let p = policy(1, 10, 1, 10);
        let mut m = Memory::default();
        decide(&p, load(5, 0, 0), Some(1), &mut m, at(0));
        decide(&p, load(0, 0, 0), Some(5), &mut m, at(5));
        decide(&p, load(3, 0, 0), Some(5), &mut m, at(8));
        let s = decide(&p, load(0, 0, 0), Some(5), &mut m, at(12));
        assert_eq!(s.replicas, 5, "5 was in force until t=5, inside the window");
        let s = decide(&p, load(0, 0, 0), Some(5), &mut m, at(15));
        assert_eq!(
            s.replicas, 3,
            "the spike of 3 at t=8 is still inside the window"
        );
        assert_eq!(
            decide(&p, load(0, 0, 0), Some(3), &mut m, at(21)).replicas,
            3
        );
        assert_eq!(
            decide(&p, load(0, 0, 0), Some(3), &mut m, at(22)).replicas,
            1
        );
    }

    #[test]
    fn busy_workers_are_never_scaled_away() {
        let p = policy(0, 10, 4, 0);
        let mut m = Memory::default();
        // 5 steps on 5 different workers: demand says 2, but 5 workers are busy.
        let s = decide(&p, load(0, 5, 5), Some(8), &mut m, at(0));
        assert_eq!(s.replicas, 5);
        let s = decide(&p, load(0, 1, 1), Some(5), &mut m, at(2));
        assert_eq!(s.replicas, 1);
    }

    #[test]
    fn restart_does_not_shortcut_the_delay() {
        let p = policy(0, 10, 4, 60);
        let mut fresh = Memory::default();
        let s = decide(&p, load(0, 0, 0), Some(6), &mut fresh, at(0));
        assert_eq!(s.replicas, 6);
        assert_eq!(
            decide(&p, load(0, 0, 0), Some(6), &mut fresh, at(61)).replicas,
            0
        );
    }

    #[test]
    fn external_and_manual_follow_spec_replicas() {
        let mut p = policy(0, 10, 4, 60);
        p.mode = ScalingMode::External;
        let mut m = Memory::default();
        assert_eq!(decide(&p, load(100, 0, 0), None, &mut m, at(0)).replicas, 1);
        assert_eq!(
            decide(&p, load(100, 0, 0), Some(4), &mut m, at(0)).replicas,
            4
        );
        p.spec_replicas = Some(3);
        assert_eq!(
            decide(&p, load(100, 0, 0), Some(4), &mut m, at(0)).replicas,
            3
        );
        p.mode = ScalingMode::Manual;
        p.spec_replicas = Some(0);
        assert_eq!(
            decide(&p, load(100, 0, 0), Some(4), &mut m, at(0)).replicas,
            0
        );
    }

    #[test]
    fn messages_say_how_demand_gives_the_replicas() {
        let p = policy(0, 10, 4, 30);
        let mut m = Memory::default();
        let s = decide(&p, load(40, 0, 0), Some(1), &mut m, at(0));
        assert_eq!(
            s.message,
            "40 queued + 0 running steps at 4 per worker → 10 replicas (min 0, max 10)"
        );
        let s = decide(&p, load(0, 8, 0), Some(10), &mut m, at(10));
        assert_eq!(
            s.message,
            "0 queued + 8 running steps at 4 per worker → 2; keeping 10 for scaleDownDelay 30s (or for busy \
             workers) before scaling down"
        );
        let s = decide(&p, load(0, 8, 0), Some(10), &mut m, at(40));
        assert_eq!(
            s.message,
            "0 queued + 8 running steps at 4 per worker → 2; demand stayed lower for 30s: 2 replicas"
        );
    }

    #[test]
    fn a_change_of_replicas_has_a_reason_and_an_event() {
        let p = policy(0, 10, 4, 30);
        let up = decide(&p, load(40, 0, 0), Some(1), &mut Memory::default(), at(0));
        assert_eq!(
            change_reason(Some(1), 10, &up),
            "scaled up from 1 to 10: 40 queued + 0 running steps at 4 per worker → 10 replicas (min 0, max 10)"
        );
        assert_eq!(
            scale_event(Some(1), 10, &up),
            Some(ScaleEvent {
                reason: "ScaledUp",
                note: change_reason(Some(1), 10, &up),
            })
        );
        let manual = Scale {
            replicas: 2,
            reason: "Manual",
            message: "spec.replicas is 2, as written".into(),
        };
        assert_eq!(
            scale_event(Some(5), 2, &manual),
            Some(ScaleEvent {
                reason: "ScaledDown",
                note: "scaled down from 5 to 2: spec.replicas is 2, as written".into(),
            })
        );
        assert_eq!(
            change_reason(None, 2, &manual),
            "started with 2: spec.replicas is 2, as written"
        );
        // Creating the Deployment, or applying it without a change of replicas, is no scale change.
        assert_eq!(scale_event(None, 2, &manual), None);
        assert_eq!(scale_event(Some(2), 2, &manual), None);
    }

    #[test]
    fn policy_defaults_and_errors() {
        let spec = WorkerPoolSpec {
            concurrency: Some(3),
            ..WorkerPoolSpec::default()
        };
        let p = Policy::from_spec(&spec).unwrap();
        assert_eq!(
            (p.min, p.max, p.target),
            (0, 10, 3),
            "target defaults to concurrency"
        );
        assert_eq!(p.scale_down_delay, DEFAULT_SCALE_DOWN_DELAY);
        let spec = WorkerPoolSpec {
            scaling: Some(Scaling {
                scale_down_delay: Some("soon".into()),
                ..Scaling::default()
            }),
            ..WorkerPoolSpec::default()
        };
        assert!(Policy::from_spec(&spec).is_err());
        assert_eq!(
            heartbeat_timeout(&WorkerPoolSpec::default()).unwrap(),
            DEFAULT_HEARTBEAT_TIMEOUT
        );
    }
}
