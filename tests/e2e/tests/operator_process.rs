//! The `sluice-operator run` process on the local cluster: of two replicas only the Lease holder is ready and
//! serves workers; SIGTERM releases the lease and exits 0 so the other replica takes over; a leader whose lease
//! is taken from it exits non-zero (its restart is the fencing).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{Patch, PatchParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use sluice_e2e::{
    TestNamespace, free_port, http_request, install_crds, kubeconfig_path, repo_root,
};
use tokio::process::{Child, Command};

const LEASE: &str = "sluice-operator";
/// Lease duration (15 s) plus room for a loaded machine.
const TAKEOVER: Duration = Duration::from_secs(40);

/// Builds the operator binary (a no-op when it is fresh) and returns its path, next to this test's target dir.
async fn operator_binary() -> Result<PathBuf> {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "-p",
            "sluice-operator",
            "--bin",
            "sluice-operator",
        ])
        .current_dir(repo_root())
        .status()
        .await
        .context("running cargo build")?;
    ensure!(
        status.success(),
        "building sluice-operator failed: {status}"
    );
    // This test runs from <target>/debug/deps/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary outside a target dir")?;
    let bin = profile_dir.join("sluice-operator");
    ensure!(bin.exists(), "{} was not built", bin.display());
    Ok(bin)
}

/// One `sluice-operator run` process watching only the test's namespace, with its Lease there too.
struct Replica {
    identity: String,
    child: Child,
    health: u16,
    broker: u16,
    log: PathBuf,
}

impl Replica {
    async fn start(bin: &Path, ns: &TestNamespace, identity: &str) -> Result<Self> {
        let kubeconfig = tokio::task::spawn_blocking(kubeconfig_path).await??;
        let (health, broker) = (free_port()?, free_port()?);
        let log = ns.scratch_dir().join(format!("{identity}.log"));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args([
                "run",
                "--namespace",
                ns.name(),
                "--lease-namespace",
                ns.name(),
            ])
            .args(["--lease-name", LEASE, "--identity", identity])
            .arg(format!("--health-addr=127.0.0.1:{health}"))
            .arg(format!("--broker-addr=127.0.0.1:{broker}"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("starting sluice-operator")?;
        Ok(Self {
            identity: identity.to_owned(),
            child,
            health,
            broker,
            log,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Result<(u16, String, String)> {
        let r = http_request(self.health, "GET", path, None, "").await?;
        Ok((r.status, r.content_type, r.body))
    }

    /// Waits until `/readyz` answers `code`.
    async fn wait_readyz(&mut self, code: u16, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before /readyz said {code}; log:\n{}",
                    self.identity,
                    self.log()
                );
            }
            match self.get("/readyz").await {
                Ok((got, _, _)) if got == code => return Ok(()),
                Ok((got, _, body)) => last = format!("{got} {body}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "{}: /readyz did not answer {code} within {within:?} (last: {last}); log:\n{}",
            self.identity,
            self.log()
        )
    }

    async fn wait_exit(&mut self, within: Duration) -> Result<ExitStatus> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "{} did not exit within {within:?}; log:\n{}",
                self.identity,
                self.log()
            ),
        }
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.child.id().context("the process is gone")?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }
}

async fn claim(broker: u16) -> Result<u16> {
    let body = json!({
        "pool": "a", "worker": "w", "handlers": ["h"], "capacity": 1, "waitSeconds": 0
    })
    .to_string();
    Ok(http_request(broker, "POST", "/v1/claim", None, &body)
        .await?
        .status)
}

async fn holder(leases: &Api<Lease>) -> Result<Option<String>> {
    Ok(leases
        .get(LEASE)
        .await?
        .spec
        .and_then(|s| s.holder_identity))
}

#[tokio::test]
async fn one_of_two_replicas_leads_and_sigterm_hands_over() -> Result<()> {
    let ns = TestNamespace::new("op-ha").await?;
    install_crds(&ns.client()).await?;
    let bin = operator_binary().await?;
    let leases: Api<Lease> = ns.api();

    let mut first = Replica::start(&bin, &ns, "replica-1").await?;
    first.wait_readyz(200, TAKEOVER).await?;
    let mut second = Replica::start(&bin, &ns, "replica-2").await?;
    second.wait_readyz(503, TAKEOVER).await?;
    assert_eq!(holder(&leases).await?.as_deref(), Some("replica-1"));

    // Both are alive; only the leader is ready, and the other one says why.
    assert_eq!(second.get("/healthz").await?.0, 200);
    let (code, _, body) = second.get("/readyz").await?;
    assert_eq!((code, body.trim()), (503, "not the leader"));
    let (code, content_type, body) = first.get("/metrics").await?;
    assert_eq!(code, 200);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(body.contains("sluice_status_writes_total"), "{body}");
    // Only the leader's broker serves workers: it asks for a token (worker authentication is on); the other
    // one is unavailable.
    assert_eq!(claim(first.broker).await?, 401);
    assert_eq!(claim(second.broker).await?, 503);

    // SIGTERM: exit 0, lease released, the other replica takes over.
    first.signal(Signal::SIGTERM)?;
    let status = first.wait_exit(Duration::from_secs(30)).await?;
    assert!(status.success(), "{status}; log:\n{}", first.log());
    assert_ne!(
        holder(&leases).await?.as_deref(),
        Some("replica-1"),
        "the lease was not released"
    );
    second.wait_readyz(200, TAKEOVER).await?;
    assert_eq!(holder(&leases).await?.as_deref(), Some("replica-2"));
    assert_eq!(claim(second.broker).await?, 401);

    second.signal(Signal::SIGTERM)?;
    let status = second.wait_exit(Duration::from_secs(30)).await?;
    assert!(status.success(), "{status}; log:\n{}", second.log());
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_exits_non_zero() -> Result<()> {
    let ns = TestNamespace::new("op-fence").await?;
    install_crds(&ns.client()).await?;
    let bin = operator_binary().await?;
    let leases: Api<Lease> = ns.api();

    let mut leader = Replica::start(&bin, &ns, "replica-1").await?;
    leader.wait_readyz(200, TAKEOVER).await?;

    // Someone else holds the lease now (as if this replica had stalled past its expiry).
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    leases
        .patch(
            LEASE,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "spec": { "holderIdentity": "someone-else", "renewTime": now, "leaseDurationSeconds": 60 }
            })),
        )
        .await?;
    // It notices at its next renewal (at most lease duration minus grace later) and exits non-zero.
    let status = leader.wait_exit(TAKEOVER).await?;
    assert!(!status.success(), "{status}; log:\n{}", leader.log());
    assert!(leader.log().contains("lost leadership"), "{}", leader.log());
    // It did not take the lease back on its way out.
    assert_eq!(holder(&leases).await?.as_deref(), Some("someone-else"));
    ns.cleanup().await?;
    Ok(())
}
