//! The broker's in-memory index of tasks: what is queued per pool and handler, what is claimed by which worker,
//! and when each claimed attempt was last heard of.
//!
//! Nothing here is the source of truth: every entry mirrors an attempt already recorded in a FlowRun's status
//! (invariant 1), and after an operator restart the index is rebuilt from statuses (invariant 6). Keeping it
//! pure (time is an argument, no locks, no I/O) lets the claim, fencing and loss rules be tested exhaustively;
//! the HTTP shell wraps it in a mutex and wakes long polls.
//!
//! The broker holds every live FlowRun's tasks, so no operation of the hot path (offer, claim, heartbeat,
//! finish, retain, the loss check, demand) scans all entries: the [`index`] module keeps them findable by
//! FlowRun, by loss deadline, by pool and by worker.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use jiff::Timestamp;
use sluice_wire::{Task, TaskId};

use index::Indexes;

mod index;

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
    /// Derived from `entries`, changed only through [`TaskQueue::insert`], [`TaskQueue::remove`],
    /// [`TaskQueue::set_state`] and the heartbeat's [`Indexes::touch`].
    indexes: Indexes,
    /// FIFO of queued task ids per (pool, handler). May hold ids that were since claimed, replaced or removed;
    /// those are skipped lazily at claim time.
    ready: BTreeMap<(String, String), VecDeque<TaskId>>,
    /// Workers heard of, per pool: the registry behind live-worker counts, `HandlersMissing` and the reaper.
    workers: BTreeMap<String, BTreeMap<String, Seen>>,
    /// How long each attempt claimed since the last [`TaskQueue::take_dispatch_waits`] had waited in the queue.
    dispatch_waits: Vec<Duration>,
    /// Pools of the tasks that left the queue most recently.
    finished: FinishedPools,
}

/// How many tasks that left the queue the broker still knows the pool of. A worker may report again after its
/// task was finished (its acknowledgement was lost); its pool is still checked while the task is among these.
/// At about a hundred bytes each, this bounds the memory to a few MiB.
pub const REMEMBERED_FINISHED: usize = 16_384;

/// The pools of the last tasks removed from the queue, oldest forgotten first.
#[derive(Debug)]
struct FinishedPools {
    capacity: usize,
    order: VecDeque<TaskId>,
    pools: HashMap<TaskId, String>,
    /// The last attempt of each task whose result (or loss) was persisted: that attempt has ended in status
    /// for good, so an offer of it again comes from an older copy of the run and is refused.
    ended: HashMap<TaskId, u32>,
}

impl Default for FinishedPools {
    fn default() -> Self {
        Self::with_capacity(REMEMBERED_FINISHED)
    }
}

impl FinishedPools {
    fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            order: VecDeque::new(),
            pools: HashMap::new(),
            ended: HashMap::new(),
        }
    }

    fn remember(&mut self, id: &TaskId, pool: &str) {
        // A task finished again (a later attempt) keeps its place: the pool of an id never changes.
        if self.pools.insert(id.clone(), pool.to_owned()).is_none() {
            self.order.push_back(id.clone());
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.pools.remove(&oldest);
                self.ended.remove(&oldest);
            }
        }
    }

    fn get(&self, id: &TaskId) -> Option<&str> {
        self.pools.get(id).map(String::as_str)
    }

    /// Records that `attempt` of a remembered task ended in status.
    fn end(&mut self, id: &TaskId, attempt: u32) {
        if self.pools.contains_key(id) {
            let last = self.ended.entry(id.clone()).or_insert(attempt);
            *last = (*last).max(attempt);
        }
    }

    /// Whether `attempt` of `id` is known to have ended.
    fn has_ended(&self, id: &TaskId, attempt: u32) -> bool {
        self.ended.get(id).is_some_and(|&last| attempt <= last)
    }
}

impl TaskQueue {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces an entry, keeping the indexes in step.
    fn insert(&mut self, id: TaskId, entry: Entry) {
        if let Some(old) = self.entries.remove(&id) {
            self.indexes.remove(&id, &old);
        }
        self.indexes.insert(&id, &entry);
        self.entries.insert(id, entry);
    }

    /// Removes an entry, keeping the indexes in step.
    fn remove(&mut self, id: &TaskId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.indexes.remove(id, &entry);
        self.finished.remember(id, &entry.queued.pool);
        Some(entry)
    }

    /// Changes an entry's state, keeping the indexes in step.
    fn set_state(&mut self, id: &TaskId, state: State) {
        if let Some(entry) = self.entries.get_mut(id) {
            self.indexes.leave(id, entry);
            entry.state = state;
            self.indexes.enter(id, entry);
        }
    }

    /// Whether a new offer of `attempt` changes anything, and how.
    fn offer_outcome(&self, id: &TaskId, attempt: u32) -> Offer {
        match self.entries.get(id) {
            Some(existing) if existing.attempt() == attempt => Offer::AlreadyKnown,
            Some(existing) if existing.attempt() > attempt => Offer::Stale,
            Some(_) => Offer::Replaced,
            // A status copy older than the result just persisted (a lane started from a cache the watch
            // has not brought up to date) still shows the attempt Ready or Running: it ran already.
            None if self.finished.has_ended(id, attempt) => Offer::Stale,
            None => Offer::Queued,
        }
    }

