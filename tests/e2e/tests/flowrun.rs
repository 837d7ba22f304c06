//! FlowRuns run to completion on the real API server: the operator's FlowRun runtime (status writer,
//! controller, broker) runs in this test process, and workers built on the Rust SDK claim from its broker over
//! real HTTP. These tests prove the engine ↔ status ↔ broker ↔ worker path; worker pods run by the process
//! kubelet are exercised by the WorkerPool tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sluice_e2e::{InProcessOperator, TestNamespace, cluster, install_crds, wait_for};
use sluice_operator::api::{FlowPhase, FlowRun, StepPhase};
use sluice_worker::{Config, StepContext, StepError, Worker};

const WAIT: Duration = Duration::from_secs(90);

/// What the handlers saw, to assert on side effects.
#[derive(Default)]
struct Log {
    calls: Mutex<Vec<(String, u32)>>,
    flaky_failures: AtomicU32,
}

fn start_worker(
    operator: &InProcessOperator,
    namespace: &str,
    name: &str,
    log: Arc<Log>,
) -> sluice_worker::ShutdownHandle {
    let config = Config::new(operator.broker_url(), format!("{namespace}/pool"), name);
    let (l1, l2, l3) = (log.clone(), log.clone(), log);
    let worker = Worker::new(config)
        .concurrency(4)
        .handler("double", move |ctx: StepContext, input: Value| {
            let log = l1.clone();
            async move {
                log.calls
                    .lock()
                    .unwrap()
                    .push((ctx.step().to_owned(), ctx.attempt()));
                let n = input["n"]
                    .as_i64()
                    .ok_or_else(|| StepError::fatal("BadInput", "n must be a number"))?;
                Ok(json!({ "n": n * 2 }))
            }
        })
        .handler("flaky", move |ctx: StepContext, _input: Value| {
            let log = l2.clone();
            async move {
                log.calls
                    .lock()
                    .unwrap()
                    .push((ctx.step().to_owned(), ctx.attempt()));
                if ctx.attempt() < 3 {
                    log.flaky_failures.fetch_add(1, Ordering::SeqCst);
                    return Err(StepError::retryable(format!(
                        "transient failure on attempt {}",
                        ctx.attempt()
                    )));
                }
                Ok(json!({ "attempt": ctx.attempt() }))
            }
        })
        .handler("decline", move |ctx: StepContext, _input: Value| {
            let log = l3.clone();
            async move {
                log.calls
                    .lock()
                    .unwrap()
                    .push((ctx.step().to_owned(), ctx.attempt()));
                Err::<Value, _>(StepError::fatal("card_declined", "the card was declined"))
            }
        });
    let handle = worker.shutdown_handle();
    tokio::spawn(async move { worker.run_until(std::future::pending()).await });
    handle
}

async fn create(api: &Api<FlowRun>, manifest: Value) -> Result<String> {
    let fr: FlowRun = serde_json::from_value(manifest)?;
    let created = api.create(&PostParams::default(), &fr).await?;
    Ok(created.metadata.name.unwrap_or_default())
}

async fn wait_phase(api: &Api<FlowRun>, name: &str, phase: FlowPhase) -> Result<FlowRun> {
    let want = phase;
    wait_for(
        api,
        name,
        move |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref()).and_then(|s| s.phase) == Some(want)
        },
        WAIT,
        &format!("FlowRun {name} to reach {phase:?}"),
    )
    .await?;
    Ok(api.get(name).await?)
}

struct Setup {
    ns: TestNamespace,
    api: Api<FlowRun>,
    log: Arc<Log>,
    _operator: InProcessOperator,
    worker: sluice_worker::ShutdownHandle,
}

