//! The Rust client (`sluice-client`) against the real API server: the operator's FlowRun runtime runs in
//! this test process and an SDK worker serves `double` (`{"n": n}` → `{"n": 2n}`; anything else fails fatally
//! with `BadInput`) on pool `pool`. Each test starts runs through the client and checks what its verbs return
//! against what the API server holds.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_client::api::{FlowPhase, FlowRun, FlowRunSpec, FlowTemplate, StepPhase};
use sluice_client::{Client, Error, IfExists, Start};
use sluice_e2e::{
    InProcessOperator, TestNamespace, cargo_test_env, cluster, init_test_logs, install_crds,
    kubeconfig_path, repo_root, start_doubling_worker, wait_for,
};

const WAIT: Duration = Duration::from_secs(90);

#[derive(Serialize)]
struct Doubling {
    n: f64,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Doubled {
    n: i64,
}

struct Setup {
    ns: TestNamespace,
    client: Client,
    api: Api<FlowRun>,
    _operator: InProcessOperator,
    worker: sluice_worker::ShutdownHandle,
}

async fn setup(prefix: &str) -> Result<Setup> {
    init_test_logs();
    install_crds(&cluster().await?).await?;
    let ns = TestNamespace::new(prefix).await?;
    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let worker = start_doubling_worker(&operator, ns.name());
    Ok(Setup {
        client: Client::new(ns.client()).namespaced(ns.name()),
        api: ns.api(),
        ns,
        _operator: operator,
        worker,
    })
}

impl Setup {
    async fn finish(self) -> Result<()> {
        self.worker.shutdown();
        self.ns.cleanup().await?;
        Ok(())
    }

