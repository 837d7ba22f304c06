//! `kubectl sluice status FLOWRUN [-o json]`.

use jiff::Timestamp;

use super::{get, print};
use crate::Result;
use crate::cli::{StatusArgs, StatusFormat};
use crate::kubeconfig::Connection;
use crate::report::FlowRunReport;
use crate::style::Style;
use crate::tree;

/// Prints the FlowRun as a tree or as the JSON report.
pub async fn run(conn: &Connection, args: &StatusArgs) -> Result<u8> {
    let fr = get(conn, &args.flowrun).await?;
    let report = FlowRunReport::new(&fr, Timestamp::now());
    match args.output {
        StatusFormat::Text => print(&tree::render(&report, Style::for_stdout()))?,
        StatusFormat::Json => {
            let mut text = serde_json::to_string_pretty(&report)
                .map_err(|e| crate::Error::Output(std::io::Error::other(e)))?;
            text.push('\n');
            print(&text)?;
        }
    }
    Ok(0)
}
