//! The Sluice pieces a cluster test runs: the CRDs, the real `sluice-operator run` process, and worker pods of
//! the example worker image (run by the process kubelet).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::cluster::{kubeconfig_path, repo_root};
use crate::namespace::TestNamespace;
use crate::{HarnessError, Result, free_port, wait_for};

/// The image of the example worker (`examples/worker`); `tests/kubelet/images.yaml` maps it to its binary.
pub const EXAMPLE_WORKER_IMAGE: &str = "sluice/worker-example:dev";

/// The label naming a worker pod's WorkerPool (what the broker's authenticator checks).
pub const POOL_LABEL: &str = "sluice.dev/pool";

/// Where worker pods find their broker token (as the WorkerPool controller mounts it).
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/sluice";

/// How long a freshly started operator may take to become the leader and ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Installs the CRDs generated from the types (server-side apply) and waits until they are served.
pub async fn install_crds(client: &Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in sluice_operator::crds::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("sluice-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(HarnessError::kube(format!("applying CRD {name}")))?;
        wait_for(
            &api,
            &name,
            |crd: Option<&CustomResourceDefinition>| {
                crd.and_then(|c| c.status.as_ref())
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            },
            Duration::from_secs(60),
            &format!("CRD {name} to be Established"),
        )
        .await?;
    }
    Ok(())
}

/// The variables cargo sets for a test process about the test's own package (`CARGO_PKG_NAME`,
/// `CARGO_MANIFEST_DIR`, ...). A cargo started from a test must not inherit them: build scripts that watch them
/// (ring's does) would see them change and rebuild half the dependency tree on every switch between a test
/// run and a plain build.
pub fn cargo_test_env() -> Vec<std::ffi::OsString> {
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k.starts_with("CARGO_BIN_EXE_")
                || matches!(
                    k.as_ref(),
                    "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "CARGO_RUSTC_CURRENT_DIR"
                        | "OUT_DIR"
                )
        })
        .collect()
}

/// Removes [`cargo_test_env`] from a command's environment.
trait RemoveEnvs {
    fn envs_removed(&mut self, names: Vec<std::ffi::OsString>) -> &mut Self;
}

impl RemoveEnvs for std::process::Command {
    fn envs_removed(&mut self, names: Vec<std::ffi::OsString>) -> &mut Self {
        for name in names {
            self.env_remove(name);
        }
        self
    }
}

impl RemoveEnvs for Command {
    fn envs_removed(&mut self, names: Vec<std::ffi::OsString>) -> &mut Self {
        for name in names {
            self.env_remove(name);
        }
        self
    }
}

/// Builds the operator, the example worker, the exec worker and the kubectl plugin (once per test process; a no-op when they are fresh) and returns
/// the directory holding the binaries: `$CARGO_TARGET_DIR/debug`, which the kubelet's image map expects at
/// `target/debug` of the repository.
pub async fn build_binaries() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let built = tokio::task::spawn_blocking(|| {
        BUILT
            .get_or_init(|| build_blocking().map_err(|e| e.to_string()))
            .clone()
    })
    .await
    .map_err(|e| HarnessError::Build(e.to_string()))?;
    built.map_err(HarnessError::Build)
}

