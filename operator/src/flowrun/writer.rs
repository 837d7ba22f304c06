//! The status writer: the one place that changes a FlowRun's step state (design invariant 8).
//!
//! Each FlowRun gets a small actor, its lane. Everything that can change its status — worker results from the
//! broker, claims, losses, and the controller's reconciles — becomes a job in the lane's mailbox; the lane takes
//! all jobs waiting at once as one batch, plans it with the pure [`super::batch::plan`], writes the planned
//! status in place of the stored one, and only then answers the waiting workers (invariant 2) and hands the
//! reserved attempts to the broker (invariant 1). One status write at most is in flight per FlowRun; whatever
//! arrives meanwhile goes into the next one (group commit). Different FlowRuns are written concurrently.
//!
//! What keeps a chain step at one write and no read:
//! - **Claims ride along.** A worker's claim (its name and start time) is not written on its own: it waits for
//!   the lane's next write, or is written after [`CLAIM_FLUSH`] if nothing else was. The attempt was reserved
//!   in status before the claim (invariant 1), so a crash before the claim is written only re-dispatches the
//!   same attempt, which fencing (invariant 4) handles.
//! - **Our own echoes cost nothing.** The watch event of a write this lane made carries a resourceVersion the
//!   lane remembers; such a reconcile is answered from memory without deciding, unless a timer is due.
//! - **Reconciles read the controller's cache, not the API.** The object the watch delivered is used when it is
//!   newer than the lane's copy (someone else wrote: a spec change, a signal); a lane without a copy starts
//!   from the controller's cache ([`FlowRunCache`]); a GET happens only when neither has the run or versions
//!   cannot be compared.
//! - **Every write is fenced.** The write carries the resourceVersion it was decided on, so the API server
//!   refuses it (409) if anyone wrote in between — a user's signal, a spec change, another operator. The lane
//!   then reads the run afresh and decides again; a stale copy can never overwrite a newer state.
//! - **Idle runs cost no task.** A lane ends as soon as the watch has delivered its last write (the cache
//!   then holds all the lane knows), or when it decided without writing, or after [`IDLE`] without work; its
//!   copy was the controller's (shared, not cloned) or is dropped with it.
//! - **Side effects run off the lane.** Child FlowRuns and Kubernetes Events are written by a spawned task after
//!   the status write and never delay the next one.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Deserialize as _;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, instrument, warn};

use super::Error;
use super::batch::{self, Reply};
use super::cache::{CachedFlowRun, FlowRunCache, NotCached, compact, tracks_fields};
use super::effects::Effects;
use super::linger::linger;
use super::slots::{Candidate, Slots};
use crate::api::{FlowRun, FlowRunStatus, StepPhase};
use crate::broker::Broker;
use crate::broker::sink::{Claimed, Outcome, Recorded, Report, ResultSink, SinkError, TaskRef};
use crate::context::FIELD_MANAGER;
use crate::engine::concurrency;
use crate::engine::{self, Admission, AttemptRef, ChildOutcome, Event, Limits, TaskFailure};
use crate::telemetry::Metrics;

/// How long a lane with nothing to do stays alive. Long enough to recognise the watch echoes of its writes
/// and to keep a chain's lane between steps; short enough that idle runs hold no task.
const IDLE: Duration = Duration::from_secs(10);

/// How often a batch is decided again after its write conflicted with someone else's.
const CONFLICT_RETRIES: usize = 5;

/// Most jobs folded into one status write.
const MAX_BATCH: usize = 512;

/// How long a claim waits for another write to ride on before it is written on its own.
pub const CLAIM_FLUSH: Duration = Duration::from_secs(1);

/// The `Accept` header of a status write: the run's metadata alone, or the whole run from an API server (or a
/// proxy in front of it) that cannot answer with metadata only; the writer reads only the metadata either way.
/// Public for `make bench`, which makes the same write without the operator: the API server's part of a step.
pub const METADATA_PREFERRED: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json";

/// How many of its own resourceVersions a lane remembers, to recognise the watch echoes of its writes.
const REMEMBERED_WRITES: usize = 16;

type Key = (String, String);

/// Where the answer to a worker's report goes.
type ReplyTo = Option<oneshot::Sender<Result<Recorded, SinkError>>>;

/// What a lane keeps between batches.
#[derive(Default)]
struct Lane {
    /// The newest FlowRun the lane knows: its copy after its last write (the status it sent, at the version
    /// the write made), or a newer object a reconcile brought (shared with the controller's cache).
    current: Option<Arc<FlowRun>>,
    /// resourceVersions produced by the lane's recent writes, newest last.
    written: VecDeque<String>,
    /// The version the lane last decided on without writing, when it kept no copy of it (the cache has it).
    decided: Option<String>,
    /// The last decision's wake-up.
    wake_at: Option<Timestamp>,
    /// Claims waiting to ride on the next write.
    pending_claims: Vec<Event>,
    /// When the pending claims are written on their own.
    flush_at: Option<tokio::time::Instant>,
    /// Attempts the last write left with workers (queued or running), whose results may come next.
    out: usize,
    /// How long the lane's last status write took.
    last_write: Duration,
}

