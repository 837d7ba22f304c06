//! Cancellation reaches a running handler at once, whether asked for (`spec.cancel`) or due to the run's
//! `activeDeadline`: the operator (FlowRun runtime, broker and WorkerPool
//! controller) runs in this test process, the worker is the real exec worker (`sluice/worker:dev`) in a pod run
//! by the process kubelet, and its handler is a shell command whose process the test watches by PID.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde_json::json;
use sluice_e2e::{
    InProcessOperator, InProcessOptions, TestNamespace, build_binaries, cluster, init_test_logs,
    install_crds, wait_for,
};
use sluice_operator::api::{FlowPhase, FlowRun, StepPhase, WorkerPool};

/// How soon after the cancel patch returns the handler's process must be gone.
const CANCEL_BOUND: Duration = Duration::from_secs(1);

async fn setup(prefix: &str) -> Result<(TestNamespace, InProcessOperator)> {
    init_test_logs();
    let client = cluster().await?;
    install_crds(&client).await?;
    // The worker image maps to the exec worker binary of this workspace (tests/kubelet/images.yaml).
    build_binaries().await?;
    let ns = TestNamespace::new(prefix).await?;
    let options = InProcessOptions::default().worker_pools();
    let operator = InProcessOperator::start_with(ns.client(), ns.name(), options).await?;
    Ok((ns, operator)) // the operator stops when dropped
}

/// Whether process `pid` exists (`kill -0`). A process that exited but was not reaped yet still exists: the
/// exec worker reaps its command as soon as it dies.
fn alive(pid: i32) -> Result<bool> {
    match kill(Pid::from_raw(pid), None) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => bail!("kill -0 {pid}: {e}"),
    }
}

/// Waits (at most `within`) until `path` holds a PID.
async fn read_pid(path: &Path, within: Duration) -> Result<i32> {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return Ok(pid);
        }
        ensure!(
            started.elapsed() < within,
            "the handler did not write its PID to {} within {within:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The exec WorkerPool `exec`: handler `hold` writes its PID to `pid_file` and sleeps 300 s; handler `report`
/// prints `"reported"`.
async fn create_exec_pool(ns: &TestNamespace, pid_file: &Path) -> Result<()> {
    let pools: Api<WorkerPool> = ns.api();
    let pool: WorkerPool = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "WorkerPool",
        "metadata": {"name": "exec"},
        "spec": {
            "replicas": 1,
            "scaling": {"mode": "Manual"},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{
                    "name": "worker", "image": "sluice/worker:dev",
                    // The shell writes its PID, then becomes `sleep` (same PID). `$$$$` is `$$` once the
                    // kubelet has expanded the argument (`$$` escapes `$`, as in Kubernetes).
                    "args": ["--handler", "hold=echo $$$$ > \"$PID_FILE\"; exec sleep 300",
                             "--handler", "report=echo '\"reported\"'"],
                    "env": [{"name": "PID_FILE", "value": pid_file.to_string_lossy()}],
                }],
            }},
        },
    }))?;
    pools.create(&PostParams::default(), &pool).await?;
    Ok(())
}

