//! The process kubelet (tests/kubelet) on the local control plane: Deployments run as real processes, scale down
//! with SIGTERM, are garbage-collected without leftovers; crashing containers back off; failed pods report their
//! exit code; env and projected tokens reach the processes; probes gate readiness; unknown images wait; a pod
//! annotated for a host address gets an EndpointSlice.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde_json::{Value, json};
use sluice_e2e::{TestNamespace, kubectl, wait_for, wait_for_list};

const WAIT: Duration = Duration::from_secs(90);
const SHELL_IMAGE: &str = "sluice/test-shell:dev";

fn pod_from(value: Value) -> Result<Pod> {
    Ok(serde_json::from_value(value)?)
}

/// A bare pod running `script` with /bin/sh; `OUT` is the test's scratch dir and `POD_NAME` the pod's name.
fn shell_pod(
    name: &str,
    out: &Path,
    script: &str,
    restart_policy: &str,
    annotations: Value,
) -> Result<Pod> {
    pod_from(json!({
        "metadata": { "name": name, "annotations": annotations },
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": 10,
            "containers": [{
                "name": "main",
                "image": SHELL_IMAGE,
                "args": ["-c", script],
                "env": [
                    { "name": "OUT", "value": out.display().to_string() },
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                ],
            }],
        },
    }))
}

fn main_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The process id the kubelet reports as `containerID: sluice://<pid>`.
fn container_pid(pod: &Pod) -> Option<i32> {
    main_status(pod)?
        .container_id
        .as_deref()?
        .strip_prefix("sluice://")?
        .parse()
        .ok()
}

