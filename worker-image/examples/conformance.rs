//! The Rust side of the SDK conformance suite (`tests/e2e/tests/conformance.rs`): the handlers every Sluice
//! SDK's conformance worker serves with the same behaviour. `tests/e2e/conformance/worker.py` is the Python
//! side; keep the two in step.
//!
//! Configured from the usual worker variables (`SLUICE_BROKER_URL`, `SLUICE_POOL`, `SLUICE_WORKER_NAME`,
//! `SLUICE_CONCURRENCY`, `SLUICE_SHUTDOWN_GRACE_SECONDS`); `CONFORMANCE_LOG` names a file the handlers append
//! JSON lines to (`{"handler", "event", "run", "attempt", "reason", "ms"}`), which the suite reads.
//!
//! * `echo` — returns `{"input": <input>, "attempt": n, "step": ..., "flowRun": ...}`.
//! * `typed` — input `{"orderId": string, "amount": number}`, returns `{"orderId", "doubled": 2 × amount}`;
//!   any other input is the SDK's `InvalidInput`.
//! * `sleep` — input `{"ms": n}`: logs `start`, sleeps `ms` (returning the cancellation's error if cancelled,
//!   logged as `cancelled`), logs `end`, returns `{"slept": ms}`.
//! * `flaky` — input `{"failUntil": k}`: attempts before `k` fail retryably with type `Flaky`; then returns
//!   `{"attempt": n}`.
//! * `fatal` — fails fatally with type `CardDeclined`, message `over the limit`.
//! * `block` — input `{"returnFromAttempt": k}`: attempts from `k` on return `{"attempt": n}` at once; earlier
//!   ones log `start`, wait for the context's cancellation (at most 60 s), log `cancelled` with the reason
//!   (`Requested`, `Fenced`, ...) and return the cancellation's error.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Value, json};
use sluice_worker::{StepContext, StepError, Worker};

fn log_event(ctx: &StepContext, handler: &str, event: &str, reason: Option<String>) {
    let Ok(path) = std::env::var("CONFORMANCE_LOG") else {
        return;
    };
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let line = json!({
        "handler": handler, "event": event, "run": ctx.flow_run_name(), "attempt": ctx.attempt(),
        "reason": reason, "ms": ms,
    });
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(file, "{line}");
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    order_id: String,
    amount: f64,
}

fn reason_of(ctx: &StepContext) -> Option<String> {
    ctx.cancel_reason().map(|r| format!("{r:?}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sluice_worker=debug".into()),
        )
        .init();
    let worker = Worker::from_env()?
        .handler("echo", |ctx: StepContext, input: Value| async move {
            Ok::<_, StepError>(json!({
                "input": input, "attempt": ctx.attempt(), "step": ctx.step(), "flowRun": ctx.flow_run_name(),
            }))
        })
        .handler("typed", |_ctx: StepContext, order: Order| async move {
            Ok::<_, StepError>(json!({"orderId": order.order_id, "doubled": order.amount * 2.0}))
        })
        .handler("sleep", |ctx: StepContext, input: Value| async move {
            let ms = input["ms"].as_u64().unwrap_or(0);
            log_event(&ctx, "sleep", "start", None);
            tokio::select! {
                () = ctx.cancelled() => {
                    log_event(&ctx, "sleep", "cancelled", reason_of(&ctx));
                    return Err(ctx.cancellation_error());
                }
                () = tokio::time::sleep(Duration::from_millis(ms)) => {}
            }
            log_event(&ctx, "sleep", "end", None);
            Ok(json!({"slept": ms}))
        })
        .handler("flaky", |ctx: StepContext, input: Value| async move {
            let fail_until = input["failUntil"].as_u64().unwrap_or(0);
            if u64::from(ctx.attempt()) < fail_until {
                return Err(StepError::retryable(format!("attempt {} fails", ctx.attempt()))
                    .with_type("Flaky"));
            }
            Ok(json!({"attempt": ctx.attempt()}))
        })
        .handler("fatal", |_ctx: StepContext, _input: Value| async move {
            Err::<Value, _>(StepError::fatal("CardDeclined", "over the limit"))
        })
        .handler("block", |ctx: StepContext, input: Value| async move {
            let from = input["returnFromAttempt"].as_u64().unwrap_or(u64::MAX);
            if u64::from(ctx.attempt()) >= from {
                return Ok(json!({"attempt": ctx.attempt()}));
            }
            log_event(&ctx, "block", "start", None);
            let _ = tokio::time::timeout(Duration::from_secs(60), ctx.cancelled()).await;
            log_event(&ctx, "block", "cancelled", reason_of(&ctx));
            Err(ctx.cancellation_error())
        });
    worker.run().await?;
    Ok(())
}
