//! The broker's in-memory index of tasks: what is queued per pool and handler, what is claimed by which worker,
//! and when each claimed attempt was last heard of.
//!
//! Nothing here is the source of truth: every entry mirrors an attempt already recorded in a FlowRun's status
//! (invariant 1), and after an operator restart the index is rebuilt from statuses (invariant 6). Keeping it
//! pure (time is an argument, no locks, no I/O) lets the claim, fencing and loss rules be tested exhaustively;
//! the HTTP shell wraps it in a mutex and wakes long polls.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use jiff::Timestamp;
use sluice_wire::{Task, TaskId};

/// A task ready to be handed out: one attempt of one step (or forEach instance), recorded in status.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedTask {
    /// The task as the worker will see it; `deadline` is filled in at claim time.
    pub task: Task,
    /// The WorkerPool whose workers may claim it.
    pub pool: String,
    /// Time one attempt may take from its claim, if limited.
    pub timeout: Option<Duration>,
    /// Silence after which a claimed attempt is declared lost.
    pub heartbeat_timeout: Duration,
}

/// What happened to an offered task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the first time.
    Queued,
    /// The same attempt is already known (queued or claimed); nothing changed.
    AlreadyKnown,
    /// An older attempt of the same task was known and is replaced by this one.
    Replaced,
    /// A newer attempt of the same task is already known; the offer is stale and ignored.
    Stale,
}

/// Why a heartbeat or report was refused by the index.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fenced {
    /// The task is not known (finished, cancelled, or never queued).
    #[error("task {0} is not in flight")]
    UnknownTask(TaskId),
    /// The attempt is not the task's current one.
    #[error("attempt {attempt} of task {id} is stale: the current attempt is {current}")]
    StaleAttempt {
        /// The task.
        id: TaskId,
        /// The attempt the caller named.
        attempt: u32,
        /// The attempt the index knows.
        current: u32,
    },
    /// The attempt was claimed by another worker.
    #[error("attempt {attempt} of task {id} belongs to worker {owner}")]
    WrongWorker {
        /// The task.
        id: TaskId,
        /// The attempt.
        attempt: u32,
        /// The worker that claimed it.
        owner: String,
    },
}

/// A claimed attempt whose worker went silent or away: to be released as a retryable failure, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostAttempt {
    /// The task.
    pub id: TaskId,
    /// The attempt that was lost.
    pub attempt: u32,
    /// The worker that held it.
    pub worker: String,
    /// The FlowRun's namespace.
    pub namespace: String,
    /// The FlowRun's name.
    pub flow_run: String,
}

/// Demand seen by one pool, for autoscaling and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolDemand {
    /// Tasks queued and not claimed.
    pub queued: u32,
    /// Tasks claimed and not finished.
    pub in_flight: u32,
    /// How long the oldest queued task has waited.
    pub oldest_wait: Option<Duration>,
    /// Handlers that queued tasks need.
    pub handlers_queued: BTreeSet<String>,
}

/// What the broker knows of one worker process of a pool: fed by its claims (long polls) and heartbeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker's name (its pod's name for workers run by a WorkerPool).
    pub name: String,
    /// When the worker was last heard of: a long poll starting or ending, or a heartbeat.
    pub last_seen: Timestamp,
    /// Whether a long poll of this worker is open right now (it is alive and idle for some of its slots).
    pub polling: bool,
    /// The handlers its last claim asked for.
    pub handlers: BTreeSet<String>,
    /// Attempts it holds now.
    pub in_flight: u32,
}

impl WorkerInfo {
    /// Whether the worker counts as live at `now`: polling, or heard of within `timeout`.
    pub fn is_live(&self, now: Timestamp, timeout: Duration) -> bool {
        self.polling || now.duration_since(self.last_seen).unsigned_abs() <= timeout
    }
}

#[derive(Clone, Debug, Default)]
struct Seen {
    last_seen: Option<Timestamp>,
    polls: u32,
    handlers: BTreeSet<String>,
}

#[derive(Clone, Debug)]
enum State {
    Queued {
        since: Timestamp,
    },
    Claimed {
        worker: String,
        last_seen: Timestamp,
    },
    /// Declared lost; waits for the release to be persisted, and is never reported lost again.
    Releasing,
}

#[derive(Clone, Debug)]
struct Entry {
    queued: QueuedTask,
    state: State,
    cancel: bool,
}

impl Entry {
    fn attempt(&self) -> u32 {
        self.queued.task.attempt
    }
}

