//! Every block of README.md is run or checked here. A block is preceded by a marker that says how:
//!
//! | marker | check |
//! |---|---|
//! | `<!-- test: file PATH -->` | the block is the whole file PATH, which a test of `tests/` uses |
//! | `<!-- test: excerpt PATH -->` | the block is a part of PATH (a file the workspace compiles) |
//! | `<!-- test: run -->` | a shell block run in order in the README's story, against a real operator |
//! | `<!-- test: apply -->` | YAML applied in order in the story |
//! | `<!-- test: make -->` | `make` targets: each exists; `make test` is CI's command; `make demo` runs below |
//! | `<!-- test: helm -->` | helm commands, run with `--dry-run=server` against the local cluster |
//! | `<!-- test: helm-values FILE -->` | values the following helm block reads as FILE |
//! | `<!-- test: dry-run-commands -->` | kubectl commands run with `--dry-run=server` |
//! | `<!-- test: in PATH -->` | each command appears verbatim in PATH (commands that need a container engine) |
//! | `<!-- test: hpa -->` | an HPA that must scale the README's pool up on a queue and back down, on a Helm-installed operator with the `hpa-values.yaml` values |
//! | `<!-- test: keda -->` | a KEDA ScaledObject whose metrics-api URL and valueLocation read the real broker |
//! | `<!-- test: metrics -->` | metric names the operator's `/metrics` serves |
//!
//! Blocks in `text` without a marker are diagrams. Any other block without a marker fails the test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Api;
use serde_json::{Value, json};
use sluice_e2e::{
    HOST_POD_IP_ANNOTATION, HelmRelease, OperatorProcess, TestNamespace, api_service_available,
    build_binaries, cargo_test_env, cluster, cluster_dir, free_port, hpa_condition_true,
    install_crds, kubeconfig_path, kubectl, kubectl_path, merge_values, repo_root, tool_path,
    wait_for,
};
use sluice_operator::api::FlowRun;

#[derive(Debug, Clone)]
struct Block {
    /// Marker kind and its argument.
    kind: String,
    arg: String,
    lang: String,
    body: String,
    /// 1-based line of the opening fence.
    line: usize,
}

fn readme() -> Result<String> {
    Ok(std::fs::read_to_string(repo_root().join("README.md"))?)
}

/// The fenced blocks of a Markdown text, with the marker that precedes each (if only blank lines are between).
fn blocks(text: &str) -> Result<Vec<Block>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut marker: Option<(String, String)> = None;
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if let Some(m) = trimmed
            .strip_prefix("<!-- test:")
            .and_then(|m| m.trim_end().strip_suffix("-->"))
        {
            let m = m.trim();
            let (kind, arg) = m.split_once(' ').unwrap_or((m, ""));
            marker = Some((kind.to_owned(), arg.trim().to_owned()));
        } else if let Some(lang) = trimmed.strip_prefix("```") {
            let indent = lines[i].len() - trimmed.len();
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && lines[end].trim_start() != "```" {
                end += 1;
            }
            ensure!(
                end < lines.len(),
                "README.md:{}: unclosed code block",
                i + 1
            );
            let body: Vec<&str> = lines[start..end]
                .iter()
                .map(|l| l.get(indent..).unwrap_or(l.trim_start()))
                .collect();
            let (kind, arg) = marker.take().unwrap_or_default();
            out.push(Block {
                kind,
                arg,
                lang: lang.trim().to_owned(),
                body: body.join("\n") + "\n",
                line: i + 1,
            });
            i = end;
        } else if !trimmed.is_empty() {
            marker = None;
        }
        i += 1;
    }
    Ok(out)
}