impl Lane {
    fn remember_write(&mut self, fr: &FlowRun) {
        if let Some(rv) = fr.metadata.resource_version.clone() {
            if self.written.len() == REMEMBERED_WRITES {
                self.written.pop_front();
            }
            self.written.push_back(rv);
        }
    }

    /// Whether `seen` is a version this lane wrote (the watch echo of its own write) or already holds.
    fn knows(&self, seen: &ObjectMeta) -> bool {
        let Some(rv) = seen.resource_version.as_deref() else {
            return false;
        };
        self.written.iter().any(|w| w == rv)
            || self.decided.as_deref() == Some(rv)
            || self
                .current
                .as_ref()
                .and_then(|c| c.metadata.resource_version.as_deref())
                == Some(rv)
    }

    /// Whether the lane's copy is newer than `seen`.
    fn is_newer_than(&self, seen: &ObjectMeta) -> bool {
        self.current
            .as_ref()
            .is_some_and(|current| newer(&current.metadata, seen) == Some(true))
    }

    /// Whether the lane keeps nothing a later batch needs: no write of its own whose echo is still to come,
    /// no claim waiting for a write, no copy of the run. Ending it then loses only the version it decided on
    /// without writing, which the next batch decides on again from the controller's cache.
    fn holds_nothing(&self) -> bool {
        self.written.is_empty() && self.pending_claims.is_empty() && self.current.is_none()
    }

    /// Drops what the lane remembers once the cache has caught up with it (see [`Lane::holds_nothing`]).
    fn forget(&mut self) {
        self.written.clear();
        self.current = None;
        self.decided = None;
    }

    /// Whether a step of the run waits on a child FlowRun (its end arrives as a reconcile, not an event).
    fn has_running_children(&self) -> bool {
        self.current.as_deref().is_some_and(has_running_children)
    }

    /// Keeps `fr` as the lane's copy if the lane wrote it (the cache may not have it yet) or the run waits on
    /// children; otherwise only its version is remembered and the cache's copy serves the next batch, so a
    /// run decided on without a write (an idle run loaded after a restart) holds no decoded copy.
    fn keep(&mut self, fr: Arc<FlowRun>) {
        let rv = fr.metadata.resource_version.clone();
        let own = rv
            .as_ref()
            .is_some_and(|rv| self.written.iter().any(|w| w == rv));
        if own || has_running_children(&fr) {
            self.decided = None;
            self.current = Some(fr);
        } else {
            self.decided = rv;
            self.current = None;
        }
    }
}

fn has_running_children(fr: &FlowRun) -> bool {
    fr.status.as_ref().is_some_and(|s| {
        s.steps.values().any(|st| {
            st.phase == StepPhase::Running
                && (st.child.is_some()
                    || st
                        .instances
                        .as_ref()
                        .is_some_and(|inst| inst.active.values().any(|one| one.child.is_some())))
        })
    })
}

