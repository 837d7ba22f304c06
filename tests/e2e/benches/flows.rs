//! `make bench`: how fast flows run on the local control plane, against the raw speed of that API server.
//!
//! Every figure is measured in the same run as its baseline, so the ratios stay meaningful on any machine. The
//! operator (status writer, controller, broker over real HTTP on loopback) runs in this process through the
//! same wiring as `sluice-operator run`; four in-process SDK workers with 16 slots each run the handlers, which
//! return at once. Phases, one after the other, each run `SLUICE_BENCH_ROUNDS` (9) times:
//! - **baseline**: status PATCHes per second the API server takes (1 writer, and 8 concurrent writers), and
//!   the PATCH rate of a realistic 20-step run, with and without its field owners; and how far the 8-writer
//!   rate moved between the rounds below (over 1.2x, the machine itself was not steady during the run);
//! - **latency**: 1 flow, then 4 flows, of 20 chained steps: from a handler starting to the next step's handler
//!   starting (result reported, persisted, next attempt decided and persisted, handed to a worker), p50/p99
//!   over every round's gaps; before and after each phase, the API server's part of it: the same number of
//!   20-step runs written at once for two seconds by bare status writes as the operator makes them (no
//!   operator, broker or worker), and the step's p50 as a multiple of that write's p50;
//! - **throughput**: `SLUICE_BENCH_FLOWS` (40) chains of `SLUICE_BENCH_STEPS` (5) steps, every chain's first
//!   handler held at a gate in the workers until all of them run (so the creates and each run's first write
//!   are outside the window, and every chain is in flight when it opens); steps/s from the gate opening to
//!   the last step starting, and its ratio to the 8-writer PATCH rate measured just before that round (a
//!   chain step needs at least one status write); the median round;
//! - **fan-out**: one forEach of `SLUICE_BENCH_FANOUT` (1,000) instances a round: instances/s and its ratio to
//!   the PATCH rate measured just before (many instance results share one write); the median round;
//! - **cost**: the operator's own API requests per step during the throughput phase (PUT, PATCH, GET, other),
//!   counted by its client, and how many of the writes were status writes (a PUT each) and how many cleared a
//!   run's field owners (a PATCH each); and the CPU time a step costs the API server (when the cluster is the
//!   local control plane, whose process this can see) and this process (operator and workers), over the
//!   latency phases and over the throughput phase's windows: where a step's time goes. On a shared machine it
//!   moves with the machine's load too (the API server's from about 3 to 7 ms a step between runs of one
//!   build), so two commits are compared by alternated runs.
//!
//! Prints one table and writes it as JSON to `target/bench/flows.json` for comparison across commits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use kube::api::{DeleteParams, ListParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Resource as _};
use serde_json::{Value, json};
use sluice_e2e::{
    InProcessOperator, TestNamespace, cluster, install_crds, kubeconfig_path, repo_root,
    wait_for_list,
};
use sluice_operator::api::{FlowPhase, FlowRun};
use sluice_operator::flowrun::writer::METADATA_PREFERRED;

mod common;

// The operator runs in this process: it allocates as the `sluice-operator` binary does. With the system
// allocator, malloc and free were about a quarter of this process's CPU (operator and workers together), which
// the API server sharing the machine lost.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use common::{CpuClock, Timings, chain, env_or, median, ms, patch_rate, percentile, start_workers};

