//! Bounded status, on the real API server: a FlowRun cannot grow its status until etcd refuses the write
//! (leaving it Running for good).
//! - a forEach whose outputs would take the status past the operator's budget (the default, 1 MiB) fails with
//!   `StatusTooLarge` within seconds, naming the outputs, and nothing of the run is left Running;
//! - a flood of signals (more than `status.signals` may hold) is refused at admission with the API server's
//!   message, and the run waiting for a signal still gets the one it waits for.
//!
//! The operator runs in this test process (as in `ttl.rs`), with an SDK worker whose handler returns a large
//! output.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice_e2e::{
    InProcessOperator, TestNamespace, cluster, init_test_logs, install_crds, start_doubling_worker,
    wait_for,
};
use sluice_operator::api::{FlowPhase, FlowRun, MAX_SIGNALS, StepPhase};
use sluice_operator::engine::budget::DEFAULT_MAX_STATUS_BYTES;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(90);
/// The bound of the issue: from creating the run to it having failed for its status.
const FAILS_WITHIN: Duration = Duration::from_secs(30);
/// Size of each instance's output: under the default `maxOutputBytes` (64 KiB), so only the budget refuses.
const OUTPUT_BYTES: usize = 60_000;
/// Instances: together far more than the budget (about 17 outputs fill 1 MiB).
const ITEMS: usize = 40;

/// An SDK worker serving pool `pool` of `namespace` with the handler `blob`, which returns
/// `{"blob": "xxx..."}` of [`OUTPUT_BYTES`], four at a time.
fn start_blob_worker(
    operator: &InProcessOperator,
    namespace: &str,
) -> sluice_worker::ShutdownHandle {
    use sluice_worker::{Config, StepContext, Worker};
    let config = Config::new(
        operator.broker_url(),
        format!("{namespace}/pool"),
        "blob-worker",
    )
    .with_concurrency(4);
    let worker =
        Worker::new(config).handler("blob", |_ctx: StepContext, _input: Value| async move {
            Ok(json!({ "blob": "x".repeat(OUTPUT_BYTES - 11) }))
        });
    let handle = worker.shutdown_handle();
    tokio::spawn(async move { worker.run_until(std::future::pending()).await });
    handle
}

fn phase(fr: &FlowRun) -> Option<FlowPhase> {
    fr.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test]
async fn a_foreach_growing_the_status_past_the_budget_fails_with_status_too_large() -> Result<()> {
    init_test_logs();
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("status-budget").await?;
    let api: Api<FlowRun> = ns.api();
    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let worker = start_blob_worker(&operator, ns.name());

    let run: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "fan"},
        "spec": {"pool": "pool", "input": {"items": (0..ITEMS).collect::<Vec<_>>()}, "steps": [
            {"name": "fan", "handler": "blob", "forEach": "${{ input.items }}"},
            {"name": "after", "handler": "blob", "dependsOn": ["fan"]},
        ]}
    }))?;
    let created = Instant::now();
    api.create(&PostParams::default(), &run).await?;
    let failed = wait_for(
        &api,
        "fan",
        |fr: Option<&FlowRun>| fr.and_then(phase).is_some_and(FlowPhase::is_terminal),
        WAIT,
        "FlowRun fan to end",
    )
    .await?;
    let took = created.elapsed();
    let status = failed.status.clone().context("no status")?;
    let served = serde_json::to_vec(&status)?.len();
    eprintln!(
        "the run ended {:?} after {took:.1?}, its status {served} bytes as served (statusBytes {:?})",
        status.phase, status.status_bytes
    );
    ensure!(
        status.phase == Some(FlowPhase::Failed),
        "the run should fail, not {:?}",
        status.phase
    );
    ensure!(
        took <= FAILS_WITHIN,
        "it took {took:.1?} to fail, more than {FAILS_WITHIN:?}"
    );

    let fan = status.steps.get("fan").context("no step fan")?;
    let error = fan.error.clone().context("fan failed without an error")?;
    ensure!(
        fan.phase == StepPhase::Failed && error.type_ == "StatusTooLarge",
        "fan is {:?} with {error:?}",
        fan.phase
    );
    for part in [
        format!("the output ({OUTPUT_BYTES} bytes) does not fit in the status"),
        format!("over the budget of {DEFAULT_MAX_STATUS_BYTES} bytes"),
        "holds outputs ".to_owned(),
    ] {
        ensure!(
            error.message.contains(&part),
            "the error does not say {part:?}: {}",
            error.message
        );
    }
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .context("no Ready condition")?;
    ensure!(
        ready.reason == "StepFailed" && ready.message.contains("StatusTooLarge"),
        "Ready condition: {ready:?}"
    );

    // Nothing is left to run: every step ended, no instance is queued or running, and the status stayed near
    // the budget (the failure adds its message, the instances that succeeded stay).
    for (name, st) in &status.steps {
        ensure!(st.phase.is_terminal(), "step {name} is {:?}", st.phase);
        for (index, one) in st.instances.iter().flat_map(|i| &i.active) {
            ensure!(
                one.phase.is_terminal(),
                "instance {name}[{index}] is {:?}",
                one.phase
            );
        }
    }
    ensure!(
        served as u64 <= DEFAULT_MAX_STATUS_BYTES + 16 * 1024,
        "the status grew to {served} bytes"
    );
    let succeeded = fan.instances.as_ref().map_or(0, |i| i.succeeded);
    ensure!(
        (10..ITEMS as u32).contains(&succeeded),
        "{succeeded} instances succeeded: the budget should stop the fan-out midway"
    );

    worker.shutdown();
    drop(operator);
    ns.cleanup().await?;
    Ok(())
}

