//! `sluice-example-hybrid-worker`: serves the handlers of the signup flow (`sluice-example-flows`) on the
//! Rust SDK.
//!
//! Configured from the environment like any SDK worker: `SLUICE_BROKER_URL`, `SLUICE_POOL` (`namespace/pool`),
//! `SLUICE_TOKEN_PATH`, `SLUICE_CONCURRENCY`, `POD_NAME`, …
#![forbid(unsafe_code)]

use anyhow::Context as _;
use sluice_example_flows::signup::{self, SignupError};
use sluice_worker::{StepContext, StepError, Worker};

/// A signup error is a fact about the input: fail the step at once, with the error's type.
fn step_error(error: SignupError) -> StepError {
    StepError::fatal(error.error_type(), error.to_string())
}

/// The signup flow's handlers, each the flows crate's function behind the SDK's handler signature.
fn serve_signup(worker: Worker) -> Worker {
    worker
        .handler(signup::VALIDATE_EMAIL, |_: StepContext, input| async move {
            signup::validate_email(input).await.map_err(step_error)
        })
        .handler(signup::CREATE_ACCOUNT, |_: StepContext, input| async move {
            signup::create_account(input).await.map_err(step_error)
        })
        .handler(signup::SEND_WELCOME, |_: StepContext, input| async move {
            signup::send_welcome(input).await.map_err(step_error)
        })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let worker = serve_signup(Worker::from_env().context("configuring the worker")?);
    tracing::info!(
        pool = %worker.config().pool,
        worker = %worker.config().worker_name,
        handlers = ?worker.handler_names(),
        "serving the signup flow"
    );
    // Until SIGTERM, then drains the steps in flight.
    worker.run().await.context("worker failed")?;
    Ok(())
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
    use sluice_worker::Config;

    #[test]
    fn serves_every_handler_of_the_signup_flow() {
        let worker = super::serve_signup(sluice_worker::Worker::new(Config::new(
            "http://127.0.0.1:1",
            "ns/signup",
            "w",
        )));
        let mut served = worker.handler_names();
        served.sort();
        let mut named = sluice_example_flows::signup::HANDLERS
            .map(str::to_owned)
            .to_vec();
        named.sort();
        assert_eq!(served, named);
    }

    #[test]
    fn signup_errors_fail_the_step_for_good_with_their_type() {
        let error = super::step_error(sluice_example_flows::signup::SignupError::InvalidEmail(
            "ada".into(),
        ));
        assert!(!error.is_retryable());
        assert_eq!(error.error_type(), "invalid_email");
        assert!(error.message().contains("\"ada\""), "{}", error.message());
    }
}
