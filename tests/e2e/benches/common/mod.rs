//! What both benchmarks share: sizes from the environment, in-process SDK workers that record when each
//! handler ran (and how often), chained FlowRuns, and percentiles.

// Each benchmark compiles this module on its own and uses a part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::future::join_all;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice_operator::api::FlowRun;
use sluice_worker::{Config, ShutdownHandle, StepContext, Worker};

/// A size from the environment, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One handler run: when it started and ended, and how many times that step ran.
#[derive(Clone, Copy)]
pub struct Span {
    pub start: Instant,
    pub end: Instant,
    pub runs: u32,
    /// Whether one attempt number ran more than once (a lost attempt retried is a new number).
    pub same_attempt_again: bool,
    last_attempt: u32,
}

/// When each handler ran: (FlowRun, step name or forEach index) → its last run, and how many there were; and
/// the gate that holds the first steps of gated chains (see [`chain`]).
pub struct Timings {
    spans: Mutex<HashMap<(String, String), Span>>,
    gate: tokio::sync::watch::Sender<bool>,
    at_gate: AtomicUsize,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            spans: Mutex::default(),
            gate: tokio::sync::watch::Sender::new(false),
            at_gate: AtomicUsize::new(0),
        }
    }
}

impl Timings {
    /// Closes the gate: the first steps of gated chains that start from now on wait at it.
    pub fn close_gate(&self) {
        self.gate.send_replace(false);
        self.at_gate.store(0, Ordering::SeqCst);
    }

    /// How many handlers wait at the closed gate.
    pub fn at_gate(&self) -> usize {
        self.at_gate.load(Ordering::SeqCst)
    }

    /// Lets every handler waiting at the gate go on, and returns when.
    pub fn open_gate(&self) -> Instant {
        let opened = Instant::now();
        self.gate.send_replace(true);
        opened
    }

    /// Waits until the gate is open (at once when it is).
    async fn pass_gate(&self) {
        let mut open = self.gate.subscribe();
        self.at_gate.fetch_add(1, Ordering::SeqCst);
        // The sender lives as long as `self`.
        let _ = open.wait_for(|open| *open).await;
    }

    fn record(&self, flow: &str, key: String, attempt: u32, start: Instant) {
        let mut spans = self.spans.lock().unwrap();
        let span = spans.entry((flow.to_owned(), key)).or_insert(Span {
            start,
            end: start,
            runs: 0,
            same_attempt_again: false,
            last_attempt: 0,
        });
        span.start = start;
        span.end = Instant::now();
        span.runs += 1;
        span.same_attempt_again |= attempt <= span.last_attempt;
        span.last_attempt = span.last_attempt.max(attempt);
    }

    /// How many distinct handler runs of FlowRuns named `prefix-*` were seen.
    pub fn count_prefix(&self, prefix: &str) -> usize {
        let prefix = format!("{prefix}-");
        self.spans
            .lock()
            .unwrap()
            .keys()
            .filter(|(f, _)| f.starts_with(&prefix))
            .count()
    }

    /// Handler runs of FlowRuns named `prefix-*` that ran more than once.
    pub fn repeated_prefix(&self, prefix: &str) -> usize {
        let prefix = format!("{prefix}-");
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|((f, _), span)| f.starts_with(&prefix) && span.runs > 1)
            .count()
    }

    /// How many handlers of FlowRuns named `prefix-*` ran one attempt number more than once: a durability bug,
    /// where a handler run again for a newer attempt (its worker was presumed lost) is not.
    pub fn same_attempt_repeated_prefix(&self, prefix: &str) -> usize {
        let prefix = format!("{prefix}-");
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|((f, _), span)| f.starts_with(&prefix) && span.same_attempt_again)
            .count()
    }

    /// The spans of one FlowRun's handlers.
    pub fn of(&self, flow: &str) -> Vec<Span> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|((f, _), _)| f == flow)
            .map(|(_, span)| *span)
            .collect()
    }

    /// Start-to-start gaps between consecutive steps `s0, s1, …` of the chains `prefix-0..flows`.
    pub fn chain_gaps(&self, prefix: &str, flows: usize, steps: usize) -> Vec<Duration> {
        let spans = self.spans.lock().unwrap();
        let mut gaps = Vec::new();
        for f in 0..flows {
            let name = format!("{prefix}-{f}");
            for i in 1..steps {
                if let (Some(prev), Some(next)) = (
                    spans.get(&(name.clone(), format!("s{}", i - 1))),
                    spans.get(&(name.clone(), format!("s{i}"))),
                ) {
                    gaps.push(next.start.saturating_duration_since(prev.start));
                }
            }
        }
        gaps.sort();
        gaps
    }
}