/// Which of two versions of one object is newer, when their resourceVersions say so. The API server hands out
/// etcd revisions, which grow; anything else is not compared (`None`), and the lane reads the object instead.
fn newer(a: &ObjectMeta, b: &ObjectMeta) -> Option<bool> {
    let version = |meta: &ObjectMeta| {
        meta.resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(version(a)? > version(b)?)
}

enum Job {
    Event {
        event: Event,
        reply: ReplyTo,
        /// The UID of the FlowRun the event is for, when known: refused as stale if the run now has another.
        uid: Option<String>,
    },
    Reconcile {
        /// The object the caller saw (the controller's cache), if any.
        observed: Option<Arc<CachedFlowRun>>,
        reply: oneshot::Sender<Result<Option<Timestamp>, Error>>,
    },
}

impl Job {
    /// Whether the job reports how an attempt ended.
    fn is_report(&self) -> bool {
        matches!(
            self,
            Job::Event {
                event: Event::Completed { .. }
                    | Event::Failed { .. }
                    | Event::TimedOut { .. }
                    | Event::HeartbeatLost { .. },
                ..
            }
        )
    }
}

/// Writes FlowRun statuses; shared by the controller and the broker.
pub struct StatusWriter {
    client: Client,
    effects: Arc<Effects>,
    broker: OnceLock<Broker>,
    metrics: Metrics,
    /// Each lane's mailbox. Jobs travel boxed: a channel allocates its slots 32 at a time, and a slot of a
    /// bare job would make every lane's mailbox ~5 KiB — ten thousand lanes at a restart, held for their idle
    /// time.
    actors: Mutex<HashMap<Key, mpsc::UnboundedSender<Box<Job>>>>,
    cache: FlowRunCache,
    limits: Limits,
    /// Concurrency slots across runs: counted before a run with a limit starts, given back when it ends.
    slots: Slots,
    /// This writer, to wake the runs waiting for a slot that a batch gave back.
    me: Weak<StatusWriter>,
    /// Whether runs still get their `managedFields` cleared before their first status write; off once the
    /// API server refused that (an admission rule, missing rights), so no run pays for a refused request.
    clear_field_owners: AtomicBool,
}

impl StatusWriter {
    /// A writer using `client` that plans within `limits`; [`StatusWriter::attach`] gives it the broker it
    /// feeds.
    pub fn new(client: Client, effects: Effects, metrics: Metrics, limits: Limits) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            client,
            effects: Arc::new(effects),
            broker: OnceLock::new(),
            metrics,
            actors: Mutex::new(HashMap::new()),
            cache: FlowRunCache::default(),
            limits,
            slots: Slots::default(),
            me: me.clone(),
            clear_field_owners: AtomicBool::new(true),
        })
    }

    /// The cache the controllers fill and lanes without a copy start from.
    pub fn cache(&self) -> FlowRunCache {
        self.cache.clone()
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
    /// `observed` is the object the caller saw (the controller's cache, a listed object): the lane starts from
    /// it when it is newer than its own copy, and reads the API only when it has neither.
    pub async fn reconcile(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
        observed: Option<Arc<CachedFlowRun>>,
    ) -> Result<Option<Timestamp>, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(
            (namespace.to_owned(), name.to_owned()),
            Job::Reconcile {
                observed,
                reply: tx,
            },
        );
        rx.await.map_err(|_| Error::WriterGone)?
    }

    fn send(self: &Arc<Self>, key: Key, job: Job) {
        // Sending under the lock pairs with the actor's exit check under the same lock, so no job is dropped
        // by an actor that is just shutting down.
        let mut actors = self.actors.lock().unwrap_or_else(|p| p.into_inner());
        let job = Box::new(job);
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

    async fn actor(self: Arc<Self>, key: Key, mut rx: mpsc::UnboundedReceiver<Box<Job>>) {
        let mut lane = Lane::default();
        loop {
            let wait = match lane.flush_at {
                Some(at) => at,
                None => tokio::time::Instant::now() + IDLE,
            };
            // A lane that remembers nothing (no write of its own to recognise, no claim to write, no copy)
            // ends as soon as its mailbox is empty: after a restart every run is decided once, and ten
            // thousand lanes idling together would free their memory all at once, long after the load.
            let waited = if lane.holds_nothing() {
                match rx.try_recv() {
                    Ok(job) => Ok(Some(job)),
                    Err(_) => Err(()),
                }
            } else {
                tokio::time::timeout_at(wait, rx.recv())
                    .await
                    .map_err(|_| ())
            };
            let first = match waited {
                Ok(Some(job)) => Some(job),
                Ok(None) => return,
                // Claims waited long enough for a write to ride on: write them now.
                Err(()) if lane.flush_at.is_some() => None,
                Err(()) => {
                    let mut actors = self.actors.lock().unwrap_or_else(|p| p.into_inner());
                    match rx.try_recv() {
                        Ok(job) => Some(job),
                        Err(_) => {
                            actors.remove(&key);
                            return;
                        }
                    }
                }
            };
            let flush = first.is_none();
            let mut jobs: Vec<Job> = first.into_iter().map(|job| *job).collect();
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(*job),
                    Err(_) => break,
                }
            }
            // Part of a wave of results: wait a moment for the rest of it, so one write carries the wave.
            let mut reports = jobs.iter().filter(|job| job.is_report()).count();
            if let Some(wait) = linger(lane.out, reports, lane.last_write) {
                let until = tokio::time::Instant::now() + wait;
                while jobs.len() < MAX_BATCH && reports < lane.out {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(job)) => {
                            reports += usize::from(job.is_report());
                            jobs.push(*job);
                        }
                        // The time is up, or the mailbox closed (the next receive ends the lane).
                        _ => break,
                    }
                }
            }
            // Boxed: the batch's state (a request in flight) exists only while it runs, so an idle lane's
            // task stays small.
            Box::pin(self.batch(&key, jobs, &mut lane, flush)).await;
        }
    }

    /// Carries out one batch of jobs: at most one status write.
    #[instrument(skip_all, fields(namespace = %key.0, flowrun = %key.1, jobs = jobs.len()))]
    async fn batch(&self, key: &Key, jobs: Vec<Job>, lane: &mut Lane, flush: bool) {
        let mut events = Vec::new();
        let mut reconciles = Vec::new();
        let mut observed: Option<Arc<CachedFlowRun>> = None;
        let mut all_known = true;
        // Whether the watch delivered the lane's last write: the cache holds what the lane holds.
        let mut caught_up = false;
        for job in jobs {
            match job {
                Job::Event { event, reply, uid } => events.push((event, reply, uid)),
                Job::Reconcile {
                    observed: seen,
                    reply,
                } => {
                    match &seen {
                        // Our own write, or an older version than the lane's (a watch running behind):
                        // nothing the lane does not know.
                        Some(fr) if lane.knows(fr.meta()) || lane.is_newer_than(fr.meta()) => {
                            caught_up |= lane.written.back() == fr.meta().resource_version.as_ref();
                        }
                        Some(fr) => {
                            all_known = false;
                            // Keep the newest object the reconciles brought.
                            if observed
                                .as_ref()
                                .is_none_or(|o| newer(fr.meta(), o.meta()).unwrap_or(true))
                            {
                                observed = Some(fr.clone());
                            }
                        }
                        None => all_known = false,
                    }
                    reconciles.push(reply);
                }
            }
        }
        let now = Timestamp::now();

        // Claims wait for a write to ride on (or for the flush).
        let (claims, events): (Vec<_>, Vec<_>) = events
            .into_iter()
            .partition(|(e, _, _)| matches!(e, Event::Claimed { .. }));
        if !claims.is_empty() {
            lane.pending_claims
                .extend(claims.into_iter().map(|(e, _, _)| e));
            lane.flush_at
                .get_or_insert_with(|| tokio::time::Instant::now() + CLAIM_FLUSH);
        }
        if !flush && events.is_empty() && reconciles.is_empty() {
            return;
        }

        // Only echoes of our own writes (or requeues of the version we hold) with nothing due: answered from
        // memory.
        let due = lane.wake_at.is_some_and(|at| at <= now);
        if !flush
            && events.is_empty()
            && all_known
            && (lane.current.is_some() || lane.decided.is_some())
            && !due
            && !lane.has_running_children()
        {
            self.metrics.own_write_reconciles.inc();
            for reply in reconciles {
                let _ = reply.send(Ok(lane.wake_at));
            }
            if caught_up && lane.pending_claims.is_empty() {
                // Nothing left to recognise: the next batch starts from the cache, which now holds the
                // lane's last write, so the lane and its decoded copy can go.
                lane.forget();
            }
            return;
        }

        // The base: the newest of the lane's copy and what the reconciles saw; then the controller's cache;
        // the API only when none has it or versions cannot be compared.
        let seen = observed.or_else(|| {
            lane.current
                .is_none()
                .then(|| self.cache.get(&key.0, &key.1))
                .flatten()
        });
        // A run that does not decode cannot be decided on: it fails (once) with a Condition and an Event that
        // say why, and nothing reported for it is applied. The other runs never notice.
        if lane.current.is_none()
            && let Some(cached) = seen.as_ref().filter(|s| s.undecodable().is_some())
        {
            let why = cached.undecodable().unwrap_or_default().to_owned();
            for (_, reply, _) in events {
                answer(
                    reply,
                    Err(SinkError::Stale(format!(
                        "FlowRun {}/{} does not decode: {why}",
                        key.0, key.1
                    ))),
                );
            }
            lane.pending_claims.clear();
            lane.flush_at = None;
            if let Some(broker) = self.broker() {
                broker.retain_flow_run(&key.0, &key.1, |_, _| false);
            }
            let result = if cached.is_finished() {
                Ok(None)
            } else {
                self.fail_undecodable(key, cached, &why)
                    .await
                    .map(|()| None)
            };
            for reply in reconciles {
                let _ = reply.send(result.clone());
            }
            return;
        }
        // A finished run the cache keeps as a summary has nothing to decide; only a report for it (answered as
        // stale or as a repeat) needs the whole object.
        if events.is_empty()
            && !flush
            && lane.current.is_none()
            && seen.as_ref().is_some_and(|s| s.is_finished_summary())
        {
            for reply in reconciles {
                let _ = reply.send(Ok(None));
            }
            return;
        }
        let base = match (lane.current.take(), seen) {
            (Some(current), Some(seen)) => match newer(seen.meta(), &current.metadata) {
                Some(true) => self.decode(key, &seen).await,
                Some(false) => Ok(Some(current)),
                None => self.read(key).await,
            },
            (Some(current), None) => Ok(Some(current)),
            (None, Some(seen)) => self.decode(key, &seen).await,
            (None, None) => self.read(key).await,
        };
        let fr = match base {
            Ok(Some(fr)) => fr,
            Ok(None) => {
                for (_, reply, _) in events {
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
                lane.pending_claims.clear();
                lane.flush_at = None;
                if let Some(broker) = self.broker() {
                    broker.retain_flow_run(&key.0, &key.1, |_, _| false);
                }
                return;
            }
            Err(e) => {
                warn!(error = %e, "cannot read FlowRun");
                let msg = e.to_string();
                for (_, reply, _) in events {
                    answer(reply, Err(SinkError::Unavailable(msg.clone())));
                }
                for reply in reconciles {
                    let _ = reply.send(Err(Error::Kube(msg.clone())));
                }
                return;
            }
        };

        // A report from a worker of a deleted FlowRun of the same name must not land in this one.
        let run_uid = fr.uid();
        let events: Vec<(Event, ReplyTo)> = events
            .into_iter()
            .filter_map(|(event, reply, uid)| match uid {
                Some(uid) if run_uid.as_deref() != Some(uid.as_str()) => {
                    self.metrics.outcome("refused");
                    answer(
                        reply,
                        Err(SinkError::Stale(format!(
                            "the task belongs to FlowRun {}/{} with UID {uid}, which no longer exists",
                            key.0, key.1
                        ))),
                    );
                    None
                }
                _ => Some((event, reply)),
            })
            .collect();

        // The batch's events, then children that ended, so the parent's step finishes in this same write.
        let mut all: Vec<(Event, ReplyTo)> = events;
        if !reconciles.is_empty() {
            let status = fr.status.clone().unwrap_or_default();
            for event in self.effects.finished_children(&fr, &status).await {
                all.push((event, None));
            }
        }
        // Pending claims ride along only on a write that happens anyway (or when their time is up); they
        // happened before anything in this batch, so they go first.
        if !lane.pending_claims.is_empty() {
            let others: Vec<Event> = all.iter().map(|(e, _)| e.clone()).collect();
            // A batch with results writes anyway; only one of reconciles alone is planned twice to know.
            if flush
                || !others.is_empty()
                || batch::plan(&fr, &others, now, self.limits, &engine::NOT_ASKED).needs_write()
            {
                let claims = lane.pending_claims.drain(..).map(|e| (e, None));
                all = claims.chain(all).collect();
                lane.flush_at = None;
            }
        }
        let (events, replies): (Vec<Event>, Vec<_>) = all.into_iter().unzip();

        // A run with a concurrency limit that holds no slot: the slots are counted before it is decided on.
        let admission = self.admission(key, &fr).await;

        // Decide and write, fenced by the version decided on; a conflict means someone wrote in between
        // (a signal, a spec change, another operator): read afresh and decide again.
        let mut fr = fr;
        let mut conflicts = 0;
        // Whether the status the write replaced held a concurrency slot.
        let mut held;
        // Whether the API server refused the write itself (an admission rule, the object's size), which a
        // retry of the same write will not change: the run's owner hears of it through an Event.
        let mut refused = false;
        let (fr, plan) = loop {
            let plan = batch::plan(&fr, &events, now, self.limits, &admission);
            held = fr.status.as_ref().is_some_and(concurrency::holds_slot);
            if !plan.needs_write() {
                break (Ok(fr), plan);
            }
            // A run the API server tracks field owners of has them cleared first (once per run): the status
            // write then costs the API server no ownership bookkeeping, and neither does any later one.
            let untrack =
                tracks_fields(&fr.metadata) && self.clear_field_owners.load(Ordering::Relaxed);
            let result = if untrack {
                self.clear_field_owners(key, &fr).await
            } else {
                debug!(
                    events = events.len(),
                    reconciles = reconciles.len(),
                    flush,
                    changes = %plan.patch,
                    "writing the status"
                );
                let started = tokio::time::Instant::now();
                let written = self.write(key, &fr, &plan.replacement).await;
                lane.last_write = started.elapsed();
                written
            };
            match result {
                Ok(written) if untrack => {
                    // Only the version changed: decide again on it (the same plan) and write.
                    lane.remember_write(&written);
                    if tracks_fields(&written.metadata) {
                        // Something keeps the owners (an API server that does not reset them, a webhook):
                        // clearing again would only repeat this request.
                        warn!(
                            "clearing a FlowRun's managedFields left them in place: runs keep them from now on"
                        );
                        self.clear_field_owners.store(false, Ordering::Relaxed);
                    }
                    fr = Arc::new(written);
                }
                Ok(written) => {
                    lane.remember_write(&written);
                    break (Ok(Arc::new(written)), plan);
                }
                Err(kube::Error::Api(status))
                    if status.code == 409 && conflicts < CONFLICT_RETRIES =>
                {
                    conflicts += 1;
                    self.metrics.status_conflicts.inc();
                    debug!(
                        conflicts,
                        "the status changed since the decision: deciding again"
                    );
                    match self.read(key).await {
                        Ok(Some(fresh)) => fr = fresh,
                        Ok(None) => {
                            let gone = format!("FlowRun {}/{} was deleted", key.0, key.1);
                            break (Err(gone), plan);
                        }
                        Err(e) => break (Err(e.to_string()), plan),
                    }
                }
                Err(kube::Error::Api(status)) if untrack && (400..500).contains(&status.code) => {
                    warn!(
                        error = %status.message,
                        "the API server refused to clear a FlowRun's managedFields: runs keep them from now on"
                    );
                    self.clear_field_owners.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    refused = matches!(&e, kube::Error::Api(s) if (400..500).contains(&s.code) && s.code != 409);
                    break (Err(e.to_string()), plan);
                }
            }
        };
        let fr = match fr {
            Ok(fr) => fr,
            Err(e) => {
                // The lane's copy may be what the API server refused: read afresh next time.
                warn!(error = %e, refused, "status write failed; the batch will be retried by its senders");
                if refused {
                    let reference = k8s_openapi::api::core::v1::ObjectReference {
                        api_version: Some(FlowRun::api_version(&()).into_owned()),
                        kind: Some(FlowRun::kind(&()).into_owned()),
                        namespace: Some(key.0.clone()),
                        name: Some(key.1.clone()),
                        uid: run_uid.clone(),
                        ..Default::default()
                    };
                    let (effects, message) = (
                        self.effects.clone(),
                        format!("the operator cannot write this run's status: {e}"),
                    );
                    tokio::spawn(async move {
                        effects
                            .warn(reference, "StatusWriteRefused", &message)
                            .await
                    });
                }
                let msg = e;
                for reply in replies {
                    answer(reply, Err(SinkError::Unavailable(msg.clone())));
                }
                for reply in reconciles {
                    let _ = reply.send(Err(Error::Kube(msg.clone())));
                }
                return;
            }
        };

        // Persisted: now, and only now, acknowledge workers and hand out the attempts this status records.
        for ((event, reply), outcome) in events.iter().zip(replies).zip(&plan.replies) {
            match outcome {
                Reply::Applied => {
                    count_outcome(&self.metrics, event);
                    answer(reply, Ok(Recorded::Applied));
                }
                Reply::Duplicate => answer(reply, Ok(Recorded::Duplicate)),
                Reply::Stale(why) => {
                    debug!(refusal = %why, "event refused");
                    self.metrics.outcome("refused");
                    answer(reply, Err(SinkError::Stale(why.clone())));
                }
                Reply::Unknown(why) => {
                    debug!(refusal = %why, "event refused");
                    self.metrics.outcome("refused");
                    answer(reply, Err(SinkError::Unknown(why.clone())));
                }
            }
        }
        if let Some(broker) = self.broker() {
            lane.out = sync_broker(broker, &fr, &plan.decision, self.limits);
        }
        self.record_slot(key, &fr, held);
        if plan.has_side_effects() {
            let effects = self.effects.clone();
            let (object, decision, notes) = (fr.clone(), plan.decision.clone(), plan.notes.clone());
            tokio::spawn(async move { effects.apply(&object, &decision, &notes).await });
        }
        lane.wake_at = plan.decision.wake_at;
        for reply in reconciles {
            let _ = reply.send(Ok(lane.wake_at));
        }
        lane.keep(fr);
    }

    /// Counts the slots of a run's concurrency key when the run has a limit and holds no slot (see
    /// [`Slots`]); any other run needs no count.
    async fn admission(&self, key: &Key, fr: &FlowRun) -> Admission {
        let Some(limit) = &fr.spec.concurrency else {
            return Admission::NotAsked;
        };
        if fr.spec.cancel || !concurrency::needs_admission(&fr.spec, fr.status.as_ref()) {
            return Admission::NotAsked;
        }
        // A key that does not resolve fails the run in the engine.
        let Ok(slot_key) = concurrency::resolve_key(limit, fr.spec.input.as_ref()) else {
            return Admission::NotAsked;
        };
        // Counting before every store holds its first list would miss holders (after a restart).
        self.cache.wait_until_ready().await;
        let runs = self.runs_of_key(&key.0, &slot_key);
        let created = fr.metadata.creation_timestamp.as_ref().map(|t| t.0);
        self.slots.admit(
            &key.0,
            &key.1,
            created,
            &slot_key,
            limit.limit,
            candidates(&runs),
        )
    }

    /// Remembers what a persisted status says of the run's slot; when the run gave its slot back, wakes the
    /// oldest runs waiting for one of its key.
    ///
    /// A run granted a slot may still end without taking it (its flow turned out invalid): its status then
    /// records no admission, and the grant is given back here all the same.
    fn record_slot(&self, key: &Key, fr: &FlowRun, held: bool) {
        let Some(limit) = &fr.spec.concurrency else {
            return;
        };
        let recorded = fr.status.as_ref().and_then(|s| s.concurrency.as_ref());
        let slot_key = match recorded {
            Some(slot) => slot.key.clone(),
            None => match concurrency::resolve_key(limit, fr.spec.input.as_ref()) {
                Ok(slot_key) => slot_key,
                Err(_) => return,
            },
        };
        let holds = fr.status.as_ref().is_some_and(concurrency::holds_slot);
        if !self.slots.record(&key.0, &key.1, &slot_key, held, holds) {
            return;
        }
        let runs = self.runs_of_key(&key.0, &slot_key);
        let Some(me) = self.me.upgrade() else {
            return;
        };
        for name in Slots::oldest_waiting(candidates(&runs), limit.limit as usize) {
            let (me, namespace) = (me.clone(), key.0.clone());
            tokio::spawn(async move {
                if let Err(e) = me.reconcile(&namespace, &name, None).await {
                    debug!(error = %e, flowrun = %name, "a run waiting for a slot will look again later");
                }
            });
        }
    }

    /// The cached runs of a namespace with a concurrency limit under `slot_key`.
    fn runs_of_key(&self, namespace: &str, slot_key: &str) -> Vec<Arc<CachedFlowRun>> {
        self.cache
            .all()
            .into_iter()
            .filter(|fr| {
                fr.meta().namespace.as_deref() == Some(namespace)
                    && fr.slot().is_some_and(|s| &*s.key == slot_key)
            })
            .collect()
    }

    /// Replaces the run's status with `status` (a PUT of the status subresource), fenced by the
    /// resourceVersion of `base`: the API server answers 409 if the run changed since. The body names the
    /// run and carries the status only: for the status subresource the API server keeps the stored spec and
    /// metadata, so sending them would only cost it a decode. Returns the run as the API server now holds it:
    /// `base` with the status sent and the version the write made.
    ///
    /// The API server answers with the run's metadata only (`as=PartialObjectMetadata`): the rest of the run
    /// is `base` and what was sent, so encoding the whole run back (and decoding it here) would be work for
    /// nothing on every step. Where it cannot, it answers with the whole run, of which only the metadata is
    /// read. The status is read back from the body sent, so the copy holds what the API server decoded; it
    /// stores that unchanged because the status schema sets no defaults (a unit test keeps it so) and the
    /// body holds only fields of the Rust types the schema is generated from.
    async fn write(
        &self,
        key: &Key,
        base: &FlowRun,
        status: &serde_json::Value,
    ) -> Result<FlowRun, kube::Error> {
        let body = StatusReplacement {
            api_version: FlowRun::api_version(&()),
            kind: FlowRun::kind(&()),
            metadata: StatusReplacementMeta {
                name: &key.1,
                namespace: &key.0,
                resource_version: base.metadata.resource_version.as_deref(),
            },
            status,
        };
        let params = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        let mut request = kube::core::Request::new(FlowRun::url_path(&(), Some(&key.0)))
            .replace_subresource(
                "status",
                &key.1,
                &params,
                serde_json::to_vec(&body).map_err(kube::Error::SerdeError)?,
            )
            .map_err(kube::Error::BuildRequest)?;
        request.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static(METADATA_PREFERRED),
        );
        let started = std::time::Instant::now();
        let result = self
            .client
            .request::<PartialObjectMeta<FlowRun>>(request)
            .await;
        self.metrics
            .status_write_seconds
            .observe(started.elapsed().as_secs_f64());
        let answer = result?;
        self.metrics.status_writes.inc();
        let mut written = base.clone();
        written.metadata.resource_version = answer.metadata.resource_version;
        written.status = Some(FlowRunStatus::deserialize(status).map_err(kube::Error::SerdeError)?);
        Ok(written)
    }

    /// Clears the run's `metadata.managedFields`, fenced by the version of `base`. The API server records
    /// field owners again only for a server-side apply, so the operator's status writes that follow are not
    /// tracked; returns the run as the API server now holds it, compacted.
    async fn clear_field_owners(&self, key: &Key, base: &FlowRun) -> Result<FlowRun, kube::Error> {
        let patch = serde_json::json!({
            "metadata": {"managedFields": [{}], "resourceVersion": base.metadata.resource_version}
        });
        let api: Api<FlowRun> = Api::namespaced(self.client.clone(), &key.0);
        let mut fr = api
            .patch(
                &key.1,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Merge(&patch),
            )
            .await?;
        self.metrics.field_owner_clears.inc();
        compact(&mut fr);
        Ok(fr)
    }

    /// Marks a run that does not decode Failed, with the decoder's message in its conditions and a Warning
    /// Event, fenced by the version that did not decode.
    async fn fail_undecodable(
        &self,
        key: &Key,
        cached: &CachedFlowRun,
        why: &str,
    ) -> Result<(), Error> {
        warn!(error = %why, "FlowRun does not decode: marking it Failed");
        let message = format!("the FlowRun cannot be decoded by the operator: {why}");
        let now = Timestamp::now().to_string();
        let condition = |type_: &str| {
            serde_json::json!({"type": type_, "status": "False", "reason": "Undecodable",
                "message": message, "lastTransitionTime": now,
                "observedGeneration": cached.meta().generation})
        };
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": cached.meta().resource_version},
            "status": {"phase": "Failed", "finishedAt": now,
                       "conditions": [condition("Ready"), condition("Succeeded")]}
        });
        let api: Api<CachedFlowRun> = Api::namespaced(self.client.clone(), &key.0);
        api.patch_status(
            &key.1,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&patch),
        )
        .await?;
        self.metrics.status_writes.inc();
        self.effects
            .warn(cached.object_ref(&()), "Undecodable", &message)
            .await;
        Ok(())
    }

    /// The run a cached copy holds; read from the API for a finished run (the cache keeps only its phase) or
    /// a copy that does not decode (the API server's answer says why, or shows the object fixed).
    async fn decode(
        &self,
        key: &Key,
        cached: &CachedFlowRun,
    ) -> Result<Option<Arc<FlowRun>>, kube::Error> {
        match cached.decode() {
            Ok(fr) => Ok(Some(Arc::new(fr))),
            Err(NotCached::Finished) => self.read(key).await,
            Err(e) => {
                warn!(error = %e, "cached FlowRun does not decode; reading it");
                self.read(key).await
            }
        }
    }

    async fn read(&self, key: &Key) -> Result<Option<Arc<FlowRun>>, kube::Error> {
        let api: Api<FlowRun> = Api::namespaced(self.client.clone(), &key.0);
        self.metrics.flowrun_reads.inc();
        Ok(api.get_opt(&key.1).await?.map(|mut fr| {
            compact(&mut fr);
            Arc::new(fr)
        }))
    }
}

