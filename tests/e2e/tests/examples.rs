//! The examples end to end, the way a user runs them: the real `sluice-operator run` process (worker
//! authentication on), example workers (`examples/worker`) in pods run by the process kubelet, the manifests of
//! `examples/` applied with kubectl, signals sent with `kubectl patch --subresource=status`. Also: a worker
//! SIGKILLed mid-step, a 500-item forEach against the object size limit, and a sleep across an operator SIGKILL.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::conditions;
use serde_json::{Value, json};
use sluice_e2e::{
    OperatorProcess, TestNamespace, cluster, container_pid, http_request, install_crds, kubectl,
    repo_root, wait_for, worker_deployment, worker_pod,
};
use sluice_operator::api::{FlowPhase, FlowRun, StepPhase, StepStatus};
use sluice_worker::wire::{TOKEN_AUDIENCE, TaskId};

const POOL: &str = "examples";
/// The side-effect log of the example workers (`SLUICE_EXAMPLE_SIDE_EFFECTS`).
const SIDE_EFFECTS_ENV: &str = "SLUICE_EXAMPLE_SIDE_EFFECTS";
/// Bound of a flow without timers (workers start, every step runs).
const FLOW_TIMEOUT: Duration = Duration::from_secs(120);
/// 1 MiB: the FlowRun must stay well under etcd's 1.5 MiB.
const MIB: usize = 1024 * 1024;

/// A namespace with the CRDs, the operator process and the side-effect log of the workers started later.
struct Setup {
    ns: TestNamespace,
    operator: OperatorProcess,
    api: Api<FlowRun>,
    side_effects: PathBuf,
}

impl Setup {
    async fn new(prefix: &str) -> Result<Self> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
        install_crds(&cluster().await?).await?;
        let ns = TestNamespace::new(prefix).await?;
        let operator = OperatorProcess::start(&ns).await?;
        let side_effects = ns.scratch_dir().join("side-effects.jsonl");
        let api = ns.api();
        Ok(Self {
            ns,
            operator,
            api,
            side_effects,
        })
    }

    fn worker_env(&self) -> Vec<(&str, &str)> {
        vec![(
            SIDE_EFFECTS_ENV,
            self.side_effects.to_str().unwrap_or_default(),
        )]
    }

    /// A Deployment of `replicas` example workers of pool `examples`.
    async fn start_workers(&self, replicas: i32) -> Result<()> {
        let deployments: Api<Deployment> = self.ns.api();
        let env = self.worker_env();
        let deployment =
            worker_deployment("workers", POOL, &self.operator.broker_url(), replicas, &env);
        deployments
            .create(&PostParams::default(), &deployment)
            .await?;
        Ok(())
    }

    /// Applies a manifest of `examples/` with kubectl and returns the FlowRun's name.
    async fn apply_example(&self, file: &str) -> Result<String> {
        let path = repo_root().join("examples").join(file);
        let out = kubectl([
            "apply",
            "-n",
            self.ns.name(),
            "-f",
            path.to_str().context("path")?,
            "-o",
            "name",
        ])
        .ok()
        .await?;
        let name = out
            .trim()
            .rsplit('/')
            .next()
            .context("kubectl apply printed no name")?;
        Ok(name.to_owned())
    }

    async fn create(&self, manifest: Value) -> Result<String> {
        let fr: FlowRun = serde_json::from_value(manifest)?;
        let created = self.api.create(&PostParams::default(), &fr).await?;
        Ok(created.metadata.name.unwrap_or_default())
    }

    /// Sends a signal the way a user does: a merge patch of `status.signals` through the status subresource.
    async fn signal(&self, flow: &str, signal: &str, payload: Value) -> Result<()> {
        let patch = json!({"status": {"signals": {signal: {"payload": payload}}}}).to_string();
        kubectl([
            "patch",
            "flowrun",
            flow,
            "-n",
            self.ns.name(),
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ])
        .ok()
        .await?;
        Ok(())
    }

    /// Waits until the FlowRun is terminal; fails unless it ended in `phase`.
    async fn wait_phase(&self, name: &str, phase: FlowPhase, timeout: Duration) -> Result<FlowRun> {
        let fr = wait_for(
            &self.api,
            name,
            |fr: Option<&FlowRun>| {
                fr.and_then(|f| f.status.as_ref())
                    .and_then(|s| s.phase)
                    .is_some_and(FlowPhase::is_terminal)
            },
            timeout,
            &format!("FlowRun {name} to finish"),
        )
        .await
        .with_context(|| format!("operator log:\n{}", tail(&self.operator.log(), 60)))?;
        let got = fr.status.as_ref().and_then(|s| s.phase);
        ensure!(
            got == Some(phase),
            "FlowRun {name} ended {got:?}, not {phase:?}: {}",
            serde_json::to_string_pretty(&fr.status)?
        );
        Ok(fr)
    }

    /// Waits until step `step` of `flow` satisfies `cond`.
    async fn wait_step(
        &self,
        flow: &str,
        step: &str,
        cond: impl Fn(&StepStatus) -> bool + Send + 'static,
        timeout: Duration,
    ) -> Result<FlowRun> {
        let owned = step.to_owned();
        Ok(wait_for(
            &self.api,
            flow,
            move |fr: Option<&FlowRun>| {
                fr.and_then(|f| f.status.as_ref())
                    .and_then(|s| s.steps.get(&owned))
                    .is_some_and(&cond)
            },
            timeout,
            &format!("step {step} of FlowRun {flow}"),
        )
        .await?)
    }

    /// The side-effect log: one record per handler invocation.
    fn invocations(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.side_effects)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn finish(self) -> Result<()> {
        self.operator.stop().await?;
        self.ns.cleanup().await?;
        Ok(())
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn step<'a>(fr: &'a FlowRun, name: &str) -> &'a StepStatus {
    &fr.status.as_ref().expect("status").steps[name]
}

