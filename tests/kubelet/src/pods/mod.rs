//! Pods: binding unscheduled pods to this node, and running the pods bound to it.

pub mod address;
pub mod backoff;
pub mod bind;
pub mod dirs;
pub mod env;
pub mod incluster;
pub mod probe;
pub mod run;
pub mod state;
pub mod status;
pub mod volumes;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher};
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::images::ImageMap;
use backoff::Backoff;
use worker::{Msg, Worker};

/// What every pod worker shares.
pub struct Ctx {
    pub client: Client,
    pub node_name: String,
    pub images: ImageMap,
    pub state_dir: PathBuf,
    pub backoff: Backoff,
    /// Environment every process gets before its container's own (PATH, the API server's address).
    pub base_env: Vec<(String, String)>,
    /// The API server containers with a service-account volume are given a kubeconfig for (see [`incluster`]).
    pub api_server: incluster::ApiServer,
    /// The most a pod's processes get to stop when the kubelet itself stops.
    pub shutdown_grace: Duration,
}

/// Watches the pods bound to this node and runs one worker per pod until `shutdown` turns true; then stops
/// every pod's processes and returns when all workers are done.
pub async fn run(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node_name));
    let mut events = pin!(watcher(api, config).default_backoff());
    let mut workers: HashMap<String, mpsc::UnboundedSender<Msg>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut listed: HashSet<String> = HashSet::new();
    // Pods whose worker deleted them: echoes of their last updates start nothing.
    let mut finished: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            event = events.next() => match event {
                Some(Ok(Event::Apply(pod))) => {
                    let done = pod.metadata.uid.as_ref().is_some_and(|uid| finished.contains(uid));
                    if !(done && pod.metadata.deletion_timestamp.is_some()) {
                        dispatch(&ctx, &mut workers, &mut tasks, pod);
                    }
                }
                Some(Ok(Event::InitApply(pod))) => {
                    listed.extend(pod.metadata.uid.clone());
                    dispatch(&ctx, &mut workers, &mut tasks, pod);
                }
                Some(Ok(Event::Delete(pod))) => {
                    if let Some(uid) = &pod.metadata.uid {
                        finished.remove(uid);
                    }
                    if let Some(tx) = pod.metadata.uid.as_ref().and_then(|uid| workers.remove(uid)) {
                        let _ = tx.send(Msg::Gone);
                    }
                }
                Some(Ok(Event::Init)) => {
                    listed.clear();
                    finished.clear();
                }
                Some(Ok(Event::InitDone)) => {
                    // Pods that vanished while the watch was down.
                    let gone: Vec<String> = workers.keys().filter(|uid| !listed.contains(*uid)).cloned().collect();
                    for uid in gone {
                        if let Some(tx) = workers.remove(&uid) {
                            let _ = tx.send(Msg::Gone);
                        }
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                workers.retain(|uid, tx| {
                    let open = !tx.is_closed();
                    if !open {
                        finished.insert(uid.clone());
                    }
                    open
                });
            }
        }
    }
    tracing::info!(pods = workers.len(), "stopping all pods");
    for tx in workers.values() {
        let _ = tx.send(Msg::Shutdown);
    }
    while tasks.join_next().await.is_some() {}
}

fn dispatch(
    ctx: &Arc<Ctx>,
    workers: &mut HashMap<String, mpsc::UnboundedSender<Msg>>,
    tasks: &mut JoinSet<()>,
    pod: Pod,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(tx) = workers.get(&uid) {
        if tx.send(Msg::Update(Box::new(pod.clone()))).is_ok() {
            return;
        }
        workers.remove(&uid);
        // The worker finished (it deleted the pod): an echo of the pod needs no new worker unless it still
        // has something to do, which a new worker will find out.
        if pod.metadata.deletion_timestamp.is_some() {
            return;
        }
    }
    let (worker, tx) = Worker::new(ctx.clone(), pod);
    workers.insert(uid, tx);
    tasks.spawn(worker.run());
}