async fn setup(prefix: &str) -> Result<Setup> {
    // Operator and worker logs go to the test's captured output, shown when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sluice_operator=debug,sluice_worker=debug".into()),
        )
        .with_test_writer()
        .try_init();
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(prefix).await?;
    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let log = Arc::new(Log::default());
    let worker = start_worker(&operator, ns.name(), "worker-1", log.clone());
    let api: Api<FlowRun> = ns.api();
    Ok(Setup {
        ns,
        api,
        log,
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
}

#[tokio::test]
async fn a_chain_of_handler_steps_succeeds_with_outputs_in_status() -> Result<()> {
    let s = setup("fr-chain").await?;
    let name = create(
        &s.api,
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "chain"},
            "spec": {
                "pool": "pool",
                "input": {"n": 21},
                "steps": [
                    {"name": "first", "handler": "double", "input": {"n": "${{ input.n }}"}},
                    {"name": "second", "dependsOn": ["first"], "handler": "double",
                     "input": {"n": "${{ steps.first.output.n }}"}}
                ],
                "output": {"result": "${{ steps.second.output.n }}"}
            }
        }),
    )
    .await?;
    let fr = wait_phase(&s.api, &name, FlowPhase::Succeeded).await?;
    let status = fr.status.unwrap();
    assert_eq!(status.output, Some(json!({"result": 84})));
    assert_eq!(status.steps["first"].output, Some(json!({"n": 42})));
    for step in ["first", "second"] {
        assert_eq!(status.steps[step].phase, StepPhase::Succeeded);
        assert_eq!(status.steps[step].attempts, 1, "{step} ran once");
        assert_eq!(status.steps[step].worker.as_deref(), Some("worker-1"));
    }
    let calls = s.log.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![("first".to_owned(), 1), ("second".to_owned(), 1)],
        "each step handled once, in order"
    );
    s.finish().await
}

/// The API server records field owners of a FlowRun when it is created; the operator clears them before the
/// run's first status write, and none of its writes records any again (each would cost the API server
/// ownership bookkeeping on every step).
#[tokio::test]
async fn a_run_keeps_no_field_owners_once_the_operator_writes_it() -> Result<()> {
    let s = setup("fr-owners").await?;
    let fr: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "owners"},
        "spec": {"pool": "pool", "input": {"n": 1}, "steps": [
            {"name": "first", "handler": "double", "input": {"n": "${{ input.n }}"}},
            {"name": "second", "dependsOn": ["first"], "handler": "double",
             "input": {"n": "${{ steps.first.output.n }}"}}
        ]}
    }))?;
    let created = s
        .api
        .create(
            &PostParams {
                field_manager: Some("e2e".into()),
                ..Default::default()
            },
            &fr,
        )
        .await?;
    let managers = |fr: &FlowRun| -> Vec<String> {
        fr.metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|entry| entry.manager.clone())
            .collect()
    };
    assert_eq!(
        managers(&created),
        ["e2e"],
        "the API server tracks the creator"
    );
    let done = wait_phase(&s.api, "owners", FlowPhase::Succeeded).await?;
    assert_eq!(
        managers(&done),
        Vec::<String>::new(),
        "field owners left on the run after {} status writes",
        done.status.as_ref().map_or(0, |st| st.steps.len() + 1)
    );
    assert_eq!(
        done.status.unwrap().steps["second"].output,
        Some(json!({"n": 4}))
    );
    s.finish().await
}

#[tokio::test]
async fn retries_with_backoff_then_succeeds_and_non_retryable_fails_at_once() -> Result<()> {
    let s = setup("fr-retry").await?;
    let flaky = create(
        &s.api,
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "flaky"},
            "spec": {
                "pool": "pool",
                "steps": [{"name": "job", "handler": "flaky",
                           "retry": {"maxAttempts": 5, "initialBackoff": "200ms", "maxBackoff": "1s"}}]
            }
        }),
    )
    .await?;
    let declined = create(
        &s.api,
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "declined"},
            "spec": {
                "pool": "pool",
                "steps": [{"name": "charge", "handler": "decline",
                           "retry": {"maxAttempts": 5, "nonRetryableErrors": ["card_declined"]}}]
            }
        }),
    )
    .await?;
    let fr = wait_phase(&s.api, &flaky, FlowPhase::Succeeded).await?;
    let job = &fr.status.as_ref().unwrap().steps["job"];
    assert_eq!(job.attempts, 3, "two transient failures, then success");
    assert_eq!(job.output, Some(json!({"attempt": 3})));

    let fr = wait_phase(&s.api, &declined, FlowPhase::Failed).await?;
    let charge = &fr.status.as_ref().unwrap().steps["charge"];
    assert_eq!(charge.phase, StepPhase::Failed);
    assert_eq!(charge.attempts, 1, "a non-retryable error is not retried");
    assert_eq!(
        charge.error.as_ref().map(|e| e.type_.as_str()),
        Some("card_declined")
    );
    s.finish().await
}

