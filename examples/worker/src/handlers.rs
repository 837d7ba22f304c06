//! The handlers of the example flows. Each is a plain async function of the step's context and its typed input,
//! deterministic in its inputs and attempt number (so tests can predict every output and every failure).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_worker::{StepContext, StepError};

/// The error type `charge_payment` fails with when the card is declined; the order flow lists it in
/// `nonRetryableErrors`.
pub const CARD_DECLINED: &str = "card_declined";

/// A number given either as a JSON number or as a numeric string (an expression in a string may yield either).
fn number(value: &Value, field: &str) -> Result<f64, StepError> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        StepError::fatal(
            "InvalidInput",
            format!("{field} must be a number, got {value}"),
        )
    })
}

/// A value as display text: strings without quotes, anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Fails with a retryable error while `attempt <= fail_first_attempts`.
fn transient(ctx: &StepContext, fail_first_attempts: u32, what: &str) -> Result<(), StepError> {
    if ctx.attempt() <= fail_first_attempts {
        return Err(StepError::retryable(format!(
            "{what}: transient failure on attempt {} (fails the first {fail_first_attempts})",
            ctx.attempt()
        ))
        .with_type("Unavailable"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Order processing (examples/order-flow.yaml)

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeInput {
    pub order_id: String,
    pub amount: Value,
    /// Decline the card (a non-retryable `card_declined`).
    #[serde(default)]
    pub decline: bool,
    /// Fail with a retryable error on the first N attempts (the payment gateway is flaky).
    #[serde(default)]
    pub fail_first_attempts: u32,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Payment {
    pub payment_id: String,
    pub amount: f64,
    pub status: &'static str,
}

/// Charges the order's amount. The payment id is derived from the order id: charging twice is idempotent.
pub async fn charge_payment(ctx: StepContext, input: ChargeInput) -> Result<Payment, StepError> {
    let amount = number(&input.amount, "amount")?;
    if input.decline || amount <= 0.0 {
        return Err(StepError::fatal(
            CARD_DECLINED,
            format!(
                "the card was declined for order {} ({amount:.2})",
                input.order_id
            ),
        ));
    }
    transient(&ctx, input.fail_first_attempts, "payment gateway")?;
    Ok(Payment {
        payment_id: format!("pay-{}", input.order_id),
        amount,
        status: "charged",
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReserveInput {
    pub order_id: String,
    pub sku: String,
    #[serde(default)]
    pub line: Value,
}

/// Reserves one item of the order (one forEach instance per item).
pub async fn reserve_inventory(_ctx: StepContext, input: ReserveInput) -> Result<Value, StepError> {
    let line = text(&input.line);
    Ok(json!({
        "sku": input.sku,
        "line": input.line,
        "reservationId": format!("res-{}-{line}-{}", input.order_id, input.sku),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShipInput {
    pub order_id: String,
    pub address: Value,
    #[serde(default)]
    pub reservations: Vec<Value>,
}

/// Ships the reserved items; the tracking number is derived from the order id.
pub async fn ship_order(_ctx: StepContext, input: ShipInput) -> Result<Value, StepError> {
    if input.reservations.is_empty() {
        return Err(StepError::fatal(
            "NothingToShip",
            format!("order {} has no reserved items", input.order_id),
        ));
    }
    let to = input
        .address
        .get("name")
        .map(text)
        .unwrap_or_else(|| text(&input.address));
    Ok(json!({
        "tracking": format!("TRK-{}", input.order_id),
        "carrier": "sluice-post",
        "items": input.reservations.len(),
        "to": to,
    }))
}

// ---------------------------------------------------------------------------------------------------------------
// The saga (examples/saga-flow.yaml): book → charge → ship, and the compensations its exit steps run.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BookInput {
    pub order_id: String,
    #[serde(default)]
    pub items: Vec<String>,
}

/// Books the order's items (possibly none): one booking per item, named after the order.
pub async fn book_items(_ctx: StepContext, input: BookInput) -> Result<Value, StepError> {
    let bookings: Vec<Value> = input
        .items
        .iter()
        .map(|sku| json!({"sku": sku, "bookingId": format!("bk-{}-{sku}", input.order_id)}))
        .collect();
    Ok(json!({"orderId": input.order_id, "bookings": bookings}))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundInput {
    pub payment: Value,
    #[serde(default)]
    pub reason: String,
}

/// Refunds a charge (the compensation of `charge_payment`).
pub async fn refund_payment(_ctx: StepContext, input: RefundInput) -> Result<Value, StepError> {
    let Some(id) = input.payment.get("paymentId").and_then(Value::as_str) else {
        return Err(StepError::fatal(
            "NoPayment",
            "payment.paymentId is missing: nothing to refund",
        ));
    };
    Ok(json!({"refundId": format!("ref-{id}"), "paymentId": id, "reason": input.reason}))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseInput {
    pub booking: Value,
}

/// Releases an order's bookings (the compensation of `book_items`).
pub async fn release_booking(_ctx: StepContext, input: ReleaseInput) -> Result<Value, StepError> {
    let released: Vec<Value> = input
        .booking
        .get("bookings")
        .and_then(Value::as_array)
        .map(|b| {
            b.iter()
                .filter_map(|b| b.get("bookingId").cloned())
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({"orderId": input.booking.get("orderId"), "released": released}))
}

// ---------------------------------------------------------------------------------------------------------------
// Manager approval (examples/approval-flow.yaml); the approval itself is a signal, no handler.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpenseInput {
    pub report_id: String,
    #[serde(default)]
    pub employee: Option<String>,
    #[serde(default)]
    pub amount: Value,
}

/// Records an expense report.
pub async fn record_expense(_ctx: StepContext, input: ExpenseInput) -> Result<Value, StepError> {
    let amount = number(&input.amount, "amount")?;
    Ok(json!({
        "reportId": input.report_id,
        "employee": input.employee,
        "amount": amount,
        "recorded": true,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayInput {
    pub report_id: String,
    pub amount: Value,
    #[serde(default)]
    pub approved_by: Value,
}

/// Pays an approved expense out.
pub async fn pay_expense(_ctx: StepContext, input: PayInput) -> Result<Value, StepError> {
    let amount = number(&input.amount, "amount")?;
    Ok(json!({
        "reportId": input.report_id,
        "paid": amount,
        "approvedBy": input.approved_by,
        "transferId": format!("tr-{}", input.report_id),
    }))
}

#[derive(Debug, Deserialize)]
pub struct NotifyInput {
    pub employee: String,
    pub message: String,
}

/// Tells an employee something (here: that their report was declined).
pub async fn notify_employee(_ctx: StepContext, input: NotifyInput) -> Result<Value, StepError> {
    Ok(json!({ "notified": input.employee, "message": input.message }))
}

// ---------------------------------------------------------------------------------------------------------------
// Fan-out / fan-in (examples/fanout-flow.yaml)

#[derive(Debug, Deserialize)]
pub struct CountInput {
    pub text: String,
}

/// Counts the words of one document.
pub async fn count_words(_ctx: StepContext, input: CountInput) -> Result<Value, StepError> {
    Ok(json!({ "words": input.text.split_whitespace().count() }))
}

#[derive(Debug, Deserialize)]
pub struct SumInput {
    pub counts: Vec<Value>,
}

/// Adds up counts given as numbers or as `{"words": n}` objects (the outputs of `count_words`).
pub async fn sum_counts(_ctx: StepContext, input: SumInput) -> Result<Value, StepError> {
    let mut total = 0u64;
    for (index, count) in input.counts.iter().enumerate() {
        let n = count
            .as_u64()
            .or_else(|| count.get("words").and_then(Value::as_u64))
            .ok_or_else(|| {
                StepError::fatal(
                    "InvalidInput",
                    format!("counts[{index}] is neither a count nor {{\"words\": n}}: {count}"),
                )
            })?;
        total += n;
    }
    Ok(json!({ "total": total, "documents": input.counts.len() }))
}

// ---------------------------------------------------------------------------------------------------------------
// Job pool (examples/job-pool.yaml)

#[derive(Debug, Deserialize)]
pub struct ResizeInput {
    pub image: String,
    pub width: u32,
}

/// Makes a thumbnail of an image.
pub async fn resize_image(_ctx: StepContext, input: ResizeInput) -> Result<Value, StepError> {
    let stem = input
        .image
        .rsplit_once('.')
        .map_or(input.image.as_str(), |(stem, _)| stem);
    Ok(json!({
        "image": input.image,
        "thumbnail": format!("thumbs/{stem}-{}.png", input.width),
        "width": input.width,
    }))
}

#[derive(Debug, Deserialize)]
pub struct NewsletterInput {
    pub list: String,
    pub subject: String,
}

/// Sends a newsletter to a mailing list.
pub async fn send_newsletter(
    _ctx: StepContext,
    input: NewsletterInput,
) -> Result<Value, StepError> {
    Ok(json!({ "list": input.list, "subject": input.subject, "sent": true }))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportInput {
    pub format: String,
    /// Fail with a retryable error on the first N attempts.
    #[serde(default)]
    pub fail_first_attempts: u32,
}

/// Exports a report; fails transiently on its first `failFirstAttempts` attempts.
pub async fn export_report(ctx: StepContext, input: ExportInput) -> Result<Value, StepError> {
    transient(&ctx, input.fail_first_attempts, "report storage")?;
    Ok(json!({
        "file": format!("report.{}", input.format),
        "attempt": ctx.attempt(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct ImportInput {
    pub file: String,
    /// The file is corrupt: every attempt fails (retryably), so the job is poisoned after its max attempts.
    #[serde(default)]
    pub poison: bool,
}

/// Imports a records file; a poisoned file fails every attempt with a retryable error naming the attempt.
pub async fn import_records(ctx: StepContext, input: ImportInput) -> Result<Value, StepError> {
    if input.poison {
        return Err(StepError::retryable(format!(
            "{}: line 17: unterminated quoted field (attempt {})",
            input.file,
            ctx.attempt()
        ))
        .with_type("CorruptInput"));
    }
    Ok(json!({ "file": input.file, "imported": true }))
}

// ---------------------------------------------------------------------------------------------------------------
// Demos and tests

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlowInput {
    /// How long the step works, in milliseconds.
    pub ms: u64,
    /// Only attempts up to this number are slow (later ones finish at once); all of them when absent.
    #[serde(default)]
    pub slow_attempts: Option<u32>,
}

/// Works for `ms` milliseconds (stopping early when cancelled): a step to kill a worker in the middle of.
pub async fn slow_task(ctx: StepContext, input: SlowInput) -> Result<Value, StepError> {
    let slow = input.slow_attempts.is_none_or(|n| ctx.attempt() <= n);
    let ms = if slow { input.ms } else { 0 };
    tokio::select! {
        () = ctx.cancelled() => Err(ctx.cancellation_error()),
        () = tokio::time::sleep(Duration::from_millis(ms)) => Ok(json!({
            "sleptMs": ms,
            "attempt": ctx.attempt(),
            "worker": ctx.worker(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(attempt: u32) -> StepContext {
        crate::test_context::context(attempt, "h", "w")
    }

    fn input<T: serde::de::DeserializeOwned>(value: Value) -> T {
        serde_json::from_value(value).expect("input decodes")
    }

    #[tokio::test]
    async fn charge_is_deterministic_and_declines_fatally() {
        let out = charge_payment(ctx(1), input(json!({"orderId": "7", "amount": "12.5"})))
            .await
            .unwrap();
        assert_eq!(
            out,
            Payment {
                payment_id: "pay-7".into(),
                amount: 12.5,
                status: "charged"
            }
        );
        let err = charge_payment(ctx(1), input(json!({"orderId": "7", "amount": 0})))
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), CARD_DECLINED);
        assert!(!err.is_retryable());
        let flaky = json!({"orderId": "7", "amount": 1, "failFirstAttempts": 1});
        assert!(
            charge_payment(ctx(1), input(flaky.clone()))
                .await
                .unwrap_err()
                .is_retryable()
        );
        assert!(charge_payment(ctx(2), input(flaky)).await.is_ok());
    }

    #[tokio::test]
    async fn order_handlers() {
        let r = reserve_inventory(
            ctx(1),
            input(json!({"orderId": "1", "sku": "mug", "line": 2})),
        )
        .await
        .unwrap();
        assert_eq!(r["reservationId"], "res-1-2-mug");
        let s = ship_order(
            ctx(1),
            input(json!({"orderId": "1", "address": {"name": "Ada"}, "reservations": [r]})),
        )
        .await
        .unwrap();
        assert_eq!(
            s,
            json!({"tracking": "TRK-1", "carrier": "sluice-post", "items": 1, "to": "Ada"})
        );
        let empty = json!({"orderId": "1", "address": {}, "reservations": []});
        assert!(
            !ship_order(ctx(1), input(empty))
                .await
                .unwrap_err()
                .is_retryable()
        );
    }

    #[tokio::test]
    async fn saga_handlers_undo_what_was_done() {
        let booked = book_items(ctx(1), input(json!({"orderId": "7", "items": ["mug"]})))
            .await
            .unwrap();
        assert_eq!(booked["bookings"][0]["bookingId"], "bk-7-mug");
        let released = release_booking(ctx(1), input(json!({"booking": booked})))
            .await
            .unwrap();
        assert_eq!(released["released"], json!(["bk-7-mug"]));
        let refund = refund_payment(
            ctx(1),
            input(json!({"payment": {"paymentId": "pay-7"}, "reason": "ship failed"})),
        )
        .await
        .unwrap();
        assert_eq!(refund["refundId"], "ref-pay-7");
        assert!(
            !refund_payment(ctx(1), input(json!({"payment": null})))
                .await
                .unwrap_err()
                .is_retryable()
        );
    }

    #[tokio::test]
    async fn fan_out_and_in() {
        let a = count_words(ctx(1), input(json!({"text": "the quick brown fox"})))
            .await
            .unwrap();
        assert_eq!(a, json!({"words": 4}));
        let total = sum_counts(ctx(1), input(json!({"counts": [a, {"words": 2}, 3]})))
            .await
            .unwrap();
        assert_eq!(total, json!({"total": 9, "documents": 3}));
        assert!(
            sum_counts(ctx(1), input(json!({"counts": ["x"]})))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn jobs_fail_by_attempt_number() {
        let export = json!({"format": "csv", "failFirstAttempts": 2});
        for attempt in [1, 2] {
            let err = export_report(ctx(attempt), input(export.clone()))
                .await
                .unwrap_err();
            assert!(err.is_retryable(), "{err}");
        }
        let out = export_report(ctx(3), input(export)).await.unwrap();
        assert_eq!(out, json!({"file": "report.csv", "attempt": 3}));
        let err = import_records(ctx(3), input(json!({"file": "r.csv", "poison": true})))
            .await
            .unwrap_err();
        assert!(err.is_retryable());
        assert!(err.message().ends_with("(attempt 3)"), "{err}");
        let thumb = resize_image(ctx(1), input(json!({"image": "logo.png", "width": 128})))
            .await
            .unwrap();
        assert_eq!(thumb["thumbnail"], "thumbs/logo-128.png");
    }

    #[tokio::test]
    async fn slow_task_is_quick_after_its_slow_attempts() {
        let out = slow_task(ctx(2), input(json!({"ms": 600_000, "slowAttempts": 1})))
            .await
            .unwrap();
        assert_eq!(out["sleptMs"], 0);
    }
}