fn build_blocking() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            "sluice-operator",
            "-p",
            "sluice-example-worker",
            "-p",
            "sluice-worker",
            "-p",
            "kubectl-sluice",
            // `--bin NAME` would apply to every package named; each of these has exactly the binary we want.
            "--bins",
        ])
        .envs_removed(cargo_test_env())
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .map_err(HarnessError::io("running cargo build"))?;
    if !output.status.success() {
        return Err(HarnessError::Build(format!(
            "cargo build -p sluice-operator -p sluice-example-worker -p sluice-worker -p kubectl-sluice: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("debug");
    for bin in ["sluice-operator", "sluice-example-worker", "sluice-worker"] {
        if !dir.join(bin).is_file() {
            return Err(HarnessError::Build(format!(
                "{} was not built",
                dir.join(bin).display()
            )));
        }
    }
    Ok(dir)
}

/// Builds the release operator (a no-op when it is fresh) for benchmarks, which measure what users run, and
/// returns its path.
pub async fn build_release_operator() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "-q",
            "--release",
            "-p",
            "sluice-operator",
            "--bin",
            "sluice-operator",
        ])
        .envs_removed(cargo_test_env())
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(HarnessError::io("running cargo build --release"))?;
    if !output.status.success() {
        return Err(HarnessError::Build(format!(
            "cargo build --release -p sluice-operator: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let bin = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("release/sluice-operator");
    if !bin.is_file() {
        return Err(HarnessError::Build(format!(
            "{} was not built",
            bin.display()
        )));
    }
    Ok(bin)
}

/// One `sluice-operator run` process watching one test namespace (its Lease lives there too), with worker
/// authentication on (TokenReview), on loopback ports of its own. Killed when dropped.
pub struct OperatorProcess {
    bin: PathBuf,
    namespace: String,
    broker: u16,
    health: u16,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
    trust_workers: bool,
    worker_pools: bool,
    /// Lease name and identity, when not the defaults.
    lease: Option<(String, String)>,
    /// Namespaces watched besides `namespace` (which also holds the Lease).
    also_watch: Vec<String>,
}

impl OperatorProcess {
    /// Builds the operator if needed, starts it for `ns` and waits until it leads and is ready.
    pub async fn start(ns: &TestNamespace) -> Result<Self> {
        Self::launch(ns, false).await
    }

    /// Like [`OperatorProcess::start`], but the broker trusts every caller (`--insecure-skip-worker-auth`,
    /// pools named `namespace/pool`), for workers that run in the test process without a pod token. Its
    /// identity stays the same across restarts, like a pod restarted in place, so a restarted process takes its
    /// Lease back at once.
    pub async fn start_trusting_workers(ns: &TestNamespace) -> Result<Self> {
        Self::launch(ns, true).await
    }

    /// Like [`OperatorProcess::start`], with the WorkerPool controller on (`--broker-url` names this
    /// process's broker, which the pool's pods reach on loopback).
    pub async fn start_with_worker_pools(ns: &TestNamespace) -> Result<Self> {
        Self::launch_with(ns, false, true).await
    }

    /// Like [`OperatorProcess::start_trusting_workers`], watching the namespaces of `others` too: one
    /// operator for several namespaces, its Lease in `ns`.
    pub async fn start_trusting_workers_watching(
        ns: &TestNamespace,
        others: &[&TestNamespace],
    ) -> Result<Self> {
        let mut this = Self::unstarted(
            build_binaries().await?.join("sluice-operator"),
            ns,
            true,
            false,
        )?;
        this.also_watch = others.iter().map(|o| o.name().to_owned()).collect();
        this.spawn().await?;
        this.wait_ready(READY_TIMEOUT).await?;
        Ok(this)
    }

    /// Like [`OperatorProcess::start_trusting_workers`], running the binary `bin` (e.g. the release build
    /// from [`build_release_operator`]).
    pub async fn start_binary_trusting_workers(bin: PathBuf, ns: &TestNamespace) -> Result<Self> {
        Self::launch_binary(bin, ns, true, false).await
    }

    /// Like [`OperatorProcess::start_trusting_workers`], campaigning for the Lease `lease` as `identity`,
    /// without waiting for it to lead (see [`OperatorProcess::wait_ready`]): several of them, on one Lease or on
    /// different ones, share a namespace.
    pub async fn spawn_trusting_workers_as(
        ns: &TestNamespace,
        lease: &str,
        identity: &str,
    ) -> Result<Self> {
        let mut this = Self::unstarted(
            build_binaries().await?.join("sluice-operator"),
            ns,
            true,
            false,
        )?;
        this.log = ns.scratch_dir().join(format!("operator-{identity}.log"));
        this.lease = Some((lease.to_owned(), identity.to_owned()));
        this.spawn().await?;
        Ok(this)
    }

    /// Sends `signal` (e.g. `STOP`, `CONT`) to the operator process.
    pub async fn signal(&self, signal: &str) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| HarnessError::Process("the operator is not running".into()))?;
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .await
            .map_err(HarnessError::io("running kill"))?;
        if !status.success() {
            return Err(HarnessError::Process(format!(
                "kill -{signal} {pid}: {status}"
            )));
        }
        Ok(())
    }

    /// Whether the process has exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    async fn launch(ns: &TestNamespace, trust_workers: bool) -> Result<Self> {
        Self::launch_with(ns, trust_workers, false).await
    }

    async fn launch_with(
        ns: &TestNamespace,
        trust_workers: bool,
        worker_pools: bool,
    ) -> Result<Self> {
        let bin = build_binaries().await?.join("sluice-operator");
        Self::launch_binary(bin, ns, trust_workers, worker_pools).await
    }

    async fn launch_binary(
        bin: PathBuf,
        ns: &TestNamespace,
        trust_workers: bool,
        worker_pools: bool,
    ) -> Result<Self> {
        let mut this = Self::unstarted(bin, ns, trust_workers, worker_pools)?;
        this.spawn().await?;
        this.wait_ready(READY_TIMEOUT).await?;
        Ok(this)
    }

    fn unstarted(
        bin: PathBuf,
        ns: &TestNamespace,
        trust_workers: bool,
        worker_pools: bool,
    ) -> Result<Self> {
        Ok(Self {
            bin,
            namespace: ns.name().to_owned(),
            broker: free_port()?,
            health: free_port()?,
            log: ns.scratch_dir().join("operator.log"),
            child: None,
            starts: 0,
            trust_workers,
            worker_pools,
            lease: None,
            also_watch: Vec::new(),
        })
    }

    async fn spawn(&mut self) -> Result<()> {
        let kubeconfig = tokio::task::spawn_blocking(kubeconfig_path)
            .await
            .map_err(|e| HarnessError::Build(e.to_string()))??;
        self.starts += 1;
        let identity = match &self.lease {
            Some((_, identity)) => identity.clone(),
            None if self.trust_workers => "operator".to_owned(),
            None => format!("operator-{}", self.starts),
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(HarnessError::io(format!("opening {}", self.log.display())))?;
        let err = out
            .try_clone()
            .map_err(HarnessError::io("cloning the log file"))?;
        // SLUICE_E2E_OPERATOR_WRAPPER runs the operator under another program (e.g. `heaptrack -o FILE` to see
        // where its memory goes); the pid, and so any memory figure, is then the wrapper's.
        let wrapper = std::env::var("SLUICE_E2E_OPERATOR_WRAPPER").unwrap_or_default();
        let mut command = match wrapper.split_whitespace().collect::<Vec<_>>().as_slice() {
            [program, args @ ..] => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.bin);
                c
            }
            [] => Command::new(&self.bin),
        };
        let watched = std::iter::once(self.namespace.clone())
            .chain(self.also_watch.iter().cloned())
            .collect::<Vec<_>>()
            .join(",");
        let child = command
            .args(["run", "--namespace", &watched])
            .args(["--lease-namespace", &self.namespace])
            .arg(format!("--identity={identity}"))
            .args(
                self.lease
                    .as_ref()
                    .map(|(name, _)| format!("--lease-name={name}")),
            )
            .args(self.trust_workers.then_some("--insecure-skip-worker-auth"))
            .args(
                self.worker_pools
                    .then(|| format!("--broker-url=http://127.0.0.1:{}", self.broker)),
            )
            .arg(format!("--broker-addr=127.0.0.1:{}", self.broker))
            .arg(format!("--health-addr=127.0.0.1:{}", self.health))
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_E2E_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(HarnessError::io(format!("starting {}", self.bin.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// The broker's base URL (what worker pods get as `SLUICE_BROKER_URL`); stable across restarts.
    pub fn broker_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.broker)
    }

    /// The broker's port.
    pub fn broker_port(&self) -> u16 {
        self.broker
    }

    /// The Prometheus text of the operator's `/metrics`.
    pub async fn metrics(&self) -> Result<String> {
        match http_get(self.health, "/metrics").await? {
            (200, body) => Ok(body),
            (code, body) => Err(HarnessError::Process(format!(
                "GET /metrics answered {code}: {body}"
            ))),
        }
    }

    /// `GET path` on the broker's port: status code and body.
    pub async fn broker_get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.broker, path).await
    }

    /// Everything the operator processes logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The operator's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Waits until `/readyz` answers 200 (this replica leads and its broker serves).
    pub async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(HarnessError::Process(format!(
                    "the operator exited ({status}) before it was ready; log:\n{}",
                    self.log()
                )));
            }
            let last = match http_get(self.health, "/readyz").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("{code} {}", body.trim()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("the operator's /readyz on port {}", self.health),
                    timeout: within,
                    last_seen: format!("{last}; log:\n{}", self.log()),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILLs the operator and reaps it.
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .await
                .map_err(HarnessError::io("killing the operator"))?;
        }
        Ok(())
    }

    /// Starts the operator again (same ports, namespace and log) and waits until it is ready. Its Lease was not
    /// released by a SIGKILLed predecessor, so this waits for the lease to expire first.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        self.spawn().await?;
        self.wait_ready(READY_TIMEOUT).await
    }

    /// SIGKILLs the operator and starts it again at once, without waiting for it to be ready: a crash at an
    /// arbitrary moment, possibly while the previous start is still rebuilding.
    pub async fn crash_and_restart(&mut self) -> Result<()> {
        self.kill().await?;
        self.spawn().await
    }

    /// SIGTERMs the operator (releasing its Lease) and waits for it to exit.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SIGTERM through kill(1): the harness has no signal crate of its own.
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
            match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill().await;
                }
            }
        }
        Ok(())
    }
}