/// Starts `count` in-process SDK workers of `pool` at `broker_url`, `slots` handlers each, serving the handler
/// `step` (returns at once, recording its run in `timings`; a step whose input says `gate: true` first waits
/// at the gate of `timings`, and its run counts from when it passed).
pub fn start_workers(
    broker_url: &str,
    pool: &str,
    count: usize,
    slots: usize,
    timings: &Arc<Timings>,
) -> Vec<ShutdownHandle> {
    (0..count)
        .map(|w| {
            let t = timings.clone();
            let mut config = Config::new(broker_url, pool, format!("bench-{w}"));
            // Back to the broker quickly after an operator restart, so the scale benchmark's restart figure
            // is the operator's and not the workers' backoff.
            config.backoff_initial = Duration::from_millis(50);
            config.backoff_max = Duration::from_millis(200);
            let worker = Worker::new(config).concurrency(slots).handler(
                "step",
                move |ctx: StepContext, input: Value| {
                    let t = t.clone();
                    async move {
                        if input["gate"] == json!(true) {
                            t.pass_gate().await;
                        }
                        let start = Instant::now();
                        let key = match ctx.instance() {
                            Some(i) => format!("{}[{i}]", ctx.step()),
                            None => input["key"].as_str().unwrap_or_default().to_owned(),
                        };
                        t.record(ctx.flow_run_name(), key, ctx.attempt(), start);
                        Ok(json!({"ok": true}))
                    }
                },
            );
            let handle = worker.shutdown_handle();
            tokio::spawn(async move { worker.run_until(std::future::pending()).await });
            handle
        })
        .collect()
}

/// `flows` FlowRuns `prefix-0..flows`, each a chain of `steps` steps `s0 → s1 → …` of the handler `step`,
/// labelled `sluice.dev/bench=label`. In `gated` chains the first step waits at the gate of the workers'
/// [`Timings`], so that every chain can be in flight before any goes on.
pub fn chain(
    prefix: &str,
    flows: usize,
    steps: usize,
    label: &str,
    gated: bool,
) -> Result<Vec<FlowRun>> {
    let step_list: Vec<Value> = (0..steps)
        .map(|i| {
            let mut s = json!({"name": format!("s{i}"), "handler": "step", "input": {"key": format!("s{i}")}});
            if i == 0 && gated {
                s["input"]["gate"] = json!(true);
            }
            if i > 0 {
                s["dependsOn"] = json!([format!("s{}", i - 1)]);
            }
            s
        })
        .collect();
    (0..flows)
        .map(|f| {
            Ok(serde_json::from_value(json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
                "metadata": {"name": format!("{prefix}-{f}"), "labels": {"sluice.dev/bench": label}},
                "spec": {"pool": "pool", "steps": step_list}
            }))?)
        })
        .collect()
}

/// Status PATCHes per second on FlowRun objects, from `writers` concurrent writers (one object each) for
/// `window`. Calling it again writes the same objects.
pub async fn patch_rate(api: &Api<FlowRun>, writers: usize, window: Duration) -> Result<f64> {
    let mut names = Vec::new();
    for i in 0..writers {
        let name = format!("baseline-{writers}-{i}");
        let fr: FlowRun = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": name, "annotations": {"sluice.dev/bench": "baseline"}},
            // A sleep far in the future: no operator runs in this phase, the object only takes writes.
            "spec": {"steps": [{"name": "idle", "sleep": "1000h"}]}
        }))?;
        // Measured again between rounds: the objects of an earlier call are written again.
        match api.create(&PostParams::default(), &fr).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
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

/// The median of some figures (0 for none).
pub fn median(figures: &[f64]) -> f64 {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `p`th percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time a process has used, read from `/proc/<pid>/stat` (user + system, all threads), for the cost
/// figures: which process a step's time goes to.
pub struct CpuClock {
    stat: std::path::PathBuf,
}

impl CpuClock {
    /// The local control plane's process, when the cluster is the project's own (its pid file lies beside the
    /// kubeconfig); `None` for any other cluster.
    pub fn control_plane(kubeconfig: &std::path::Path) -> Option<Self> {
        let pid = std::fs::read_to_string(kubeconfig.parent()?.join("controlplane.pid")).ok()?;
        let clock = Self {
            stat: format!("/proc/{}/stat", pid.trim()).into(),
        };
        clock.read().map(|_| clock)
    }

    /// This process: the in-process operator and its workers.
    pub fn this_process() -> Option<Self> {
        let clock = Self {
            stat: "/proc/self/stat".into(),
        };
        clock.read().map(|_| clock)
    }

    /// CPU time used so far. Linux counts it in ticks of 1/100 s (`USER_HZ`, fixed at 100 on every
    /// architecture Linux exports it for).
    pub fn read(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(&self.stat).ok()?;
        // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut fields = rest.split(' ');
        // After the name: state is field 3, so utime (14) and stime (15) are the 12th and 13th here.
        let utime: u64 = fields.nth(11)?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(Duration::from_millis((utime + stime) * 10))
    }
}
