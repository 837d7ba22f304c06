//! The `kubectl sluice` plugin the way users run it: the real `kubectl-sluice` binary (built by cargo for this
//! test) found by kubectl's plugin discovery (its directory first on `PATH`), against the local control plane,
//! with the operator's FlowRun runtime in this process and workers built on the Rust SDK claiming from its
//! broker over HTTP. Run with `tests/scripts/with-cluster.sh cargo test -p kubectl-sluice --test plugin`.
//!
//! Covered: `status` (text and `-o json`) on a running and a finished run; `signal` (a valid payload delivered
//! and consumed by the waiting step, invalid JSON refused before anything is written); `suspend`/`resume`;
//! `cancel`; `retry` of a run whose step failed (the step re-runs with a new attempt, succeeded steps keep
//! theirs); `graph` in Mermaid and DOT; `watch` until Succeeded (exit 0), Failed (3) and Cancelled (4); help.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use kube::Api;
use kube::api::PostParams;
use kubectl_sluice::report::FlowRunReport;
use serde_json::{Value, json};
use sluice_api::{FlowPhase, FlowRun, RetryOutcome, StepPhase};
use sluice_e2e::{InProcessOperator, TestNamespace, cluster, install_crds, kubectl, wait_for};
use sluice_worker::{Config, StepContext, StepError, Worker};

const WAIT: Duration = Duration::from_secs(90);

/// The directory of the `kubectl-sluice` binary cargo built for these tests, to put first on `PATH`.
fn plugin_dir() -> Result<PathBuf> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kubectl-sluice"));
    ensure!(bin.is_file(), "{} was not built", bin.display());
    Ok(bin.parent().context("binary directory")?.to_path_buf())
}

/// The test's namespace, operator and worker, and a way to run `kubectl sluice`.
struct Setup {
    ns: TestNamespace,
    api: Api<FlowRun>,
    path: std::ffi::OsString,
    _operator: InProcessOperator,
    worker: sluice_worker::ShutdownHandle,
}

/// The result of one `kubectl sluice` run.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    fn ok(self, what: &str) -> Result<String> {
        ensure!(
            self.code == Some(0),
            "kubectl sluice {what} exited {:?}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self.stdout)
    }
}

fn start_worker(operator: &InProcessOperator, namespace: &str) -> sluice_worker::ShutdownHandle {
    let config = Config::new(
        operator.broker_url(),
        format!("{namespace}/pool"),
        "plugin-worker",
    );
    let worker = Worker::new(config)
        .concurrency(4)
        .handler("double", |_ctx: StepContext, input: Value| async move {
            let n = input["n"]
                .as_i64()
                .ok_or_else(|| StepError::fatal("BadInput", "n must be a number"))?;
            Ok(json!({ "n": n * 2 }))
        })
        // Fails (retryably) until the file named in the input exists.
        .handler("marker", |ctx: StepContext, input: Value| async move {
            let marker = input["marker"].as_str().unwrap_or_default().to_owned();
            if Path::new(&marker).exists() {
                Ok(json!({ "attempt": ctx.attempt() }))
            } else {
                Err(StepError::new(
                    "MarkerMissing",
                    format!("marker file missing on attempt {}", ctx.attempt()),
                    true,
                ))
            }
        });
    let handle = worker.shutdown_handle();
    tokio::spawn(async move { worker.run_until(std::future::pending()).await });
    handle
}

async fn setup(prefix: &str) -> Result<Setup> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
    let dir = plugin_dir()?;
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new(prefix).await?;
    let operator = InProcessOperator::start(ns.client(), ns.name()).await?;
    let worker = start_worker(&operator, ns.name());
    let mut paths = vec![dir];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(paths)?;
    Ok(Setup {
        api: ns.api(),
        ns,
        path,
        _operator: operator,
        worker,
    })
}

