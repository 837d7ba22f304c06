//! The allocator's own view of the operator's memory, as metrics. RSS alone cannot tell live data from pages
//! the allocator keeps after a burst; `sluice_heap_allocated_bytes` against `sluice_heap_resident_bytes` can.

use std::time::Duration;

use sluice_operator::telemetry::Metrics;
use tikv_jemalloc_ctl::{epoch, stats};
use tracing::debug;

/// How often the figures are refreshed (jemalloc's statistics are a snapshot taken at each epoch).
const PERIOD: Duration = Duration::from_secs(5);

/// Refreshes the heap gauges of `metrics` every [`PERIOD`] for the life of the process.
pub fn spawn_sampler(metrics: Metrics) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tick.tick().await;
            if let Err(e) = sample(&metrics) {
                debug!(error = %e, "cannot read the allocator's statistics");
            }
        }
    });
}

fn sample(metrics: &Metrics) -> Result<(), tikv_jemalloc_ctl::Error> {
    epoch::advance()?;
    let gauge = |bytes: usize| i64::try_from(bytes).unwrap_or(i64::MAX);
    metrics
        .heap_allocated_bytes
        .set(gauge(stats::allocated::read()?));
    metrics.heap_active_bytes.set(gauge(stats::active::read()?));
    metrics
        .heap_resident_bytes
        .set(gauge(stats::resident::read()?));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_reports_what_it_holds() {
        let metrics = Metrics::new();
        let held = vec![7u8; 1 << 20];
        sample(&metrics).expect("jemalloc statistics");
        let allocated = metrics.heap_allocated_bytes.get();
        assert!(allocated >= 1 << 20, "allocated {allocated} bytes");
        let active = metrics.heap_active_bytes.get();
        assert!(
            active >= allocated,
            "active {active} < allocated {allocated}"
        );
        assert!(metrics.heap_resident_bytes.get() >= active);
        drop(held);
    }
}