/// The broker's index of queued and in-flight tasks.
#[derive(Debug, Default)]
pub struct TaskQueue {
    entries: HashMap<TaskId, Entry>,
    /// FIFO of queued task ids per (pool, handler). May hold ids that were since claimed, replaced or removed;
    /// those are skipped lazily at claim time.
    ready: BTreeMap<(String, String), VecDeque<TaskId>>,
    /// Workers heard of, per pool: the registry behind live-worker counts, `HandlersMissing` and the reaper.
    workers: BTreeMap<String, BTreeMap<String, Seen>>,
    /// How long each attempt claimed since the last [`TaskQueue::take_dispatch_waits`] had waited in the queue.
    dispatch_waits: Vec<Duration>,
}

impl TaskQueue {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues an attempt recorded in status (phase Ready). Idempotent for the same attempt.
    pub fn offer(&mut self, task: QueuedTask, now: Timestamp) -> Offer {
        let id = task.task.id.clone();
        let outcome = match self.entries.get(&id) {
            Some(existing) if existing.attempt() == task.task.attempt => {
                return Offer::AlreadyKnown;
            }
            Some(existing) if existing.attempt() > task.task.attempt => return Offer::Stale,
            Some(_) => Offer::Replaced,
            None => Offer::Queued,
        };
        self.ready
            .entry((task.pool.clone(), task.task.handler.clone()))
            .or_default()
            .push_back(id.clone());
        self.entries.insert(
            id,
            Entry {
                queued: task,
                state: State::Queued { since: now },
                cancel: false,
            },
        );
        outcome
    }

    /// Records an attempt that status shows as Running on `worker` (after an operator restart), giving it a
    /// fresh heartbeat window from `now`.
    pub fn adopt_running(&mut self, task: QueuedTask, worker: &str, now: Timestamp) -> Offer {
        let id = task.task.id.clone();
        let outcome = match self.entries.get(&id) {
            Some(existing) if existing.attempt() == task.task.attempt => {
                return Offer::AlreadyKnown;
            }
            Some(existing) if existing.attempt() > task.task.attempt => return Offer::Stale,
            Some(_) => Offer::Replaced,
            None => Offer::Queued,
        };
        self.entries.insert(
            id,
            Entry {
                queued: task,
                state: State::Claimed {
                    worker: worker.to_owned(),
                    last_seen: now,
                },
                cancel: false,
            },
        );
        outcome
    }

    /// Hands out up to `capacity` queued tasks of `pool` for the given handlers, oldest first across handlers,
    /// filling in each attempt's deadline from `now`.
    pub fn claim(
        &mut self,
        pool: &str,
        handlers: &[String],
        capacity: u32,
        worker: &str,
        now: Timestamp,
    ) -> Vec<Task> {
        let mut out = Vec::new();
        while out.len() < capacity as usize {
            // Pick the handler queue whose live head waited longest, so one busy handler can't starve another.
            let mut best: Option<(Timestamp, &String)> = None;
            for handler in handlers {
                if let Some(since) = self.live_head(pool, handler)
                    && best.is_none_or(|(t, _)| since < t)
                {
                    best = Some((since, handler));
                }
            }
            let Some((since, handler)) = best else { break };
            self.dispatch_waits
                .push(now.duration_since(since).unsigned_abs());
            let key = (pool.to_owned(), handler.clone());
            let id = self
                .ready
                .get_mut(&key)
                .and_then(VecDeque::pop_front)
                .expect("live_head found a queued head");
            let entry = self.entries.get_mut(&id).expect("live head has an entry");
            entry.state = State::Claimed {
                worker: worker.to_owned(),
                last_seen: now,
            };
            let mut task = entry.queued.task.clone();
            task.deadline = entry.queued.timeout.and_then(|t| {
                let deadline = now
                    .checked_add(jiff::SignedDuration::try_from(t).ok()?)
                    .ok()?;
                Some(deadline.to_string())
            });
            out.push(task);
        }
        out
    }

    /// The enqueue time of the first id in a (pool, handler) FIFO that is still queued, dropping dead ids.
    fn live_head(&mut self, pool: &str, handler: &str) -> Option<Timestamp> {
        let queue = self.ready.get_mut(&(pool.to_owned(), handler.to_owned()))?;
        while let Some(id) = queue.front() {
            match self.entries.get(id) {
                Some(Entry {
                    state: State::Queued { since },
                    queued,
                    ..
                }) if queued.pool == pool && queued.task.handler == handler => return Some(*since),
                _ => {
                    queue.pop_front();
                }
            }
        }
        None
    }

