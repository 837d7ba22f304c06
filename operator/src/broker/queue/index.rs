//! The secondary indexes of [`super::TaskQueue`]: every question the hot path asks (what does this FlowRun
//! hold, which attempt goes silent next, how busy is this pool, what does this worker hold) is answered from
//! here without scanning all entries, so the cost of offer, claim, heartbeat, finish and retain does not grow
//! with the number of live FlowRuns.
//!
//! The indexes are derived data: [`Indexes::enter`] and [`Indexes::leave`] add and remove exactly what one
//! entry contributes, and the queue calls them around every change of an entry. Rebuilding them from the
//! entries gives the same value (the property tests check this after every operation).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use jiff::Timestamp;
use sluice_wire::TaskId;

use super::{Entry, State};

/// A FlowRun, by namespace and name.
pub(super) type FlowRunKey = (String, String);

/// What one pool holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct PoolIndex {
    /// Queued entries per handler (handlers with none are absent).
    pub(super) queued: BTreeMap<String, u32>,
    /// Queued entries by the time they were queued: the first is the pool's longest wait.
    pub(super) queued_since: BTreeSet<(Timestamp, TaskId)>,
    /// Claimed and releasing entries.
    pub(super) in_flight: u32,
    /// Claimed entries per worker (workers with none are absent).
    pub(super) claimed: BTreeMap<String, BTreeSet<TaskId>>,
}

impl PoolIndex {
    fn is_empty(&self) -> bool {
        self.queued_since.is_empty() && self.in_flight == 0
    }
}

/// Everything derived from the entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Indexes {
    /// Task ids per FlowRun: `retain_flow_run` visits one FlowRun's tasks only.
    pub(super) by_flow_run: HashMap<FlowRunKey, BTreeSet<TaskId>>,
    /// Claimed attempts by the time they are declared lost if still silent: the loss detector takes from the
    /// front. An attempt whose deadline is beyond the representable time is never lost and not listed.
    pub(super) loss_deadlines: BTreeSet<(Timestamp, TaskId)>,
    /// Per (qualified) pool; pools without entries are absent.
    pub(super) pools: HashMap<String, PoolIndex>,
}

/// When a claimed attempt last heard of at `last_seen` is declared lost: strictly after this instant.
pub(super) fn loss_deadline(last_seen: Timestamp, timeout: Duration) -> Option<Timestamp> {
    let limit = jiff::SignedDuration::try_from(timeout).ok()?;
    last_seen.checked_add(limit).ok()
}

impl Indexes {
    /// Adds an entry that joins the queue.
    pub(super) fn insert(&mut self, id: &TaskId, entry: &Entry) {
        let flow_run = &entry.queued.task.flow_run;
        let key = (flow_run.namespace.clone(), flow_run.name.clone());
        self.by_flow_run.entry(key).or_default().insert(id.clone());
        self.enter(id, entry);
    }

    /// Removes an entry that leaves the queue.
    pub(super) fn remove(&mut self, id: &TaskId, entry: &Entry) {
        self.leave(id, entry);
        let flow_run = &entry.queued.task.flow_run;
        let key = (flow_run.namespace.clone(), flow_run.name.clone());
        if let Some(ids) = self.by_flow_run.get_mut(&key) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_flow_run.remove(&key);
            }
        }
    }

    /// Adds what the entry's current state contributes.
    pub(super) fn enter(&mut self, id: &TaskId, entry: &Entry) {
        let pool = pool_mut(&mut self.pools, &entry.queued.pool);
        match &entry.state {
            State::Queued { since } => {
                *pool
                    .queued
                    .entry(entry.queued.task.handler.clone())
                    .or_default() += 1;
                pool.queued_since.insert((*since, id.clone()));
            }
            State::Claimed { worker, last_seen } => {
                pool.in_flight += 1;
                pool.claimed
                    .entry(worker.clone())
                    .or_default()
                    .insert(id.clone());
                if let Some(deadline) = loss_deadline(*last_seen, entry.queued.heartbeat_timeout) {
                    self.loss_deadlines.insert((deadline, id.clone()));
                }
            }
            State::Releasing => pool.in_flight += 1,
        }
    }

    /// Removes what the entry's current state contributes (call before changing the state).
    pub(super) fn leave(&mut self, id: &TaskId, entry: &Entry) {
        let Some(pool) = self.pools.get_mut(&entry.queued.pool) else {
            return;
        };
        match &entry.state {
            State::Queued { since } => {
                let handler = &entry.queued.task.handler;
                if let Some(count) = pool.queued.get_mut(handler) {
                    *count -= 1;
                    if *count == 0 {
                        pool.queued.remove(handler);
                    }
                }
                pool.queued_since.remove(&(*since, id.clone()));
            }
            State::Claimed { worker, last_seen } => {
                pool.in_flight -= 1;
                if let Some(ids) = pool.claimed.get_mut(worker) {
                    ids.remove(id);
                    if ids.is_empty() {
                        pool.claimed.remove(worker);
                    }
                }
                if let Some(deadline) = loss_deadline(*last_seen, entry.queued.heartbeat_timeout) {
                    self.loss_deadlines.remove(&(deadline, id.clone()));
                }
            }
            State::Releasing => pool.in_flight -= 1,
        }
        if pool.is_empty() {
            self.pools.remove(&entry.queued.pool);
        }
    }

    /// Moves a claimed attempt's loss deadline after a heartbeat (its pool and worker stay the same).
    pub(super) fn touch(
        &mut self,
        id: &TaskId,
        timeout: Duration,
        before: Timestamp,
        after: Timestamp,
    ) {
        if let Some(deadline) = loss_deadline(before, timeout) {
            self.loss_deadlines.remove(&(deadline, id.clone()));
        }
        if let Some(deadline) = loss_deadline(after, timeout) {
            self.loss_deadlines.insert((deadline, id.clone()));
        }
    }

    /// The ids of one FlowRun's tasks.
    pub(super) fn flow_run(&self, namespace: &str, name: &str) -> Option<&BTreeSet<TaskId>> {
        self.by_flow_run
            .get(&(namespace.to_owned(), name.to_owned()))
    }
}

/// The pool's index, created when missing (without allocating a key when it exists: this runs per claim).
fn pool_mut<'a>(pools: &'a mut HashMap<String, PoolIndex>, pool: &str) -> &'a mut PoolIndex {
    if !pools.contains_key(pool) {
        pools.insert(pool.to_owned(), PoolIndex::default());
    }
    pools.get_mut(pool).expect("inserted above")
}
