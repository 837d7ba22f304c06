//! Unit tests of the task index and a property test that random operations keep its indexes equal to a
//! recomputation from the entries.

use sluice_wire::FlowRunRef;

use super::index::loss_deadline;
use super::*;

fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

fn at(secs: i64) -> Timestamp {
    t0() + jiff::SignedDuration::from_secs(secs)
}

fn task(step: &str, handler: &str, attempt: u32) -> QueuedTask {
    QueuedTask {
        task: Task {
            id: TaskId::from_parts("ns", "fr", step, None),
            attempt,
            handler: handler.into(),
            input: serde_json::json!({}),
            deadline: None,
            heartbeat_interval_seconds: 5,
            flow_run: FlowRunRef {
                namespace: "ns".into(),
                name: "fr".into(),
                uid: "u".into(),
            },
            step: step.into(),
            instance: None,
        },
        pool: "p".into(),
        timeout: Some(Duration::from_secs(60)),
        heartbeat_timeout: Duration::from_secs(30),
    }
}

fn handlers(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn offer_is_idempotent_and_fenced_by_attempt() {
    let mut q = TaskQueue::new();
    assert_eq!(q.offer(task("a", "h", 1), t0()), Offer::Queued);
    assert_eq!(q.offer(task("a", "h", 1), t0()), Offer::AlreadyKnown);
    assert_eq!(q.offer(task("a", "h", 2), t0()), Offer::Replaced);
    assert_eq!(q.offer(task("a", "h", 1), t0()), Offer::Stale);
    let claimed = q.claim("p", &handlers(&["h"]), 10, "w", t0());
    assert_eq!(
        claimed.len(),
        1,
        "the replaced attempt must not be handed out twice"
    );
    assert_eq!(claimed[0].attempt, 2);
}

#[test]
fn an_attempt_whose_result_was_persisted_is_never_queued_again() {
    let mut q = TaskQueue::new();
    q.offer(task("a", "h", 1), t0());
    let claimed = q.claim("p", &handlers(&["h"]), 10, "w", t0());
    assert_eq!(claimed.len(), 1);
    let id = claimed[0].id.clone();
    q.finish(&id, 1);
    // A decision on an older copy of the run still shows attempt 1 Ready, or Running on its worker.
    assert_eq!(q.offer(task("a", "h", 1), at(1)), Offer::Stale);
    assert_eq!(q.adopt_running(task("a", "h", 1), "w", at(1)), Offer::Stale);
    assert!(q.claim("p", &handlers(&["h"]), 10, "w2", at(1)).is_empty());
    // The next attempt (a retry) is queued as usual.
    assert_eq!(q.offer(task("a", "h", 2), at(2)), Offer::Queued);

    // An attempt dropped without a result (a suspended run withholds it) is offered again on resume.
    q.offer(task("b", "h", 1), t0());
    let b = task("b", "h", 1).task.id;
    q.cancel(&b);
    assert_eq!(q.offer(task("b", "h", 1), at(3)), Offer::Queued);
}

#[test]
fn claim_respects_pool_handlers_capacity_and_fills_deadline() {
    let mut q = TaskQueue::new();
    q.offer(task("a", "h1", 1), at(0));
    q.offer(task("b", "h2", 1), at(1));
    q.offer(task("c", "h1", 1), at(2));
    let mut other_pool = task("d", "h1", 1);
    other_pool.pool = "other".into();
    q.offer(other_pool, at(0));

    assert!(q.claim("p", &handlers(&["nope"]), 5, "w", at(3)).is_empty());
    let got = q.claim("p", &handlers(&["h1", "h2"]), 2, "w", at(3));
    let steps: Vec<_> = got.iter().map(|t| t.step.as_str()).collect();
    assert_eq!(steps, ["a", "b"], "oldest first across handlers");
    assert_eq!(got[0].deadline.as_deref(), Some("2026-01-01T00:01:03Z"));
    let rest = q.claim("p", &handlers(&["h1", "h2"]), 5, "w2", at(4));
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].step, "c");
    assert_eq!(q.demand("p", at(4)).in_flight, 3);
    assert_eq!(q.demand("other", at(4)).queued, 1);
}

