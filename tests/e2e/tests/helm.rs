//! The Helm chart (`charts/sluice`) and the manifests rendered from it (`deploy/sluice.yaml`):
//! - `helm lint --strict` passes with the default values and with every optional part on;
//! - a typo in values fails `helm install` with a message naming it (values.schema.json), installing nothing;
//! - `deploy/sluice.yaml` is exactly what the chart renders (drift test);
//! - `defaultTtlSecondsAfterFinished` becomes the operator's `--default-ttl-seconds-after-finished`, and the
//!   operator's role may delete FlowRuns;
//! - the rendered manifests (default, namespaced mode, NetworkPolicy on) pass a server-side dry-run on the local
//!   control plane, and the ServiceMonitor (whose CRD the cluster lacks) renders to select the metrics Service;
//!   the admission policies (status integrity, WorkerPool rights, JSON nesting) compile on the API server, exempt the
//!   operator's ServiceAccount (and `admissionPolicy.operatorUsernames`), are bound to every namespace or to the
//!   watched ones, and go away with `admissionPolicy.enabled=false`;
//! - a real `helm install` into a namespace enforcing the `restricted` Pod Security Standard: the operator pod,
//!   run by the process kubelet from the mapped `sluice/operator:dev` image, reaches the API server with its own
//!   service account, wins the Lease, turns Ready through its probes and, with worker authentication on, runs
//!   the example fan-out flow on a WorkerPool to Succeeded; `helm uninstall` then removes the release but keeps
//!   the CRDs and the FlowRun.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::runtime::watcher;
use serde_json::{Value, json};
use sluice_e2e::{
    CHART, HelmRelease, TestNamespace, cluster, helm, kubectl, pod_is_ready, pod_log, repo_root,
    wait_deleted, wait_for, wait_for_list,
};
use sluice_operator::api::{FlowPhase, FlowRun, WorkerPool};

/// The YAML documents of a multi-document stream (comment-only documents dropped), parsed.
fn documents(yaml: &str) -> Result<Vec<(String, Value)>> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |text: &mut String| -> Result<()> {
        let value: Value = serde_saphyr::from_str(text)
            .with_context(|| format!("parsing a rendered document:\n{text}"))?;
        if !value.is_null() {
            docs.push((std::mem::take(text), value));
        }
        text.clear();
        Ok(())
    };
    for line in yaml.lines() {
        if line == "---" {
            flush(&mut current)?;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current)?;
    Ok(docs)
}