#[tokio::test]
async fn cancelling_a_run_stops_its_running_handler_process_within_1s() -> Result<()> {
    let (ns, _operator) = setup("cancel-exec").await?;
    let pid_file = ns.scratch_dir().join("handler.pid");
    create_exec_pool(&ns, &pid_file).await?;

    let flows: Api<FlowRun> = ns.api();
    // The default heartbeat timeout (30 s) heartbeats every 10 s: without held heartbeats the cancel would
    // wait for the next one.
    let fr: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "held"},
        "spec": {"pool": "exec", "steps": [{"name": "s", "handler": "hold"}]},
    }))?;
    flows.create(&PostParams::default(), &fr).await?;
    wait_for(
        &flows,
        "held",
        |f: Option<&FlowRun>| {
            f.and_then(|f| f.status.as_ref())
                .and_then(|s| s.steps.get("s"))
                .is_some_and(|s| s.phase == StepPhase::Running && s.worker.is_some())
        },
        Duration::from_secs(90),
        "step s to run on the exec worker's pod",
    )
    .await?;
    let pid = read_pid(&pid_file, Duration::from_secs(30)).await?;
    ensure!(alive(pid)?, "the handler process {pid} is not running");

    flows
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true}})),
        )
        .await
        .context("patching spec.cancel")?;
    let patched = Instant::now();
    while alive(pid)? {
        let elapsed = patched.elapsed();
        ensure!(
            elapsed < CANCEL_BOUND,
            "the handler process {pid} still runs {elapsed:?} after spec.cancel was patched (bound: {CANCEL_BOUND:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = patched.elapsed();
    println!(
        "FIGURE cancel: the handler process was gone {gone:?} after the spec.cancel patch returned"
    );

    let done = wait_for(
        &flows,
        "held",
        |f: Option<&FlowRun>| {
            f.and_then(|f| f.status.as_ref())
                .and_then(|s| s.phase)
                .is_some_and(FlowPhase::is_terminal)
        },
        Duration::from_secs(30),
        "the cancelled run to end",
    )
    .await?;
    let status = done.status.context("status")?;
    ensure!(
        status.phase == Some(FlowPhase::Cancelled),
        "the run ended {:?}, not Cancelled",
        status.phase
    );
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn past_its_active_deadline_a_run_fails_stops_its_handler_process_and_runs_its_exit_step()
-> Result<()> {
    let (ns, _operator) = setup("deadline-exec").await?;
    let pid_file = ns.scratch_dir().join("handler.pid");
    create_exec_pool(&ns, &pid_file).await?;
    let flows: Api<FlowRun> = ns.api();
    let fr: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "late"},
        "spec": {
            "pool": "exec",
            "activeDeadline": "5s",
            "steps": [{"name": "s", "handler": "hold"}],
            "onExit": [{"name": "tell", "handler": "report", "input": "${{ flow.reason }}"}],
        },
    }))?;
    flows.create(&PostParams::default(), &fr).await?;
    let running = wait_for(
        &flows,
        "late",
        |f: Option<&FlowRun>| {
            f.and_then(|f| f.status.as_ref())
                .and_then(|s| s.steps.get("s"))
                .is_some_and(|s| s.phase == StepPhase::Running)
        },
        Duration::from_secs(90),
        "step s to run on the exec worker's pod",
    )
    .await?;
    let started_at = running
        .status
        .as_ref()
        .and_then(|s| s.started_at.clone())
        .context("status.startedAt of a running run")?
        .0;
    let pid = read_pid(&pid_file, Duration::from_secs(30)).await?;

    let done = wait_for(
        &flows,
        "late",
        |f: Option<&FlowRun>| {
            f.and_then(|f| f.status.as_ref())
                .and_then(|s| s.phase)
                .is_some_and(FlowPhase::is_terminal)
        },
        Duration::from_secs(60),
        "the run to end past its deadline",
    )
    .await?;
    let status = done.status.context("status")?;
    ensure!(
        status.phase == Some(FlowPhase::Failed),
        "the run ended {:?}, not Failed",
        status.phase
    );
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .context("condition Succeeded")?;
    ensure!(
        failed.reason == "DeadlineExceeded",
        "condition Succeeded says {}: {}",
        failed.reason,
        failed.message
    );
    // The deadline ends the main steps; the run itself ends after its exit step.
    let outcome = status.main_outcome.as_ref().context("status.mainOutcome")?;
    let stopped_at = status.steps["s"]
        .finished_at
        .as_ref()
        .context("finishedAt of the cancelled step")?
        .0;
    // Both are whole seconds, as Kubernetes stores times.
    let after = stopped_at.as_second() - started_at.as_second();
    println!(
        "FIGURE deadline: the main step was stopped {after} s after the run started (deadline 5s)"
    );
    ensure!(
        outcome.reason == "DeadlineExceeded" && after <= 6,
        "the main steps ended {outcome:?} {after} s after the start (bound: 6 s)"
    );
    ensure!(
        status.steps["s"].phase == StepPhase::Cancelled,
        "step s is {:?}",
        status.steps["s"].phase
    );
    ensure!(
        !alive(pid)?,
        "the handler process {pid} still runs after the deadline"
    );
    let tell = &status.steps["tell"];
    ensure!(
        tell.phase == StepPhase::Succeeded && tell.output == Some(json!("reported")),
        "the exit step is {:?} with output {:?}",
        tell.phase,
        tell.output
    );
    ns.cleanup().await?;
    Ok(())
}
