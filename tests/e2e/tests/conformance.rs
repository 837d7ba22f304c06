//! SDK conformance: the same scenarios, with the same expected outcomes, against both worker SDKs — the Rust
//! SDK (`worker-image/examples/conformance.rs`) and the Python SDK (`tests/e2e/conformance/worker.py`, on the
//! `sluice` package in the project's venv) — each a worker process of its own talking to the real broker of an
//! operator running in this test process. Both serve the same handlers (specified in the Rust example's doc
//! comment) and log what their handlers saw to a file this suite reads. So the two SDKs cannot drift apart on
//! the wire contract:
//!
//! * **claim + complete**: an `echo` step succeeds on attempt 1 with the handler's output, claimed by the
//!   worker; typed input decodes (`typed`), and input of the wrong shape is a fatal `InvalidInput`;
//! * **heartbeat**: a step running longer than its `heartbeatTimeout` succeeds on attempt 1 (no heartbeats
//!   would get it released as lost and retried);
//! * **fail retryable**: `flaky` fails twice with type `Flaky` and succeeds on attempt 3;
//! * **fail fatal**: `fatal` ends the step on attempt 1 despite `maxAttempts: 3`, with its type and message;
//! * **cancel**: cancelling the FlowRun reaches the running handler (reason `Requested`) within
//!   [`CANCEL_BOUND`] through the held heartbeat, and the run ends Cancelled;
//! * **stale attempt (409)**: the worker is frozen (SIGSTOP) until the broker releases its attempt as lost and
//!   the step is retried; thawed, its next heartbeat is refused with 409, the handler sees reason `Fenced`,
//!   nothing is reported for the old attempt, and the worker goes on to run the new attempt;
//! * **SIGTERM drain**: SIGTERM during a step lets it finish (Succeeded on attempt 1, nothing retried), a step
//!   queued after the SIGTERM is not taken, and the worker exits 0.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use sluice_e2e::{
    InProcessOperator, TestNamespace, cargo_test_env, cluster, init_test_logs, install_crds,
    python, repo_root, wait_for,
};
use sluice_operator::api::{FlowPhase, FlowRun, StepPhase};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(90);

/// How soon a cancel of the FlowRun must reach a running handler: the operator sees `spec.cancel` through its
/// watch and answers the attempt's held heartbeat at once, so this is a few round trips (tens of
/// milliseconds), not a heartbeat interval. The same bound for every SDK, and the one `cancel.rs` holds the
/// exec worker's handler process to.
const CANCEL_BOUND: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sdk {
    Rust,
    Python,
}

impl Sdk {
    fn name(self) -> &'static str {
        match self {
            Sdk::Rust => "rust",
            Sdk::Python => "python",
        }
    }
}

#[tokio::test]
async fn the_rust_sdk_conforms() -> Result<()> {
    conformance(Sdk::Rust).await
}

#[tokio::test]
async fn the_python_sdk_conforms() -> Result<()> {
    conformance(Sdk::Python).await
}

/// The Rust conformance worker, built once per test process (outside this test's cargo environment, like the
/// harness builds the operator).
async fn rust_worker() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let built = tokio::task::spawn_blocking(|| {
        BUILT
            .get_or_init(|| {
                let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
                let mut build = std::process::Command::new(cargo);
                build.args([
                    "build",
                    "-q",
                    "-p",
                    "sluice-worker",
                    "--example",
                    "conformance",
                ]);
                for name in cargo_test_env() {
                    build.env_remove(name);
                }
                let out = build
                    .current_dir(repo_root())
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("running cargo build: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "cargo build --example conformance: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                Ok(std::env::var_os("CARGO_TARGET_DIR")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| repo_root().join("target"))
                    .join("debug/examples/conformance"))
            })
            .clone()
    })
    .await?;
    built.map_err(anyhow::Error::msg)
}

/// One conformance worker process and the file its handlers log to.
struct WorkerProcess {
    sdk: Sdk,
    name: String,
    child: Child,
    log: PathBuf,
    output: PathBuf,
}