#[test]
fn the_pool_of_a_finished_task_is_remembered_for_a_while() {
    let mut q = TaskQueue::new();
    q.offer(task("a", "h", 1), t0());
    let a = TaskId::from_parts("ns", "fr", "a", None);
    q.claim("p", &handlers(&["h"]), 1, "w", t0());
    q.finish(&a, 1);
    assert!(q.check(&a, 1, "w").is_err(), "the queue forgot the task");
    assert_eq!(q.pool_of(&a).as_deref(), Some("p"));
    assert_eq!(q.pool_of(&TaskId::from_parts("ns", "fr", "b", None)), None);
}

#[test]
fn finished_pools_forget_the_oldest_beyond_their_capacity() {
    let mut pools = FinishedPools::with_capacity(2);
    let id = |step: &str| TaskId::from_parts("ns", "fr", step, None);
    pools.remember(&id("a"), "p");
    pools.remember(&id("b"), "q");
    // Remembering `a` again does not make it younger, nor count twice.
    pools.remember(&id("a"), "p");
    pools.remember(&id("c"), "r");
    assert_eq!(pools.get(&id("a")), None);
    assert_eq!(pools.get(&id("b")), Some("q"));
    assert_eq!(pools.get(&id("c")), Some("r"));
    assert_eq!((pools.order.len(), pools.pools.len()), (2, 2));
}

#[test]
fn heartbeats_and_reports_are_fenced() {
    let mut q = TaskQueue::new();
    q.offer(task("a", "h", 1), t0());
    let id = TaskId::from_parts("ns", "fr", "a", None);
    assert_eq!(
        q.check(&id, 1, "w"),
        Err(Fenced::UnknownTask(id.clone())),
        "queued, not claimed"
    );
    q.claim("p", &handlers(&["h"]), 1, "w", t0());
    assert_eq!(q.heartbeat(&id, 1, "w", at(10)), Ok(false));
    assert!(matches!(
        q.check(&id, 1, "intruder"),
        Err(Fenced::WrongWorker { .. })
    ));
    assert!(matches!(
        q.check(&id, 0, "w"),
        Err(Fenced::StaleAttempt { current: 1, .. })
    ));
    q.cancel(&id);
    assert_eq!(
        q.heartbeat(&id, 1, "w", at(11)),
        Ok(true),
        "cancel is answered by the heartbeat"
    );
    q.finish(&id, 1);
    assert_eq!(q.check(&id, 1, "w"), Err(Fenced::UnknownTask(id)));
}

#[test]
fn silent_attempts_are_lost_once_and_then_refused() {
    let mut q = TaskQueue::new();
    q.offer(task("a", "h", 1), t0());
    q.offer(task("b", "h", 1), t0());
    q.claim("p", &handlers(&["h"]), 2, "w", t0());
    let b = TaskId::from_parts("ns", "fr", "b", None);
    q.heartbeat(&b, 1, "w", at(25)).unwrap();
    assert_eq!(q.next_loss_check(), Some(at(30)));
    assert!(
        q.take_lost(at(30)).is_empty(),
        "exactly at the limit is not yet lost"
    );
    let lost = q.take_lost(at(31));
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].id, TaskId::from_parts("ns", "fr", "a", None));
    assert!(
        q.take_lost(at(100)).iter().all(|l| l.id == b),
        "a is reported once"
    );
    let a = &lost[0].id;
    assert!(
        q.check(a, 1, "w").is_err(),
        "the lost worker's late report is refused"
    );
    // The retry arrives as attempt 2 and replaces the releasing entry.
    assert_eq!(q.offer(task("a", "h", 2), at(101)), Offer::Replaced);
    q.finish(a, 1);
    assert_eq!(
        q.demand("p", at(101)).queued,
        1,
        "finishing attempt 1 keeps attempt 2"
    );
}

