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
use super::template::TemplateResolver;
use super::writer::StatusWriter;
use crate::api::FlowRun;
use crate::telemetry::Metrics;

/// What reconcile needs.
pub struct Context {
    /// The single writer of FlowRun statuses.
    pub writer: Arc<StatusWriter>,
    /// Runs of FlowTemplates take their flow here before the writer sees them.
    pub templates: TemplateResolver,
    /// Metrics.
    pub metrics: Metrics,
}

/// The longest a run with a timer waits for its next look (a timer further out is looked at again then).
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
    if fr.awaits_template() {
        // A run of a template that failed to take its flow has no steps to decide on.
        if fr.is_finished() {
            return Ok(Action::await_change());
        }
        if let Ok(run) = fr.decode() {
            return ctx.templates.resolve(&run, Timestamp::now()).await;
        }
    }
    let namespace = fr.namespace().unwrap_or_default();
    let wake = ctx
        .writer
        .reconcile(&namespace, &fr.name_any(), Some(fr.clone()))
        .await?;
    Ok(next_look(wake, Timestamp::now()))
}

/// When to look at a run again: at the engine's wake-up (with a small floor, so a timer already due does not
/// spin the controller); otherwise only when it changes. Everything else that moves a run arrives as an event
/// of its own — a worker's report, a signal or spec change through the watch, a child's change through the
/// children's watch, a lost worker from the broker — so an idle run (waiting for a signal, a worker, a child)
/// and a finished one hold nothing in the controller's schedule.
fn next_look(wake: Option<Timestamp>, now: Timestamp) -> Action {
    match wake {
        Some(at) => {
            let wait = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO);
            Action::requeue(wait.clamp(Duration::from_millis(100), RESYNC))
        }
        None => Action::await_change(),
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
    fn runs_without_a_timer_are_looked_at_only_when_they_change() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        assert_eq!(next_look(None, now), Action::await_change());
        let soon = now.checked_add(jiff::SignedDuration::from_secs(5)).unwrap();
        assert_eq!(
            next_look(Some(soon), now),
            Action::requeue(Duration::from_secs(5))
        );
        let far = now
            .checked_add(jiff::SignedDuration::from_hours(72))
            .unwrap();
        assert_eq!(next_look(Some(far), now), Action::requeue(RESYNC));
        assert_eq!(
            next_look(Some(now), now),
            Action::requeue(Duration::from_millis(100)),
            "a timer already due waits a little"
        );
    }
}