/// Sequential status PATCHes per second on a FlowRun shaped like the latency phase's runs: 20 steps in the
/// spec, a status with 20 step entries and the four conditions, each PATCH changing one step and the
/// progress, written with a field manager as the operator writes. The API server's cost for the objects the
/// benchmark really writes, next to the raw rate on a small object. With `clear_owners`, the run's
/// `managedFields` are cleared first, as the operator does before a run's first status write.
async fn realistic_patch_rate(
    api: &Api<FlowRun>,
    window: Duration,
    clear_owners: bool,
) -> Result<f64> {
    let name = if clear_owners {
        "baseline-cleared"
    } else {
        "baseline-realistic"
    };
    let steps: Vec<Value> = (0..20)
        .map(|i| json!({"name": format!("s{i}"), "sleep": "1000h"}))
        .collect();
    let fr: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": name, "annotations": {"sluice.dev/bench": "baseline"}},
        "spec": {"steps": steps}
    }))?;
    api.create(&PostParams::default(), &fr).await?;
    let params = PatchParams::apply("sluice-bench");
    let initial = json!({"status": twenty_step_status()});
    if clear_owners {
        let clear = json!({"metadata": {"managedFields": [{}]}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&clear))
            .await?;
    }
    api.patch_status(name, &params, &Patch::Merge(&initial))
        .await?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < window {
        let body = json!({"status": {"progress": format!("{n}/20"),
                                     "steps": {format!("s{}", n % 20): {"attempts": n + 2}}}});
        api.patch_status(name, &params, &Patch::Merge(&body))
            .await?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// A status like a running 20-step chain's: 20 Succeeded step entries (`s0`..`s19`) and the four conditions.
fn twenty_step_status() -> Value {
    let now = "2026-01-01T00:00:00Z";
    let entries: serde_json::Map<String, Value> = (0..20)
        .map(|i| {
            (
                format!("s{i}"),
                json!({"phase": "Succeeded", "attempts": 1, "output": {"ok": true},
                       "startedAt": now, "finishedAt": now, "worker": "bench-0"}),
            )
        })
        .collect();
    let conditions: Vec<Value> = ["Ready", "Succeeded", "Invalid", "Suspended"]
        .iter()
        .map(|t| {
            json!({"type": t, "status": "False", "reason": "Running", "message": "0/20",
                        "lastTransitionTime": now, "observedGeneration": 1})
        })
        .collect();
    json!({"phase": "Running", "steps": entries, "conditions": conditions})
}

/// Status writes as the operator's status writer makes them, with no operator, worker or handler involved:
/// `writers` runs with the latency phase's spec (`bare{writers}-N` in the baseline's `namespace`, field owners
/// cleared), each written by its own task, one write after another, for `window`. A write replaces the whole
/// status (a PUT of the status subresource fenced by the resourceVersion the previous write was answered
/// with, asking for the metadata-only answer) and changes one step entry and the progress. What each write
/// took is the API server's part of a chain step at that concurrency: a step is one such write plus the
/// operator's, the broker's and the worker's work. Back to back, each write also meets what the one before
/// left the API server to do (dispatching its watch event, collecting its garbage), which a chain's writes,
/// spaced by that work, partly miss: a step can come close to it, and on a busy machine below it.
async fn bare_status_writes(
    api: &Api<FlowRun>,
    namespace: &str,
    writers: usize,
    window: Duration,
) -> Result<Vec<Duration>> {
    let label = format!("bare{writers}");
    let mut tasks = Vec::new();
    for fr in chain(&label, writers, 20, &label, false)? {
        let name = fr.metadata.name.clone().unwrap_or_default();
        // Measured before and after each latency phase: the runs of an earlier call are written again.
        match api.create(&PostParams::default(), &fr).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let clear = json!({"metadata": {"managedFields": [{}]}});
        let cleared = api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&clear))
            .await?;
        let client = api.clone().into_client();
        let (namespace, version) = (namespace.to_owned(), cleared.metadata.resource_version);
        tasks.push(tokio::spawn(write_one_run(
            client, namespace, name, version, window,
        )));
    }
    let mut took = Vec::new();
    for task in tasks {
        took.extend(task.await??);
    }
    took.sort();
    Ok(took)
}