/// `GET path` on a loopback port: status and body.
async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let r = crate::http_request(port, "GET", path, None, "").await?;
    Ok((r.status, r.body))
}

/// The pod spec of an example worker serving `pool` through the broker at `broker_url`: the environment and the
/// projected broker token the WorkerPool controller gives its pods, plus `env` (e.g.
/// `SLUICE_EXAMPLE_SIDE_EFFECTS`).
pub fn worker_pod_spec(pool: &str, broker_url: &str, env: &[(&str, &str)]) -> PodSpec {
    let mut vars = vec![
        json!({"name": "SLUICE_BROKER_URL", "value": broker_url}),
        json!({"name": "SLUICE_POOL", "value": pool}),
        json!({"name": "SLUICE_CONCURRENCY", "value": "4"}),
        json!({"name": "SLUICE_TOKEN_PATH", "value": format!("{TOKEN_MOUNT_PATH}/token")}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "RUST_LOG", "value": "info,sluice_worker=debug"}),
    ];
    vars.extend(
        env.iter()
            .map(|(name, value)| json!({"name": name, "value": value})),
    );
    let spec = json!({
        "terminationGracePeriodSeconds": 10,
        "containers": [{
            "name": "worker",
            "image": EXAMPLE_WORKER_IMAGE,
            "env": vars,
            "volumeMounts": [{"name": "sluice-broker-token", "mountPath": TOKEN_MOUNT_PATH, "readOnly": true}],
        }],
        "volumes": [{
            "name": "sluice-broker-token",
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": sluice_wire::TOKEN_AUDIENCE,
                "expirationSeconds": 3600,
                "path": "token",
            }}]},
        }],
    });
    serde_json::from_value(spec).unwrap_or_default()
}

