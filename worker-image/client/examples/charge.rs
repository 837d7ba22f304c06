//! Starts a one-step payment flow from code and awaits its typed result.
//!
//! Runs against the cluster of your kubeconfig, in its namespace (or `SLUICE_NAMESPACE`), where a Sluice
//! operator runs and the `examples` WorkerPool serves `charge_payment` (`make demo` leaves both in namespace
//! `sluice-demo`):
//!
//! ```sh
//! SLUICE_NAMESPACE=sluice-demo cargo run -p sluice-client --example charge -- 1001 42.50
//! ```
//!
//! Run it twice with the same order id: the second start finds the first run and prints its recorded
//! result instead of charging again. A different amount for the same order is refused (a spec conflict).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_client::api::{FlowRunSpec, Step};
use sluice_client::{Client, Error, Start};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Order {
    order_id: String,
    amount: f64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payment {
    payment_id: String,
    amount: f64,
}

/// The flow: charge the order, and make the charge's output the flow's output.
fn charge_flow() -> FlowRunSpec {
    FlowRunSpec {
        pool: Some("examples".into()),
        steps: vec![Step {
            name: "charge".into(),
            handler: Some("charge_payment".into()),
            input: Some("${{ input }}".into()),
            ..Step::default()
        }],
        output: Some("${{ steps.charge.output }}".into()),
        ..FlowRunSpec::default()
    }
}

async fn charge(client: &Client, order: Order) -> Result<Payment, Error> {
    // The run's name is its identity: starting it again returns the same run (and its result).
    let name = format!("charge-{}", order.order_id);
    let run = client
        .start(Start::inline(name, charge_flow()).input(&order)?)
        .await?;
    run.wait::<Payment>(Duration::from_secs(120)).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let order_id = args.next().unwrap_or_else(|| "1001".into());
    let amount: f64 = args.next().as_deref().unwrap_or("42.50").parse()?;
    let mut client = Client::try_default().await?;
    if let Ok(namespace) = std::env::var("SLUICE_NAMESPACE") {
        client = client.namespaced(namespace);
    }
    match charge(&client, Order { order_id, amount }).await {
        Ok(payment) => println!("charged {:.2}: {}", payment.amount, payment.payment_id),
        Err(Error::Failed(failure)) => {
            eprintln!("the charge failed: {failure}");
            std::process::exit(3);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
