//! The generic exec handler: run a shell command per step.
//!
//! The contract (what the `sluice-worker --handler NAME=COMMAND` binary does for each task):
//!
//! * **Command**: `COMMAND` runs as `/bin/sh -c COMMAND` (the shell is configurable), so pipes, redirections,
//!   `&&` and variable expansion work as in a Kubernetes `command: [sh, -c, ...]`. The command runs in its own
//!   process group; everything left in that group is killed when the step ends.
//! * **Input**: the step's input as JSON on stdin (then stdin is closed; a command may ignore it).
//! * **Environment**: the worker's own, plus `SLUICE_FLOWRUN` (name), `SLUICE_FLOWRUN_NAMESPACE`,
//!   `SLUICE_FLOWRUN_UID`, `SLUICE_STEP`, `SLUICE_ATTEMPT` (1-based), `SLUICE_TASK_ID`, `SLUICE_HANDLER`,
//!   `SLUICE_INSTANCE` (forEach steps only) and `SLUICE_DEADLINE` (RFC 3339, steps with a timeout only).
//!   `SLUICE_TASK_ID` + `SLUICE_ATTEMPT` is a unique key for idempotency.
//! * **Output**: stdout. If it parses as JSON (after trimming whitespace) that value is the output; empty stdout
//!   is `null`; anything else becomes a JSON string (trailing newlines removed). Stdout beyond the output limit
//!   (default 1 MiB) fails the step as `OutputTooLarge` (not retryable).
//! * **Exit**: 0 succeeds. Any other exit code is a *retryable* failure of type `NonZeroExit` carrying
//!   `exitCode`; the step's `nonRetryableExitCodes` decides whether it is retried. Death by a signal is a
//!   retryable `Killed` failure without exit code. The message is the tail of stderr (last 2 KiB).
//! * **Cancel / deadline / shutdown**: the process group gets SIGTERM, then SIGKILL after the kill grace
//!   (default 5 s).
//!
//! A command that starts background processes keeping stdout open makes the step wait for them (as a shell
//! pipeline would): use `exec` or redirect their output.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use sluice_wire::{MAX_ERROR_MESSAGE_BYTES, env, error_types, truncate_message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::context::StepContext;
use crate::error::StepError;

/// The shell that runs commands.
pub const DEFAULT_SHELL: &str = "/bin/sh";
/// Time between SIGTERM and SIGKILL when a step is cancelled.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
/// Largest stdout accepted as output.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// Runs one shell command per step (see the [module documentation](self) for the contract).
#[derive(Clone, Debug)]
pub struct ExecHandler {
    command: String,
    shell: PathBuf,
    kill_grace: Duration,
    max_output_bytes: usize,
}

impl ExecHandler {
    /// A handler running `command` with the default shell, kill grace and output limit.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            shell: PathBuf::from(DEFAULT_SHELL),
            kill_grace: DEFAULT_KILL_GRACE,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }

    /// Uses another shell (it is run as `SHELL -c COMMAND`).
    pub fn with_shell(mut self, shell: impl Into<PathBuf>) -> Self {
        self.shell = shell.into();
        self
    }

    /// Sets the time between SIGTERM and SIGKILL on cancellation.
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Sets the largest stdout accepted as output.
    pub fn with_max_output_bytes(mut self, max: usize) -> Self {
        self.max_output_bytes = max;
        self
    }

    /// The command.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Runs the command for one attempt.
    pub async fn run(&self, ctx: StepContext, input: Value) -> Result<Value, StepError> {
        let input = serde_json::to_vec(&input)?;
        let mut command = Command::new(&self.shell);
        command
            .arg("-c")
            .arg(&self.command)
            .env(env::FLOWRUN, ctx.flow_run_name())
            .env(env::FLOWRUN_NAMESPACE, ctx.namespace())
            .env(env::FLOWRUN_UID, &ctx.flow_run().uid)
            .env(env::STEP, ctx.step())
            .env(env::ATTEMPT, ctx.attempt().to_string())
            .env(env::TASK_ID, ctx.task_id().as_str())
            .env(env::HANDLER, ctx.handler())
            .env_remove(env::INSTANCE)
            .env_remove(env::DEADLINE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(instance) = ctx.instance() {
            command.env(env::INSTANCE, instance.to_string());
        }
        if let Some(timestamp) = ctx
            .deadline()
            .and_then(|deadline| jiff::Timestamp::try_from(deadline).ok())
        {
            command.env(env::DEADLINE, timestamp.to_string());
        }
        let mut child = command.spawn().map_err(|error| {
            StepError::retryable(format!(
                "cannot start {} -c {:?}: {error}",
                self.shell.display(),
                self.command
            ))
            .with_type(error_types::SPAWN_FAILED)
        })?;
        // Kills whatever is left of the process group when the step ends, however it ends.
        let group = ProcessGroup(child.id().and_then(|id| i32::try_from(id).ok()));

        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let max_output = self.max_output_bytes;
        let run = async {
            let feed = async move {
                if let Some(mut stdin) = stdin {
                    // A command that does not read its input closes the pipe: not an error.
                    let _ = stdin.write_all(&input).await;
                }
            };
            let ((), output, errors) = tokio::join!(
                feed,
                read_capped(stdout, max_output),
                read_tail(stderr, MAX_ERROR_MESSAGE_BYTES)
            );
            (child.wait().await, output, errors)
        };
        tokio::pin!(run);
        let (status, (stdout, too_large), stderr) = tokio::select! {
            finished = &mut run => finished,
            () = ctx.cancelled() => {
                group.signal(Signal::SIGTERM);
                if tokio::time::timeout(self.kill_grace, &mut run).await.is_err() {
                    group.signal(Signal::SIGKILL);
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut run).await;
                }
                return Err(ctx.cancellation_error());
            }
        };
        drop(group);
        let status = status
            .map_err(|error| StepError::retryable(format!("waiting for the command: {error}")))?;
        outcome(status, &stdout, too_large, &stderr, max_output)
    }
}

