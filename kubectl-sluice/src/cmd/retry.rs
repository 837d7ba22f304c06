//! `kubectl sluice retry FLOWRUN`: asks the operator to re-run a Failed run from the point of failure by
//! writing a new `spec.retryRequest` token, then waits until the operator records it in `status.retry`.

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::await_condition;
use serde_json::json;
use sluice_api::{FlowPhase, FlowRun, RetryOutcome};

use super::{api, get, print};
use crate::cli::RetryArgs;
use crate::kubeconfig::Connection;
use crate::{Error, FIELD_MANAGER, Result};

/// Requests the retry; unless `--no-wait`, waits for the operator's answer and prints it.
pub async fn run(conn: &Connection, args: &RetryArgs) -> Result<u8> {
    let name = &args.flowrun;
    let fr = get(conn, name).await?;
    let phase = fr.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    if phase != FlowPhase::Failed {
        return Err(Error::NotFailed {
            name: name.clone(),
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
    print(&format!(
        "flowrun/{name}: retry requested (spec.retryRequest={token})\n"
    ))?;
    if args.no_wait {
        return Ok(0);
    }
    let acted = {
        let token = token.clone();
        move |fr: Option<&FlowRun>| {
            fr.and_then(|fr| fr.status.as_ref())
                .and_then(|s| s.retry.as_ref())
                .is_some_and(|r| r.request == token)
        }
    };
    let waited = tokio::time::timeout(
        Duration::from_secs(args.timeout),
        await_condition(api(conn), name, acted),
    )
    .await
    .map_err(|_| {
        Error::Timeout(format!(
            "the operator did not act on the retry request within {}s (is it running?); the request stays in spec.retryRequest",
            args.timeout
        ))
    })?
    .map_err(|e| Error::Watch(e.to_string()))?;
    let Some(retry) = waited.and_then(|fr| fr.status).and_then(|s| s.retry) else {
        return Err(Error::Deleted(name.clone()));
    };
    match retry.outcome {
        RetryOutcome::Retried => {
            print(&format!(
                "flowrun/{name}: retried ({}); retries so far: {}\n",
                retry.message, retry.count
            ))?;
            Ok(0)
        }
        RetryOutcome::Ignored => Err(Error::NotFailed {
            name: name.clone(),
            phase: retry.message,
        }),
    }
}