/// The runs the slot count looks at.
fn candidates(runs: &[Arc<CachedFlowRun>]) -> impl Iterator<Item = Candidate<'_>> {
    runs.iter().filter_map(|fr| {
        Some(Candidate {
            name: fr.meta().name.as_deref()?,
            created: fr.meta().creation_timestamp.as_ref().map(|t| t.0),
            view: fr.slot()?,
        })
    })
}

fn answer(reply: ReplyTo, result: Result<Recorded, SinkError>) {
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
        Event::Claimed { .. }
        | Event::ChildFinished { .. }
        | Event::InstanceChildFinished { .. } => {}
    }
}

/// Mirrors the persisted status in the broker: queues the attempts it records as Ready, adopts those it
/// records as Running (after a restart they get a fresh heartbeat window), drops everything else, and asks
/// workers of cancelled attempts to stop.
/// Hands the broker the attempts the written status holds; returns how many are out with workers.
fn sync_broker(
    broker: &Broker,
    fr: &FlowRun,
    decision: &engine::Decision,
    limits: Limits,
) -> usize {
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
    let running = super::effects::running_attempts(&namespace, &name, &uid, fr, &status, limits);
    for (q, _) in &running {
        live.insert((q.task.id.clone(), q.task.attempt));
    }
    for attempt in &decision.cancel_workers {
        broker.cancel(&attempt_id(&namespace, &name, &uid, attempt));
    }
    broker.retain_flow_run(&namespace, &name, |id, attempt| {
        live.contains(&(id.clone(), attempt))
    });
    broker.adopt_running(running);
    broker.offer(queued);
    live.len()
}

