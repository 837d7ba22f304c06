//! One pod's life on this node: volumes, processes, restarts, probes, status, termination.

use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, PodCondition, PodStatus, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Ctx;
use super::address::{self, NoHostAddress};
use super::backoff::{Backoff, parse_duration};
use super::dirs::PodDir;
use super::env::{self, EnvSources};
use super::incluster;
use super::probe::{self, ProbeTarget};
use super::run;
use super::state::{ContainerView, RunState, Termination};
use super::status::{self, StatusInput};
use super::volumes::{self, Volumes};

/// What a pod worker is told.
#[derive(Debug)]
pub enum Msg {
    /// The pod changed in the API.
    Update(Box<Pod>),
    /// The pod is gone from the API (force-deleted): stop its processes at once.
    Gone,
    /// The kubelet is stopping: stop the processes, leave the pod as it is.
    Shutdown,
    Exited {
        index: usize,
        run: u64,
        code: Option<i32>,
        signal: Option<i32>,
        at: Timestamp,
    },
    Ready {
        index: usize,
        run: u64,
        ready: bool,
    },
}

/// Pod annotation that sets the restart back-off base of this pod (e.g. `500ms`), for tests.
pub const BACKOFF_ANNOTATION: &str = "sluice.dev/kubelet-backoff-base";
// The other pod annotation of this kubelet, `sluice.dev/kubelet-pod-ip`, lives in `address` with the rest of
// the pod-address logic.

const RETRY: Duration = Duration::from_secs(2);
/// Grace for processes of a pod that vanished from the API.
const GONE_GRACE: Duration = Duration::from_secs(2);

struct Ctr {
    spec: Container,
    view: ContainerView,
    /// Number of the current run; messages about other runs are stale.
    run: u64,
    /// Has this container ever run (restarts count from the second start).
    ever_started: bool,
    next_start: Option<Instant>,
    backoff_step: u32,
    pull_failures: u32,
    probe: Option<JoinHandle<()>>,
}

impl Ctr {
    fn pid(&self) -> Option<u32> {
        match self.view.state {
            RunState::Running { pid, .. } => Some(pid),
            _ => None,
        }
    }

    fn wait(&mut self, reason: &str, message: Option<String>) {
        self.view.state = RunState::Waiting {
            reason: reason.to_string(),
            message,
        };
    }

    fn stop_probe(&mut self) {
        if let Some(p) = self.probe.take() {
            p.abort();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Being deleted through the API: stop, report, then delete with grace 0.
    Deleting,
    Gone,
    Shutdown,
}

pub struct Worker {
    ctx: Arc<Ctx>,
    pod: Pod,
    key: String,
    dir: PodDir,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    ctrs: Vec<Ctr>,
    volumes: Option<Volumes>,
    volumes_retry: Option<Instant>,
    /// The pod was terminal when this worker started (a previous kubelet finished it): never run it again.
    frozen: bool,
    ending: Option<Ending>,
    kill_at: Option<Instant>,
    killed: bool,
    start_time: Timestamp,
    /// The pod's address once known; then fixed, as a pod keeps its IP for life.
    pod_ip: Option<Ipv4Addr>,
    written: Option<PodStatus>,
    status_retry: Option<Instant>,
    done: bool,
}

impl Worker {
    pub fn new(ctx: Arc<Ctx>, pod: Pod) -> (Self, mpsc::UnboundedSender<Msg>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let dir = PodDir::new(&ctx.state_dir, &ns, &name);
        let status = pod.status.clone().unwrap_or_default();
        let frozen = status.phase.as_deref().is_some_and(status::is_terminal);
        let previous = status.container_statuses.unwrap_or_default();
        let now = Instant::now();
        let ctrs = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                let before = previous.iter().find(|s| s.name == c.name);
                // A kubelet restart: what ran before counts as a run.
                let ran = before.is_some_and(|s| {
                    s.state
                        .as_ref()
                        .is_some_and(|st| st.running.is_some() || st.terminated.is_some())
                        || s.restart_count > 0
                });
                let mut view = ContainerView::waiting(
                    &c.name,
                    c.image.as_deref().unwrap_or_default(),
                    "ContainerCreating",
                );
                view.restart_count = before.map_or(0, |s| s.restart_count);
                Ctr {
                    spec: c.clone(),
                    view,
                    run: 0,
                    ever_started: ran,
                    next_start: (!frozen).then_some(now),
                    backoff_step: 0,
                    pull_failures: 0,
                    probe: None,
                }
            })
            .collect();
        let start_time = status.start_time.map_or_else(Timestamp::now, |t| t.0);
        // Known from the start, so that even the first status reports it (a failed host lookup is retried, and
        // reported, when a container starts).
        let pod_ip = address::pod_ip(&pod, address::host_address).ok();
        let worker = Self {
            key: format!("{ns}/{name}"),
            ctx,
            pod,
            dir,
            tx: tx.clone(),
            rx,
            ctrs,
            volumes: None,
            volumes_retry: None,
            frozen,
            ending: None,
            kill_at: None,
            killed: false,
            start_time,
            pod_ip,
            written: None,
            status_retry: None,
            done: false,
        };
        (worker, tx)
    }

