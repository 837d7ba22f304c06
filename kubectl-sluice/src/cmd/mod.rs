//! The commands: thin shells that read FlowRuns, write the few fields users own, and print.

pub mod control;
pub mod cron;
pub mod graph;
pub mod retry;
pub mod signal;
pub mod status;
pub mod templates;
pub mod watch;

use kube::Api;
use sluice_api::FlowRun;

use crate::cli::{Cli, Command, CronCommand};
use crate::kubeconfig::{Connection, connect};
use crate::{Error, Result};

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<u8> {
    let conn = connect(&cli.kube).await?;
    match cli.command {
        Command::Status(args) => status::run(&conn, &args).await,
        Command::Signal(args) => signal::run(&conn, &args).await,
        Command::Cancel(t) => control::run(&conn, &t.flowrun, control::Action::Cancel).await,
        Command::Suspend(t) => control::run(&conn, &t.flowrun, control::Action::Suspend).await,
        Command::Resume(t) => control::run(&conn, &t.flowrun, control::Action::Resume).await,
        Command::Retry(args) => retry::run(&conn, &args).await,
        Command::Graph(args) => graph::run(&conn, &args).await,
        Command::Watch(args) => watch::run(&conn, &args).await,
        Command::Cron(CronCommand::List) => cron::list(&conn).await,
        Command::Cron(CronCommand::Trigger(t)) => cron::trigger(&conn, &t.cronflow).await,
        Command::Templates => templates::list(&conn).await,
        Command::Ui(args) => crate::ui::run(conn, &args).await,
    }
}

/// The FlowRuns of the connection's namespace.
pub(crate) fn api(conn: &Connection) -> Api<FlowRun> {
    Api::namespaced(conn.client.clone(), &conn.namespace)
}

/// Reads a FlowRun, with a clear error when it does not exist.
pub(crate) async fn get(conn: &Connection, name: &str) -> Result<FlowRun> {
    api(conn)
        .get_opt(name)
        .await?
        .ok_or_else(|| Error::NotFound {
            name: name.to_owned(),
            namespace: conn.namespace.clone(),
        })
}

/// Writes `text` to stdout.
pub(crate) fn print(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// A table as kubectl prints one: left-aligned columns three spaces apart, no trailing spaces.
pub(crate) fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut out = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("   ");
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut text = line(header.to_vec());
    for r in rows {
        text.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    text
}