    /// Waits (bounded) until step `step` of run `name` is Waiting for its signal.
    async fn step_waiting(&self, name: &str, step: &str) -> Result<()> {
        let step_name = step.to_owned();
        wait_for(
            &self.api,
            name,
            move |fr: Option<&FlowRun>| {
                fr.and_then(|f| f.status.as_ref())
                    .and_then(|s| s.steps.get(&step_name))
                    .is_some_and(|s| s.phase == StepPhase::Waiting)
            },
            WAIT,
            &format!("step {step} of {name} to wait for its signal"),
        )
        .await?;
        Ok(())
    }
}

/// One `double` step on the flow's input; the flow's output is the step's.
fn doubling_flow() -> Result<FlowRunSpec> {
    Ok(serde_json::from_value(json!({
        "pool": "pool",
        "steps": [{"name": "double", "handler": "double", "input": "${{ input }}"}],
        "output": "${{ steps.double.output }}",
    }))?)
}

/// One step waiting for signal `go` (forever); the flow's output is the signal's payload.
fn waiting_flow() -> Result<FlowRunSpec> {
    Ok(serde_json::from_value(json!({
        "steps": [{"name": "gate", "waitForSignal": {"name": "go"}}],
        "output": "${{ steps.gate.output }}",
    }))?)
}

#[tokio::test]
async fn a_started_run_is_awaited_for_its_typed_output() -> Result<()> {
    let s = setup("client-output").await?;
    let start = Start::inline("double-21", doubling_flow()?).input(&Doubling { n: 21.0 })?;
    let run = s.client.start(start).await?;
    ensure!(run.created(), "the first start creates the run");
    let out: Doubled = run.wait(WAIT).await?;
    assert_eq!(out, Doubled { n: 42 });

    let status = run.status().await?;
    assert_eq!(status.phase, FlowPhase::Succeeded);
    assert_eq!(status.progress.as_deref(), Some("1/1"));
    assert_eq!(status.output, Some(json!({"n": 42})));
    assert_eq!(status.steps.len(), 1);
    assert_eq!(
        (
            status.steps[0].name.as_str(),
            status.steps[0].phase,
            status.steps[0].attempts
        ),
        ("double", StepPhase::Succeeded, 1)
    );

    // A run that already ended answers at once; an output of another shape is a Decode error.
    match run.wait::<Vec<String>>(Duration::from_secs(10)).await {
        Err(Error::Decode { name, .. }) => assert_eq!(name, "double-21"),
        other => bail!("expected a Decode error, got {other:?}"),
    }
    s.finish().await
}

#[tokio::test]
async fn a_failed_run_is_a_typed_failure_naming_its_step_and_error() -> Result<()> {
    let s = setup("client-failed").await?;
    let start = Start::inline("bad-input", doubling_flow()?).input(&json!({"n": "x"}))?;
    let run = s.client.start(start).await?;
    match run.wait::<Value>(WAIT).await {
        Err(Error::Failed(failure)) => {
            assert_eq!(failure.name, "bad-input");
            assert_eq!(failure.namespace, s.ns.name());
            assert_eq!(failure.reason, "StepFailed");
            assert_eq!(failure.failed_steps.len(), 1, "{failure:?}");
            let step = &failure.failed_steps[0];
            assert_eq!(step.name, "double");
            let error = step.error.as_ref().context("the failed step's error")?;
            assert_eq!(error.type_, "BadInput");
            assert!(error.message.contains("n must be a number"), "{error:?}");
            let text = failure.to_string();
            assert!(
                text.contains("bad-input") && text.contains("BadInput"),
                "{text}"
            );
        }
        other => bail!("expected Error::Failed, got {other:?}"),
    }
    s.finish().await
}

#[tokio::test]
async fn a_signal_completes_a_waiting_run_and_keeps_other_signals() -> Result<()> {
    let s = setup("client-signal").await?;
    let run = s
        .client
        .start(Start::inline("gated", waiting_flow()?))
        .await?;
    s.step_waiting("gated", "gate").await?;

    // An unrelated signal first: the next one must not remove it (a merge patch of status.signals).
    run.signal("unrelated", &()).await?;
    run.signal("go", &json!({"approved": true, "by": "grace"}))
        .await?;
    let out: Value = run.wait(WAIT).await?;
    assert_eq!(out, json!({"approved": true, "by": "grace"}));

    let fr = s.api.get("gated").await?;
    let signals = fr.status.context("status")?.signals;
    let names: Vec<&str> = signals.keys().map(String::as_str).collect();
    assert_eq!(names, ["go", "unrelated"]);
    assert_eq!(signals["unrelated"].payload, None);

    // A run that does not exist is NotFound for every verb.
    let ghost = s.client.run("no-such-run");
    ensure!(
        matches!(ghost.signal("go", &1).await, Err(Error::NotFound { .. })),
        "signal"
    );
    ensure!(
        matches!(ghost.cancel().await, Err(Error::NotFound { .. })),
        "cancel"
    );
    ensure!(
        matches!(ghost.status().await, Err(Error::NotFound { .. })),
        "status"
    );
    ensure!(
        matches!(ghost.wait::<Value>(WAIT).await, Err(Error::NotFound { .. })),
        "wait"
    );
    s.finish().await
}

#[tokio::test]
async fn a_cancelled_run_ends_cancelled_and_wait_says_so() -> Result<()> {
    let s = setup("client-cancel").await?;
    let run = s
        .client
        .start(Start::inline("to-cancel", waiting_flow()?))
        .await?;
    s.step_waiting("to-cancel", "gate").await?;
    run.cancel().await?;
    match run.wait::<Value>(WAIT).await {
        Err(Error::Cancelled {
            name, namespace, ..
        }) => {
            assert_eq!(
                (name.as_str(), namespace.as_str()),
                ("to-cancel", s.ns.name())
            );
        }
        other => bail!("expected Error::Cancelled, got {other:?}"),
    }
    let status = run.status().await?;
    assert_eq!(status.phase, FlowPhase::Cancelled);
    assert_eq!(status.steps[0].phase, StepPhase::Cancelled);
    s.finish().await
}

#[tokio::test]
async fn starting_a_name_again_returns_the_same_run_and_a_different_spec_is_refused() -> Result<()>
{
    let s = setup("client-idem").await?;
    // 21.0 is sent as the JSON float `21.0`; the API server stores it as `21`: still the same run.
    let first = Start::inline("order-7", doubling_flow()?)
        .input(&Doubling { n: 21.0 })?
        .label("app", "shop");
    let run = s.client.start(first.clone()).await?;
    ensure!(run.created(), "the first start creates the run");
    let stored = s.api.get("order-7").await?;
    let uid = stored.metadata.uid;
    // What makes the comparison below non-trivial: the stored input is not the JSON that was sent.
    assert_eq!(
        serde_json::to_string(&stored.spec.input)?,
        r#"{"n":21}"#,
        "the API server rewrites the float 21.0"
    );

    let again = s.client.start(first.clone()).await?;
    ensure!(
        !again.created(),
        "the second start returns the existing run"
    );
    assert_eq!(again.name(), "order-7");
    let list = s.api.list(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1, "one FlowRun, not a duplicate");
    assert_eq!(list.items[0].metadata.uid, uid, "the same FlowRun");
    let out: Doubled = again.wait(WAIT).await?;
    assert_eq!(out, Doubled { n: 42 });

    // A finished run of the same spec is still the same run: its result, not a new charge.
    let after_end = s.client.start(first.clone()).await?;
    ensure!(!after_end.created());
    assert_eq!(after_end.wait::<Doubled>(WAIT).await?, Doubled { n: 42 });

    // Another input under the same name is refused, naming where the specs differ (the local comparison
    // and the API server's dry-run rendering agree).
    let other = Start::inline("order-7", doubling_flow()?).input(&Doubling { n: 5.0 })?;
    match s.client.start(other.clone()).await {
        Err(Error::SpecConflict {
            name, differences, ..
        }) => {
            assert_eq!(name, "order-7");
            assert_eq!(differences, ["spec.input.n"]);
        }
        other => bail!("expected Error::SpecConflict, got {other:?}"),
    }
    // Reject refuses any existing run; ReturnExisting returns it whatever its spec.
    ensure!(matches!(
        s.client
            .start(first.clone().if_exists(IfExists::Reject))
            .await,
        Err(Error::AlreadyExists { .. })
    ));
    let existing = s
        .client
        .start(other.clone().if_exists(IfExists::ReturnExisting))
        .await?;
    ensure!(!existing.created());
    // ReplaceFailed does not replace a Succeeded run: it is a conflict as by default.
    ensure!(matches!(
        s.client
            .start(other.clone().if_exists(IfExists::ReplaceFailed))
            .await,
        Err(Error::SpecConflict { .. })
    ));
    let list = s.api.list(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1, "still one FlowRun");
    assert_eq!(list.items[0].metadata.uid, uid);
    s.finish().await
}

#[tokio::test]
async fn run_controls_do_not_make_another_run_and_replace_failed_starts_anew() -> Result<()> {
    let s = setup("client-replace").await?;
    let gated = Start::inline("gated", waiting_flow()?);
    let run = s.client.start(gated.clone()).await?;
    s.step_waiting("gated", "gate").await?;
    run.cancel().await?;
    ensure!(matches!(
        run.wait::<Value>(WAIT).await,
        Err(Error::Cancelled { .. })
    ));
    // spec.cancel is now true on the stored run: a start of the same spec still finds the same run.
    let again = s.client.start(gated.clone()).await?;
    ensure!(
        !again.created(),
        "cancel is a run control, not part of the spec's identity"
    );

    // ReplaceFailed replaces a Cancelled run, here with a spec that differs.
    let old_uid = s.api.get("gated").await?.metadata.uid;
    let replacement = Start::inline("gated", doubling_flow()?)
        .input(&Doubling { n: 4.0 })?
        .if_exists(IfExists::ReplaceFailed);
    let new = s.client.start(replacement).await?;
    ensure!(new.created(), "the Cancelled run was replaced");
    assert_eq!(new.wait::<Doubled>(WAIT).await?, Doubled { n: 8 });
    let list = s.api.list(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1);
    ensure!(
        list.items[0].metadata.uid != old_uid,
        "a new FlowRun took the name"
    );
    s.finish().await
}

#[tokio::test]
async fn a_template_run_is_awaited_and_found_again_by_its_template_and_input() -> Result<()> {
    let s = setup("client-template").await?;
    let templates: Api<FlowTemplate> = s.ns.api();
    let template: FlowTemplate = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowTemplate",
        "metadata": {"name": "doubler"},
        "spec": {
            "pool": "pool",
            "inputs": {"n": {"type": "number", "required": true}},
            "steps": [{"name": "double", "handler": "double", "input": {"n": "${{ input.n }}"}}],
            "output": "${{ steps.double.output }}",
        },
    }))?;
    templates.create(&PostParams::default(), &template).await?;

    let start = Start::template("by-template", "doubler").input(&Doubling { n: 21.0 })?;
    let run = s.client.start(start.clone()).await?;
    ensure!(run.created(), "the first start creates the run");
    assert_eq!(run.wait::<Doubled>(WAIT).await?, Doubled { n: 42 });
    let stored = s.api.get("by-template").await?;
    ensure!(
        !stored.spec.steps.is_empty() && stored.spec.pool.as_deref() == Some("pool"),
        "the operator copied the template's flow into the run: {:?}",
        stored.spec
    );

    // The stored spec now differs from the one sent (steps, pool, input), yet it is the same run.
    let again = s.client.start(start).await?;
    ensure!(
        !again.created(),
        "the same template and input is the same run"
    );
    let other = Start::template("by-template", "doubler").input(&Doubling { n: 5.0 })?;
    match s.client.start(other).await {
        Err(Error::SpecConflict { differences, .. }) => {
            assert_eq!(differences, ["spec.templateRef.input.n"]);
        }
        other => bail!("expected Error::SpecConflict, got {other:?}"),
    }

    // Input the template does not accept fails the run, which wait reports with the operator's reason.
    let bad = Start::template("bad-template-input", "doubler").input(&json!({"n": "x"}))?;
    match s.client.start(bad).await?.wait::<Value>(WAIT).await {
        Err(Error::Failed(failure)) => {
            assert_eq!(failure.reason, "InvalidInput");
            ensure!(failure.message.contains("n"), "{failure}");
        }
        other => bail!("expected Error::Failed, got {other:?}"),
    }
    let list = s.api.list(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 2);
    s.finish().await
}