impl Setup {
    /// `kubectl sluice ARGS -n NAMESPACE`, through kubectl's plugin discovery.
    async fn sluice(&self, args: &[&str]) -> Result<Run> {
        let mut all = vec!["sluice"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-n", self.ns.name()]);
        let out = kubectl(all)
            .env("PATH", &self.path)
            .env("NO_COLOR", "")
            .output()
            .await?;
        Ok(out.into())
    }

    /// `kubectl sluice watch NAME` started in the background.
    fn watch(&self, name: &str) -> tokio::task::JoinHandle<Result<Run>> {
        let cmd = kubectl([
            "sluice",
            "watch",
            name,
            "--timeout",
            "120",
            "-n",
            self.ns.name(),
        ])
        .env("PATH", &self.path);
        tokio::spawn(async move { Ok(cmd.output().await?.into()) })
    }

    async fn create(&self, manifest: Value) -> Result<String> {
        let fr: FlowRun = serde_json::from_value(manifest)?;
        let created = self.api.create(&PostParams::default(), &fr).await?;
        Ok(created.metadata.name.unwrap_or_default())
    }

    async fn wait(
        &self,
        name: &str,
        what: &str,
        cond: impl Fn(&FlowRun) -> bool + Send + 'static,
    ) -> Result<FlowRun> {
        Ok(wait_for(
            &self.api,
            name,
            move |fr: Option<&FlowRun>| fr.is_some_and(&cond),
            WAIT,
            what,
        )
        .await?)
    }

    async fn wait_phase(&self, name: &str, phase: FlowPhase) -> Result<FlowRun> {
        self.wait(
            name,
            &format!("FlowRun {name} to be {phase:?}"),
            move |fr| fr.status.as_ref().and_then(|s| s.phase) == Some(phase),
        )
        .await
    }

    async fn finish(self) -> Result<()> {
        self.worker.shutdown();
        self.ns.cleanup().await?;
        Ok(())
    }
}

fn step_phase(fr: &FlowRun, step: &str) -> StepPhase {
    fr.status
        .as_ref()
        .and_then(|s| s.steps.get(step))
        .map(|s| s.phase)
        .unwrap_or_default()
}

/// A flow that waits for signal `approval` after `a`, then doubles the signal's `n` in `b`; `c` depends on both
/// `a` and the wait.
fn approval_flow(name: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": name},
        "spec": {
            "pool": "pool",
            "steps": [
                {"name": "a", "handler": "double", "input": {"n": 1}},
                {"name": "approval", "dependsOn": ["a"], "waitForSignal": {"name": "approval"}},
                {"name": "b", "dependsOn": ["approval"], "handler": "double",
                 "input": {"n": "${{ steps.approval.output.n }}"}},
                {"name": "c", "dependsOn": ["a", "approval"], "handler": "double",
                 "input": {"n": "${{ steps.a.output.n }}"}},
            ],
            "output": {"b": "${{ steps.b.output.n }}"}
        }
    })
}

