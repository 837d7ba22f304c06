//! An operator restart while a step runs: the new process serves at once and loads runs from its cache; the
//! running attempt is adopted with a fresh heartbeat window (its worker's heartbeats are answered, not refused
//! while the runs load), so the handler is neither cancelled nor run again, and the run succeeds on attempt 1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use sluice_e2e::{OperatorProcess, TestNamespace, cluster, install_crds, wait_for};
use sluice_operator::api::{FlowPhase, FlowRun};
use sluice_worker::{Config, StepContext, Worker};
use tokio::sync::watch;

/// Idle runs beside the one that matters, so the new process has something to load.
const IDLE_RUNS: usize = 200;

/// What the handler saw: how often it started, and whether it was told to stop.
#[derive(Default)]
struct Seen {
    starts: u32,
    cancelled: bool,
}

#[tokio::test]
async fn a_step_running_across_an_operator_restart_keeps_its_attempt_and_worker() -> Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("restart").await?;
    let api: Api<FlowRun> = ns.api();
    let mut operator = OperatorProcess::start_trusting_workers(&ns).await?;

    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (release, released) = watch::channel(false);
    let mut config = Config::new(
        operator.broker_url(),
        format!("{}/pool", ns.name()),
        "worker-0",
    );
    config.backoff_max = Duration::from_millis(200);
    let handler_seen = seen.clone();
    let worker = Worker::new(config).handler("hold", move |ctx: StepContext, _: Value| {
        let (seen, mut released) = (handler_seen.clone(), released.clone());
        async move {
            seen.lock().unwrap().starts += 1;
            tokio::select! {
                _ = released.wait_for(|r| *r) => {}
                () = ctx.cancelled() => seen.lock().unwrap().cancelled = true,
            }
            Ok(json!({"attempt": ctx.attempt()}))
        }
    });
    let shutdown = worker.shutdown_handle();
    tokio::spawn(async move { worker.run_until(std::future::pending()).await });

    stream::iter(0..IDLE_RUNS)
        .map(|i| {
            let api = api.clone();
            async move {
                let fr: FlowRun = serde_json::from_value(json!({
                    "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
                    "metadata": {"name": format!("idle-{i}")},
                    "spec": {"steps": [{"name": "wait", "waitForSignal": {"name": "go"}}]}
                }))?;
                api.create(&PostParams::default(), &fr).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let fr: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "held"},
        "spec": {"pool": "pool", "steps": [{"name": "hold", "handler": "hold", "heartbeatTimeout": "3s"}]}
    }))?;
    api.create(&PostParams::default(), &fr).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().starts == 0 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the handler did not start within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    operator.crash_and_restart().await?;
    operator.wait_ready(Duration::from_secs(60)).await?;
    // Twice the heartbeat timeout: long enough for a refused heartbeat to cancel the handler, or for the
    // loss detector to release an attempt whose heartbeats went unanswered. Nothing is awaited here that a
    // watch could report: the assertion is that nothing happens.
    tokio::time::sleep(Duration::from_secs(6)).await;
    {
        let seen = seen.lock().unwrap();
        ensure!(
            !seen.cancelled,
            "the running handler was told to stop after the restart"
        );
        ensure!(seen.starts == 1, "the step ran {} times", seen.starts);
    }

    release.send(true)?;
    let done = wait_for(
        &api,
        "held",
        |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref())
                .and_then(|s| s.phase)
                .is_some_and(|p| p.is_terminal())
        },
        Duration::from_secs(60),
        "the held run to finish",
    )
    .await?;
    let status = done.status.clone().unwrap_or_default();
    ensure!(
        status.phase == Some(FlowPhase::Succeeded),
        "the run ended {:?}: {status:?}",
        status.phase
    );
    let step = &status.steps["hold"];
    ensure!(
        step.attempts == 1 && step.output == Some(json!({"attempt": 1})),
        "the step succeeded after {} attempts with {:?}",
        step.attempts,
        step.output
    );
    ensure!(seen.lock().unwrap().starts == 1, "the handler ran again");

    shutdown.shutdown();
    operator.stop().await?;
    ns.cleanup().await?;
    Ok(())
}