/// One writer of [`bare_status_writes`]: how long each of its writes took.
async fn write_one_run(
    client: kube::Client,
    namespace: String,
    name: String,
    mut version: Option<String>,
    window: Duration,
) -> Result<Vec<Duration>> {
    let mut status = twenty_step_status();
    let params = PostParams {
        dry_run: false,
        field_manager: Some("sluice-bench".into()),
    };
    let mut took = Vec::new();
    let start = Instant::now();
    for n in 0u64.. {
        if start.elapsed() >= window {
            break;
        }
        status["progress"] = json!(format!("{}/20", n % 20));
        status["steps"][format!("s{}", n % 20)]["attempts"] = json!(n + 2);
        let body = json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": version},
            "status": status,
        });
        let mut request = kube::core::Request::new(FlowRun::url_path(&(), Some(&namespace)))
            .replace_subresource("status", &name, &params, serde_json::to_vec(&body)?)?;
        request.headers_mut().insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static(METADATA_PREFERRED),
        );
        let sent = Instant::now();
        let answer: PartialObjectMeta<FlowRun> = client.request(request).await?;
        took.push(sent.elapsed());
        version = answer.metadata.resource_version;
    }
    Ok(took)
}

/// (sum, count) of a histogram in the Prometheus text the operator serves.
fn histogram(metrics: &str, name: &str) -> (f64, f64) {
    let value = |suffix: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("sum"), value("count"))
}

/// The bucket bound (ms) under which half of a histogram's observations between two snapshots fall.
fn median_bound_ms(before: &str, after: &str, name: &str) -> f64 {
    let buckets = |text: &str| -> Vec<(f64, f64)> {
        text.lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect()
    };
    let (b0, b1) = (buckets(before), buckets(after));
    let total = b1.last().map_or(0.0, |(_, c)| *c) - b0.last().map_or(0.0, |(_, c)| *c);
    b1.iter()
        .zip(b0.iter().map(|(_, c)| *c).chain(std::iter::repeat(0.0)))
        .find(|((_, c1), c0)| c1 - c0 >= total / 2.0)
        .map_or(0.0, |((le, _), _)| le * 1000.0)
}

/// Mean of a histogram's observations between two snapshots, in ms.
fn mean_ms(before: &str, after: &str, name: &str) -> f64 {
    let (s0, c0) = histogram(before, name);
    let (s1, c1) = histogram(after, name);
    if c1 > c0 {
        (s1 - s0) / (c1 - c0) * 1000.0
    } else {
        0.0
    }
}

/// Creates `runs`, waits until `handlers` handler runs were seen, then until every run Succeeded; returns
/// when the last create returned.
async fn run_all(
    api: &Api<FlowRun>,
    timings: &Timings,
    runs: Vec<FlowRun>,
    label: &str,
    handlers: usize,
) -> Result<Instant> {
    let seen_before = timings.count_prefix(label);
    let n = runs.len();
    for fr in &runs {
        api.create(&PostParams::default(), fr).await?;
    }
    let created = Instant::now();
    finish(api, timings, label, n, seen_before + handlers).await?;
    Ok(created)
}