/// Checks the Mermaid and DOT graphs of the approval flow: one node per step labelled with its phase, one
/// edge per dependency.
fn check_graphs(mermaid: &str, dot: &str, phases: &[(&str, &str)]) -> Result<()> {
    let lines: Vec<&str> = mermaid.lines().collect();
    ensure!(lines.first() == Some(&"flowchart TD"), "{mermaid}");
    let ids: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| {
            let l = l.trim();
            let (id, rest) = l.split_once("[\"")?;
            let label = rest.strip_suffix("\"]")?;
            Some((id.to_owned(), label.to_owned()))
        })
        .collect();
    ensure!(ids.len() == 4, "a node per step: {mermaid}");
    let id_of = |step: &str| {
        ids.iter()
            .find(|(_, label)| label.starts_with(&format!("{step}<br/>")))
            .map(|(id, _)| id.clone())
    };
    for (step, phase) in phases {
        ensure!(
            ids.iter().any(|(_, l)| l == &format!("{step}<br/>{phase}")),
            "node {step} labelled {phase}: {mermaid}"
        );
    }
    let mut edges: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| {
            let (from, to) = l.trim().split_once(" --> ")?;
            Some((from.to_owned(), to.to_owned()))
        })
        .collect();
    edges.sort();
    let mut want: Vec<(String, String)> = [
        ("a", "approval"),
        ("approval", "b"),
        ("a", "c"),
        ("approval", "c"),
    ]
    .iter()
    .map(|(f, t)| Ok((id_of(f).context("id")?, id_of(t).context("id")?)))
    .collect::<Result<_>>()?;
    want.sort();
    ensure!(edges == want, "mermaid edges {edges:?} != {want:?}");

    let dot = dot.trim();
    ensure!(dot.starts_with("digraph ") && dot.ends_with('}'), "{dot}");
    ensure!(
        dot.matches('{').count() == 1 && dot.matches('}').count() == 1,
        "{dot}"
    );
    let mut dot_edges: Vec<String> = dot
        .lines()
        .filter(|l| l.contains(" -> "))
        .map(|l| l.trim().to_owned())
        .collect();
    dot_edges.sort();
    ensure!(
        dot_edges
            == [
                "\"a\" -> \"approval\";",
                "\"a\" -> \"c\";",
                "\"approval\" -> \"b\";",
                "\"approval\" -> \"c\";"
            ],
        "dot edges: {dot_edges:?}"
    );
    for (step, phase) in phases {
        ensure!(
            dot.contains(&format!("\"{step}\" [label=\"{step}\\n{phase}\"")),
            "dot node {step} labelled {phase}: {dot}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn status_signal_suspend_resume_graph_and_watch_on_a_real_flow() -> Result<()> {
    let s = setup("plugin-status").await?;
    let name = s.create(approval_flow("approve-1")).await?;
    let watch = s.watch(&name);
    let fr = s
        .wait(&name, "step approval to wait for its signal", |fr| {
            step_phase(fr, "approval") == StepPhase::Waiting
        })
        .await?;
    let a_worker = fr.status.as_ref().unwrap().steps["a"].worker.clone();

    // status, running: the tree, without colour (stdout is a pipe).
    let text = s.sluice(&["status", &name]).await?.ok("status")?;
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines[0].starts_with(&format!("FlowRun {}/{name}: Running", s.ns.name())),
        "{text}"
    );
    ensure!(!text.contains('\x1b'), "no colour on a pipe: {text:?}");
    let line = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .copied()
            .with_context(|| format!("no line {prefix:?} in\n{text}"))
    };
    ensure!(line("a ")?.contains("Succeeded  attempt 1"), "{text}");
    if let Some(w) = &a_worker {
        ensure!(line("a ")?.contains(&format!("on {w}")), "{text}");
    }
    ensure!(
        line("├─ approval ")?.contains("Waiting")
            && line("├─ approval ")?.contains("waiting for signal \"approval\""),
        "{text}"
    );
    ensure!(line("│  ├─ b ")?.contains("Pending"), "{text}");
    // c has two parents: drawn in full under its first parent `a`, referenced under `approval`.
    ensure!(line("└─ c ")?.contains("Pending"), "{text}");
    ensure!(text.contains("(also depends on approval)"), "{text}");
    ensure!(line("│  └─ c ")?.contains("↑ shown under a"), "{text}");

    // status -o json, running.
    let json_text = s
        .sluice(&["status", &name, "-o", "json"])
        .await?
        .ok("status -o json")?;
    let report: FlowRunReport = serde_json::from_str(&json_text)?;
    ensure!(report.kind == "FlowRunReport" && report.version == 1);
    ensure!(report.phase == FlowPhase::Running, "{json_text}");
    ensure!(report.step("a").unwrap().phase == StepPhase::Succeeded);
    ensure!(report.step("a").unwrap().attempts == 1);
    ensure!(report.step("approval").unwrap().signal.as_deref() == Some("approval"));
    ensure!(
        report
            .steps
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            == ["a", "approval", "b", "c"]
    );

    // graph while running.
    let mermaid = s.sluice(&["graph", &name]).await?.ok("graph")?;
    let dot = s
        .sluice(&["graph", &name, "--format", "dot"])
        .await?
        .ok("graph --format dot")?;
    check_graphs(
        &mermaid,
        &dot,
        &[
            ("a", "Succeeded"),
            ("approval", "Waiting"),
            ("b", "Pending"),
            ("c", "Pending"),
        ],
    )?;

    // Invalid JSON is refused before anything is written, naming the flag.
    let bad = s
        .sluice(&["signal", &name, "approval", "--data", "{approved: yes}"])
        .await?;
    ensure!(bad.code == Some(1), "exit {:?}", bad.code);
    ensure!(
        bad.stderr
            .contains("--data: not valid JSON: key must be a string"),
        "{}",
        bad.stderr
    );
    let bad_file = s.ns.scratch_dir().join("bad.json");
    std::fs::write(&bad_file, "[1, 2")?;
    let bad = s
        .sluice(&[
            "signal",
            &name,
            "approval",
            "--file",
            bad_file.to_str().context("path")?,
        ])
        .await?;
    ensure!(
        bad.code == Some(1) && bad.stderr.contains("--file: not valid JSON"),
        "{}",
        bad.stderr
    );
    let fr = s.api.get(&name).await?;
    ensure!(
        fr.status.as_ref().unwrap().signals.is_empty(),
        "nothing was patched"
    );

    // Suspend, then signal: the wait consumes the signal, but b is not dispatched while suspended.
    let out = s.sluice(&["suspend", &name]).await?.ok("suspend")?;
    ensure!(
        out.trim() == format!("flowrun/{name}: spec.suspend false → true"),
        "{out}"
    );
    s.wait(&name, "the Suspended condition", |fr| {
        fr.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Suspended" && c.status == "True")
        })
    })
    .await?;
    let payload = s.ns.scratch_dir().join("payload.json");
    std::fs::write(&payload, r#"{"n": 5}"#)?;
    let out = s
        .sluice(&[
            "signal",
            &name,
            "approval",
            "--file",
            payload.to_str().context("path")?,
        ])
        .await?
        .ok("signal")?;
    ensure!(
        out.trim() == format!("flowrun/{name}: signal \"approval\" delivered"),
        "{out}"
    );
    let fr = s
        .wait(&name, "the signal to be consumed", |fr| {
            step_phase(fr, "approval") == StepPhase::Succeeded
        })
        .await?;
    ensure!(
        step_phase(&fr, "b") == StepPhase::Pending && step_phase(&fr, "c") == StepPhase::Pending,
        "nothing is dispatched while suspended: {:?}",
        fr.status
    );
    let text = s.sluice(&["status", &name]).await?.ok("status")?;
    ensure!(
        text.lines()
            .next()
            .unwrap_or_default()
            .contains("(suspended)"),
        "{text}"
    );

    // Resume: the run finishes with the signal's payload.
    let out = s.sluice(&["resume", &name]).await?.ok("resume")?;
    ensure!(
        out.trim() == format!("flowrun/{name}: spec.suspend true → false"),
        "{out}"
    );
    let fr = s.wait_phase(&name, FlowPhase::Succeeded).await?;
    ensure!(
        fr.status.as_ref().unwrap().output == Some(json!({"b": 10})),
        "{:?}",
        fr.status
    );
    let out = s.sluice(&["resume", &name]).await?.ok("resume")?;
    ensure!(
        out.contains("spec.suspend is already false (unchanged)"),
        "{out}"
    );

    // watch, started right after creation, followed the run to its end: exit 0, a line per change.
    let watched = watch.await??;
    let out = watched.ok("watch")?;
    // (b may be seen Ready, Running or straight Succeeded, depending on how fast the worker is.)
    for expected in [
        // (first sight: Pending or Running, depending on how fast the operator is)
        "flowrun approve-1: ",
        "approval: Waiting → Succeeded",
        "b: Pending → ",
        "flowrun approve-1: Running → Succeeded",
    ] {
        ensure!(
            out.contains(expected),
            "watch output lacks {expected:?}:\n{out}"
        );
    }

    // status, finished: text and JSON.
    let text = s.sluice(&["status", &name]).await?.ok("status")?;
    ensure!(
        text.lines()
            .next()
            .unwrap_or_default()
            .contains(": Succeeded  4/4 steps"),
        "{text}"
    );
    let report: FlowRunReport = serde_json::from_str(
        &s.sluice(&["status", &name, "-o", "json"])
            .await?
            .ok("status -o json")?,
    )?;
    ensure!(report.phase == FlowPhase::Succeeded && report.finished_at.is_some());
    ensure!(
        report.steps.iter().all(|s| s.phase == StepPhase::Succeeded),
        "{report:?}"
    );
    ensure!(report.step("b").unwrap().duration_seconds.is_some());
    let mermaid = s.sluice(&["graph", &name]).await?.ok("graph")?;
    let dot = s
        .sluice(&["graph", &name, "--format", "dot"])
        .await?
        .ok("graph --format dot")?;
    check_graphs(
        &mermaid,
        &dot,
        &[
            ("a", "Succeeded"),
            ("approval", "Succeeded"),
            ("b", "Succeeded"),
            ("c", "Succeeded"),
        ],
    )?;

    // A retry of a run that has not Failed is refused by the plugin.
    let refused = s.sluice(&["retry", &name]).await?;
    ensure!(
        refused.code == Some(1) && refused.stderr.contains("is Succeeded, not Failed"),
        "{}",
        refused.stderr
    );
    s.finish().await
}

