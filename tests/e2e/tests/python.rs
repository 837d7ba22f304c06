//! Sluice from Python on the local cluster, with the project's Python venv (`tests/scripts/python-venv.sh`):
//!
//! * a **Python worker pool**: the operator (FlowRun runtime, broker with TokenReview authentication and the
//!   WorkerPool controller) runs in this test process, the WorkerPool `python` of `examples/python/` has its
//!   pods run by the process kubelet as local processes of `examples/python/worker.py` (image
//!   `sluice/worker-python:dev`). It runs the seed examples — an order workflow with retries and a signal,
//!   and a job pool with transient failures and a poisoned job; a cancelled run stops the Python handler
//!   within the same bound as the Rust SDK; SIGTERM (the pod deleted) during a step drains it;
//! * the **Python client** (`sluice.client`): `tests/e2e/python/client_check.py` checks start, wait, signal,
//!   cancel, status and idempotent starts against the real API server, and the client example
//!   `examples/python/start_order.py` starts a flow on a Python worker and prints its result.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice_e2e::{
    InProcessOperator, InProcessOptions, TestNamespace, cluster, init_test_logs, install_crds,
    kubeconfig_path, python, python_venv, repo_root, start_doubling_worker, wait_deleted, wait_for,
};
use sluice_operator::api::{FlowPhase, FlowRun, StepPhase, StepStatus, WorkerPool};
use sluice_operator::broker::tokenreview::TokenReviewAuthenticator;
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(120);

/// How soon a cancel must reach a running Python handler in a pod: the bound the conformance suite holds both
/// SDKs to (`tests/e2e/tests/conformance.rs`).
const CANCEL_BOUND: Duration = Duration::from_secs(1);

async fn pool_setup(prefix: &str) -> Result<(TestNamespace, InProcessOperator, PathBuf)> {
    init_test_logs();
    install_crds(&cluster().await?).await?;
    let venv = python_venv().await?;
    let ns = TestNamespace::new(prefix).await?;
    let options = InProcessOptions::default()
        .worker_pools()
        .authenticator(Arc::new(TokenReviewAuthenticator::new(ns.client())));
    let operator = InProcessOperator::start_with(ns.client(), ns.name(), options).await?;
    Ok((ns, operator, venv))
}

