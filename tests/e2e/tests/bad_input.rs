//! The bad-input corpus (`tests/e2e/bad-input/`, one FlowRun per file): each file says in a header comment what
//! it must get, `# expect: refused: TEXT` (refused at admission, the API server's message containing TEXT) or
//! `# expect: failed: TEXT` (accepted, then Failed by the operator, with TEXT in the run's conditions or a step's
//! error). Every file is applied to a namespace with the chart's `flowrun-json-depth` and `step-graph` policies
//! bound to it and an in-process operator; a run in another namespace, running meanwhile, still succeeds.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use sluice_e2e::{
    CHART, InProcessOperator, TestNamespace, cluster, helm, init_test_logs, install_crds,
    repo_root, wait_for,
};
use sluice_operator::api::{FlowPhase, FlowRun};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(90);
/// How long a new policy may take to reach the API server's informers.
const TAKES_EFFECT: Duration = Duration::from_secs(30);

/// What a corpus file must get.
#[derive(Debug)]
enum Expect {
    Refused(String),
    Failed(String),
}

fn expectation(text: &str, file: &Path) -> Result<Expect> {
    let line = text
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix("# expect: "))
        .with_context(|| format!("{} has no `# expect:` header", file.display()))?;
    if let Some(t) = line.strip_prefix("refused: ") {
        Ok(Expect::Refused(t.trim().to_owned()))
    } else if let Some(t) = line.strip_prefix("failed: ") {
        Ok(Expect::Failed(t.trim().to_owned()))
    } else {
        bail!("{}: unknown expectation {line:?}", file.display())
    }
}

/// The chart's admission policies about what users write into a run: JSON nesting and the step graph.
const INPUT_POLICIES: [&str; 2] = [
    "templates/json-depth-policy.yaml",
    "templates/step-graph-policy.yaml",
];

/// Renders the chart's input policies bound to `ns` alone, and creates them owned by the namespace.
async fn install_input_policies(ns: &TestNamespace) -> Result<()> {
    for template in INPUT_POLICIES {
        install_policy(ns, template).await?;
    }
    Ok(())
}

/// Renders one policy template of the chart bound to `ns` alone, and creates it owned by the namespace.
async fn install_policy(ns: &TestNamespace, template: &str) -> Result<()> {
    let values = ns.scratch_dir().join("depth-values.json");
    std::fs::write(&values, json!({"watchNamespaces": [ns.name()]}).to_string())?;
    let rendered = helm([
        "template",
        ns.name(),
        CHART,
        "--namespace",
        ns.name(),
        "--show-only",
        template,
        "-f",
        values.to_str().context("scratch path")?,
    ])
    .ok()
    .await?;
    let uid = Api::<Namespace>::all(ns.client())
        .get(ns.name())
        .await?
        .metadata
        .uid
        .context("namespace uid")?;
    let owner = json!([{"apiVersion": "v1", "kind": "Namespace", "name": ns.name(), "uid": uid}]);
    for text in rendered.split("\n---\n") {
        let mut doc: Value = serde_saphyr::from_str(text)?;
        if doc.is_null() {
            continue;
        }
        doc["metadata"]["ownerReferences"] = owner.clone();
        if doc["kind"] == "ValidatingAdmissionPolicy" {
            Api::<ValidatingAdmissionPolicy>::all(ns.client())
                .create(&PostParams::default(), &serde_json::from_value(doc)?)
                .await?;
        } else {
            Api::<ValidatingAdmissionPolicyBinding>::all(ns.client())
                .create(&PostParams::default(), &serde_json::from_value(doc)?)
                .await?;
        }
    }
    Ok(())
}

fn flowrun(text: &str) -> Result<FlowRun> {
    Ok(serde_saphyr::from_str(text)?)
}