#[tokio::test]
async fn retry_reruns_the_failed_step_and_keeps_the_succeeded_ones() -> Result<()> {
    let s = setup("plugin-retry").await?;
    let marker = s.ns.scratch_dir().join("marker");
    let name = s
        .create(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "retry-1"},
            "spec": {
                "pool": "pool",
                "steps": [
                    {"name": "first", "handler": "double", "input": {"n": 2}},
                    {"name": "side", "handler": "double", "input": {"n": 3}},
                    {"name": "gate", "dependsOn": ["first"], "handler": "marker",
                     "input": {"marker": marker.to_str().context("path")?},
                     "retry": {"maxAttempts": 1}},
                    {"name": "last", "dependsOn": ["gate"], "handler": "double",
                     "input": {"n": "${{ steps.first.output.n }}"}},
                ],
                "output": {"last": "${{ steps.last.output.n }}"}
            }
        }))
        .await?;
    let watch = s.watch(&name);
    let failed = s.wait_phase(&name, FlowPhase::Failed).await?;
    let before = failed.status.clone().unwrap();
    ensure!(before.steps["gate"].phase == StepPhase::Failed && before.steps["gate"].attempts == 1);
    ensure!(before.steps["last"].phase == StepPhase::Cancelled);

    // watch on the failing run: exit code 3, the failure named.
    let watched = watch.await??;
    ensure!(
        watched.code == Some(3),
        "watch exit {:?}: {}",
        watched.code,
        watched.stdout
    );
    // (The watch may first see the run already Failed.)
    ensure!(watched.stdout.contains("Failed"), "{}", watched.stdout);
    ensure!(
        watched.stdout.contains("marker file missing on attempt 1"),
        "{}",
        watched.stdout
    );

    // status of the failed run names the error.
    let text = s.sluice(&["status", &name]).await?.ok("status")?;
    ensure!(
        text.lines().next().unwrap_or_default().contains(": Failed"),
        "{text}"
    );
    ensure!(
        text.contains("error: MarkerMissing: marker file missing on attempt 1 [attempt 1]"),
        "{text}"
    );

    std::fs::write(&marker, "now it works")?;
    let out = s.sluice(&["retry", &name]).await?.ok("retry")?;
    ensure!(out.contains("retry requested (spec.retryRequest="), "{out}");
    ensure!(
        out.contains("retried (re-running gate, last); retries so far: 1"),
        "{out}"
    );

    let watched = s.watch(&name).await??;
    let out = watched.ok("watch after retry")?;
    ensure!(out.contains("Succeeded"), "{out}");
    let fr = s.wait_phase(&name, FlowPhase::Succeeded).await?;
    let after = fr.status.unwrap();
    for step in ["first", "side"] {
        ensure!(
            after.steps[step] == before.steps[step],
            "succeeded step {step} unchanged by the retry: {:?} vs {:?}",
            before.steps[step],
            after.steps[step]
        );
    }
    ensure!(
        after.steps["gate"].attempts == 2,
        "gate re-ran as attempt 2: {:?}",
        after.steps["gate"]
    );
    ensure!(after.steps["gate"].output == Some(json!({"attempt": 2})));
    // last never started before the failure: its first attempt ran after the retry.
    ensure!(
        after.steps["last"].attempts == 1,
        "{:?}",
        after.steps["last"]
    );
    ensure!(after.output == Some(json!({"last": 8})));
    let retry = after.retry.context("status.retry")?;
    ensure!(retry.outcome == RetryOutcome::Retried && retry.count == 1);
    ensure!(
        !after
            .conditions
            .iter()
            .any(|c| c.type_ == "Succeeded" && c.status == "False"),
        "the failure condition is cleared: {:?}",
        after.conditions
    );
    s.finish().await
}

