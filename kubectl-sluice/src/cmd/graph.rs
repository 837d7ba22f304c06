//! `kubectl sluice graph FLOWRUN [--format mermaid|dot]`.

use jiff::Timestamp;

use super::{get, print};
use crate::Result;
use crate::cli::GraphArgs;
use crate::graph;
use crate::kubeconfig::Connection;
use crate::report::FlowRunReport;

/// Prints the DAG.
pub async fn run(conn: &Connection, args: &GraphArgs) -> Result<u8> {
    let fr = get(conn, &args.flowrun).await?;
    let report = FlowRunReport::new(&fr, Timestamp::now());
    print(&graph::render(&report, args.format))?;
    Ok(0)
}
