//! CronFlows on the real API server, with seconds-level schedules so that nothing waits for minutes:
//! - runs start on schedule under their slot's name, and the history limits keep only the newest finished
//!   runs (operator in this process);
//! - `Forbid` never lets two runs overlap and `Replace` cancels the active run when the next one starts
//!   (operator in this process);
//! - the real operator process SIGKILLed and started again: no slot starts twice (every run name is created
//!   once, with one UID, across the restart and the history deletions), and of the slots that came due while it
//!   was down at most one runs with `missedSchedulePolicy: RunOnce` and none with `Skip`.
//!
//! Every run is observed through one watch of the namespace's CronFlow runs, in the API server's order, so
//! overlaps and re-creations are seen as they happen rather than inferred from timestamps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use futures::StreamExt;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sluice_e2e::{
    InProcessOperator, OperatorProcess, TestNamespace, build_binaries, cluster, init_test_logs,
    install_crds, kubeconfig_path, wait_for, wait_for_list,
};
use sluice_operator::api::{CRONFLOW_LABEL, CronFlow, FlowPhase, FlowRun};

const WAIT: Duration = Duration::from_secs(60);

/// A CronFlow on `schedule` whose runs sleep for `nap`, with extra spec fields.
fn cronflow(name: &str, schedule: &str, nap: &str, extra: Value) -> Result<CronFlow> {
    let mut spec = json!({
        "schedule": schedule,
        "flowRun": {
            "metadata": {"labels": {"team": "nightly"}},
            "spec": {"steps": [{"name": "nap", "sleep": nap}]}
        },
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "CronFlow",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

/// One state of one run, as the watch delivered it.
#[derive(Clone, Debug)]
struct Seen {
    cronflow: String,
    name: String,
    uid: String,
    phase: Option<FlowPhase>,
    deleted: bool,
}

/// Every state of every CronFlow run of the namespace, in the order the API server reported them.
#[derive(Clone, Default)]
struct RunLog(Arc<Mutex<Vec<Seen>>>);

impl RunLog {
    /// Starts watching the CronFlow runs of `api`'s namespace; returns once the watch has listed.
    async fn start(api: Api<FlowRun>) -> Result<Self> {
        let log = Self::default();
        let (listed_tx, listed_rx) = tokio::sync::oneshot::channel();
        let entries = log.0.clone();
        tokio::spawn(async move {
            let mut listed = Some(listed_tx);
            let mut events = std::pin::pin!(watcher(
                api,
                watcher::Config::default().labels(CRONFLOW_LABEL)
            ));
            while let Some(event) = events.next().await {
                let (fr, deleted) = match event {
                    Ok(Event::Apply(fr) | Event::InitApply(fr)) => (fr, false),
                    Ok(Event::Delete(fr)) => (fr, true),
                    Ok(Event::InitDone) => {
                        if let Some(tx) = listed.take() {
                            let _ = tx.send(());
                        }
                        continue;
                    }
                    Ok(Event::Init) | Err(_) => continue,
                };
                entries.lock().unwrap().push(Seen {
                    cronflow: fr.labels().get(CRONFLOW_LABEL).cloned().unwrap_or_default(),
                    name: fr.name_any(),
                    uid: fr.uid().unwrap_or_default(),
                    phase: fr.status.as_ref().and_then(|s| s.phase),
                    deleted,
                });
            }
        });
        tokio::time::timeout(WAIT, listed_rx)
            .await
            .context("the watch of CronFlow runs did not list within 60 s")??;
        Ok(log)
    }

    fn of(&self, cronflow: &str) -> Vec<Seen> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.cronflow == cronflow)
            .cloned()
            .collect()
    }

    /// Every run name of `cronflow` ever seen, with the UIDs it had.
    fn uids(&self, cronflow: &str) -> BTreeMap<String, BTreeSet<String>> {
        let mut uids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in self.of(cronflow) {
            uids.entry(s.name).or_default().insert(s.uid);
        }
        uids
    }

    /// The slots (Unix seconds, from the names) of the scheduled runs of `cronflow` ever seen.
    fn slots(&self, cronflow: &str) -> BTreeSet<i64> {
        self.uids(cronflow)
            .keys()
            .filter_map(|n| n.strip_prefix(&format!("{cronflow}-"))?.parse().ok())
            .collect()
    }

    /// The most runs of `cronflow` that were active (created, not finished, not deleted) at the same time.
    fn max_overlap(&self, cronflow: &str) -> (usize, Vec<String>) {
        let mut active: BTreeSet<String> = BTreeSet::new();
        let mut worst = (0, vec![]);
        for s in self.of(cronflow) {
            if s.deleted || s.phase.is_some_and(FlowPhase::is_terminal) {
                active.remove(&s.name);
            } else {
                active.insert(s.name.clone());
            }
            if active.len() > worst.0 {
                worst = (active.len(), active.iter().cloned().collect());
            }
        }
        worst
    }
}

/// Waits until `cronflow` has started at least `n` runs (by the slots seen).
async fn wait_for_slots(log: &RunLog, cronflow: &str, n: usize, within: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let slots = log.slots(cronflow);
        if slots.len() >= n {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "CronFlow {cronflow} started {} runs within {within:?}, not {n}: slots {slots:?}",
            slots.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn phase(fr: &FlowRun) -> Option<FlowPhase> {
    fr.status.as_ref().and_then(|s| s.phase)
}

#[tokio::test]
async fn runs_start_on_schedule_forbid_never_overlaps_replace_cancels_and_history_is_kept()
-> Result<()> {
    init_test_logs();
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("cronflow").await?;
    let runs: Api<FlowRun> = ns.api();
    let cronflows: Api<CronFlow> = ns.api();
    let log = RunLog::start(runs.clone()).await?;
    let _operator = InProcessOperator::start(ns.client(), ns.name()).await?;

    // Every 2 seconds, short runs, 2 successful runs kept.
    let every2 = cronflow(
        "every2",
        "*/2 * * * * *",
        "200ms",
        json!({"successfulRunsHistoryLimit": 2}),
    )?;
    // Every second, runs of 3 s: Forbid holds the slots back while one runs.
    let forbid = cronflow(
        "forbid",
        "* * * * * *",
        "3s",
        json!({"concurrencyPolicy": "Forbid"}),
    )?;
    // Every 2 seconds, runs that would sleep for an hour: Replace cancels each when the next starts.
    let replace = cronflow(
        "replace",
        "*/2 * * * * *",
        "1h",
        json!({"concurrencyPolicy": "Replace", "failedRunsHistoryLimit": 5}),
    )?;
    for cf in [&every2, &forbid, &replace] {
        cronflows.create(&PostParams::default(), cf).await?;
    }

    // Scheduled runs: named after their slot (Unix seconds, even ones for */2), with the template's label.
    wait_for_slots(&log, "every2", 5, Duration::from_secs(30)).await?;
    let slots = log.slots("every2");
    ensure!(slots.iter().all(|s| s % 2 == 0), "slots of */2: {slots:?}");
    // Every slot while the operator keeps up (a reconcile slower than 2 s would skip one, by design: only the
    // latest due slot ever starts).
    let gaps: Vec<i64> = slots
        .iter()
        .zip(slots.iter().skip(1))
        .map(|(a, b)| b - a)
        .collect();
    ensure!(
        gaps.iter().filter(|d| **d != 2).count() <= 1,
        "the slots of */2 did not run one after another: {slots:?}"
    );
    // History: exactly the 2 newest Succeeded runs remain once the older ones are deleted.
    let listed = wait_for_list(
        &runs,
        watcher::Config::default().labels(&format!("{CRONFLOW_LABEL}=every2")),
        |rs: &[FlowRun]| {
            let succeeded: Vec<&FlowRun> = rs
                .iter()
                .filter(|r| phase(r) == Some(FlowPhase::Succeeded))
                .collect();
            succeeded.len() == 2 && rs.iter().all(|r| phase(r) != Some(FlowPhase::Failed))
        },
        Duration::from_secs(20),
        "every2 to keep exactly 2 Succeeded runs",
    )
    .await?;
    let newest_finished: Vec<String> = listed
        .iter()
        .filter(|r| phase(r) == Some(FlowPhase::Succeeded))
        .map(|r| r.name_any())
        .collect();
    let first = log.slots("every2").into_iter().next().context("a slot")?;
    ensure!(
        !newest_finished.contains(&format!("every2-{first}")),
        "the oldest run was kept instead of a newer one: {newest_finished:?}"
    );
    for r in &listed {
        ensure!(
            r.labels().get("team").map(String::as_str) == Some("nightly"),
            "{} lacks the template's label",
            r.name_any()
        );
        ensure!(
            r.owner_references()
                .iter()
                .any(|o| o.kind == "CronFlow" && o.name == "every2" && o.controller == Some(true)),
            "{} is not owned by its CronFlow",
            r.name_any()
        );
    }
    let cf = wait_for(
        &cronflows,
        "every2",
        |cf: Option<&CronFlow>| {
            cf.and_then(|c| c.status.as_ref())
                .is_some_and(|s| s.last_schedule_time.is_some() && s.last_successful_time.is_some())
        },
        WAIT,
        "every2's status to show its last schedule and success",
    )
    .await?;
    let status = cf.status.unwrap_or_default();
    ensure!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "every2 is Ready: {status:?}"
    );

    // Forbid: in 8 seconds at most ~3 runs of 3 s, never two at once.
    wait_for_slots(&log, "forbid", 3, Duration::from_secs(30)).await?;
    let (overlap, runs_at_once) = log.max_overlap("forbid");
    ensure!(
        overlap == 1,
        "Forbid let runs overlap: {runs_at_once:?} were active at once"
    );

    // Replace: every run but the newest was cancelled when its successor started.
    wait_for_slots(&log, "replace", 3, Duration::from_secs(30)).await?;
    let listed = wait_for_list(
        &runs,
        watcher::Config::default().labels(&format!("{CRONFLOW_LABEL}=replace")),
        |rs: &[FlowRun]| {
            rs.len() >= 3
                && rs
                    .iter()
                    .filter(|r| !phase(r).is_some_and(FlowPhase::is_terminal))
                    .count()
                    == 1
                && rs
                    .iter()
                    .filter(|r| phase(r) == Some(FlowPhase::Cancelled))
                    .count()
                    >= 2
        },
        Duration::from_secs(30),
        "replace to have cancelled all but its newest run",
    )
    .await?;
    let newest = listed
        .iter()
        .map(|r| r.name_any())
        .max_by_key(|n| n.rsplit('-').next().and_then(|s| s.parse::<i64>().ok()));
    for r in &listed {
        if Some(r.name_any()) != newest {
            ensure!(
                r.spec.cancel && phase(r) == Some(FlowPhase::Cancelled),
                "{} was not cancelled by Replace: {:?}",
                r.name_any(),
                r.status
            );
        }
    }

    // The plugin: `cron trigger` starts a run now, named apart from the scheduled ones and owned by the
    // CronFlow; `cron list` shows the CronFlows.
    let plugin = build_binaries().await?.join("kubectl-sluice");
    let kubeconfig = kubeconfig_path()?;
    let sluice = |args: &[&str]| {
        let mut command = tokio::process::Command::new(&plugin);
        command
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["-n", ns.name()])
            .args(args);
        command
    };
    let out = sluice(&["cron", "trigger", "forbid"]).output().await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "kubectl sluice cron trigger: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manual = stdout
        .strip_prefix("flowrun/")
        .and_then(|r| r.split_whitespace().next())
        .context(format!("no run name in {stdout:?}"))?
        .to_owned();
    ensure!(
        manual.starts_with("forbid-manual-"),
        "a manual run is named apart from scheduled ones: {manual}"
    );
    let run = runs.get(&manual).await?;
    ensure!(
        run.labels().get("sluice.dev/trigger").map(String::as_str) == Some("Manual")
            && run.owner_references().iter().any(|o| o.name == "forbid"),
        "the manual run is labelled and owned: {:?}",
        run.metadata
    );
    let out = sluice(&["cron", "list"]).output().await?;
    let listed_text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success()
            && ["every2", "forbid", "replace", "*/2 * * * * *"]
                .iter()
                .all(|w| listed_text.contains(w)),
        "kubectl sluice cron list: {listed_text}"
    );

    // What the CRD rules can check is refused at admission, naming the field and the fix.
    let refused = cronflows
        .create(
            &PostParams::default(),
            &cronflow("bad", "every day", "1s", json!({}))?,
        )
        .await
        .err()
        .context("a CronFlow with schedule 'every day' was accepted")?;
    ensure!(
        refused.to_string().contains("spec.schedule")
            && refused.to_string().contains("five cron fields"),
        "the API server's refusal names the field and the fix: {refused}"
    );

    // A time zone the CRD rules accept but the time zone database does not know: Ready=False, InvalidSchedule.
    cronflows
        .create(
            &PostParams::default(),
            &cronflow(
                "nowhere",
                "* * * * * *",
                "1s",
                json!({"timeZone": "Mars/Olympus_Mons"}),
            )?,
        )
        .await?;
    let invalid = wait_for(
        &cronflows,
        "nowhere",
        |cf: Option<&CronFlow>| {
            cf.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Ready" && c.status == "False" && c.reason == "InvalidSchedule"
                })
            })
        },
        WAIT,
        "the CronFlow with an unknown time zone to be Ready=False (InvalidSchedule)",
    )
    .await?;
    let message = &invalid.status.unwrap_or_default().conditions[0].message;
    ensure!(
        message.contains("spec.timeZone") && message.contains("Mars/Olympus_Mons"),
        "the condition names the field: {message}"
    );
    ensure!(
        log.slots("nowhere").is_empty(),
        "a CronFlow with an invalid time zone started runs"
    );

    // The README's example, examples/cronflow.yaml: accepted by the API server, Ready, and due next at 03:00
    // in Berlin (01:00 or 02:00 UTC, by the season).
    let example: CronFlow = serde_saphyr::from_str(&std::fs::read_to_string(
        sluice_e2e::repo_root().join("examples/cronflow.yaml"),
    )?)?;
    cronflows.create(&PostParams::default(), &example).await?;
    let example = wait_for(
        &cronflows,
        "nightly-report",
        |cf: Option<&CronFlow>| {
            cf.and_then(|c| c.status.as_ref())
                .is_some_and(|s| s.next_schedule_time.is_some())
        },
        WAIT,
        "examples/cronflow.yaml to be scheduled",
    )
    .await?;
    let next = example
        .status
        .and_then(|s| s.next_schedule_time)
        .context("next schedule")?
        .0;
    let berlin = next.to_zoned(k8s_openapi::jiff::tz::TimeZone::get("Europe/Berlin")?);
    ensure!(
        (berlin.hour(), berlin.minute(), berlin.second()) == (3, 0, 0),
        "nightly-report is next due at {berlin}, not at 03:00 in Berlin"
    );

    // One UID per run name everywhere: no slot was started twice.
    for cf in ["every2", "forbid", "replace"] {
        for (name, uids) in log.uids(cf) {
            ensure!(uids.len() == 1, "{name} was created {} times", uids.len());
        }
    }
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn after_a_sigkill_no_slot_starts_twice_and_missed_slots_catch_up_at_most_once() -> Result<()>
{
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("cronflow-restart").await?;
    let runs: Api<FlowRun> = ns.api();
    let cronflows: Api<CronFlow> = ns.api();
    let log = RunLog::start(runs.clone()).await?;
    let mut operator = OperatorProcess::start_trusting_workers(&ns).await?;

    // Every second, one successful run kept: runs are created and deleted all the time, so a restart that
    // lost track of a slot would start it again.
    cronflows
        .create(
            &PostParams::default(),
            &cronflow(
                "once",
                "* * * * * *",
                "100ms",
                json!({"successfulRunsHistoryLimit": 1}),
            )?,
        )
        .await?;
    cronflows
        .create(
            &PostParams::default(),
            &cronflow(
                "skip",
                "* * * * * *",
                "100ms",
                json!({"successfulRunsHistoryLimit": 1, "missedSchedulePolicy": "Skip"}),
            )?,
        )
        .await?;
    wait_for_slots(&log, "once", 3, Duration::from_secs(30)).await?;
    wait_for_slots(&log, "skip", 3, Duration::from_secs(30)).await?;

    // Down for 5 seconds: 4 or 5 slots come due while no operator runs.
    let killed_at = Timestamp::now();
    operator.kill().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let respawned_at = Timestamp::now();
    operator.restart().await?;
    wait_for_slots(
        &log,
        "once",
        log.slots("once").len() + 3,
        Duration::from_secs(30),
    )
    .await?;
    wait_for_slots(
        &log,
        "skip",
        log.slots("skip").len() + 3,
        Duration::from_secs(30),
    )
    .await?;

    // Slots strictly inside the downtime (after the kill, before the new process existed) came due while
    // no operator ran. The killed process may have started the slot of the second it died in.
    let down = |cf: &str| -> Vec<i64> {
        let after = killed_at + SignedDuration::from_secs(1);
        log.slots(cf)
            .into_iter()
            .filter(|s| *s > after.as_second() && *s < respawned_at.as_second())
            .collect()
    };
    let caught_up = down("once");
    ensure!(
        caught_up.len() <= 1,
        "RunOnce started {} of the slots missed while the operator was down: {caught_up:?}",
        caught_up.len()
    );
    let skipped = down("skip");
    ensure!(
        skipped.is_empty(),
        "Skip started slots missed while the operator was down: {skipped:?}"
    );
    // RunOnce caught up one slot missed while down: it is either inside the window or, when the new process
    // started leading only after a further slot passed, the latest slot before it led.
    let after_kill: Vec<i64> = log
        .slots("once")
        .into_iter()
        .filter(|s| *s > (killed_at + SignedDuration::from_secs(1)).as_second())
        .collect();
    let first_after = *after_kill.first().context("a run after the restart")?;
    let next_regular = log
        .slots("skip")
        .into_iter()
        .find(|s| *s > respawned_at.as_second());
    ensure!(
        next_regular.is_some_and(|n| first_after < n),
        "RunOnce did not catch up a missed slot: first run after the kill at {first_after}, Skip's first at {next_regular:?} (killed at {killed_at}, respawned at {respawned_at})"
    );

    // No run name was ever created twice, across the restart and the history deletions.
    for cf in ["once", "skip"] {
        for (name, uids) in log.uids(cf) {
            ensure!(
                uids.len() == 1,
                "{name} was created {} times: {uids:?}",
                uids.len()
            );
        }
    }
    let log_text = operator.log();
    ensure!(
        log_text.contains("started a scheduled run"),
        "the operator process logged no scheduled run:\n{log_text}"
    );

    operator.stop().await?;
    ns.cleanup().await?;
    Ok(())
}
