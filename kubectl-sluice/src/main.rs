//! The `kubectl-sluice` binary: kubectl runs it for `kubectl sluice ...`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use kubectl_sluice::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match kubectl_sluice::cmd::run(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::from(1)
        }
    }
}
