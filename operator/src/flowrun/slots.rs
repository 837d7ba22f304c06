//! Concurrency slots across runs (`spec.concurrency`): who holds the slots of a key, who waits, and whether a
//! run may take one now.
//!
//! The slots are counted from the runs' statuses, as the controllers' cache holds them, so they survive a
//! restart. The cache runs behind this operator's own writes by a watch event, so [`Slots`] also remembers
//! the admissions and releases it decided until the cache shows them. Deciding whether a run may take a slot
//! and remembering that it took one happen under one lock: two runs of one key deciding at once cannot both
//! take the last slot.
//!
//! Counting walks every cached run. Only runs with a limit that hold no slot yet pay for it (once when they
//! are created, then at each look while they wait), never a step of a running flow.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;

use super::cache::SlotView;
use crate::engine::Admission;

/// A run as the slot count sees it.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    /// The run's name.
    pub name: &'a str,
    /// When it was created: waiting runs take free slots oldest first.
    pub created: Option<Timestamp>,
    /// Its slot view (the key, whether it holds or waits).
    pub view: &'a SlotView,
}

/// What this operator decided about a run's slot, until the cache shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Decided {
    key: Box<str>,
    holds: bool,
}

/// The slot decisions of this operator that the cache may not show yet, by namespace and run name.
#[derive(Default)]
pub struct Slots {
    decided: Mutex<HashMap<(String, String), Decided>>,
}