    /// Checks that `attempt` is the current, claimed attempt of `id` held by `worker`.
    pub fn check(&self, id: &TaskId, attempt: u32, worker: &str) -> Result<(), Fenced> {
        let entry = self
            .entries
            .get(id)
            .ok_or_else(|| Fenced::UnknownTask(id.clone()))?;
        if entry.attempt() != attempt {
            return Err(Fenced::StaleAttempt {
                id: id.clone(),
                attempt,
                current: entry.attempt(),
            });
        }
        match &entry.state {
            State::Claimed { worker: owner, .. } if owner != worker => Err(Fenced::WrongWorker {
                id: id.clone(),
                attempt,
                owner: owner.clone(),
            }),
            State::Claimed { .. } => Ok(()),
            // A report for an attempt the index still shows queued or released is not in flight.
            State::Queued { .. } | State::Releasing => Err(Fenced::UnknownTask(id.clone())),
        }
    }

    /// A heartbeat: refreshes the attempt's window and tells whether the worker must stop.
    pub fn heartbeat(
        &mut self,
        id: &TaskId,
        attempt: u32,
        worker: &str,
        now: Timestamp,
    ) -> Result<bool, Fenced> {
        self.check(id, attempt, worker)?;
        let entry = self.entries.get_mut(id).expect("checked above");
        if let State::Claimed { last_seen, .. } = &mut entry.state {
            *last_seen = now;
        }
        let cancel = entry.cancel;
        let pool = entry.queued.pool.clone();
        let seen = self
            .workers
            .entry(pool)
            .or_default()
            .entry(worker.to_owned())
            .or_default();
        seen.last_seen = Some(now);
        Ok(cancel)
    }

    /// Forgets a task once its result (or release) is persisted. Only the named attempt is removed, so a newer
    /// attempt offered meanwhile survives.
    pub fn finish(&mut self, id: &TaskId, attempt: u32) {
        if self.entries.get(id).is_some_and(|e| e.attempt() == attempt) {
            self.entries.remove(id);
        }
    }