/// Turns a finished command into the step's result.
fn outcome(
    status: ExitStatus,
    stdout: &[u8],
    too_large: bool,
    stderr: &[u8],
    max_output: usize,
) -> Result<Value, StepError> {
    use std::os::unix::process::ExitStatusExt;

    let stderr_tail = || {
        let text = String::from_utf8_lossy(stderr);
        truncate_message(text.trim_end(), MAX_ERROR_MESSAGE_BYTES)
    };
    match status.code() {
        Some(0) if too_large => Err(StepError::fatal(
            error_types::OUTPUT_TOO_LARGE,
            format!("stdout is larger than {max_output} bytes"),
        )),
        Some(0) => Ok(parse_output(stdout)),
        Some(code) => {
            let mut message = stderr_tail();
            if message.is_empty() {
                message = format!("command exited with code {code}");
            }
            Err(StepError::retryable(message)
                .with_type(error_types::NON_ZERO_EXIT)
                .with_exit_code(code))
        }
        None => {
            let signal = status.signal().unwrap_or_default();
            let mut message = stderr_tail();
            if message.is_empty() {
                message = format!("command killed by signal {signal}");
            }
            Err(StepError::retryable(message).with_type(error_types::KILLED))
        }
    }
}

/// The output value of a stdout: JSON if it parses, `null` if empty, else a string without trailing newlines.
pub fn parse_output(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(trimmed)
        .unwrap_or_else(|_| Value::String(text.trim_end_matches(['\n', '\r']).to_owned()))
}

/// Parses a `NAME=COMMAND` handler spec.
pub fn parse_handler_spec(spec: &str) -> Result<(String, String), String> {
    let (name, command) = spec
        .split_once('=')
        .ok_or_else(|| format!("{spec:?} is not NAME=COMMAND"))?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "handler name {name:?} must be non-empty ASCII letters, digits, '_', '-' or '.'"
        ));
    }
    if command.trim().is_empty() {
        return Err(format!("handler {name:?} has an empty command"));
    }
    Ok((name.to_owned(), command.to_owned()))
}

/// Reads everything; keeps at most `max` bytes and says whether there was more.
async fn read_capped(reader: Option<impl AsyncRead + Unpin>, max: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut over = false;
    let Some(mut reader) = reader else {
        return (kept, over);
    };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) if kept.len() + n <= max => kept.extend_from_slice(&chunk[..n]),
            Ok(_) => over = true,
        }
    }
    (kept, over)
}

/// Reads everything; keeps the last `max` bytes.
async fn read_tail(reader: Option<impl AsyncRead + Unpin>, max: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    let Some(mut reader) = reader else {
        return tail;
    };
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > 2 * max {
                    tail.drain(..tail.len() - max);
                }
            }
        }
    }
    if tail.len() > max {
        tail.drain(..tail.len() - max);
    }
    tail
}

/// The command's process group (its id is the command's pid).
struct ProcessGroup(Option<i32>);

impl ProcessGroup {
    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.0 {
            // ESRCH (nothing left in the group) is the common, harmless case.
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn output_parsing() {
        assert_eq!(parse_output(b"{\"a\": 1}\n"), json!({"a": 1}));
        assert_eq!(parse_output(b"42\n"), json!(42));
        assert_eq!(parse_output(b"\"quoted\""), json!("quoted"));
        assert_eq!(parse_output(b"hello world\n"), json!("hello world"));
        assert_eq!(parse_output(b"two\nlines\n\n"), json!("two\nlines"));
        assert_eq!(parse_output(b""), Value::Null);
        assert_eq!(parse_output(b"  \n"), Value::Null);
    }

    #[test]
    fn handler_specs() {
        assert_eq!(
            parse_handler_spec("charge=./charge.sh --live"),
            Ok(("charge".into(), "./charge.sh --live".into()))
        );
        assert_eq!(
            parse_handler_spec("sum=jq '.a + .b'"),
            Ok(("sum".into(), "jq '.a + .b'".into()))
        );
        assert_eq!(
            parse_handler_spec("eq=test a = a"),
            Ok(("eq".into(), "test a = a".into()))
        );
        assert!(parse_handler_spec("no-equals").is_err());
        assert!(parse_handler_spec("=cmd").is_err());
        assert!(parse_handler_spec("bad name=cmd").is_err());
        assert!(parse_handler_spec("name=  ").is_err());
    }
}
