//! Test-only fault injection, off unless `SLUICE_EXAMPLE_CRASH_FILE` names a file: it lets cluster tests show
//! what happens to a step whose worker process dies in the middle of it, and to a pod whose worker keeps dying.
//!
//! With the variable set, the worker also serves [`CRASH_HANDLER`]: its first attempt writes the file and ends
//! the process at once (exit code [`CRASH_EXIT_CODE`], no report, no drain), as a worker hitting a fatal bug
//! would; later attempts succeed with `{"attempt": n, "worker": name}`. A worker that starts while the file
//! exists exits with the same code before it talks to the broker, so a container restarted after the crash
//! crash-loops. Point the variable into an `emptyDir` volume to make that per pod: the file outlives container
//! restarts and goes with the pod.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sluice_worker::{StepContext, StepError};

/// The environment variable naming the crash marker file.
pub const CRASH_FILE_ENV: &str = "SLUICE_EXAMPLE_CRASH_FILE";
/// The handler that crashes the worker on its first attempt.
pub const CRASH_HANDLER: &str = "crash_on_first_attempt";
/// The exit code of a crash.
pub const CRASH_EXIT_CODE: i32 = 3;

/// The marker file, when fault injection is on.
pub fn crash_file() -> Option<PathBuf> {
    std::env::var_os(CRASH_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Ends the process if an earlier run of this pod's worker crashed.
pub fn exit_if_crashed_before(file: &Path) {
    if file.exists() {
        tracing::error!(
            file = %file.display(),
            code = CRASH_EXIT_CODE,
            "a worker of this pod crashed before: exiting at once (test fault injection)"
        );
        std::process::exit(CRASH_EXIT_CODE);
    }
}

/// [`CRASH_HANDLER`]: crashes the process on attempt 1, succeeds on later attempts.
pub async fn crash_on_first_attempt(
    file: &Path,
    ctx: StepContext,
    _input: Value,
) -> Result<Value, StepError> {
    if ctx.attempt() > 1 {
        return Ok(json!({"attempt": ctx.attempt(), "worker": ctx.worker()}));
    }
    let note = format!(
        "{} attempt {} crashed worker {}\n",
        ctx.task_id(),
        ctx.attempt(),
        ctx.worker()
    );
    if let Err(e) = std::fs::write(file, note) {
        tracing::error!(file = %file.display(), error = %e, "cannot write the crash marker");
    }
    tracing::error!(
        task = %ctx.task_id(),
        attempt = ctx.attempt(),
        code = CRASH_EXIT_CODE,
        "crashing the worker mid-step (test fault injection)"
    );
    std::process::exit(CRASH_EXIT_CODE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn later_attempts_succeed_and_name_their_worker() {
        let ctx = crate::test_context::context(2, CRASH_HANDLER, "w-2");
        let file = std::env::temp_dir().join(format!("sluice-crash-test-{}", std::process::id()));
        let out = crash_on_first_attempt(&file, ctx, Value::Null)
            .await
            .unwrap();
        assert_eq!(out, json!({"attempt": 2, "worker": "w-2"}));
        assert!(!file.exists(), "only a crash writes the marker");
    }
}