    fn ns(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    /// Runs until the pod is deleted (or gone, or the kubelet stops).
    pub async fn run(mut self) {
        tracing::info!(pod = %self.key, uid = self.uid(), frozen = self.frozen, "pod worker started");
        if let Err(e) = self
            .dir
            .prepare(&self.pod.metadata.uid.clone().unwrap_or_default())
        {
            tracing::error!(pod = %self.key, error = %e, "preparing pod dir");
        }
        while !self.done {
            self.step().await;
            if self.done {
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                msg = self.rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                () = sleep_until(wake) => {}
            }
            // Take everything that is queued before acting on it.
            while let Ok(msg) = self.rx.try_recv() {
                self.handle(msg);
            }
        }
        for c in &mut self.ctrs {
            c.stop_probe();
        }
        tracing::info!(pod = %self.key, "pod worker finished");
    }

    fn next_wake(&self) -> Option<Instant> {
        let token = self
            .volumes
            .as_ref()
            .and_then(Volumes::next_refresh)
            .map(|at| {
                let ms = (at.as_millisecond() - Timestamp::now().as_millisecond()).max(0);
                Instant::now() + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
            });
        self.ctrs
            .iter()
            .filter_map(|c| c.next_start)
            .chain(self.kill_at.filter(|_| !self.killed))
            .chain(self.volumes_retry)
            .chain(self.status_retry)
            .chain(token.filter(|_| self.ending.is_none()))
            .min()
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Update(pod) => {
                if pod.metadata.uid == self.pod.metadata.uid {
                    self.pod = *pod;
                }
            }
            Msg::Gone => self.end(Ending::Gone, GONE_GRACE),
            Msg::Shutdown => {
                let grace = self.grace().min(self.ctx.shutdown_grace);
                self.end(Ending::Shutdown, grace);
            }
            Msg::Exited {
                index,
                run,
                code,
                signal,
                at,
            } => self.exited(index, run, code, signal, at),
            Msg::Ready { index, run, ready } => {
                if let Some(c) = self.ctrs.get_mut(index).filter(|c| c.run == run)
                    && let RunState::Running { ready: r, .. } = &mut c.view.state
                {
                    *r = ready;
                }
            }
        }
    }

    fn grace(&self) -> Duration {
        let secs = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    }

    /// Starts stopping: SIGTERM to every running process group, SIGKILL after `grace`.
    fn end(&mut self, ending: Ending, grace: Duration) {
        // A later, harsher ending (gone, shutdown) takes over from a deletion in progress.
        if self.ending == Some(ending) || self.ending == Some(Ending::Gone) {
            return;
        }
        tracing::info!(pod = %self.key, ?ending, ?grace, "stopping pod");
        self.ending = Some(ending);
        let kill_at = Instant::now() + grace;
        self.kill_at = Some(self.kill_at.map_or(kill_at, |k| k.min(kill_at)));
        for c in &mut self.ctrs {
            c.next_start = None;
            c.stop_probe();
            if let Some(pid) = c.pid() {
                tracing::info!(pod = %self.key, container = %c.spec.name, pid, "SIGTERM");
                run::signal_group(pid, Signal::SIGTERM);
            }
        }
    }

    /// The pod's address: the one found before, else found now (see [`address`]).
    fn pod_ip(&mut self) -> Result<Ipv4Addr, NoHostAddress> {
        if let Some(ip) = self.pod_ip {
            return Ok(ip);
        }
        let ip = address::pod_ip(&self.pod, address::host_address)?;
        self.pod_ip = Some(ip);
        Ok(ip)
    }