impl Slots {
    /// Whether `name` may take a slot of `key` (limit `limit`) in `namespace`, counted over `runs` (every
    /// cached run of the namespace with that key). A grant is remembered as a held slot at once, so the next
    /// count sees it even before the run's status records it.
    pub fn admit<'a>(
        &self,
        namespace: &str,
        name: &str,
        created: Option<Timestamp>,
        key: &str,
        limit: u32,
        runs: impl IntoIterator<Item = Candidate<'a>>,
    ) -> Admission {
        let mut decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
        let runs: Vec<Candidate<'a>> = runs.into_iter().collect();
        // What the cache shows now needs no memory of ours; a run gone from the cache was deleted.
        decided.retain(|(ns, run), d| {
            if ns != namespace || *d.key != *key {
                return true;
            }
            runs.iter()
                .find(|c| c.name == run)
                .is_some_and(|c| c.view.holds != d.holds)
        });
        let holds =
            |c: &Candidate<'_>| match decided.get(&(namespace.to_owned(), c.name.to_owned())) {
                Some(d) => d.holds,
                None => c.view.holds,
            };
        let mut holders: Vec<String> = runs
            .iter()
            .filter(|c| holds(c))
            .map(|c| c.name.to_owned())
            .collect();
        holders.sort();
        if holders.iter().any(|h| h == name) {
            return Admission::Granted;
        }
        let me = (created, name);
        let ahead = runs
            .iter()
            .filter(|c| c.name != name && c.view.waiting && !holds(c))
            .filter(|c| (c.created, c.name) < me)
            .count();
        let free = (limit as usize).saturating_sub(holders.len());
        if ahead < free {
            decided.insert(
                (namespace.to_owned(), name.to_owned()),
                Decided {
                    key: key.into(),
                    holds: true,
                },
            );
            Admission::Granted
        } else {
            Admission::Waiting { holders, ahead }
        }
    }

    /// Records what a written status says of `name`'s slot. Returns true when the run gave a slot back (it
    /// held one, by its earlier status or a grant of ours, and holds none now): waiting runs of its key may
    /// take it.
    pub fn record(&self, namespace: &str, name: &str, key: &str, held: bool, holds: bool) -> bool {
        let mut decided = self.decided.lock().unwrap_or_else(|p| p.into_inner());
        let id = (namespace.to_owned(), name.to_owned());
        let had = held || decided.get(&id).is_some_and(|d| d.holds);
        if !holds && !had {
            return false;
        }
        decided.insert(
            id,
            Decided {
                key: key.into(),
                holds,
            },
        );
        !holds
    }

    /// The oldest waiting runs of a key, at most `n`: the ones to look at when slots free up.
    pub fn oldest_waiting<'a>(
        runs: impl IntoIterator<Item = Candidate<'a>>,
        n: usize,
    ) -> Vec<String> {
        let mut waiting: Vec<Candidate<'a>> = runs
            .into_iter()
            .filter(|c| c.view.waiting && !c.view.holds)
            .collect();
        waiting.sort_by(|a, b| (a.created, a.name).cmp(&(b.created, b.name)));
        waiting
            .into_iter()
            .take(n)
            .map(|c| c.name.to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Option<Timestamp> {
        Some(Timestamp::from_second(1_800_000_000 + secs).unwrap())
    }

    fn view(holds: bool) -> SlotView {
        SlotView {
            key: "k".into(),
            holds,
            waiting: !holds,
        }
    }

    /// A namespace of runs: (name, created, holds).
    struct Runs(Vec<(String, Option<Timestamp>, SlotView)>);

    impl Runs {
        fn new(runs: &[(&str, i64, bool)]) -> Self {
            Self(
                runs.iter()
                    .map(|(n, c, h)| (n.to_string(), at(*c), view(*h)))
                    .collect(),
            )
        }

        fn candidates(&self) -> Vec<Candidate<'_>> {
            self.0
                .iter()
                .map(|(name, created, view)| Candidate {
                    name,
                    created: *created,
                    view,
                })
                .collect()
        }

        fn admit(&self, slots: &Slots, name: &str, limit: u32) -> Admission {
            let created = self.0.iter().find(|r| r.0 == name).and_then(|r| r.1);
            slots.admit("ns", name, created, "k", limit, self.candidates())
        }
    }

    #[test]
    fn runs_take_free_slots_oldest_first_and_a_grant_counts_before_the_cache_shows_it() {
        let slots = Slots::default();
        let runs = Runs::new(&[("a", 1, false), ("b", 2, false), ("c", 3, false)]);
        // c is newest: two older runs wait for the two free slots.
        assert_eq!(
            runs.admit(&slots, "c", 2),
            Admission::Waiting {
                holders: vec![],
                ahead: 2
            }
        );
        assert_eq!(runs.admit(&slots, "b", 2), Admission::Granted);
        assert_eq!(runs.admit(&slots, "a", 2), Admission::Granted);
        // The cache still shows nobody holding; the grants count anyway.
        assert_eq!(
            runs.admit(&slots, "c", 2),
            Admission::Waiting {
                holders: vec!["a".into(), "b".into()],
                ahead: 0
            }
        );
        // Asking again for a run that holds a slot is a grant, not a second slot.
        assert_eq!(runs.admit(&slots, "a", 2), Admission::Granted);
    }

    #[test]
    fn a_release_frees_a_slot_for_the_oldest_waiter_even_before_the_cache_shows_it() {
        let slots = Slots::default();
        let runs = Runs::new(&[
            ("a", 1, true),
            ("b", 2, true),
            ("c", 3, false),
            ("d", 4, false),
        ]);
        assert!(matches!(
            runs.admit(&slots, "c", 2),
            Admission::Waiting { .. }
        ));
        assert!(
            slots.record("ns", "a", "k", true, false),
            "a held a slot and ended"
        );
        assert_eq!(
            runs.admit(&slots, "d", 2),
            Admission::Waiting {
                holders: vec!["b".into()],
                ahead: 1
            }
        );
        assert_eq!(runs.admit(&slots, "c", 2), Admission::Granted);
        assert_eq!(
            Slots::oldest_waiting(runs.candidates(), 5),
            vec!["c".to_owned(), "d".to_owned()]
        );
    }

    #[test]
    fn memory_of_a_decision_goes_once_the_cache_shows_it_or_the_run_is_gone() {
        let slots = Slots::default();
        let before = Runs::new(&[("a", 1, false), ("b", 2, false)]);
        assert_eq!(before.admit(&slots, "a", 1), Admission::Granted);
        // The cache now shows a holding; then a is deleted and disappears from the cache.
        let shown = Runs::new(&[("a", 1, true), ("b", 2, false)]);
        assert!(matches!(
            shown.admit(&slots, "b", 1),
            Admission::Waiting { .. }
        ));
        let gone = Runs::new(&[("b", 2, false)]);
        assert_eq!(gone.admit(&slots, "b", 1), Admission::Granted);
    }

    #[test]
    fn recording_a_status_that_changes_nothing_is_not_a_release() {
        let slots = Slots::default();
        assert!(!slots.record("ns", "a", "k", false, false), "never held");
        assert!(!slots.record("ns", "a", "k", true, true), "still holds");
        assert!(!slots.record("ns", "a", "k", false, true), "took one");
        assert!(slots.record("ns", "a", "k", true, false));
    }

    #[test]
    fn grants_in_another_namespace_do_not_count() {
        let slots = Slots::default();
        assert_eq!(
            slots.admit("elsewhere", "b", at(0), "k", 1, Vec::new()),
            Admission::Granted
        );
        // A run named b waits in "ns" too: it is ahead of a, not a holder.
        let runs = Runs::new(&[("b", 1, false), ("a", 2, false)]);
        assert_eq!(
            runs.admit(&slots, "a", 1),
            Admission::Waiting {
                holders: vec![],
                ahead: 1
            }
        );
    }
}
