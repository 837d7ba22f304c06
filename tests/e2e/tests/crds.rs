//! The generated CRDs on the real API server: `crds/` installs (the server's CEL cost estimator accepts every
//! rule) without a warning, `kubectl apply` refuses invalid FlowRuns and WorkerPools with the rules' messages,
//! every example is accepted, and `kubectl explain` shows descriptions as paragraphs. Objects are applied with a
//! server-side dry run, so nothing runs.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use sluice_e2e::{TestNamespace, kubectl, repo_root};

/// Applies `crds/` as a user would (`kubectl apply --server-side`) and waits until every CRD is served.
async fn install_crds() -> Result<()> {
    let dir = repo_root().join("crds");
    kubectl([
        "apply".into(),
        "--server-side".into(),
        "--force-conflicts".into(),
        "-f".into(),
        dir.into_os_string(),
    ])
    .ok()
    .await
    .context("installing crds/ (a rule the API server refuses shows here)")?;
    for crd in [
        "flowruns.sluice.dev",
        "workerpools.sluice.dev",
        "cronflows.sluice.dev",
    ] {
        kubectl([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{crd}")[..],
        ])
        .ok()
        .await?;
    }
    // Discovery of the new resources can lag a moment behind Established.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = kubectl(["api-resources", "--api-group=sluice.dev", "-o", "name"])
            .output()
            .await?;
        let names = String::from_utf8_lossy(&out.stdout);
        if names.contains("flowruns")
            && names.contains("workerpools")
            && names.contains("cronflows")
        {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "sluice.dev resources not in discovery after 30s: {names}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `kubectl apply --dry-run=server` of a manifest; Ok(stdout) or Err(stderr).
async fn dry_run(ns: &str, manifest: &str) -> Result<Result<String, String>> {
    let out = kubectl(["apply", "--dry-run=server", "-n", ns, "-f", "-"])
        .stdin(manifest)
        .output()
        .await?;
    Ok(if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

fn flowrun(spec: &str) -> String {
    format!("apiVersion: sluice.dev/v1alpha1\nkind: FlowRun\nmetadata:\n  name: bad\nspec:\n{spec}")
}

fn workerpool(spec: &str) -> String {
    format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: WorkerPool\nmetadata:\n  name: bad\nspec:\n  template:\n    spec:\n      \
         containers: [{{name: w, image: sluice/worker-example:dev}}]\n{spec}"
    )
}

#[tokio::test]
async fn the_api_server_refuses_invalid_objects_with_the_rules_messages() -> Result<()> {
    install_crds().await?;
    let ns = TestNamespace::new("crds").await?;
    let cases: Vec<(&str, String, &str)> = vec![
        // Duplicate step names, unknown dependsOn entries, what each step does, a step in its own dependsOn and
        // handler steps without a pool are the chart's step-graph policy's to refuse (tests/e2e/bad-input), with
        // messages naming them.
        (
            "a step name that is not a DNS label",
            flowrun("  steps:\n  - {name: Cooling_Off, sleep: 1s}\n"),
            "spec.steps[0].name: Invalid value: \"Cooling_Off\": step name must be a DNS label",
        ),
        (
            "a step name over 63 characters",
            flowrun(&format!(
                "  steps:\n  - {{name: {}, sleep: 1s}}\n",
                "a".repeat(64)
            )),
            "spec.steps[0].name: Too long: may not be more than 63 bytes",
        ),
        (
            "21 dependsOn entries",
            flowrun(&format!(
                "  pool: p\n  steps:\n  - {{name: a, handler: h, dependsOn: [{}]}}\n",
                vec!["b"; 21].join(", ")
            )),
            "spec.steps[0].dependsOn: Too many: 21: must have at most 20 items",
        ),
        (
            "an empty handler",
            flowrun("  pool: p\n  steps:\n  - {name: a, handler: \"\"}\n"),
            "handler must name a handler registered by the pool's workers",
        ),
        (
            "a zero timeout",
            flowrun("  pool: p\n  steps:\n  - {name: a, handler: h, timeout: 0s}\n"),
            "spec.steps[0].timeout: Invalid value: \"0s\": must be a positive duration such as 30s, 10m or 1h30m, not zero",
        ),
        (
            "zero maxAttempts",
            flowrun("  pool: p\n  steps:\n  - {name: a, handler: h, retry: {maxAttempts: 0}}\n"),
            "spec.steps[0].retry.maxAttempts: Invalid value: 0: spec.steps[0].retry.maxAttempts in body should be greater than or equal to 1",
        ),
        (
            "a negative ttlSecondsAfterFinished",
            flowrun("  steps:\n  - {name: a, sleep: 1s}\n  ttlSecondsAfterFinished: -1\n"),
            "spec.ttlSecondsAfterFinished: Invalid value: -1: spec.ttlSecondsAfterFinished in body should be greater than or equal to 0",
        ),
        (
            "minReplicas above maxReplicas",
            workerpool("  scaling: {minReplicas: 5, maxReplicas: 2}\n"),
            "spec.scaling.minReplicas: Invalid value: scaling.minReplicas must not exceed scaling.maxReplicas (default 10)",
        ),
        (
            "Manual mode without replicas",
            workerpool("  scaling: {mode: Manual}\n"),
            "spec.replicas: Required value: spec.replicas is required with scaling.mode Manual",
        ),
        (
            "QueueDepth settings in External mode",
            workerpool("  scaling: {mode: External, maxReplicas: 4}\n"),
            "spec.scaling: Forbidden: scaling.minReplicas, maxReplicas, targetStepsPerWorker and scaleDownDelay apply only to mode QueueDepth",
        ),
    ];
    let mut failures = vec![];
    for (what, manifest, expected) in &cases {
        match dry_run(ns.name(), manifest).await? {
            Ok(out) => failures.push(format!("{what}: accepted ({})", out.trim())),
            Err(stderr) if stderr.contains(expected) => {}
            Err(stderr) => failures.push(format!(
                "{what}: refused, but not with {expected:?}: {}",
                stderr.trim()
            )),
        }
    }
    ns.cleanup().await?;
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn the_api_server_accepts_every_example() -> Result<()> {
    install_crds().await?;
    let ns = TestNamespace::new("crd-examples").await?;
    let dir = repo_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    ensure!(
        files.len() >= 5,
        "examples/ holds the five promised manifests"
    );
    let mut failures = vec![];
    for file in &files {
        let manifest = std::fs::read_to_string(file)?;
        if let Err(stderr) = dry_run(ns.name(), &manifest).await? {
            failures.push(format!("{}: {}", file.display(), stderr.trim()));
        }
    }
    ns.cleanup().await?;
    ensure!(
        failures.is_empty(),
        "examples refused:\n{}",
        failures.join("\n")
    );
    Ok(())
}

/// The largest FlowRun the list rules can meet (200 steps with 63-character names, each depending on the 20
/// steps before it) stays within the API server's runtime cost limit per rule: it is accepted, not refused
/// with "actual cost limit exceeded".
#[tokio::test]
async fn the_largest_flow_the_schema_allows_fits_the_runtime_cost_budget() -> Result<()> {
    install_crds().await?;
    let ns = TestNamespace::new("crd-max").await?;
    let name = |i: usize| format!("step-{i:03}-{}", "x".repeat(54));
    let steps: Vec<serde_json::Value> = (0..200usize)
        .map(|i| {
            let deps: Vec<String> = (i.saturating_sub(20)..i).map(name).collect();
            serde_json::json!({"name": name(i), "handler": "h", "dependsOn": deps})
        })
        .collect();
    let manifest = serde_json::json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "FlowRun",
        "metadata": {"name": "maximal"},
        "spec": {"pool": "p", "steps": steps},
    });
    // Server-side apply: the manifest is larger than client-side apply's last-applied annotation allows.
    let out = kubectl([
        "apply",
        "--server-side",
        "--dry-run=server",
        "-n",
        ns.name(),
        "-f",
        "-",
    ])
    .stdin(manifest.to_string())
    .output()
    .await?;
    ns.cleanup().await?;
    ensure!(
        out.status.success(),
        "the maximal FlowRun was refused: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// stdout and stderr of a kubectl run, for messages.
fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl apply` of `crds/` prints no warning, such as the API server's `unrecognized format "uint32"` for a
/// schema format Kubernetes does not know. An update warns only about formats the installed CRD does not have
/// already, so each CRD is also created afresh under a group of its own (server-side dry runs: nothing is kept).
#[tokio::test]
async fn applying_the_crds_prints_no_warning() -> Result<()> {
    install_crds().await?;
    let dir = repo_root().join("crds");
    let out = kubectl([
        "apply".into(),
        "--server-side".into(),
        "--force-conflicts".into(),
        "--dry-run=server".into(),
        "-f".into(),
        dir.clone().into_os_string(),
    ])
    .output()
    .await?;
    ensure!(
        out.status.success() && !printed(&out).contains("Warning"),
        "kubectl apply --server-side --dry-run=server -f crds/: {}",
        printed(&out)
    );

    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    let generated = sluice_operator::crds::files()?.len();
    ensure!(
        files.len() == generated,
        "crds/ holds the {generated} CRDs the types generate: {files:?}"
    );
    for file in &files {
        let mut crd: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(file)?)
            .with_context(|| format!("parsing {}", file.display()))?;
        let group = "warnings-check.sluice.dev";
        let plural = crd["spec"]["names"]["plural"]
            .as_str()
            .context("spec.names.plural")?
            .to_owned();
        crd["spec"]["group"] = group.into();
        crd["metadata"]["name"] = format!("{plural}.{group}").into();
        let out = kubectl(["create", "--dry-run=server", "-f", "-"])
            .stdin(crd.to_string())
            .output()
            .await?;
        ensure!(
            out.status.success() && !printed(&out).contains("Warning"),
            "creating {} afresh: {}",
            file.display(),
            printed(&out)
        );
    }
    Ok(())
}

/// The description of a field of an installed CRD, at a path such as `spec.template`.
async fn installed_description(crd: &str, path: &str) -> Result<String> {
    let json = kubectl(["get", "crd", crd, "-o", "json"]).ok().await?;
    let crd_json: serde_json::Value = serde_json::from_str(&json)?;
    let mut node = &crd_json["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    for name in path.split('.') {
        node = &node["properties"][name];
    }
    node["description"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no description at {path} of {crd}"))
}

/// Width at which `kubectl explain` word-wraps a field's description (its plaintext template: `wrap 76`).
const EXPLAIN_WIDTH: usize = 76;

/// A line break of `kubectl explain` output that its word wrap did not make: a line and the first word of the
/// next would have fit in [`EXPLAIN_WIDTH`] columns together, so the break comes from the description itself.
fn unforced_break(lines: &[String]) -> Option<(String, String)> {
    lines.windows(2).find_map(|pair| {
        let next_word = pair[1].split_whitespace().next().unwrap_or_default();
        (pair[0].chars().count() + 1 + next_word.chars().count() <= EXPLAIN_WIDTH)
            .then(|| (pair[0].clone(), pair[1].clone()))
    })
}

/// `kubectl explain` shows a description as running text. A doc comment wrapped over several source lines is
/// one paragraph in the CRD (no single line break in it), so kubectl's own word wrap is the only reason a line
/// of its output ends.
#[tokio::test]
async fn kubectl_explain_shows_descriptions_as_paragraphs() -> Result<()> {
    install_crds().await?;
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    // Fields whose doc comments span two or three source lines.
    for (crd, resource, path) in [
        ("workerpools.sluice.dev", "workerpools", "spec.template"),
        (
            "flowruns.sluice.dev",
            "flowruns",
            "spec.defaults.maxOutputBytes",
        ),
        (
            "flowruns.sluice.dev",
            "flowruns",
            "spec.ttlSecondsAfterFinished",
        ),
        (
            "workerpools.sluice.dev",
            "workerpools",
            "status.scaling.lastScaleReason",
        ),
    ] {
        let description = installed_description(crd, path).await?;
        ensure!(
            !description.contains('\n'),
            "{crd} {path}: the description keeps the line breaks of its doc comment: {description:?}"
        );
        // The DESCRIPTION block of `kubectl explain`, once the API server's OpenAPI document shows this
        // description (compared with whitespace normalised) and kubectl wrapped it only where it had to.
        let field = format!("{resource}.{path}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = kubectl(["explain", &field[..]]).output().await?;
            let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .skip_while(|l| l.trim() != "DESCRIPTION:")
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_owned())
                .collect();
            let shown = words(&lines.join(" ")) == words(&description);
            let unforced = unforced_break(&lines);
            if shown && unforced.is_none() && lines.len() > 1 {
                break;
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "kubectl explain {field} within 30s: {}\n{}",
                match unforced {
                    Some((line, next)) if shown => format!(
                        "a line ends where the next word still fits in {EXPLAIN_WIDTH} columns, so the \
                         description breaks the line there: {line:?} / {next:?}"
                    ),
                    _ => format!("not the CRD's description {description:?}"),
                },
                printed(&out)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    Ok(())
}