/// Waits until `handlers` handler runs of the `label` flows were seen, then until all `n` of them Succeeded.
/// The wait for the handlers is in memory, so the benchmark adds no watch of its own to the API server while
/// the flows run (the watch starts once the last handler ran).
async fn finish(
    api: &Api<FlowRun>,
    timings: &Timings,
    label: &str,
    n: usize,
    handlers: usize,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while timings.count_prefix(label) < handlers {
        if Instant::now() > deadline {
            bail!(
                "only {} of {handlers} {label} handlers ran within 600 s",
                timings.count_prefix(label)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = wait_for_list(
        api,
        kube::runtime::watcher::Config::default().labels(&format!("sluice.dev/bench={label}")),
        move |frs: &[FlowRun]| {
            frs.len() == n
                && frs.iter().all(|fr| {
                    fr.status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .is_some_and(|p| p.is_terminal())
                })
        },
        Duration::from_secs(600),
        &format!("every {label} flow to finish"),
    )
    .await?;
    let failed = done
        .iter()
        .filter(|fr| fr.status.as_ref().and_then(|s| s.phase) != Some(FlowPhase::Succeeded))
        .count();
    if failed > 0 {
        bail!("{failed} {label} flows did not succeed");
    }
    Ok(())
}

/// Deletes the runs labelled `sluice.dev/bench=label` and waits until they are gone, so that no round measures
/// while the API server still deletes an earlier one's objects.
async fn delete_round(api: &Api<FlowRun>, label: &str) -> Result<()> {
    let selector = format!("sluice.dev/bench={label}");
    api.delete_collection(
        &DeleteParams::background(),
        &ListParams::default().labels(&selector),
    )
    .await?;
    wait_for_list(
        api,
        kube::runtime::watcher::Config::default().labels(&selector),
        |frs: &[FlowRun]| frs.is_empty(),
        Duration::from_secs(120),
        &format!("the {label} runs to be deleted"),
    )
    .await?;
    Ok(())
}

/// Seconds since the Unix epoch, to line a round up with other records of the machine.
fn epoch_seconds() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:.1}", since.as_secs_f64())
}

/// A counter's value in the Prometheus text the operator serves (0 when it is not there).
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[derive(serde::Serialize)]
struct Latency {
    flows: usize,
    steps: usize,
    rounds: usize,
    p50_ms: f64,
    p99_ms: f64,
    samples: usize,
    /// Mean status write round trip in the phase.
    write_mean_ms: f64,
    /// The histogram bucket bound under which half of the phase's status writes took.
    write_median_bound_ms: f64,
    /// Mean wait of an attempt in the broker's queue, from being queued to being claimed.
    queue_wait_mean_ms: f64,
    /// CPU each step cost, over the phase's rounds (creates and deletes included).
    cpu: CpuPerStep,
    /// Bare status writes of 20-step runs at the same concurrency, before and after the phase (p50, p99, mean).
    bare_write_p50_ms: f64,
    bare_write_p99_ms: f64,
    bare_write_mean_ms: f64,
    bare_writes: usize,
    /// `p50_ms` over `bare_write_p50_ms`: how many bare writes' time a step takes.
    p50_over_bare_write: f64,
}

/// CPU time per step: the API server's process (the local control plane only) and this one (the operator
/// and its workers).
#[derive(serde::Serialize, Default, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct CpuPerStep {
    api_server_ms: Option<f64>,
    operator_ms: Option<f64>,
}

/// The two processes' CPU clocks, read together.
struct CpuClocks {
    api_server: Option<CpuClock>,
    operator: Option<CpuClock>,
}

/// CPU time used so far by each process that has a clock.
#[derive(Clone, Copy)]
struct CpuReading {
    api_server: Option<Duration>,
    operator: Option<Duration>,
}

impl CpuClocks {
    fn read(&self) -> CpuReading {
        CpuReading {
            api_server: self.api_server.as_ref().and_then(CpuClock::read),
            operator: self.operator.as_ref().and_then(CpuClock::read),
        }
    }
}

impl CpuReading {
    /// What each process used from `self` to `later`, added to `total`.
    fn add_until(&self, later: &CpuReading, total: &mut CpuReading) {
        let add = |sum: &mut Option<Duration>, a: Option<Duration>, b: Option<Duration>| {
            *sum = match (*sum, a, b) {
                (Some(sum), Some(a), Some(b)) => Some(sum + b.saturating_sub(a)),
                _ => None,
            }
        };
        add(&mut total.api_server, self.api_server, later.api_server);
        add(&mut total.operator, self.operator, later.operator);
    }

    fn zero() -> Self {
        Self {
            api_server: Some(Duration::ZERO),
            operator: Some(Duration::ZERO),
        }
    }

    fn per_step(&self, steps: usize) -> CpuPerStep {
        let per = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0 / steps.max(1) as f64);
        CpuPerStep {
            api_server_ms: per(self.api_server),
            operator_ms: per(self.operator),
        }
    }
}

impl std::fmt::Display for CpuPerStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.2} ms"));
        write!(
            f,
            "API server {}, operator + workers {}",
            show(self.api_server_ms),
            show(self.operator_ms)
        )
    }
}

/// One round of a phase measured against the 8-writer PATCH rate taken just before it.
#[derive(serde::Serialize)]
struct Round {
    per_second: f64,
    baseline: f64,
    ratio: f64,
}

