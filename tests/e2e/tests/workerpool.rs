//! WorkerPools on the local control plane: the operator's FlowRun runtime (broker included) and WorkerPool
//! controller run in this test process; the Deployments, ReplicaSets, HPAs and garbage collection are the real
//! kube-controller-manager's, and the pods are processes of the process kubelet.
//!
//! Queue depth without real workers comes from FlowRuns whose handler no worker serves: their steps stay
//! queued in the broker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use sluice_e2e::{
    EXAMPLE_WORKER_IMAGE, InProcessOperator, InProcessOptions, TestNamespace, build_binaries,
    cluster, hpa_condition_true, http_request, init_test_logs, install_crds, kubectl, wait_deleted,
    wait_for, wait_for_list,
};
use sluice_operator::api::{FlowPhase, FlowRun, ScalingMode, WorkerPool};
use sluice_operator::broker::tokenreview::TokenReviewAuthenticator;
use sluice_operator::workerpool::controller::POD_DELETION_COST;
use sluice_operator::workerpool::{Writes, reaper};

const WAIT: Duration = Duration::from_secs(60);

/// The WorkerPool controller's API writes so far.
fn writes(op: &InProcessOperator) -> Writes {
    op.pool_writes()
        .expect("the operator runs the WorkerPool controller")
        .snapshot()
}

async fn setup(prefix: &str) -> Result<(TestNamespace, InProcessOperator)> {
    setup_with(prefix, false).await
}

async fn setup_with(
    prefix: &str,
    token_review: bool,
) -> Result<(TestNamespace, InProcessOperator)> {
    init_test_logs();
    let client = cluster().await?;
    install_crds(&client).await?;
    // The worker images of these tests map to binaries of this workspace (tests/kubelet/images.yaml).
    build_binaries().await?;
    let ns = TestNamespace::new(prefix).await?;
    let mut options = InProcessOptions::default().worker_pools();
    if token_review {
        options = options.authenticator(Arc::new(TokenReviewAuthenticator::new(ns.client())));
    }
    let operator = InProcessOperator::start_with(ns.client(), ns.name(), options).await?;
    Ok((ns, operator))
}

/// A pool whose pods run a shell that sleeps (not a worker: the broker never hears of it).
fn sleeper_pool(name: &str, scaling: Value, replicas: Option<i32>) -> Result<WorkerPool> {
    let mut spec = json!({
        "concurrency": 2,
        "scaling": scaling,
        "template": {
            "metadata": {"labels": {"app": "sleeper"},
                          "annotations": {"sluice.dev/kubelet-backoff-base": "500ms"}},
            "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "worker", "image": "sluice/test-shell:dev",
                                "args": ["-c", "exec sleep 3600"]}]
            }
        }
    });
    if let Some(r) = replicas {
        spec["replicas"] = json!(r);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "WorkerPool",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

fn replicas_are(n: i32) -> impl Fn(Option<&Deployment>) -> bool {
    move |d: Option<&Deployment>| {
        d.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas) == Some(n)
    }
}

fn env_of(d: &Deployment) -> Vec<(String, String)> {
    let c = &d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    c.env
        .iter()
        .flatten()
        .map(|e| {
            let v = e.value.clone().unwrap_or_else(|| {
                e.value_from
                    .as_ref()
                    .and_then(|f| f.field_ref.as_ref())
                    .map(|f| format!("fieldRef:{}", f.field_path))
                    .unwrap_or_default()
            });
            (e.name.clone(), v)
        })
        .collect()
}

