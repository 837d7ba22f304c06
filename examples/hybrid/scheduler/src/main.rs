//! `sluice-example-hybrid-scheduler`: signs a user up by starting a run of the signup flow
//! (`sluice-example-flows`) and printing its typed output as JSON.
//!
//! Runs against the cluster of your kubeconfig, in its namespace (or `--namespace` / `SLUICE_NAMESPACE`),
//! where a Sluice operator runs and `sluice-example-hybrid-worker` serves the pool (`--pool`, default
//! `signup`):
//!
//! ```sh
//! cargo run -p sluice-example-hybrid-scheduler -- --email ada@example.org --name Ada --plan pro
//! ```
//!
//! One run per address: signing the same address up again prints the first run's result (no second run, no
//! second account). Exit codes: 0 signed up, 3 the run failed (the failed steps are printed), 4 it was
//! cancelled, 1 anything else (the cluster unreachable, the wait timed out, ...).
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sluice_client::{Client, Error, RunFailure, Start};
use sluice_example_flows::signup::{self, Plan, SignupInput, SignupOutput};

/// Sign a user up through the signup flow and print the result as JSON.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The user's email address.
    #[arg(long)]
    email: String,
    /// The name to greet the user with.
    #[arg(long)]
    name: String,
    /// The plan: free or pro.
    #[arg(long, default_value_t = Plan::Free)]
    plan: Plan,
    /// Namespace of the run (default: the kubeconfig's).
    #[arg(long, env = "SLUICE_NAMESPACE")]
    namespace: Option<String>,
    /// The WorkerPool whose workers serve the flow's handlers.
    #[arg(long, env = "SLUICE_SIGNUP_POOL", default_value = signup::DEFAULT_POOL)]
    pool: String,
    /// How long to wait for the run to end, in seconds. The run goes on after a timeout; waiting again
    /// (running the same command) picks it up.
    #[arg(long, default_value_t = 120)]
    timeout_seconds: u64,
}

async fn sign_up(client: &Client, cli: &Cli) -> Result<SignupOutput, Error> {
    let input = SignupInput {
        email: cli.email.clone(),
        name: cli.name.clone(),
        plan: cli.plan,
    };
    let name = signup::run_name(&input.email);
    let run = client
        .start(Start::inline(name, signup::signup_flow(&cli.pool)).input(&input)?)
        .await?;
    tracing::info!(
        run = run.name(),
        namespace = run.namespace(),
        created = run.created(),
        "waiting for the signup"
    );
    run.wait(Duration::from_secs(cli.timeout_seconds)).await
}

fn print_failure(failure: &RunFailure) {
    eprintln!("signup failed: {failure}");
    for step in &failure.failed_steps {
        match &step.error {
            Some(error) => eprintln!(
                "  step {} (attempt {}): {}: {}",
                step.name, step.attempts, error.type_, error.message
            ),
            None => eprintln!("  step {} (attempt {})", step.name, step.attempts),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    init_tracing();
    let cli = Cli::parse();
    let mut client = Client::try_default()
        .await
        .context("connecting to the cluster")?;
    if let Some(namespace) = &cli.namespace {
        client = client.namespaced(namespace);
    }
    match sign_up(&client, &cli).await {
        Ok(output) => {
            println!("{}", serde_json::to_string_pretty(&output)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::Failed(failure)) => {
            print_failure(&failure);
            Ok(ExitCode::from(3))
        }
        Err(cancelled @ Error::Cancelled { .. }) => {
            eprintln!("signup cancelled: {cancelled}");
            Ok(ExitCode::from(4))
        }
        Err(e) => Err(e).context("signing up"),
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn plan_and_pool_default_and_parse() {
        let cli = Cli::try_parse_from(["scheduler", "--email", "a@b.c", "--name", "A"]).unwrap();
        assert_eq!(cli.plan, Plan::Free);
        assert_eq!(cli.timeout_seconds, 120);
        let cli = Cli::try_parse_from([
            "scheduler",
            "--email",
            "a@b.c",
            "--name",
            "A",
            "--plan",
            "pro",
            "--pool",
            "p",
        ])
        .unwrap();
        assert_eq!((cli.plan, cli.pool.as_str()), (Plan::Pro, "p"));
        assert!(
            Cli::try_parse_from([
                "scheduler",
                "--email",
                "a@b.c",
                "--name",
                "A",
                "--plan",
                "gold"
            ])
            .is_err()
        );
    }
}