/// The commands of a shell block: `\` continuations joined, comments and blank lines dropped.
fn commands(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in body.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        let line = match line.split_once(" # ") {
            Some((code, _)) if !code.contains('\'') => code.trim_end(),
            _ => line,
        };
        if let Some(head) = line.strip_suffix('\\') {
            current.push_str(head.trim_end());
            current.push(' ');
        } else {
            current.push_str(line);
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

/// Blocks that need no cluster are checked here; the others are checked to be of a known kind.
#[test]
fn every_readme_block_is_checked() -> Result<()> {
    let text = readme()?;
    let blocks = blocks(&text)?;
    ensure!(blocks.len() > 10, "found only {} blocks", blocks.len());
    let tests_dir = repo_root().join("tests/e2e/tests");
    let test_sources: String = std::fs::read_dir(&tests_dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        .filter(|e| e.file_name() != "readme.rs")
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    for b in &blocks {
        let at = format!("README.md:{}", b.line);
        match b.kind.as_str() {
            "" if b.lang == "text" => {}
            "" => bail!(
                "{at}: a ```{} block without a `<!-- test: ... -->` marker",
                b.lang
            ),
            "file" => {
                let file = std::fs::read_to_string(repo_root().join(&b.arg))
                    .with_context(|| format!("{at}: reading {}", b.arg))?;
                ensure!(b.body == file, "{at}: the block differs from {}", b.arg);
                let file_name = Path::new(&b.arg)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                ensure!(
                    test_sources.contains(&file_name),
                    "{at}: no test in tests/e2e/tests uses {}",
                    b.arg
                );
            }
            "excerpt" => {
                let file = std::fs::read_to_string(repo_root().join(&b.arg))
                    .with_context(|| format!("{at}: reading {}", b.arg))?;
                ensure!(
                    file.contains(&b.body),
                    "{at}: the block is not a part of {}",
                    b.arg
                );
            }
            "in" => {
                let file = std::fs::read_to_string(repo_root().join(&b.arg))
                    .with_context(|| format!("{at}: reading {}", b.arg))?;
                for cmd in commands(&b.body) {
                    ensure!(
                        file.contains(&cmd),
                        "{at}: `{cmd}` does not appear in {}",
                        b.arg
                    );
                }
            }
            "make" => {
                let makefile = std::fs::read_to_string(repo_root().join("Makefile"))?;
                let ci = std::fs::read_to_string(repo_root().join(".ci/run"))?;
                for cmd in commands(&b.body) {
                    let target = cmd
                        .strip_prefix("make ")
                        .with_context(|| format!("{at}: `{cmd}` is not a make command"))?;
                    ensure!(
                        makefile
                            .lines()
                            .any(|l| l.starts_with(&format!("{target}:"))),
                        "{at}: the Makefile has no target {target}"
                    );
                    match target {
                        "test" => {
                            ensure!(ci.contains("make test"), ".ci/run does not run make test")
                        }
                        "demo" => {} // make_demo_runs_the_order_flow_to_success
                        other => bail!("{at}: nothing runs `make {other}`"),
                    }
                }
            }
            "run" | "apply" | "helm" | "helm-values" | "dry-run-commands" | "hpa" | "keda"
            | "metrics" => {}
            other => bail!("{at}: unknown marker kind {other}"),
        }
    }
    Ok(())
}

/// The environment of the README's commands: a kubeconfig whose context namespace is `ns`, and kubectl, helm
/// and the kubectl-sluice plugin on PATH.
struct Shell {
    kubeconfig: PathBuf,
    path: String,
    /// Where commands run: the repository root, or a scratch dir that links to its charts/ and deploy/.
    cwd: PathBuf,
}

impl Shell {
    async fn new(ns: &TestNamespace) -> Result<Self> {
        let bin = build_binaries().await?;
        let source = tokio::task::spawn_blocking(kubeconfig_path).await??;
        let kubeconfig = ns.scratch_dir().join("kubeconfig");
        std::fs::copy(&source, &kubeconfig)?;
        let kubectl = kubectl_path()?;
        let helm = tool_path("helm")?;
        let mut dirs = vec![bin];
        for tool in [&kubectl, &helm] {
            dirs.extend(tool.parent().map(Path::to_path_buf));
        }
        dirs.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        let path = std::env::join_paths(dirs)?.to_string_lossy().into_owned();
        let shell = Self {
            kubeconfig,
            path,
            cwd: repo_root(),
        };
        shell
            .run(&format!(
                "kubectl config set-context --current --namespace={}",
                ns.name()
            ))
            .await?;
        Ok(shell)
    }

    /// Runs `script` with bash from the repository root; returns its stdout, or fails with everything it said.
    async fn run(&self, script: &str) -> Result<String> {
        self.run_with_stdin(script, None).await
    }

    async fn run_with_stdin(&self, script: &str, stdin: Option<&str>) -> Result<String> {
        let mut cmd = tokio::process::Command::new("bash");
        cmd.args(["-euo", "pipefail", "-c", script])
            .current_dir(&self.cwd)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", &self.path)
            .env("NO_COLOR", "1")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting bash")?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            pipe.write_all(input.as_bytes()).await?;
        }
        let out = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
            .await
            .with_context(|| format!("timed out after 300 s running:\n{script}"))??;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "{} running:\n{script}\n--- stdout\n{stdout}\n--- stderr\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }
}

/// Evaluates KEDA's `valueLocation` (a dotted path) on a JSON document.
fn value_at<'a>(doc: &'a Value, location: &str) -> Option<&'a Value> {
    location.split('.').try_fold(doc, |v, key| v.get(key))
}

/// The README's walk-through, in order, against a real operator (worker authentication on, WorkerPool
/// controller on) and real worker pods.
#[tokio::test]
async fn the_readme_story_runs() -> Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("readme").await?;
    let operator = OperatorProcess::start_with_worker_pools(&ns).await?;
    let shell = Shell::new(&ns).await?;
    let blocks = blocks(&readme()?)?;

    for b in &blocks {
        let at = format!("README.md:{}", b.line);
        let result = match b.kind.as_str() {
            "run" => shell.run(&b.body).await.map(drop),
            "apply" => shell
                .run_with_stdin("kubectl apply -f -", Some(&b.body))
                .await
                .map(drop),
            _ => continue,
        };
        if let Err(e) = result {
            bail!(
                "{at}: {e:#}\n--- operator log (tail)\n{}",
                tail(&operator.log(), 40)
            );
        }
    }

    // What the story claims, checked on the objects themselves.
    let flows = ns.api::<FlowRun>();
    for (name, what) in [("expense-42", "approved"), ("hello", "greeted")] {
        let fr = flows.get(name).await?;
        let status = fr.status.context("no status")?;
        ensure!(
            status.phase.map(|p| format!("{p:?}")).as_deref() == Some("Succeeded"),
            "{name} ({what}) is not Succeeded"
        );
    }
    let approved = flows.get("expense-42").await?.status.and_then(|s| s.output);
    ensure!(
        approved == Some(serde_json::json!({"approved": true})),
        "expense-42 output {approved:?}"
    );
    let greeting = flows.get("hello").await?.status.context("status")?.steps["greet"]
        .output
        .clone();
    ensure!(
        greeting == Some(serde_json::json!({"greeting": "world"})),
        "hello's greet output {greeting:?}"
    );

    // KEDA's metrics-api scaler: the README's URL path (in this namespace) and valueLocation on the broker.
    for b in blocks.iter().filter(|b| b.kind == "keda") {
        let doc: Value = serde_saphyr::from_str(&b.body)
            .with_context(|| format!("README.md:{}: the ScaledObject is not YAML", b.line))?;
        let pool = doc["spec"]["scaleTargetRef"]["name"]
            .as_str()
            .context("target")?;
        let meta = &doc["spec"]["triggers"][0]["metadata"];
        let url = meta["url"].as_str().context("url")?;
        let path = url
            .find("/v1/")
            .map(|i| &url[i..])
            .context("the URL has no /v1/ path")?;
        let path = path.replacen("/default/", &format!("/{}/", ns.name()), 1);
        ensure!(
            path == format!("/v1/pools/{}/{pool}/metrics", ns.name()),
            "README.md:{}: the URL does not name the pool's endpoint: {url}",
            b.line
        );
        let (code, body) = operator.broker_get(&path).await?;
        ensure!(code == 200, "GET {path}: {code} {body}");
        let answer: Value = serde_json::from_str(&body)?;
        let location = meta["valueLocation"].as_str().context("valueLocation")?;
        ensure!(
            value_at(&answer, location).is_some_and(Value::is_number),
            "README.md:{}: valueLocation {location} is not a number in {answer}",
            b.line
        );
    }

    // The metric names the README lists are served.
    let metrics = operator.metrics().await?;
    for b in blocks.iter().filter(|b| b.kind == "metrics") {
        for name in b.body.lines().filter_map(|l| l.split_whitespace().next()) {
            // A counter's family is declared without `_total` (OpenMetrics); its samples carry the suffix
            // once something was counted.
            let declared = match name.strip_suffix("_total") {
                Some(family) => format!("# TYPE {family} counter"),
                None => format!("# TYPE {name} "),
            };
            ensure!(
                metrics.contains(&declared),
                "README.md:{}: /metrics does not declare {name}",
                b.line
            );
        }
    }

    drop(operator);
    ns.cleanup().await?;
    Ok(())
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Namespaces a command or values file names (`--namespace X`, `watchNamespaces: [a, b]`).
fn named_namespaces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let words: Vec<&str> = text.split_whitespace().collect();
    for w in words.windows(2) {
        if w[0] == "--namespace" || w[0] == "-n" {
            out.push(w[1].to_owned());
        }
    }
    for line in text.lines() {
        if let Some(list) = line.trim().strip_prefix("watchNamespaces:") {
            out.extend(
                list.trim()
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty()),
            );
        }
    }
    out
}

