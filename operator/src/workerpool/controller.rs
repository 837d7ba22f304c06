//! The WorkerPool controller: for every pool, dereference (cached Deployment, pods, broker demand) → validate
//! → build → apply → update status, once a second while it lives (and at once when the pool, its Deployment or
//! its pods change).
//!
//! Writes, and when they happen (each one counted in [`WriteCounts`]):
//! - the Deployment (server-side apply, field manager `sluice-operator`) only when the built object's digest or
//!   its replicas differ from the cached Deployment;
//! - `controller.kubernetes.io/pod-deletion-cost` on pods whose cost must change, only right before a
//!   scale-down (busy workers cost their in-flight count, idle ones 0, so the ReplicaSet deletes idle pods
//!   first); the scale-down itself waits until the cache shows the annotations;
//! - the status (server-side apply of the status subresource) only when it changed, at most once a second;
//! - pod deletions and Events by the reaper;
//! - an Event (`ScaledUp`, `ScaledDown`) with the reason of the change whenever an apply changes the Deployment's
//!   replicas (the same text as `status.scaling.lastScaleReason`).
//!
//! An idle pool therefore costs no write at all; a pool under load about one status write a second
//! (`oldestWaitingSeconds` moves) plus one Deployment write per scaling step.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, future};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use super::autoscale::{self, Load, Memory, Policy, Scale};
use super::build::{self, POOL_LABEL, SPEC_HASH_ANNOTATION};
use super::reaper::{self, Reap};
use super::status::{self, Observed};
use super::{Error, WorkerPoolConfig, WriteCounts};
use crate::api::{FlowRun, WorkerPool};
use crate::broker::Broker;
use crate::broker::queue::WorkerInfo;
use crate::context::{FIELD_MANAGER, Scope, event_recorder};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::PoolLabels;

/// How often a live pool is looked at (demand is read from the broker's memory, so this costs no API call).
pub const TICK: Duration = Duration::from_secs(1);
/// Fewest time between two status writes of one pool.
pub const MIN_STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Annotation the ReplicaSet controller reads to choose which pods to delete first on a scale-down.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// How long an apply is trusted before the cache shows it.
const APPLY_TRUST: Duration = Duration::from_secs(5);

/// The WorkerPool controller; nothing runs until [`WorkerPoolController::run`].
#[derive(Clone)]
pub struct WorkerPoolController {
    client: Client,
    broker: Broker,
    metrics: Metrics,
    scope: Scope,
    config: WorkerPoolConfig,
    instance: Option<String>,
    writes: WriteCounts,
}

impl WorkerPoolController {
    /// A controller for the pools of `scope`, reading demand from `broker` and giving workers
    /// `config.broker_url`; its Events are reported from `instance` (the pod name).
    pub fn new(
        client: Client,
        broker: Broker,
        metrics: Metrics,
        scope: Scope,
        config: WorkerPoolConfig,
        instance: Option<String>,
    ) -> Self {
        Self {
            client,
            broker,
            metrics,
            scope,
            config,
            instance,
            writes: WriteCounts::default(),
        }
    }

    /// The API writes made so far.
    pub fn writes(&self) -> WriteCounts {
        self.writes.clone()
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        let shutdown = futures::FutureExt::shared(shutdown);
        let namespaces: Vec<Option<String>> = match &self.scope {
            Scope::All => vec![None],
            Scope::Namespaces(ns) => ns.iter().cloned().map(Some).collect(),
        };
        future::join_all(
            namespaces
                .into_iter()
                .map(|ns| self.run_in(ns, shutdown.clone())),
        )
        .await;
        info!("WorkerPool controller stopped");
    }

