//! The status writer: the one place that changes a FlowRun's step state (design invariant 8).
//!
//! Each FlowRun gets a small actor. Everything that can change its status — worker results from the broker,
//! claims, losses, and the controller's reconciles — becomes a job in the actor's mailbox; the actor takes all
//! jobs waiting at once as one batch, folds them through the engine, writes one field-granular merge patch of
//! the status, and only then answers the waiting workers (invariant 2) and hands newly reserved attempts to the
//! broker (invariant 1). Different FlowRuns are written concurrently by their own actors.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, instrument, warn};

use super::Error;
use super::effects::Effects;
use crate::api::FlowRun;
use crate::broker::Broker;
use crate::broker::sink::{Claimed, Outcome, Recorded, Report, ResultSink, SinkError};
use crate::context::FIELD_MANAGER;
use crate::engine::{
    self, AttemptRef, ChildOutcome, Event, EventOutcome, FlowMeta, FlowRunInput, TaskFailure,
};
use crate::telemetry::Metrics;

/// How long an actor with nothing to do stays alive.
const IDLE: Duration = Duration::from_secs(120);

/// Most jobs folded into one patch.
const MAX_BATCH: usize = 512;

type Key = (String, String);

enum Job {
    Event {
        event: Event,
        reply: Option<oneshot::Sender<Result<Recorded, SinkError>>>,
    },
    Reconcile {
        /// The resourceVersion the caller saw (its watch event), if any.
        seen: Option<String>,
        reply: oneshot::Sender<Result<Option<Timestamp>, Error>>,
    },
}

/// Writes FlowRun statuses; shared by the controller and the broker.
pub struct StatusWriter {
    client: Client,
    effects: Effects,
    broker: OnceLock<Broker>,
    metrics: Metrics,
    actors: Mutex<HashMap<Key, mpsc::UnboundedSender<Job>>>,
}