fn process_alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Waits (a bounded poll: files have no watch) until `path` exists with content, and returns it.
async fn wait_file(path: &Path, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.trim().is_empty()
        {
            return Ok(text.trim().to_string());
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {timeout:?} waiting for the pod's process to write {}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_gone(pid: i32, timeout: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for process {pid} ({what}) to end");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A worker-like program: records its pid, and on SIGTERM records that it got it, then exits 0. (`$$$$` is the
/// shell's `$$`: Kubernetes expands `$(VAR)` in args and turns `$$` into `$`.)
const TRAP_TERM: &str = r#"
echo "$$$$" > "$OUT/$POD_NAME.pid.tmp" && mv "$OUT/$POD_NAME.pid.tmp" "$OUT/$POD_NAME.pid"
trap 'echo "SIGTERM" > "$OUT/$POD_NAME.term"; exit 0' TERM
while :; do sleep 1 & wait $!; done
"#;

#[tokio::test]
async fn deployment_pods_run_scale_down_with_sigterm_and_are_garbage_collected() -> Result<()> {
    let ns = TestNamespace::new("kubelet-deploy").await?;
    let out = ns.scratch_dir().to_path_buf();
    let deployments: Api<Deployment> = ns.api();
    let pods: Api<Pod> = ns.api();
    let replicasets: Api<ReplicaSet> = ns.api();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "sleeper" },
        "spec": {
            "replicas": 3,
            "selector": { "matchLabels": { "app": "sleeper" } },
            "template": {
                "metadata": { "labels": { "app": "sleeper" } },
                "spec": {
                    "terminationGracePeriodSeconds": 20,
                    "containers": [{
                        "name": "main",
                        "image": SHELL_IMAGE,
                        "args": ["-c", TRAP_TERM],
                        "env": [
                            { "name": "OUT", "value": out.display().to_string() },
                            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                        ],
                    }],
                },
            },
        },
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let selector = watcher::Config::default().labels("app=sleeper");

    let running = wait_for_list(
        &pods,
        selector.clone(),
        |ps: &[Pod]| ps.len() == 3 && ps.iter().all(|p| phase(p) == "Running" && is_ready(p)),
        WAIT,
        "3 Running and Ready pods of Deployment sleeper",
    )
    .await?;
    // Each process really runs: it wrote its pid to a file named by its pod name (fieldRef env).
    let mut pids = BTreeMap::new();
    for pod in &running {
        let text = wait_file(&out.join(format!("{}.pid", name(pod))), WAIT).await?;
        let written: i32 = text
            .parse()
            .with_context(|| format!("pod {} wrote pid {text:?}", name(pod)))?;
        ensure!(
            Some(written) == container_pid(pod),
            "pod {} wrote pid {written}, status says {:?}",
            name(pod),
            main_status(pod)
        );
        ensure!(
            process_alive(written),
            "process {written} of pod {} is not running",
            name(pod)
        );
        pids.insert(name(pod), written);
    }

    // Scale to 1 with the real kubectl: two processes get SIGTERM and stop within the grace period (20 s).
    let scaled_at = Instant::now();
    kubectl([
        "scale",
        "deployment/sleeper",
        "--replicas=1",
        "-n",
        ns.name(),
    ])
    .ok()
    .await?;
    let left = wait_for_list(
        &pods,
        selector.clone(),
        |ps: &[Pod]| ps.len() == 1,
        WAIT,
        "Deployment sleeper scaled down to 1 pod (the other two deleted by the kubelet)",
    )
    .await?;
    let survivor = name(&left[0]);
    ensure!(
        scaled_at.elapsed() < Duration::from_secs(20),
        "scaling down took {:?}, more than the grace period",
        scaled_at.elapsed()
    );
    for (pod, pid) in &pids {
        let term = out.join(format!("{pod}.term"));
        if *pod == survivor {
            ensure!(!term.exists(), "the surviving pod {pod} got SIGTERM");
            ensure!(
                process_alive(*pid),
                "the surviving pod's process {pid} is gone"
            );
        } else {
            ensure!(
                std::fs::read_to_string(&term).is_ok_and(|t| t.trim() == "SIGTERM"),
                "scaled-down pod {pod} did not record SIGTERM (was it killed?)"
            );
            wait_gone(*pid, Duration::from_secs(5), pod).await?;
        }
    }

    // Deleting the Deployment garbage-collects its ReplicaSet and pods; no process is left.
    deployments
        .delete("sleeper", &DeleteParams::background())
        .await?;
    wait_for_list(
        &replicasets,
        watcher::Config::default(),
        |rs: &[ReplicaSet]| rs.is_empty(),
        WAIT,
        "the garbage collector to delete the ReplicaSet of Deployment sleeper",
    )
    .await?;
    wait_for_list(
        &pods,
        selector,
        |ps: &[Pod]| ps.is_empty(),
        WAIT,
        "all pods of Deployment sleeper deleted",
    )
    .await?;
    for (pod, pid) in &pids {
        wait_gone(*pid, Duration::from_secs(5), pod).await?;
    }
    ensure!(
        out.join(format!("{survivor}.term")).exists(),
        "the last pod {survivor} was not stopped with SIGTERM"
    );
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_crashing_container_restarts_with_growing_back_off() -> Result<()> {
    let ns = TestNamespace::new("kubelet-crash").await?;
    let pods: Api<Pod> = ns.api();
    let out = ns.scratch_dir().to_path_buf();
    // A 1 s back-off base for this pod: restarts at ~0 s, +1 s, +2 s, +4 s …
    let script = r#"date +%s%N >> "$OUT/starts"; exit 3"#;
    let pod = shell_pod(
        "crasher",
        &out,
        script,
        "Always",
        json!({ "sluice.dev/kubelet-backoff-base": "1s" }),
    )?;
    pods.create(&PostParams::default(), &pod).await?;
    let looping = wait_for(
        &pods,
        "crasher",
        |p: Option<&Pod>| {
            p.and_then(main_status).is_some_and(|s| {
                s.restart_count >= 3
                    && s.state
                        .as_ref()
                        .and_then(|st| st.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        == Some("CrashLoopBackOff")
            })
        },
        WAIT,
        "pod crasher in CrashLoopBackOff with restartCount >= 3",
    )
    .await?;
    let status = main_status(&looping).context("no container status")?;
    let last = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("no lastState.terminated")?;
    ensure!(
        last.exit_code == 3,
        "lastState.terminated.exitCode is {}, not 3",
        last.exit_code
    );
    ensure!(!status.ready, "a crash-looping container is reported ready");
    ensure!(
        phase(&looping) == "Running",
        "phase is {}, a crash-looping Always pod stays Running",
        phase(&looping)
    );

    // The back-off grows: the gaps between starts increase (run time is the same each time).
    let starts: Vec<i128> = std::fs::read_to_string(out.join("starts"))?
        .lines()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(starts.len() >= 4, "only {} starts recorded", starts.len());
    let gaps: Vec<f64> = starts
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e9)
        .collect();
    ensure!(
        gaps[1] >= 0.9 && gaps[2] >= 1.8 && gaps[2] > gaps[1] && gaps[1] > gaps[0],
        "restart gaps do not grow like 0, 1 s, 2 s: {gaps:?}"
    );
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_never_restarted_pod_that_exits_1_fails_with_exit_code_1() -> Result<()> {
    let ns = TestNamespace::new("kubelet-fail").await?;
    let pods: Api<Pod> = ns.api();
    let pod = shell_pod(
        "failer",
        ns.scratch_dir(),
        "echo failing; exit 1",
        "Never",
        json!({}),
    )?;
    pods.create(&PostParams::default(), &pod).await?;
    let failed = wait_for(
        &pods,
        "failer",
        |p: Option<&Pod>| p.is_some_and(|p| phase(p) == "Failed"),
        WAIT,
        "pod failer to end Failed",
    )
    .await?;
    let status = main_status(&failed).context("no container status")?;
    let terminated = status
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .context("container not terminated")?;
    ensure!(
        terminated.exit_code == 1,
        "exit code {} instead of 1",
        terminated.exit_code
    );
    ensure!(
        terminated.reason.as_deref() == Some("Error"),
        "reason {:?}",
        terminated.reason
    );
    ensure!(
        status.restart_count == 0,
        "a Never pod was restarted {} times",
        status.restart_count
    );
    // A pod that exits 0 under the same policy succeeds.
    let pod = shell_pod("succeeder", ns.scratch_dir(), "exit 0", "Never", json!({}))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait_for(
        &pods,
        "succeeder",
        |p: Option<&Pod>| p.is_some_and(|p| phase(p) == "Succeeded"),
        WAIT,
        "pod succeeder to end Succeeded",
    )
    .await?;
    // Its output went to the pod's log file under the kubelet's state dir (not checked here: the test does
    // not know the cluster's state dir); deletion of a finished pod still completes.
    pods.delete("failer", &DeleteParams::default()).await?;
    sluice_e2e::wait_deleted(&pods, "failer", WAIT, "finished pod failer to be deleted").await?;
    ns.cleanup().await?;
    Ok(())
}

async fn review(client: Client, token: &str, audience: &str) -> Result<TokenReview> {
    let review: TokenReview = serde_json::from_value(json!({
        "spec": { "token": token, "audiences": [audience] }
    }))?;
    Ok(Api::<TokenReview>::all(client)
        .create(&PostParams::default(), &review)
        .await?)
}

#[tokio::test]
async fn env_refs_and_the_projected_token_reach_the_process() -> Result<()> {
    let ns = TestNamespace::new("kubelet-token").await?;
    let pods: Api<Pod> = ns.api();
    let out: PathBuf = ns.scratch_dir().to_path_buf();
    let cm: ConfigMap = serde_json::from_value(
        json!({ "metadata": { "name": "settings" }, "data": { "mode": "fast" } }),
    )?;
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await?;
    let secret: Secret = serde_json::from_value(
        json!({ "metadata": { "name": "creds" }, "stringData": { "password": "hunter2" } }),
    )?;
    ns.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await?;
    let script = r#"
cp "$TOKEN_PATH" "$OUT/token"
cp "$SLUICE_VOLUME_ROOT/var/run/secrets/sluice/token" "$OUT/token-by-root"
cp "$SLUICE_MOUNT_VAR_RUN_SECRETS_SLUICE/token" "$OUT/token-by-mount-env"
cp "$SLUICE_VOLUME_ROOT/var/run/secrets/kubernetes.io/serviceaccount/token" "$OUT/default-token"
printf '%s\n' "$POD_NAME" "$POD_NAMESPACE" "$POD_UID" "$POD_IP" "$NODE" "$SA" "$MODE" "$PASSWORD" > "$OUT/env"
"#;
    let pod = pod_from(json!({
        "metadata": { "name": "token-reader" },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "main",
                "image": SHELL_IMAGE,
                "args": ["-c", script],
                "env": [
                    { "name": "OUT", "value": out.display().to_string() },
                    { "name": "TOKEN_PATH", "value": "/var/run/secrets/sluice/token" },
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
                    { "name": "POD_UID", "valueFrom": { "fieldRef": { "fieldPath": "metadata.uid" } } },
                    { "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                    { "name": "NODE", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } },
                    { "name": "SA", "valueFrom": { "fieldRef": { "fieldPath": "spec.serviceAccountName" } } },
                    { "name": "MODE", "valueFrom": { "configMapKeyRef": { "name": "settings", "key": "mode" } } },
                    { "name": "PASSWORD", "valueFrom": { "secretKeyRef": { "name": "creds", "key": "password" } } },
                ],
                "volumeMounts": [{ "name": "sluice-token", "mountPath": "/var/run/secrets/sluice", "readOnly": true }],
            }],
            "volumes": [{
                "name": "sluice-token",
                "projected": { "sources": [{
                    "serviceAccountToken": { "audience": "sluice-e2e", "expirationSeconds": 600, "path": "token" }
                }] },
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let done = wait_for(
        &pods,
        "token-reader",
        |p: Option<&Pod>| p.is_some_and(|p| matches!(phase(p), "Succeeded" | "Failed")),
        WAIT,
        "pod token-reader to finish",
    )
    .await?;
    ensure!(
        phase(&done) == "Succeeded",
        "token-reader ended {}: {:?}",
        phase(&done),
        main_status(&done)
    );
    let uid = done.metadata.uid.clone().unwrap_or_default();

    let env: Vec<String> = std::fs::read_to_string(out.join("env"))?
        .lines()
        .map(str::to_string)
        .collect();
    let want = [
        "token-reader",
        ns.name(),
        &uid,
        "127.0.0.1",
        "sluice-local",
        "default",
        "fast",
        "hunter2",
    ];
    ensure!(
        env == want,
        "the process saw env {env:?}, expected {want:?}"
    );

    let token = std::fs::read_to_string(out.join("token"))?;
    for copy in ["token-by-root", "token-by-mount-env"] {
        ensure!(
            std::fs::read_to_string(out.join(copy))? == token,
            "{copy} differs from the token at TOKEN_PATH"
        );
    }
    let claims = sluice_e2e::jwt_claims(token.trim())?;
    ensure!(
        claims["kubernetes.io"]["pod"]["name"] == "token-reader",
        "no pod-name claim in {claims}"
    );
    ensure!(
        claims["kubernetes.io"]["pod"]["uid"] == uid.as_str(),
        "no pod-uid claim in {claims}"
    );
    ensure!(
        claims["aud"] == json!(["sluice-e2e"]),
        "audience {} is not [sluice-e2e]",
        claims["aud"]
    );
    let reviewed = review(ns.client(), token.trim(), "sluice-e2e").await?;
    let status = reviewed.status.context("TokenReview without status")?;
    ensure!(
        status.authenticated == Some(true),
        "the projected token did not authenticate: {:?}",
        status.error
    );
    let user = status.user.context("no user")?;
    ensure!(
        user.username.as_deref() == Some(&format!("system:serviceaccount:{}:default", ns.name())),
        "token user {:?}",
        user.username
    );
    // The automounted service-account token is there too.
    let default_claims =
        sluice_e2e::jwt_claims(std::fs::read_to_string(out.join("default-token"))?.trim())?;
    ensure!(
        default_claims["kubernetes.io"]["pod"]["name"] == "token-reader",
        "default token claims {default_claims}"
    );
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn readiness_follows_an_exec_probe() -> Result<()> {
    let ns = TestNamespace::new("kubelet-probe").await?;
    let pods: Api<Pod> = ns.api();
    let out = ns.scratch_dir().to_path_buf();
    // Ready only once the process creates `ready` in its working dir, after it was told to.
    let script =
        r#"while [ ! -e "$OUT/go" ]; do sleep 0.1; done; touch ready; while :; do sleep 1; done"#;
    let mut pod = shell_pod("prober", &out, script, "Always", json!({}))?;
    let container = &mut pod.spec.as_mut().context("spec")?.containers[0];
    container.readiness_probe = Some(serde_json::from_value(json!({
        "exec": { "command": ["/bin/sh", "-c", "test -e ready"] },
        "periodSeconds": 1,
    }))?);
    pods.create(&PostParams::default(), &pod).await?;
    wait_for(
        &pods,
        "prober",
        |p: Option<&Pod>| {
            p.is_some_and(|p| phase(p) == "Running" && !is_ready(p))
                && p.and_then(main_status)
                    .is_some_and(|s| s.started == Some(true) && !s.ready)
        },
        WAIT,
        "pod prober Running, started but not ready",
    )
    .await?;
    std::fs::write(out.join("go"), "")?;
    wait_for(
        &pods,
        "prober",
        |p: Option<&Pod>| p.is_some_and(is_ready),
        WAIT,
        "pod prober Ready once its probe passes",
    )
    .await?;
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn an_unknown_image_waits_in_err_image_pull() -> Result<()> {
    let ns = TestNamespace::new("kubelet-image").await?;
    let pods: Api<Pod> = ns.api();
    let mut pod = shell_pod("no-image", ns.scratch_dir(), "exit 0", "Always", json!({}))?;
    pod.spec.as_mut().context("spec")?.containers[0].image =
        Some("example.invalid/not-mapped:1".into());
    pods.create(&PostParams::default(), &pod).await?;
    let waiting = wait_for(
        &pods,
        "no-image",
        |p: Option<&Pod>| {
            p.and_then(main_status)
                .and_then(|s| s.state.as_ref()?.waiting.as_ref()?.reason.clone())
                .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
        },
        WAIT,
        "pod no-image waiting in ErrImagePull",
    )
    .await?;
    ensure!(
        phase(&waiting) == "Pending",
        "phase {} instead of Pending",
        phase(&waiting)
    );
    ns.cleanup().await?;
    Ok(())
}

fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.pod_ip.as_deref()
}

/// A shell pod labelled `app: <name>` that records `POD_IP` (a `status.podIP` fieldRef) as the shell sees it
/// and as the kubelet expands `$(POD_IP)` in its args, in `$OUT/<name>.ip`, then sleeps.
fn pod_ip_recorder(name: &str, out: &Path, annotations: Value) -> Result<Pod> {
    let script = r#"
f="$OUT/$POD_NAME.ip"
echo "$POD_IP $(POD_IP)" > "$f.tmp" && mv "$f.tmp" "$f"
exec sleep 3600
"#;
    let mut pod = shell_pod(name, out, script, "Always", annotations)?;
    pod.metadata.labels = Some([("app".to_string(), name.to_string())].into());
    let container = &mut pod.spec.as_mut().context("spec")?.containers[0];
    container.env.get_or_insert_default().push(serde_json::from_value(
        json!({ "name": "POD_IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } }),
    )?);
    Ok(pod)
}

/// Waits for pod `name` to run with a `podIP`; returns the address, checked against what its process recorded.
async fn running_pod_ip(pods: &Api<Pod>, name: &str, out: &Path) -> Result<Ipv4Addr> {
    let pod = wait_for(
        pods,
        name,
        |p: Option<&Pod>| p.is_some_and(|p| phase(p) == "Running" && pod_ip(p).is_some()),
        WAIT,
        &format!("pod {name} Running with a podIP"),
    )
    .await?;
    let reported = pod_ip(&pod).unwrap_or_default();
    let ip: Ipv4Addr = reported
        .parse()
        .with_context(|| format!("pod {name} reports podIP {reported:?}"))?;
    let recorded = wait_file(&out.join(format!("{name}.ip")), WAIT).await?;
    ensure!(
        recorded == format!("{ip} {ip}"),
        "pod {name} has podIP {ip}, its process saw POD_IP and $(POD_IP) as {recorded:?}"
    );
    Ok(ip)
}

#[tokio::test]
async fn a_pod_annotated_for_a_host_ip_reports_one_that_gets_an_endpoint_slice() -> Result<()> {
    let ns = TestNamespace::new("kubelet-pod-ip").await?;
    let pods: Api<Pod> = ns.api();
    let out = ns.scratch_dir().to_path_buf();
    let host = pod_ip_recorder(
        "on-host",
        &out,
        json!({ "sluice.dev/kubelet-pod-ip": "host" }),
    )?;
    pods.create(&PostParams::default(), &host).await?;
    pods.create(
        &PostParams::default(),
        &pod_ip_recorder("on-loopback", &out, json!({}))?,
    )
    .await?;
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": "on-host" },
        "spec": {
            "selector": { "app": "on-host" },
            "ports": [{ "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" }],
        },
    }))?;
    ns.api::<Service>()
        .create(&PostParams::default(), &service)
        .await?;

    let ip = running_pod_ip(&pods, "on-host", &out).await?;
    ensure!(
        !ip.is_loopback() && !ip.is_link_local() && !ip.is_unspecified(),
        "the annotated pod reports {ip}, not a routable address of this machine"
    );
    let unannotated = running_pod_ip(&pods, "on-loopback", &out).await?;
    ensure!(
        unannotated == Ipv4Addr::LOCALHOST,
        "the pod without the annotation reports {unannotated} instead of 127.0.0.1"
    );

    // The endpointslice controller publishes the annotated pod's address, ready, for the Service.
    let address = ip.to_string();
    wait_for_list(
        &ns.api::<EndpointSlice>(),
        watcher::Config::default().labels("kubernetes.io/service-name=on-host"),
        |slices: &[EndpointSlice]| {
            slices
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .any(|e| {
                    e.addresses.contains(&address)
                        && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
                })
        },
        WAIT,
        "an EndpointSlice of Service on-host with the annotated pod's address, ready",
    )
    .await?;
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn the_node_lease_is_renewed() -> Result<()> {
    let client = sluice_e2e::cluster().await?;
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let lease = leases.get("sluice-local").await?;
    let spec = lease.spec.context("lease without spec")?;
    ensure!(
        spec.holder_identity.as_deref() == Some("sluice-local"),
        "holder {:?}",
        spec.holder_identity
    );
    let first = spec.renew_time.context("no renewTime")?;
    wait_for(
        &leases,
        "sluice-local",
        |l: Option<&Lease>| {
            l.and_then(|l| l.spec.as_ref()?.renew_time.clone())
                .is_some_and(|t| t.0 > first.0)
        },
        Duration::from_secs(30),
        "the node lease to be renewed",
    )
    .await?;
    Ok(())
}