    async fn run_in(
        &self,
        namespace: Option<String>,
        shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    ) {
        fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
        where
            K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
            K::DynamicType: Default,
        {
            match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let pools: Api<WorkerPool> = api(&self.client, &namespace);
        let deployments: Api<Deployment> = api(&self.client, &namespace);
        let pods: Api<Pod> = api(&self.client, &namespace);
        let labelled = || watcher::Config::default().labels(POOL_LABEL).any_semantic();

        let (dep_store, dep_writer) = reflector::store();
        let (pod_store, pod_writer) = reflector::store();
        let dep_reflector =
            reflector::reflector(dep_writer, watcher(deployments.clone(), labelled()))
                .default_backoff()
                .for_each(|_| future::ready(()));
        let pod_reflector = reflector::reflector(pod_writer, watcher(pods.clone(), labelled()))
            .default_backoff()
            .for_each(|_| future::ready(()));

        let ctx = Arc::new(Context {
            client: self.client.clone(),
            broker: self.broker.clone(),
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            writes: self.writes.clone(),
            deployments: dep_store.clone(),
            pods: pod_store.clone(),
            memory: Mutex::new(HashMap::new()),
            recorder: event_recorder(self.client.clone(), self.instance.clone()),
        });
        let controller = async move {
            if dep_store.wait_until_ready().await.is_err()
                || pod_store.wait_until_ready().await.is_err()
            {
                return;
            }
            Controller::new(pools, watcher::Config::default().any_semantic())
                .owns(deployments, labelled())
                .watches(pods, labelled(), |pod: Pod| {
                    let namespace = pod.namespace().unwrap_or_default();
                    pod.labels()
                        .get(POOL_LABEL)
                        .map(|pool| ObjectRef::new(pool).within(&namespace))
                })
                .graceful_shutdown_on(shutdown)
                .run(reconcile, error_policy, ctx)
                .for_each(|result| async move {
                    if let Err(e) = result {
                        debug!(error = %e, "WorkerPool reconcile failed");
                    }
                })
                .await;
        };
        tokio::select! {
            _ = controller => {}
            _ = future::join(dep_reflector, pod_reflector) => {}
        }
    }
}

/// What reconcile needs.
struct Context {
    client: Client,
    broker: Broker,
    metrics: Metrics,
    config: WorkerPoolConfig,
    writes: WriteCounts,
    deployments: Store<Deployment>,
    pods: Store<Pod>,
    memory: Mutex<HashMap<(String, String), PoolMemory>>,
    recorder: Recorder,
}

/// What the controller remembers of one pool between reconciles (lost on restart, rebuilt from the cluster).
#[derive(Default)]
struct PoolMemory {
    autoscale: Memory,
    last_status_write: Option<Instant>,
    last_apply: Option<(String, i32, Instant)>,
}

impl Context {
    fn with_memory<T>(&self, key: &(String, String), f: impl FnOnce(&mut PoolMemory) -> T) -> T {
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        f(memory.entry(key.clone()).or_default())
    }
}

#[instrument(skip_all, fields(namespace = pool.namespace().unwrap_or_default(), pool = %pool.name_any()))]
async fn reconcile(pool: Arc<WorkerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let key = (namespace.clone(), name.clone());
    let labels = PoolLabels {
        namespace: namespace.clone(),
        pool: name.clone(),
    };
    if pool.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the Deployment and its pods.
        ctx.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        ctx.metrics.queue_depth.remove(&labels);
        ctx.metrics.in_flight.remove(&labels);
        return Ok(Action::await_change());
    }

