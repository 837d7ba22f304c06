//! FlowTemplates end to end, on the real `sluice-operator run` process with the example workers
//! (`examples/worker`): the example template and its run (`examples/flowtemplate.yaml`, applied with kubectl)
//! succeed with the template's output; editing the template while the run waits for a signal changes nothing
//! of the run, which keeps the version it started from; input that does not match the declared inputs fails
//! the run naming the field (and a run that sets both steps and templateRef is refused at admission); a `flow`
//! step with a templateRef runs the template as its child.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use sluice_e2e::{
    OperatorProcess, TestNamespace, cluster, install_crds, kubectl, repo_root, wait_for,
    wait_for_list, worker_deployment,
};
use sluice_operator::api::{FlowPhase, FlowRun, FlowTemplate, StepPhase, StepStatus};

const POOL: &str = "examples";
/// Bound of a flow without timers (workers start, every step runs).
const FLOW_TIMEOUT: Duration = Duration::from_secs(120);

struct Setup {
    ns: TestNamespace,
    operator: OperatorProcess,
    runs: Api<FlowRun>,
    templates: Api<FlowTemplate>,
}

impl Setup {
    async fn new(prefix: &str) -> Result<Self> {
        sluice_e2e::init_test_logs();
        install_crds(&cluster().await?).await?;
        let ns = TestNamespace::new(prefix).await?;
        let operator = OperatorProcess::start(&ns).await?;
        let (runs, templates) = (ns.api(), ns.api());
        Ok(Self {
            ns,
            operator,
            runs,
            templates,
        })
    }

    async fn start_workers(&self) -> Result<()> {
        let deployments: Api<Deployment> = self.ns.api();
        let deployment = worker_deployment("workers", POOL, &self.operator.broker_url(), 1, &[]);
        deployments
            .create(&PostParams::default(), &deployment)
            .await?;
        Ok(())
    }

    async fn create_run(&self, manifest: Value) -> Result<String> {
        let fr: FlowRun = serde_json::from_value(manifest)?;
        let created = self.runs.create(&PostParams::default(), &fr).await?;
        Ok(created.metadata.name.unwrap_or_default())
    }

    async fn create_template(&self, manifest: Value) -> Result<FlowTemplate> {
        let ft: FlowTemplate = serde_json::from_value(manifest)?;
        Ok(self.templates.create(&PostParams::default(), &ft).await?)
    }

