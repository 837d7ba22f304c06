//! `sluice-worker`: the generic exec worker. Each `--handler NAME=COMMAND` serves the tasks of handler NAME by
//! running COMMAND (see `sluice_worker::exec` for the contract: input on stdin, output on stdout, exit code).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use sluice_worker::exec::{DEFAULT_SHELL, ExecHandler, parse_handler_spec};
use sluice_worker::wire::env;
use sluice_worker::{Config, StepContext, Worker};

/// Serve a Sluice WorkerPool by running one shell command per step.
///
/// Each step's input JSON is written to COMMAND's stdin; its stdout (JSON, or text as a JSON string) is the
/// step's output; exit 0 succeeds, any other exit code fails the attempt (retryable unless the step's retry
/// policy lists the code in nonRetryableExitCodes) with the tail of stderr as the message. COMMAND runs as
/// `sh -c COMMAND` with SLUICE_FLOWRUN, SLUICE_FLOWRUN_NAMESPACE, SLUICE_STEP, SLUICE_ATTEMPT, SLUICE_TASK_ID
/// (and SLUICE_INSTANCE for forEach steps) in its environment.
#[derive(Debug, Parser)]
#[command(name = "sluice-worker", version)]
struct Args {
    /// A handler: NAME=COMMAND (repeatable), e.g. --handler 'resize=convert - -resize 50% png:-'.
    #[arg(long = "handler", value_name = "NAME=COMMAND", required = true, value_parser = parse_handler_spec)]
    handlers: Vec<(String, String)>,
    /// Base URL of the broker.
    #[arg(long, env = env::BROKER_URL)]
    broker_url: String,
    /// The WorkerPool served.
    #[arg(long, env = env::POOL)]
    pool: String,
    /// File with the projected service-account token (re-read for every request).
    #[arg(long, env = env::TOKEN_PATH)]
    token_path: Option<PathBuf>,
    /// Namespace of the pool, sent with claims [default: $POD_NAMESPACE]. Brokers that authenticate workers
    /// take it from the token instead.
    #[arg(long, env = env::POD_NAMESPACE)]
    namespace: Option<String>,
    /// This worker's name [default: $POD_NAME, else the host name].
    #[arg(long, env = env::WORKER_NAME)]
    worker_name: Option<String>,
    /// Steps run at once.
    #[arg(long, env = env::CONCURRENCY, default_value_t = 1)]
    concurrency: usize,
    /// Seconds in-flight steps may take after SIGTERM before they are failed as retryable.
    #[arg(long, env = env::SHUTDOWN_GRACE_SECONDS, default_value_t = 25)]
    shutdown_grace_seconds: u64,
    /// Seconds between SIGTERM and SIGKILL when a running command is cancelled.
    #[arg(long, default_value_t = 5)]
    kill_grace_seconds: u64,
    /// The shell that runs COMMAND (as SHELL -c COMMAND).
    #[arg(long, default_value = DEFAULT_SHELL)]
    shell: PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SLUICE_LOG_JSON")]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_json);

    let worker_name = args
        .worker_name
        .clone()
        .unwrap_or_else(Config::default_worker_name);
    let mut config = Config::new(&args.broker_url, &args.pool, worker_name);
    config.token_path = args.token_path.clone();
    config.namespace = args.namespace.clone();
    config.concurrency = args.concurrency;
    config.shutdown_grace = Duration::from_secs(args.shutdown_grace_seconds);
    config.validate().context("invalid configuration")?;

    let mut worker = Worker::new(config);
    for (name, command) in args.handlers {
        let handler = Arc::new(
            ExecHandler::new(command)
                .with_shell(args.shell.clone())
                .with_kill_grace(Duration::from_secs(args.kill_grace_seconds)),
        );
        worker = worker.handler(name, move |ctx: StepContext, input: serde_json::Value| {
            let handler = Arc::clone(&handler);
            async move { handler.run(ctx, input).await }
        });
    }
    worker.run().await.context("worker failed")?;
    Ok(())
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