#[tokio::test]
async fn a_pool_owns_its_deployment_rolls_it_on_template_edits_and_gc_removes_it() -> Result<()> {
    let (ns, _op) = setup("wp-owns").await?;
    let pools: Api<WorkerPool> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let pool = pools
        .create(
            &PostParams::default(),
            &sleeper_pool("alpha", json!({"mode": "Manual"}), Some(1))?,
        )
        .await?;

    let d = wait_for(
        &deployments,
        "alpha",
        replicas_are(1),
        WAIT,
        "Deployment alpha with 1 replica",
    )
    .await?;
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(
        spec.selector
            .match_labels
            .as_ref()
            .unwrap()
            .get("sluice.dev/pool")
            .map(String::as_str),
        Some("alpha")
    );
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(
        labels.get("sluice.dev/pool").map(String::as_str),
        Some("alpha")
    );
    assert_eq!(
        labels.get("app").map(String::as_str),
        Some("sleeper"),
        "user labels kept"
    );
    let env = env_of(&d);
    for (k, v) in [
        ("SLUICE_POOL", "alpha"),
        ("SLUICE_CONCURRENCY", "2"),
        ("POD_NAME", "fieldRef:metadata.name"),
        ("POD_NAMESPACE", "fieldRef:metadata.namespace"),
        ("SLUICE_TOKEN_PATH", "/var/run/secrets/sluice/token"),
    ] {
        assert!(env.contains(&(k.into(), v.into())), "{k}={v} in {env:?}");
    }
    assert!(
        env.iter()
            .any(|(k, v)| k == "SLUICE_BROKER_URL" && v.starts_with("http://127.0.0.1:"))
    );
    let owner = &d.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("WorkerPool", "alpha")
    );
    assert_eq!(Some(&owner.uid), pool.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));

    // Status: replicas, ready, selector (what the scale subresource serves).
    let p = wait_for(
        &pools,
        "alpha",
        |p: Option<&WorkerPool>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.replicas == 1 && s.ready_replicas == 1)
        },
        WAIT,
        "pool alpha status to show 1 ready replica",
    )
    .await?;
    let status = p.status.unwrap();
    assert_eq!(status.selector.as_deref(), Some("sluice.dev/pool=alpha"));
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
    );
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.observed_generation == p.metadata.generation)
    );

    // A template edit rolls the Deployment: a second ReplicaSet, and the pod runs the new template.
    pools
        .patch(
            "alpha",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}}),
            ),
        )
        .await?;
    wait_for(
        &deployments,
        "alpha",
        |d: Option<&Deployment>| {
            d.and_then(|d| d.spec.as_ref())
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .is_some_and(|a| a.get("rev").map(String::as_str) == Some("2"))
        },
        WAIT,
        "the template edit to reach the Deployment",
    )
    .await?;
    let replicasets: Api<ReplicaSet> = ns.api();
    let started = Instant::now();
    loop {
        let rs = replicasets
            .list(&ListParams::default().labels("sluice.dev/pool=alpha"))
            .await?;
        let pods: Api<Pod> = ns.api();
        let new_pod_running = pods
            .list(&ListParams::default().labels("sluice.dev/pool=alpha"))
            .await?
            .items
            .iter()
            .any(|p| {
                p.annotations().get("rev").map(String::as_str) == Some("2")
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            });
        if rs.items.len() >= 2 && new_pod_running {
            break;
        }
        ensure!(
            started.elapsed() < WAIT,
            "the Deployment did not roll: {} ReplicaSets, new pod running: {new_pod_running}",
            rs.items.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Deleting the pool deletes the Deployment (garbage collection of owned objects).
    pools.delete("alpha", &DeleteParams::default()).await?;
    wait_deleted(
        &deployments,
        "alpha",
        WAIT,
        "Deployment alpha to be garbage-collected",
    )
    .await?;
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn external_mode_follows_kubectl_scale_and_an_hpa_resolves_the_pool() -> Result<()> {
    let (ns, _op) = setup("wp-external").await?;
    let pools: Api<WorkerPool> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    pools
        .create(
            &PostParams::default(),
            &sleeper_pool("ext", json!({"mode": "External"}), None)?,
        )
        .await?;
    wait_for(
        &deployments,
        "ext",
        replicas_are(1),
        WAIT,
        "Deployment ext to start with 1 replica",
    )
    .await?;

    kubectl(["scale", "workerpool/ext", "--replicas=3", "-n", ns.name()])
        .ok()
        .await?;
    wait_for(
        &deployments,
        "ext",
        replicas_are(3),
        WAIT,
        "kubectl scale to set the Deployment to 3",
    )
    .await?;
    wait_for(
        &pools,
        "ext",
        |p: Option<&WorkerPool>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.replicas == 3)
        },
        WAIT,
        "pool ext status.replicas to be 3",
    )
    .await?;

    // An HPA targeting the WorkerPool resolves it through the scale subresource (AbleToScale True).
    let hpas: Api<HorizontalPodAutoscaler> = ns.api();
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "ext"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "sluice.dev/v1alpha1", "kind": "WorkerPool", "name": "ext"},
            "minReplicas": 1, "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                         "target": {"type": "Utilization", "averageUtilization": 80}}}]
        }
    }))?;
    hpas.create(&PostParams::default(), &hpa).await?;
    let hpa = wait_for(
        &hpas,
        "ext",
        hpa_condition_true("AbleToScale"),
        Duration::from_secs(90),
        "the HPA to resolve the WorkerPool's scale subresource (AbleToScale True)",
    )
    .await?;
    let status = hpa.status.unwrap();
    assert_eq!(
        status.current_replicas,
        Some(3),
        "the HPA reads status.replicas through /scale"
    );
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn queue_depth_scales_to_max_within_seconds_and_back_to_zero_after_the_delay() -> Result<()> {
    let (ns, op) = setup("wp-queue").await?;
    let pools: Api<WorkerPool> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    pools
        .create(
            &PostParams::default(),
            &sleeper_pool(
                "busy",
                json!({"mode": "QueueDepth", "minReplicas": 0, "maxReplicas": 10,
                       "targetStepsPerWorker": 4, "scaleDownDelay": "5s"}),
                None,
            )?,
        )
        .await?;
    wait_for(
        &deployments,
        "busy",
        replicas_are(0),
        WAIT,
        "an idle pool to start at 0 replicas",
    )
    .await?;

    // Idle: count the controller's writes over 10 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_from = writes(&op);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_writes = writes(&op).total() - idle_from.total();

    // 40 steps of a handler no worker serves.
    let flows: Api<FlowRun> = ns.api();
    let steps: Vec<Value> = (0..40)
        .map(|i| json!({"name": format!("s{i}"), "handler": "nobody-serves-this"}))
        .collect();
    let fr: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "load"},
        "spec": {"pool": "busy", "steps": steps}
    }))?;
    let load_from = writes(&op);
    flows.create(&PostParams::default(), &fr).await?;
    let started = Instant::now();
    while op.broker().demand(ns.name(), "busy").queued < 40 {
        ensure!(
            started.elapsed() < WAIT,
            "the 40 steps never reached the broker queue"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let queue_full = Instant::now();
    wait_for(
        &deployments,
        "busy",
        replicas_are(10),
        Duration::from_secs(10),
        "replicas to reach 10",
    )
    .await?;
    let reaction = queue_full.elapsed();
    println!(
        "FIGURE scale-up reaction: queue full -> Deployment replicas 10 in {reaction:?}; FlowRun created -> 10 in {:?}",
        started.elapsed()
    );
    ensure!(
        reaction < Duration::from_millis(2500),
        "scale-up took {reaction:?}"
    );

    let p = wait_for(
        &pools,
        "busy",
        |p: Option<&WorkerPool>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.queue_depth == 40)
        },
        WAIT,
        "status.queueDepth to show 40",
    )
    .await?;
    let status = p.status.unwrap();
    let missing = status
        .conditions
        .iter()
        .find(|c| c.type_ == "HandlersMissing")
        .unwrap();
    assert!(
        missing.message.contains("nobody-serves-this"),
        "{missing:?}"
    );
    // status.scaling says the mode and why the pool last changed size; `kubectl get wp` shows the mode, the
    // desired, current and ready pods and the queue (`-o wide` the reason), and the operator published the
    // change as an Event with the same reason.
    let scaling = status.scaling.clone().context("status.scaling")?;
    ensure!(
        scaling.mode == ScalingMode::QueueDepth && scaling.desired_replicas == Some(10),
        "{scaling:?}"
    );
    let reason = scaling.last_scale_reason.clone().unwrap_or_default();
    ensure!(
        reason.starts_with("scaled up from ")
            && reason.contains(" to 10: ")
            && reason.ends_with(" per worker → 10 replicas (min 0, max 10)"),
        "status.scaling.lastScaleReason: {reason:?}"
    );
    let table = kubectl(["get", "wp", "busy", "-n", ns.name()]).ok().await?;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    ensure!(
        rows.len() == 2
            && rows[0]
                == [
                    "NAME", "MODE", "DESIRED", "CURRENT", "READY", "QUEUE", "AGE"
                ]
            && rows[1][..3] == ["busy", "QueueDepth", "10"]
            && rows[1][5] == "40",
        "kubectl get wp:\n{table}"
    );
    let wide = kubectl(["get", "wp", "busy", "-n", ns.name(), "-o", "wide"])
        .ok()
        .await?;
    ensure!(
        wide.contains("IN-FLIGHT") && wide.contains("LAST-SCALE") && wide.contains(&reason),
        "kubectl get wp -o wide:\n{wide}"
    );
    scale_event(&ns, "ScaledUp", " to 10: ").await?;
    // Under load for 10 s.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let load_writes = writes(&op).total() - load_from.total();
    let load_secs = started.elapsed().as_secs_f64();

    // The work goes away: back to 0 only after the 5 s scale-down delay.
    flows
        .patch(
            "load",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"cancel": true}})),
        )
        .await?;
    let drained = Instant::now();
    while op.broker().demand(ns.name(), "busy").queued > 0 {
        ensure!(
            drained.elapsed() < WAIT,
            "the queue never drained after deleting the FlowRun"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let empty = Instant::now();
    wait_for(
        &deployments,
        "busy",
        replicas_are(0),
        WAIT,
        "the pool to scale back to 0",
    )
    .await?;
    let down = empty.elapsed();
    println!("FIGURE scale-down after the queue emptied: {down:?} (scaleDownDelay 5s)");
    ensure!(
        down >= Duration::from_millis(4500),
        "scaled down after {down:?}, before the 5 s delay"
    );
    scale_event(&ns, "ScaledDown", " to 0: ").await?;

    println!(
        "FIGURE writes: idle {idle_writes} in 10 s ({}/min); under load {load_writes} in {load_secs:.1} s ({:.0}/min); {:?}",
        idle_writes * 6,
        load_writes as f64 * 60.0 / load_secs,
        writes(&op)
    );
    ensure!(
        idle_writes == 0,
        "an idle pool should cost no writes, saw {idle_writes}"
    );
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn crash_looping_worker_pods_are_reaped_with_an_event() -> Result<()> {
    let (ns, op) = setup("wp-reap").await?;
    let pools: Api<WorkerPool> = ns.api();
    let mut pool = sleeper_pool("crashy", json!({"mode": "Manual"}), Some(1))?;
    pool.spec.template.spec.as_mut().unwrap().containers[0].args =
        Some(vec!["-c".into(), "exit 3".into()]);
    pools.create(&PostParams::default(), &pool).await?;
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let started = Instant::now();
    loop {
        let list = events.list(&ListParams::default()).await?;
        if list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("WorkerCrashLooping"))
        {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(90),
            "no WorkerCrashLooping Event; events: {:?}",
            list.items
                .iter()
                .map(|e| e.reason.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(
        writes(&op).pod_deletes >= 1,
        "the crash-looping pod was not deleted"
    );
    ns.cleanup().await?;
    Ok(())
}

/// Whether a container of `pod` waits in `CrashLoopBackOff` after at least `restarts` restarts (what the reaper
/// acts on).
fn crash_looping(pod: &Pod, restarts: i32) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.restart_count >= restarts
                    && c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        == Some("CrashLoopBackOff")
            })
        })
}