/// The README's helm and `kubectl apply` commands render and pass the API server's validation
/// (`--dry-run=server`), with the values files the README shows.
#[tokio::test]
async fn readme_install_commands_pass_a_server_dry_run() -> Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("readme-helm").await?;
    let mut shell = Shell::new(&ns).await?;
    // The commands name charts/ and deploy/ relatively and read values files the README writes: run them in
    // a scratch dir that links to the repository's charts/ and deploy/.
    let cwd = ns.scratch_dir().join("readme-install");
    std::fs::create_dir_all(&cwd)?;
    for dir in ["charts", "deploy"] {
        std::os::unix::fs::symlink(repo_root().join(dir), cwd.join(dir))?;
    }
    shell.cwd = cwd.clone();
    let blocks = blocks(&readme()?)?;

    // Server-side dry runs need the namespaces they name; create those that are missing, remove them after.
    let mut wanted: Vec<String> = blocks
        .iter()
        .filter(|b| matches!(b.kind.as_str(), "helm" | "helm-values"))
        .flat_map(|b| named_namespaces(&b.body))
        .collect();
    wanted.extend(named_namespaces(
        &std::fs::read_to_string(repo_root().join("deploy/sluice.yaml")).unwrap_or_default(),
    ));
    for line in std::fs::read_to_string(repo_root().join("deploy/sluice.yaml"))
        .unwrap_or_default()
        .lines()
    {
        if let Some(n) = line.trim().strip_prefix("namespace:") {
            wanted.push(n.trim().trim_matches('"').to_owned());
        }
    }
    wanted.sort();
    wanted.dedup();
    let mut created = Vec::new();
    for name in &wanted {
        let exists = shell
            .run(&format!("kubectl get namespace {name} -o name"))
            .await
            .is_ok();
        if !exists {
            shell
                .run(&format!("kubectl create namespace {name}"))
                .await?;
            created.push(name.clone());
        }
    }

    let mut result = Ok(());
    for b in &blocks {
        let at = format!("README.md:{}", b.line);
        let step = match b.kind.as_str() {
            "helm-values" => std::fs::write(cwd.join(&b.arg), &b.body)
                .map(|_| ())
                .map_err(anyhow::Error::from),
            "helm" | "dry-run-commands" => {
                let mut r = Ok(());
                for cmd in commands(&b.body) {
                    let dry = format!("{cmd} --dry-run=server");
                    if let Err(e) = shell.run(&dry).await {
                        r = Err(e);
                        break;
                    }
                }
                r
            }
            _ => continue,
        };
        if let Err(e) = step {
            result = Err(e.context(at));
            break;
        }
    }
    for name in created {
        let _ = shell
            .run(&format!("kubectl delete namespace {name} --wait=false"))
            .await;
    }
    result?;
    ns.cleanup().await?;
    Ok(())
}

