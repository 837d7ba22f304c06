//! `make bench-scale`: what live FlowRuns cost the operator, and whether it stays quick with many of them.
//!
//! The release `sluice-operator run` runs as a process of its own (its memory is what we measure), watching
//! one namespace; four in-process SDK workers with 16 slots each run the handlers, which return at once.
//! `SLUICE_SCALE_RUNS` (10,000) idle FlowRuns each wait for a signal `go`, then run one task step. Phases:
//! - **baseline**: status PATCHes per second the API server takes from 8 writers, before the operator starts;
//! - **memory**: the operator's RSS with no runs, once every idle run is loaded (each one waiting for its
//!   signal), and after a restart with all of them present; per run = (loaded − empty) / N. Each is read
//!   [`SETTLE`] after the phase ends, so the lanes of the last runs have ended and the allocator has handed
//!   back what the burst freed; the peak is printed too;
//! - **latency**: a fresh chain of 20 steps, handler start to the next step's handler start, p50, with no idle
//!   runs and with N idle runs present (the ratio of the two is the figure);
//! - **restart**: SIGKILL, one new FlowRun created while the operator is down, start again: the time from the
//!   process start to that run's first handler starting;
//! - **signals**: all N runs signalled at once (32 concurrent PATCHes, as users would send them): the time
//!   until every one Succeeded, runs per second against the baseline PATCH rate, and how many task steps ran
//!   more than once (must be none).
//!
//! Prints one table and writes it as JSON to `target/bench/scale.json`.

use std::collections::HashSet;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt, stream};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use sluice_e2e::{
    OperatorProcess, TestNamespace, build_release_operator, cluster, install_crds, repo_root,
};
use sluice_operator::api::{FlowPhase, FlowRun, StepPhase};

mod common;
use common::{Timings, chain, env_or, ms, patch_rate, percentile, start_workers};

/// Concurrent requests the benchmark itself sends when it creates or signals the idle runs.
const CLIENT_CONCURRENCY: usize = 32;

/// How long after a burst the memory figures are read: a status writer lane ends 10 s after its last work.
const SETTLE: Duration = Duration::from_secs(15);

/// The operator's resident memory and its peak, in KiB, from /proc. Zero when the operator runs under a
/// wrapper (`SLUICE_E2E_OPERATOR_WRAPPER`, e.g. a heap profiler): the pid is the wrapper's then.
fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    if std::env::var_os("SLUICE_E2E_OPERATOR_WRAPPER").is_some() {
        return Ok((0, 0));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the status of process {pid}"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .with_context(|| format!("{name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// The operator's allocator figures from its `/metrics`, in KiB: bytes allocated (live data), active (pages
/// holding live data, so with the free slots between it) and resident (with the free pages the allocator
/// keeps). They tell what RSS is made of.
async fn heap_kib(operator: &OperatorProcess) -> Result<(u64, u64, u64)> {
    let text = operator.metrics().await?;
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|bytes| bytes / 1024)
            .with_context(|| format!("{name} in the operator's /metrics"))
    };
    Ok((
        gauge("sluice_heap_allocated_bytes")?,
        gauge("sluice_heap_active_bytes")?,
        gauge("sluice_heap_resident_bytes")?,
    ))
}

fn heap_mib((allocated, active, resident): (u64, u64, u64)) -> String {
    format!(
        "{:.1} / {:.1} / {:.1}",
        mib(allocated),
        mib(active),
        mib(resident)
    )
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn idle_run(i: usize) -> Result<FlowRun> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": format!("idle-{i}"), "labels": {"sluice.dev/bench": "idle"}},
        "spec": {"pool": "pool", "steps": [
            {"name": "wait", "waitForSignal": {"name": "go"}},
            {"name": "after", "dependsOn": ["wait"], "handler": "step", "input": {"key": "after"}}
        ]}
    }))?)
}