/// How many times each (flowrun, step, instance, attempt) was invoked, from the side-effect log.
fn invocation_counts(records: &[Value]) -> BTreeMap<(String, String, Option<u64>, u64), usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        let key = (
            r["flowrun"].as_str().unwrap_or_default().to_owned(),
            r["step"].as_str().unwrap_or_default().to_owned(),
            r["instance"].as_u64(),
            r["attempt"].as_u64().unwrap_or_default(),
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn order_flow_ships_after_the_managers_approval_and_cooling_off() -> Result<()> {
    let s = Setup::new("ex-order").await?;
    s.start_workers(2).await?;
    let name = s.apply_example("order-flow.yaml").await?;
    // The approval arrives after the step started waiting.
    s.wait_step(
        &name,
        "approval",
        |st| st.phase == StepPhase::Waiting,
        FLOW_TIMEOUT,
    )
    .await?;
    s.signal(&name, "manager-approval", json!({"approved": true}))
        .await?;
    // The 30 s cooling-off follows the approval.
    let fr = s
        .wait_phase(&name, FlowPhase::Succeeded, Duration::from_secs(150))
        .await?;
    let status = fr.status.as_ref().context("status")?;
    assert_eq!(
        status.output,
        Some(json!({
            "payment": {"paymentId": "pay-1234", "amount": 99.99, "status": "charged"},
            "tracking": "TRK-1234",
        }))
    );
    for name in ["charge", "reserve", "approval", "cooling-off", "ship"] {
        assert_eq!(step(&fr, name).phase, StepPhase::Succeeded, "{name}");
    }
    assert_eq!(
        step(&fr, "approval").output,
        Some(json!({"approved": true}))
    );
    let ship = step(&fr, "ship").output.clone().context("ship output")?;
    assert_eq!(ship["items"], 3);
    let reserve = step(&fr, "reserve")
        .instances
        .as_ref()
        .context("reserve instances")?;
    assert_eq!((reserve.total, reserve.succeeded), (3, 3));
    // The step's output is the array of the instances' outputs, in item order.
    let reservations = step(&fr, "reserve")
        .output
        .clone()
        .context("reserve output")?;
    assert_eq!(
        reservations[2]["reservationId"], "res-1234-2-mug",
        "{reservations}"
    );
    // Every handler invocation ran once: charge, 3 reservations, ship.
    let counts = invocation_counts(&s.invocations());
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    s.finish().await
}

#[tokio::test]
async fn saga_flow_compensates_a_failed_shipment_and_ends_failed_with_the_compensations_outputs()
-> Result<()> {
    let s = Setup::new("ex-saga").await?;
    s.start_workers(1).await?;
    let name = s.apply_example("saga-flow.yaml").await?;
    let fr = s.wait_phase(&name, FlowPhase::Failed, FLOW_TIMEOUT).await?;
    let status = fr.status.as_ref().context("status")?;
    let outcome = status.main_outcome.as_ref().context("status.mainOutcome")?;
    assert_eq!(
        (outcome.phase, outcome.reason.as_str()),
        (FlowPhase::Failed, "StepFailed")
    );
    assert!(outcome.message.contains("NothingToShip"), "{outcome:?}");
    for (name, phase) in [
        ("book", StepPhase::Succeeded),
        ("charge", StepPhase::Succeeded),
        ("ship", StepPhase::Failed),
        ("refund", StepPhase::Succeeded),
        ("release", StepPhase::Succeeded),
    ] {
        assert_eq!(step(&fr, name).phase, phase, "{name}");
    }
    let refund = step(&fr, "refund")
        .output
        .clone()
        .context("refund output")?;
    assert_eq!(refund["refundId"], "ref-pay-42");
    assert!(
        refund["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ship")),
        "the compensation sees why the main steps failed: {refund}"
    );
    let release = step(&fr, "release")
        .output
        .clone()
        .context("release output")?;
    assert_eq!(release["orderId"], "42");
    let failed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .context("condition Succeeded")?;
    assert_eq!(failed.reason, "StepFailed");
    // Every handler ran once: book, charge, ship, then the two compensations.
    let counts = invocation_counts(&s.invocations());
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    s.finish().await
}

