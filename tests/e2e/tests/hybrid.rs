//! The hybrid example (`examples/hybrid/`) on the real cluster: the operator process trusts workers, the
//! example's worker binary serves the signup flow's handlers on pool `pool`, and the example's scheduler
//! binary signs users up. Its printed output is the typed output of the flow; signing the same address up
//! again prints the same result from the same run (no second FlowRun); a bad address makes it exit 3 with the
//! failed step and its error type.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use kube::Api;
use kube::api::ListParams;
use sluice_e2e::{
    OperatorProcess, TestNamespace, cargo_test_env, cluster, install_crds, kubeconfig_path,
    repo_root,
};
use sluice_example_flows::signup::{self, Plan, SignupOutput};
use sluice_operator::api::{FlowPhase, FlowRun};
use tokio::process::{Child, Command};

const WORKER: &str = "sluice-example-hybrid-worker";
const SCHEDULER: &str = "sluice-example-hybrid-scheduler";
/// Bound of one scheduler process (its own wait is bounded by `--timeout-seconds`, below this).
const SCHEDULER_BOUND: Duration = Duration::from_secs(150);

/// Builds the example's two binaries (outside this test's cargo environment, like the harness builds the
/// operator) and returns the directory holding them.
async fn build_example() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-q", "-p", WORKER, "-p", SCHEDULER]);
    for name in cargo_test_env() {
        build.env_remove(name);
    }
    let built = build
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .await
        .context("running cargo build")?;
    ensure!(
        built.status.success(),
        "cargo build -p {WORKER} -p {SCHEDULER}: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("debug"))
}

fn start_worker(bin: &Path, broker_url: &str, pool: &str, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log)?;
    Command::new(bin.join(WORKER))
        .env("SLUICE_BROKER_URL", broker_url)
        .env("SLUICE_POOL", pool)
        .env("SLUICE_WORKER_NAME", "hybrid-worker-0")
        // The operator trusts workers: no token.
        .env_remove("SLUICE_TOKEN_PATH")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()
        .context("starting the hybrid worker")
}

/// Runs the scheduler against the test's namespace and pool.
async fn schedule(bin: &Path, ns: &str, args: &[&str]) -> Result<Output> {
    let run = Command::new(bin.join(SCHEDULER))
        .args(args)
        .args(["--pool", "pool", "--timeout-seconds", "120"])
        .env("KUBECONFIG", kubeconfig_path()?)
        .env("SLUICE_NAMESPACE", ns)
        .env_remove("SLUICE_SIGNUP_POOL")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(SCHEDULER_BOUND, run)
        .await
        .with_context(|| format!("the scheduler {args:?} did not exit within {SCHEDULER_BOUND:?}"))?
        .context("running the scheduler")
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn the_scheduler_signs_up_through_the_hybrid_worker_once_per_address_and_reports_failures()
-> Result<()> {
    let bin = build_example().await?;
    let client = cluster().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::new("hybrid").await?;
    let api: Api<FlowRun> = ns.api();
    let operator = OperatorProcess::start_trusting_workers(&ns).await?;
    let worker_log = ns.scratch_dir().join("hybrid-worker.log");
    let mut worker = start_worker(
        &bin,
        &operator.broker_url(),
        &format!("{}/pool", ns.name()),
        &worker_log,
    )?;

    let email = " Ada@Example.org";
    let args = ["--email", email, "--name", "Ada", "--plan", "pro"];
    let first = schedule(&bin, ns.name(), &args).await?;
    ensure!(
        first.status.success(),
        "the first signup failed: {}\nworker log:\n{}",
        describe(&first),
        std::fs::read_to_string(&worker_log).unwrap_or_default()
    );
    let output: SignupOutput = serde_json::from_slice(&first.stdout).with_context(|| {
        format!(
            "the scheduler's output is not a SignupOutput: {}",
            describe(&first)
        )
    })?;
    let expected_account = signup::account_id("ada@example.org");
    ensure!(
        output
            == SignupOutput {
                account_id: expected_account.clone(),
                email: "ada@example.org".into(),
                plan: Plan::Pro,
                welcome_message_id: format!("welcome-{expected_account}"),
            },
        "unexpected output {output:?}"
    );

    // The same address again: the same run, its recorded result, no second FlowRun.
    let second = schedule(&bin, ns.name(), &args).await?;
    ensure!(
        second.status.success(),
        "the second signup failed: {}",
        describe(&second)
    );
    ensure!(
        second.stdout == first.stdout,
        "the second signup printed another result: {}",
        describe(&second)
    );
    let runs = api.list(&ListParams::default()).await?.items;
    let names: Vec<String> = runs
        .iter()
        .filter_map(|r| r.metadata.name.clone())
        .collect();
    ensure!(
        names == [signup::run_name(email)],
        "expected the one run {}, found {names:?}",
        signup::run_name(email)
    );
    ensure!(
        runs[0].status.as_ref().and_then(|s| s.phase) == Some(FlowPhase::Succeeded),
        "the run is not Succeeded: {:?}",
        runs[0].status
    );

    // A bad address: the run fails at `validate`, and the scheduler says so with the error's type.
    let failed = schedule(
        &bin,
        ns.name(),
        &["--email", "ada-at-example.org", "--name", "Ada"],
    )
    .await?;
    ensure!(
        failed.status.code() == Some(3),
        "a failed signup exits 3: {}",
        describe(&failed)
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    ensure!(
        stderr.contains("signup failed")
            && stderr.contains("step validate (attempt 1): invalid_email"),
        "the failure names the step and its error type: {}",
        describe(&failed)
    );
    ensure!(
        failed.stdout.is_empty(),
        "a failed signup prints no output: {}",
        describe(&failed)
    );

    worker.start_kill()?;
    worker.wait().await?;
    operator.stop().await?;
    ns.cleanup().await?;
    Ok(())
}