fn kind_and_name(doc: &Value) -> (String, String) {
    (
        doc["kind"].as_str().unwrap_or_default().to_owned(),
        doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

async fn render(release: &str, namespace: &str, set: &[&str]) -> Result<String> {
    let mut args = vec![
        "template",
        release,
        CHART,
        "--namespace",
        namespace,
        "--include-crds",
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    Ok(helm(args).ok().await?)
}

/// The chart's ValidatingAdmissionPolicies, by name after the release's.
const POLICIES: [&str; 4] = [
    "flowrun-status",
    "workerpool-rights",
    "flowrun-json-depth",
    "step-graph",
];

#[tokio::test]
async fn the_chart_lints_strictly() -> Result<()> {
    // Default values, then every optional part on, the admission policy off, and a certificate from a Secret.
    let variants: [&[&str]; 4] = [
        &[],
        &[
            "watchNamespaces={team-a,team-b}",
            "serviceMonitor.enabled=true",
            "networkPolicy.enabled=true",
            "workerAuth.enabled=false",
            "replicas=2",
            "externalMetrics.enabled=true",
            "admissionPolicy.operatorUsernames={sluice-admin,system:serviceaccount:ops:runner}",
        ],
        &["admissionPolicy.enabled=false"],
        &[
            "externalMetrics.enabled=true",
            "externalMetrics.certificate.secretName=metrics-tls",
            "externalMetrics.apiService.annotations.cert-manager\\.io/inject-ca-from=sluice-system/metrics-tls",
        ],
    ];
    for sets in variants {
        let mut args = vec!["lint", CHART, "--strict"];
        for set in sets {
            args.extend(["--set", set]);
        }
        let out = helm(args).ok().await?;
        ensure!(
            out.contains("0 chart(s) failed"),
            "helm lint {sets:?}: {out}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn deploy_manifests_are_what_the_chart_renders() -> Result<()> {
    let script = repo_root().join("tests/scripts/render-manifests.sh");
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .arg("--stdout")
        .current_dir(repo_root())
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "render-manifests.sh: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered = String::from_utf8(output.stdout)?;
    let committed = std::fs::read_to_string(repo_root().join("deploy/sluice.yaml"))?;
    ensure!(
        rendered == committed,
        "deploy/sluice.yaml is stale: run `make manifests` (or `make crds` after a type change)"
    );
    // What a `kubectl apply -f deploy/sluice.yaml` user gets: the namespace, the CRDs and the operator.
    let docs = documents(&committed)?;
    let kinds: BTreeSet<(String, String)> = docs.iter().map(|(_, d)| kind_and_name(d)).collect();
    for wanted in [
        ("Namespace", "sluice-system"),
        ("CustomResourceDefinition", "flowruns.sluice.dev"),
        ("CustomResourceDefinition", "workerpools.sluice.dev"),
        ("CustomResourceDefinition", "cronflows.sluice.dev"),
        ("ServiceAccount", "sluice"),
        ("ClusterRole", "sluice"),
        ("ClusterRole", "sluice-auth"),
        ("Role", "sluice-leader-election"),
        ("Service", "sluice-broker"),
        ("Service", "sluice-metrics"),
        ("Deployment", "sluice"),
        ("ValidatingAdmissionPolicy", "sluice-flowrun-status"),
        ("ValidatingAdmissionPolicyBinding", "sluice-flowrun-status"),
        ("ValidatingAdmissionPolicy", "sluice-workerpool-rights"),
        (
            "ValidatingAdmissionPolicyBinding",
            "sluice-workerpool-rights",
        ),
        ("ValidatingAdmissionPolicy", "sluice-flowrun-json-depth"),
        (
            "ValidatingAdmissionPolicyBinding",
            "sluice-flowrun-json-depth",
        ),
        ("ValidatingAdmissionPolicy", "sluice-step-graph"),
        ("ValidatingAdmissionPolicyBinding", "sluice-step-graph"),
    ] {
        ensure!(
            kinds.contains(&(wanted.0.to_owned(), wanted.1.to_owned())),
            "deploy/sluice.yaml lacks {wanted:?}; it has {kinds:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_typo_in_values_fails_helm_install_clearly_and_installs_nothing() -> Result<()> {
    let ns = TestNamespace::new("helm-typo").await?;
    let out = helm([
        "install",
        "typo",
        CHART,
        "--namespace",
        ns.name(),
        "--set",
        "replicaz=2",
    ])
    .output()
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "helm install accepted replicaz=2");
    ensure!(
        stderr.contains("additional properties 'replicaz' not allowed"),
        "the error does not name the typo: {stderr}"
    );
    for (set, needle) in [
        ("logFormat=xml", "/logFormat"),
        ("broker.port=70000", "/broker/port"),
        ("workerAuth.enable=false", "'enable' not allowed"),
    ] {
        let out = helm(["template", "typo", CHART, "--set", set])
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains(needle),
            "--set {set} should fail naming {needle}: {stderr}"
        );
    }
    let releases = helm(["list", "--namespace", ns.name(), "-q"]).ok().await?;
    ensure!(releases.trim().is_empty(), "releases left: {releases}");
    let deployments: Api<Deployment> = ns.api();
    ensure!(
        deployments
            .list(&Default::default())
            .await?
            .items
            .is_empty()
    );
    ns.cleanup().await?;
    Ok(())
}

/// `kubectl apply --server-side --dry-run=server` of rendered manifests; returns kubectl's output.
async fn dry_run(docs: &[(String, Value)]) -> Result<String> {
    let stream = docs
        .iter()
        .map(|(text, _)| text.as_str())
        .collect::<Vec<_>>()
        .join("---\n");
    let out = kubectl([
        "apply",
        "--server-side",
        "--field-manager=sluice-e2e-helm",
        "--dry-run=server",
        "-f",
        "-",
    ])
    .stdin(stream)
    .ok()
    .await?;
    for (_, doc) in docs {
        let (kind, name) = kind_and_name(doc);
        let kind = kind.to_lowercase();
        // `<kind>[.<group>]/<name> serverside-applied (server dry run)`
        let applied = |line: &str| {
            let Some((resource, rest)) = line.split_once(' ') else {
                return false;
            };
            let Some((kind_group, got_name)) = resource.split_once('/') else {
                return false;
            };
            kind_group.split('.').next() == Some(kind.as_str())
                && got_name == name
                && rest.contains("(server dry run)")
        };
        ensure!(
            out.lines().any(applied),
            "the dry run did not apply {kind} {name}:\n{out}"
        );
    }
    Ok(out)
}

#[tokio::test]
async fn rendered_manifests_pass_a_server_side_dry_run() -> Result<()> {
    let ns = TestNamespace::new("helm-dry").await?;
    let other = TestNamespace::new("helm-dry-watched").await?;
    let release = "sluice-dry";

    // Default values: cluster-wide RBAC.
    let docs = documents(&render(release, ns.name(), &[]).await?)?;
    let kinds: Vec<(String, String)> = docs.iter().map(|(_, d)| kind_and_name(d)).collect();
    ensure!(kinds.contains(&("ClusterRoleBinding".into(), release.into())));
    ensure!(
        !kinds
            .iter()
            .any(|(k, _)| k == "NetworkPolicy" || k == "ServiceMonitor")
    );
    // The admission policies (the dry run compiles their CEL), bound cluster-wide, exempting the operator's
    // ServiceAccount alone.
    let operator = format!("system:serviceaccount:{}:{release}", ns.name());
    for name in POLICIES {
        let name = format!("{release}-{name}");
        let policy = docs
            .iter()
            .find(|(_, d)| {
                d["kind"] == "ValidatingAdmissionPolicy" && d["metadata"]["name"] == name
            })
            .map(|(_, d)| d)
            .with_context(|| format!("no ValidatingAdmissionPolicy {name}"))?;
        ensure!(
            policy["spec"]["matchConditions"][0]["expression"]
                == format!("!(request.userInfo.username in [\"{operator}\"])").as_str(),
            "policy {name} exempts {}",
            policy["spec"]["matchConditions"][0]["expression"]
        );
        let binding = docs
            .iter()
            .find(|(_, d)| {
                d["kind"] == "ValidatingAdmissionPolicyBinding" && d["metadata"]["name"] == name
            })
            .map(|(_, d)| d)
            .with_context(|| format!("no ValidatingAdmissionPolicyBinding {name}"))?;
        ensure!(
            binding["spec"]["policyName"] == name.as_str()
                && binding["spec"]["validationActions"] == json!(["Deny"])
                && binding["spec"].get("matchResources").is_none(),
            "binding {name}: {binding}"
        );
    }
    let status_policy = docs
        .iter()
        .find(|(_, d)| {
            d["kind"] == "ValidatingAdmissionPolicy"
                && d["metadata"]["name"] == format!("{release}-flowrun-status").as_str()
        })
        .map(|(_, d)| d)
        .context("no status policy")?;
    ensure!(
        status_policy["spec"]["matchConstraints"]["resourceRules"]
            == json!([{"apiGroups": ["sluice.dev"], "apiVersions": ["*"], "operations": ["UPDATE"],
                       "resources": ["flowruns/status"]}]),
        "the status policy matches {}",
        status_policy["spec"]["matchConstraints"]
    );
    let out = dry_run(&docs).await?;
    ensure!(
        out.contains(&format!(
            "validatingadmissionpolicy.admissionregistration.k8s.io/{release}-flowrun-status "
        )),
        "{out}"
    );
    // Turned off, and with further operator identities.
    let docs = documents(&render(release, ns.name(), &["admissionPolicy.enabled=false"]).await?)?;
    ensure!(
        !docs.iter().any(|(_, d)| d["kind"]
            .as_str()
            .is_some_and(|k| k.starts_with("ValidatingAdmissionPolicy"))),
        "admissionPolicy.enabled=false still renders a policy"
    );
    let docs = documents(
        &render(
            release,
            ns.name(),
            &["admissionPolicy.operatorUsernames={sluice-admin}"],
        )
        .await?,
    )?;
    let exempt = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "ValidatingAdmissionPolicy")
        .map(|(_, d)| {
            d["spec"]["matchConditions"][0]["expression"]
                .as_str()
                .unwrap_or_default()
        })
        .collect::<Vec<_>>();
    ensure!(
        exempt.len() == POLICIES.len()
            && exempt.iter().all(|e| *e
                == format!("!(request.userInfo.username in [\"{operator}\",\"sluice-admin\"])")),
        "operatorUsernames: {exempt:?}"
    );

    // Namespaced mode with the NetworkPolicy and ServiceMonitor on: a Role and RoleBinding in each watched
    // namespace, no cluster-wide workload rights (only TokenReview).
    let watched = format!("watchNamespaces={{{},{}}}", ns.name(), other.name());
    let docs = documents(
        &render(
            release,
            ns.name(),
            &[
                &watched,
                "networkPolicy.enabled=true",
                "serviceMonitor.enabled=true",
            ],
        )
        .await?,
    )?;
    let roles: BTreeSet<&str> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "Role" && d["metadata"]["name"] == release)
        .filter_map(|(_, d)| d["metadata"]["namespace"].as_str())
        .collect();
    ensure!(
        roles == BTreeSet::from([ns.name(), other.name()]),
        "Roles in {roles:?}"
    );
    // The admission policies apply in the watched namespaces only.
    let bindings: Vec<&Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "ValidatingAdmissionPolicyBinding")
        .map(|(_, d)| d)
        .collect();
    ensure!(
        bindings.len() == POLICIES.len(),
        "{} bindings",
        bindings.len()
    );
    for binding in bindings {
        ensure!(
            binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
                == json!([{"key": "kubernetes.io/metadata.name", "operator": "In",
                           "values": [ns.name(), other.name()]}]),
            "binding {} applies to {}",
            binding["metadata"]["name"],
            binding["spec"]["matchResources"]
        );
    }
    let cluster_roles: Vec<&Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == "ClusterRole")
        .map(|(_, d)| d)
        .collect();
    ensure!(
        cluster_roles.len() == 1
            && cluster_roles[0]["rules"]
                == json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]),
        "namespaced mode grants more than TokenReview cluster-wide: {cluster_roles:?}"
    );
    let deployment = docs
        .iter()
        .find(|(_, d)| d["kind"] == "Deployment")
        .map(|(_, d)| d)
        .context("no Deployment")?;
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    let wanted = format!("--namespace={},{}", ns.name(), other.name());
    ensure!(
        args.as_array()
            .is_some_and(|a| a.iter().any(|v| v == wanted.as_str())),
        "operator args {args} lack {wanted}"
    );
    // The ServiceMonitor's CRD is not on this cluster: check what it selects, apply the rest.
    let (monitors, rest): (Vec<_>, Vec<_>) = docs
        .into_iter()
        .partition(|(_, d)| d["kind"] == "ServiceMonitor");
    ensure!(
        monitors.len() == 1,
        "one ServiceMonitor, got {}",
        monitors.len()
    );
    let monitor = &monitors[0].1;
    let metrics_service = rest
        .iter()
        .find(|(_, d)| d["kind"] == "Service" && d["metadata"]["name"] == "sluice-dry-metrics")
        .map(|(_, d)| d)
        .context("no metrics Service")?;
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("ServiceMonitor selector")?
    {
        ensure!(
            &metrics_service["metadata"]["labels"][key] == value,
            "the ServiceMonitor selects {key}={value}, which the metrics Service lacks"
        );
    }
    ensure!(monitor["spec"]["endpoints"][0]["port"] == metrics_service["spec"]["ports"][0]["name"]);
    let broker_service = rest
        .iter()
        .find(|(_, d)| d["kind"] == "Service" && d["metadata"]["name"] == "sluice-dry-broker")
        .map(|(_, d)| d)
        .context("no broker Service")?;
    ensure!(
        monitor["spec"]["selector"]["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .any(|(k, v)| &broker_service["metadata"]["labels"][k] != v),
        "the ServiceMonitor also selects the broker Service"
    );
    let out = dry_run(&rest).await?;
    ensure!(out.contains("networkpolicy.networking.k8s.io/sluice-dry "));

    // The external metrics API: its APIService, Service and the RBAC of an aggregated API server, with a
    // generated certificate (the operator may write the APIService's caBundle) or one from a Secret (it may not).
    let docs = documents(
        &render(
            release,
            ns.name(),
            &["externalMetrics.enabled=true", "networkPolicy.enabled=true"],
        )
        .await?,
    )?;
    let names: BTreeSet<(String, String)> = docs.iter().map(|(_, d)| kind_and_name(d)).collect();
    for wanted in [
        ("APIService", "v1beta1.external.metrics.k8s.io"),
        ("Service", "sluice-dry-external-metrics"),
        (
            "ClusterRoleBinding",
            "sluice-dry-external-metrics-auth-delegator",
        ),
        ("RoleBinding", "sluice-dry-external-metrics-auth-reader"),
        ("ClusterRole", "sluice-dry-external-metrics-ca"),
    ] {
        ensure!(
            names.contains(&(wanted.0.to_owned(), wanted.1.to_owned())),
            "externalMetrics.enabled renders no {wanted:?}"
        );
    }
    let deployment = docs
        .iter()
        .find(|(_, d)| d["kind"] == "Deployment")
        .map(|(_, d)| d)
        .context("no Deployment")?;
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    ensure!(
        args.contains("--external-metrics-addr=0.0.0.0:6443")
            && args.contains("--external-metrics-service=sluice-dry-external-metrics"),
        "operator args {args}"
    );
    let out = dry_run(&docs).await?;
    ensure!(out.contains("apiservice.apiregistration.k8s.io/v1beta1.external.metrics.k8s.io "));
    let docs = documents(
        &render(
            release,
            ns.name(),
            &[
                "externalMetrics.enabled=true",
                "externalMetrics.certificate.secretName=metrics-tls",
            ],
        )
        .await?,
    )?;
    ensure!(
        !docs.iter().any(|(_, d)| d["kind"] == "ClusterRole"
            && d["metadata"]["name"] == "sluice-dry-external-metrics-ca"),
        "with a certificate Secret the operator needs no right on the APIService"
    );
    let deployment = docs
        .iter()
        .find(|(_, d)| d["kind"] == "Deployment")
        .map(|(_, d)| d)
        .context("no Deployment")?;
    let pod = &deployment["spec"]["template"]["spec"];
    ensure!(
        pod["volumes"][0]["secret"]["secretName"] == "metrics-tls"
            && pod["containers"][0]["args"]
                .to_string()
                .contains("--external-metrics-cert-dir=/var/run/secrets/sluice/external-metrics"),
        "the certificate Secret is not mounted and named: {pod}"
    );
    dry_run(&docs).await?;

    other.cleanup().await?;
    ns.cleanup().await?;
    Ok(())
}