/// Waits for an Event of the operator's on a WorkerPool with `reason` (ScaledUp, ScaledDown) whose note
/// contains `note_part`, and returns the note.
async fn scale_event(ns: &TestNamespace, reason: &str, note_part: &str) -> Result<String> {
    let started = Instant::now();
    loop {
        let events = events_of(ns).await?;
        if let Some((_, _, _, note)) = events.iter().find(|(r, kind, _, note)| {
            r == reason && kind == "WorkerPool" && note.contains(note_part)
        }) {
            return Ok(note.clone());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "no {reason} Event on the pool whose note contains {note_part:?}; events: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Events of the namespace as (reason, regarding kind, regarding name, note).
async fn events_of(ns: &TestNamespace) -> Result<Vec<(String, String, String, String)>> {
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|e| {
            let regarding = e.regarding.unwrap_or_default();
            (
                e.reason.unwrap_or_default(),
                regarding.kind.unwrap_or_default(),
                regarding.name.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect())
}

/// Two example workers serve a pool. The one that claims the step crashes in the middle of it (its process
/// exits); its container is restarted and crashes at once again until the process kubelet shows
/// `CrashLoopBackOff` past the reaper's threshold. The reaper deletes the pod, publishes Events on the pool and
/// the FlowRun and releases the attempt at once (long before the heartbeat timeout) as a retryable failure;
/// attempt 2 then succeeds on the other, healthy worker, and a late report of attempt 1 is refused.
#[tokio::test]
async fn a_worker_crashing_mid_step_is_reaped_and_its_step_succeeds_on_a_healthy_worker()
-> Result<()> {
    let (ns, op) = setup("wp-crashstep").await?;
    let pools: Api<WorkerPool> = ns.api();
    // A heartbeat timeout far beyond the test's waits: only the reaper can release the attempt in time.
    let heartbeat_timeout = Duration::from_secs(300);
    let pool: WorkerPool = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "WorkerPool",
        "metadata": {"name": "crashy"},
        "spec": {
            "replicas": 2,
            "concurrency": 1,
            "heartbeatTimeout": "300s",
            "scaling": {"mode": "Manual"},
            "template": {
                "metadata": {"annotations": {"sluice.dev/kubelet-backoff-base": "500ms"}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [{
                        "name": "worker", "image": EXAMPLE_WORKER_IMAGE,
                        // Test-only fault injection of the example worker; the emptyDir makes it per pod.
                        "env": [{"name": "SLUICE_EXAMPLE_CRASH_FILE", "value": "/scratch/crashed"}],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]
                    }],
                    "volumes": [{"name": "scratch", "emptyDir": {}}]
                }
            }
        }
    }))?;
    pools.create(&PostParams::default(), &pool).await?;

    // Both workers long-poll the broker before the step exists, so either may claim it.
    let started = Instant::now();
    loop {
        let polling = op
            .broker()
            .workers(ns.name(), "crashy")
            .iter()
            .filter(|w| w.polling)
            .count();
        if polling == 2 {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(90),
            "the two workers of pool crashy never polled the broker ({polling} polling)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pods: Api<Pod> = ns.api();
    let original: Vec<String> = pods
        .list(&ListParams::default().labels("sluice.dev/pool=crashy"))
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    ensure!(original.len() == 2, "two pods: {original:?}");

    // Watch from now on for the state the reaper acts on, as the process kubelet reports it.
    let watched = pods.clone();
    let crash_loop = tokio::spawn(async move {
        wait_for_list(
            &watched,
            kube::runtime::watcher::Config::default().labels("sluice.dev/pool=crashy"),
            |pods: &[Pod]| {
                pods.iter()
                    .any(|p| crash_looping(p, reaper::CRASH_LOOP_RESTARTS))
            },
            Duration::from_secs(90),
            "a worker pod in CrashLoopBackOff past the reaper's restart threshold",
        )
        .await
    });

    let flows: Api<FlowRun> = ns.api();
    let fr: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "crash"},
        "spec": {"pool": "crashy",
                 "defaults": {"heartbeatTimeout": "300s",
                              "retry": {"maxAttempts": 3, "initialBackoff": "100ms"}},
                 "steps": [{"name": "s", "handler": "crash_on_first_attempt"}]}
    }))?;
    let created = Instant::now();
    flows.create(&PostParams::default(), &fr).await?;

    let seen = crash_loop.await??;
    let looping = seen
        .iter()
        .find(|p| crash_looping(p, reaper::CRASH_LOOP_RESTARTS))
        .context("the crash-looping pod")?;
    let crashed = looping.name_any();
    let crash_looping_after = created.elapsed();
    ensure!(
        original.contains(&crashed),
        "{crashed} is one of {original:?}"
    );
    let healthy = original
        .iter()
        .find(|p| **p != crashed)
        .context("the other pod")?
        .clone();
    let container = &looping
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0];
    let last_exit = container
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    ensure!(
        last_exit == Some(3),
        "the worker process itself exited with the crash code; last state: {:?}",
        container.last_state
    );
    wait_deleted(
        &pods,
        &crashed,
        Duration::from_secs(30),
        "the crash-looping pod to be reaped",
    )
    .await?;
    let reaped_after = created.elapsed();

    let done = wait_for(
        &flows,
        "crash",
        |f: Option<&FlowRun>| {
            f.and_then(|f| f.status.as_ref())
                .is_some_and(|s| s.phase.is_some_and(|p| p.is_terminal()))
        },
        Duration::from_secs(60),
        "FlowRun crash to finish",
    )
    .await?;
    let succeeded_after = created.elapsed();
    let status = done.status.as_ref().context("status")?;
    let step = &status.steps["s"];
    ensure!(
        status.phase == Some(FlowPhase::Succeeded),
        "FlowRun ended {:?}: {step:?}",
        status.phase
    );
    assert_eq!(step.attempts, 2, "attempt 1 crashed, attempt 2 succeeded");
    assert_eq!(
        step.worker.as_deref(),
        Some(healthy.as_str()),
        "attempt 2 ran on the healthy worker"
    );
    assert_eq!(
        step.output,
        Some(json!({"attempt": 2, "worker": healthy})),
        "the output is attempt 2's, from the healthy worker"
    );
    let error = step.error.as_ref().context("attempt 1's failure is kept")?;
    assert_eq!(
        (error.type_.as_str(), error.attempt),
        ("HeartbeatLost", 1),
        "the crashed attempt counted as a retryable lost-worker failure: {error:?}"
    );
    ensure!(
        succeeded_after < heartbeat_timeout / 4,
        "released at once by the reaper, not by the {heartbeat_timeout:?} heartbeat timeout: took {succeeded_after:?}"
    );

    // Events: on the pool (why the pod went) and on the FlowRun (which attempt was released).
    let events = events_of(&ns).await?;
    let on_pool = events
        .iter()
        .find(|(reason, kind, name, _)| {
            reason == "WorkerCrashLooping" && kind == "WorkerPool" && name == "crashy"
        })
        .with_context(|| format!("no WorkerCrashLooping Event on the pool: {events:?}"))?;
    ensure!(
        on_pool.3.contains(&crashed) && on_pool.3.contains("1 steps released"),
        "{on_pool:?}"
    );
    let on_flow = events
        .iter()
        .find(|(reason, kind, name, _)| {
            reason == "WorkerLost" && kind == "FlowRun" && name == "crash"
        })
        .with_context(|| format!("no WorkerLost Event on the FlowRun: {events:?}"))?;
    ensure!(
        on_flow.3.contains(&crashed) && on_flow.3.contains("attempt 1"),
        "{on_flow:?}"
    );
    ensure!(writes(&op).pod_deletes == 1, "{:?}", writes(&op));

    // Fenced: attempt 1's late completion (as the crashed worker would send it) is refused; nothing changes.
    let port: u16 = op
        .broker_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("broker port")?;
    let late = json!({
        "id": sluice_wire::TaskId::from_parts(ns.name(), "crash", "s", None),
        "attempt": 1, "worker": crashed, "output": {"late": true},
    });
    let answer = http_request(
        port,
        "POST",
        sluice_wire::COMPLETE_PATH,
        None,
        &late.to_string(),
    )
    .await?;
    assert_eq!(answer.status, 409, "late report of attempt 1: {answer:?}");
    let after = flows.get("crash").await?;
    assert_eq!(
        after.status.as_ref().unwrap().steps["s"].output,
        step.output
    );

    println!(
        "FIGURE crashing worker: CrashLoopBackOff (restarts >= {}) {crash_looping_after:?} after the FlowRun, pod reaped at {reaped_after:?}, attempt 2 succeeded on {healthy} at {succeeded_after:?} (heartbeatTimeout {heartbeat_timeout:?})",
        reaper::CRASH_LOOP_RESTARTS
    );
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_frozen_worker_is_reaped_and_its_step_retried_on_a_new_pod() -> Result<()> {
    let (ns, op) = setup_with("wp-sigstop", true).await?;
    let pools: Api<WorkerPool> = ns.api();
    let pool: WorkerPool = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "WorkerPool",
        "metadata": {"name": "exec"},
        "spec": {
            "replicas": 1,
            "heartbeatTimeout": "4s",
            "scaling": {"mode": "Manual"},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "worker", "image": "sluice/worker:dev",
                                "args": ["--handler", "slow=sleep 3"]}]
            }}
        }
    }))?;
    pools.create(&PostParams::default(), &pool).await?;
    let flows: Api<FlowRun> = ns.api();
    let fr: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "frozen"},
        "spec": {"pool": "exec",
                 "defaults": {"heartbeatTimeout": "4s", "retry": {"maxAttempts": 3, "initialBackoff": "100ms"}},
                 "steps": [{"name": "s", "handler": "slow"}]}
    }))?;
    flows.create(&PostParams::default(), &fr).await?;
    let running = wait_for(
        &flows,
        "frozen",
        |f: Option<&FlowRun>| {
            f.and_then(|f| f.status.as_ref())
                .and_then(|s| s.steps.get("s"))
                .is_some_and(|s| s.worker.is_some() && s.attempts == 1)
        },
        Duration::from_secs(90),
        "step s to run on a worker pod",
    )
    .await?;
    let worker = running.status.unwrap().steps["s"].worker.clone().unwrap();
    let pods: Api<Pod> = ns.api();
    let pod = pods
        .get(&worker)
        .await
        .context("the worker is a pod of the pool")?;
    let pid = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs[0].container_id.as_deref())
        .and_then(|id| id.strip_prefix("sluice://"))
        .context("the process kubelet's container id names the pid")?
        .to_owned();
    let stop = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()?;
    ensure!(stop.success(), "kill -STOP {pid}");
    let frozen_at = Instant::now();
    wait_deleted(
        &pods,
        &worker,
        Duration::from_secs(30),
        "the frozen worker's pod to be reaped",
    )
    .await?;
    let reaped = frozen_at.elapsed();
    let fr = wait_for(
        &flows,
        "frozen",
        |f: Option<&FlowRun>| {
            f.and_then(|f| f.status.as_ref())
                .and_then(|s| s.steps.get("s"))
                .is_some_and(|s| s.attempts >= 2)
        },
        Duration::from_secs(30),
        "step s to be retried",
    )
    .await?;
    let released = frozen_at.elapsed();
    println!(
        "FIGURE frozen worker (SIGSTOP, heartbeatTimeout 4s): pod reaped after {reaped:?}, step re-queued after {released:?}"
    );
    let _ = fr;
    let done = wait_for(
        &flows,
        "frozen",
        |f: Option<&FlowRun>| {
            f.and_then(|f| f.status.as_ref())
                .and_then(|s| s.steps.get("s"))
                .is_some_and(|s| format!("{:?}", s.phase) == "Succeeded")
        },
        Duration::from_secs(90),
        "step s to succeed on the new worker pod",
    )
    .await?;
    let step = &done.status.unwrap().steps["s"];
    ensure!(
        step.worker.as_deref() != Some(worker.as_str()),
        "retried on another pod"
    );
    ensure!(writes(&op).pod_deletes >= 1);
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    ensure!(
        reasons.iter().any(|r| r == "WorkerSilent"),
        "no WorkerSilent Event: {reasons:?}"
    );
    ns.cleanup().await?;
    Ok(())
}