    // Dereference: everything from caches and the broker's memory.
    let now = Timestamp::now();
    let demand = ctx.broker.demand(&namespace, &name);
    let workers = ctx.broker.workers(&namespace, &name);
    ctx.metrics
        .queue_depth
        .get_or_create(&labels)
        .set(i64::from(demand.queued));
    ctx.metrics
        .in_flight
        .get_or_create(&labels)
        .set(i64::from(demand.in_flight));
    let deployment = ctx
        .deployments
        .get(&ObjectRef::new(&name).within(&namespace));
    if let Some(d) = &deployment
        && !owned_by(d, &pool)
    {
        return Err(Error::NotOwned(name));
    }
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(namespace.as_str())
                && p.labels().get(POOL_LABEL) == Some(&name)
        })
        .collect();

    // Validate.
    let validated = autoscale::heartbeat_timeout(&pool.spec)
        .and_then(|hb| Ok((hb, Policy::from_spec(&pool.spec)?)));

    // Reap failed, crash-looping and silent workers.
    let heartbeat_timeout = validated
        .as_ref()
        .map_or(autoscale::DEFAULT_HEARTBEAT_TIMEOUT, |(hb, _)| *hb);
    let mut reaped = BTreeSet::new();
    for pod in &pods {
        let pod_name = pod.name_any();
        let worker = workers.iter().find(|w| w.name == pod_name);
        if let Some(reap) = reaper::decide(pod, worker, heartbeat_timeout, now) {
            reap_pod(&ctx, &pool, pod, &reap).await;
            reaped.insert(pod_name);
        }
    }
    forget_gone_workers(
        &ctx,
        &namespace,
        &name,
        &pods,
        &workers,
        heartbeat_timeout,
        now,
    );

    // Build and apply.
    let current = deployment
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas);
    let mut requeue = TICK;
    let scale: Result<Scale, String> = match &validated {
        Ok((_, policy)) => {
            let load = Load {
                queued: demand.queued,
                in_flight: demand.in_flight,
                busy_workers: workers
                    .iter()
                    .filter(|w| w.in_flight > 0 && !reaped.contains(&w.name))
                    .count()
                    .try_into()
                    .unwrap_or(u32::MAX),
            };
            Ok(ctx.with_memory(&key, |m| {
                autoscale::decide(policy, load, current, &mut m.autoscale, now)
            }))
        }
        Err(e) => Err(e.to_string()),
    };
    let built = match &scale {
        Ok(s) => {
            let mut replicas = s.replicas;
            if let Some(current) = current
                && replicas < current
                && mark_deletion_costs(&ctx, &pods, &workers, &reaped).await? > 0
            {
                // Scale down once the ReplicaSet controller can see which pods are idle.
                replicas = current;
                requeue = Duration::from_millis(300);
            }
            build::build_deployment(&pool, &ctx.config.broker_url, replicas)
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.clone()),
    };
    let scale = match (scale, &built) {
        (Ok(s), Ok(_)) => Ok(s),
        (Ok(_), Err(e)) => Err(e.clone()),
        (Err(e), _) => Err(e),
    };
    if let Ok(desired) = &built
        && apply_deployment(&ctx, &key, deployment.as_deref(), desired).await?
        && let Ok(s) = &scale
    {
        let replicas = desired.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        if let Some(event) = autoscale::scale_event(current, replicas, s) {
            let reference = pool.object_ref(&());
            publish(
                &ctx,
                &reference,
                EventType::Normal,
                event.reason,
                event.note,
                "Scale",
            )
            .await;
        }
    }

    // Status.
    let next = status::compute(&Observed {
        name: &name,
        generation: pool.metadata.generation,
        previous: pool.status.as_ref(),
        deployment: deployment.as_deref(),
        demand: &demand,
        workers: &workers,
        heartbeat_timeout,
        mode: pool
            .spec
            .scaling
            .as_ref()
            .map(|s| s.mode)
            .unwrap_or_default(),
        scale: scale.as_ref().map_err(Clone::clone),
        now,
    });
    if status::changed(pool.status.as_ref(), &next) {
        let since = ctx.with_memory(&key, |m| m.last_status_write.map(|t| t.elapsed()));
        match since {
            Some(elapsed) if elapsed < MIN_STATUS_INTERVAL => {
                requeue = requeue.min(MIN_STATUS_INTERVAL - elapsed);
            }
            _ => {
                let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &namespace);
                let patch = json!({
                    "apiVersion": WorkerPool::api_version(&()),
                    "kind": WorkerPool::kind(&()),
                    "status": next,
                });
                api.patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await?;
                ctx.writes.status();
                ctx.with_memory(&key, |m| m.last_status_write = Some(Instant::now()));
                debug!(
                    queue = next.queue_depth,
                    in_flight = next.in_flight,
                    replicas = next.replicas,
                    "status written"
                );
            }
        }
    }
    Ok(Action::requeue(requeue))
}

fn error_policy(pool: Arc<WorkerPool>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(pool = %pool.name_any(), error = %error, "WorkerPool reconcile failed");
    ctx.metrics
        .reconcile_error("workerpool", error.metric_label());
    Action::requeue(Duration::from_secs(2))
}

fn owned_by(deployment: &Deployment, pool: &WorkerPool) -> bool {
    deployment
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == pool.metadata.uid.as_ref() && o.controller == Some(true))
}