#[tokio::test]
async fn every_bad_input_gets_what_its_file_says() -> Result<()> {
    init_test_logs();
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("bad-input").await?;
    let other = TestNamespace::new("bad-input-other").await?;
    install_input_policies(&ns).await?;
    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let bystander = InProcessOperator::start(other.client(), other.name()).await?;
    let runs: Api<FlowRun> = ns.api();

    // Each policy is in force once a file only it refuses is refused (dry runs until then).
    let dir = repo_root().join("tests/e2e/bad-input");
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let deadline = Instant::now() + TAKES_EFFECT;
    for (probe, policy) in [
        ("too-deep-input.yaml", "flowrun-json-depth"),
        ("duplicate-step-names.yaml", "step-graph"),
    ] {
        let run = flowrun(&std::fs::read_to_string(dir.join(probe))?)?;
        while runs.create(&dry, &run).await.is_ok() {
            ensure!(
                Instant::now() < deadline,
                "the {policy} policy did not take effect within {TAKES_EFFECT:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // A run in the other namespace waits for a signal meanwhile.
    let waiting: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun", "metadata": {"name": "bystander"},
        "spec": {"steps": [{"name": "nap", "sleep": "1s"}, {"name": "go", "dependsOn": ["nap"], "waitForSignal": {"name": "go"}}]}
    }))?;
    let others: Api<FlowRun> = other.api();
    others.create(&PostParams::default(), &waiting).await?;

    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    ensure!(files.len() >= 10, "the corpus has {} files", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let expect = expectation(&text, file)?;
        let run = flowrun(&text).with_context(|| format!("parsing {}", file.display()))?;
        let name = run.metadata.name.clone().context("no name")?;
        let created = runs.create(&PostParams::default(), &run).await;
        let outcome = match (&expect, created) {
            (Expect::Refused(t), Err(kube::Error::Api(s))) if s.message.contains(t.as_str()) => {
                Ok(())
            }
            (Expect::Refused(_), Err(e)) => Err(format!("refused with another message: {e}")),
            (Expect::Refused(_), Ok(_)) => Err("accepted".to_owned()),
            (Expect::Failed(_), Err(e)) => Err(format!("refused: {e}")),
            (Expect::Failed(t), Ok(_)) => {
                let done = wait_for(
                    &runs,
                    &name,
                    |fr: Option<&FlowRun>| {
                        fr.and_then(|f| f.status.as_ref())
                            .and_then(|s| s.phase)
                            .is_some_and(FlowPhase::is_terminal)
                    },
                    WAIT,
                    &format!("FlowRun {name} to end"),
                )
                .await?;
                let status = done.status.context("status")?;
                let said = serde_json::to_string(&json!({
                    "conditions": status.conditions,
                    "errors": status.steps.values().filter_map(|s| s.error.as_ref()).collect::<Vec<_>>(),
                }))?;
                if status.phase != Some(FlowPhase::Failed) {
                    Err(format!("ended {:?}", status.phase))
                } else if !said.contains(t.as_str()) {
                    Err(format!("Failed without {t:?}: {said}"))
                } else {
                    Ok(())
                }
            }
        };
        if let Err(e) = outcome {
            failures.push(format!("{}: expected {expect:?}, got {e}", file.display()));
        }
        let _ = runs.delete(&name, &DeleteParams::default()).await;
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));

    // The bystander was never disturbed: it waits for its signal, and finishes once it has it.
    let signal = json!({"status": {"signals": {"go": {"payload": {"ok": true}}}}});
    let wait_go = |fr: Option<&FlowRun>| {
        fr.and_then(|f| f.status.as_ref())
            .and_then(|s| s.steps.get("go"))
            .is_some_and(|s| s.phase == sluice_operator::api::StepPhase::Waiting)
    };
    wait_for(
        &others,
        "bystander",
        wait_go,
        WAIT,
        "the bystander to wait for its signal",
    )
    .await?;
    others
        .patch_status(
            "bystander",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&signal),
        )
        .await?;
    wait_for(
        &others,
        "bystander",
        |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref())
                .is_some_and(|s| s.phase == Some(FlowPhase::Succeeded))
        },
        WAIT,
        "the bystander to succeed",
    )
    .await?;

    drop(operator);
    drop(bystander);
    ns.cleanup().await?;
    other.cleanup().await?;
    Ok(())
}
