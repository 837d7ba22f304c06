//! Cleaning up finished runs: a FlowRun whose `spec.ttlSecondsAfterFinished` (or the operator-wide default)
//! has passed since its `status.finishedAt` is deleted, and the garbage collector deletes its child FlowRuns
//! through their owner references.
//!
//! [`verdict`] decides, as a pure function; [`TtlController`] is the shell around it: a watch of finished
//! FlowRuns only (a field selector on `status.phase`, so the status writes of running flows never reach it),
//! one timer per finished run that has a time to live, and a delete when the timer fires. Nothing is
//! reconciled again: a finished run costs one timer until it goes.
//!
//! A delete names the UID and the resourceVersion its verdict was made on, so a stale timer never deletes a
//! run re-created under the same name, nor one that changed since (retried, or given another TTL): the API
//! server refuses with 409, and the watch brings the new version, which gets a verdict of its own.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures::future::join_all;
use futures::{FutureExt, StreamExt};
use jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Preconditions, PropagationPolicy};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::time::{DelayQueue, delay_queue};
use tracing::{debug, info, warn};

use crate::api::{FlowPhase, FlowRun};
use crate::context::Scope;
use crate::telemetry::Metrics;

/// The runs the watch asks for: those with a phase that may be final. The API server filters, so running
/// flows cost this controller nothing; [`verdict`] still checks the phase itself.
pub const FINISHED_SELECTOR: &str = "status.phase!=,status.phase!=Pending,status.phase!=Running";

/// First wait before a delete that failed for another reason than the run having changed or gone; it doubles
/// with every failure of the same run, up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Longest wait between delete attempts of one run (a missing RBAC right, an API server that is down).
const MAX_RETRY: Duration = Duration::from_secs(300);

/// What to do with a FlowRun, for its time to live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not to be deleted, as it stands: it has not finished, has no time to live, or is someone's child.
    Keep,
    /// To be deleted at this time.
    DeleteAt(Timestamp),
    /// Its time to live has passed: delete it now.
    DeleteNow,
}

/// The verdict on a run in `phase` that finished at `finished_at`, with a time to live of `ttl_seconds` (its
/// own or the operator's default), at `now`.
pub fn verdict(
    phase: Option<FlowPhase>,
    finished_at: Option<Timestamp>,
    ttl_seconds: Option<u32>,
    now: Timestamp,
) -> Verdict {
    let (Some(phase), Some(ttl)) = (phase, ttl_seconds) else {
        return Verdict::Keep;
    };
    // The engine records finishedAt with every final phase; a final phase without one (a hand-edited status)
    // gives no time to count from, and deleting too early is the one mistake that cannot be undone.
    let Some(finished_at) = finished_at.filter(|_| phase.is_terminal()) else {
        return Verdict::Keep;
    };
    // Past the end of time (year 9999) nothing is ever due.
    let Ok(at) = finished_at.checked_add(SignedDuration::from_secs(i64::from(ttl))) else {
        return Verdict::Keep;
    };
    if at <= now {
        Verdict::DeleteNow
    } else {
        Verdict::DeleteAt(at)
    }
}

/// The verdict on `fr` with the operator's `default_ttl_seconds` at `now`. Child FlowRuns are kept whatever
/// they say: they go with their parent, and deleting one before its parent recorded its end would run it
/// again (its name is deterministic, so the parent creates it anew). Runs already being deleted are kept too.
pub fn verdict_for(fr: &FlowRun, default_ttl_seconds: Option<u32>, now: Timestamp) -> Verdict {
    if fr.meta().deletion_timestamp.is_some() || is_child(fr) {
        return Verdict::Keep;
    }
    let status = fr.status.as_ref();
    verdict(
        status.and_then(|s| s.phase),
        status.and_then(|s| s.finished_at.as_ref()).map(|t| t.0),
        fr.spec.ttl_seconds_after_finished.or(default_ttl_seconds),
        now,
    )
}

/// Whether a FlowRun controls `fr` (the owner reference every child FlowRun carries).
fn is_child(fr: &FlowRun) -> bool {
    fr.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && o.kind == FlowRun::kind(&())
            && o.api_version.split('/').next() == Some(&*FlowRun::group(&()))
    })
}

