//! The side-effect log: one JSON line per handler invocation, appended to the file named by
//! `SLUICE_EXAMPLE_SIDE_EFFECTS`. Tests read it to see which attempts ran where (and that none ran twice).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sluice_worker::StepContext;

/// The environment variable naming the log file.
pub const SIDE_EFFECTS_ENV: &str = "SLUICE_EXAMPLE_SIDE_EFFECTS";

/// One handler invocation.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation<'a> {
    pub namespace: &'a str,
    pub flowrun: &'a str,
    pub step: &'a str,
    pub instance: Option<u32>,
    pub attempt: u32,
    pub handler: &'a str,
    pub task_id: &'a str,
    pub worker: &'a str,
    pub pid: u32,
}

/// Where invocations are logged; a no-op without a file.
#[derive(Clone, Debug, Default)]
pub struct SideEffectLog {
    path: Option<Arc<PathBuf>>,
    // One line per write() with O_APPEND is atomic enough between processes; the mutex orders this process's.
    lock: Arc<Mutex<()>>,
}

impl SideEffectLog {
    /// The log named by [`SIDE_EFFECTS_ENV`], if set and not empty.
    pub fn from_env() -> Self {
        let path = std::env::var_os(SIDE_EFFECTS_ENV)
            .filter(|p| !p.is_empty())
            .map(|p| Arc::new(PathBuf::from(p)));
        Self {
            path,
            lock: Arc::default(),
        }
    }

    /// The log file, if any.
    pub fn path(&self) -> Option<&PathBuf> {
        self.path.as_deref()
    }

    /// Appends the invocation of `ctx`. A failure to write is logged, not fatal: the log is for tests.
    pub async fn record(&self, ctx: &StepContext) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let invocation = Invocation {
            namespace: ctx.namespace(),
            flowrun: ctx.flow_run_name(),
            step: ctx.step(),
            instance: ctx.instance(),
            attempt: ctx.attempt(),
            handler: ctx.handler(),
            task_id: ctx.task_id().as_str(),
            worker: ctx.worker(),
            pid: std::process::id(),
        };
        let mut line = match serde_json::to_vec(&invocation) {
            Ok(line) => line,
            Err(error) => {
                tracing::warn!(%error, "encoding a side-effect record");
                return;
            }
        };
        line.push(b'\n');
        let lock = Arc::clone(&self.lock);
        let written = tokio::task::spawn_blocking(move || {
            let _guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path.as_path())
                .and_then(|mut file| file.write_all(&line))
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "appending to the side-effect log"),
            Err(error) => tracing::warn!(%error, "appending to the side-effect log"),
        }
    }
}