fn example(file: &str) -> Result<String> {
    let path = repo_root().join("examples/python").join(file);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The example pool `python` with one replica, its pods told where the venv is and where to log handler
/// events, and quick to restart.
async fn create_pool(ns: &TestNamespace, venv: &Path, side_effects: &Path) -> Result<()> {
    let pool: Value = serde_saphyr::from_str(&example("workerpool.yaml")?)?;
    let mut pool = pool;
    pool["spec"]["scaling"] = json!({"mode": "Manual"});
    pool["spec"]["replicas"] = json!(1);
    pool["spec"]["template"]["metadata"] =
        json!({"annotations": {"sluice.dev/kubelet-backoff-base": "500ms"}});
    pool["spec"]["template"]["spec"]["containers"][0]["env"] = json!([
        {"name": "SLUICE_PYTHON_VENV", "value": venv.to_string_lossy()},
        {"name": "SLUICE_EXAMPLE_SIDE_EFFECTS", "value": side_effects.to_string_lossy()},
        {"name": "SLUICE_LOG_LEVEL", "value": "DEBUG"},
    ]);
    let pool: WorkerPool = serde_json::from_value(pool)?;
    ns.api::<WorkerPool>()
        .create(&PostParams::default(), &pool)
        .await?;
    Ok(())
}

async fn create_example_flow(api: &Api<FlowRun>, file: &str) -> Result<String> {
    let fr: FlowRun = serde_saphyr::from_str(&example(file)?)?;
    let created = api.create(&PostParams::default(), &fr).await?;
    created.metadata.name.context("a name")
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

fn step(fr: &FlowRun, name: &str) -> StepStatus {
    fr.status
        .as_ref()
        .and_then(|s| s.steps.get(name))
        .cloned()
        .unwrap_or_default()
}

fn events(side_effects: &Path) -> Vec<Value> {
    std::fs::read_to_string(side_effects)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn event(side_effects: &Path, flowrun: &str, what: &str, within: Duration) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(e) = events(side_effects)
            .into_iter()
            .find(|e| e["flowrun"] == flowrun && e["event"] == what)
        {
            return Ok(e);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "no {what} event of {flowrun} within {within:?}: {:?}",
                events(side_effects)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
    )
    .unwrap_or(u64::MAX)
}

#[tokio::test]
async fn a_python_pool_runs_the_order_workflow_with_retries_and_a_signal_and_the_job_pool()
-> Result<()> {
    let (ns, _operator, venv) = pool_setup("py-pool").await?;
    let side_effects = ns.scratch_dir().join("side-effects.jsonl");
    create_pool(&ns, &venv, &side_effects).await?;
    let api: Api<FlowRun> = ns.api();
    let order = create_example_flow(&api, "order-flow.yaml").await?;
    let jobs = create_example_flow(&api, "job-pool.yaml").await?;

    // The order waits for the manager's approval once charged (the charge was retried once).
    wait_for(
        &api,
        &order,
        |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref())
                .and_then(|s| s.steps.get("approval"))
                .is_some_and(|s| s.phase == StepPhase::Waiting)
        },
        WAIT,
        "the order to wait for its approval",
    )
    .await?;
    api.patch_status(
        &order,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"signals": {"manager-approval": {"payload": {"approved": true}}}}}),
        ),
    )
    .await?;
    let fr = ended(&api, &order).await?;
    let status = fr.status.clone().unwrap_or_default();
    ensure!(
        status.phase == Some(FlowPhase::Succeeded),
        "the order: {:?} {:?}",
        status.phase,
        status.conditions
    );
    let charge = step(&fr, "charge");
    assert_eq!(charge.attempts, 2, "the gateway failed the first attempt");
    assert_eq!(
        status.output,
        Some(json!({
            "payment": {"paymentId": "pay-1234", "amount": 99.99, "status": "charged"},
            "tracking": "TRK-1234",
        }))
    );
    let ship = step(&fr, "ship");
    assert_eq!(
        ship.output.as_ref().map(|o| o["items"].clone()),
        Some(json!(3))
    );

    // The job pool: the transient export succeeds on its third attempt, the poisoned import fails for good
    // after three, the rest of the batch finishes.
    let fr = ended(&api, &jobs).await?;
    let status = fr.status.clone().unwrap_or_default();
    ensure!(
        status.phase == Some(FlowPhase::Succeeded),
        "the jobs: {:?}",
        status.phase
    );
    let export = step(&fr, "export");
    assert_eq!(
        (export.phase, export.attempts),
        (StepPhase::Succeeded, 3),
        "two transient failures, then success"
    );
    assert_eq!(
        export.output,
        Some(json!({"file": "report.csv", "attempt": 3}))
    );
    let import = step(&fr, "import");
    assert_eq!(
        (import.phase, import.attempts),
        (StepPhase::Failed, 3),
        "poisoned"
    );
    let error = import.error.context("the last error is kept")?;
    assert_eq!((error.type_.as_str(), error.attempt), ("CorruptInput", 3));
    ensure!(
        error.message.contains("unterminated quoted field"),
        "{error:?}"
    );
    let thumbs = step(&fr, "thumbnails");
    assert_eq!(thumbs.phase, StepPhase::Succeeded);
    assert_eq!(step(&fr, "newsletter").phase, StepPhase::Succeeded);
    // Every attempt ran once, on the Python worker.
    let runs: Vec<Value> = events(&side_effects)
        .into_iter()
        .filter(|e| e["flowrun"] == jobs.as_str())
        .collect();
    assert_eq!(runs.len(), 3 + 1 + 3 + 3, "{runs:?}");
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_python_pool_stops_a_cancelled_handler_at_once_and_drains_a_step_on_sigterm() -> Result<()>
{
    let (ns, _operator, venv) = pool_setup("py-stop").await?;
    let side_effects = ns.scratch_dir().join("side-effects.jsonl");
    create_pool(&ns, &venv, &side_effects).await?;
    let api: Api<FlowRun> = ns.api();
    let slow = |name: &str, ms: u64| -> Result<FlowRun> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": name},
            "spec": {"pool": "python", "steps": [{"name": "work", "handler": "slow_task",
                     "input": {"ms": ms}, "retry": {"maxAttempts": 3}}]},
        }))?)
    };

    // A cancel reaches the running handler through the held heartbeat.
    api.create(&PostParams::default(), &slow("cancel-me", 60_000)?)
        .await?;
    event(&side_effects, "cancel-me", "start", WAIT).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled_at = now_ms();
    api.patch(
        "cancel-me",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"cancel": true}})),
    )
    .await?;
    let seen = event(
        &side_effects,
        "cancel-me",
        "cancelled",
        Duration::from_secs(30),
    )
    .await?;
    assert_eq!(seen["reason"], "Requested");
    let latency = seen["ms"]
        .as_u64()
        .unwrap_or(u64::MAX)
        .saturating_sub(cancelled_at);
    eprintln!("the cancel reached the Python handler in its pod after {latency} ms");
    ensure!(
        u128::from(latency) < CANCEL_BOUND.as_millis(),
        "the cancel took {latency} ms to reach the handler (bound {CANCEL_BOUND:?})"
    );
    let fr = ended(&api, "cancel-me").await?;
    ensure!(
        fr.status.as_ref().and_then(|s| s.phase) == Some(FlowPhase::Cancelled),
        "{:?}",
        fr.status
    );

    // SIGTERM during a step: the pod is deleted, the kubelet sends SIGTERM, the step finishes on attempt 1.
    api.create(&PostParams::default(), &slow("drain-me", 4000)?)
        .await?;
    let started = event(&side_effects, "drain-me", "start", WAIT).await?;
    let pod = started["worker"]
        .as_str()
        .context("the worker's name")?
        .to_owned();
    let pods: Api<Pod> = ns.api();
    pods.delete(&pod, &DeleteParams::default()).await?;
    let fr = ended(&api, "drain-me").await?;
    let work = step(&fr, "work");
    ensure!(
        fr.status.as_ref().and_then(|s| s.phase) == Some(FlowPhase::Succeeded)
            && work.attempts == 1,
        "the step in flight finishes on attempt 1, nothing is retried: {:?}",
        fr.status
    );
    assert_eq!(
        work.output.as_ref().map(|o| o["worker"].clone()),
        Some(json!(pod)),
        "finished by the pod that got SIGTERM"
    );
    wait_deleted(
        &pods,
        &pod,
        Duration::from_secs(30),
        "the drained worker pod to exit and go away",
    )
    .await?;
    let log = sluice_e2e::pod_log(ns.name(), &pod, "worker");
    ensure!(log.contains("SIGTERM received"), "the worker's log: {log}");
    let attempts: Vec<Value> = events(&side_effects)
        .into_iter()
        .filter(|e| e["flowrun"] == "drain-me")
        .collect();
    assert_eq!(
        attempts
            .iter()
            .map(|e| e["event"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["start", "end"],
        "{attempts:?}"
    );
    let remaining = pods
        .list(&ListParams::default().labels("sluice.dev/pool=python"))
        .await?;
    eprintln!(
        "pods after the drain: {:?}",
        remaining
            .items
            .iter()
            .map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    ns.cleanup().await?;
    Ok(())
}

/// Runs the venv's Python on `script` (relative to the repository) with `args` against namespace `ns`.
async fn run_python(
    script: &str,
    args: &[&str],
    ns: &str,
) -> Result<(Option<i32>, String, String)> {
    let out = Command::new(python().await?)
        .arg(repo_root().join(script))
        .args(args)
        .env("KUBECONFIG", kubeconfig_path()?)
        .env("SLUICE_NAMESPACE", ns)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {script}"))?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn the_python_client_starts_waits_signals_cancels_and_starts_idempotently() -> Result<()> {
    init_test_logs();
    install_crds(&cluster().await?).await?;
    python_venv().await?;
    let ns = TestNamespace::new("py-client").await?;
    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let doubling = start_doubling_worker(&operator, ns.name());

    let (code, stdout, stderr) =
        run_python("tests/e2e/python/client_check.py", &[], ns.name()).await?;
    ensure!(
        code == Some(0) && stdout.lines().last() == Some("ok"),
        "client_check.py exited {code:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    doubling.shutdown();

    // The client example starts a flow on the Python example worker (a process here, pool `python`).
    let worker_out = std::fs::File::create(ns.scratch_dir().join("python-worker.out"))?;
    let mut worker = Command::new(python().await?)
        .arg(repo_root().join("examples/python/worker.py"))
        .env("SLUICE_BROKER_URL", operator.broker_url())
        .env("SLUICE_POOL", format!("{}/python", ns.name()))
        .env("SLUICE_WORKER_NAME", "python-1")
        .stdin(Stdio::null())
        .stdout(worker_out.try_clone()?)
        .stderr(worker_out)
        .kill_on_drop(true)
        .spawn()?;
    let result = async {
        let example = "examples/python/start_order.py";
        let (code, stdout, stderr) = run_python(example, &["1001", "42.50"], ns.name()).await?;
        ensure!(code == Some(0), "the example exited {code:?}: {stderr}");
        assert_eq!(stdout, "charged 42.50: pay-1001\n");
        // Again: the same run and its recorded result, no second FlowRun.
        let (code, again, stderr) = run_python(example, &["1001", "42.50"], ns.name()).await?;
        ensure!(code == Some(0), "the second run exited {code:?}: {stderr}");
        assert_eq!(again, stdout);
        let api: Api<FlowRun> = ns.api();
        let names: Vec<_> = api
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|f| f.metadata.name)
            .filter(|n| n.starts_with("charge-"))
            .collect();
        assert_eq!(names, ["charge-1001"]);
        // Another amount for the same order is a spec conflict, reported as an error.
        let (code, _, stderr) = run_python(example, &["1001", "50"], ns.name()).await?;
        ensure!(
            code == Some(2),
            "a conflicting charge must fail with 2, got {code:?}: {stderr}"
        );
        ensure!(
            stderr.contains("different spec") && stderr.contains("spec.input.amount"),
            "{stderr}"
        );
        Ok(())
    }
    .await;
    let _ = worker.kill().await;
    if result.is_err() {
        eprintln!(
            "--- python worker ---\n{}",
            std::fs::read_to_string(ns.scratch_dir().join("python-worker.out")).unwrap_or_default()
        );
    }
    result?;
    ns.cleanup().await?;
    Ok(())
}