impl StatusWriter {
    /// A writer using `client`; [`StatusWriter::attach`] gives it the broker it feeds.
    pub fn new(client: Client, effects: Effects, metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            client,
            effects,
            broker: OnceLock::new(),
            metrics,
            actors: Mutex::new(HashMap::new()),
        })
    }

    /// Connects the broker (built after the writer, because the broker reports into it).
    pub fn attach(&self, broker: Broker) {
        let _ = self.broker.set(broker);
    }

    fn broker(&self) -> Option<&Broker> {
        self.broker.get()
    }

    /// Brings a FlowRun's status up to date with its spec, signals, children and the clock; returns when the
    /// engine wants to look again.
    ///
    /// `seen` is the resourceVersion the caller observed. When it is the version this writer's own last patch
    /// produced (the watch echoing our write, or a timer requeue), nobody has written since, so the object the
    /// patch returned is current and no read is needed.
    pub async fn reconcile(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        seen: Option<&str>,
    ) -> Result<Option<Timestamp>, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(
            (namespace.to_owned(), name.to_owned()),
            Job::Reconcile {
                seen: seen.map(str::to_owned),
                reply: tx,
            },
        );
        rx.await.map_err(|_| Error::WriterGone)?
    }

    fn send(self: &Arc<Self>, key: Key, job: Job) {
        // Sending under the lock pairs with the actor's exit check under the same lock, so no job is dropped
        // by an actor that is just shutting down.
        let mut actors = self.actors.lock().unwrap_or_else(|p| p.into_inner());
        let job = match actors.get(&key) {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(job)) => job,
            },
            None => job,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        actors.insert(key.clone(), tx);
        let writer = Arc::clone(self);
        tokio::spawn(async move { writer.actor(key, rx).await });
    }

    async fn actor(self: Arc<Self>, key: Key, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut cache: Option<FlowRun> = None;
        loop {
            let first = match tokio::time::timeout(IDLE, rx.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => return,
                Err(_) => {
                    let mut actors = self.actors.lock().unwrap_or_else(|p| p.into_inner());
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(_) => {
                            actors.remove(&key);
                            return;
                        }
                    }
                }
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.batch(&key, jobs, &mut cache).await;
        }
    }

    /// Folds one batch of jobs into one status patch.
    #[instrument(skip_all, fields(namespace = %key.0, flowrun = %key.1, jobs = jobs.len()))]
    async fn batch(&self, key: &Key, jobs: Vec<Job>, cache: &mut Option<FlowRun>) {
        let api: Api<FlowRun> = Api::namespaced(self.client.clone(), &key.0);
        let mut events = Vec::new();
        let mut reconciles = Vec::new();
        // Whether every reconcile in the batch saw exactly the version our last patch returned.
        let mut all_seen_ours = true;
        let ours = cache
            .as_ref()
            .and_then(|fr| fr.metadata.resource_version.clone());
        for job in jobs {
            match job {
                Job::Event { event, reply } => events.push((event, reply)),
                Job::Reconcile { seen, reply } => {
                    all_seen_ours &= seen.is_some() && seen == ours;
                    reconciles.push(reply);
                }
            }
        }

        // A reconcile must see the latest spec and the signals users wrote, so it reads afresh — unless what
        // it saw is our own last write, which the cache holds. Batches of worker events may start from the
        // cache too, because only this actor writes steps.
        let base = match cache.take() {
            Some(fr) if reconciles.is_empty() || all_seen_ours => {
                if !reconciles.is_empty() {
                    self.metrics.own_write_reconciles.inc();
                }
                Ok(Some(fr))
            }
            _ => api.get_opt(&key.1).await,
        };
        let fr = match base {
            Ok(Some(fr)) => fr,
            Ok(None) => {
                for (_, reply) in events {
                    answer(
                        reply,
                        Err(SinkError::Unknown(format!(
                            "FlowRun {}/{} does not exist",
                            key.0, key.1
                        ))),
                    );
                }
                for reply in reconciles {
                    let _ = reply.send(Ok(None));
                }
                if let Some(broker) = self.broker() {
                    broker.retain_flow_run(&key.0, &key.1, |_, _| false);
                }
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot read FlowRun");
                let msg = e.to_string();
                for (_, reply) in events {
                    answer(reply, Err(SinkError::Unavailable(msg.clone())));
                }
                for reply in reconciles {
                    let _ = reply.send(Err(Error::Kube(msg.clone())));
                }
                return;
            }
        };

        let now = Timestamp::now();
        let meta = FlowMeta::of(&fr);
        let before = fr.status.clone().unwrap_or_default();
        let mut status = before.clone();
        let mut notes = Vec::new();
        let mut applied = Vec::new();

        // Children that ended become events too, so the parent's step finishes in this same patch.
        if !reconciles.is_empty() {
            for event in self.effects.finished_children(&fr, &status).await {
                events.push((event, None));
            }
        }

        for (event, reply) in events {
            let input = FlowRunInput {
                meta: &meta,
                spec: &fr.spec,
                status: &status,
            };
            match engine::apply_event(&input, &event, now) {
                Ok(EventOutcome::Applied {
                    status: next,
                    notes: more,
                }) => {
                    count_outcome(&self.metrics, &event);
                    status = *next;
                    notes.extend(more);
                    applied.push(reply);
                }
                Ok(EventOutcome::Duplicate) => answer(reply, Ok(Recorded::Duplicate)),
                Err(refusal) => {
                    debug!(%refusal, "event refused");
                    self.metrics.outcome("refused");
                    let err = if refusal.is_stale() {
                        SinkError::Stale(refusal.to_string())
                    } else {
                        SinkError::Unknown(refusal.to_string())
                    };
                    answer(reply, Err(err));
                }
            }
        }

        let input = FlowRunInput {
            meta: &meta,
            spec: &fr.spec,
            status: &status,
        };
        let decision = engine::decide(&input, now);
        notes.extend(decision.notes.iter().cloned());
        let patch = engine::status_patch(&before, &decision.status);

        let written = if engine::patch::is_empty(&patch) {
            let mut fr = fr;
            fr.status = Some(decision.status.clone());
            Ok(fr)
        } else {
            let result = api
                .patch_status(
                    &key.1,
                    &PatchParams::apply(FIELD_MANAGER),
                    &Patch::Merge(&patch),
                )
                .await;
            if result.is_ok() {
                self.metrics.status_patches.inc();
            }
            result
        };
        let fr = match written {
            Ok(fr) => fr,
            Err(e) => {
                warn!(error = %e, "status patch failed; the batch will be retried by its senders");
                let msg = e.to_string();
                for reply in applied {
                    answer(reply, Err(SinkError::Unavailable(msg.clone())));
                }
                for reply in reconciles {
                    let _ = reply.send(Err(Error::Kube(msg.clone())));
                }
                return;
            }
        };

        // Persisted: now, and only now, acknowledge workers and hand out the attempts this status records.
        for reply in applied {
            answer(reply, Ok(Recorded::Applied));
        }
        if let Some(broker) = self.broker() {
            sync_broker(broker, &fr, &decision);
        }
        self.effects.apply(&fr, &decision, &notes).await;
        for reply in reconciles {
            let _ = reply.send(Ok(decision.wake_at));
        }
        *cache = Some(fr);
    }
}