#[test]
fn worker_release_and_restart_adoption() {
    let mut q = TaskQueue::new();
    assert_eq!(
        q.adopt_running(task("a", "h", 3), "w1", at(0)),
        Offer::Queued
    );
    q.offer(task("b", "h", 1), at(0));
    q.claim("p", &handlers(&["h"]), 1, "w2", at(0));
    let lost = q.take_worker("p", "w1");
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].attempt, lost[0].worker.as_str()), (3, "w1"));
    assert!(q.take_worker("p", "w1").is_empty(), "released once");
    assert_eq!(q.take_worker("p", "w2").len(), 1);
}

#[test]
fn releasing_a_worker_leaves_same_named_workers_of_other_namespaces_alone() {
    // Pod names repeat across namespaces: worker `w-1` of pool `a/p` and worker `w-1` of pool `b/p`.
    let in_ns = |ns: &str| {
        let mut t = task("s", "h", 1);
        t.task.id = TaskId::from_parts(ns, "fr", "s", None);
        t.task.flow_run.namespace = ns.into();
        t.pool = format!("{ns}/p");
        t
    };
    let mut q = TaskQueue::new();
    q.offer(in_ns("a"), t0());
    q.offer(in_ns("b"), t0());
    assert_eq!(q.claim("a/p", &handlers(&["h"]), 1, "w-1", t0()).len(), 1);
    assert_eq!(q.claim("b/p", &handlers(&["h"]), 1, "w-1", t0()).len(), 1);

    let lost = q.take_worker("a/p", "w-1");
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].namespace, "a");
    let b = TaskId::from_parts("b", "fr", "s", None);
    assert_eq!(
        q.check(&b, 1, "w-1"),
        Ok(()),
        "the other namespace's worker keeps its attempt"
    );
    assert_eq!(q.demand("b/p", at(1)).in_flight, 1);
    assert_eq!(q.take_worker("b/p", "w-1").len(), 1);
}

#[test]
fn worker_registry_tracks_polls_heartbeats_and_load() {
    let mut q = TaskQueue::new();
    assert!(q.workers("p").is_empty());
    q.poll_started("p", "w1", &handlers(&["h", "g"]), at(0));
    q.poll_started("p", "w2", &handlers(&["h"]), at(0));
    q.offer(task("a", "h", 1), at(1));
    q.claim("p", &handlers(&["h"]), 1, "w1", at(1));
    q.poll_ended("p", "w1", at(1));
    let workers = q.workers("p");
    assert_eq!(workers.len(), 2);
    let w1 = &workers[0];
    assert_eq!(
        (w1.name.as_str(), w1.polling, w1.in_flight, w1.last_seen),
        ("w1", false, 1, at(1))
    );
    assert_eq!(
        w1.handlers,
        ["g", "h"].iter().map(|s| s.to_string()).collect()
    );
    assert!(workers[1].polling, "w2 is still in its long poll");
    assert!(workers[1].is_live(at(1000), Duration::from_secs(1)));

    let a = TaskId::from_parts("ns", "fr", "a", None);
    q.heartbeat(&a, 1, "w1", at(20)).unwrap();
    let w1 = q.workers("p").remove(0);
    assert_eq!(w1.last_seen, at(20), "a heartbeat refreshes the worker");
    assert!(w1.is_live(at(50), Duration::from_secs(30)));
    assert!(!w1.is_live(at(51), Duration::from_secs(30)));
    assert!(q.workers("other").is_empty(), "registries are per pool");

    q.finish(&a, 1);
    q.forget_worker("p", "w1");
    assert_eq!(q.workers("p").len(), 1);
}

#[test]
fn adopted_attempts_name_their_worker_before_it_is_heard_of() {
    let mut q = TaskQueue::new();
    q.adopt_running(task("a", "h", 1), "w9", at(5));
    let workers = q.workers("p");
    assert_eq!(workers.len(), 1);
    assert_eq!((workers[0].in_flight, workers[0].last_seen), (1, at(5)));
}