#[tokio::test]
async fn approval_flow_consumes_a_signal_sent_before_the_wait_started() -> Result<()> {
    let s = Setup::new("ex-approval").await?;
    let name = s.apply_example("approval-flow.yaml").await?;
    // No worker yet: `submit` cannot have run, so the wait has not started when the decision arrives.
    s.signal(
        &name,
        "manager-approval",
        json!({"approved": true, "by": "grace"}),
    )
    .await?;
    let before = s.api.get(&name).await?;
    let waiting = before
        .status
        .as_ref()
        .and_then(|st| st.steps.get("manager-approval"))
        .map(|st| st.phase);
    ensure!(
        waiting.is_none_or(|p| p == StepPhase::Pending),
        "the wait had already started: {waiting:?}"
    );
    s.start_workers(1).await?;
    let fr = s
        .wait_phase(&name, FlowPhase::Succeeded, FLOW_TIMEOUT)
        .await?;
    let status = fr.status.as_ref().context("status")?;
    assert_eq!(status.output, Some(json!({"approved": true})));
    assert_eq!(
        step(&fr, "manager-approval").output,
        Some(json!({"approved": true, "by": "grace"}))
    );
    assert_eq!(step(&fr, "pay-out").phase, StepPhase::Succeeded);
    assert_eq!(
        step(&fr, "pay-out").output,
        Some(
            json!({"reportId": "42", "paid": 315.2, "approvedBy": "grace", "transferId": "tr-42"})
        )
    );
    assert_eq!(step(&fr, "notify-rejection").phase, StepPhase::Skipped);
    s.finish().await
}

#[tokio::test]
async fn fanout_flow_counts_every_document_and_adds_them_up() -> Result<()> {
    let s = Setup::new("ex-fanout").await?;
    s.start_workers(2).await?;
    let name = s.apply_example("fanout-flow.yaml").await?;
    let fr = s
        .wait_phase(&name, FlowPhase::Succeeded, FLOW_TIMEOUT)
        .await?;
    let status = fr.status.as_ref().context("status")?;
    assert_eq!(
        status.output,
        Some(json!({
            "perDocument": [{"words": 4}, {"words": 2}, {"words": 3}, {"words": 4}, {"words": 1}],
            "total": 14,
        }))
    );
    s.finish().await
}

