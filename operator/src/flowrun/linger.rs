//! When a status write waits a moment for more results (group commit with siblings).
//!
//! A forEach keeps many attempts out at once, and their results come back a few milliseconds apart. Written
//! as they come, the first result of a wave starts a write on its own and the rest of the wave waits for the
//! next one: the attempts out split into two cohorts that take turns, and each write carries about half of
//! them. Waiting a fraction of a write for the rest of the wave lets one write carry it all. A run with one
//! attempt out (a chain) never waits, and nor does a batch that already holds every result the run can
//! expect.

use std::time::Duration;

/// The longest a batch waits for more results.
pub const MAX_LINGER: Duration = Duration::from_millis(10);

/// How long a batch that holds `reports` results (completions, failures, lost attempts) waits for more,
/// when the run's last write left `out` attempts with workers and took `last_write`: half a write (so that
/// waiting costs less than the write it saves), at most [`MAX_LINGER`]; `None` when there is nothing to wait
/// for.
pub fn linger(out: usize, reports: usize, last_write: Duration) -> Option<Duration> {
    if reports == 0 || reports >= out {
        return None;
    }
    let wait = (last_write / 2).min(MAX_LINGER);
    (!wait.is_zero()).then_some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRITE: Duration = Duration::from_millis(8);

    #[test]
    fn a_chain_never_waits() {
        assert_eq!(linger(1, 1, WRITE), None);
    }

    #[test]
    fn a_batch_without_results_does_not_wait() {
        // Claims and reconciles alone: nothing is gained by holding them.
        assert_eq!(linger(64, 0, WRITE), None);
    }

    #[test]
    fn a_wave_with_results_still_out_waits_half_a_write() {
        assert_eq!(linger(64, 30, WRITE), Some(Duration::from_millis(4)));
    }

    #[test]
    fn a_batch_with_every_result_writes_at_once() {
        assert_eq!(linger(64, 64, WRITE), None);
        // More reports than attempts out: the run's view is older than the reports (retries, duplicates).
        assert_eq!(linger(3, 5, WRITE), None);
    }

    #[test]
    fn slow_writes_wait_at_most_the_cap() {
        assert_eq!(linger(64, 1, Duration::from_secs(1)), Some(MAX_LINGER));
    }

    #[test]
    fn before_the_first_write_nothing_waits() {
        assert_eq!(linger(64, 1, Duration::ZERO), None);
    }
}
