//! `make bench`: how fast flows run on the local control plane, against the raw speed of that API server.
//!
//! Every figure is measured in the same run as its baseline, so the ratios stay meaningful on any machine:
//! - **baseline**: status PATCHes per second the API server takes (sequential, and from 8 concurrent writers);
//! - **steps/s**: many small chain flows run by in-process SDK workers through the operator's FlowRun runtime
//!   (status writer, controller, broker over real HTTP on loopback), and its ratio to the concurrent PATCH rate
//!   (each step needs at least two status writes: its Ready attempt and its result);
//! - **dispatch latency**: from a step's handler returning to the next step's handler starting (the result is
//!   reported, persisted, the engine decides, the next attempt is persisted as Ready, queued, claimed), p50/p99.
//!
//! Sizes can be set with `SLUICE_BENCH_FLOWS` (default 40) and `SLUICE_BENCH_STEPS` (default 5).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::future::join_all;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice_e2e::{InProcessOperator, TestNamespace, cluster, install_crds, wait_for_list};
use sluice_operator::api::{FlowPhase, FlowRun};
use sluice_worker::{Config, StepContext, Worker};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Status PATCHes per second on one FlowRun object, from `writers` concurrent writers for `window`.
async fn patch_rate(api: &Api<FlowRun>, writers: usize, window: Duration) -> Result<f64> {
    let mut names = Vec::new();
    for i in 0..writers {
        let name = format!("baseline-{writers}-{i}");
        let fr: FlowRun = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": name, "annotations": {"sluice.dev/bench": "baseline"}},
            // A sleep far in the future: no operator runs in this phase, the object only takes writes.
            "spec": {"steps": [{"name": "idle", "sleep": "1000h"}]}
        }))?;
        api.create(&PostParams::default(), &fr).await?;
        names.push(name);
    }
    let start = Instant::now();
    let counts = join_all(names.iter().map(|name| async move {
        let mut n = 0u64;
        while start.elapsed() < window {
            let body = json!({"status": {"progress": format!("{n}")}});
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
                .await?;
            n += 1;
        }
        Ok::<_, kube::Error>(n)
    }))
    .await;
    let total: u64 = counts.into_iter().sum::<Result<u64, _>>()?;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

#[derive(Default)]
struct Timings {
    /// (flow, step index) → (handler start, handler end)
    spans: Mutex<HashMap<(String, usize), (Instant, Instant)>>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<()> {
    let flows = env_or("SLUICE_BENCH_FLOWS", 40);
    let steps = env_or("SLUICE_BENCH_STEPS", 5);
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("bench").await?;
    let api: Api<FlowRun> = ns.api();

    // Baseline first, with nothing else running.
    let window = Duration::from_secs(5);
    let seq_rate = patch_rate(&api, 1, window).await?;
    let conc_rate = patch_rate(&api, 8, window).await?;

    // The operator's FlowRun runtime and its broker, in this process, watching only this namespace.
    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let url = operator.broker_url().to_owned();

    let timings = Arc::new(Timings::default());
    let mut shutdowns = Vec::new();
    for w in 0..4 {
        let t = timings.clone();
        let worker = Worker::new(Config::new(
            &url,
            format!("{}/pool", ns.name()),
            format!("bench-{w}"),
        ))
        .concurrency(16)
        .handler("step", move |ctx: StepContext, input: Value| {
            let t = t.clone();
            async move {
                let start = Instant::now();
                let index = input["index"].as_u64().unwrap_or(0) as usize;
                let out = json!({"index": index});
                t.spans.lock().unwrap().insert(
                    (ctx.flow_run_name().to_owned(), index),
                    (start, Instant::now()),
                );
                Ok(out)
            }
        });
        shutdowns.push(worker.shutdown_handle());
        tokio::spawn(async move { worker.run_until(std::future::pending()).await });
    }

    let step_list: Vec<Value> = (0..steps)
        .map(|i| {
            let mut s = json!({"name": format!("s{i}"), "handler": "step", "input": {"index": i}});
            if i > 0 {
                s["dependsOn"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    let start = Instant::now();
    for f in 0..flows {
        let fr: FlowRun = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": format!("flow-{f}"), "labels": {"sluice.dev/bench": "flows"}},
            "spec": {"pool": "pool", "steps": step_list}
        }))?;
        api.create(&PostParams::default(), &fr).await?;
    }
    let done = wait_for_list(
        &api,
        kube::runtime::watcher::Config::default().labels("sluice.dev/bench=flows"),
        move |frs: &[FlowRun]| {
            frs.len() == flows
                && frs.iter().all(|fr| {
                    fr.status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .is_some_and(|p| p.is_terminal())
                })
        },
        Duration::from_secs(600),
        "every benchmark flow to finish",
    )
    .await?;
    let elapsed = start.elapsed();
    let failed = done
        .iter()
        .filter(|fr| fr.status.as_ref().and_then(|s| s.phase) != Some(FlowPhase::Succeeded))
        .count();
    if failed > 0 {
        bail!("{failed} benchmark flows did not succeed");
    }

    let spans = timings.spans.lock().unwrap().clone();
    let mut gaps: Vec<Duration> = Vec::new();
    for f in 0..flows {
        let name = format!("flow-{f}");
        for i in 1..steps {
            if let (Some((_, end)), Some((start, _))) = (
                spans.get(&(name.clone(), i - 1)),
                spans.get(&(name.clone(), i)),
            ) {
                gaps.push(start.saturating_duration_since(*end));
            }
        }
    }
    gaps.sort();
    let total_steps = flows * steps;
    let steps_per_s = total_steps as f64 / elapsed.as_secs_f64();

    println!(
        "sluice bench: {flows} flows x {steps} steps, 4 in-process workers x 16 slots, one API server"
    );
    println!("baseline  status PATCH, 1 writer         {seq_rate:>9.1} /s");
    println!("baseline  status PATCH, 8 writers        {conc_rate:>9.1} /s");
    println!(
        "flows     steps completed                 {steps_per_s:>9.1} /s   ({:.3} of the concurrent PATCH rate)",
        steps_per_s / conc_rate
    );
    println!(
        "dispatch  step-to-step latency p50        {:>9.1} ms  ({:.2} x one sequential PATCH)",
        percentile(&gaps, 50.0).as_secs_f64() * 1000.0,
        percentile(&gaps, 50.0).as_secs_f64() * seq_rate
    );
    println!(
        "dispatch  step-to-step latency p99        {:>9.1} ms  ({:.2} x one sequential PATCH)",
        percentile(&gaps, 99.0).as_secs_f64() * 1000.0,
        percentile(&gaps, 99.0).as_secs_f64() * seq_rate
    );
    println!(
        "(latency samples: {}; wall time {:.1} s)",
        gaps.len(),
        elapsed.as_secs_f64()
    );

    drop(operator);
    for s in shutdowns {
        s.shutdown();
    }
    ns.cleanup().await?;
    Ok(())
}
