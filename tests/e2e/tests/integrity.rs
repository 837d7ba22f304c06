//! Integrity: only the operator writes step state. The chart's two ValidatingAdmissionPolicies
//! (`templates/admission-policy.yaml`, rendered by `helm template` for the test namespace and applied alone,
//! owned by that namespace so that they go with it) are enforced by the real API server:
//! - a service account that may patch `flowruns/status` delivers a signal, while every attempt to forge a phase,
//!   an output, an attempt number, a child reference or a condition is refused with a message naming the field
//!   and leaves the status as it was; the run, driven by the operator in this process (whose identity the policy
//!   is told to exempt, as `admissionPolicy.operatorUsernames`), ends with the result the signal decides; a
//!   consumed signal can then neither change nor be removed;
//! - a user who may create WorkerPools but not Deployments cannot create one (nor change a pool's spec), and
//!   with the right to create (and update) Deployments can.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use sluice_e2e::{
    CHART, InProcessOperator, TestNamespace, cluster, cluster_config, helm, init_test_logs,
    install_crds, start_doubling_worker, wait_for,
};
use sluice_operator::api::{FlowPhase, FlowRun, StepPhase, WorkerPool};
use tokio::time::Instant;

/// How long a new policy (or RBAC binding) may take to reach the API server's informers.
const TAKES_EFFECT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(90);
/// What every refusal of a forged status names as the thing to do instead.
const SIGNALS_ONLY: &str = "users may only add or change entries of status.signals";

/// The user name of the admin client: the identity of the in-process operator.
async fn own_username(client: &Client) -> Result<String> {
    let api: Api<SelfSubjectReview> = Api::all(client.clone());
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .context("SelfSubjectReview names no user")
}

/// A client that acts as `user` (the admin impersonating it).
async fn client_as(user: &str) -> Result<Client> {
    let mut config = cluster_config().await?;
    config.auth_info.impersonate = Some(user.to_owned());
    Ok(Client::try_from(config)?)
}

/// The YAML documents of a multi-document stream, parsed (comment-only documents dropped).
fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for text in yaml.split("\n---\n") {
        let value: Value =
            serde_saphyr::from_str(text).with_context(|| format!("parsing:\n{text}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Renders the chart's admission policies for `ns` (release named like it, bound to `ns` alone through
/// watchNamespaces, `operator` exempt as the operator), checks what was rendered and creates the policies and
/// bindings, each owned by the namespace (the garbage collector removes them with it).
async fn install_policies(ns: &TestNamespace, operator: &str) -> Result<()> {
    let values = json!({
        "watchNamespaces": [ns.name()],
        "admissionPolicy": {"operatorUsernames": [operator]},
    });
    let file = ns.scratch_dir().join("policy-values.json");
    std::fs::write(&file, values.to_string())?;
    let rendered = helm([
        "template",
        ns.name(),
        CHART,
        "--namespace",
        ns.name(),
        "--show-only",
        "templates/admission-policy.yaml",
        "-f",
        file.to_str().context("scratch path")?,
    ])
    .ok()
    .await?;
    let docs = documents(&rendered)?;
    let kinds: BTreeSet<(&str, &str)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default(),
                d["metadata"]["name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let status = format!("{}-sluice-flowrun-status", ns.name());
    let pools = format!("{}-sluice-workerpool-rights", ns.name());
    let wanted = BTreeSet::from([
        ("ValidatingAdmissionPolicy", status.as_str()),
        ("ValidatingAdmissionPolicyBinding", status.as_str()),
        ("ValidatingAdmissionPolicy", pools.as_str()),
        ("ValidatingAdmissionPolicyBinding", pools.as_str()),
    ]);
    ensure!(
        docs.len() == 4 && kinds == wanted,
        "the chart renders {kinds:?}"
    );

    let namespaces: Api<Namespace> = Api::all(ns.client());
    let uid = namespaces
        .get(ns.name())
        .await?
        .metadata
        .uid
        .context("namespace uid")?;
    let owner = json!([{"apiVersion": "v1", "kind": "Namespace", "name": ns.name(), "uid": uid}]);
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(ns.client());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(ns.client());
    for mut doc in docs {
        doc["metadata"]["ownerReferences"] = owner.clone();
        if doc["kind"] == "ValidatingAdmissionPolicy" {
            policies
                .create(&PostParams::default(), &serde_json::from_value(doc)?)
                .await?;
        } else {
            bindings
                .create(&PostParams::default(), &serde_json::from_value(doc)?)
                .await?;
        }
    }
    Ok(())
}

/// A ServiceAccount `name` with a Role of `rules`; returns its user name.
async fn service_account_with(ns: &TestNamespace, name: &str, rules: Value) -> Result<String> {
    let sas: Api<ServiceAccount> = ns.api();
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": name}}))?,
    )
    .await?;
    let roles: Api<Role> = ns.api();
    roles
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}, "rules": rules}))?,
        )
        .await?;
    let bindings: Api<RoleBinding> = ns.api();
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns.name()}],
            }))?,
        )
        .await?;
    Ok(format!("system:serviceaccount:{}:{name}", ns.name()))
}