#[tokio::test]
async fn job_pool_retries_transient_failures_and_poisons_the_bad_job() -> Result<()> {
    let s = Setup::new("ex-jobs").await?;
    s.start_workers(2).await?;
    let name = s.apply_example("job-pool.yaml").await?;
    // `import` fails every attempt; continueOnFailure lets the batch (and so the run) succeed.
    let fr = s
        .wait_phase(&name, FlowPhase::Succeeded, FLOW_TIMEOUT)
        .await?;
    let export = step(&fr, "export");
    assert_eq!(export.phase, StepPhase::Succeeded);
    assert_eq!(export.attempts, 3, "two transient failures, then success");
    assert_eq!(
        export.output,
        Some(json!({"file": "report.csv", "attempt": 3}))
    );
    let import = step(&fr, "import");
    assert_eq!(import.phase, StepPhase::Failed, "poisoned");
    assert_eq!(import.attempts, 3, "maxAttempts of the defaults");
    let error = import.error.as_ref().context("the last error is kept")?;
    assert_eq!(error.type_, "CorruptInput");
    assert_eq!(error.attempt, 3);
    assert!(
        error
            .message
            .ends_with("unterminated quoted field (attempt 3)"),
        "{error:?}"
    );
    let thumbs = step(&fr, "thumbnails")
        .instances
        .as_ref()
        .context("instances")?;
    assert_eq!((thumbs.total, thumbs.succeeded), (3, 3));
    let thumbnails = step(&fr, "thumbnails").output.clone().context("output")?;
    assert_eq!(
        thumbnails[1]["thumbnail"], "thumbs/logo-128.png",
        "{thumbnails}"
    );
    assert_eq!(step(&fr, "newsletter").phase, StepPhase::Succeeded);
    // Attempts ran exactly once each: export 1..3, import 1..3.
    let counts = invocation_counts(&s.invocations());
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    for attempt in 1..=3 {
        for step in ["export", "import"] {
            let key = (name.clone(), step.to_owned(), None, attempt);
            assert_eq!(counts.get(&key), Some(&1), "{step} attempt {attempt}");
        }
    }
    s.finish().await
}

/// A broker token of the namespace's default ServiceAccount bound to `pod` (as the pod's projected token is).
async fn pod_token(ns: &TestNamespace, pod: &str) -> Result<String> {
    let pods: Api<Pod> = ns.api();
    let uid = pods.get(pod).await?.metadata.uid.context("pod uid")?;
    let request: TokenRequest = serde_json::from_value(json!({
        "spec": {
            "audiences": [TOKEN_AUDIENCE],
            "expirationSeconds": 600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid},
        }
    }))?;
    let sas: Api<ServiceAccount> = ns.api();
    let answer: TokenRequest = sas
        .create_subresource("token", "default", &PostParams::default(), &request)
        .await?;
    answer
        .status
        .and_then(|s| s.token)
        .context("TokenRequest without a token")
}