    /// Queues an attempt recorded in status (phase Ready). Idempotent for the same attempt.
    pub fn offer(&mut self, task: QueuedTask, now: Timestamp) -> Offer {
        let id = task.task.id.clone();
        let outcome = self.offer_outcome(&id, task.task.attempt);
        if matches!(outcome, Offer::AlreadyKnown | Offer::Stale) {
            return outcome;
        }
        self.ready
            .entry((task.pool.clone(), task.task.handler.clone()))
            .or_default()
            .push_back(id.clone());
        let entry = Entry {
            queued: task,
            state: State::Queued { since: now },
            cancel: false,
        };
        self.insert(id, entry);
        outcome
    }

    /// Records an attempt that status shows as Running on `worker` (after an operator restart), giving it a
    /// fresh heartbeat window from `now`.
    pub fn adopt_running(&mut self, task: QueuedTask, worker: &str, now: Timestamp) -> Offer {
        let id = task.task.id.clone();
        let outcome = self.offer_outcome(&id, task.task.attempt);
        if matches!(outcome, Offer::AlreadyKnown | Offer::Stale) {
            return outcome;
        }
        let entry = Entry {
            queued: task,
            state: State::Claimed {
                worker: worker.to_owned(),
                last_seen: now,
            },
            cancel: false,
        };
        self.insert(id, entry);
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
            self.set_state(
                &id,
                State::Claimed {
                    worker: worker.to_owned(),
                    last_seen: now,
                },
            );
            let entry = &self.entries[&id];
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

    /// Claims a queued attempt for the worker that heartbeats it. A worker can only know a queued attempt if it
    /// claimed it from an operator that stopped before it wrote the claim down; it runs that attempt, so it
    /// keeps it, rather than being fenced while the same attempt is handed out a second time. Returns whether
    /// the attempt was claimed here.
    pub fn claim_by_heartbeat(
        &mut self,
        id: &TaskId,
        attempt: u32,
        worker: &str,
        now: Timestamp,
    ) -> bool {
        let queued = self
            .entries
            .get(id)
            .is_some_and(|e| e.attempt() == attempt && matches!(e.state, State::Queued { .. }));
        if queued {
            self.set_state(
                id,
                State::Claimed {
                    worker: worker.to_owned(),
                    last_seen: now,
                },
            );
        }
        queued
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
            self.indexes
                .touch(id, entry.queued.heartbeat_timeout, *last_seen, now);
            *last_seen = now;
        }
        let cancel = entry.cancel;
        let seen = worker_seen(&mut self.workers, &entry.queued.pool, worker);
        seen.last_seen = Some(now);
        Ok(cancel)
    }

    /// The silence after which a known task's claimed attempt is declared lost.
    pub fn heartbeat_timeout(&self, id: &TaskId) -> Option<Duration> {
        self.entries.get(id).map(|e| e.queued.heartbeat_timeout)
    }

    /// Forgets a task once its result (or release) is persisted. Only the named attempt is removed, so a newer
    /// attempt offered meanwhile survives.
    pub fn finish(&mut self, id: &TaskId, attempt: u32) {
        if self.entries.get(id).is_some_and(|e| e.attempt() == attempt) {
            self.remove(id);
            self.finished.end(id, attempt);
        }
    }

    /// Asks the worker of a claimed task to stop (its next heartbeat answers cancel) and drops it if queued.
    /// Returns whether a worker holds the task (its held heartbeats should be answered now).
    pub fn cancel(&mut self, id: &TaskId) -> bool {
        let Some(entry) = self.entries.get_mut(id) else {
            return false;
        };
        match entry.state {
            State::Queued { .. } => {
                self.remove(id);
                false
            }
            State::Claimed { .. } | State::Releasing => {
                entry.cancel = true;
                true
            }
        }
    }

    /// Drops every queued task of one FlowRun for which `keep` says no (the FlowRun was deleted, cancelled, or
    /// its status no longer holds the attempt), and returns the claimed ones it asked to cancel, sorted.
    pub fn retain_flow_run(
        &mut self,
        namespace: &str,
        name: &str,
        mut keep: impl FnMut(&TaskId, u32) -> bool,
    ) -> Vec<TaskId> {
        let Some(ids) = self.indexes.flow_run(namespace, name) else {
            return Vec::new();
        };
        let doomed: Vec<TaskId> = ids
            .iter()
            .filter(|id| !keep(id, self.entries[*id].attempt()))
            .cloned()
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
        // Exactly at the deadline is not yet lost: silence must exceed the timeout.
        while let Some((deadline, id)) = self.indexes.loss_deadlines.first().cloned()
            && deadline < now
        {
            lost.push(self.release(&id));
        }
        lost.sort_by(|a, b| a.id.cmp(&b.id));
        lost
    }