/// The README's HPA, on an operator installed by the chart with the README's `hpa-values.yaml`: the real HPA
/// controller reads `sluice_queue_depth` through the aggregator from the operator pod, scales the README's pool
/// from 1 to at least 4 workers on a queue of 40 steps, and back to 1 once the workers drained it.
#[tokio::test]
async fn the_readmes_hpa_scales_its_pool_on_a_helm_installed_operator() -> Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("readme-hpa").await?;
    let blocks = blocks(&readme()?)?;
    let values = blocks
        .iter()
        .find(|b| b.kind == "helm-values" && b.arg == "hpa-values.yaml")
        .context("README.md has no `helm-values hpa-values.yaml` block")?;
    let mut values: Value = serde_saphyr::from_str(&values.body)
        .with_context(|| format!("README.md:{}: values are not YAML", values.line))?;
    ensure!(
        values["externalMetrics"]["enabled"] == json!(true),
        "the README's HPA values do not turn the external metrics API on: {values}"
    );
    // The aggregator dials the Service's endpoint, which may not be a loopback address: the process kubelet
    // gives this pod a non-loopback address of the machine, where the pod's ports then bind.
    merge_values(
        &mut values,
        &json!({
            "externalMetrics": {"port": free_port()?, "bindAddress": "$(POD_IP)"},
            "health": {"bindAddress": "$(POD_IP)"},
            "podAnnotations": {HOST_POD_IP_ANNOTATION: "host"},
        }),
    );
    let release = HelmRelease::install(&ns, &values).await?;
    let result = hpa_story(&client, &ns, &blocks).await;
    let log = release.log();
    release.uninstall().await?;
    result.with_context(|| format!("operator log (tail):\n{}", tail(&log, 60)))?;
    ns.cleanup().await?;
    Ok(())
}