#[test]
fn retain_drops_queued_and_cancels_claimed() {
    let mut q = TaskQueue::new();
    q.offer(task("a", "h", 1), t0());
    q.offer(task("b", "h", 1), t0());
    q.claim("p", &handlers(&["h"]), 1, "w", t0());
    let cancelled = q.retain_flow_run("ns", "fr", |_, _| false);
    assert_eq!(cancelled, vec![TaskId::from_parts("ns", "fr", "a", None)]);
    assert!(!q.has_work("p", &handlers(&["h"])));
    let a = TaskId::from_parts("ns", "fr", "a", None);
    assert_eq!(q.heartbeat(&a, 1, "w", t0()), Ok(true));
}

// ---- Indexes -------------------------------------------------------------------------------------------

/// The indexes recomputed from the entries alone, without the incremental code under test.
fn brute_force_indexes(q: &TaskQueue) -> Indexes {
    let mut ix = Indexes::default();
    for (id, e) in &q.entries {
        let fr = &e.queued.task.flow_run;
        ix.by_flow_run
            .entry((fr.namespace.clone(), fr.name.clone()))
            .or_default()
            .insert(id.clone());
        let pool = ix.pools.entry(e.queued.pool.clone()).or_default();
        match &e.state {
            State::Queued { since } => {
                *pool
                    .queued
                    .entry(e.queued.task.handler.clone())
                    .or_default() += 1;
                pool.queued_since.insert((*since, id.clone()));
            }
            State::Claimed { worker, last_seen } => {
                pool.in_flight += 1;
                pool.claimed
                    .entry(worker.clone())
                    .or_default()
                    .insert(id.clone());
                let limit = jiff::SignedDuration::try_from(e.queued.heartbeat_timeout).unwrap();
                if let Ok(deadline) = last_seen.checked_add(limit) {
                    ix.loss_deadlines.insert((deadline, id.clone()));
                }
            }
            State::Releasing => pool.in_flight += 1,
        }
    }
    ix
}

/// What the queries answered before the indexes, by scanning every entry.
fn brute_force_demand(q: &TaskQueue, pool: &str, now: Timestamp) -> PoolDemand {
    let mut demand = PoolDemand::default();
    for entry in q.entries.values().filter(|e| e.queued.pool == pool) {
        match &entry.state {
            State::Queued { since } => {
                demand.queued += 1;
                demand
                    .handlers_queued
                    .insert(entry.queued.task.handler.clone());
                let waited = now.duration_since(*since).unsigned_abs();
                demand.oldest_wait = Some(demand.oldest_wait.map_or(waited, |w| w.max(waited)));
            }
            State::Claimed { .. } | State::Releasing => demand.in_flight += 1,
        }
    }
    demand
}

fn brute_force_lost(q: &TaskQueue, now: Timestamp) -> Vec<TaskId> {
    let mut lost: Vec<TaskId> = q
        .entries
        .iter()
        .filter(|(_, e)| match &e.state {
            State::Claimed { last_seen, .. } => {
                let limit = jiff::SignedDuration::try_from(e.queued.heartbeat_timeout).unwrap();
                now.duration_since(*last_seen) > limit
            }
            _ => false,
        })
        .map(|(id, _)| id.clone())
        .collect();
    lost.sort();
    lost
}

fn brute_force_claimed_by(q: &TaskQueue, pool: &str, worker: &str) -> Vec<TaskId> {
    let mut ids: Vec<TaskId> = q
        .entries
        .iter()
        .filter(|(_, e)| {
            e.queued.pool == pool
                && matches!(&e.state, State::Claimed { worker: w, .. } if w == worker)
        })
        .map(|(id, _)| id.clone())
        .collect();
    ids.sort();
    ids
}

