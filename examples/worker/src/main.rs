//! `sluice-example-worker`: serves every handler of the example flows in `examples/` on the Rust SDK.
//!
//! Configured from the environment like any SDK worker (`SLUICE_BROKER_URL`, `SLUICE_POOL`, `SLUICE_TOKEN_PATH`,
//! `SLUICE_CONCURRENCY`, `POD_NAME`, …). With `SLUICE_EXAMPLE_SIDE_EFFECTS=<file>` every handler invocation is
//! appended to that file as a JSON line (namespace, flowrun, step, instance, attempt, handler, worker, pid).
//! `SLUICE_EXAMPLE_CRASH_FILE=<file>` turns on test-only fault injection (see [`crash`]).
#![forbid(unsafe_code)]

mod crash;
mod handlers;
mod side_effects;
#[cfg(test)]
mod test_context;

use std::future::Future;

use anyhow::Context as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_worker::{StepContext, StepError, Worker};

use crate::side_effects::SideEffectLog;

/// Registers `function` as handler `name`, logging each invocation to `log` before it runs.
fn register<F, Fut, I, O>(worker: Worker, log: &SideEffectLog, name: &str, function: F) -> Worker
where
    F: Fn(StepContext, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, StepError>> + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    O: Serialize + 'static,
{
    let log = log.clone();
    worker.handler(name, move |ctx: StepContext, input: I| {
        let log = log.clone();
        let run = function(ctx.clone(), input);
        async move {
            log.record(&ctx).await;
            run.await
        }
    })
}

/// Every handler of the examples.
fn worker(worker: Worker, log: &SideEffectLog) -> Worker {
    use handlers::*;
    let worker = register(worker, log, "charge_payment", charge_payment);
    let worker = register(worker, log, "reserve_inventory", reserve_inventory);
    let worker = register(worker, log, "ship_order", ship_order);
    let worker = register(worker, log, "record_expense", record_expense);
    let worker = register(worker, log, "pay_expense", pay_expense);
    let worker = register(worker, log, "notify_employee", notify_employee);
    let worker = register(worker, log, "count_words", count_words);
    let worker = register(worker, log, "sum_counts", sum_counts);
    let worker = register(worker, log, "resize_image", resize_image);
    let worker = register(worker, log, "send_newsletter", send_newsletter);
    let worker = register(worker, log, "export_report", export_report);
    let worker = register(worker, log, "import_records", import_records);
    let worker = register(worker, log, "book_items", book_items);
    let worker = register(worker, log, "refund_payment", refund_payment);
    let worker = register(worker, log, "release_booking", release_booking);
    register(worker, log, "slow_task", slow_task)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let log = SideEffectLog::from_env();
    let mut worker = worker(Worker::from_env().context("configuring the worker")?, &log);
    if let Some(file) = crash::crash_file() {
        crash::exit_if_crashed_before(&file);
        let file = std::sync::Arc::new(file);
        worker = register(worker, &log, crash::CRASH_HANDLER, move |ctx, input| {
            let file = file.clone();
            async move { crash::crash_on_first_attempt(&file, ctx, input).await }
        });
    }
    tracing::info!(
        pool = %worker.config().pool,
        worker = %worker.config().worker_name,
        concurrency = worker.config().concurrency,
        handlers = ?worker.handler_names(),
        side_effects = ?log.path(),
        "serving the example handlers"
    );
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

    /// Every handler the example flows name is served (the flows are read from `examples/*.yaml`).
    #[test]
    fn serves_every_handler_of_the_examples() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let worker = super::worker(
            sluice_worker::Worker::new(Config::new("http://127.0.0.1:1", "p", "w")),
            &super::SideEffectLog::default(),
        );
        let served = worker.handler_names();
        let mut named = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                for line in text.lines() {
                    if let Some(name) = line.trim().strip_prefix("handler:") {
                        named.push(name.trim().to_owned());
                    }
                }
            }
        }
        assert!(named.len() >= 12, "{named:?}");
        for name in named {
            assert!(served.contains(&name), "{name} is not served: {served:?}");
        }
    }
}
