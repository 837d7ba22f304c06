//! Finished runs cleaned up, on the real API server and garbage collector: a FlowRun with
//! `spec.ttlSecondsAfterFinished` is deleted that long after it finished, and its child FlowRun goes with it
//! (the garbage collector follows the child's owner reference); a run without one, finished at the same time,
//! stays, and so does its child, whatever TTL the child's own spec names. The operator runs in this test
//! process and a worker on the Rust SDK serves the handler, as in `flowrun.rs`.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use sluice_e2e::{
    InProcessOperator, TestNamespace, cluster, init_test_logs, install_crds, start_doubling_worker,
    wait_deleted, wait_for,
};
use sluice_operator::api::{FlowPhase, FlowRun};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(90);
/// The time to live of the expiring run.
const TTL_SECONDS: i64 = 5;
/// The bound of the issue: from finishing to the run and its child being gone.
const GONE_WITHIN: Duration = Duration::from_secs(10);

/// A run whose only step is a child flow of one handler step; `ttl` is the run's, `child_ttl` the child
/// spec's.
fn parent(name: &str, ttl: Option<i64>, child_ttl: Option<i64>) -> Result<FlowRun> {
    let mut child = json!({"steps": [{"name": "inner", "handler": "double", "input": {"n": 21}}]});
    if let Some(t) = child_ttl {
        child["ttlSecondsAfterFinished"] = json!(t);
    }
    let mut manifest = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": name},
        "spec": {"pool": "pool", "steps": [{"name": "sub", "flow": {"spec": child}}]}
    });
    if let Some(t) = ttl {
        manifest["spec"]["ttlSecondsAfterFinished"] = json!(t);
    }
    Ok(serde_json::from_value(manifest)?)
}

async fn wait_succeeded(api: &Api<FlowRun>, name: &str) -> Result<FlowRun> {
    Ok(wait_for(
        api,
        name,
        |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref()).and_then(|s| s.phase) == Some(FlowPhase::Succeeded)
        },
        WAIT,
        &format!("FlowRun {name} to succeed"),
    )
    .await?)
}

fn finished_at(fr: &FlowRun) -> Result<Timestamp> {
    fr.status
        .as_ref()
        .and_then(|s| s.finished_at.as_ref())
        .map(|t| t.0)
        .with_context(|| format!("FlowRun {} succeeded without finishedAt", fr.name_any()))
}

/// Wall-clock time from `t` to now (zero if `t` is in the future).
fn since(t: Timestamp) -> Duration {
    Duration::try_from(Timestamp::now().duration_since(t)).unwrap_or(Duration::ZERO)
}

/// Makes sure the garbage collector handles FlowRuns before anything is measured: it discovers resources every
/// 30 s, so right after the CRDs were first installed on a fresh cluster the dependents of a deleted FlowRun
/// would wait for that, which is not what this test measures. Runs before the operator starts, so nothing
/// reconciles the probes.
async fn garbage_collector_handles_flowruns(api: &Api<FlowRun>) -> Result<()> {
    let probe = |name: &str| parent(name, None, None);
    let owner = api
        .create(&PostParams::default(), &probe("gc-probe-owner")?)
        .await?;
    let mut dependent = probe("gc-probe-dependent")?;
    dependent.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "sluice.dev/v1alpha1".into(),
        kind: "FlowRun".into(),
        name: owner.name_any(),
        uid: owner.uid().unwrap_or_default(),
        ..OwnerReference::default()
    }]);
    api.create(&PostParams::default(), &dependent).await?;
    api.delete("gc-probe-owner", &DeleteParams::background())
        .await?;
    wait_deleted(
        api,
        "gc-probe-dependent",
        Duration::from_secs(90),
        "the garbage collector to delete a FlowRun whose owner FlowRun was deleted (before the test proper)",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_finished_run_goes_with_its_child_after_its_ttl_and_a_run_without_one_stays() -> Result<()>
{
    // Operator and worker logs go to the test's captured output, shown when the test fails.
    init_test_logs();
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("ttl").await?;
    let api: Api<FlowRun> = ns.api();
    garbage_collector_handles_flowruns(&api).await?;
    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let worker = start_doubling_worker(&operator, ns.name());

    // Created together, so they finish together. The kept run's child names a TTL of 0: children are never
    // deleted on their own (a child gone before its parent recorded its end would run again).
    api.create(
        &PostParams::default(),
        &parent("expiring", Some(TTL_SECONDS), None)?,
    )
    .await?;
    api.create(&PostParams::default(), &parent("kept", None, Some(0))?)
        .await?;
    let expiring = wait_succeeded(&api, "expiring").await?;
    // finishedAt is read against the monotonic clock once, right after the run finished, and everything after
    // is measured from there: a step of the wall clock meanwhile (seen on test machines) skews nothing.
    // finishedAt is recorded to the second, rounded down, so the times measured are at most 1 s longer than
    // the true ones, never shorter.
    let finished = finished_at(&expiring)?;
    let finished_mono = Instant::now()
        .checked_sub(since(finished))
        .context("the monotonic clock started after the run finished")?;
    let kept = wait_succeeded(&api, "kept").await?;
    let kept_finished = finished_at(&kept)?;
    ensure!(
        kept_finished <= finished + SignedDuration::from_secs(2),
        "the run without a TTL finished at {kept_finished}, too long after the other ({finished}) for its \
         survival to show anything"
    );

    let deadline = finished_mono + GONE_WITHIN;
    for name in ["expiring", "expiring-sub"] {
        let left = deadline.saturating_duration_since(Instant::now());
        wait_deleted(
            &api,
            name,
            left,
            &format!("FlowRun {name} to be deleted within {GONE_WITHIN:?} of the run finishing"),
        )
        .await
        .with_context(|| {
            format!(
                "FlowRun {name} still exists {:.1?} after the run finished at {finished} \
                 (ttlSecondsAfterFinished {TTL_SECONDS})",
                finished_mono.elapsed()
            )
        })?;
        eprintln!(
            "FlowRun {name} gone {:.1?} after the run finished",
            finished_mono.elapsed()
        );
    }
    let gone_after = finished_mono.elapsed();
    ensure!(
        gone_after >= Duration::from_secs(TTL_SECONDS.unsigned_abs()),
        "deleted {gone_after:.1?} after it finished, before its TTL of {TTL_SECONDS} s"
    );

    // The run without a TTL, which finished at the same time, and its child stay: checked 2 s after the other
    // run was gone, when a TTL of 5 s would long have expired for it too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for name in ["kept", "kept-sub"] {
        let fr = api.get_opt(name).await?.with_context(|| {
            format!(
                "FlowRun {name} (no TTL of its own, or a child) was deleted; it finished at {kept_finished}"
            )
        })?;
        ensure!(
            fr.metadata.deletion_timestamp.is_none(),
            "FlowRun {name} is being deleted"
        );
    }

    let metrics = operator.metrics().encode();
    ensure!(
        metrics.contains("sluice_flowruns_deleted_total 1\n"),
        "one deletion counted: {}",
        metrics
            .lines()
            .filter(|l| l.contains("flowruns_deleted"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    worker.shutdown();
    drop(operator);
    ns.cleanup().await?;
    Ok(())
}
