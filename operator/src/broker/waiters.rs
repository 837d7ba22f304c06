//! Requests the broker holds open until its queue changes: long polls (claims) waiting for a task, and
//! heartbeats waiting for their attempt to be cancelled.
//!
//! Both are woken by name, not broadcast: an offered task wakes the one oldest poll that serves its handler,
//! and a cancelled attempt wakes only its own heartbeats, so neither an offer nor a cancel makes every open
//! request race for the queue's lock. The broker keeps these registries under the same lock as the queue, so a
//! wake-up can never fall between a request's look at the queue and its registration.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sluice_wire::TaskId;
use tokio::sync::oneshot;

/// The sending half of one waiting request's wake-up.
pub(super) type Wake = oneshot::Sender<()>;

/// Long polls waiting for work, per (qualified) pool, in arrival order.
#[derive(Debug, Default)]
pub(super) struct PollWaiters {
    /// The last ticket handed out: tickets order polls by age.
    last_ticket: u64,
    pools: HashMap<String, PoolWaiters>,
    /// Wake-ups delivered so far.
    wakeups: u64,
}

#[derive(Debug, Default)]
struct PoolWaiters {
    waiters: BTreeMap<u64, Waiter>,
    /// Tickets of the waiters serving each handler, oldest first.
    by_handler: HashMap<String, BTreeSet<u64>>,
}

#[derive(Debug)]
struct Waiter {
    handlers: BTreeSet<String>,
    wake: Wake,
}

impl PollWaiters {
    /// A place in line for a new long poll: older polls have smaller tickets.
    pub(super) fn ticket(&mut self) -> u64 {
        self.last_ticket += 1;
        self.last_ticket
    }

    /// Waits in line with `ticket` for a task of one of `handlers`. A poll woken for nothing (another claim was
    /// faster) registers again with its old ticket and so keeps its place.
    pub(super) fn register(&mut self, pool: &str, ticket: u64, handlers: &[String], wake: Wake) {
        let line = self.pools.entry(pool.to_owned()).or_default();
        let handlers: BTreeSet<String> = handlers.iter().cloned().collect();
        for handler in &handlers {
            line.by_handler
                .entry(handler.clone())
                .or_default()
                .insert(ticket);
        }
        line.waiters.insert(ticket, Waiter { handlers, wake });
    }

    /// Leaves the line. Returns false when the poll was not in it (it was woken meanwhile).
    pub(super) fn unregister(&mut self, pool: &str, ticket: u64) -> bool {
        self.take(pool, ticket).is_some()
    }

    fn take(&mut self, pool: &str, ticket: u64) -> Option<Waiter> {
        let line = self.pools.get_mut(pool)?;
        let waiter = line.waiters.remove(&ticket)?;
        for handler in &waiter.handlers {
            if let Some(tickets) = line.by_handler.get_mut(handler) {
                tickets.remove(&ticket);
                if tickets.is_empty() {
                    line.by_handler.remove(handler);
                }
            }
        }
        if line.waiters.is_empty() {
            self.pools.remove(pool);
        }
        Some(waiter)
    }

    /// Wakes the oldest poll of `pool` that serves `handler`, skipping polls whose request went away. Returns
    /// whether one was woken.
    pub(super) fn wake_one(&mut self, pool: &str, handler: &str) -> bool {
        loop {
            let oldest = self
                .pools
                .get(pool)
                .and_then(|line| line.by_handler.get(handler))
                .and_then(|tickets| tickets.first().copied());
            let Some(ticket) = oldest else {
                return false;
            };
            let waiter = self
                .take(pool, ticket)
                .expect("indexed tickets are waiting");
            if waiter.wake.send(()).is_ok() {
                self.wakeups += 1;
                return true;
            }
        }
    }

    /// Wakes every poll (the broker stops serving: they answer 503).
    pub(super) fn wake_all(&mut self) {
        for (_, line) in self.pools.drain() {
            for (_, waiter) in line.waiters {
                let _ = waiter.wake.send(());
            }
        }
    }

    #[cfg(test)]
    /// How many polls of `pool` wait.
    pub(super) fn waiting(&self, pool: &str) -> usize {
        self.pools.get(pool).map_or(0, |line| line.waiters.len())
    }

    #[cfg(test)]
    /// Wake-ups delivered so far.
    pub(super) fn wakeups(&self) -> u64 {
        self.wakeups
    }
}