/// Applies the Deployment unless the cache (or a recent apply the cache does not show yet) says it is current;
/// whether it applied.
async fn apply_deployment(
    ctx: &Context,
    key: &(String, String),
    existing: Option<&Deployment>,
    desired: &Deployment,
) -> Result<bool, Error> {
    let hash = desired
        .annotations()
        .get(SPEC_HASH_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    let replicas = desired.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let cached_current = existing.is_some_and(|d| {
        d.annotations().get(SPEC_HASH_ANNOTATION) == Some(&hash)
            && d.spec.as_ref().and_then(|s| s.replicas) == Some(replicas)
    });
    let recently_applied = ctx.with_memory(key, |m| {
        m.last_apply.as_ref().is_some_and(|(h, r, at)| {
            *h == hash && *r == replicas && at.elapsed() < APPLY_TRUST && existing.is_some()
        })
    });
    if cached_current || recently_applied {
        return Ok(false);
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &key.0);
    api.patch(
        &key.1,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await?;
    ctx.writes.deployment();
    let previous = existing
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas);
    info!(deployment = %key.1, replicas, ?previous, spec_hash = %hash, "applied the worker Deployment");
    ctx.with_memory(key, |m| {
        m.last_apply = Some((hash, replicas, Instant::now()))
    });
    Ok(true)
}

/// Sets `controller.kubernetes.io/pod-deletion-cost` where it must change: a busy worker's pod costs its
/// in-flight count, an idle one 0. Returns how many pods were patched.
async fn mark_deletion_costs(
    ctx: &Context,
    pods: &[Arc<Pod>],
    workers: &[WorkerInfo],
    reaped: &BTreeSet<String>,
) -> Result<usize, Error> {
    let load: BTreeMap<&str, u32> = workers
        .iter()
        .map(|w| (w.name.as_str(), w.in_flight))
        .collect();
    let mut patched = 0;
    for pod in pods {
        let name = pod.name_any();
        if pod.metadata.deletion_timestamp.is_some() || reaped.contains(&name) {
            continue;
        }
        let cost = load.get(name.as_str()).copied().unwrap_or(0);
        let have = pod
            .annotations()
            .get(POD_DELETION_COST)
            .map_or("0", String::as_str);
        if have == cost.to_string() {
            continue;
        }
        let api: Api<Pod> =
            Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
        let patch = json!({"metadata": {"annotations": {POD_DELETION_COST: cost.to_string()}}});
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                ctx.writes.pod_patch();
                patched += 1;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(patched)
}

/// Deletes a worker pod, releases its attempts at once and tells the pool and the affected FlowRuns.
async fn reap_pod(ctx: &Context, pool: &WorkerPool, pod: &Pod, reap: &Reap) {
    let name = pod.name_any();
    let namespace = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => ctx.writes.pod_delete(),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
        Err(e) => {
            warn!(pod = %name, error = %e, "cannot delete a worker pod to reap");
            return;
        }
    }
    let released = ctx
        .broker
        .release_worker(&namespace, &pool.name_any(), &name)
        .await;
    ctx.broker
        .forget_worker(&namespace, &pool.name_any(), &name);
    warn!(pod = %name, reason = reap.reason(), released = released.len(), "reaped a worker pod");
    let mut message = reap.message(&name);
    if !released.is_empty() {
        message.push_str(&format!(" ({} steps released for retry)", released.len()));
    }
    publish(
        ctx,
        &pool.object_ref(&()),
        EventType::Warning,
        reap.reason(),
        message,
        "Reap",
    )
    .await;
    let flow_runs: BTreeSet<(String, String)> = released
        .iter()
        .map(|l| (l.namespace.clone(), l.flow_run.clone()))
        .collect();
    for (ns, flow_run) in flow_runs {
        let steps: Vec<String> = released
            .iter()
            .filter(|l| l.namespace == ns && l.flow_run == flow_run)
            .map(|l| format!("{} attempt {}", l.id, l.attempt))
            .collect();
        let reference = ObjectReference {
            api_version: Some(FlowRun::api_version(&()).into_owned()),
            kind: Some(FlowRun::kind(&()).into_owned()),
            name: Some(flow_run),
            namespace: Some(ns),
            ..ObjectReference::default()
        };
        let note = format!(
            "worker {name} was reaped ({}); released for retry: {}",
            reap.reason(),
            steps.join(", ")
        );
        publish(
            ctx,
            &reference,
            EventType::Warning,
            "WorkerLost",
            note,
            "Reap",
        )
        .await;
    }
}

async fn publish(
    ctx: &Context,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
    action: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, reference).await {
        Ok(()) => ctx.writes.event(),
        Err(e) => warn!(reason, error = %e, "cannot publish Event"),
    }
}

/// Forgets registry entries of workers whose pod is gone, once they hold nothing and are no longer live.
fn forget_gone_workers(
    ctx: &Context,
    namespace: &str,
    pool: &str,
    pods: &[Arc<Pod>],
    workers: &[WorkerInfo],
    heartbeat_timeout: Duration,
    now: Timestamp,
) {
    let names: BTreeSet<String> = pods.iter().map(|p| p.name_any()).collect();
    for w in workers {
        if w.in_flight == 0 && !names.contains(&w.name) && !w.is_live(now, heartbeat_timeout) {
            ctx.broker.forget_worker(namespace, pool, &w.name);
        }
    }
}