/// examples/workerpool.yaml with the security context the `restricted` profile requires of its pods.
fn restricted_example_pool() -> Result<Value> {
    let text = std::fs::read_to_string(repo_root().join("examples/workerpool.yaml"))?;
    let mut pool: Value = serde_saphyr::from_str(&text)?;
    let template = &mut pool["spec"]["template"];
    // The process kubelet restarts a crashed worker after 500 ms instead of 10 s.
    template["metadata"]["annotations"] = json!({"sluice.dev/kubelet-backoff-base": "500ms"});
    template["spec"]["securityContext"] = json!({
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    for container in template["spec"]["containers"]
        .as_array_mut()
        .context("containers")?
    {
        container["securityContext"] = json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        });
    }
    Ok(pool)
}

#[tokio::test]
async fn helm_install_runs_a_flow_and_helm_uninstall_keeps_the_crds_and_flowruns() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let client = cluster().await?;
    let ns = TestNamespace::new("sluice-helm").await?;
    kubectl([
        "label",
        "namespace",
        ns.name(),
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ])
    .ok()
    .await?;
    // The label is enforced: a pod without the restricted security context is refused.
    let refused = kubectl([
        "run",
        "not-restricted",
        "-n",
        ns.name(),
        "--image=busybox",
        "--restart=Never",
        "--command",
        "--",
        "true",
    ])
    .output()
    .await?;
    let refusal = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && refusal.contains("violates PodSecurity \"restricted"),
        "a non-restricted pod was not refused: {refusal}"
    );

    // The chart with this checkout's operator image on loopback ports of its own; Ready once it leads.
    let installed = HelmRelease::install(&ns, &json!({})).await?;
    let release = installed.name().to_owned();
    let selector = installed.selector();
    let operator_pod = installed.pod().to_owned();

    // The operator Deployment: worker authentication on, leader election in the release namespace.
    let deployments: Api<Deployment> = ns.api();
    let deployment = deployments.get(&release).await?;
    let container = &deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("pod spec")?
        .containers[0];
    let args = container.args.clone().unwrap_or_default();
    ensure!(
        !args.iter().any(|a| a == "--insecure-skip-worker-auth"),
        "worker authentication is off: {args:?}"
    );
    ensure!(
        args.contains(&format!("--lease-namespace={}", ns.name())),
        "{args:?}"
    );

    let pods: Api<Pod> = ns.api();
    let log = || pod_log(ns.name(), &operator_pod, "operator");
    let leases: Api<Lease> = ns.api();
    let lease = leases.get(&release).await?;
    ensure!(
        lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(operator_pod.as_str()),
        "the Lease is held by {:?}, not the Ready pod {operator_pod}",
        lease.spec.and_then(|s| s.holder_identity)
    );

    // A WorkerPool of example workers (scaled from zero by queue depth) and the example fan-out flow.
    let pool = restricted_example_pool()?;
    kubectl(["apply", "-n", ns.name(), "-f", "-"])
        .stdin(pool.to_string())
        .ok()
        .await?;
    let flow = kubectl([
        "apply",
        "-n",
        ns.name(),
        "-f",
        repo_root()
            .join("examples/fanout-flow.yaml")
            .to_str()
            .context("path")?,
        "-o",
        "name",
    ])
    .ok()
    .await?;
    let flow = flow
        .trim()
        .rsplit('/')
        .next()
        .context("no FlowRun name")?
        .to_owned();
    let flows: Api<FlowRun> = ns.api();
    let done = wait_for(
        &flows,
        &flow,
        |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref())
                .and_then(|s| s.phase)
                .is_some_and(FlowPhase::is_terminal)
        },
        Duration::from_secs(180),
        &format!("FlowRun {flow} to finish"),
    )
    .await
    .with_context(|| format!("operator log:\n{}", log()))?;
    let status = done.status.as_ref().context("status")?;
    ensure!(
        status.phase == Some(FlowPhase::Succeeded),
        "FlowRun {flow} ended {:?}: {}\noperator log:\n{}",
        status.phase,
        serde_json::to_string_pretty(status)?,
        log()
    );
    ensure!(
        status.output.as_ref().map(|o| &o["total"]) == Some(&json!(14)),
        "output {:?}",
        status.output
    );
    // The workers were authenticated by TokenReview, with the chart's RBAC.
    let pools: Api<WorkerPool> = ns.api();
    ensure!(pools.get_opt("examples").await?.is_some());

    // An upgrade that changes the pod template: the old pod stops first (releasing the Lease), the new one
    // leads and turns Ready (a rolling update would wait forever for a standby to become Ready).
    helm([
        "upgrade",
        &release,
        CHART,
        "--namespace",
        ns.name(),
        "--reuse-values",
        "--set",
        "podAnnotations.sluice\\.dev/upgraded=yes",
    ])
    .ok()
    .await?;
    let old_pod = operator_pod.clone();
    let upgraded = wait_for_list(
        &pods,
        watcher::Config::default().labels(&selector),
        move |pods: &[Pod]| {
            pods.iter()
                .any(|p| pod_is_ready(p) && p.metadata.name.as_deref() != Some(old_pod.as_str()))
        },
        Duration::from_secs(120),
        "a new operator pod to be Ready after helm upgrade",
    )
    .await
    .with_context(|| format!("old operator log:\n{}", log()))?;
    let new_pod = upgraded
        .into_iter()
        .find(|p| pod_is_ready(p) && p.metadata.name.as_deref() != Some(operator_pod.as_str()))
        .and_then(|p| p.metadata.name)
        .context("ready pod without a name")?;
    let want = new_pod.clone();
    let holder = wait_for(
        &leases,
        &release,
        move |l: Option<&Lease>| {
            l.and_then(|l| l.spec.as_ref())
                .and_then(|s| s.holder_identity.as_deref())
                .is_some_and(|h| h == want)
        },
        Duration::from_secs(30),
        "the upgraded pod to hold the Lease",
    )
    .await;
    if let Err(e) = holder {
        bail!(
            "after the upgrade: {e}\nnew operator log:\n{}",
            pod_log(ns.name(), &new_pod, "operator")
        );
    }

    // Uninstall: the release's objects go, the CRDs and the FlowRun stay.
    installed.uninstall().await?;
    wait_deleted(
        &deployments,
        &release,
        Duration::from_secs(60),
        "the operator Deployment to go",
    )
    .await?;
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    ensure!(
        cluster_roles
            .get_opt(&format!("{release}-auth"))
            .await?
            .is_none(),
        "the release's ClusterRole outlived helm uninstall"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [
        "flowruns.sluice.dev",
        "workerpools.sluice.dev",
        "cronflows.sluice.dev",
    ] {
        ensure!(
            crds.get_opt(crd).await?.is_some(),
            "helm uninstall removed CRD {crd}"
        );
    }
    let kept = flows
        .get_opt(&flow)
        .await?
        .context("helm uninstall removed the FlowRun")?;
    ensure!(kept.status.and_then(|s| s.phase) == Some(FlowPhase::Succeeded));

    ns.cleanup().await?;
    Ok(())
}