#[tokio::test]
async fn a_worker_killed_mid_step_is_replaced_and_its_late_completion_refused() -> Result<()> {
    let s = Setup::new("ex-kill").await?;
    // Two single pods that stay dead when killed (restartPolicy Never), so the retry must go to the other one.
    let pods: Api<Pod> = s.ns.api();
    let env = s.worker_env();
    for pod in ["worker-a", "worker-b"] {
        pods.create(
            &PostParams::default(),
            &worker_pod(pod, POOL, &s.operator.broker_url(), &env),
        )
        .await?;
    }
    for pod in ["worker-a", "worker-b"] {
        wait_for(
            &pods,
            pod,
            conditions::is_pod_running(),
            Duration::from_secs(60),
            &format!("worker pod {pod} to run"),
        )
        .await?;
    }
    let name = s
        .create(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "kill-worker"},
            "spec": {
                "pool": POOL,
                "steps": [{
                    "name": "work", "handler": "slow_task",
                    // The first attempt would work for 10 minutes; later ones finish at once.
                    "input": {"ms": 600_000, "slowAttempts": 1},
                    "heartbeatTimeout": "6s",
                    "retry": {"maxAttempts": 3, "initialBackoff": "1s"},
                }],
                "output": {"result": "${{ steps.work.output }}"},
            }
        }))
        .await?;
    let running = s
        .wait_step(
            &name,
            "work",
            |st| st.phase == StepPhase::Running && st.attempts == 1 && st.worker.is_some(),
            FLOW_TIMEOUT,
        )
        .await?;
    let victim = step(&running, "work").worker.clone().context("worker")?;
    ensure!(
        victim == "worker-a" || victim == "worker-b",
        "unexpected worker {victim}"
    );
    let survivor = if victim == "worker-a" {
        "worker-b"
    } else {
        "worker-a"
    };
    let pid = container_pid(&pods.get(&victim).await?).context("the victim's pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let killed_at = std::time::Instant::now();

    let fr = s
        .wait_phase(&name, FlowPhase::Succeeded, FLOW_TIMEOUT)
        .await?;
    let work = step(&fr, "work");
    assert_eq!(work.attempts, 2, "{work:?}");
    assert_eq!(work.worker.as_deref(), Some(survivor), "{work:?}");
    let output = work.output.clone().context("output")?;
    assert_eq!(output["attempt"], 2);
    assert_eq!(output["worker"], survivor);
    // The retry waited for the heartbeat timeout (6 s), not for the killed attempt's 10 minutes.
    ensure!(
        killed_at.elapsed() < Duration::from_secs(100),
        "the retry took {:?}",
        killed_at.elapsed()
    );

    // The killed attempt "comes back" with a completion: refused as stale (409), the status is unchanged.
    let token = pod_token(&s.ns, &victim).await?;
    let late = json!({
        "id": TaskId::from_parts(s.ns.name(), &name, "work", None),
        "attempt": 1,
        "worker": victim,
        "output": {"late": true},
    });
    let answer = http_request(
        s.operator.broker_port(),
        "POST",
        sluice_worker::wire::COMPLETE_PATH,
        Some(&token),
        &late.to_string(),
    )
    .await?;
    let (code, body) = (answer.status, answer.body);
    assert_eq!(code, 409, "late completion answered {code} {body}");
    assert!(body.contains("stale") || body.contains("Stale"), "{body}");
    let after = s.api.get(&name).await?;
    assert_eq!(step(&after, "work").output, Some(output));

    // The side-effect log: attempt 1 on the victim, attempt 2 on the survivor, each once.
    let records = s.invocations();
    let attempts: Vec<(u64, String)> = records
        .iter()
        .map(|r| {
            (
                r["attempt"].as_u64().unwrap_or_default(),
                r["worker"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        vec![(1, victim.clone()), (2, survivor.to_owned())],
        "{records:?}"
    );
    s.finish().await
}

#[tokio::test]
async fn a_500_item_foreach_completes_and_the_flowrun_stays_under_1_mib() -> Result<()> {
    let s = Setup::new("ex-wide").await?;
    s.start_workers(3).await?;
    const ITEMS: usize = 500;
    let documents: Vec<String> = (0..ITEMS)
        .map(|i| vec!["word"; i % 7 + 1].join(" "))
        .collect();
    let expected_total: usize = (0..ITEMS).map(|i| i % 7 + 1).sum();
    let name = s
        .create(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "wide"},
            "spec": {
                "pool": POOL,
                "input": {"documents": documents},
                "steps": [
                    {"name": "count", "handler": "count_words", "forEach": "${{ input.documents }}",
                     "maxParallel": 20, "input": {"text": "${{ item }}"}},
                    {"name": "total", "dependsOn": ["count"], "handler": "sum_counts",
                     "input": {"counts": "${{ steps.count.output }}"}},
                ],
                "output": {"total": "${{ steps.total.output.total }}"},
            }
        }))
        .await?;
    // Watch the object all along and remember the largest version seen (serialized as stored: JSON).
    let largest = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&largest);
    let fr = wait_for(
        &s.api,
        &name,
        move |fr: Option<&FlowRun>| {
            if let Some(fr) = fr {
                let size = serde_json::to_vec(fr).map(|v| v.len()).unwrap_or_default();
                seen.fetch_max(size, Ordering::Relaxed);
            }
            fr.and_then(|f| f.status.as_ref())
                .and_then(|s| s.phase)
                .is_some_and(FlowPhase::is_terminal)
        },
        Duration::from_secs(400),
        "the 500-item FlowRun to finish",
    )
    .await
    .with_context(|| format!("operator log:\n{}", tail(&s.operator.log(), 60)))?;
    let status = fr.status.as_ref().context("status")?;
    ensure!(
        status.phase == Some(FlowPhase::Succeeded),
        "ended {:?}",
        status.phase
    );
    assert_eq!(status.output, Some(json!({"total": expected_total})));
    let count = step(&fr, "count");
    let instances = count.instances.as_ref().context("instances")?;
    assert_eq!((instances.total, instances.succeeded), (500, 500));
    // The stored object as the API server serves it (managed fields included).
    let raw = kubectl(["get", "flowrun", &name, "-n", s.ns.name(), "-o", "json"])
        .ok()
        .await?;
    let largest = largest.load(Ordering::Relaxed);
    eprintln!(
        "500-item forEach: final object {} bytes as served, largest watched version {largest} bytes",
        raw.len()
    );
    ensure!(
        raw.len() < MIB,
        "the FlowRun is {} bytes as served",
        raw.len()
    );
    ensure!(
        largest < MIB,
        "a version of the FlowRun was {largest} bytes"
    );
    // At most 20 instances ran at once: every instance ran, and no more than 500 invocations happened.
    let counts = invocation_counts(&s.invocations());
    let count_calls = counts
        .keys()
        .filter(|(_, step, _, _)| step == "count")
        .count();
    assert_eq!(count_calls, 500);
    assert!(counts.values().all(|&n| n == 1), "an instance ran twice");
    s.finish().await
}