/// Median, lowest and highest ratio of some rounds, as printed.
fn spread(rounds: &[Round]) -> (f64, f64, f64, f64) {
    let ratios: Vec<f64> = rounds.iter().map(|r| r.ratio).collect();
    let rates: Vec<f64> = rounds.iter().map(|r| r.per_second).collect();
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(&rates), median(&ratios), lo, hi)
}

#[tokio::main]
async fn main() -> Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let flows = env_or("SLUICE_BENCH_FLOWS", 40);
    let steps = env_or("SLUICE_BENCH_STEPS", 5);
    let fanout = env_or("SLUICE_BENCH_FANOUT", 1000);
    // Each phase runs this many times; throughput and fan-out rounds are each measured against the 8-writer
    // PATCH rate taken just before them, so a machine that speeds up or slows down moves both alike.
    let rounds = env_or("SLUICE_BENCH_ROUNDS", 9).max(1);
    let client = cluster().await?;
    install_crds(&client).await?;
    let clocks = CpuClocks {
        api_server: kubeconfig_path()
            .ok()
            .and_then(|path| CpuClock::control_plane(&path)),
        operator: CpuClock::this_process(),
    };
    let ns = TestNamespace::new("bench").await?;
    let api: Api<FlowRun> = ns.api();
    // The baseline's objects live where the operator does not look: between rounds it runs, and it would
    // answer every baseline write to a run it watches with writes of its own.
    let base_ns = TestNamespace::new("bench-base").await?;
    let base: Api<FlowRun> = base_ns.api();

    // Baseline first, with nothing else running.
    let window = Duration::from_secs(5);
    let round_window = Duration::from_secs(2);
    // The bare status writes before and after each latency phase: some hundreds of writes each time.
    let bare_window = Duration::from_secs(2);
    let seq_rate = patch_rate(&base, 1, window).await?;
    let conc_rate = patch_rate(&base, 8, window).await?;
    let realistic_rate = realistic_patch_rate(&base, window, false).await?;
    let cleared_rate = realistic_patch_rate(&base, window, true).await?;

    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let url = operator.broker_url().to_owned();
    let timings = Arc::new(Timings::default());
    let workers = start_workers(&url, &format!("{}/pool", ns.name()), 4, 16, &timings);

    // Latency: 1 flow, then 4, of 20 chained steps, `rounds` times each.
    let mut latency = Vec::new();
    for (n, label) in [(1usize, "lat1"), (4, "lat4")] {
        let before = operator.metrics().encode();
        // The bare writes are measured before and after the phase, not between its rounds: writes as
        // fast as they go leave the API server collecting garbage into the round that follows.
        let mut bare = bare_status_writes(&base, base_ns.name(), n, bare_window).await?;
        let (mut gaps, mut cpu) = (Vec::new(), CpuReading::zero());
        for r in 0..rounds {
            let cpu_before = clocks.read();
            let label = format!("{label}r{r}");
            run_all(
                &api,
                &timings,
                chain(&label, n, 20, &label, false)?,
                &label,
                n * 20,
            )
            .await?;
            cpu_before.add_until(&clocks.read(), &mut cpu);
            gaps.extend(timings.chain_gaps(&label, n, 20));
        }
        gaps.sort();
        let after = operator.metrics().encode();
        bare.extend(bare_status_writes(&base, base_ns.name(), n, bare_window).await?);
        bare.sort();
        latency.push(Latency {
            flows: n,
            steps: 20,
            rounds,
            p50_ms: ms(percentile(&gaps, 50.0)),
            p99_ms: ms(percentile(&gaps, 99.0)),
            samples: gaps.len(),
            write_mean_ms: mean_ms(&before, &after, "sluice_status_write_seconds"),
            write_median_bound_ms: median_bound_ms(&before, &after, "sluice_status_write_seconds"),
            queue_wait_mean_ms: mean_ms(&before, &after, "sluice_dispatch_latency_seconds"),
            cpu: cpu.per_step(n * 20 * rounds),
            bare_write_p50_ms: ms(percentile(&bare, 50.0)),
            bare_write_p99_ms: ms(percentile(&bare, 99.0)),
            bare_write_mean_ms: ms(bare.iter().sum::<Duration>()) / bare.len().max(1) as f64,
            bare_writes: bare.len(),
            p50_over_bare_write: ms(percentile(&gaps, 50.0))
                / ms(percentile(&bare, 50.0)).max(1e-3),
        });
    }

    // Throughput: many chains; steps that start after the last create, until the last one ends.
    let requests_before = operator.metrics().api_requests_by_verb();
    let metrics_before = operator.metrics().encode();
    let mut throughput = Vec::new();
    let mut window_writes = 0.0;
    let (mut window_cpu, mut window_steps) = (CpuReading::zero(), 0);
    for r in 0..rounds {
        let baseline = patch_rate(&base, 8, round_window).await?;
        let label = format!("tput{r}");
        let round_before = operator.metrics().encode();
        // Every chain's first step waits at the gate until all of them run: the window starts with every
        // chain in flight, and the creates (and each run's first write) are outside it.
        timings.close_gate();
        for fr in chain(&label, flows, steps, &label, true)? {
            api.create(&PostParams::default(), &fr).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while timings.at_gate() < flows {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {flows} {label} chains reached their first step within 120 s",
                    timings.at_gate()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let at_gate = operator.metrics().encode();
        let cpu_opened = clocks.read();
        let opened = timings.open_gate();
        finish(&api, &timings, &label, flows, flows * steps).await?;
        cpu_opened.add_until(&clocks.read(), &mut window_cpu);
        let finished = operator.metrics().encode();
        // Every step's result is written after the gate opened: the writes per step a chain costs once its
        // first attempt is reserved.
        window_writes += counter(&finished, "sluice_status_writes_total")
            - counter(&at_gate, "sluice_status_writes_total");
        // The steps after the first, each started by one write of its run: from the gate opening to the last
        // of them starting.
        let after_gate: Vec<Instant> = (0..flows)
            .flat_map(|f| timings.of(&format!("{label}-{f}")))
            .map(|span| span.start)
            .filter(|start| *start > opened)
            .collect();
        window_steps += after_gate.len();
        let last = after_gate.iter().max().copied().unwrap_or(opened);
        let steps_per_s =
            after_gate.len() as f64 / last.duration_since(opened).as_secs_f64().max(1e-3);
        let round_after = operator.metrics().encode();
        let mut gaps = timings.chain_gaps(&label, flows, steps);
        gaps.sort();
        eprintln!(
            "throughput round {r}: {steps_per_s:.1} steps/s against {baseline:.1} PATCH/s ({:.3}), ended {}; \
             {:.2} status writes a step, status write mean {:.1} ms, step gaps p50 {:.1} / p90 {:.1} ms",
            steps_per_s / baseline,
            epoch_seconds(),
            (counter(&round_after, "sluice_status_writes_total")
                - counter(&round_before, "sluice_status_writes_total"))
                / (flows * steps) as f64,
            mean_ms(&round_before, &round_after, "sluice_status_write_seconds"),
            ms(percentile(&gaps, 50.0)),
            ms(percentile(&gaps, 90.0)),
        );
        throughput.push(Round {
            per_second: steps_per_s,
            baseline,
            ratio: steps_per_s / baseline,
        });
        delete_round(&api, &label).await?;
    }
    let requests_after = operator.metrics().api_requests_by_verb();
    let metrics_after = operator.metrics().encode();
    let total_steps = (rounds * flows * steps) as f64;
    let cost: BTreeMap<&str, f64> = requests_after
        .iter()
        .map(|(verb, after)| {
            let before = requests_before.get(verb).copied().unwrap_or(0);
            (*verb, (after - before) as f64 / total_steps)
        })
        .collect();
    let patch_per_step = cost.get("patch").copied().unwrap_or(0.0);
    let put_per_step = cost.get("put").copied().unwrap_or(0.0);
    let get_per_step = cost.get("get").copied().unwrap_or(0.0);
    let other_per_step: f64 = cost
        .iter()
        .filter(|(v, _)| !matches!(**v, "put" | "patch" | "get" | "watch"))
        .map(|(_, c)| c)
        .sum();
    let per_step =
        |name: &str| (counter(&metrics_after, name) - counter(&metrics_before, name)) / total_steps;
    let status_writes_per_step = per_step("sluice_status_writes_total");
    let clears_per_step = per_step("sluice_field_owner_clears_total");
    let window_writes_per_step = window_writes / total_steps;
    let window_cpu = window_cpu.per_step(window_steps);

    // Fan-out: one forEach per round.
    let mut fan_rounds = Vec::new();
    for r in 0..rounds {
        let baseline = patch_rate(&base, 8, round_window).await?;
        let label = format!("fanout{r}");
        let fan: FlowRun = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": format!("{label}-0"), "labels": {"sluice.dev/bench": label}},
            "spec": {"pool": "pool", "input": {"items": (0..fanout).collect::<Vec<_>>()}, "steps": [{
                "name": "each", "handler": "step", "maxParallel": 64,
                "forEach": "${{ input.items }}",
                "input": {"i": "${{ item }}"}
            }]}
        }))
        .context("the fan-out FlowRun")?;
        let round_before = operator.metrics().encode();
        run_all(&api, &timings, vec![fan], &label, fanout).await?;
        let round_after = operator.metrics().encode();
        let spans = timings.of(&format!("{label}-0"));
        let first = spans
            .iter()
            .map(|span| span.start)
            .min()
            .context("no instance ran")?;
        let last = spans
            .iter()
            .map(|span| span.end)
            .max()
            .context("no instance ran")?;
        let instances_per_s =
            spans.len() as f64 / last.duration_since(first).as_secs_f64().max(1e-3);
        eprintln!(
            "fan-out round {r}: {instances_per_s:.1} instances/s against {baseline:.1} PATCH/s ({:.3}); \
             {:.1} instances a status write, status write mean {:.1} ms",
            instances_per_s / baseline,
            fanout as f64
                / (counter(&round_after, "sluice_status_writes_total")
                    - counter(&round_before, "sluice_status_writes_total"))
                .max(1.0),
            mean_ms(&round_before, &round_after, "sluice_status_write_seconds"),
        );
        fan_rounds.push(Round {
            per_second: instances_per_s,
            baseline,
            ratio: instances_per_s / baseline,
        });
        delete_round(&api, &label).await?;
    }

    println!(
        "sluice bench: 4 in-process workers x 16 slots, handlers return at once, one API server; {rounds} rounds a phase"
    );
    println!("| phase | figure | value | ratio |");
    println!("|---|---|---|---|");
    println!("| baseline | status PATCH, 1 writer | {seq_rate:.1}/s | |");
    println!("| baseline | status PATCH, 8 writers | {conc_rate:.1}/s | 1 |");
    // The same figure before every throughput and fan-out round: how much the machine's own speed moved.
    let machine: Vec<f64> = throughput
        .iter()
        .chain(&fan_rounds)
        .map(|r| r.baseline)
        .collect();
    let (slowest, fastest) = (
        machine.iter().copied().fold(f64::INFINITY, f64::min),
        machine.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let steady = if fastest <= 1.2 * slowest {
        "steady"
    } else {
        "NOT steady: the machine's own speed moved during the run; compare commits by alternated runs"
    };
    println!(
        "| baseline | the same, before each throughput and fan-out round | {slowest:.1}-{fastest:.1}/s (median {:.1}) | {:.2} fastest/slowest: {steady} |",
        median(&machine),
        fastest / slowest
    );
    println!(
        "| baseline | status PATCH of a 20-step run, 1 writer | {realistic_rate:.1}/s ({:.1} ms each) | |",
        1000.0 / realistic_rate
    );
    println!(
        "| baseline | the same, its managedFields cleared first | {cleared_rate:.1}/s ({:.1} ms each) | {:.2} x tracked |",
        1000.0 / cleared_rate,
        cleared_rate / realistic_rate
    );
    for l in &latency {
        println!(
            "| baseline | bare status writes as the operator makes them, {} 20-step run(s) written at once, before and after the latency phase ({} writes) | p50 {:.1} ms / p99 {:.1} ms | mean {:.1} ms |",
            l.flows, l.bare_writes, l.bare_write_p50_ms, l.bare_write_p99_ms, l.bare_write_mean_ms
        );
    }
    for l in &latency {
        println!(
            "| latency | {} flow(s) x {} steps, handler start to next start ({} gaps) | p50 {:.1} ms / p99 {:.1} ms | p50 = {:.2} bare writes at that concurrency (operator's status write mean {:.1} ms, half under {} ms; mean queue wait {:.1} ms) |",
            l.flows,
            l.steps,
            l.samples,
            l.p50_ms,
            l.p99_ms,
            l.p50_over_bare_write,
            l.write_mean_ms,
            l.write_median_bound_ms,
            l.queue_wait_mean_ms
        );
    }
    let (rate, ratio, lo, hi) = spread(&throughput);
    println!(
        "| throughput | {flows} chains x {steps} steps, all in flight from the gate (median of {rounds}) | {rate:.1} steps/s | {ratio:.3} (rounds {lo:.3}-{hi:.3}) |"
    );
    let (rate, ratio, lo, hi) = spread(&fan_rounds);
    println!(
        "| fan-out | forEach of {fanout} (median of {rounds}) | {rate:.1} instances/s | {ratio:.3} (rounds {lo:.3}-{hi:.3}) |"
    );
    println!(
        "| cost | API requests per chain step | PUT {put_per_step:.2}, PATCH {patch_per_step:.2}, GET {get_per_step:.2}, other {other_per_step:.2} | writes per run of {steps} steps: {:.2} |",
        (put_per_step + patch_per_step) * steps as f64
    );
    println!(
        "| cost | of the writes per chain step | status {status_writes_per_step:.2}, field owners cleared {clears_per_step:.2} | status writes per run: {:.2} |",
        status_writes_per_step * steps as f64
    );
    println!(
        "| cost | status writes per chain step from the gate opening to the runs' end | {window_writes_per_step:.2} | the run's first write reserves the first step before the gate |"
    );

    for l in &latency {
        println!(
            "| cost | CPU per step, {} flow(s) x {} steps (creates and deletes included) | {} | |",
            l.flows, l.steps, l.cpu
        );
    }
    println!(
        "| cost | CPU per chain step from the gate opening to the runs' end | {window_cpu} | |"
    );

    let report = json!({
        "baseline": {"patchPerSecond1Writer": seq_rate, "patchPerSecond8Writers": conc_rate,
                     "patchPerSecond20StepRun": realistic_rate,
                     "patchPerSecond20StepRunOwnersCleared": cleared_rate,
                     "patchPerSecond8WritersEachRound": {"min": slowest, "median": median(&machine),
                                                         "max": fastest}},
        "latency": latency,
        "throughput": {"flows": flows, "steps": steps, "rounds": throughput,
                       "ratio": spread(&throughput).1, "stepsPerSecond": spread(&throughput).0},
        "fanout": {"instances": fanout, "rounds": fan_rounds,
                   "ratio": spread(&fan_rounds).1, "instancesPerSecond": spread(&fan_rounds).0},
        "cost": {"requestsPerStep": cost, "statusWritesPerStep": status_writes_per_step,
                 "fieldOwnerClearsPerStep": clears_per_step,
                 "statusWritesPerStepAfterTheGate": window_writes_per_step,
                 "cpuPerStepAfterTheGate": window_cpu},
    });
    let dir = repo_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("flows.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("(written to target/bench/flows.json)");

    drop(operator);
    for w in workers {
        w.shutdown();
    }
    ns.cleanup().await?;
    base_ns.cleanup().await?;
    Ok(())
}