    /// The kubelet's back-off, or the pod's own base from the [`BACKOFF_ANNOTATION`] (tests use it).
    fn backoff(&self) -> Backoff {
        let base = self
            .pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(BACKOFF_ANNOTATION))
            .and_then(|v| parse_duration(v).ok());
        match base {
            Some(base) => Backoff {
                base,
                max: self.ctx.backoff.max.max(base),
            },
            None => self.ctx.backoff,
        }
    }

    fn exited(
        &mut self,
        index: usize,
        run: u64,
        code: Option<i32>,
        signal: Option<i32>,
        at: Timestamp,
    ) {
        let policy = self.restart_policy();
        let backoff = self.backoff();
        let ending = self.ending.is_some();
        let pod_ref = format!("{}_{}({})", self.name(), self.ns(), self.uid());
        let Some(c) = self.ctrs.get_mut(index).filter(|c| c.run == run) else {
            return;
        };
        let RunState::Running {
            pid, started_at, ..
        } = c.view.state
        else {
            return;
        };
        c.stop_probe();
        let term = Termination::from_exit(pid, code, signal, started_at, at);
        tracing::info!(
            container = %c.spec.name, pid, exit_code = term.exit_code, signal = ?term.signal, "container exited"
        );
        let restart =
            !ending && (policy == "Always" || (policy == "OnFailure" && term.exit_code != 0));
        if !restart {
            c.view.state = RunState::Terminated(term);
            return;
        }
        let ran_for = Duration::from_millis(
            u64::try_from(at.as_millisecond() - started_at.as_millisecond()).unwrap_or(0),
        );
        if ran_for >= backoff.resets_after() {
            c.backoff_step = 0;
        }
        // As a kubelet: the first restart is immediate, then base, 2×base, … capped.
        let delay = match c.backoff_step {
            0 => Duration::ZERO,
            n => backoff.delay(n - 1),
        };
        c.backoff_step += 1;
        c.view.last = Some(term);
        c.next_start = Some(Instant::now() + delay);
        c.wait(
            "CrashLoopBackOff",
            Some(format!(
                "back-off {} restarting failed container={} pod={pod_ref}",
                human(delay),
                c.spec.name
            )),
        );
    }

    async fn step(&mut self) {
        if self.ending.is_none() && self.pod.metadata.deletion_timestamp.is_some() {
            let grace = self.grace();
            self.end(Ending::Deleting, grace);
        }
        if let Some(ending) = self.ending {
            if !self.killed && self.kill_at.is_some_and(|k| k <= Instant::now()) {
                self.killed = true;
                for c in &self.ctrs {
                    if let Some(pid) = c.pid() {
                        tracing::warn!(pod = %self.key, container = %c.spec.name, pid, "grace period over: SIGKILL");
                        run::signal_group(pid, Signal::SIGKILL);
                    }
                }
            }
            if self.ctrs.iter().any(Ctr::is_running_now) {
                return;
            }
            match ending {
                Ending::Gone | Ending::Shutdown => self.done = true,
                Ending::Deleting => self.finish_deletion().await,
            }
            return;
        }
        if self.frozen {
            return;
        }
        if self.volumes.is_none() && self.volumes_retry.is_none_or(|at| at <= Instant::now()) {
            self.prepare_volumes().await;
        }
        if let Some(v) = self.volumes.as_mut()
            && v.next_refresh().is_some_and(|at| at <= Timestamp::now())
            && let Err(e) = v.refresh(&self.ctx.client, &self.pod).await
        {
            tracing::warn!(pod = %self.key, error = %e, "renewing projected token");
        }
        if self.volumes.is_some() {
            let now = Instant::now();
            for index in 0..self.ctrs.len() {
                if self.ctrs[index].next_start.is_some_and(|at| at <= now) {
                    self.start(index).await;
                }
            }
        }
        self.sync_status().await;
    }

    async fn prepare_volumes(&mut self) {
        match Volumes::prepare(&self.ctx.client, &self.pod, &self.dir.volumes()).await {
            Ok(v) => {
                self.volumes = Some(v);
                self.volumes_retry = None;
            }
            Err(e) => {
                tracing::warn!(pod = %self.key, error = %e, "preparing volumes; retrying");
                self.volumes_retry = Some(Instant::now() + RETRY);
                for c in &mut self.ctrs {
                    if matches!(c.view.state, RunState::Waiting { .. }) && !c.ever_started {
                        c.wait("ContainerCreating", Some(e.to_string()));
                    }
                }
            }
        }
    }

    async fn env_sources(&self, container: &Container) -> Result<EnvSources, String> {
        let (cms, secrets) = env::referenced(container);
        let mut sources = EnvSources::default();
        let cm_api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), self.ns());
        for name in cms {
            match cm_api.get_opt(&name).await {
                Ok(Some(cm)) => sources.add_config_map(&cm),
                Ok(None) => {}
                Err(e) => return Err(format!("reading configmap {name}: {e}")),
            }
        }
        let secret_api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), self.ns());
        for name in secrets {
            match secret_api.get_opt(&name).await {
                Ok(Some(s)) => sources.add_secret(&s),
                Ok(None) => {}
                Err(e) => return Err(format!("reading secret {name}: {e}")),
            }
        }
        Ok(sources)
    }

    /// Starts container `index`, or records why it cannot start and when to try again.
    async fn start(&mut self, index: usize) {
        let backoff = self.backoff();
        let spec = self.ctrs[index].spec.clone();
        let image = spec.image.clone().unwrap_or_default();
        let entrypoint = match self.ctx.images.resolve(&image) {
            Ok(e) => {
                self.ctrs[index].pull_failures = 0;
                e
            }
            Err(e) => {
                let c = &mut self.ctrs[index];
                let reason = if c.pull_failures == 0 {
                    "ErrImagePull"
                } else {
                    "ImagePullBackOff"
                };
                c.next_start = Some(Instant::now() + backoff.delay(c.pull_failures));
                c.pull_failures += 1;
                tracing::warn!(pod = %self.key, container = %spec.name, error = %e, "image not runnable");
                c.wait(reason, Some(e.to_string()));
                return;
            }
        };
        match self.launch(index, &spec, entrypoint).await {
            Ok(()) => {}
            Err((reason, message)) => {
                tracing::warn!(pod = %self.key, container = %spec.name, reason, message, "container not started");
                let c = &mut self.ctrs[index];
                c.next_start = Some(Instant::now() + RETRY.max(backoff.base));
                c.wait(reason, Some(message));
            }
        }
    }

    async fn launch(
        &mut self,
        index: usize,
        spec: &Container,
        entrypoint: Vec<String>,
    ) -> Result<(), (&'static str, String)> {
        let config_err = |m: String| ("CreateContainerConfigError", m);
        // Like a container config a kubelet cannot build: the container waits with the reason, and is retried.
        let pod_ip = self.pod_ip().map_err(|e| config_err(e.to_string()))?;
        let root = self.dir.container_root(&spec.name);
        let mounts = volumes::mount(spec, &self.pod, &self.dir.volumes(), &root)
            .map_err(|e| config_err(e.to_string()))?;
        let mut base = self.ctx.base_env.clone();
        base.push(("HOSTNAME".into(), self.name().to_string()));
        base.push(("HOME".into(), self.dir.work().display().to_string()));
        base.push((
            "SLUICE_POD_DIR".into(),
            self.dir.root().display().to_string(),
        ));
        base.push(("SLUICE_VOLUME_ROOT".into(), root.display().to_string()));
        for m in &mounts {
            base.push((
                volumes::mount_env_name(&m.mount_path),
                m.host_path.display().to_string(),
            ));
        }
        // In-cluster API access: the pod's own credentials, through a kubeconfig (a container's env may still
        // set KUBECONFIG itself).
        if let Some(sa) = mounts
            .iter()
            .find(|m| m.mount_path.trim_end_matches('/') == incluster::SERVICE_ACCOUNT_MOUNT)
        {
            let path = self.dir.kubeconfig(&spec.name);
            let config = incluster::kubeconfig(&self.ctx.api_server, self.ns(), &sa.host_path);
            volumes::write_file(&path, config.to_string().as_bytes())
                .map_err(|e| config_err(e.to_string()))?;
            base.push(("KUBECONFIG".into(), path.display().to_string()));
        }
        let sources = self.env_sources(spec).await.map_err(config_err)?;
        let mut vars = env::resolve(&self.pod, pod_ip, spec, &base, &sources)
            .map_err(|e| config_err(e.to_string()))?;
        for (_, v) in &mut vars {
            *v = volumes::rewrite_path(v, &mounts);
        }
        let known: std::collections::HashMap<&str, &str> =
            vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let expand = |list: &Option<Vec<String>>| -> Vec<String> {
            list.iter()
                .flatten()
                .map(|a| volumes::rewrite_path(&env::expand(a, &known), &mounts))
                .collect()
        };
        let command = expand(&spec.command);
        let mut argv = if command.is_empty() {
            entrypoint.clone()
        } else {
            command
        };
        argv.extend(expand(&spec.args));
        let cwd = self.dir.work();
        let mut child = run::spawn(&argv, &vars, &cwd, &self.dir.log(&spec.name))
            .map_err(|e| ("RunContainerError", e.to_string()))?;
        let pid = child.id().unwrap_or_default();
        let started_at = Timestamp::now();
        let c = &mut self.ctrs[index];
        if c.ever_started {
            c.view.restart_count += 1;
        }
        c.ever_started = true;
        c.run += 1;
        c.next_start = None;
        c.view.image_id = format!("sluice://{}", entrypoint[0]);
        let probe_spec = spec.readiness_probe.clone();
        c.view.state = RunState::Running {
            pid,
            started_at,
            ready: probe_spec.is_none(),
        };
        tracing::info!(
            pod = %self.key, container = %spec.name, pid, restart_count = c.view.restart_count, argv = ?argv,
            "container started"
        );
        let run = c.run;
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // As when a container ends: nothing of its process group outlives the main process.
            run::signal_group(pid, Signal::SIGKILL);
            let (code, signal) = match status {
                Ok(s) => (s.code(), s.signal()),
                Err(e) => {
                    tracing::error!(pid, error = %e, "waiting for process");
                    (Some(128), None)
                }
            };
            let _ = tx.send(Msg::Exited {
                index,
                run,
                code,
                signal,
                at: Timestamp::now(),
            });
        });
        if let Some(probe_spec) = probe_spec {
            let target = ProbeTarget {
                env: vars.clone(),
                cwd,
                ports: spec.ports.clone().unwrap_or_default(),
                pod_ip,
            };
            let tx = self.tx.clone();
            c.probe = Some(tokio::spawn(probe::readiness(
                probe_spec,
                target,
                move |ready| {
                    let _ = tx.send(Msg::Ready { index, run, ready });
                },
            )));
        }
        Ok(())
    }

    fn status(&self) -> PodStatus {
        let views: Vec<ContainerView> = self.ctrs.iter().map(|c| c.view.clone()).collect();
        let previous: Vec<PodCondition> = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        status::build(&StatusInput {
            restart_policy: &self.restart_policy(),
            containers: &views,
            deleting: self.ending == Some(Ending::Deleting),
            sandbox_ready: self.volumes.is_some(),
            start_time: self.start_time,
            now: Timestamp::now(),
            pod_ip: self.pod_ip,
            previous: &previous,
        })
    }

    async fn sync_status(&mut self) {
        let status = self.status();
        if self.written.as_ref() == Some(&status) && self.status_retry.is_none() {
            return;
        }
        // Terminal: no process will run again.
        if status.phase.as_deref().is_some_and(status::is_terminal) {
            self.frozen = true;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), self.ns());
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(self.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(pod) => {
                tracing::debug!(pod = %self.key, phase = ?status.phase, "status written");
                self.pod.status = pod.status;
                self.written = Some(status);
                self.status_retry = None;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                // Deleted meanwhile (a finished pod is deleted at once): nothing left to report.
                tracing::debug!(pod = %self.key, "pod gone while writing status");
                self.status_retry = None;
                self.end(Ending::Gone, GONE_GRACE);
            }
            Err(e) => {
                tracing::warn!(pod = %self.key, error = %e, "writing status; retrying");
                self.status_retry = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    async fn finish_deletion(&mut self) {
        if !self.frozen || self.written.is_some() {
            self.status_retry = None;
            self.sync_status().await;
        }
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), self.ns());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid().to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(self.name(), &params).await {
            Ok(_) => {
                tracing::info!(pod = %self.key, "pod deleted");
                self.done = true;
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => self.done = true,
            Err(e) => {
                tracing::warn!(pod = %self.key, error = %e, "deleting pod; retrying");
                self.status_retry = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }
}

impl Ctr {
    fn is_running_now(&self) -> bool {
        self.pid().is_some()
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