/// Checks the indexes and every indexed query against a recomputation from the entries.
fn assert_consistent(q: &TaskQueue, pools: &[&str], handler_names: &[&str], now: Timestamp) {
    assert_eq!(
        q.indexes,
        brute_force_indexes(q),
        "indexes drifted from entries"
    );
    let deadline = q
        .entries
        .values()
        .filter_map(|e| match &e.state {
            State::Claimed { last_seen, .. } => {
                loss_deadline(*last_seen, e.queued.heartbeat_timeout)
            }
            _ => None,
        })
        .min();
    assert_eq!(q.next_loss_check(), deadline);
    for pool in pools {
        assert_eq!(
            q.demand(pool, now),
            brute_force_demand(q, pool, now),
            "{pool}"
        );
        for handler in handler_names {
            let brute = q.entries.values().any(|e| {
                matches!(e.state, State::Queued { .. })
                    && e.queued.pool == *pool
                    && e.queued.task.handler == *handler
            });
            assert_eq!(q.has_work(pool, &handlers(&[handler])), brute);
        }
        for info in q.workers(pool) {
            let held = brute_force_claimed_by(q, pool, &info.name).len();
            assert_eq!(info.in_flight as usize, held, "{pool} {}", info.name);
        }
    }
    // Every queued entry can be found by a claim.
    for (id, e) in &q.entries {
        if matches!(e.state, State::Queued { .. }) {
            let key = (e.queued.pool.clone(), e.queued.task.handler.clone());
            assert!(
                q.ready.get(&key).is_some_and(|fifo| fifo.contains(id)),
                "{id} is queued but not in its FIFO"
            );
        }
    }
}

/// A task of FlowRun `namespace/flow_run` in pool `namespace/<pool>`.
fn task_of(
    namespace: &str,
    flow_run: &str,
    step: &str,
    handler: &str,
    attempt: u32,
    pool: &str,
) -> QueuedTask {
    let mut t = task(step, handler, attempt);
    t.task.id = TaskId::from_parts(namespace, flow_run, step, None);
    t.task.flow_run.namespace = namespace.into();
    t.task.flow_run.name = flow_run.into();
    t.pool = format!("{namespace}/{pool}");
    t
}

#[test]
fn indexes_follow_offer_claim_heartbeat_release_and_finish() {
    let mut q = TaskQueue::new();
    let pools = ["p"];
    let names = ["h", "g"];
    q.offer(task("a", "h", 1), at(0));
    q.offer(task("b", "g", 1), at(1));
    assert_consistent(&q, &pools, &names, at(1));
    q.claim("p", &handlers(&["h"]), 1, "w", at(2));
    let a = TaskId::from_parts("ns", "fr", "a", None);
    assert_eq!(q.next_loss_check(), Some(at(32)));
    q.heartbeat(&a, 1, "w", at(10)).unwrap();
    assert_eq!(
        q.next_loss_check(),
        Some(at(40)),
        "a heartbeat moves the deadline"
    );
    assert_consistent(&q, &pools, &names, at(10));
    assert!(q.take_lost(at(40)).is_empty());
    assert_eq!(q.take_lost(at(41)).len(), 1);
    assert_eq!(
        q.next_loss_check(),
        None,
        "a releasing attempt has no deadline"
    );
    assert_consistent(&q, &pools, &names, at(41));
    q.offer(task("a", "h", 2), at(42));
    assert_eq!(q.demand("p", at(42)).queued, 2);
    q.finish(&a, 2);
    q.finish(&TaskId::from_parts("ns", "fr", "b", None), 1);
    assert_consistent(&q, &pools, &names, at(42));
    assert!(q.indexes.pools.is_empty() && q.indexes.by_flow_run.is_empty());
    assert_eq!(
        q.pools(),
        BTreeSet::from(["p".to_owned()]),
        "only its worker is left"
    );
}

#[test]
fn retain_touches_only_its_flow_run_and_take_worker_only_its_pool() {
    let mut q = TaskQueue::new();
    q.offer(task_of("a", "one", "s", "h", 1, "p"), at(0));
    q.offer(task_of("a", "one", "t", "h", 1, "p"), at(0));
    q.offer(task_of("a", "two", "s", "h", 1, "p"), at(0));
    q.offer(task_of("b", "one", "s", "h", 1, "p"), at(0));
    q.claim("a/p", &handlers(&["h"]), 2, "w", at(1));
    q.claim("b/p", &handlers(&["h"]), 1, "w", at(1));
    let cancelled = q.retain_flow_run("a", "one", |_, _| false);
    assert_eq!(
        cancelled,
        vec![
            TaskId::from_parts("a", "one", "s", None),
            TaskId::from_parts("a", "one", "t", None)
        ]
    );
    assert_eq!(q.demand("a/p", at(1)).queued, 1, "a/two/s stays queued");
    let lost = q.take_worker("b/p", "w");
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].namespace, "b");
    assert_consistent(&q, &["a/p", "b/p"], &["h"], at(1));
}