/// Waits (bounded) until the authorizer lets `user` do `verb` on `resource` (`group`, `subresource` optional) in
/// `ns`: RBAC bindings, like policies, reach the API server's informers a moment after they were created.
async fn wait_allowed(
    client: &Client,
    user: &str,
    verb: &str,
    (group, resource, subresource): (&str, &str, &str),
    ns: &str,
) -> Result<()> {
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource: (!subresource.is_empty()).then(|| subresource.to_owned()),
                namespace: Some(ns.to_owned()),
                verb: Some(verb.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let deadline = Instant::now() + TAKES_EFFECT;
    loop {
        let answer = api.create(&PostParams::default(), &review).await?;
        if answer.status.is_some_and(|s| s.allowed) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "RBAC did not let {user} {verb} {resource}/{subresource} in {ns} within {TAKES_EFFECT:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The message of an admission policy's refusal, or why `result` is not one.
fn refusal<T>(result: kube::Result<T>) -> std::result::Result<String, String> {
    match result {
        Err(kube::Error::Api(s))
            if s.code == 403 && s.message.contains("ValidatingAdmissionPolicy") =>
        {
            Ok(s.message)
        }
        Err(e) => Err(format!("refused otherwise: {e}")),
        Ok(_) => Err("allowed".to_owned()),
    }
}

/// Repeats `attempt` (a dry run) every 200 ms until an admission policy refuses it, for at most
/// [`TAKES_EFFECT`]: a new policy takes effect once the API server's policy informer has it. Returns the
/// refusal's message.
async fn until_refused<F, Fut, T>(what: &str, mut attempt: F) -> Result<String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = kube::Result<T>>,
{
    let deadline = Instant::now() + TAKES_EFFECT;
    loop {
        let last = match refusal(attempt().await) {
            Ok(message) => return Ok(message),
            Err(last) => last,
        };
        if Instant::now() > deadline {
            bail!(
                "the admission policy did not take effect within {TAKES_EFFECT:?}: {what} was still {last}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn dry_run() -> PatchParams {
    PatchParams {
        dry_run: true,
        ..PatchParams::default()
    }
}

fn status_of(fr: &FlowRun) -> Result<Value> {
    Ok(serde_json::to_value(
        fr.status.as_ref().context("no status")?,
    )?)
}

#[tokio::test]
async fn a_status_writer_delivers_signals_and_cannot_forge_step_state() -> Result<()> {
    init_test_logs();
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("integrity-status").await?;
    // The in-process operator writes with the admin's identity: that is the operator the policy exempts.
    let operator_user = own_username(&client).await?;
    install_policies(&ns, &operator_user).await?;
    let approver = service_account_with(
        &ns,
        "approver",
        json!([
            {"apiGroups": ["sluice.dev"], "resources": ["flowruns"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["sluice.dev"], "resources": ["flowruns/status"], "verbs": ["get", "patch", "update"]},
        ]),
    )
    .await?;
    wait_allowed(
        &client,
        &approver,
        "patch",
        ("sluice.dev", "flowruns", "status"),
        ns.name(),
    )
    .await?;
    let as_approver: Api<FlowRun> = Api::namespaced(client_as(&approver).await?, ns.name());

    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let worker = start_doubling_worker(&operator, ns.name());
    let runs: Api<FlowRun> = ns.api();
    let run: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "expense"},
        "spec": {
            "pool": "pool",
            "input": {"n": 21},
            "steps": [
                {"name": "work", "handler": "double", "input": {"n": "${{ input.n }}"}},
                {"name": "sub", "flow": {"spec": {
                    "steps": [{"name": "inner", "handler": "double", "input": {"n": 1}}],
                    "output": "${{ steps.inner.output }}"
                }}},
                {"name": "approve", "dependsOn": ["work", "sub"],
                 "waitForSignal": {"name": "approve", "timeout": "10m"}}
            ],
            "output": {"n": "${{ steps.work.output.n }}", "approved": "${{ steps.approve.output.ok }}"}
        }
    }))?;
    runs.create(&PostParams::default(), &run).await?;
    let waiting = wait_for(
        &runs,
        "expense",
        |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref())
                .and_then(|s| s.steps.get("approve"))
                .is_some_and(|st| st.phase == StepPhase::Waiting)
        },
        WAIT,
        "step approve of FlowRun expense to wait for its signal",
    )
    .await?;
    let child = waiting.status.as_ref().context("status")?.steps["sub"]
        .child
        .clone()
        .context("step sub names no child FlowRun")?;

    // The policy is in force once a forged phase is refused (a dry run: nothing is written either way).
    let forged_phase = json!({"status": {"phase": "Succeeded"}});
    let (dry, forged) = (dry_run(), Patch::Merge(&forged_phase));
    let message = until_refused("a forged phase", || {
        as_approver.patch_status("expense", &dry, &forged)
    })
    .await?;
    ensure!(
        message.contains(&format!("'{}-sluice-flowrun-status'", ns.name()))
            && message.contains("only the Sluice operator may change status.phase")
            && message.contains(SIGNALS_ONLY),
        "{message}"
    );

    // Every forgery is refused, naming what it touched; together with a signal, the signal is refused too.
    let before = status_of(&runs.get("expense").await?)?;
    let forged_condition = json!({"type": "Succeeded", "status": "True", "reason": "Forged",
        "message": "forged", "lastTransitionTime": "2026-01-01T00:00:00Z"});
    let forgeries = [
        (
            "the phase",
            json!({"status": {"phase": "Succeeded"}}),
            vec!["status.phase"],
        ),
        (
            "the run's output",
            json!({"status": {"output": {"n": 0, "approved": true}}}),
            vec!["status.output"],
        ),
        (
            "a step's output",
            json!({"status": {"steps": {"work": {"output": {"n": 0}}}}}),
            vec!["status.steps.work.output"],
        ),
        (
            "an attempt number",
            json!({"status": {"steps": {"work": {"attempts": 7}}}}),
            vec!["status.steps.work.attempts"],
        ),
        (
            "the end of the wait",
            json!({"status": {"steps": {"approve": {"phase": "Succeeded", "output": {"ok": true}}}}}),
            vec!["status.steps.approve.phase", "status.steps.approve.output"],
        ),
        (
            "a child reference",
            json!({"status": {"steps": {"sub": {"child": "elsewhere"}}}}),
            vec!["status.steps.sub.child"],
        ),
        (
            "a step of its own",
            json!({"status": {"steps": {"extra": {"phase": "Succeeded"}}}}),
            vec!["status.steps.extra"],
        ),
        (
            "a condition",
            json!({"status": {"conditions": [forged_condition]}}),
            vec!["status.conditions"],
        ),
        (
            "a signal with a forged phase",
            json!({"status": {"phase": "Succeeded", "signals": {"approve": {"payload": {"ok": false}}}}}),
            vec!["status.phase"],
        ),
    ];
    for (what, patch, fields) in &forgeries {
        let result = as_approver
            .patch_status("expense", &PatchParams::default(), &Patch::Merge(patch))
            .await;
        let message = refusal(result)
            .map_err(|e| anyhow::anyhow!("forging {what} ({patch}) was not refused: {e}"))?;
        for field in fields {
            ensure!(
                message.contains(field) && message.contains(SIGNALS_ONLY),
                "the refusal of forging {what} does not name {field} and what to do: {message}"
            );
        }
    }
    // The same through an update (PUT) of the whole status.
    let mut replaced = runs.get("expense").await?;
    if let Some(st) = replaced.status.as_mut() {
        st.phase = Some(FlowPhase::Succeeded);
    }
    let message = refusal(
        as_approver
            .replace_status("expense", &PostParams::default(), &replaced)
            .await,
    )
    .map_err(|e| anyhow::anyhow!("replacing the status with a forged phase: {e}"))?;
    ensure!(message.contains("status.phase"), "{message}");
    // And on the child FlowRun the operator created (it Succeeded).
    let failed = json!({"status": {"phase": "Failed"}});
    let message = refusal(
        as_approver
            .patch_status(&child, &PatchParams::default(), &Patch::Merge(&failed))
            .await,
    )
    .map_err(|e| anyhow::anyhow!("forging the child's phase: {e}"))?;
    ensure!(message.contains("status.phase"), "{message}");
    let after = status_of(&runs.get("expense").await?)?;
    ensure!(
        before == after,
        "refused writes changed the status:\nbefore {before}\nafter  {after}"
    );

    // The signal itself is delivered, and the run ends with the result it decides.
    let signal = json!({"status": {"signals": {"approve": {"payload": {"ok": true}}}}});
    as_approver
        .patch_status("expense", &PatchParams::default(), &Patch::Merge(&signal))
        .await
        .context("delivering the signal")?;
    let done = wait_for(
        &runs,
        "expense",
        |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref())
                .and_then(|s| s.phase)
                .is_some_and(FlowPhase::is_terminal)
        },
        WAIT,
        "FlowRun expense to finish",
    )
    .await?;
    let status = done.status.as_ref().context("status")?;
    ensure!(
        status.phase == Some(FlowPhase::Succeeded),
        "the run ended {:?}: {}",
        status.phase,
        serde_json::to_string_pretty(status)?
    );
    assert_eq!(status.output, Some(json!({"n": 42, "approved": true})));
    let work = &status.steps["work"];
    assert_eq!(
        (work.phase, work.attempts, work.output.clone()),
        (StepPhase::Succeeded, 1, Some(json!({"n": 42})))
    );
    assert_eq!(status.steps["sub"].child.as_deref(), Some(child.as_str()));
    assert_eq!(status.steps["sub"].output, Some(json!({"n": 2})));
    assert_eq!(status.steps["approve"].output, Some(json!({"ok": true})));
    assert!(
        !status.conditions.iter().any(|c| c.reason == "Forged"),
        "{:?}",
        status.conditions
    );

    // The consumed signal is final: it can neither change nor go; a new signal can still be written.
    let changed = json!({"status": {"signals": {"approve": {"payload": {"ok": false}}}}});
    let message = refusal(
        as_approver
            .patch_status("expense", &PatchParams::default(), &Patch::Merge(&changed))
            .await,
    )
    .map_err(|e| anyhow::anyhow!("changing a consumed signal: {e}"))?;
    ensure!(
        message.contains("status.signals.approve was already consumed by step approve"),
        "{message}"
    );
    let removed = json!({"status": {"signals": {"approve": null}}});
    let message = refusal(
        as_approver
            .patch_status("expense", &PatchParams::default(), &Patch::Merge(&removed))
            .await,
    )
    .map_err(|e| anyhow::anyhow!("removing a signal: {e}"))?;
    ensure!(
        message.contains("a signal cannot be removed")
            && message.contains("status.signals.approve must stay"),
        "{message}"
    );
    let late = json!({"status": {"signals": {"late": {"payload": 1}}}});
    as_approver
        .patch_status("expense", &PatchParams::default(), &Patch::Merge(&late))
        .await
        .context("a new signal")?;
    let last = runs.get("expense").await?;
    let status = last.status.as_ref().context("status")?;
    assert_eq!(status.phase, Some(FlowPhase::Succeeded));
    assert_eq!(status.output, Some(json!({"n": 42, "approved": true})));
    assert_eq!(
        status.signals["approve"].payload,
        Some(json!({"ok": true})),
        "the consumed signal is as it was"
    );

    worker.shutdown();
    drop(operator);
    ns.cleanup().await?;
    Ok(())
}