    /// Marks a claimed attempt releasing and describes it.
    fn release(&mut self, id: &TaskId) -> LostAttempt {
        let entry = &self.entries[id];
        let State::Claimed { worker, .. } = &entry.state else {
            unreachable!("only claimed attempts are indexed as claimed");
        };
        let lost = lost_attempt(id, entry, worker);
        self.set_state(id, State::Releasing);
        lost
    }

    /// Releases every attempt of (qualified) `pool` held by a worker whose pod is gone (the reaper), once. A
    /// worker is named by its pool and its name: pod names repeat across namespaces, so a same-named worker of
    /// another pool keeps its attempts.
    pub fn take_worker(&mut self, pool: &str, worker: &str) -> Vec<LostAttempt> {
        let held: Vec<TaskId> = self
            .indexes
            .pools
            .get(pool)
            .and_then(|p| p.claimed.get(worker))
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        held.iter().map(|id| self.release(id)).collect()
    }

    /// The queue waits of the attempts claimed since the last call (for the dispatch-latency histogram).
    pub fn take_dispatch_waits(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.dispatch_waits)
    }

    /// Puts back a lost attempt whose release could not be persisted, so the next loss check reports it again.
    pub fn retry_release(&mut self, lost: LostAttempt) {
        if self.entries.get(&lost.id).is_some_and(|entry| {
            entry.attempt() == lost.attempt && matches!(entry.state, State::Releasing)
        }) {
            let state = State::Claimed {
                worker: lost.worker,
                last_seen: Timestamp::MIN,
            };
            self.set_state(&lost.id, state);
        }
    }

    /// The (qualified) pool and handler of a queued task: the long polls that may claim it.
    pub fn route(&self, id: &TaskId) -> Option<(&str, &str)> {
        let entry = self.entries.get(id)?;
        matches!(entry.state, State::Queued { .. }).then(|| {
            (
                entry.queued.pool.as_str(),
                entry.queued.task.handler.as_str(),
            )
        })
    }

    /// The (qualified) pool of a known task, or of one of the last [`REMEMBERED_FINISHED`] tasks that left the
    /// queue.
    pub fn pool_of(&self, id: &TaskId) -> Option<String> {
        match self.entries.get(id) {
            Some(entry) => Some(entry.queued.pool.clone()),
            None => self.finished.get(id).map(str::to_owned),
        }
    }

    /// The earliest time a claimed attempt could be declared lost, to schedule the next check.
    pub fn next_loss_check(&self) -> Option<Timestamp> {
        self.indexes.loss_deadlines.first().map(|(t, _)| *t)
    }

    /// Demand of one pool.
    pub fn demand(&self, pool: &str, now: Timestamp) -> PoolDemand {
        let Some(index) = self.indexes.pools.get(pool) else {
            return PoolDemand::default();
        };
        // The largest |now - since| is at one end of the ordered set (both ends, should a clock step back).
        let waited = |since: &Timestamp| now.duration_since(*since).unsigned_abs();
        let oldest = index.queued_since.first().map(|(t, _)| waited(t));
        let newest = index.queued_since.last().map(|(t, _)| waited(t));
        PoolDemand {
            queued: u32::try_from(index.queued_since.len()).unwrap_or(u32::MAX),
            in_flight: index.in_flight,
            oldest_wait: oldest.max(newest),
            handlers_queued: index.queued.keys().cloned().collect(),
        }
    }

    /// The handlers of `pool` with queued tasks, with how many each has.
    pub fn queued_handlers(&self, pool: &str) -> Vec<(String, u32)> {
        self.indexes
            .pools
            .get(pool)
            .map(|p| p.queued.iter().map(|(h, n)| (h.clone(), *n)).collect())
            .unwrap_or_default()
    }

    /// Every (qualified) pool with a known task or worker.
    pub fn pools(&self) -> BTreeSet<String> {
        self.indexes
            .pools
            .keys()
            .chain(self.workers.keys())
            .cloned()
            .collect()
    }

    /// A worker of `pool` opened a long poll for `handlers`.
    pub fn poll_started(&mut self, pool: &str, worker: &str, handlers: &[String], now: Timestamp) {
        let seen = worker_seen(&mut self.workers, pool, worker);
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
        let claimed = self.indexes.pools.get(pool).map(|p| &p.claimed);
        for (worker, ids) in claimed.into_iter().flatten() {
            for id in ids {
                let State::Claimed { last_seen, .. } = &self.entries[id].state else {
                    continue;
                };
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
        self.indexes
            .pools
            .get(pool)
            .is_some_and(|p| handlers.iter().any(|h| p.queued.contains_key(h)))
    }
}

/// The registry record of a worker of a pool, created when first heard of.
fn worker_seen<'a>(
    workers: &'a mut BTreeMap<String, BTreeMap<String, Seen>>,
    pool: &str,
    worker: &str,
) -> &'a mut Seen {
    workers
        .entry(pool.to_owned())
        .or_default()
        .entry(worker.to_owned())
        .or_default()
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
mod tests;