#[test]
fn thousands_of_entries_across_many_flow_runs() {
    const FLOW_RUNS: usize = 600;
    const STEPS: usize = 6;
    let pools = ["ns/p0", "ns/p1", "ns/p2"];
    let names = ["h0", "h1"];
    let mut q = TaskQueue::new();
    for f in 0..FLOW_RUNS {
        for s in 0..STEPS {
            let pool = format!("p{}", f % 3);
            let handler = format!("h{}", s % 2);
            let mut t = task_of(
                "ns",
                &format!("fr{f}"),
                &format!("s{s}"),
                &handler,
                1,
                &pool,
            );
            // Heartbeat timeouts of 10 s to 40 s, so losses come in waves.
            t.heartbeat_timeout = Duration::from_secs(10 * (1 + (f % 4) as u64));
            q.offer(t, at((f * STEPS + s) as i64 / 100));
        }
    }
    let total = FLOW_RUNS * STEPS;
    assert_eq!(q.entries.len(), total);
    let queued: u32 = pools.iter().map(|p| q.demand(p, at(100)).queued).sum();
    assert_eq!(queued as usize, total);
    assert_eq!(
        q.demand("ns/p0", at(100)).oldest_wait,
        Some(Duration::from_secs(100)),
        "the first offer waited longest"
    );

    // Ten workers per pool take 1000 tasks each, all at t = 50 s.
    let mut claimed = Vec::new();
    for pool in pools {
        for w in 0..10 {
            let got = q.claim(pool, &handlers(&names), 100, &format!("w{w}"), at(50));
            assert_eq!(got.len(), 100, "{pool} w{w}");
            claimed.extend(got);
        }
    }
    assert_eq!(claimed.len(), 3000);
    assert_consistent(&q, &pools, &names, at(50));
    for pool in pools {
        let d = q.demand(pool, at(50));
        assert_eq!((d.queued, d.in_flight), (200, 1000), "{pool}");
        let workers = q.workers(pool);
        assert_eq!(workers.len(), 10);
        assert!(workers.iter().all(|w| w.in_flight == 100));
    }

    // Every even-numbered FlowRun heartbeats at 55 s; everything else stays silent.
    for t in &claimed {
        let fr: usize = t.flow_run.name[2..].parse().unwrap();
        if fr.is_multiple_of(2) {
            let worker = brute_force_owner(&q, &t.id);
            assert_eq!(q.heartbeat(&t.id, 1, &worker, at(55)), Ok(false));
        }
    }
    // Heartbeats at 55 s with a 10 s timeout go silent first.
    assert_eq!(q.next_loss_check(), Some(at(65)));

    // One FlowRun is cancelled: only its tasks are touched.
    let victim = claimed[0].flow_run.name.clone();
    let victim_ids: BTreeSet<TaskId> = q
        .entries
        .keys()
        .filter(|id| id.as_str().starts_with(&format!("ns/{victim}/")))
        .cloned()
        .collect();
    let cancelled = q.retain_flow_run("ns", &victim, |_, _| false);
    assert!(!cancelled.is_empty());
    assert!(cancelled.iter().all(|id| victim_ids.contains(id)));
    assert_eq!(q.entries.len(), total - (STEPS - cancelled.len()));
    for id in &cancelled {
        let worker = brute_force_owner(&q, id);
        assert_eq!(q.heartbeat(id, 1, &worker, at(56)), Ok(true));
    }

    // Losses at 71 s: silent attempts with a 20 s timeout (claimed at 50 s), and heartbeating ones with a 10 s
    // timeout (last heard of at 55 or 56 s).
    let expected = brute_force_lost(&q, at(71));
    let lost = q.take_lost(at(71));
    assert_eq!(
        lost.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        expected
    );
    assert!(!lost.is_empty());
    assert!(q.take_lost(at(71)).is_empty(), "each loss is reported once");
    assert_consistent(&q, &pools, &names, at(71));

    // A worker's pod goes away: exactly its remaining claims are released.
    let held = brute_force_claimed_by(&q, "ns/p1", "w3");
    let released = q.take_worker("ns/p1", "w3");
    assert_eq!(
        released.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
        held
    );
    assert_consistent(&q, &pools, &names, at(71));

    // Everything finishes: the indexes empty out.
    let all: Vec<(TaskId, u32)> = q
        .entries
        .iter()
        .map(|(id, e)| (id.clone(), e.attempt()))
        .collect();
    for (id, attempt) in all {
        q.finish(&id, attempt);
    }
    assert_eq!(q.indexes, Indexes::default());
}