#[tokio::test]
async fn cancel_ends_the_run_and_watch_exits_4() -> Result<()> {
    let s = setup("plugin-cancel").await?;
    let name = s.create(approval_flow("cancel-1")).await?;
    s.wait(&name, "step approval to wait", |fr| {
        step_phase(fr, "approval") == StepPhase::Waiting
    })
    .await?;
    let watch = s.watch(&name);
    let out = s.sluice(&["cancel", &name]).await?.ok("cancel")?;
    ensure!(
        out.trim() == format!("flowrun/{name}: spec.cancel false → true"),
        "{out}"
    );
    let watched = watch.await??;
    ensure!(
        watched.code == Some(4),
        "watch exit {:?}: {}",
        watched.code,
        watched.stdout
    );
    // The watch may first see the run before or after the cancel took effect.
    ensure!(
        watched
            .stdout
            .contains("flowrun cancel-1: Running → Cancelled")
            || watched.stdout.contains("flowrun cancel-1: Cancelled"),
        "{}",
        watched.stdout
    );
    let fr = s.wait_phase(&name, FlowPhase::Cancelled).await?;
    ensure!(step_phase(&fr, "a") == StepPhase::Succeeded);
    ensure!(step_phase(&fr, "approval") == StepPhase::Cancelled);
    let out = s.sluice(&["cancel", &name]).await?.ok("cancel")?;
    ensure!(
        out.contains("spec.cancel is already true (unchanged)"),
        "{out}"
    );
    // The kubeconfig flags are honoured: --kubeconfig and --context win over KUBECONFIG and the current context.
    let missing_config = s.ns.scratch_dir().join("no-such-kubeconfig");
    let r = s
        .sluice(&[
            "status",
            &name,
            "--kubeconfig",
            missing_config.to_str().context("path")?,
        ])
        .await?;
    ensure!(
        r.code == Some(1) && r.stderr.contains("no-such-kubeconfig"),
        "{:?} {}",
        r.code,
        r.stderr
    );
    let r = s
        .sluice(&["status", &name, "--context", "no-such-context"])
        .await?;
    ensure!(
        r.code == Some(1) && r.stderr.contains("no-such-context"),
        "{:?} {}",
        r.code,
        r.stderr
    );
    let config = sluice_e2e::kubeconfig_path()?;
    let r = s
        .sluice(&[
            "status",
            &name,
            "--kubeconfig",
            config.to_str().context("path")?,
        ])
        .await?
        .ok("status --kubeconfig")?;
    ensure!(r.contains(": Cancelled"), "{r}");
    // Unknown runs are named in the error.
    let missing = s.sluice(&["status", "no-such-run"]).await?;
    ensure!(
        missing.code == Some(1) && missing.stderr.contains("flowrun \"no-such-run\" not found"),
        "{}",
        missing.stderr
    );
    s.finish().await
}

