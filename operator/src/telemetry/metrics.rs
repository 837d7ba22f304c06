//! The operator's Prometheus metrics, served on `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of per-pool metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Namespace of the WorkerPool.
    pub namespace: String,
    /// Name of the WorkerPool.
    pub pool: String,
}

/// Labels of step outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `succeeded`, `failed`, `retried`, `lost`, `refused`.
    pub outcome: String,
}

/// Labels of reconcile errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The controller (`flowrun`, `workerpool`).
    pub controller: String,
    /// The error's metric label (see the controllers' `Error::metric_label`).
    pub error: String,
}

/// Every metric of the operator; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    /// Steps queued and not claimed, per pool (`sluice_queue_depth`).
    pub queue_depth: Family<PoolLabels, Gauge>,
    /// Steps claimed and running, per pool (`sluice_in_flight`).
    pub in_flight: Family<PoolLabels, Gauge>,
    /// Seconds from an attempt being queued to a worker claiming it (`sluice_dispatch_latency_seconds`).
    pub dispatch_latency: Histogram,
    /// Attempt results by outcome (`sluice_step_outcomes_total`).
    pub step_outcomes: Family<OutcomeLabels, Counter>,
    /// Reconcile errors by controller and error (`sluice_reconcile_errors_total`).
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// FlowRun statuses written by the status writer (`sluice_status_writes_total`).
    pub status_writes: Counter,
    /// FlowRuns whose `managedFields` the status writer cleared before their first status write
    /// (`sluice_field_owner_clears_total`).
    pub field_owner_clears: Counter,
    /// FlowRun reconciles that started from the writer's own last patch instead of a read, because the
    /// version they saw was that patch's (`sluice_flowrun_reads_saved_total`).
    pub own_write_reconciles: Counter,
    /// Seconds one FlowRun status write takes, request to response (`sluice_status_write_seconds`).
    pub status_write_seconds: Histogram,
    /// FlowRun reads by the status writer (`sluice_flowrun_reads_total`): only when it has no copy of a run.
    pub flowrun_reads: Counter,
    /// Status writes refused because the FlowRun changed after the version they were decided on, and decided
    /// again (`sluice_status_conflicts_total`).
    pub status_conflicts: Counter,
    /// Requests sent to the API server, by verb (`sluice_api_requests_total`).
    pub api_requests: Family<super::api_calls::ApiRequestLabels, Counter>,
    /// Finished FlowRuns deleted because their time to live had passed (`sluice_flowruns_deleted_total`).
    pub flowruns_deleted: Counter,
    /// FlowRuns created for the slots of CronFlow schedules (`sluice_cronflow_runs_started_total`).
    pub cronflow_runs_started: Counter,
    /// Bytes the process's allocator has handed out and not had back (`sluice_heap_allocated_bytes`); set
    /// by the binary, which knows its allocator (0 elsewhere).
    pub heap_allocated_bytes: Gauge,
    /// Bytes in the allocator's pages that hold at least one live allocation (`sluice_heap_active_bytes`):
    /// above `heap_allocated_bytes` by the pages' free slots (fragmentation); set by the binary (0 elsewhere).
    pub heap_active_bytes: Gauge,
    /// Bytes of memory the allocator holds in physical pages, live data and its own retention
    /// (`sluice_heap_resident_bytes`); set by the binary (0 elsewhere).
    pub heap_resident_bytes: Gauge,
    registry: Arc<Registry>,
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let queue_depth = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Steps queued for a WorkerPool and not yet claimed by a worker",
            queue_depth.clone(),
        );
        let in_flight = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "in_flight",
            "Steps of a WorkerPool that workers are running",
            in_flight.clone(),
        );
        let dispatch_latency = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]);
        registry.register(
            "dispatch_latency_seconds",
            "Time from an attempt being queued to a worker claiming it",
            dispatch_latency.clone(),
        );
        let step_outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "step_outcomes",
            "Attempt results by outcome",
            step_outcomes.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconcile errors by controller and error",
            reconcile_errors.clone(),
        );
        let status_writes = Counter::default();
        registry.register(
            "status_writes",
            "FlowRun statuses written by the status writer",
            status_writes.clone(),
        );
        let field_owner_clears = Counter::default();
        registry.register(
            "field_owner_clears",
            "FlowRuns whose managedFields the status writer cleared before their first status write",
            field_owner_clears.clone(),
        );
        let own_write_reconciles = Counter::default();
        registry.register(
            "flowrun_reads_saved",
            "FlowRun reconciles answered from the status writer's memory (watch echoes of its own writes)",
            own_write_reconciles.clone(),
        );
        let status_write_seconds = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        registry.register(
            "status_write_seconds",
            "Time one FlowRun status write takes, request to response",
            status_write_seconds.clone(),
        );
        let flowrun_reads = Counter::default();
        registry.register(
            "flowrun_reads",
            "FlowRun reads by the status writer (it reads only when it has no copy of the run)",
            flowrun_reads.clone(),
        );
        let status_conflicts = Counter::default();
        registry.register(
            "status_conflicts",
            "FlowRun status writes refused because the run changed after the version they were decided on (a signal, a spec change, another writer); each is decided again on a fresh read",
            status_conflicts.clone(),
        );
        let api_requests = Family::<super::api_calls::ApiRequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "Requests the operator sent to the API server, by verb",
            api_requests.clone(),
        );
        let flowruns_deleted = Counter::default();
        registry.register(
            "flowruns_deleted",
            "Finished FlowRuns the operator deleted because their ttlSecondsAfterFinished (or the operator's default) had passed; their child FlowRuns go with them",
            flowruns_deleted.clone(),
        );
        let cronflow_runs_started = Counter::default();
        registry.register(
            "cronflow_runs_started",
            "FlowRuns the operator created for the slots of CronFlow schedules",
            cronflow_runs_started.clone(),
        );
        let heap_allocated_bytes = Gauge::default();
        registry.register(
            "heap_allocated_bytes",
            "Bytes the operator's allocator has handed out and not had back: its live data",
            heap_allocated_bytes.clone(),
        );
        let heap_active_bytes = Gauge::default();
        registry.register(
            "heap_active_bytes",
            "Bytes in the allocator's pages that hold live data: live data plus the free slots between it",
            heap_active_bytes.clone(),
        );
        let heap_resident_bytes = Gauge::default();
        registry.register(
            "heap_resident_bytes",
            "Bytes of physical memory the operator's allocator holds: live data plus what it keeps for reuse",
            heap_resident_bytes.clone(),
        );
        Self {
            flowruns_deleted,
            cronflow_runs_started,
            heap_allocated_bytes,
            heap_active_bytes,
            heap_resident_bytes,
            status_write_seconds,
            flowrun_reads,
            status_conflicts,
            api_requests,
            queue_depth,
            in_flight,
            dispatch_latency,
            step_outcomes,
            reconcile_errors,
            status_writes,
            field_owner_clears,
            own_write_reconciles,
            registry: Arc::new(registry),
        }
    }

    /// Counts one attempt outcome.
    pub fn outcome(&self, outcome: &str) {
        self.step_outcomes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Requests sent to the API server so far, by verb (see [`super::api_calls::verb_of`]).
    pub fn api_requests_by_verb(&self) -> std::collections::BTreeMap<&'static str, u64> {
        ["get", "watch", "patch", "post", "put", "delete"]
            .into_iter()
            .map(|verb| {
                let labels = super::api_calls::ApiRequestLabels {
                    verb: verb.to_owned(),
                };
                (verb, self.api_requests.get_or_create(&labels).get())
            })
            .collect()
    }

    /// Counts one reconcile error.
    pub fn reconcile_error(&self, controller: &str, error: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_owned(),
                error: error.to_owned(),
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_every_family_with_labels() {
        let m = Metrics::new();
        m.queue_depth
            .get_or_create(&PoolLabels {
                namespace: "ns".into(),
                pool: "orders".into(),
            })
            .set(7);
        m.outcome("succeeded");
        m.dispatch_latency.observe(0.002);
        m.flowruns_deleted.inc();
        m.heap_allocated_bytes.set(4096);
        let text = m.encode();
        assert!(
            text.contains(r#"sluice_queue_depth{namespace="ns",pool="orders"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sluice_step_outcomes_total{outcome="succeeded"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("sluice_dispatch_latency_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("sluice_flowruns_deleted_total 1"), "{text}");
        assert!(text.contains("sluice_heap_allocated_bytes 4096"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