fn brute_force_owner(q: &TaskQueue, id: &TaskId) -> String {
    match &q.entries[id].state {
        State::Claimed { worker, .. } => worker.clone(),
        other => panic!("{id} is not claimed: {other:?}"),
    }
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    const POOLS: [&str; 2] = ["a/p", "b/p"];
    const HANDLERS: [&str; 2] = ["h", "g"];
    const WORKERS: [&str; 3] = ["w0", "w1", "w2"];
    /// Two FlowRuns in namespace a, one in b; three steps each.
    const FLOW_RUNS: [(&str, &str); 3] = [("a", "one"), ("a", "two"), ("b", "one")];
    const STEPS: usize = 3;

    #[derive(Clone, Debug)]
    enum Op {
        Offer {
            task: usize,
            attempt: u32,
            pool: usize,
            handler: usize,
            timeout: u64,
        },
        Adopt {
            task: usize,
            attempt: u32,
            pool: usize,
            worker: usize,
        },
        Claim {
            pool: usize,
            handlers: u8,
            capacity: u32,
            worker: usize,
        },
        Heartbeat {
            task: usize,
            attempt: u32,
            worker: usize,
        },
        Finish {
            task: usize,
            attempt: u32,
        },
        Cancel {
            task: usize,
        },
        Retain {
            flow_run: usize,
            keep: u16,
        },
        TakeLost,
        TakeWorker {
            pool: usize,
            worker: usize,
        },
        RetryRelease,
        Advance {
            secs: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let task = 0..FLOW_RUNS.len() * STEPS;
        let attempt = 1u32..4;
        prop_oneof![
            4 => (task.clone(), attempt.clone(), 0..2usize, 0..2usize, 1u64..6).prop_map(
                |(task, attempt, pool, handler, timeout)| Op::Offer { task, attempt, pool, handler, timeout }
            ),
            1 => (task.clone(), attempt.clone(), 0..2usize, 0..3usize)
                .prop_map(|(task, attempt, pool, worker)| Op::Adopt { task, attempt, pool, worker }),
            3 => (0..2usize, 1u8..4, 1u32..4, 0..3usize)
                .prop_map(|(pool, handlers, capacity, worker)| Op::Claim { pool, handlers, capacity, worker }),
            3 => (task.clone(), attempt.clone(), 0..3usize)
                .prop_map(|(task, attempt, worker)| Op::Heartbeat { task, attempt, worker }),
            2 => (task.clone(), attempt.clone()).prop_map(|(task, attempt)| Op::Finish { task, attempt }),
            1 => task.clone().prop_map(|task| Op::Cancel { task }),
            1 => (0..FLOW_RUNS.len(), any::<u16>()).prop_map(|(flow_run, keep)| Op::Retain { flow_run, keep }),
            2 => Just(Op::TakeLost),
            1 => (0..2usize, 0..3usize).prop_map(|(pool, worker)| Op::TakeWorker { pool, worker }),
            1 => Just(Op::RetryRelease),
            2 => (0u8..4).prop_map(|secs| Op::Advance { secs }),
        ]
    }

    fn task_id(task: usize) -> TaskId {
        let (ns, fr) = FLOW_RUNS[task / STEPS];
        TaskId::from_parts(ns, fr, &format!("s{}", task % STEPS), None)
    }

    fn queued_task(
        task: usize,
        attempt: u32,
        pool: usize,
        handler: usize,
        timeout: u64,
    ) -> QueuedTask {
        let (ns, fr) = FLOW_RUNS[task / STEPS];
        let mut t = task_of(
            ns,
            fr,
            &format!("s{}", task % STEPS),
            HANDLERS[handler],
            attempt,
            "p",
        );
        // Pools are qualified names; a FlowRun's task may go to the other namespace's pool in this model.
        t.pool = POOLS[pool].into();
        t.heartbeat_timeout = Duration::from_secs(timeout);
        t
    }

    /// Applies one operation, checking the answers of those that return something against the entries.
    fn apply(q: &mut TaskQueue, op: &Op, now: &mut Timestamp, lost: &mut Vec<LostAttempt>) {
        match *op {
            Op::Offer {
                task,
                attempt,
                pool,
                handler,
                timeout,
            } => {
                q.offer(queued_task(task, attempt, pool, handler, timeout), *now);
            }
            Op::Adopt {
                task,
                attempt,
                pool,
                worker,
            } => {
                q.adopt_running(
                    queued_task(task, attempt, pool, 0, 3),
                    WORKERS[worker],
                    *now,
                );
            }
            Op::Claim {
                pool,
                handlers: mask,
                capacity,
                worker,
            } => {
                let names: Vec<String> = HANDLERS
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, h)| h.to_string())
                    .collect();
                let available = q
                    .entries
                    .values()
                    .filter(|e| {
                        matches!(e.state, State::Queued { .. })
                            && e.queued.pool == POOLS[pool]
                            && names.contains(&e.queued.task.handler)
                    })
                    .count();
                let got = q.claim(POOLS[pool], &names, capacity, WORKERS[worker], *now);
                assert_eq!(got.len(), available.min(capacity as usize));
            }
            Op::Heartbeat {
                task,
                attempt,
                worker,
            } => {
                let _ = q.heartbeat(&task_id(task), attempt, WORKERS[worker], *now);
            }
            Op::Finish { task, attempt } => q.finish(&task_id(task), attempt),
            Op::Cancel { task } => {
                q.cancel(&task_id(task));
            }
            Op::Retain { flow_run, keep } => {
                let (ns, fr) = FLOW_RUNS[flow_run];
                let before: BTreeSet<TaskId> = q
                    .entries
                    .iter()
                    .filter(|(_, e)| matches!(e.state, State::Claimed { .. }))
                    .map(|(id, _)| id.clone())
                    .collect();
                let cancelled = q.retain_flow_run(ns, fr, |id, attempt| {
                    let bit = (id.as_str().len() + attempt as usize) % 16;
                    keep & (1 << bit) != 0
                });
                assert!(cancelled.iter().all(
                    |id| before.contains(id) && id.as_str().starts_with(&format!("{ns}/{fr}/"))
                ));
            }
            Op::TakeLost => {
                let expected = brute_force_lost(q, *now);
                let got = q.take_lost(*now);
                assert_eq!(
                    got.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
                    expected
                );
                lost.extend(got);
            }
            Op::TakeWorker { pool, worker } => {
                let expected = brute_force_claimed_by(q, POOLS[pool], WORKERS[worker]);
                let got = q.take_worker(POOLS[pool], WORKERS[worker]);
                assert_eq!(
                    got.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
                    expected
                );
                lost.extend(got);
            }
            Op::RetryRelease => {
                if let Some(l) = lost.pop() {
                    q.retry_release(l);
                }
            }
            Op::Advance { secs } => *now += jiff::SignedDuration::from_secs(secs.into()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn indexes_match_a_recomputation_after_every_operation(ops in prop::collection::vec(op(), 1..80)) {
            let mut q = TaskQueue::new();
            let mut now = t0();
            let mut lost = Vec::new();
            for op in &ops {
                apply(&mut q, op, &mut now, &mut lost);
                assert_consistent(&q, &POOLS, &HANDLERS, now);
            }
        }
    }
}