async fn hpa_story(client: &kube::Client, ns: &TestNamespace, blocks: &[Block]) -> Result<()> {
    let yaml = |kind: &str| -> Result<&Block> {
        blocks
            .iter()
            .find(|b| {
                matches!(b.kind.as_str(), "apply" | "hpa")
                    && b.body.contains(&format!("kind: {kind}\n"))
                    && b.body.contains("name: reports")
            })
            .with_context(|| format!("README.md has no {kind} `reports`"))
    };
    let apply = |body: String| async move {
        kubectl(["apply", "-n", ns.name(), "-f", "-"])
            .stdin(body)
            .ok()
            .await
    };
    apply(yaml("WorkerPool")?.body.clone()).await?;
    let deployments = ns.api::<Deployment>();
    let replicas = |d: Option<&Deployment>| {
        d.and_then(|d| d.spec.as_ref())
            .and_then(|s| s.replicas)
            .unwrap_or(0)
    };
    wait_for(
        &deployments,
        "reports",
        move |d: Option<&Deployment>| replicas(d) == 1,
        Duration::from_secs(60),
        "the README's pool at 1 replica",
    )
    .await?;

    // The leader published its CA: the aggregator reaches the operator pod.
    let services: Api<APIService> = Api::all(client.clone());
    wait_for(
        &services,
        "v1beta1.external.metrics.k8s.io",
        api_service_available,
        Duration::from_secs(90),
        "the chart's external metrics APIService to be Available",
    )
    .await?;

    apply(yaml("HorizontalPodAutoscaler")?.body.clone()).await?;
    let hpas = ns.api::<HorizontalPodAutoscaler>();
    wait_for(
        &hpas,
        "reports",
        hpa_condition_true("ScalingActive"),
        Duration::from_secs(90),
        "the README's HPA to read sluice_queue_depth (ScalingActive True)",
    )
    .await?;

    // 40 steps of two seconds each: one worker leaves the queue long at about 39.
    let steps: Vec<Value> = (0..40)
        .map(|i| json!({"name": format!("s{i}"), "handler": "slow_task", "input": {"ms": 2000}}))
        .collect();
    let flow = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "queue"},
        "spec": {"pool": "reports", "steps": steps}
    });
    apply(flow.to_string()).await?;
    let up = wait_for(
        &deployments,
        "reports",
        move |d: Option<&Deployment>| replicas(d) >= 4,
        Duration::from_secs(90),
        "the HPA to scale the pool to at least 4 on a queue of 40",
    )
    .await?;
    println!(
        "FIGURE README HPA: queue of 40 -> Deployment replicas {}",
        replicas(Some(&up))
    );
    let flows = ns.api::<FlowRun>();
    let done = wait_for(
        &flows,
        "queue",
        |f: Option<&FlowRun>| {
            f.and_then(|f| f.status.as_ref())
                .and_then(|s| s.phase)
                .is_some_and(|p| p.is_terminal())
        },
        Duration::from_secs(240),
        "the 40 steps to finish",
    )
    .await?;
    let phase = done.status.as_ref().and_then(|s| s.phase);
    ensure!(
        phase.map(|p| format!("{p:?}")).as_deref() == Some("Succeeded"),
        "the queue's FlowRun ended {phase:?}"
    );
    wait_for(
        &deployments,
        "reports",
        move |d: Option<&Deployment>| replicas(d) == 1,
        Duration::from_secs(150),
        "the HPA to scale the pool back to 1 after the queue drained",
    )
    .await?;
    Ok(())
}

