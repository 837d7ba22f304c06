//! `kubectl sluice watch FLOWRUN`: a real watch of the one object; a line per change until the run ends.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watch_object};

use super::{api, get, print};
use crate::cli::WatchArgs;
use crate::kubeconfig::Connection;
use crate::report::FlowRunReport;
use crate::style::Style;
use crate::watch::{changes, exit_code};
use crate::{Error, Result};

/// Follows the run until it reaches a terminal phase; the exit code says how it ended.
pub async fn run(conn: &Connection, args: &WatchArgs) -> Result<u8> {
    // Fail fast and clearly when the FlowRun does not exist.
    get(conn, &args.flowrun).await?;
    let follow = follow(conn, &args.flowrun);
    match args.timeout {
        Some(secs) => tokio::time::timeout(Duration::from_secs(secs), follow)
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "flowrun {} did not finish within {secs}s",
                    args.flowrun
                ))
            })?,
        None => follow.await,
    }
}

async fn follow(conn: &Connection, name: &str) -> Result<u8> {
    let style = Style::for_stdout();
    let stream = watch_object(api(conn), name)
        .map_err(|e: watcher::Error| e)
        .default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut last: Option<FlowRunReport> = None;
    while let Some(item) = stream.next().await {
        let fr = match item {
            Ok(Some(fr)) => fr,
            Ok(None) => return Err(Error::Deleted(name.to_owned())),
            Err(e) => {
                eprintln!("watch interrupted, resuming: {e}");
                continue;
            }
        };
        let now = Timestamp::now();
        let report = FlowRunReport::new(&fr, now);
        let stamp = now.strftime("%H:%M:%S").to_string();
        let mut out = String::new();
        for line in changes(last.as_ref(), &report, style) {
            out.push_str(&format!("{stamp}  {line}\n"));
        }
        print(&out)?;
        if report.phase.is_terminal() {
            return Ok(exit_code(report.phase));
        }
        last = Some(report);
    }
    Err(Error::Watch("the watch ended".into()))
}
