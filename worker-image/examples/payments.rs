//! A complete Sluice worker on the Rust SDK: one handler, `charge_payment`. The README quotes it.
//!
//! Run it against a broker with `SLUICE_BROKER_URL=... SLUICE_POOL=payments cargo run --example payments`; in a
//! WorkerPool the operator sets those variables (and the token path) for you.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use sluice_worker::{StepContext, StepError, Worker};

/// The step's input: the JSON its `input` field evaluates to.
#[derive(Deserialize)]
struct Charge {
    order: String,
    amount: f64,
}

/// The step's output, recorded in the FlowRun's status and visible to later steps as `steps.NAME.output`.
#[derive(Serialize)]
struct Receipt {
    payment_id: String,
}

async fn charge_payment(ctx: StepContext, charge: Charge) -> Result<Receipt, StepError> {
    if charge.amount > 10_000.0 {
        // Not retryable: the step fails at once, whatever its retry policy.
        return Err(StepError::fatal("card_declined", "over the limit"));
    }
    // The attempt number makes a natural idempotency key for the payment provider.
    Ok(Receipt {
        payment_id: format!("{}-{}", charge.order, ctx.attempt()),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let worker = Worker::from_env()? // SLUICE_BROKER_URL, SLUICE_POOL, SLUICE_TOKEN_PATH, SLUICE_CONCURRENCY
        .handler("charge_payment", charge_payment);
    worker.run().await?; // claims, heartbeats, fenced reports; drains on SIGTERM
    Ok(())
}
