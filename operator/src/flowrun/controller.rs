//! The FlowRun controller: watches FlowRuns (and the child FlowRuns they own) and asks the status writer to
//! bring each one up to date, then requeues it for the engine's next timer or deadline.
//!
//! Its reflector store is the operator's one copy of each FlowRun, compact and decoded only when needed
//! ([`CachedFlowRun`]), and shared with the status writer. Children are watched for their metadata
//! only: their change is a trigger for the parent, whose reconcile reads what it needs.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use tracing::{info, instrument, warn};

use super::Error;
use super::cache::{CachedFlowRun, FlowRunCache};
use super::writer::StatusWriter;
use crate::api::FlowRun;
use crate::telemetry::Metrics;

/// What reconcile needs.
pub struct Context {
    /// The single writer of FlowRun statuses.
    pub writer: Arc<StatusWriter>,
    /// Metrics.
    pub metrics: Metrics,
}

/// Look at every FlowRun at least this often, even with nothing due: a safety net, not the mechanism.
const RESYNC: Duration = Duration::from_secs(300);

/// Runs the controller over `api` (and `children`, the same FlowRuns as metadata) until `shutdown` fires; its
/// store joins `cache` as soon as it exists.
pub async fn run(
    api: Api<CachedFlowRun>,
    children: Api<PartialObjectMeta<FlowRun>>,
    ctx: Arc<Context>,
    cache: FlowRunCache,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (reader, writer) = reflector::store();
    cache.add(reader.clone());
    // A consistent list in pages (the watcher's default of 500 objects a page), not `any_semantic`: a list at
    // resourceVersion 0 is served whole from the API server's cache, and ten thousand runs in one response
    // body left the restarted operator holding twice the memory of the runs themselves.
    let runs = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    let children = watcher(
        children,
        watcher::Config::default()
            .labels(super::effects::PARENT_LABEL)
            .any_semantic(),
    )
    .default_backoff()
    .touched_objects();
    Controller::for_stream(runs, reader)
        .owns_stream(children)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "FlowRun reconcile failed");
            }
        })
        .await;
    info!("FlowRun controller stopped");
}

#[instrument(skip_all, fields(namespace = fr.namespace().unwrap_or_default(), flowrun = %fr.name_any()))]
async fn reconcile(fr: Arc<CachedFlowRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = fr.namespace().unwrap_or_default();
    let wake = ctx
        .writer
        .reconcile(&namespace, &fr.name_any(), Some(fr.clone()))
        .await?;
    Ok(next_look(fr.is_finished(), wake, Timestamp::now()))
}

/// When to look at a run again: at the engine's wake-up (with a small floor, so a timer already due does not
/// spin the controller), at the resync otherwise; a finished run only when it changes (a retry request, its
/// deletion), so finished runs cost nothing while they are kept.
fn next_look(finished: bool, wake: Option<Timestamp>, now: Timestamp) -> Action {
    match wake {
        Some(at) => {
            let wait = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
            Action::requeue(wait.clamp(Duration::from_millis(100), RESYNC))
        }
        None if finished => Action::await_change(),
        None => Action::requeue(RESYNC),
    }
}

fn error_policy(_fr: Arc<CachedFlowRun>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_error("flowrun", error.metric_label());
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_runs_are_looked_at_only_when_they_change() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(next_look(true, None, now), Action::await_change());
        assert_eq!(next_look(false, None, now), Action::requeue(RESYNC));
        let soon = now.checked_add(jiff::SignedDuration::from_secs(5)).unwrap();
        assert_eq!(
            next_look(false, Some(soon), now),
            Action::requeue(Duration::from_secs(5))
        );
        assert_eq!(
            next_look(false, Some(now), now),
            Action::requeue(Duration::from_millis(100)),
            "a timer already due waits a little"
        );
    }
}