#[tokio::test]
async fn kubectl_finds_the_plugin_and_its_help_is_useful() -> Result<()> {
    let dir = plugin_dir()?;
    let mut paths = vec![dir.clone()];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let path = std::env::join_paths(paths)?;
    let list: Run = kubectl(["plugin", "list"])
        .env("PATH", &path)
        .output()
        .await?
        .into();
    ensure!(
        list.stdout
            .contains(&dir.join("kubectl-sluice").display().to_string()),
        "kubectl plugin list: {}\n{}",
        list.stdout,
        list.stderr
    );
    let help = kubectl(["sluice", "--help"])
        .env("PATH", &path)
        .output()
        .await?;
    let help = Run::from(help).ok("--help")?;
    for word in [
        "status",
        "signal",
        "cancel",
        "suspend",
        "resume",
        "retry",
        "graph",
        "watch",
        "--namespace",
        "--context",
        "--kubeconfig",
        "Exit codes",
    ] {
        ensure!(help.contains(word), "--help lacks {word}: {help}");
    }
    let help = Run::from(
        kubectl(["sluice", "signal", "--help"])
            .env("PATH", &path)
            .output()
            .await?,
    )
    .ok("signal --help")?;
    for word in ["--data", "--file", "--subresource=status", "stdin"] {
        ensure!(help.contains(word), "signal --help lacks {word}: {help}");
    }
    let usage = Run::from(
        kubectl(["sluice", "frobnicate"])
            .env("PATH", &path)
            .output()
            .await?,
    );
    if usage.code != Some(2) {
        bail!(
            "an unknown command is a usage error (2): {:?} {}",
            usage.code,
            usage.stderr
        );
    }
    Ok(())
}