/// Deletes finished FlowRuns whose time to live has passed. Run it only while leading: deleting is the
/// leader's job like every other write.
pub struct TtlController {
    client: Client,
    scope: Scope,
    default_ttl_seconds: Option<u32>,
    metrics: Metrics,
}

impl TtlController {
    /// A controller over the FlowRuns of `scope`, applying `default_ttl_seconds` to runs that set no TTL
    /// (`None`: those are kept).
    pub fn new(
        client: Client,
        scope: Scope,
        default_ttl_seconds: Option<u32>,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            scope,
            default_ttl_seconds,
            metrics,
        }
    }

    /// Watches finished FlowRuns and deletes them when their time comes, until `shutdown`.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let shutdown = shutdown.shared();
        let watches = self
            .scope
            .apis::<FlowRun>(&self.client)
            .into_iter()
            .map(|api| self.watch(api, shutdown.clone()));
        join_all(watches).await;
        info!("FlowRun TTL controller stopped");
    }

    async fn watch(&self, api: Api<FlowRun>, shutdown: impl Future<Output = ()>) {
        let config = watcher::Config::default()
            .fields(FINISHED_SELECTOR)
            .any_semantic();
        let mut events = pin!(watcher(api, config).default_backoff());
        let mut shutdown = pin!(shutdown);
        let mut timers = Timers::default();
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                Some(key) = timers.next_due() => self.delete(key, &mut timers).await,
                event = events.next() => match event {
                    Some(Ok(event)) => timers.observe(event, self.default_ttl_seconds, Timestamp::now()),
                    // The watcher retries with backoff by itself. A field selector the API server refuses
                    // means CRDs older than this operator (without status.phase as a selectable field).
                    Some(Err(e)) => warn!(
                        error = %e,
                        selector = FINISHED_SELECTOR,
                        "watching finished FlowRuns failed (are the current CRDs applied?)"
                    ),
                    None => return,
                },
            }
        }
    }

    /// Deletes the run whose timer fired, on the UID and version its verdict was made on. Children go with it
    /// in the background, by the garbage collector.
    async fn delete(&self, key: RunKey, timers: &mut Timers) {
        let Some(due) = timers.take(&key) else {
            return;
        };
        let (namespace, name) = &key;
        let api: Api<FlowRun> = Api::namespaced(self.client.clone(), namespace);
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid: Some(due.uid.clone()),
                resource_version: Some(due.resource_version.clone()),
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {
                self.metrics.flowruns_deleted.inc();
                info!(%namespace, flowrun = %name, uid = %due.uid, "deleted a finished FlowRun: its time to live has passed");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                debug!(%namespace, flowrun = %name, "finished FlowRun already gone");
            }
            // Re-created or changed since the verdict: the watch brings that version and it is judged anew.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(%namespace, flowrun = %name, reason = %s.message, "finished FlowRun changed before its deletion");
            }
            Err(e) => {
                self.metrics.reconcile_error("flowrun_ttl", "kube");
                let wait = timers.retry(key.clone(), due);
                warn!(%namespace, flowrun = %name, error = %e, retry_in_s = wait.as_secs(), "cannot delete a finished FlowRun");
            }
        }
    }
}

/// A FlowRun's namespace and name.
type RunKey = (String, String);

fn run_key(fr: &FlowRun) -> RunKey {
    (fr.namespace().unwrap_or_default(), fr.name_any())
}

/// A run whose delete is scheduled, and what its verdict was made on.
#[derive(Debug)]
struct Due {
    uid: String,
    resource_version: String,
    timer: delay_queue::Key,
    /// Failed delete attempts so far (they space out the next ones).
    failures: u32,
}

/// The timers of one watch: at most one per run.
#[derive(Default)]
struct Timers {
    queue: DelayQueue<RunKey>,
    due: HashMap<RunKey, Due>,
    /// Runs seen since the watch began listing afresh (after a start or a lost watch), to drop the timers of
    /// runs that left meanwhile.
    listing: Option<HashSet<RunKey>>,
}