fn answer(
    reply: Option<oneshot::Sender<Result<Recorded, SinkError>>>,
    result: Result<Recorded, SinkError>,
) {
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}

fn count_outcome(metrics: &Metrics, event: &Event) {
    match event {
        Event::Completed { .. } => metrics.outcome("succeeded"),
        Event::Failed { .. } => metrics.outcome("failed"),
        Event::HeartbeatLost { .. } => metrics.outcome("lost"),
        Event::TimedOut { .. } => metrics.outcome("timedOut"),
        Event::Claimed { .. } | Event::ChildFinished { .. } => {}
    }
}

/// Mirrors the persisted status in the broker: queues the attempts it records as Ready, adopts those it
/// records as Running (after a restart they get a fresh heartbeat window), drops everything else, and asks
/// workers of cancelled attempts to stop.
fn sync_broker(broker: &Broker, fr: &FlowRun, decision: &engine::Decision) {
    let namespace = fr.namespace().unwrap_or_default();
    let name = fr.name_any();
    let uid = fr.uid().unwrap_or_default();
    let status = fr.status.clone().unwrap_or_default();

    let mut live: BTreeSet<(sluice_wire::TaskId, u32)> = BTreeSet::new();
    let mut queued = Vec::new();
    for task in &decision.tasks {
        let q = super::effects::queued_task(&namespace, &name, &uid, task);
        live.insert((q.task.id.clone(), q.task.attempt));
        queued.push(q);
    }
    let running = super::effects::running_attempts(&namespace, &name, &uid, fr, &status);
    for (q, _) in &running {
        live.insert((q.task.id.clone(), q.task.attempt));
    }
    for attempt in &decision.cancel_workers {
        broker.cancel(&attempt_id(&namespace, &name, attempt));
    }
    broker.retain_flow_run(&namespace, &name, |id, attempt| {
        live.contains(&(id.clone(), attempt))
    });
    broker.adopt_running(running);
    broker.offer(queued);
}

fn attempt_id(namespace: &str, name: &str, attempt: &AttemptRef) -> sluice_wire::TaskId {
    sluice_wire::TaskId::from_parts(namespace, name, &attempt.step, attempt.instance)
}

impl ResultSink for Arc<StatusWriter> {
    fn record(
        &self,
        report: Report,
    ) -> futures::future::BoxFuture<'static, Result<Recorded, SinkError>> {
        let attempt = match report.task.instance {
            Some(index) => AttemptRef::instance(report.task.step.clone(), index, report.attempt),
            None => AttemptRef::step(report.task.step.clone(), report.attempt),
        };
        let event = match report.outcome {
            Outcome::Completed(output) => Event::Completed { attempt, output },
            Outcome::Failed { error, retryable } => Event::Failed {
                attempt,
                error: TaskFailure {
                    error_type: error.error_type,
                    message: error.message,
                    exit_code: error.exit_code,
                },
                retryable,
            },
            Outcome::Lost => Event::HeartbeatLost { attempt },
        };
        let (tx, rx) = oneshot::channel();
        self.send(
            (report.task.namespace, report.task.flow_run),
            Job::Event {
                event,
                reply: Some(tx),
            },
        );
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(SinkError::Unavailable("the status writer stopped".into())))
        })
    }

    fn claimed(&self, claims: Vec<Claimed>) {
        let at = Timestamp::now();
        for claim in claims {
            let attempt = match claim.task.instance {
                Some(index) => AttemptRef::instance(claim.task.step.clone(), index, claim.attempt),
                None => AttemptRef::step(claim.task.step.clone(), claim.attempt),
            };
            self.send(
                (claim.task.namespace, claim.task.flow_run),
                Job::Event {
                    event: Event::Claimed {
                        attempt,
                        worker: claim.worker,
                        at,
                    },
                    reply: None,
                },
            );
        }
    }
}

/// The outcome of a child FlowRun that has ended, as the engine wants it.
pub(crate) fn child_outcome(child: &FlowRun) -> Option<ChildOutcome> {
    let status = child.status.as_ref()?;
    match status.phase? {
        crate::api::FlowPhase::Succeeded => Some(ChildOutcome::Succeeded(status.output.clone())),
        crate::api::FlowPhase::Failed => {
            let message = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Succeeded")
                .map(|c| c.message.clone())
                .unwrap_or_else(|| "the child flow failed".to_owned());
            Some(ChildOutcome::Failed(message))
        }
        crate::api::FlowPhase::Cancelled => Some(ChildOutcome::Cancelled),
        _ => None,
    }
}