/// Watches the FlowRuns labelled `sluice.dev/bench=label` until `n` of them satisfy `pred`. Keeps only their
/// names, so it stays cheap with tens of thousands of objects.
async fn wait_count(
    api: &Api<FlowRun>,
    label: &str,
    pred: impl Fn(&FlowRun) -> bool,
    n: usize,
    timeout: Duration,
    what: &str,
) -> Result<()> {
    let config = watcher::Config::default().labels(&format!("sluice.dev/bench={label}"));
    let mut events = pin!(watcher::watcher(api.clone(), config).default_backoff());
    let mut matching: HashSet<String> = HashSet::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let event = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(event)) => event?,
            Ok(None) => bail!("the watch for {what} ended"),
            Err(_) => bail!(
                "timed out after {timeout:?} waiting for {what}: {} of {n}",
                matching.len()
            ),
        };
        match event {
            Event::Apply(fr) | Event::InitApply(fr) => {
                let name = fr.metadata.name.clone().unwrap_or_default();
                if pred(&fr) {
                    matching.insert(name);
                } else {
                    matching.remove(&name);
                }
            }
            Event::Delete(fr) => {
                matching.remove(&fr.metadata.name.clone().unwrap_or_default());
            }
            Event::Init => matching.clear(),
            Event::InitDone => {}
        }
        if matching.len() >= n {
            return Ok(());
        }
    }
}

fn step_phase(fr: &FlowRun, step: &str) -> Option<StepPhase> {
    fr.status.as_ref()?.steps.get(step).map(|s| s.phase)
}

fn succeeded(fr: &FlowRun) -> bool {
    fr.status.as_ref().and_then(|s| s.phase) == Some(FlowPhase::Succeeded)
}