fn attempt_id(namespace: &str, name: &str, uid: &str, attempt: &AttemptRef) -> sluice_wire::TaskId {
    sluice_wire::TaskId::for_run(namespace, name, uid, &attempt.step, attempt.instance)
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
                uid: report.task.uid,
            },
        );
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(SinkError::Unavailable("the status writer stopped".into())))
        })
    }

    fn load(&self, task: &TaskRef) -> futures::future::BoxFuture<'static, ()> {
        let writer = Arc::clone(self);
        let (namespace, name) = (task.namespace.clone(), task.flow_run.clone());
        Box::pin(async move {
            // Without an object the lane starts from the controller's cache (or reads the run).
            if let Err(e) = writer.reconcile(&namespace, &name, None).await {
                debug!(%namespace, flowrun = %name, error = %e, "cannot load the run of a heartbeat");
            }
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
                    // Claims come from the broker's queue, which holds only the live run's attempts.
                    uid: None,
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

/// The body of a status write: the run named, the version decided on, and the status; nothing of the spec or
/// the rest of the metadata, which the API server keeps as stored for a write of the status subresource.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusReplacement<'a> {
    api_version: std::borrow::Cow<'static, str>,
    kind: std::borrow::Cow<'static, str>,
    metadata: StatusReplacementMeta<'a>,
    status: &'a serde_json::Value,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusReplacementMeta<'a> {
    name: &'a str,
    namespace: &'a str,
    resource_version: Option<&'a str>,
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