#[tokio::test]
async fn wait_times_out_naming_the_run_and_its_last_phase() -> Result<()> {
    let s = setup("client-timeout").await?;
    let run = s
        .client
        .start(Start::inline("forever", waiting_flow()?))
        .await?;
    s.step_waiting("forever", "gate").await?;
    let started = std::time::Instant::now();
    match run.wait::<Value>(Duration::from_secs(2)).await {
        Err(e @ Error::Timeout { .. }) => {
            let Error::Timeout {
                ref name,
                last_phase,
                waited,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(name, "forever");
            assert_eq!(last_phase, Some(FlowPhase::Running));
            assert_eq!(waited, Duration::from_secs(2));
            let text = e.to_string();
            assert!(
                text.contains(&format!("{}/forever", s.ns.name())) && text.contains("Running"),
                "{text}"
            );
        }
        other => bail!("expected Error::Timeout, got {other:?}"),
    }
    let elapsed = started.elapsed();
    ensure!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(10),
        "wait returned after {elapsed:?}"
    );
    // The run goes on.
    assert_eq!(run.status().await?.phase, FlowPhase::Running);
    s.finish().await
}

/// Runs the crate's example binary with `args` against namespace `ns`; returns (exit code, stdout, stderr).
async fn run_charge_example(ns: &str, args: &[&str]) -> Result<(Option<i32>, String, String)> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let out = tokio::process::Command::new(target.join("debug/examples/charge"))
        .args(args)
        .env("KUBECONFIG", kubeconfig_path()?)
        .env("SLUICE_NAMESPACE", ns)
        .output()
        .await
        .context("running the charge example")?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test]
