//! `kubectl sluice retry FLOWRUN`: asks the operator to re-run a Failed run from the point of failure by
//! writing a new `spec.retryRequest` token, then waits until the operator records it in `status.retry`.
//!
//! [`request`] and [`answer`] are shared with the web view ([`crate::ui`]).

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::await_condition;
use serde_json::json;
use sluice_api::{FlowPhase, FlowRun, RetryOutcome, RetryStatus};

use super::{api, get, print};
use crate::cli::RetryArgs;
use crate::kubeconfig::Connection;
use crate::{Error, FIELD_MANAGER, Result};

/// Writes a new `spec.retryRequest` token on a Failed run and returns it; a run that has not Failed is refused
/// ([`Error::NotFailed`]) before anything is written.
pub async fn request(conn: &Connection, name: &str) -> Result<String> {
    let fr = get(conn, name).await?;
    let phase = fr.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    if phase != FlowPhase::Failed {
        return Err(Error::NotFailed {
            name: name.to_owned(),
            phase: format!("{phase:?}"),
        });
    }
    let token = Timestamp::now().to_string();
    api(conn)
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&json!({ "spec": { "retryRequest": token } })),
        )
        .await?;
    Ok(token)
}

/// Waits up to `timeout` for the operator to act on retry request `token`, and returns what it did. A request
/// the operator ignored is [`Error::NotFailed`]; no answer in time is [`Error::Timeout`].
pub async fn answer(
    conn: &Connection,
    name: &str,
    token: &str,
    timeout: Duration,
) -> Result<RetryStatus> {
    let acted = {
        let token = token.to_owned();
        move |fr: Option<&FlowRun>| {
            fr.and_then(|fr| fr.status.as_ref())
                .and_then(|s| s.retry.as_ref())
                .is_some_and(|r| r.request == token)
        }
    };
    let waited = tokio::time::timeout(timeout, await_condition(api(conn), name, acted))
        .await
        .map_err(|_| {
            Error::Timeout(format!(
                "the operator did not act on the retry request within {}s (is it running?); the request stays in spec.retryRequest",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| Error::Watch(e.to_string()))?;
    let Some(retry) = waited.and_then(|fr| fr.status).and_then(|s| s.retry) else {
        return Err(Error::Deleted(name.to_owned()));
    };
    match retry.outcome {
        RetryOutcome::Retried => Ok(retry),
        RetryOutcome::Ignored => Err(Error::NotFailed {
            name: name.to_owned(),
            phase: retry.message,
        }),
    }
}

/// The line printed once the operator retried the run.
pub fn retried_message(name: &str, retry: &RetryStatus) -> String {
    format!(
        "flowrun/{name}: retried ({}); retries so far: {}",
        retry.message, retry.count
    )
}

/// Requests the retry; unless `--no-wait`, waits for the operator's answer and prints it.
pub async fn run(conn: &Connection, args: &RetryArgs) -> Result<u8> {
    let name = &args.flowrun;
    let token = request(conn, name).await?;
    print(&format!(
        "flowrun/{name}: retry requested (spec.retryRequest={token})\n"
    ))?;
    if args.no_wait {
        return Ok(0);
    }
    let retry = answer(conn, name, &token, Duration::from_secs(args.timeout)).await?;
    print(&format!("{}\n", retried_message(name, &retry)))?;
    Ok(0)
}