/// Heartbeats held until their attempt is cancelled, per task.
#[derive(Debug, Default)]
pub(super) struct HeldHeartbeats {
    last_ticket: u64,
    held: HashMap<TaskId, Vec<(u64, Wake)>>,
}

impl HeldHeartbeats {
    /// Holds a heartbeat of task `id`; the ticket names it to [`HeldHeartbeats::release`].
    pub(super) fn hold(&mut self, id: &TaskId, wake: Wake) -> u64 {
        self.last_ticket += 1;
        self.held
            .entry(id.clone())
            .or_default()
            .push((self.last_ticket, wake));
        self.last_ticket
    }

    /// Forgets a held heartbeat that ends on its own (its wait elapsed, or the worker went away).
    pub(super) fn release(&mut self, id: &TaskId, ticket: u64) {
        if let Some(held) = self.held.get_mut(id) {
            held.retain(|(t, _)| *t != ticket);
            if held.is_empty() {
                self.held.remove(id);
            }
        }
    }

    /// Answers every held heartbeat of task `id` now.
    pub(super) fn wake(&mut self, id: &TaskId) {
        for (_, wake) in self.held.remove(id).into_iter().flatten() {
            let _ = wake.send(());
        }
    }

    /// Answers every held heartbeat now.
    pub(super) fn wake_all(&mut self) {
        for (_, held) in self.held.drain() {
            for (_, wake) in held {
                let _ = wake.send(());
            }
        }
    }

    #[cfg(test)]
    /// How many heartbeats are held.
    pub(super) fn len(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handlers(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_oldest_poll_serving_the_handler_is_woken_once() {
        let mut polls = PollWaiters::default();
        let mut receivers = Vec::new();
        for names in [&["g"][..], &["h"], &["g", "h"]] {
            let (tx, rx) = oneshot::channel();
            let ticket = polls.ticket();
            polls.register("p", ticket, &handlers(names), tx);
            receivers.push(rx);
        }
        assert!(polls.wake_one("p", "h"));
        assert_eq!(receivers[1].try_recv(), Ok(()), "the oldest poll for h");
        assert!(receivers[0].try_recv().is_err() && receivers[2].try_recv().is_err());
        assert!(polls.wake_one("p", "h"));
        assert_eq!(receivers[2].try_recv(), Ok(()));
        assert!(!polls.wake_one("p", "h"), "nobody else serves h");
        assert!(!polls.wake_one("other", "g"), "lines are per pool");
        assert_eq!((polls.waiting("p"), polls.wakeups()), (1, 2));
    }

    #[test]
    fn polls_that_went_away_are_skipped_and_a_requeued_poll_keeps_its_place() {
        let mut polls = PollWaiters::default();
        let (gone, _) = oneshot::channel();
        let first = polls.ticket();
        polls.register("p", first, &handlers(&["h"]), gone);
        let (tx, mut second_rx) = oneshot::channel();
        let second = polls.ticket();
        polls.register("p", second, &handlers(&["h"]), tx);
        assert!(polls.wake_one("p", "h"));
        assert_eq!(second_rx.try_recv(), Ok(()));

        // The second poll found nothing and waits again with its ticket, ahead of a newer poll.
        let (newer_tx, mut newer_rx) = oneshot::channel();
        let newer = polls.ticket();
        polls.register("p", newer, &handlers(&["h"]), newer_tx);
        let (tx, mut again_rx) = oneshot::channel();
        polls.register("p", second, &handlers(&["h"]), tx);
        assert!(polls.wake_one("p", "h"));
        assert_eq!(again_rx.try_recv(), Ok(()));
        assert!(newer_rx.try_recv().is_err());
        assert!(polls.unregister("p", newer));
        assert!(!polls.unregister("p", newer), "already gone");
        assert_eq!(polls.waiting("p"), 0);
        assert!(polls.pools.is_empty());
    }

    #[test]
    fn held_heartbeats_are_woken_per_task() {
        let mut held = HeldHeartbeats::default();
        let a = TaskId::new("ns/fr/a");
        let b = TaskId::new("ns/fr/b");
        let (tx, mut a_rx) = oneshot::channel();
        held.hold(&a, tx);
        let (tx, mut b_rx) = oneshot::channel();
        let b_ticket = held.hold(&b, tx);
        held.wake(&a);
        assert_eq!(a_rx.try_recv(), Ok(()));
        assert!(b_rx.try_recv().is_err());
        held.release(&b, b_ticket);
        assert_eq!(held.len(), 0);
    }
}