impl WorkerProcess {
    async fn start(sdk: Sdk, broker_url: &str, pool: &str, dir: &Path) -> Result<Self> {
        let mut command = match sdk {
            Sdk::Rust => Command::new(rust_worker().await?),
            Sdk::Python => {
                let mut c = Command::new(python().await?);
                c.arg(repo_root().join("tests/e2e/conformance/worker.py"));
                c
            }
        };
        let name = format!("{}-worker", sdk.name());
        let log = dir.join(format!("{}-events.jsonl", sdk.name()));
        let output = dir.join(format!("{}-worker.out", sdk.name()));
        let out = std::fs::File::create(&output)?;
        let child = command
            .env("SLUICE_BROKER_URL", broker_url)
            .env("SLUICE_POOL", pool)
            .env("SLUICE_WORKER_NAME", &name)
            .env("SLUICE_CONCURRENCY", "4")
            .env("SLUICE_SHUTDOWN_GRACE_SECONDS", "20")
            .env("CONFORMANCE_LOG", &log)
            .env("RUST_LOG", "info,sluice_worker=debug")
            .env("SLUICE_LOG_LEVEL", "DEBUG")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {} conformance worker", sdk.name()))?;
        Ok(Self {
            sdk,
            name,
            child,
            log,
            output,
        })
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.child.id().context("the worker has exited")?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }

    /// The handlers' log so far.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits (bounded) for the first event of `handler` with `event` in run `run`.
    async fn event(
        &self,
        handler: &str,
        event: &str,
        run: &str,
        within: Duration,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(found) = self
                .events()
                .into_iter()
                .find(|e| e["handler"] == handler && e["event"] == event && e["run"] == run)
            {
                return Ok(found);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: no {handler}/{event} event for {run} within {within:?}; events: {:?}",
                    self.sdk.name(),
                    self.events()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

async fn create(api: &Api<FlowRun>, name: &str, step: Value) -> Result<()> {
    let mut step = step;
    step["name"] = json!("s");
    let fr: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": name},
        "spec": {"pool": "pool", "steps": [step]},
    }))?;
    api.create(&PostParams::default(), &fr).await?;
    Ok(())
}

async fn ended(api: &Api<FlowRun>, name: &str) -> Result<FlowRun> {
    Ok(wait_for(
        api,
        name,
        |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref())
                .and_then(|s| s.phase)
                .is_some_and(FlowPhase::is_terminal)
        },
        WAIT,
        &format!("{name} to end"),
    )
    .await?)
}

/// (phase, step phase, attempts, output, error type, error message, worker) of run `name`'s step `s`.
struct Outcome {
    phase: FlowPhase,
    step: StepPhase,
    attempts: u32,
    output: Value,
    error: Option<(String, String)>,
    worker: Option<String>,
}

fn outcome(fr: &FlowRun) -> Outcome {
    let status = fr.status.clone().unwrap_or_default();
    let step = status.steps.get("s").cloned().unwrap_or_default();
    Outcome {
        phase: status.phase.unwrap_or_default(),
        step: step.phase,
        attempts: step.attempts,
        output: step.output.unwrap_or(Value::Null),
        error: step.error.map(|e| (e.type_, e.message)),
        worker: step.worker,
    }
}