#[tokio::test]
async fn max_attempts_fails_the_step_with_the_last_error() -> Result<()> {
    let s = setup("fr-poison").await?;
    let name = create(
        &s.api,
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "poison"},
            "spec": {
                "pool": "pool",
                "steps": [{"name": "job", "handler": "flaky",
                           "retry": {"maxAttempts": 2, "initialBackoff": "100ms"}}]
            }
        }),
    )
    .await?;
    let fr = wait_phase(&s.api, &name, FlowPhase::Failed).await?;
    let job = &fr.status.as_ref().unwrap().steps["job"];
    assert_eq!((job.phase, job.attempts), (StepPhase::Failed, 2));
    let error = job.error.as_ref().expect("the last error is kept");
    assert!(
        error.message.contains("attempt 2"),
        "last error kept: {error:?}"
    );
    s.finish().await
}

/// Signals sent before the wait starts and after it started both complete the wait, and the payload becomes
/// the step's output. The signal is written the way a user does, through the status subresource.
#[tokio::test]
async fn signals_sent_before_and_after_the_wait_complete_it() -> Result<()> {
    let s = setup("fr-signal").await?;
    let manifest = |name: &str| {
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": name},
            "spec": {
                "pool": "pool",
                "input": {"n": 1},
                "steps": [
                    {"name": "prepare", "handler": "double", "input": {"n": "${{ input.n }}"}},
                    {"name": "approval", "dependsOn": ["prepare"], "waitForSignal": {"name": "manager-approval"}}
                ],
                "output": {"approved": "${{ steps.approval.output.approved }}"}
            }
        })
    };
    let signal =
        json!({"status": {"signals": {"manager-approval": {"payload": {"approved": true}}}}});

    // After: wait until the step is Waiting, then signal.
    let after = create(&s.api, manifest("after")).await?;
    wait_for(
        &s.api,
        &after,
        |fr: Option<&FlowRun>| {
            fr.and_then(|f| f.status.as_ref())
                .and_then(|st| st.steps.get("approval"))
                .is_some_and(|st| st.phase == StepPhase::Waiting)
        },
        WAIT,
        "step approval to wait for its signal",
    )
    .await?;
    s.api
        .patch_status(&after, &PatchParams::default(), &Patch::Merge(&signal))
        .await?;
    let fr = wait_phase(&s.api, &after, FlowPhase::Succeeded).await?;
    let status = fr.status.unwrap();
    assert_eq!(
        status.steps["approval"].output,
        Some(json!({"approved": true}))
    );
    assert_eq!(status.output, Some(json!({"approved": true})));
    assert!(
        status.signals.contains_key("manager-approval"),
        "the operator never removes user-written signals"
    );

    // Before: create the FlowRun and signal it at once, before the step can have started waiting.
    let before = create(&s.api, manifest("before")).await?;
    s.api
        .patch_status(&before, &PatchParams::default(), &Patch::Merge(&signal))
        .await?;
    let fr = wait_phase(&s.api, &before, FlowPhase::Succeeded).await?;
    assert_eq!(
        fr.status.unwrap().steps["approval"].output,
        Some(json!({"approved": true}))
    );
    s.finish().await
}

#[tokio::test]
async fn for_each_fans_out_and_collects_outputs_in_order() -> Result<()> {
    let s = setup("fr-foreach").await?;
    let name = create(
        &s.api,
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "fanout"},
            "spec": {
                "pool": "pool",
                "input": {"items": [1, 2, 3, 4, 5, 6, 7]},
                "steps": [
                    {"name": "each", "handler": "double", "forEach": "${{ input.items }}", "maxParallel": 3,
                     "input": {"n": "${{ item }}"}}
                ],
                "output": "${{ steps.each.output }}"
            }
        }),
    )
    .await?;
    let fr = wait_phase(&s.api, &name, FlowPhase::Succeeded).await?;
    let expected: Vec<Value> = (1..=7).map(|n| json!({"n": n * 2})).collect();
    assert_eq!(fr.status.unwrap().output, Some(Value::Array(expected)));
    let calls = s.log.calls.lock().unwrap().clone();
    let per_step: BTreeMap<_, usize> = calls.iter().fold(BTreeMap::new(), |mut m, (step, _)| {
        *m.entry(step.clone()).or_default() += 1;
        m
    });
    assert_eq!(
        per_step.get("each"),
        Some(&7),
        "each instance handled exactly once"
    );
    s.finish().await
}

