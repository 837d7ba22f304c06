//! Chaos: the operator process is SIGKILLed five times at random moments while 20 five-step flows run. Every
//! flow must still succeed, and each step's result must be recorded exactly once, from the attempt that
//! produced it (design invariants 2, 3, 4 and 6). The workers keep running through the crashes and retry their
//! reports until a new operator process acknowledges them or fences them off.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use sluice_e2e::{
    Executions, OperatorProcess, TestNamespace, cluster, install_crds, start_logging_workers,
    wait_for_list,
};
use sluice_operator::api::{FlowPhase, FlowRun, StepPhase};

const FLOWS: usize = 20;
const STEPS: usize = 5;
const KILLS: usize = 5;

/// Handler executions: (flow, step) → the attempts that ran.
type Runs = Executions;

/// A small deterministic generator, seeded from the clock and printed, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

#[tokio::test]
async fn operator_sigkilled_five_times_loses_nothing_and_records_nothing_twice() -> Result<()> {
    let seed = std::env::var("SLUICE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64 | 1)
        });
    println!("chaos seed: {seed} (replay with SLUICE_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);

    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("chaos").await?;
    let api: Api<FlowRun> = ns.api();
    let started = std::time::Instant::now();
    let mut operator = OperatorProcess::start_trusting_workers(&ns).await?;
    let url = operator.broker_url();

    // Side-effect log: every handler execution, (flow, step) → attempts that ran. The handlers take long
    // enough that kills land while steps are in flight.
    let runs: Arc<Mutex<Runs>> = Arc::default();
    let workers = start_logging_workers(&[url.clone(), url.clone(), url], ns.name(), &runs);

    for f in 0..FLOWS {
        let steps: Vec<Value> = (0..STEPS)
            .map(|i| {
                let mut s = json!({"name": format!("s{i}"), "handler": "work",
                                   "input": {"ms": 200 + (f * 37 + i * 91) % 500},
                                   "heartbeatTimeout": "5s"});
                if i > 0 {
                    s["dependsOn"] = json!([format!("s{}", i - 1)]);
                }
                s
            })
            .collect();
        let fr: FlowRun = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": format!("chaos-{f}"), "labels": {"sluice.dev/test": "chaos"}},
            "spec": {"pool": "pool", "steps": steps}
        }))?;
        api.create(&PostParams::default(), &fr).await?;
    }

    for run in 1..=KILLS {
        tokio::time::sleep(rng.millis(500, 2000)).await;
        operator.crash_and_restart().await?;
        println!(
            "SIGKILLed and restarted the operator (kill {run}) at {:?}",
            started.elapsed()
        );
    }

    let flows = wait_for_list(
        &api,
        kube::runtime::watcher::Config::default().labels("sluice.dev/test=chaos"),
        |frs: &[FlowRun]| {
            frs.len() == FLOWS
                && frs.iter().all(|fr| {
                    fr.status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .is_some_and(|p| p.is_terminal())
                })
        },
        Duration::from_secs(300),
        "all chaos flows to finish",
    )
    .await?;

    println!("all flows finished at {:?}", started.elapsed());
    let runs = runs.lock().unwrap().clone();
    for fr in &flows {
        let name = fr.metadata.name.clone().unwrap_or_default();
        let status = fr.status.as_ref().context("status")?;
        ensure!(
            status.phase == Some(FlowPhase::Succeeded),
            "{name} ended {:?}: {:?}",
            status.phase,
            status.conditions
        );
        for i in 0..STEPS {
            let step = format!("s{i}");
            let st = &status.steps[&step];
            ensure!(
                st.phase == StepPhase::Succeeded,
                "{name}/{step} is {:?}",
                st.phase
            );
            // The recorded output is the one of the recorded attempt: one completion, from one attempt.
            let recorded = st
                .output
                .as_ref()
                .and_then(|o| o["attempt"].as_u64())
                .context("output")?;
            ensure!(
                u64::from(st.attempts) == recorded,
                "{name}/{step}: status says attempt {} but holds the output of attempt {recorded}",
                st.attempts
            );
            let ran = runs
                .get(&(name.clone(), step.clone()))
                .cloned()
                .unwrap_or_default();
            ensure!(
                ran.contains(&st.attempts),
                "{name}/{step}: attempt {} is recorded but no handler ran it (ran: {ran:?})",
                st.attempts
            );
            ensure!(
                ran.iter().all(|a| *a <= st.attempts),
                "{name}/{step}: an attempt newer than the recorded one ran: {ran:?} vs {}",
                st.attempts
            );
        }
    }
    let reruns: usize = runs.values().map(|v| v.len().saturating_sub(1)).sum();
    println!(
        "{} steps ran {} extra times across {KILLS} operator kills",
        FLOWS * STEPS,
        reruns
    );

    for w in workers {
        w.shutdown();
    }
    operator.stop().await?;
    ns.cleanup().await?;
    Ok(())
}