impl Timers {
    /// Brings the timers up to date with one watch event.
    fn observe(&mut self, event: Event<FlowRun>, default_ttl_seconds: Option<u32>, now: Timestamp) {
        match event {
            Event::Init => self.listing = Some(HashSet::new()),
            Event::InitApply(fr) => {
                if let Some(seen) = &mut self.listing {
                    seen.insert(run_key(&fr));
                }
                self.judge(&fr, default_ttl_seconds, now);
            }
            Event::InitDone => {
                if let Some(seen) = self.listing.take() {
                    let gone: Vec<RunKey> = self
                        .due
                        .keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    for key in gone {
                        self.forget(&key);
                    }
                }
            }
            Event::Apply(fr) => self.judge(&fr, default_ttl_seconds, now),
            // Deleted, or no longer finished (a retried run leaves the selection).
            Event::Delete(fr) => self.forget(&run_key(&fr)),
        }
    }

    /// Sets, moves or cancels the timer of `fr` after its verdict.
    fn judge(&mut self, fr: &FlowRun, default_ttl_seconds: Option<u32>, now: Timestamp) {
        let key = run_key(fr);
        let wait = match verdict_for(fr, default_ttl_seconds, now) {
            Verdict::Keep => return self.forget(&key),
            Verdict::DeleteNow => Duration::ZERO,
            Verdict::DeleteAt(at) => {
                Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO)
            }
        };
        let uid = fr.uid().unwrap_or_default();
        let resource_version = fr.resource_version().unwrap_or_default();
        match self.due.get_mut(&key) {
            Some(due) => {
                self.queue.reset(&due.timer, wait);
                due.uid = uid;
                due.resource_version = resource_version;
                due.failures = 0;
            }
            None => {
                let timer = self.queue.insert(key.clone(), wait);
                self.due.insert(
                    key,
                    Due {
                        uid,
                        resource_version,
                        timer,
                        failures: 0,
                    },
                );
            }
        }
    }

    /// Cancels the timer of `key`, if any.
    fn forget(&mut self, key: &RunKey) {
        if let Some(due) = self.due.remove(key) {
            self.queue.remove(&due.timer);
        }
    }

    /// The next run whose timer fired. Its entry stays until [`Timers::take`].
    async fn next_due(&mut self) -> Option<RunKey> {
        // `None` when no timer is set: the select disables this branch until the next round.
        self.queue.next().await.map(|expired| expired.into_inner())
    }

    /// Takes the entry of a run whose timer fired (its timer key is spent).
    fn take(&mut self, key: &RunKey) -> Option<Due> {
        self.due.remove(key)
    }

    /// Schedules another delete attempt of a run whose delete failed; returns the wait.
    fn retry(&mut self, key: RunKey, mut due: Due) -> Duration {
        due.failures = due.failures.saturating_add(1);
        let wait = retry_wait(due.failures);
        due.timer = self.queue.insert(key.clone(), wait);
        self.due.insert(key, due);
        wait
    }
}