#[tokio::test]
async fn an_invalid_flow_ends_failed_with_a_condition_naming_every_problem() -> Result<()> {
    let s = setup("fr-invalid").await?;
    // Valid for the CRD schema, invalid for the engine: a cycle and a reference to an unknown step.
    let name = create(
        &s.api,
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "invalid"},
            "spec": {
                "pool": "pool",
                "steps": [
                    {"name": "a", "dependsOn": ["b"], "handler": "double"},
                    {"name": "b", "dependsOn": ["a"], "handler": "double",
                     "input": {"n": "${{ steps.nowhere.output }}"}}
                ]
            }
        }),
    )
    .await
    .context("the CRD rules accept this flow; only the engine can see the cycle")?;
    let fr = wait_phase(&s.api, &name, FlowPhase::Failed).await?;
    let status = fr.status.unwrap();
    let invalid = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Invalid")
        .context("an Invalid condition")?;
    assert_eq!(invalid.status, "True");
    assert!(invalid.message.contains("cycle"), "{}", invalid.message);
    assert!(invalid.message.contains("nowhere"), "{}", invalid.message);
    assert!(
        s.log.calls.lock().unwrap().is_empty(),
        "nothing of an invalid flow runs"
    );
    s.finish().await
}

#[tokio::test]
async fn a_child_flow_runs_as_an_owned_flowrun_and_its_output_or_failure_ends_the_step()
-> Result<()> {
    let s = setup("fr-child").await?;
    let child_spec = |handler: &str| {
        json!({
            "input": {"n": "${{ steps.first.output.n }}"},
            "steps": [{"name": "inner", "handler": handler, "input": {"n": "${{ input.n }}"}}],
            "output": {"n": "${{ steps.inner.output.n }}"}
        })
    };
    let parent = |name: &str, handler: &str| {
        json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": name},
            "spec": {
                "pool": "pool",
                "input": {"n": 5},
                "steps": [
                    {"name": "first", "handler": "double", "input": {"n": "${{ input.n }}"}},
                    {"name": "sub", "dependsOn": ["first"], "flow": {"spec": child_spec(handler)}},
                    {"name": "last", "dependsOn": ["sub"], "handler": "double",
                     "input": {"n": "${{ steps.sub.output.n }}"}}
                ],
                "output": {"n": "${{ steps.last.output.n }}"}
            }
        })
    };

    // Succeeding child: 5 → 10 (parent) → 20 (child, its pool inherited) → 40 (parent).
    let name = create(&s.api, parent("outer", "double")).await?;
    let fr = wait_phase(&s.api, &name, FlowPhase::Succeeded).await?;
    let status = fr.status.clone().context("status")?;
    assert_eq!(status.output, Some(json!({"n": 40})));
    assert_eq!(status.steps["sub"].phase, StepPhase::Succeeded);
    assert_eq!(status.steps["sub"].output, Some(json!({"n": 20})));
    let child = s.api.get("outer-sub").await?;
    let owner = child
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|o| o.controller == Some(true))
        .context("the child has no controller owner")?;
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("FlowRun", "outer")
    );
    assert_eq!(owner.uid, fr.metadata.uid.clone().unwrap_or_default());
    let child_status = child.status.context("child status")?;
    assert_eq!(child_status.phase, Some(FlowPhase::Succeeded));
    assert_eq!(child_status.output, Some(json!({"n": 20})));
    assert_eq!(
        child.spec.pool.as_deref(),
        Some("pool"),
        "the child inherits the parent's pool"
    );

    // Failing child: its failure fails the parent's step, and the step after it never runs.
    let name = create(&s.api, parent("outer-bad", "decline")).await?;
    let fr = wait_phase(&s.api, &name, FlowPhase::Failed).await?;
    let status = fr.status.context("status")?;
    assert_eq!(status.steps["sub"].phase, StepPhase::Failed);
    assert_ne!(status.steps["last"].phase, StepPhase::Succeeded);
    let child = s.api.get("outer-bad-sub").await?;
    assert_eq!(child.status.and_then(|s| s.phase), Some(FlowPhase::Failed));
    let last_calls = s
        .log
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(step, _)| step == "last")
        .count();
    assert_eq!(
        last_calls, 1,
        "only the succeeding parent ran its last step"
    );
    s.finish().await
}
