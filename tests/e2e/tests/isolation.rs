//! Failure isolation: a FlowRun whose status the API server refuses to take (here an admission policy refuses
//! every status write of that one run) holds up no run of another namespace, before or after an operator
//! restart, and its owner hears of it through a Warning Event. One operator process watches both namespaces.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice_e2e::{OperatorProcess, TestNamespace, cluster, init_test_logs, install_crds, wait_for};
use sluice_operator::api::{FlowPhase, FlowRun, StepPhase};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(90);

/// Installs a policy that refuses every status write of FlowRun `wedged` in `ns` (owned by the namespace, so it
/// goes with it), and waits until the API server applies it.
async fn refuse_status_writes_of_wedged(ns: &TestNamespace) -> Result<()> {
    let uid = Api::<Namespace>::all(ns.client())
        .get(ns.name())
        .await?
        .metadata
        .uid
        .context("namespace uid")?;
    let owner = json!([{"apiVersion": "v1", "kind": "Namespace", "name": ns.name(), "uid": uid}]);
    let name = format!("{}-refuse-status", ns.name());
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owner},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": ["sluice.dev"], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["flowruns/status"]}]},
            "matchConditions": [{"name": "the-wedged-run", "expression": "object.metadata.name == 'wedged'"}],
            "validations": [{"expression": "false",
                "message": "this test refuses every status write of FlowRun wedged"}],
        },
    }))?;
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owner},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name()}}},
        },
    }))?;
    Api::<ValidatingAdmissionPolicy>::all(ns.client())
        .create(&PostParams::default(), &policy)
        .await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(ns.client())
        .create(&PostParams::default(), &binding)
        .await?;
    // Policies take effect a little after they are created: probe with a dry-run status write.
    let runs: Api<FlowRun> = ns.api();
    let probe = PatchParams {
        dry_run: true,
        ..PatchParams::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let write = runs
            .patch_status(
                "wedged",
                &probe,
                &Patch::Merge(json!({"status": {"progress": "probe"}})),
            )
            .await;
        match write {
            Err(kube::Error::Api(s)) if s.message.contains("refuses every status write") => {
                return Ok(());
            }
            _ if Instant::now() > deadline => {
                bail!("the refusing policy took no effect within 30 s (last answer: {write:?})")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn run(name: &str, step: serde_json::Value) -> Result<FlowRun> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": name},
        "spec": {"steps": [step]},
    }))?)
}

fn step_is(name: &'static str, phase: StepPhase) -> impl Fn(Option<&FlowRun>) -> bool {
    move |f: Option<&FlowRun>| {
        f.and_then(|f| f.status.as_ref())
            .and_then(|s| s.steps.get(name))
            .is_some_and(|s| s.phase == phase)
    }
}

#[tokio::test]
async fn a_run_whose_status_cannot_be_written_holds_up_no_other_namespace_across_a_restart()
-> Result<()> {
    init_test_logs();
    install_crds(&cluster().await?).await?;
    let wedged_ns = TestNamespace::new("wedged").await?;
    let other_ns = TestNamespace::new("other").await?;
    let wedged: Api<FlowRun> = wedged_ns.api();
    let other: Api<FlowRun> = other_ns.api();
    wedged
        .create(
            &PostParams::default(),
            &run("wedged", json!({"name": "nap", "sleep": "1s"}))?,
        )
        .await?;
    refuse_status_writes_of_wedged(&wedged_ns).await?;

    let mut operator =
        OperatorProcess::start_trusting_workers_watching(&other_ns, &[&wedged_ns]).await?;
    other
        .create(
            &PostParams::default(),
            &run(
                "waiting",
                json!({"name": "wait", "waitForSignal": {"name": "go"}}),
            )?,
        )
        .await?;
    wait_for(
        &other,
        "waiting",
        step_is("wait", StepPhase::Waiting),
        WAIT,
        "the run in the other namespace to wait for its signal",
    )
    .await?;

    // The owner of the wedged run hears why nothing happens to it.
    let events: Api<Event> = wedged_ns.api();
    let deadline = Instant::now() + WAIT;
    let note = loop {
        let found = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("StatusWriteRefused")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("wedged")
            });
        if let Some(event) = found {
            break event.note.unwrap_or_default();
        }
        ensure!(
            Instant::now() < deadline,
            "no StatusWriteRefused Event on the wedged run within {WAIT:?}; operator log:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ensure!(
        note.contains("refuses every status write"),
        "Event note: {note}"
    );

    // A restart loads the wedged run again (it has work in flight: never decided on) and fails to: the other
    // namespace's run still gets its signal and finishes.
    operator.crash_and_restart().await?;
    other
        .patch_status(
            "waiting",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"signals": {"go": {"payload": {"ok": true}}}}})),
        )
        .await?;
    wait_for(
        &other,
        "waiting",
        |f: Option<&FlowRun>| {
            f.and_then(|f| f.status.as_ref())
                .is_some_and(|s| s.phase == Some(FlowPhase::Succeeded))
        },
        WAIT,
        "the signalled run in the other namespace to succeed after the restart",
    )
    .await?;
    ensure!(
        operator.exited().is_none(),
        "the operator exited; its log:\n{}",
        operator.log()
    );
    let stuck = wedged.get("wedged").await?;
    ensure!(
        stuck.status.as_ref().and_then(|s| s.phase).is_none(),
        "the refused run got a status: {:?}",
        stuck.status
    );
    operator.stop().await?;
    wedged_ns.cleanup().await?;
    other_ns.cleanup().await?;
    Ok(())
}