    /// Asks the worker of a claimed task to stop (its next heartbeat answers cancel) and drops it if queued.
    pub fn cancel(&mut self, id: &TaskId) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        match entry.state {
            State::Queued { .. } => {
                self.entries.remove(id);
            }
            State::Claimed { .. } | State::Releasing => entry.cancel = true,
        }
    }

    /// Drops every queued task of one FlowRun for which `keep` says no (the FlowRun was deleted, cancelled, or
    /// its status no longer holds the attempt), and returns the claimed ones it asked to cancel.
    pub fn retain_flow_run(
        &mut self,
        namespace: &str,
        name: &str,
        mut keep: impl FnMut(&TaskId, u32) -> bool,
    ) -> Vec<TaskId> {
        let doomed: Vec<TaskId> = self
            .entries
            .iter()
            .filter(|(id, e)| {
                let fr = &e.queued.task.flow_run;
                fr.namespace == namespace && fr.name == name && !keep(id, e.attempt())
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut cancelled = Vec::new();
        for id in doomed {
            if matches!(self.entries[&id].state, State::Claimed { .. }) {
                cancelled.push(id.clone());
            }
            self.cancel(&id);
        }
        cancelled
    }

    /// Claimed attempts silent for longer than their heartbeat timeout. Each is reported once: it stays in the
    /// index as releasing (refusing its worker's late reports) until [`TaskQueue::finish`].
    pub fn take_lost(&mut self, now: Timestamp) -> Vec<LostAttempt> {
        let mut lost = Vec::new();
        for (id, entry) in &mut self.entries {
            if let State::Claimed { worker, last_seen } = &entry.state {
                let silent = now.duration_since(*last_seen);
                let limit = jiff::SignedDuration::try_from(entry.queued.heartbeat_timeout)
                    .unwrap_or(jiff::SignedDuration::MAX);
                if silent > limit {
                    lost.push(lost_attempt(id, entry, worker));
                    entry.state = State::Releasing;
                }
            }
        }
        lost.sort_by(|a, b| a.id.cmp(&b.id));
        lost
    }

    /// Releases every attempt of (qualified) `pool` held by a worker whose pod is gone (the reaper), once. A
    /// worker is named by its pool and its name: pod names repeat across namespaces, so a same-named worker of
    /// another pool keeps its attempts.
    pub fn take_worker(&mut self, pool: &str, worker: &str) -> Vec<LostAttempt> {
        let mut lost = Vec::new();
        for (id, entry) in &mut self.entries {
            if let State::Claimed { worker: owner, .. } = &entry.state
                && owner == worker
                && entry.queued.pool == pool
            {
                lost.push(lost_attempt(id, entry, owner));
                entry.state = State::Releasing;
            }
        }
        lost.sort_by(|a, b| a.id.cmp(&b.id));
        lost
    }

    /// The queue waits of the attempts claimed since the last call (for the dispatch-latency histogram).
    pub fn take_dispatch_waits(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.dispatch_waits)
    }

    /// Puts back a lost attempt whose release could not be persisted, so the next loss check reports it again.
    pub fn retry_release(&mut self, lost: LostAttempt) {
        if let Some(entry) = self.entries.get_mut(&lost.id)
            && entry.attempt() == lost.attempt
            && matches!(entry.state, State::Releasing)
        {
            entry.state = State::Claimed {
                worker: lost.worker,
                last_seen: Timestamp::MIN,
            };
        }
    }

    /// The (qualified) pool of a known task.
    pub fn pool_of(&self, id: &TaskId) -> Option<String> {
        self.entries.get(id).map(|e| e.queued.pool.clone())
    }

    /// The earliest time a claimed attempt could be declared lost, to schedule the next check.
    pub fn next_loss_check(&self) -> Option<Timestamp> {
        self.entries
            .values()
            .filter_map(|e| match &e.state {
                State::Claimed { last_seen, .. } => {
                    let limit = jiff::SignedDuration::try_from(e.queued.heartbeat_timeout).ok()?;
                    last_seen.checked_add(limit).ok()
                }
                _ => None,
            })
            .min()
    }

    /// Demand of one pool.
    pub fn demand(&self, pool: &str, now: Timestamp) -> PoolDemand {
        let mut demand = PoolDemand::default();
        for entry in self.entries.values().filter(|e| e.queued.pool == pool) {
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

    /// Every (qualified) pool with a known task or worker.
    pub fn pools(&self) -> BTreeSet<String> {
        self.entries
            .values()
            .map(|e| e.queued.pool.clone())
            .chain(self.workers.keys().cloned())
            .collect()
    }

    /// A worker of `pool` opened a long poll for `handlers`.
    pub fn poll_started(&mut self, pool: &str, worker: &str, handlers: &[String], now: Timestamp) {
        let seen = self
            .workers
            .entry(pool.to_owned())
            .or_default()
            .entry(worker.to_owned())
            .or_default();
        seen.polls += 1;
        seen.last_seen = Some(now);
        seen.handlers = handlers.iter().cloned().collect();
    }

    /// A long poll of a worker of `pool` ended (answered, timed out, or the worker went away).
    pub fn poll_ended(&mut self, pool: &str, worker: &str, now: Timestamp) {
        if let Some(seen) = self
            .workers
            .get_mut(pool)
            .and_then(|workers| workers.get_mut(worker))
        {
            seen.polls = seen.polls.saturating_sub(1);
            seen.last_seen = Some(now);
        }
    }

    /// Forgets a worker of `pool` (its pod is gone). A worker that comes back is simply registered again.
    pub fn forget_worker(&mut self, pool: &str, worker: &str) {
        if let Some(workers) = self.workers.get_mut(pool) {
            workers.remove(worker);
            if workers.is_empty() {
                self.workers.remove(pool);
            }
        }
    }

    /// The workers of `pool` heard of since they were registered, with the attempts each holds now (workers
    /// holding attempts adopted after a restart are listed even before they are heard of), sorted by name.
    pub fn workers(&self, pool: &str) -> Vec<WorkerInfo> {
        let mut out: BTreeMap<String, WorkerInfo> = BTreeMap::new();
        for (name, seen) in self.workers.get(pool).into_iter().flatten() {
            let Some(last_seen) = seen.last_seen else {
                continue;
            };
            out.insert(
                name.clone(),
                WorkerInfo {
                    name: name.clone(),
                    last_seen,
                    polling: seen.polls > 0,
                    handlers: seen.handlers.clone(),
                    in_flight: 0,
                },
            );
        }
        for entry in self.entries.values().filter(|e| e.queued.pool == pool) {
            if let State::Claimed { worker, last_seen } = &entry.state {
                let info = out.entry(worker.clone()).or_insert_with(|| WorkerInfo {
                    name: worker.clone(),
                    last_seen: *last_seen,
                    polling: false,
                    handlers: BTreeSet::new(),
                    in_flight: 0,
                });
                info.in_flight += 1;
                info.last_seen = info.last_seen.max(*last_seen);
            }
        }
        out.into_values().collect()
    }

    /// Whether `pool` has a queued task for one of `handlers` (to decide whether a long poll may return).
    pub fn has_work(&self, pool: &str, handlers: &[String]) -> bool {
        self.entries.values().any(|e| {
            matches!(e.state, State::Queued { .. })
                && e.queued.pool == pool
                && handlers.contains(&e.queued.task.handler)
        })
    }
}

fn lost_attempt(id: &TaskId, entry: &Entry, worker: &str) -> LostAttempt {
    LostAttempt {
        id: id.clone(),
        attempt: entry.attempt(),
        worker: worker.to_owned(),
        namespace: entry.queued.task.flow_run.namespace.clone(),
        flow_run: entry.queued.task.flow_run.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_wire::FlowRunRef;

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
}