/// `make demo`, the README's first command, runs the order flow to success (in a namespace of its own, on
/// ports of its own, against this run's cluster), and its operator is stopped afterwards.
#[tokio::test]
async fn make_demo_runs_the_order_flow_to_success() -> Result<()> {
    let client = cluster().await?;
    install_crds(&client).await?;
    build_binaries().await?;
    let kubeconfig = tokio::task::spawn_blocking(kubeconfig_path).await??;
    let suffix = std::process::id();
    let namespace = format!("readme-demo-{suffix}");
    let mut make = tokio::process::Command::new("make");
    for name in cargo_test_env() {
        make.env_remove(name);
    }
    let out = make
        .args(["-s", "demo"])
        .current_dir(repo_root())
        .env("SLUICE_DEMO_NAMESPACE", &namespace)
        .env("SLUICE_DEMO_BROKER_PORT", free_port()?.to_string())
        .env("SLUICE_DEMO_HEALTH_PORT", free_port()?.to_string())
        .env("SLUICE_CLUSTER_DIR", cluster_dir())
        .env("SLUICE_KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), out)
        .await
        .context("make demo did not finish within 600 s")??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();

    // Stop the demo's operator whatever happened (its pid file is in the cluster state dir).
    let pid_file = cluster_dir().join("operator.pid");
    if let Ok(pid) = std::fs::read_to_string(&pid_file)
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = std::fs::remove_file(&pid_file);
    }
    let _ = sluice_e2e::kubectl(["delete", "namespace", &namespace, "--wait=false"])
        .output()
        .await;

    ensure!(
        out.status.success(),
        "make demo failed ({}):\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.contains("phase:  Succeeded"),
        "make demo did not show a Succeeded flow:\n{stdout}"
    );
    Ok(())
}