/// The `controller.kubernetes.io/pod-deletion-cost` of a pod, 0 when it has none (as the ReplicaSet controller
/// reads it).
fn deletion_cost(pod: &Pod) -> i64 {
    pod.annotations()
        .get(POD_DELETION_COST)
        .map_or(0, |c| c.parse().unwrap_or(i64::MIN))
}

/// The pods (by name) running the `long` steps of the scale-down test, from the FlowRuns' statuses.
fn long_step_workers(flows: &[FlowRun]) -> BTreeSet<String> {
    flows
        .iter()
        .filter(|f| f.labels().get("handler").map(String::as_str) == Some("long"))
        .filter_map(|f| f.status.as_ref()?.steps.get("s")?.worker.clone())
        .collect()
}

/// Real exec workers run 40 steps of half a second and four of thirty seconds, one at a time per worker. The
/// pool scales up to its maximum; once the quick steps are done and demand has stayed low for the scale-down
/// delay, it scales down while the long steps still run. Before the replica count drops, the four busy pods
/// carry a higher pod-deletion-cost than the idle ones; the pods that survive are exactly the busy ones; no
/// step is lost or retried because of the scale-down.
#[tokio::test]
async fn scaling_down_under_load_loses_and_retries_no_running_step() -> Result<()> {
    let (ns, _op) = setup("wp-scaledown").await?;
    let pools: Api<WorkerPool> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let pods: Api<Pod> = ns.api();
    let pool: WorkerPool = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "WorkerPool",
        "metadata": {"name": "busy"},
        "spec": {
            "concurrency": 1,
            "heartbeatTimeout": "10s",
            "scaling": {"mode": "QueueDepth", "minReplicas": 0, "maxReplicas": 10,
                        "targetStepsPerWorker": 4, "scaleDownDelay": "10s"},
            "template": {"spec": {
                "terminationGracePeriodSeconds": 15,
                "containers": [{"name": "worker", "image": "sluice/worker:dev",
                                "args": ["--handler", "quick=sleep 0.5", "--handler", "long=sleep 30"]}]
            }}
        }
    }))?;
    pools.create(&PostParams::default(), &pool).await?;
    let flows: Api<FlowRun> = ns.api();
    let started = Instant::now();
    for i in 0..44 {
        let handler = if i < 4 { "long" } else { "quick" };
        let fr: FlowRun = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": format!("job-{i}"),
                         "labels": {"sluice.dev/test": "scaledown", "handler": handler}},
            "spec": {"pool": "busy",
                     "defaults": {"retry": {"maxAttempts": 3, "initialBackoff": "100ms"}},
                     "steps": [{"name": "s", "handler": handler}]}
        }))?;
        flows.create(&PostParams::default(), &fr).await?;
    }
    let ours = || kube::runtime::watcher::Config::default().labels("sluice.dev/test=scaledown");
    wait_for(
        &deployments,
        "busy",
        replicas_are(10),
        WAIT,
        "the pool to scale to its maximum of 10",
    )
    .await?;
    println!(
        "FIGURE real workers: 10 replicas {:?} after the first of 44 FlowRuns",
        started.elapsed()
    );

    // The first scale-down: the controller wrote the costs (and saw them in its cache) before this replica
    // count, so the pods listed now carry them.
    let dropped = wait_for(
        &deployments,
        "busy",
        |d: Option<&Deployment>| {
            d.and_then(|d| d.spec.as_ref())
                .and_then(|s| s.replicas)
                .is_some_and(|r| r < 10)
        },
        Duration::from_secs(90),
        "the pool to scale down while the long steps run",
    )
    .await?;
    let scaled_down_at = started.elapsed();
    let at_drop = pods
        .list(&ListParams::default().labels("sluice.dev/pool=busy"))
        .await?
        .items;
    let flows_at_drop = flows
        .list(&ListParams::default().labels("sluice.dev/test=scaledown"))
        .await?
        .items;
    let quick_running = flows_at_drop
        .iter()
        .filter(|f| f.labels().get("handler").map(String::as_str) == Some("quick"))
        .filter(|f| {
            !f.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| p.is_terminal())
        })
        .count();
    ensure!(
        quick_running == 0,
        "precondition: the quick steps should be done before the scale-down delay ends ({quick_running} still running)"
    );
    let busy = long_step_workers(&flows_at_drop);
    ensure!(busy.len() == 4, "four pods run the long steps: {busy:?}");
    let costs: BTreeMap<String, i64> = at_drop
        .iter()
        .map(|p| (p.name_any(), deletion_cost(p)))
        .collect();
    ensure!(
        busy.iter().all(|b| costs.contains_key(b)),
        "the busy pods {busy:?} are pods of the pool: {costs:?}"
    );
    let idle: Vec<(&String, &i64)> = costs.iter().filter(|(p, _)| !busy.contains(*p)).collect();
    ensure!(!idle.is_empty(), "there are idle pods to remove: {costs:?}");
    let cheapest_busy = busy.iter().map(|b| costs[b]).min().unwrap_or(0);
    let dearest_idle = idle.iter().map(|(_, c)| **c).max().unwrap_or(0);
    ensure!(
        cheapest_busy > dearest_idle,
        "before replicas dropped to {:?}, busy pods {busy:?} should cost more to delete than idle ones: {costs:?}",
        dropped.spec.as_ref().and_then(|s| s.replicas)
    );

    // The scale-down goes on to the busy floor (4): the survivors are exactly the busy pods.
    wait_for(
        &deployments,
        "busy",
        replicas_are(4),
        Duration::from_secs(60),
        "the pool to scale down to its four busy workers",
    )
    .await?;
    let survivors = wait_for_list(
        &pods,
        kube::runtime::watcher::Config::default().labels("sluice.dev/pool=busy"),
        |pods: &[Pod]| {
            pods.iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count()
                == 4
        },
        Duration::from_secs(60),
        "the ReplicaSet to delete the idle pods",
    )
    .await?;
    let survivors: BTreeSet<String> = survivors
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(ResourceExt::name_any)
        .collect();
    let settled_at = started.elapsed();
    ensure!(
        survivors == busy,
        "the pods that survive the scale-down ({survivors:?}) should be the busy ones ({busy:?})"
    );
    let long_still_running = flows
        .list(&ListParams::default().labels("handler=long,sluice.dev/test=scaledown"))
        .await?
        .items
        .iter()
        .filter(|f| {
            !f.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| p.is_terminal())
        })
        .count();
    ensure!(
        long_still_running == 4,
        "the scale-down should finish while the long steps run ({long_still_running} still running at {settled_at:?})"
    );

    let done = wait_for_list(
        &flows,
        ours(),
        |frs: &[FlowRun]| {
            frs.len() == 44
                && frs.iter().all(|f| {
                    f.status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .is_some_and(|p| p.is_terminal())
                })
        },
        Duration::from_secs(120),
        "all 44 FlowRuns to finish",
    )
    .await?;
    let finished_at = started.elapsed();
    for fr in &done {
        let status = fr.status.as_ref().context("status")?;
        let step = &status.steps["s"];
        ensure!(
            status.phase == Some(FlowPhase::Succeeded) && step.attempts == 1,
            "{} ended {:?} after {} attempts ({:?}): a step was lost or retried",
            fr.name_any(),
            status.phase,
            step.attempts,
            step.error
        );
    }
    ensure!(
        long_step_workers(&done) == busy,
        "the long steps finished on the pods that started them"
    );
    println!(
        "FIGURE real workers: first scale-down at {scaled_down_at:?} (busy pods cost {cheapest_busy}, idle ones at most {dearest_idle}), down to the 4 busy pods at {settled_at:?}, all 44 steps done at {finished_at:?}, none retried"
    );
    wait_for(
        &deployments,
        "busy",
        replicas_are(0),
        WAIT,
        "the idle pool to return to 0",
    )
    .await?;
    ns.cleanup().await?;
    Ok(())
}