fn pod_metadata(pool: &str) -> Value {
    json!({
        "labels": {POOL_LABEL: pool, "app": format!("workers-{pool}")},
        // The process kubelet restarts a killed worker after 500 ms instead of 10 s.
        "annotations": {"sluice.dev/kubelet-backoff-base": "500ms"},
    })
}

/// A Deployment of `replicas` example workers for `pool` (what a WorkerPool's controller would create).
pub fn worker_deployment(
    name: &str,
    pool: &str,
    broker_url: &str,
    replicas: i32,
    env: &[(&str, &str)],
) -> Deployment {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {POOL_LABEL: pool}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": format!("workers-{pool}")}},
            "template": {
                "metadata": pod_metadata(pool),
                "spec": worker_pod_spec(pool, broker_url, env),
            },
        },
    });
    serde_json::from_value(deployment).unwrap_or_default()
}

/// A bare pod (`restartPolicy: Never`) running one example worker for `pool`: killed, it stays dead.
pub fn worker_pod(name: &str, pool: &str, broker_url: &str, env: &[(&str, &str)]) -> Pod {
    let mut spec = worker_pod_spec(pool, broker_url, env);
    spec.restart_policy = Some("Never".into());
    let mut metadata = pod_metadata(pool);
    metadata["name"] = json!(name);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec});
    serde_json::from_value(pod).unwrap_or_default()
}

/// The pid of the running main process of `pod`'s first container (the process kubelet's container id is
/// `sluice://<pid>`).
pub fn container_pid(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))?
        .container_id
        .as_deref()?
        .strip_prefix("sluice://")?
        .parse()
        .ok()
}
