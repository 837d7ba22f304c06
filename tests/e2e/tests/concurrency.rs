//! Concurrency limits across runs on the real API server: five runs of `examples/tenant-import.yaml` share a
//! tenant's key with limit 2 while a sixth run has a tenant of its own. A side-effect log records when each
//! handler execution starts and ends, and the status says which execution each run recorded; from them, never
//! more than two runs of the shared key are running at once, the waiting runs start in the order they were
//! created, and all of them finish, although the operator process is SIGKILLed and restarted while runs hold
//! their slots and others wait (the slots are counted from statuses after the restart).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use sluice_e2e::{OperatorProcess, TestNamespace, cluster, install_crds, wait_for, wait_for_list};
use sluice_operator::api::{FlowPhase, FlowRun};
use sluice_worker::{Config, StepContext, Worker};
use tokio::time::Instant;

const SHARED: usize = 5;
const LIMIT: usize = 2;
const WAIT: Duration = Duration::from_secs(120);
/// How long the test's import handler takes: long enough that runs overlap and the kill lands while runs
/// hold their slots.
const IMPORT_TAKES: Duration = Duration::from_millis(1500);

/// One execution of a handler, as the handler itself logged it.
#[derive(Clone, Debug)]
struct Execution {
    run: String,
    /// Numbers the executions of the whole test; the handler's output carries it, so the run's status says which
    /// execution's result was recorded.
    id: u64,
    started: Instant,
    ended: Instant,
}

/// When each run was running, from the side-effect log: from its first execution's start to the end of the
/// execution whose result its status recorded. An operator SIGKILLed before a claim was written hands that
/// attempt out again (at-least-once, fenced by the attempt); an extra execution still going after the run
/// ended and gave its slot back is no part of the run's running time.
fn running_spans(
    executions: &[Execution],
    recorded: &BTreeMap<String, u64>,
) -> Result<BTreeMap<String, (Instant, Instant)>> {
    let mut spans = BTreeMap::new();
    for (run, id) in recorded {
        let mine: Vec<&Execution> = executions.iter().filter(|e| &e.run == run).collect();
        let start = mine
            .iter()
            .map(|e| e.started)
            .min()
            .with_context(|| format!("{run} never ran"))?;
        let end = mine
            .iter()
            .find(|e| e.id == *id)
            .with_context(|| format!("{run} recorded execution {id}, which never ran"))?
            .ended;
        spans.insert(run.clone(), (start, end));
    }
    Ok(spans)
}

/// The example import for `tenant`, named `name`, in the test's pool.
fn run(name: &str, tenant: &str) -> Result<FlowRun> {
    let path = sluice_e2e::repo_root().join("examples/tenant-import.yaml");
    let mut manifest: Value = serde_saphyr::from_str(&std::fs::read_to_string(&path)?)?;
    manifest["metadata"] = json!({"name": name, "labels": {"sluice.dev/test": "concurrency"}});
    manifest["spec"]["pool"] = json!("pool");
    manifest["spec"]["input"]["tenant"] = json!(tenant);
    ensure!(
        manifest["spec"]["concurrency"]["limit"] == json!(LIMIT),
        "the example's limit is {LIMIT}"
    );
    Ok(serde_json::from_value(manifest)?)
}