    async fn wait_phase(&self, name: &str, phase: FlowPhase, timeout: Duration) -> Result<FlowRun> {
        let fr = wait_for(
            &self.runs,
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

    async fn wait_step(
        &self,
        flow: &str,
        step: &str,
        cond: impl Fn(&StepStatus) -> bool + Send + 'static,
    ) -> Result<FlowRun> {
        let owned = step.to_owned();
        wait_for(
            &self.runs,
            flow,
            move |fr: Option<&FlowRun>| {
                fr.and_then(|f| f.status.as_ref())
                    .and_then(|s| s.steps.get(&owned))
                    .is_some_and(&cond)
            },
            FLOW_TIMEOUT,
            &format!("step {step} of FlowRun {flow}"),
        )
        .await
        .with_context(|| format!("operator log:\n{}", tail(&self.operator.log(), 60)))
    }

    async fn signal(&self, flow: &str, signal: &str, payload: Value) -> Result<()> {
        let patch = json!({"status": {"signals": {signal: {"payload": payload}}}});
        self.runs
            .patch_status(flow, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// Waits for a Warning Event with `reason` on FlowRun `name`.
    async fn wait_event(&self, name: &str, reason: &str) -> Result<Event> {
        let events: Api<Event> = self.ns.api();
        let wanted = reason.to_owned();
        let found = wait_for_list(
            &events,
            watcher::Config::default().fields(&format!("involvedObject.name={name}")),
            |list: &[Event]| {
                list.iter()
                    .any(|e| e.reason.as_deref() == Some(wanted.as_str()))
            },
            Duration::from_secs(30),
            &format!("a {reason} Event on FlowRun {name}"),
        )
        .await?;
        found
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
            .context("the Event")
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

/// A template of one step: record an expense with the example worker's `record_expense`.
fn record_template(name: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "FlowTemplate",
        "metadata": {"name": name},
        "spec": {
            "pool": POOL,
            "inputs": {
                "reportId": {"type": "string", "required": true},
                "employee": {"type": "string", "default": "ada"},
                "amount": {"type": "number", "required": true},
            },
            "steps": [{"name": "record", "handler": "record_expense", "input": "${{ input }}"}],
            "output": "${{ steps.record.output }}",
        }
    })
}

#[tokio::test]
async fn the_example_template_runs_and_editing_it_mid_run_changes_nothing() -> Result<()> {
    let s = Setup::new("ft-example").await?;
    s.start_workers().await?;
    let path = repo_root().join("examples/flowtemplate.yaml");
    kubectl([
        "apply",
        "-n",
        s.ns.name(),
        "-f",
        path.to_str().context("path")?,
    ])
    .ok()
    .await?;
    let run = "expense-77";
    let waiting = s
        .wait_step(run, "manager-approval", |st| st.phase == StepPhase::Waiting)
        .await?;
    let template = s.templates.get("expense-approval").await?;
    // The run took the template's flow and recorded the version it took it from.
    assert_eq!(waiting.spec.steps, template.spec.steps);
    assert_eq!(waiting.spec.pool.as_deref(), Some(POOL));
    assert_eq!(
        waiting.spec.input,
        Some(json!({"reportId": "77", "employee": "grace", "amount": 42.5, "currency": "EUR"})),
        "the input with the default filled in"
    );
    let source = waiting
        .status
        .as_ref()
        .and_then(|s| s.template.clone())
        .context("status.template")?;
    assert_eq!(source.name, "expense-approval");
    assert_eq!(
        source.uid,
        template.metadata.uid.clone().unwrap_or_default()
    );
    assert_eq!(
        Some(source.resource_version.clone()),
        template.metadata.resource_version
    );
    assert_eq!(source.generation, template.metadata.generation);

    // Edit the template while the run waits: drop the pay-out, change the output.
    let edit = json!({"spec": {
        "steps": [
            {"name": "submit", "handler": "record_expense", "input": "${{ input }}"},
            {"name": "only-step", "dependsOn": ["submit"], "sleep": "1s"},
        ],
        "output": "edited",
    }});
    let edited = s
        .templates
        .patch(
            "expense-approval",
            &PatchParams::default(),
            &Patch::Merge(&edit),
        )
        .await?;
    ensure!(edited.metadata.generation > template.metadata.generation);

    s.signal(
        run,
        "manager-approval",
        json!({"approved": true, "by": "grace"}),
    )
    .await?;
    let fr = s
        .wait_phase(run, FlowPhase::Succeeded, FLOW_TIMEOUT)
        .await?;
    let status = fr.status.as_ref().context("status")?;
    assert_eq!(
        status.output,
        Some(json!({"reportId": "77", "currency": "EUR", "approved": true})),
        "the output of the template version the run started from"
    );
    assert_eq!(fr.spec.steps, template.spec.steps, "the run's steps stayed");
    assert_eq!(status.steps["pay-out"].phase, StepPhase::Succeeded);
    assert!(!status.steps.contains_key("only-step"));
    assert_eq!(
        status.template.as_ref(),
        Some(&source),
        "still the version it started from"
    );

    // A run started after the edit takes the edited flow.
    let second = s
        .create_run(json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "FlowRun",
            "metadata": {"name": "expense-78"},
            "spec": {"templateRef": {"name": "expense-approval",
                     "input": {"reportId": "78", "employee": "ada", "amount": 1}}},
        }))
        .await?;
    let fr = s
        .wait_phase(&second, FlowPhase::Succeeded, FLOW_TIMEOUT)
        .await?;
    let status = fr.status.as_ref().context("status")?;
    assert_eq!(status.output, Some(json!("edited")));
    assert_eq!(
        status.template.as_ref().map(|t| t.generation),
        Some(edited.metadata.generation)
    );
    s.finish().await
}

#[tokio::test]
async fn input_that_does_not_match_fails_the_run_naming_the_field() -> Result<()> {
    let s = Setup::new("ft-input").await?;
    s.create_template(record_template("record")).await?;
    let run = s
        .create_run(json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "FlowRun",
            "metadata": {"name": "bad-amount"},
            "spec": {"templateRef": {"name": "record",
                     "input": {"reportId": "1", "amount": "12", "colour": "red"}}},
        }))
        .await?;
    let fr = s
        .wait_phase(&run, FlowPhase::Failed, Duration::from_secs(60))
        .await?;
    let status = fr.status.as_ref().context("status")?;
    let succeeded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Succeeded")
        .context("Succeeded condition")?;
    assert_eq!(succeeded.status, "False");
    assert_eq!(succeeded.reason, "InvalidInput");
    assert!(
        succeeded
            .message
            .contains("templateRef.input.amount: expected number, got string \"12\""),
        "{}",
        succeeded.message
    );
    assert!(
        succeeded
            .message
            .contains("templateRef.input.colour: FlowTemplate record declares no such input"),
        "{}",
        succeeded.message
    );
    assert_eq!(succeeded.observed_generation, fr.metadata.generation);
    assert!(fr.spec.steps.is_empty(), "a refused run takes no flow");
    assert_eq!(
        status.template.as_ref().map(|t| t.name.as_str()),
        Some("record"),
        "the template that refused it"
    );
    let event = s.wait_event(&run, "InvalidInput").await?;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event
            .message
            .unwrap_or_default()
            .contains("templateRef.input.amount"),
        "the Event names the field"
    );

    // A run that sets steps next to templateRef is refused at admission, saying what to remove.
    let both = s
        .create_run(json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "FlowRun",
            "metadata": {"name": "both"},
            "spec": {"templateRef": {"name": "record"}, "pool": POOL,
                     "steps": [{"name": "a", "handler": "record_expense"}]},
        }))
        .await
        .expect_err("steps next to templateRef are refused");
    let message = format!("{both:#}");
    assert!(
        message.contains("remove spec.steps and spec.onExit"),
        "{message}"
    );
    s.finish().await
}