/// `defaultTtlSecondsAfterFinished` becomes `--default-ttl-seconds-after-finished` (0 included, and a number
/// from a values file, which YAML and JSON make a float, in plain digits); unset or null passes no flag; the
/// schema refuses what the flag would refuse; and the operator's role may delete the FlowRuns it cleans up.
#[tokio::test]
async fn the_default_ttl_value_becomes_the_operator_flag() -> Result<()> {
    const FLAG: &str = "--default-ttl-seconds-after-finished";
    fn operator_args(yaml: &str) -> Result<Vec<String>> {
        let docs = documents(yaml)?;
        let deployment = docs
            .iter()
            .find(|(_, d)| d["kind"] == "Deployment")
            .map(|(_, d)| d)
            .context("no Deployment")?;
        Ok(
            deployment["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .context("no operator args")?
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
        )
    }

    let default = render("sluice-ttl", "sluice-system", &[]).await?;
    let args = operator_args(&default)?;
    ensure!(
        !args.iter().any(|a| a.starts_with(FLAG)),
        "finished runs are kept by default, yet the operator gets {args:?}"
    );
    let null = render(
        "sluice-ttl",
        "sluice-system",
        &["defaultTtlSecondsAfterFinished=null"],
    )
    .await?;
    ensure!(!operator_args(&null)?.iter().any(|a| a.starts_with(FLAG)));
    for (set, want) in [
        ("defaultTtlSecondsAfterFinished=0", "0"),
        ("defaultTtlSecondsAfterFinished=86400", "86400"),
    ] {
        let args = operator_args(&render("sluice-ttl", "sluice-system", &[set]).await?)?;
        let wanted = format!("{FLAG}={want}");
        ensure!(
            args.contains(&wanted),
            "--set {set}: {args:?} lack {wanted}"
        );
    }
    let from_json = helm([
        "template",
        "sluice-ttl",
        CHART,
        "--set-json",
        "defaultTtlSecondsAfterFinished=1000000",
    ])
    .ok()
    .await?;
    let args = operator_args(&from_json)?;
    ensure!(
        args.contains(&format!("{FLAG}=1000000")),
        "a float-typed value is not passed in digits: {args:?}"
    );

    for bad in [
        "defaultTtlSecondsAfterFinished=-1",
        "defaultTtlSecondsAfterFinished=soon",
        "defaultTtlSecondsAfterFinished=4294967296",
    ] {
        let out = helm(["template", "typo", CHART, "--set", bad])
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains("/defaultTtlSecondsAfterFinished"),
            "--set {bad} should fail naming the value: {stderr}"
        );
    }

    let docs = documents(&default)?;
    let role = docs
        .iter()
        .find(|(_, d)| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "sluice-ttl")
        .map(|(_, d)| d)
        .context("no ClusterRole sluice-ttl")?;
    let may_delete = role["rules"].as_array().into_iter().flatten().any(|rule| {
        rule["apiGroups"] == json!(["sluice.dev"])
            && rule["resources"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r == "flowruns"))
            && rule["verbs"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v == "delete"))
    });
    ensure!(
        may_delete,
        "the operator may not delete FlowRuns: {}",
        role["rules"]
    );
    Ok(())
}