fn same_number(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

async fn conformance(sdk: Sdk) -> Result<()> {
    init_test_logs();
    install_crds(&cluster().await?).await?;
    let ns = TestNamespace::new(&format!("conform-{}", sdk.name())).await?;
    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let mut worker = WorkerProcess::start(
        sdk,
        operator.broker_url(),
        &format!("{}/pool", ns.name()),
        ns.scratch_dir(),
    )
    .await?;
    let api: Api<FlowRun> = ns.api();
    let result = scenarios(&api, &mut worker).await;
    if result.is_err() {
        eprintln!(
            "--- {} worker output ---\n{}\n--- events ---\n{:#?}",
            sdk.name(),
            worker.output(),
            worker.events()
        );
    }
    let _ = worker.signal(Signal::SIGCONT);
    let _ = worker.child.kill().await;
    drop(operator);
    ns.cleanup().await?;
    result
}

async fn scenarios(api: &Api<FlowRun>, worker: &mut WorkerProcess) -> Result<()> {
    let sdk = worker.sdk.name();
    // Claim, heartbeat, complete, typed input, fail retryable, fail fatal: all at once.
    create(
        api,
        "complete",
        json!({"handler": "echo", "input": {"x": 1}}),
    )
    .await?;
    create(
        api,
        "typed",
        json!({"handler": "typed", "input": {"orderId": "o-1", "amount": 21.5}}),
    )
    .await?;
    create(
        api,
        "typed-bad",
        json!({"handler": "typed", "input": {"orderId": 5}, "retry": {"maxAttempts": 3}}),
    )
    .await?;
    create(
        api,
        "heartbeat",
        json!({"handler": "sleep", "input": {"ms": 5000}, "heartbeatTimeout": "3s"}),
    )
    .await?;
    create(
        api,
        "retryable",
        json!({"handler": "flaky", "input": {"failUntil": 3},
               "retry": {"maxAttempts": 4, "initialBackoff": "100ms"}}),
    )
    .await?;
    create(
        api,
        "fatal",
        json!({"handler": "fatal", "retry": {"maxAttempts": 3, "initialBackoff": "100ms"}}),
    )
    .await?;

    let o = outcome(&ended(api, "complete").await?);
    ensure!(
        (o.phase, o.step, o.attempts) == (FlowPhase::Succeeded, StepPhase::Succeeded, 1),
        "{sdk} complete: {:?} {:?} attempt {}",
        o.phase,
        o.step,
        o.attempts
    );
    assert_eq!(
        o.output,
        json!({"input": {"x": 1}, "attempt": 1, "step": "s", "flowRun": "complete"}),
        "{sdk}"
    );
    assert_eq!(
        o.worker.as_deref(),
        Some(worker.name.as_str()),
        "{sdk}: the claim names the worker"
    );

    let o = outcome(&ended(api, "typed").await?);
    ensure!(
        o.phase == FlowPhase::Succeeded,
        "{sdk} typed: {:?} {:?}",
        o.phase,
        o.error
    );
    ensure!(
        o.output["orderId"] == "o-1" && same_number(&o.output["doubled"], 43.0),
        "{sdk} typed output {}",
        o.output
    );

    let o = outcome(&ended(api, "typed-bad").await?);
    ensure!(
        (o.phase, o.attempts) == (FlowPhase::Failed, 1),
        "{sdk} typed-bad: {:?} attempt {}",
        o.phase,
        o.attempts
    );
    assert_eq!(
        o.error.as_ref().map(|e| e.0.as_str()),
        Some("InvalidInput"),
        "{sdk}"
    );

    let o = outcome(&ended(api, "heartbeat").await?);
    ensure!(
        (o.phase, o.attempts) == (FlowPhase::Succeeded, 1),
        "{sdk} heartbeat: {:?} attempt {} {:?}: heartbeats must keep a step longer than its heartbeatTimeout alive",
        o.phase,
        o.attempts,
        o.error
    );
    assert_eq!(o.output, json!({"slept": 5000}), "{sdk}");

    let o = outcome(&ended(api, "retryable").await?);
    ensure!(
        (o.phase, o.attempts) == (FlowPhase::Succeeded, 3),
        "{sdk} retryable: {:?} attempt {} {:?}",
        o.phase,
        o.attempts,
        o.error
    );
    assert_eq!(o.output, json!({"attempt": 3}), "{sdk}");

    let o = outcome(&ended(api, "fatal").await?);
    ensure!(
        (o.phase, o.attempts) == (FlowPhase::Failed, 1),
        "{sdk} fatal: {:?} attempt {}: a fatal error ends the step at once",
        o.phase,
        o.attempts
    );
    assert_eq!(
        o.error,
        Some(("CardDeclined".to_owned(), "over the limit".to_owned())),
        "{sdk}"
    );

    // Cancel reaches the handler through the held heartbeat.
    create(api, "cancel", json!({"handler": "block", "input": {}})).await?;
    worker.event("block", "start", "cancel", WAIT).await?;
    tokio::time::sleep(Duration::from_millis(300)).await; // a heartbeat is being held now
    let cancelled_at = now_ms();
    api.patch(
        "cancel",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"cancel": true}})),
    )
    .await?;
    let seen = worker
        .event("block", "cancelled", "cancel", Duration::from_secs(30))
        .await?;
    assert_eq!(seen["reason"], "Requested", "{sdk}");
    let latency = u128::from(seen["ms"].as_u64().unwrap_or(u64::MAX)).saturating_sub(cancelled_at);
    eprintln!("{sdk}: the cancel reached the handler after {latency} ms");
    ensure!(
        latency < CANCEL_BOUND.as_millis(),
        "{sdk}: the cancel took {latency} ms to reach the handler (bound {CANCEL_BOUND:?})"
    );
    let o = outcome(&ended(api, "cancel").await?);
    ensure!(
        o.phase == FlowPhase::Cancelled,
        "{sdk} cancel: {:?}",
        o.phase
    );

    // A stale attempt: 409 stops the old attempt; the worker goes on.
    create(
        api,
        "stale",
        json!({"handler": "block", "input": {"returnFromAttempt": 2}, "heartbeatTimeout": "2s",
               "retry": {"maxAttempts": 3, "initialBackoff": "100ms"}}),
    )
    .await?;
    worker.event("block", "start", "stale", WAIT).await?;
    worker.signal(Signal::SIGSTOP)?;
    let released = wait_for(
        api,
        "stale",
        |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref())
                .and_then(|s| s.steps.get("s"))
                .is_some_and(|s| s.attempts >= 2)
        },
        Duration::from_secs(30),
        "the frozen worker's attempt to be released and retried",
    )
    .await;
    worker.signal(Signal::SIGCONT)?;
    released?;
    let o = outcome(&ended(api, "stale").await?);
    ensure!(
        o.phase == FlowPhase::Succeeded && o.attempts >= 2,
        "{sdk} stale: {:?} attempt {} {:?}",
        o.phase,
        o.attempts,
        o.error
    );
    assert_eq!(o.output["attempt"], json!(o.attempts), "{sdk}");
    let fenced = worker
        .event("block", "cancelled", "stale", Duration::from_secs(30))
        .await?;
    assert_eq!(
        (fenced["attempt"].as_u64(), fenced["reason"].as_str()),
        (Some(1), Some("Fenced")),
        "{sdk}: the old attempt's heartbeat was refused with 409"
    );

    // SIGTERM drain: the step in flight finishes, nothing queued afterwards is taken.
    create(
        api,
        "drain",
        json!({"handler": "sleep", "input": {"ms": 3000}}),
    )
    .await?;
    worker.event("sleep", "start", "drain", WAIT).await?;
    worker.signal(Signal::SIGTERM)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    create(
        api,
        "after-drain",
        json!({"handler": "sleep", "input": {"ms": 0}}),
    )
    .await?;
    let exit = tokio::time::timeout(Duration::from_secs(30), worker.child.wait())
        .await
        .context("the worker did not exit within 30 s of SIGTERM")??;
    ensure!(
        exit.success(),
        "{sdk}: the worker exited {exit} after SIGTERM"
    );
    let o = outcome(&ended(api, "drain").await?);
    ensure!(
        (o.phase, o.attempts) == (FlowPhase::Succeeded, 1),
        "{sdk} drain: {:?} attempt {} {:?}: the step in flight finishes, nothing is retried",
        o.phase,
        o.attempts,
        o.error
    );
    assert_eq!(o.output, json!({"slept": 3000}), "{sdk}");
    worker.event("sleep", "end", "drain", WAIT).await?;
    let after = outcome(&api.get("after-drain").await?);
    ensure!(
        after.worker.is_none() && after.step != StepPhase::Succeeded,
        "{sdk}: a step queued after SIGTERM was taken by {:?} ({:?})",
        after.worker,
        after.step
    );
    ensure!(
        !worker.events().iter().any(|e| e["run"] == "after-drain"),
        "{sdk}: the draining worker ran a step queued after SIGTERM"
    );
    Ok(())
}