#[tokio::test]
async fn a_30s_sleep_completes_after_30s_across_an_operator_sigkill() -> Result<()> {
    let mut s = Setup::new("ex-sleep").await?;
    s.start_workers(1).await?;
    let name = s
        .create(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "nap"},
            "spec": {
                "pool": POOL,
                "steps": [
                    {"name": "nap", "sleep": "30s"},
                    {"name": "after", "dependsOn": ["nap"], "handler": "count_words",
                     "input": {"text": "rested and ready"}},
                ],
                "output": {"words": "${{ steps.after.output.words }}"},
            }
        }))
        .await?;
    let sleeping = s
        .wait_step(
            &name,
            "nap",
            |st| st.phase == StepPhase::Sleeping && st.wake_at.is_some(),
            FLOW_TIMEOUT,
        )
        .await?;
    let observed_sleeping = std::time::Instant::now();
    let wake_at = step(&sleeping, "nap").wake_at.clone().context("wakeAt")?;
    // Kill the operator during the sleep and start it again (it waits for the dead leader's lease to expire).
    s.operator.kill().await?;
    s.operator.restart().await?;
    let fr = s
        .wait_phase(&name, FlowPhase::Succeeded, Duration::from_secs(150))
        .await?;
    let nap = step(&fr, "nap");
    let started = nap.started_at.as_ref().context("nap startedAt")?.0;
    let finished = nap.finished_at.as_ref().context("nap finishedAt")?.0;
    let slept = finished.duration_since(started);
    ensure!(
        slept >= k8s_openapi::jiff::SignedDuration::from_secs(30),
        "the sleep took {slept:?} (wakeAt {wake_at:?})"
    );
    ensure!(
        finished >= wake_at.0,
        "finished {finished} before wakeAt {}",
        wake_at.0
    );
    assert_eq!(
        fr.status.as_ref().and_then(|s| s.output.clone()),
        Some(json!({"words": 3}))
    );
    eprintln!(
        "sleep: {slept:?} in status; {:?} from Sleeping to Succeeded as watched",
        observed_sleeping.elapsed()
    );
    if slept > k8s_openapi::jiff::SignedDuration::from_secs(120) {
        bail!("the sleep overslept: {slept:?}");
    }
    s.finish().await
}