#[tokio::test]
async fn a_worker_pool_needs_the_right_to_create_deployments() -> Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("integrity-pools").await?;
    install_policies(&ns, &own_username(&client).await?).await?;
    let pool_rights = json!({"apiGroups": ["sluice.dev"], "resources": ["workerpools"],
        "verbs": ["get", "create", "update", "patch"]});
    let deployer = service_account_with(
        &ns,
        "deployer",
        json!([pool_rights, {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create", "update"]}]),
    )
    .await?;
    let creator = service_account_with(
        &ns,
        "creator",
        json!([pool_rights, {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["create"]}]),
    )
    .await?;
    let pools_only = service_account_with(&ns, "pools-only", json!([pool_rights])).await?;
    let apps = ("apps", "deployments", "");
    wait_allowed(&client, &deployer, "update", apps, ns.name()).await?;
    wait_allowed(&client, &creator, "create", apps, ns.name()).await?;
    let pools = ("sluice.dev", "workerpools", "");
    wait_allowed(&client, &pools_only, "create", pools, ns.name()).await?;

    let pool = |name: &str| -> Result<WorkerPool> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": name},
            "spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "sluice/worker:dev"}]}}}
        }))?)
    };
    let as_pools_only: Api<WorkerPool> = Api::namespaced(client_as(&pools_only).await?, ns.name());
    let as_creator: Api<WorkerPool> = Api::namespaced(client_as(&creator).await?, ns.name());
    let as_deployer: Api<WorkerPool> = Api::namespaced(client_as(&deployer).await?, ns.name());

    // Without the right to create Deployments: refused (polled with dry runs until the policy is in force).
    let create_dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let sneaky = pool("sneaky")?;
    let message = until_refused("a WorkerPool created without Deployment rights", || {
        as_pools_only.create(&create_dry, &sneaky)
    })
    .await?;
    let wanted = format!(
        "creating a WorkerPool needs the right to create Deployments in {}: the operator runs its template as your pods",
        ns.name()
    );
    ensure!(message.contains(&wanted), "{message}");
    let message = refusal(as_pools_only.create(&PostParams::default(), &sneaky).await)
        .map_err(|e| anyhow::anyhow!("a WorkerPool created without Deployment rights: {e}"))?;
    ensure!(message.contains(&wanted), "{message}");
    let all: Api<WorkerPool> = ns.api();
    ensure!(
        all.get_opt("sneaky").await?.is_none(),
        "the refused WorkerPool exists"
    );

    // With it: created; its spec changes need the right to update Deployments as well.
    as_deployer
        .create(&PostParams::default(), &pool("workers")?)
        .await
        .context("a WorkerPool created with Deployment rights")?;
    as_creator
        .create(&PostParams::default(), &pool("created")?)
        .await
        .context("a WorkerPool created with the right to create Deployments")?;
    let bigger = json!({"spec": {"concurrency": 8}});
    as_deployer
        .patch("workers", &PatchParams::default(), &Patch::Merge(&bigger))
        .await
        .context("a spec change with Deployment rights")?;
    let message = refusal(
        as_creator
            .patch("created", &PatchParams::default(), &Patch::Merge(&bigger))
            .await,
    )
    .map_err(|e| anyhow::anyhow!("a spec change without the right to update Deployments: {e}"))?;
    ensure!(
        message.contains(&format!(
            "changing the spec of a WorkerPool needs the right to update Deployments in {}",
            ns.name()
        )),
        "{message}"
    );
    let smaller = json!({"spec": {"concurrency": 2}});
    let message = refusal(
        as_pools_only
            .patch("workers", &PatchParams::default(), &Patch::Merge(&smaller))
            .await,
    )
    .map_err(|e| anyhow::anyhow!("a spec change without Deployment rights: {e}"))?;
    ensure!(
        message.contains(&format!(
            "changing the spec of a WorkerPool needs the right to create Deployments in {}",
            ns.name()
        )),
        "{message}"
    );
    // Metadata is not the template: a label needs no Deployment rights.
    let label = json!({"metadata": {"labels": {"team": "payments"}}});
    as_pools_only
        .patch("workers", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .context("a label change without Deployment rights")?;
    let workers = all.get("workers").await?;
    assert_eq!(workers.spec.concurrency, Some(8));

    ns.cleanup().await?;
    Ok(())
}