fn admitted_condition(fr: &FlowRun) -> Option<(String, String, String)> {
    fr.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Admitted")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The most spans that overlap at one moment.
fn most_at_once(spans: &[(Instant, Instant)]) -> usize {
    let mut edges: Vec<(Instant, i32)> = spans
        .iter()
        .flat_map(|(start, end)| [(*start, 1), (*end, -1)])
        .collect();
    // An end and a start at the same instant do not overlap.
    edges.sort_by_key(|&(t, delta)| (t, delta));
    let (mut now, mut most) = (0i32, 0i32);
    for (_, delta) in edges {
        now += delta;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test]
async fn runs_sharing_a_key_never_exceed_the_limit_start_in_creation_order_and_all_finish_across_a_sigkill()
-> Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("concurrency").await?;
    let api: Api<FlowRun> = ns.api();
    let mut operator = OperatorProcess::start_trusting_workers(&ns).await?;

    // The side-effect log, written by the handlers themselves.
    let executions: Arc<Mutex<Vec<Execution>>> = Arc::default();
    let log = executions.clone();
    let ids = Arc::new(AtomicU64::new(0));
    // How many executions of the shared key's runs have started.
    let (started_tx, mut started_rx) = tokio::sync::watch::channel(0usize);
    let started_tx = Arc::new(started_tx);
    let mut config = Config::new(
        operator.broker_url(),
        format!("{}/pool", ns.name()),
        "worker-0",
    );
    config.backoff_max = Duration::from_millis(500);
    let worker = Worker::new(config).concurrency(8).handler(
        "import_records",
        move |ctx: StepContext, input: Value| {
            let (log, id) = (log.clone(), ids.fetch_add(1, Ordering::Relaxed));
            let started_tx = started_tx.clone();
            async move {
                let started = Instant::now();
                if ctx.flow_run_name().starts_with("acme-") {
                    started_tx.send_modify(|n| *n += 1);
                }
                tokio::time::sleep(IMPORT_TAKES).await;
                log.lock().unwrap().push(Execution {
                    run: ctx.flow_run_name().to_owned(),
                    id,
                    started,
                    ended: Instant::now(),
                });
                Ok(json!({"file": input["file"], "imported": true, "execution": id}))
            }
        },
    );
    let shutdown = worker.shutdown_handle();
    tokio::spawn(async move { worker.run_until(std::future::pending()).await });

    // The oldest run of the key cannot run at all (a dependsOn entry names no step): it is granted the first
    // slot, fails as Invalid, and must give the slot back, or only one of the others could ever run.
    let mut broken = run("acme-broken", "acme")?;
    broken.metadata.labels = None;
    broken.spec.steps[0].depends_on = vec!["missing".into()];
    api.create(&PostParams::default(), &broken).await?;
    // Alone of its key, it is granted a slot before it is found invalid.
    wait_for(
        &api,
        "acme-broken",
        |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref())
                .and_then(|s| s.phase)
                .is_some_and(FlowPhase::is_terminal)
        },
        WAIT,
        "the broken run to end",
    )
    .await?;

    // Created one after the other: their creation order is their name order.
    let names: Vec<String> = (0..SHARED).map(|i| format!("acme-{i}")).collect();
    for name in &names {
        api.create(&PostParams::default(), &run(name, "acme")?)
            .await?;
    }
    api.create(&PostParams::default(), &run("beta-0", "beta")?)
        .await?;

    // The newest shared run waits, Pending, saying why.
    let last = names.last().context("runs")?;
    let waiting = wait_for(
        &api,
        last,
        |fr: Option<&FlowRun>| {
            fr.and_then(admitted_condition)
                .is_some_and(|(status, reason, _)| {
                    status == "False" && reason == "ConcurrencyLimit"
                })
        },
        WAIT,
        "the newest run to wait for a slot",
    )
    .await?;
    let (_, _, message) = admitted_condition(&waiting).context("condition")?;
    println!("{last}: {message}");
    ensure!(
        waiting.status.as_ref().and_then(|s| s.phase) == Some(FlowPhase::Pending),
        "a waiting run is Pending"
    );
    ensure!(
        message.contains("\"acme\"") && message.contains(&format!("of {LIMIT} held")),
        "the condition names the key and the limit: {message}"
    );

    // The run of another key is not held up by the shared key's queue.
    wait_for(
        &api,
        "beta-0",
        |fr: Option<&FlowRun>| {
            fr.and_then(admitted_condition)
                .is_some_and(|(status, _, _)| status == "True")
        },
        WAIT,
        "the run of another key to be admitted at once",
    )
    .await?;

    // SIGKILL as soon as the two holders' handlers run, before their claims are written (they ride on the
    // next write, or go out after a second): the new process counts the slots from statuses, and hands the two
    // attempts out again, so the handlers run twice.
    tokio::time::timeout(WAIT, started_rx.wait_for(|n| *n >= LIMIT))
        .await
        .context("the holders' handlers to start")??;
    // Both started before either ended: the broken run gave its slot back at once.
    let finished = executions.lock().unwrap().len();
    ensure!(
        finished == 0,
        "{finished} execution(s) ended before {LIMIT} of the key ran at once: a slot was lost"
    );
    operator.crash_and_restart().await?;

    let runs = wait_for_list(
        &api,
        kube::runtime::watcher::Config::default().labels("sluice.dev/test=concurrency"),
        |frs: &[FlowRun]| {
            frs.len() == SHARED + 1
                && frs.iter().all(|fr| {
                    fr.status.as_ref().and_then(|s| s.phase) == Some(FlowPhase::Succeeded)
                })
        },
        WAIT,
        "every run to succeed",
    )
    .await?;
    shutdown.shutdown();

    for fr in &runs {
        let name = fr.metadata.name.clone().unwrap_or_default();
        let slot = fr
            .status
            .as_ref()
            .and_then(|s| s.concurrency.clone())
            .with_context(|| format!("{name} has no status.concurrency"))?;
        ensure!(
            slot.admitted_at.is_some(),
            "{name} finished without an admission"
        );
        ensure!(
            slot.key == name.split('-').next().unwrap_or_default(),
            "{name} resolved its key to {:?}",
            slot.key
        );
    }

    let recorded: BTreeMap<String, u64> = runs
        .iter()
        .filter(|fr| {
            fr.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("acme-"))
        })
        .map(|fr| {
            let name = fr.metadata.name.clone().unwrap_or_default();
            let id = fr
                .status
                .as_ref()
                .and_then(|s| s.steps.get("import"))
                .and_then(|st| st.output.as_ref())
                .and_then(|o| o["execution"].as_u64())
                .with_context(|| format!("{name} recorded no execution"))?;
            Ok((name, id))
        })
        .collect::<Result<_>>()?;
    let executions = executions.lock().unwrap().clone();
    println!(
        "{} executions for {} runs of key acme",
        executions
            .iter()
            .filter(|e| e.run.starts_with("acme-"))
            .count(),
        recorded.len()
    );
    let spans = running_spans(&executions, &recorded)?;
    let shared: Vec<(Instant, Instant)> = names
        .iter()
        .map(|n| {
            spans
                .get(n)
                .copied()
                .with_context(|| format!("{n} never ran"))
        })
        .collect::<Result<_>>()?;
    let most = most_at_once(&shared);
    println!("most runs of key acme running at once: {most} (limit {LIMIT})");
    ensure!(
        most <= LIMIT,
        "{most} runs of one key ran at once, over the limit of {LIMIT}"
    );
    ensure!(
        most == LIMIT,
        "at most {most} runs of one key ran at once: a slot of {LIMIT} was lost"
    );
    let broken = api.get("acme-broken").await?;
    let broken = broken.status.context("acme-broken has no status")?;
    ensure!(
        broken.phase == Some(FlowPhase::Failed)
            && broken
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "Invalid"),
        "acme-broken ended {:?}: {:?}",
        broken.phase,
        broken.conditions
    );
    // Waiting runs start oldest first: a run never starts before an older one (up to the moment two slots
    // free together).
    for (i, (older, newer)) in shared.iter().zip(shared.iter().skip(1)).enumerate() {
        ensure!(
            newer.0 + Duration::from_millis(100) >= older.0,
            "{} started {:?} before the older {}",
            names[i + 1],
            older.0 - newer.0,
            names[i]
        );
    }
    operator.stop().await?;
    ns.cleanup().await?;
    Ok(())
}

#[test]
fn overlap_counts_spans_that_share_a_moment() {
    let t = Instant::now();
    let at = |ms: u64| t + Duration::from_millis(ms);
    assert_eq!(most_at_once(&[(at(0), at(10)), (at(10), at(20))]), 1);
    assert_eq!(
        most_at_once(&[(at(0), at(10)), (at(5), at(20)), (at(6), at(7))]),
        3
    );
}