/// The wait before the next delete attempt after `failures` failed ones (at least one).
fn retry_wait(failures: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::api::{FlowRunSpec, FlowRunStatus};

    const TERMINAL: [FlowPhase; 3] = [
        FlowPhase::Succeeded,
        FlowPhase::Failed,
        FlowPhase::Cancelled,
    ];

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn secs(n: i64) -> SignedDuration {
        SignedDuration::from_secs(n)
    }

    fn run(
        name: &str,
        phase: Option<FlowPhase>,
        finished_at: Option<Timestamp>,
        ttl: Option<u32>,
    ) -> FlowRun {
        FlowRun {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{name}")),
                resource_version: Some("1".into()),
                ..ObjectMeta::default()
            },
            spec: FlowRunSpec {
                ttl_seconds_after_finished: ttl,
                ..FlowRunSpec::default()
            },
            status: Some(FlowRunStatus {
                phase,
                finished_at: finished_at.map(Time),
                ..FlowRunStatus::default()
            }),
        }
    }

    #[test]
    fn a_finished_run_is_deleted_when_its_ttl_has_passed() {
        let finished = ts("2030-01-01T00:00:00Z");
        for phase in TERMINAL {
            assert_eq!(
                verdict(Some(phase), Some(finished), Some(60), finished),
                Verdict::DeleteAt(finished + secs(60)),
                "{phase:?}"
            );
            assert_eq!(
                verdict(Some(phase), Some(finished), Some(60), finished + secs(59)),
                Verdict::DeleteAt(finished + secs(60)),
                "{phase:?} one second early"
            );
            assert_eq!(
                verdict(Some(phase), Some(finished), Some(60), finished + secs(60)),
                Verdict::DeleteNow,
                "{phase:?} on time"
            );
            assert_eq!(
                verdict(Some(phase), Some(finished), Some(60), finished + secs(3600)),
                Verdict::DeleteNow,
                "{phase:?} long overdue (after an operator restart)"
            );
            assert_eq!(
                verdict(Some(phase), Some(finished), Some(0), finished),
                Verdict::DeleteNow,
                "{phase:?} with ttl 0"
            );
        }
    }

    #[test]
    fn runs_not_finished_or_without_a_ttl_are_kept() {
        let finished = ts("2030-01-01T00:00:00Z");
        let later = finished + secs(1_000_000);
        for phase in [None, Some(FlowPhase::Pending), Some(FlowPhase::Running)] {
            // Even with a finishedAt left over from before a retry.
            assert_eq!(
                verdict(phase, Some(finished), Some(0), later),
                Verdict::Keep,
                "{phase:?}"
            );
            assert_eq!(verdict(phase, None, Some(0), later), Verdict::Keep);
        }
        for phase in TERMINAL {
            assert_eq!(
                verdict(Some(phase), Some(finished), None, later),
                Verdict::Keep,
                "{phase:?} without a ttl"
            );
            assert_eq!(
                verdict(Some(phase), None, Some(0), later),
                Verdict::Keep,
                "{phase:?} without finishedAt"
            );
        }
        assert_eq!(
            verdict(
                Some(FlowPhase::Failed),
                Some(Timestamp::MAX),
                Some(u32::MAX),
                later
            ),
            Verdict::Keep,
            "a deadline past the end of time never comes"
        );
    }

    #[test]
    fn the_run_s_own_ttl_wins_over_the_default() {
        let finished = ts("2030-01-01T00:00:00Z");
        let now = finished + secs(10);
        let own = |ttl| run("r", Some(FlowPhase::Succeeded), Some(finished), ttl);
        assert_eq!(
            verdict_for(&own(None), Some(30), now),
            Verdict::DeleteAt(finished + secs(30)),
            "no TTL of its own: the default"
        );
        assert_eq!(
            verdict_for(&own(Some(5)), Some(30), now),
            Verdict::DeleteNow,
            "a shorter TTL of its own"
        );
        assert_eq!(
            verdict_for(&own(Some(3600)), Some(30), now),
            Verdict::DeleteAt(finished + secs(3600)),
            "a longer TTL of its own"
        );
        assert_eq!(verdict_for(&own(None), None, now), Verdict::Keep);
    }

    #[test]
    fn children_and_runs_being_deleted_are_kept() {
        let finished = ts("2030-01-01T00:00:00Z");
        let now = finished + secs(100);
        let parent = run("parent", Some(FlowPhase::Succeeded), Some(finished), None);
        let mut child = run(
            "parent-sub",
            Some(FlowPhase::Succeeded),
            Some(finished),
            Some(0),
        );
        child.metadata.owner_references = parent.controller_owner_ref(&()).map(|o| vec![o]);
        assert_eq!(verdict_for(&child, Some(0), now), Verdict::Keep);

        // Owned by something else than a FlowRun, or not as its controller: the run's own TTL applies.
        let mut owned = run("owned", Some(FlowPhase::Succeeded), Some(finished), Some(0));
        owned.metadata.owner_references = Some(vec![
            OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "c".into(),
                uid: "u1".into(),
                controller: Some(true),
                ..OwnerReference::default()
            },
            OwnerReference {
                controller: Some(false),
                ..parent.controller_owner_ref(&()).unwrap()
            },
        ]);
        assert_eq!(verdict_for(&owned, None, now), Verdict::DeleteNow);

        let mut deleting = run("deleting", Some(FlowPhase::Failed), Some(finished), Some(0));
        deleting.metadata.deletion_timestamp = Some(Time(now));
        assert_eq!(verdict_for(&deleting, None, now), Verdict::Keep);
    }

    #[tokio::test]
    async fn a_timer_per_run_set_moved_and_cancelled_by_watch_events() {
        let now = Timestamp::now();
        // Due 200 ms from now: the test waits for the real timer.
        let finished = now - SignedDuration::from_millis(4800);
        let mut timers = Timers::default();
        let key = |n: &str| ("ns".to_owned(), n.to_owned());

        timers.observe(
            Event::Apply(run(
                "a",
                Some(FlowPhase::Succeeded),
                Some(finished),
                Some(5),
            )),
            None,
            now,
        );
        timers.observe(
            Event::Apply(run(
                "kept",
                Some(FlowPhase::Succeeded),
                Some(finished),
                None,
            )),
            None,
            now,
        );
        assert_eq!(
            timers.due.keys().cloned().collect::<Vec<_>>(),
            vec![key("a")],
            "only runs with a TTL cost a timer"
        );

        // A retry: the run is Running again and its timer goes.
        timers.observe(
            Event::Apply(run("a", Some(FlowPhase::Running), Some(finished), Some(5))),
            None,
            now,
        );
        assert!(timers.due.is_empty());
        assert!(timers.queue.is_empty());

        // Finished again: one timer; a new version of the run moves the same timer.
        timers.observe(
            Event::Apply(run("a", Some(FlowPhase::Failed), Some(finished), Some(5))),
            None,
            now,
        );
        let mut newer = run("a", Some(FlowPhase::Failed), Some(finished), Some(5));
        newer.metadata.resource_version = Some("2".into());
        timers.observe(Event::Apply(newer), None, now);
        assert_eq!(timers.queue.len(), 1);
        assert_eq!(timers.due[&key("a")].resource_version, "2");
        let start = std::time::Instant::now();
        let fired = tokio::time::timeout(Duration::from_secs(10), timers.next_due()).await;
        assert_eq!(fired, Ok(Some(key("a"))));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
            "finished 4.8 s ago with a TTL of 5 s: due in 200 ms, fired after {waited:?}"
        );
        let due = timers.take(&key("a")).expect("the fired run's entry");
        assert_eq!((due.uid.as_str(), due.failures), ("uid-a", 0));
        assert!(timers.due.is_empty() && timers.queue.is_empty());

        // A failed delete is tried again later, its timer set anew.
        let wait = timers.retry(key("a"), due);
        assert_eq!(wait, FIRST_RETRY);
        assert_eq!(timers.due[&key("a")].failures, 1);
        assert_eq!(timers.queue.len(), 1);
        timers.forget(&key("a"));
        assert!(timers.queue.is_empty());
    }

    #[test]
    fn failed_deletes_back_off_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=10).map(|f| retry_wait(f).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_wait(u32::MAX), MAX_RETRY);
    }

    #[tokio::test]
    async fn a_fresh_list_drops_the_timers_of_runs_that_left_meanwhile() {
        let now = Timestamp::now();
        let finished = now - secs(1);
        let mut timers = Timers::default();
        for name in ["gone", "stays"] {
            timers.observe(
                Event::Apply(run(
                    name,
                    Some(FlowPhase::Succeeded),
                    Some(finished),
                    Some(600),
                )),
                None,
                now,
            );
        }
        // The watch was lost and lists again; "gone" was deleted by hand meanwhile.
        timers.observe(Event::Init, None, now);
        timers.observe(
            Event::InitApply(run(
                "stays",
                Some(FlowPhase::Succeeded),
                Some(finished),
                Some(600),
            )),
            None,
            now,
        );
        timers.observe(Event::InitDone, None, now);
        assert_eq!(
            timers.due.keys().map(|k| k.1.as_str()).collect::<Vec<_>>(),
            vec!["stays"]
        );
        assert_eq!(timers.queue.len(), 1);
        timers.observe(
            Event::Delete(run(
                "stays",
                Some(FlowPhase::Succeeded),
                Some(finished),
                Some(600),
            )),
            None,
            now,
        );
        assert!(timers.due.is_empty() && timers.queue.is_empty());
    }
}