async fn the_charge_example_starts_a_flow_and_prints_its_result() -> Result<()> {
    init_test_logs();
    // The example binary, built like the harness builds the operator (outside this test's cargo env).
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = tokio::process::Command::new(cargo);
    build.args(["build", "-q", "-p", "sluice-client", "--example", "charge"]);
    for name in cargo_test_env() {
        build.env_remove(name);
    }
    let built = build
        .current_dir(repo_root())
        .output()
        .await
        .context("cargo build --example charge")?;
    ensure!(
        built.status.success(),
        "building the charge example: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    install_crds(&cluster().await?).await?;
    let ns = TestNamespace::new("client-example").await?;
    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    // The example's pool `examples`, serving `charge_payment` as the example worker does.
    let config = sluice_worker::Config::new(
        operator.broker_url(),
        format!("{}/examples", ns.name()),
        "worker-1",
    );
    let worker = sluice_worker::Worker::new(config).handler(
        "charge_payment",
        |_ctx: sluice_worker::StepContext, input: Value| async move {
            Ok(json!({
                "paymentId": format!("pay-{}", input["orderId"].as_str().unwrap_or_default()),
                "amount": input["amount"],
                "status": "charged",
            }))
        },
    );
    let handle = worker.shutdown_handle();
    tokio::spawn(async move { worker.run_until(std::future::pending()).await });

    let (code, stdout, stderr) = run_charge_example(ns.name(), &["1001", "42.50"]).await?;
    ensure!(code == Some(0), "the example exited {code:?}: {stderr}");
    assert_eq!(stdout, "charged 42.50: pay-1001\n");
    // Again: the same run and its recorded result, no second FlowRun.
    let (code, again, stderr) = run_charge_example(ns.name(), &["1001", "42.50"]).await?;
    ensure!(code == Some(0), "the second run exited {code:?}: {stderr}");
    assert_eq!(again, stdout);
    let api: Api<FlowRun> = ns.api();
    assert_eq!(api.list(&ListParams::default()).await?.items.len(), 1);
    // Another amount for the same order is a spec conflict, reported as an error.
    let (code, _, stderr) = run_charge_example(ns.name(), &["1001", "50"]).await?;
    ensure!(code != Some(0), "a conflicting charge must fail");
    ensure!(
        stderr.contains("different spec") && stderr.contains("spec.input.amount"),
        "{stderr}"
    );
    handle.shutdown();
    ns.cleanup().await?;
    Ok(())
}