/// Runs `chains` fresh chains of 20 steps one after another (`prefix-0..`) and returns the handler
/// start-to-start gaps.
async fn chain_latency(
    api: &Api<FlowRun>,
    timings: &Timings,
    prefix: &str,
    chains: usize,
) -> Result<Vec<Duration>> {
    for fr in chain(prefix, chains, 20, prefix, false)? {
        let name = fr.metadata.name.clone().unwrap_or_default();
        let seen = timings.count_prefix(prefix);
        api.create(&PostParams::default(), &fr).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while timings.count_prefix(prefix) < seen + 20 {
            ensure!(
                Instant::now() < deadline,
                "{name}: only {} of 20 steps ran within 120 s",
                timings.count_prefix(prefix) - seen
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    wait_count(
        api,
        prefix,
        succeeded,
        chains,
        Duration::from_secs(120),
        &format!("the {prefix} chains to succeed"),
    )
    .await?;
    Ok(timings.chain_gaps(prefix, chains, 20))
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let n = env_or("SLUICE_SCALE_RUNS", 10_000);
    let chains = 2;
    let client = cluster().await?;
    install_crds(&client).await?;
    let bin = build_release_operator().await?;
    let ns = TestNamespace::new("scale").await?;
    let api: Api<FlowRun> = ns.api();

    let patch_rate_8 = patch_rate(&api, 8, Duration::from_secs(5)).await?;

    let mut operator = OperatorProcess::start_binary_trusting_workers(bin, &ns).await?;
    let timings = Arc::new(Timings::default());
    let workers = start_workers(
        &operator.broker_url(),
        &format!("{}/pool", ns.name()),
        4,
        16,
        &timings,
    );

    // With no idle runs.
    let gaps_empty = chain_latency(&api, &timings, "fresh-empty", chains).await?;
    let (rss_empty, _) = memory_kib(operator_pid(&operator)?)?;
    let heap_empty = heap_kib(&operator).await?;

    // N idle runs, each waiting for its signal.
    let started = Instant::now();
    stream::iter((0..n).map(idle_run))
        .map(|fr| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &fr?)
                    .await
                    .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(CLIENT_CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await
        .context("creating the idle runs")?;
    let created_in = started.elapsed();
    wait_count(
        &api,
        "idle",
        |fr| step_phase(fr, "wait") == Some(StepPhase::Waiting),
        n,
        Duration::from_secs(900),
        "every idle run to wait for its signal",
    )
    .await?;
    let loaded_in = started.elapsed();
    let (rss_loaded_now, _) = memory_kib(operator_pid(&operator)?)?;
    tokio::time::sleep(SETTLE).await;
    let (rss_loaded, _) = memory_kib(operator_pid(&operator)?)?;
    let heap_loaded = heap_kib(&operator).await?;

    let gaps_loaded = chain_latency(&api, &timings, "fresh-loaded", chains).await?;

    // Restart: killed, one run created meanwhile, started again.
    operator.kill().await?;
    api.create(
        &PostParams::default(),
        &chain("restart", 1, 1, "restart", false)?.remove(0),
    )
    .await?;
    let restarted = Instant::now();
    operator.crash_and_restart().await?;
    let deadline = restarted + Duration::from_secs(300);
    let first_dispatch = loop {
        if let Some(span) = timings.of("restart-0").first() {
            break span.start.duration_since(restarted);
        }
        ensure!(
            Instant::now() < deadline,
            "no task was dispatched within 300 s of the restart; operator log:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    operator.wait_ready(Duration::from_secs(300)).await?;
    let gaps_restarted = chain_latency(&api, &timings, "fresh-restarted", chains).await?;
    let (rss_restarted_now, _) = memory_kib(operator_pid(&operator)?)?;
    tokio::time::sleep(SETTLE).await;
    let (rss_restarted, _) = memory_kib(operator_pid(&operator)?)?;
    let heap_restarted = heap_kib(&operator).await?;

    // Every idle run signalled at once.
    let signalled = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let body = json!({"status": {"signals": {"go": {"payload": {"i": i}}}}});
                api.patch_status(
                    &format!("idle-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(&body),
                )
                .await
                .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(CLIENT_CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await
        .context("signalling the idle runs")?;
    let sent_in = signalled.elapsed();
    wait_count(
        &api,
        "idle",
        succeeded,
        n,
        Duration::from_secs(1800),
        "every signalled run to succeed",
    )
    .await?;
    let finished_in = signalled.elapsed();
    let ran = timings.count_prefix("idle");
    let repeated = timings.repeated_prefix("idle");
    let same_attempt = timings.same_attempt_repeated_prefix("idle");
    let (rss_end, rss_peak) = memory_kib(operator_pid(&operator)?)?;

    let p50 = |gaps: &[Duration]| ms(percentile(gaps, 50.0));
    let per_run_kib = (rss_loaded.saturating_sub(rss_empty)) as f64 / n as f64;
    let per_run_restarted_kib = (rss_restarted.saturating_sub(rss_empty)) as f64 / n as f64;
    let signal_rate = n as f64 / finished_in.as_secs_f64();
    println!(
        "sluice scale bench: release operator process, {n} idle runs, 4 in-process workers x 16 slots"
    );
    println!("| phase | figure | value | ratio |");
    println!("|---|---|---|---|");
    println!("| baseline | status PATCH, 8 writers | {patch_rate_8:.1}/s | 1 |");
    println!(
        "| load | {n} runs created / all waiting for their signal | {:.1} s / {:.1} s | {:.1} runs/s |",
        created_in.as_secs_f64(),
        loaded_in.as_secs_f64(),
        n as f64 / loaded_in.as_secs_f64()
    );
    println!(
        "| memory | operator RSS, settled: empty / {n} loaded / after restart / end (peak) | {:.1} / {:.1} / {:.1} / {:.1} ({:.1}) MiB | {per_run_kib:.2} KiB per run loaded, {per_run_restarted_kib:.2} after restart |",
        mib(rss_empty),
        mib(rss_loaded),
        mib(rss_restarted),
        mib(rss_end),
        mib(rss_peak)
    );
    println!(
        "| memory | operator RSS right after loading / after the restart's first chains | {:.1} / {:.1} MiB | |",
        mib(rss_loaded_now),
        mib(rss_restarted_now)
    );
    println!(
        "| memory | heap allocated / active / resident, settled: empty; loaded; after restart | {}; {}; {} MiB | |",
        heap_mib(heap_empty),
        heap_mib(heap_loaded),
        heap_mib(heap_restarted)
    );
    println!(
        "| latency | fresh chain p50: none idle / {n} idle / {n} after restart | {:.1} / {:.1} / {:.1} ms | {:.2} / {:.2} |",
        p50(&gaps_empty),
        p50(&gaps_loaded),
        p50(&gaps_restarted),
        p50(&gaps_loaded) / p50(&gaps_empty).max(1e-3),
        p50(&gaps_restarted) / p50(&gaps_empty).max(1e-3)
    );
    println!(
        "| restart | process start to first task dispatched, {n} runs present | {:.0} ms | |",
        ms(first_dispatch)
    );
    println!(
        "| signals | {n} signalled (sent in {:.1} s) until all Succeeded | {:.1} s, {signal_rate:.1} runs/s | {:.3} of the PATCH rate; {ran} task steps ran, {repeated} more than once ({same_attempt} of them one attempt twice) |",
        sent_in.as_secs_f64(),
        finished_in.as_secs_f64(),
        signal_rate / patch_rate_8
    );
    let report = json!({
        "runs": n,
        "baseline": {"patchPerSecond8Writers": patch_rate_8},
        "load": {"createdSeconds": created_in.as_secs_f64(), "waitingSeconds": loaded_in.as_secs_f64()},
        "memory": {"rssEmptyKiB": rss_empty, "rssLoadedKiB": rss_loaded, "rssRestartedKiB": rss_restarted,
                   "rssLoadedUnsettledKiB": rss_loaded_now, "rssRestartedUnsettledKiB": rss_restarted_now,
                   "rssEndKiB": rss_end, "rssPeakKiB": rss_peak,
                   "heapAllocatedKiB": {"empty": heap_empty.0, "loaded": heap_loaded.0,
                                        "restarted": heap_restarted.0},
                   "heapActiveKiB": {"empty": heap_empty.1, "loaded": heap_loaded.1,
                                     "restarted": heap_restarted.1},
                   "heapResidentKiB": {"empty": heap_empty.2, "loaded": heap_loaded.2,
                                       "restarted": heap_restarted.2},
                   "perRunKiB": per_run_kib, "perRunAfterRestartKiB": per_run_restarted_kib},
        "latency": {"p50EmptyMs": p50(&gaps_empty), "p50LoadedMs": p50(&gaps_loaded),
                    "p50RestartedMs": p50(&gaps_restarted)},
        "restart": {"firstDispatchMs": ms(first_dispatch)},
        "signals": {"sentSeconds": sent_in.as_secs_f64(), "allSucceededSeconds": finished_in.as_secs_f64(),
                    "runsPerSecond": signal_rate, "ratio": signal_rate / patch_rate_8,
                    "taskStepsRan": ran, "ranMoreThanOnce": repeated,
                    "sameAttemptMoreThanOnce": same_attempt},
    });
    let dir = repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("scale.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("(written to target/bench/scale.json)");
    ensure!(ran == n, "{} of {n} signalled runs' task steps ran", ran);
    ensure!(
        repeated == 0,
        "{repeated} task steps ran more than once ({same_attempt} of them one attempt twice)"
    );

    operator.stop().await?;
    for w in workers {
        w.shutdown();
    }
    ns.cleanup().await?;
    Ok(())
}

fn operator_pid(operator: &OperatorProcess) -> Result<u32> {
    operator.pid().context("the operator is not running")
}