#[tokio::test]
async fn a_flow_step_runs_a_template_as_its_child() -> Result<()> {
    let s = Setup::new("ft-child").await?;
    s.start_workers().await?;
    s.create_template(record_template("record")).await?;
    let parent = s
        .create_run(json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "FlowRun",
            "metadata": {"name": "expenses"},
            "spec": {
                "pool": POOL,
                "input": {"id": "9"},
                "steps": [{"name": "child", "flow": {"templateRef": {"name": "record",
                           "input": {"reportId": "${{ input.id }}", "amount": 5}}}}],
                "output": "${{ steps.child.output }}",
            }
        }))
        .await?;
    let fr = s
        .wait_phase(&parent, FlowPhase::Succeeded, FLOW_TIMEOUT)
        .await?;
    let output = fr
        .status
        .as_ref()
        .and_then(|s| s.output.clone())
        .context("output")?;
    assert_eq!(output["reportId"], "9");
    assert_eq!(output["employee"], "ada", "the template's default");
    assert_eq!(output["recorded"], true);
    let child_name = fr.status.as_ref().context("status")?.steps["child"]
        .child
        .clone()
        .context("child name")?;
    let child = s.runs.get(&child_name).await?;
    assert_eq!(
        child.spec.template_ref.as_ref().map(|r| r.name.as_str()),
        Some("record")
    );
    assert_eq!(
        child.spec.input,
        Some(json!({"reportId": "9", "amount": 5, "employee": "ada"}))
    );
    assert_eq!(
        child
            .status
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .map(|t| t.name.as_str()),
        Some("record")
    );
    s.finish().await
}

#[tokio::test]
async fn a_for_each_over_a_template_runs_fifty_children_five_at_a_time_with_the_outputs_in_order()
-> Result<()> {
    const ITEMS: usize = 50;
    const MAX_PARALLEL: usize = 5;
    let s = Setup::new("ft-fanout").await?;
    s.start_workers().await?;
    s.create_template(record_template("record")).await?;
    let ids: Vec<String> = (0..ITEMS).map(|i| format!("r{i}")).collect();
    let parent = s
        .create_run(json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "FlowRun",
            "metadata": {"name": "reports"},
            "spec": {
                "pool": POOL,
                "input": {"ids": ids},
                "steps": [{"name": "each", "forEach": "${{ input.ids }}", "maxParallel": MAX_PARALLEL,
                           "flow": {"templateRef": {"name": "record",
                                    "input": {"reportId": "${{ item }}", "amount": "${{ index }}"}}}}],
                "output": "${{ steps.each.output }}",
            }
        }))
        .await?;

    // Every status the watch shows: never more than maxParallel children at once.
    let most = std::sync::atomic::AtomicUsize::new(0);
    let fr = wait_for(
        &s.runs,
        &parent,
        |fr: Option<&FlowRun>| {
            let status = fr.and_then(|f| f.status.as_ref());
            let active = status
                .and_then(|s| s.steps.get("each"))
                .and_then(|st| st.instances.as_ref())
                .map_or(0, |inst| {
                    inst.active
                        .values()
                        .filter(|one| one.phase == StepPhase::Running)
                        .count()
                });
            most.fetch_max(active, std::sync::atomic::Ordering::Relaxed);
            status
                .and_then(|s| s.phase)
                .is_some_and(FlowPhase::is_terminal)
        },
        FLOW_TIMEOUT,
        "the fan-out over the template to finish",
    )
    .await?;
    let status = fr.status.as_ref().context("status")?;
    ensure!(
        status.phase == Some(FlowPhase::Succeeded),
        "the run ended {:?}: {:?}",
        status.phase,
        status.conditions
    );
    let most = most.into_inner();
    println!("most children running at once: {most} (maxParallel {MAX_PARALLEL})");
    ensure!(
        (1..=MAX_PARALLEL).contains(&most),
        "{most} children ran at once"
    );
    let output = status.output.clone().context("output")?;
    let outputs = output.as_array().context("an array")?;
    ensure!(outputs.len() == ITEMS, "{} outputs", outputs.len());
    for (i, out) in outputs.iter().enumerate() {
        ensure!(
            out["reportId"] == json!(format!("r{i}")) && out["amount"].as_f64() == Some(i as f64),
            "output {i} is {out}"
        );
    }
    // Each child is a run of the template, named for its instance.
    let children = wait_for_list(
        &s.runs,
        watcher::Config::default().labels(&format!("sluice.dev/parent={parent}")),
        |frs: &[FlowRun]| frs.len() == ITEMS,
        FLOW_TIMEOUT,
        "the children to be listed",
    )
    .await?;
    let child = children
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("reports-each-7"))
        .context("child reports-each-7")?;
    ensure!(
        child.spec.template_ref.as_ref().map(|r| r.name.as_str()) == Some("record"),
        "{:?}",
        child.spec.template_ref
    );
    s.finish().await
}
