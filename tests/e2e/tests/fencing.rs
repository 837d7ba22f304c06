//! Write fencing: two operators act on one namespace at once (different Leases), and one of them is paused
//! (SIGSTOP) long enough for its standby to take its Lease over, then resumed (SIGCONT). Every status write
//! carries the resourceVersion it was decided on, so no write lands on a state its writer did not see: every
//! run succeeds, no step's attempt number ever goes backwards, and no step's recorded result ever changes.
//! The test watches every status the API server stores and checks each against the one before.

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::StreamExt;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};
use sluice_e2e::{
    Executions, OperatorProcess, TestNamespace, cluster, install_crds, start_logging_workers,
    wait_for_list,
};
use sluice_operator::api::{FlowPhase, FlowRun, StepPhase};

const FLOWS: usize = 20;
const STEPS: usize = 3;

/// What the status history showed for one step: the highest attempt seen, and its result once recorded.
#[derive(Default)]
struct StepHistory {
    attempts: u32,
    result: Option<Value>,
}

/// Checks each stored status against the ones before it; collects what went wrong.
#[derive(Default)]
struct History {
    steps: BTreeMap<(String, String), StepHistory>,
    violations: Vec<String>,
    versions: usize,
}

impl History {
    fn observe(&mut self, fr: &FlowRun) {
        let Some(status) = &fr.status else { return };
        self.versions += 1;
        let run = fr.metadata.name.clone().unwrap_or_default();
        for (step, st) in &status.steps {
            let seen = self.steps.entry((run.clone(), step.clone())).or_default();
            if st.attempts < seen.attempts {
                self.violations.push(format!(
                    "{run}/{step}: attempt went back from {} to {}",
                    seen.attempts, st.attempts
                ));
            }
            seen.attempts = seen.attempts.max(st.attempts);
            match (&seen.result, st.phase) {
                (Some(recorded), StepPhase::Succeeded) if Some(recorded) != st.output.as_ref() => {
                    self.violations.push(format!(
                        "{run}/{step}: result {recorded} recorded again as {:?}",
                        st.output
                    ));
                }
                (Some(_), phase) if phase != StepPhase::Succeeded => {
                    self.violations
                        .push(format!("{run}/{step}: Succeeded, then {phase:?}"));
                }
                (None, StepPhase::Succeeded) => seen.result = st.output.clone(),
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn two_operators_and_a_paused_leader_never_move_a_run_backwards() -> Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("fencing").await?;
    let api: Api<FlowRun> = ns.api();

    let history: Arc<Mutex<History>> = Arc::default();
    let watched = history.clone();
    let watch_api = api.clone();
    let watch = tokio::spawn(async move {
        let config = watcher::Config::default().labels("sluice.dev/test=fencing");
        let mut events = pin!(watcher::watcher(watch_api, config).default_backoff());
        while let Some(event) = events.next().await {
            if let Ok(Event::Apply(fr) | Event::InitApply(fr)) = event {
                watched.lock().unwrap().observe(&fr);
            }
        }
    });

    // A1 and A2 share Lease fence-a (A2 waits as the standby); B holds fence-b and acts on the same runs.
    let mut a1 = OperatorProcess::spawn_trusting_workers_as(&ns, "fence-a", "a1").await?;
    a1.wait_ready(Duration::from_secs(60)).await?;
    let mut a2 = OperatorProcess::spawn_trusting_workers_as(&ns, "fence-a", "a2").await?;
    let mut b = OperatorProcess::spawn_trusting_workers_as(&ns, "fence-b", "b").await?;
    b.wait_ready(Duration::from_secs(60)).await?;

    // Side-effect log: every handler execution, (run, step) → the attempts that ran.
    let executions: Arc<Mutex<Executions>> = Arc::default();
    let workers = start_logging_workers(
        &[a1.broker_url(), a2.broker_url(), b.broker_url()],
        ns.name(),
        &executions,
    );

    for f in 0..FLOWS {
        let steps: Vec<Value> = (0..STEPS)
            .map(|i| {
                let mut s = json!({"name": format!("s{i}"), "handler": "work",
                                   "input": {"ms": 300 + (f * 53 + i * 97) % 700},
                                   "heartbeatTimeout": "5s"});
                if i > 0 {
                    s["dependsOn"] = json!([format!("s{}", i - 1)]);
                }
                s
            })
            .collect();
        let fr: FlowRun = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": format!("fenced-{f}"), "labels": {"sluice.dev/test": "fencing"}},
            "spec": {"pool": "pool", "steps": steps}
        }))?;
        api.create(&PostParams::default(), &fr).await?;
    }

    // Pause A1 mid-flight until A2 has taken fence-a over, then let it run again: it resumes with writes
    // decided on states that are long gone, until it notices it lost the Lease and exits.
    wait_for_list(
        &api,
        watcher::Config::default().labels("sluice.dev/test=fencing"),
        |frs: &[FlowRun]| {
            frs.iter()
                .filter(|fr| {
                    fr.status.as_ref().is_some_and(|s| {
                        s.steps.values().any(|st| st.phase == StepPhase::Succeeded)
                    })
                })
                .count()
                >= FLOWS / 4
        },
        Duration::from_secs(60),
        "a quarter of the runs to finish a step",
    )
    .await?;
    a1.signal("STOP").await?;
    a2.wait_ready(Duration::from_secs(60)).await?;
    a1.signal("CONT").await?;

    let done = wait_for_list(
        &api,
        watcher::Config::default().labels("sluice.dev/test=fencing"),
        |frs: &[FlowRun]| {
            frs.len() == FLOWS
                && frs.iter().all(|fr| {
                    fr.status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .is_some_and(|p| p.is_terminal())
                })
        },
        Duration::from_secs(240),
        "every run to finish",
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let a1_exit = loop {
        if let Some(status) = a1.exited() {
            break status;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the resumed A1 did not exit within 60 s of losing its Lease; log:\n{}",
            a1.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(
        !a1_exit.success(),
        "a leader that lost its Lease exits non-zero, got {a1_exit}"
    );

    for fr in &done {
        let status = fr.status.clone().unwrap_or_default();
        ensure!(
            status.phase == Some(FlowPhase::Succeeded),
            "{} ended {:?}: {:?}",
            fr.metadata.name.clone().unwrap_or_default(),
            status.phase,
            status.conditions
        );
        for (step, st) in &status.steps {
            ensure!(
                st.output.as_ref().and_then(|o| o["attempt"].as_u64())
                    == Some(u64::from(st.attempts)),
                "{}/{step}: the recorded output {:?} is not from its last attempt {}",
                fr.metadata.name.clone().unwrap_or_default(),
                st.output,
                st.attempts
            );
        }
    }
    watch.abort();
    {
        let history = history.lock().unwrap();
        ensure!(
            history.violations.is_empty(),
            "over {} stored statuses: {:#?}",
            history.versions,
            history.violations
        );
        let executions = executions.lock().unwrap();
        let repeated: Vec<_> = executions.iter().filter(|(_, a)| a.len() > 1).collect();
        println!(
            "{} stored statuses checked; {} handler runs, {} steps ran more than once (at-least-once delivery): {repeated:?}",
            history.versions,
            executions.values().map(Vec::len).sum::<usize>(),
            repeated.len()
        );
    }

    for w in workers {
        w.shutdown();
    }
    drop((a1, a2, b));
    ns.cleanup().await?;
    Ok(())
}