/// `n` signals named `flood-<i>`, as a status merge patch.
fn flood(n: usize) -> Value {
    let signals: serde_json::Map<String, Value> = (0..n)
        .map(|i| (format!("flood-{i}"), json!({"payload": i})))
        .collect();
    json!({"status": {"signals": signals}})
}

#[tokio::test]
async fn a_flood_of_signals_is_refused_at_admission() -> Result<()> {
    init_test_logs();
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("signal-flood").await?;
    let api: Api<FlowRun> = ns.api();
    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let worker = start_doubling_worker(&operator, ns.name());

    let run: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "gated"},
        "spec": {"pool": "pool", "steps": [
            {"name": "gate", "waitForSignal": {"name": "go"}},
            {"name": "double", "handler": "double", "dependsOn": ["gate"], "input": "${{ steps.gate.output }}"},
        ]}
    }))?;
    api.create(&PostParams::default(), &run).await?;
    wait_for(
        &api,
        "gated",
        |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref())
                .and_then(|s| s.steps.get("gate"))
                .is_some_and(|g| g.phase == StepPhase::Waiting)
        },
        WAIT,
        "step gate to wait for its signal",
    )
    .await?;

    let patch = |body: Value| {
        let api = api.clone();
        async move {
            api.patch_status("gated", &PatchParams::default(), &Patch::Merge(&body))
                .await
        }
    };
    let refused = |result: Result<FlowRun, kube::Error>, what: &str| -> Result<String> {
        match result {
            Err(kube::Error::Api(status)) if status.code == 422 => Ok(status.message),
            Err(e) => bail!("{what}: refused, but not as invalid: {e}"),
            Ok(_) => bail!("{what}: accepted"),
        }
    };

    let message = refused(patch(flood(MAX_SIGNALS + 1)).await, "one signal too many")?;
    eprintln!("{} signals at once: {message}", MAX_SIGNALS + 1);
    ensure!(
        message.contains("status.signals")
            && message.contains(&format!("must have at most {MAX_SIGNALS} items")),
        "the API server's message should name the field and the bound: {message}"
    );

    // Up to the bound is fine; one more, delivered on its own, is refused as well.
    patch(flood(MAX_SIGNALS - 1)).await?;
    let message = refused(
        patch(json!({"status": {"signals": {"one-more": {}, "and-another": {}}}})).await,
        "signals past the bound, one patch at a time",
    )?;
    ensure!(
        message.contains(&format!("must have at most {MAX_SIGNALS} items")),
        "{message}"
    );
    let long_name = "n".repeat(254);
    let message = refused(
        patch(json!({"status": {"signals": {long_name: {}}}})).await,
        "a signal name of 254 characters",
    )?;
    ensure!(
        message.contains("a signal name has at most 253 characters"),
        "{message}"
    );

    // The refused writes changed nothing: the run still waits, and the signal it waits for (the last the map
    // has room for) lets it finish.
    patch(json!({"status": {"signals": {"go": {"payload": {"n": 21}}}}})).await?;
    let done = wait_for(
        &api,
        "gated",
        |fr: Option<&FlowRun>| fr.and_then(phase).is_some_and(FlowPhase::is_terminal),
        WAIT,
        "FlowRun gated to end",
    )
    .await?;
    let status = done.status.context("no status")?;
    ensure!(
        status.phase == Some(FlowPhase::Succeeded),
        "the run should succeed: {:?}",
        status.conditions
    );
    ensure!(
        status.steps["double"].output == Some(json!({"n": 42})),
        "double: {:?}",
        status.steps["double"]
    );
    ensure!(status.signals.len() == MAX_SIGNALS);

    worker.shutdown();
    drop(operator);
    ns.cleanup().await?;
    Ok(())
}
