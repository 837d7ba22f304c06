//! The exec handler running real commands, and the `sluice-worker` binary against the fake broker.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_wire::{MAX_ERROR_MESSAGE_BYTES, Task, error_types};
use sluice_worker::StepContext;
use sluice_worker::exec::ExecHandler;
use support::{FakeBroker, task};

const BOUND: Duration = Duration::from_secs(10);

fn ctx_for(task: &Task) -> StepContext {
    StepContext::detached(task, "worker-0")
}

async fn run(command: &str, input: Value) -> Result<Value, sluice_worker::StepError> {
    let task = task("exec", "charge", input.clone());
    ExecHandler::new(command).run(ctx_for(&task), input).await
}

#[tokio::test]
async fn json_stdout_is_the_output() {
    let output = run(r#"printf '{"ok": true, "n": [1, 2]}'"#, json!(null))
        .await
        .unwrap();
    assert_eq!(output, json!({"ok": true, "n": [1, 2]}));
}

#[tokio::test]
async fn input_arrives_on_stdin() {
    let input = json!({"order": 42, "items": ["a", "b"]});
    assert_eq!(run("cat", input.clone()).await.unwrap(), input);
    // A command that ignores its (large) input still succeeds.
    let big = json!({"blob": "x".repeat(1 << 20)});
    assert_eq!(run("echo done", big).await.unwrap(), json!("done"));
}

#[tokio::test]
async fn plain_stdout_becomes_a_string_and_empty_is_null() {
    assert_eq!(
        run("echo hello world", json!(null)).await.unwrap(),
        json!("hello world")
    );
    assert_eq!(run("true", json!(null)).await.unwrap(), Value::Null);
}

#[tokio::test]
async fn step_identity_is_in_the_environment() {
    let mut t = task("exec", "ship", json!(null));
    t.attempt = 3;
    t.instance = Some(12);
    t.deadline = Some("2030-01-01T00:00:00Z".into());
    let command = r#"printf '%s|%s|%s|%s|%s|%s|%s|%s|%s' "$SLUICE_FLOWRUN" "$SLUICE_FLOWRUN_NAMESPACE" \
        "$SLUICE_FLOWRUN_UID" "$SLUICE_STEP" "$SLUICE_ATTEMPT" "$SLUICE_INSTANCE" "$SLUICE_TASK_ID" \
        "$SLUICE_HANDLER" "$SLUICE_DEADLINE""#;
    let output = ExecHandler::new(command)
        .run(ctx_for(&t), json!(null))
        .await
        .unwrap();
    assert_eq!(
        output,
        json!("order-1|shop|uid-1|ship|3|12|shop/order-1/ship|exec|2030-01-01T00:00:00Z")
    );
    // No instance, no deadline: the variables are absent.
    let t = task("exec", "ship", json!(null));
    let output =
        ExecHandler::new(r#"printf '%s' "${SLUICE_INSTANCE-unset}${SLUICE_DEADLINE-unset}""#)
            .run(ctx_for(&t), json!(null))
            .await
            .unwrap();
    assert_eq!(output, json!("unsetunset"));
}

#[tokio::test]
async fn non_zero_exit_carries_the_code_and_stderr() {
    let error = run(
        "echo ignored; echo first >&2; echo 'card declined' >&2; exit 3",
        json!(null),
    )
    .await
    .unwrap_err();
    assert_eq!(error.error_type(), error_types::NON_ZERO_EXIT);
    assert_eq!(error.exit_code(), Some(3));
    assert!(
        error.is_retryable(),
        "the engine applies nonRetryableExitCodes"
    );
    assert_eq!(error.message(), "first\ncard declined");

    let error = run("exit 9", json!(null)).await.unwrap_err();
    assert_eq!(error.exit_code(), Some(9));
    assert_eq!(error.message(), "command exited with code 9");
}

#[tokio::test]
async fn stderr_tail_keeps_the_last_bytes() {
    let error = run(
        "head -c 100000 /dev/zero | tr '\\0' a >&2; echo ' THE END' >&2; exit 1",
        json!(null),
    )
    .await
    .unwrap_err();
    let message = error.to_task_error().message;
    assert!(
        message.len() <= MAX_ERROR_MESSAGE_BYTES,
        "{}",
        message.len()
    );
    assert!(message.ends_with("aaa THE END"), "{message}");
}

#[tokio::test]
async fn killed_by_a_signal() {
    let error = run("kill -9 $$", json!(null)).await.unwrap_err();
    assert_eq!(error.error_type(), error_types::KILLED);
    assert_eq!(error.exit_code(), None);
    assert!(error.message().contains("signal 9"), "{}", error.message());
}

#[tokio::test]
async fn oversized_stdout_is_a_fatal_error() {
    let task = task("exec", "s", json!(null));
    let error = ExecHandler::new("head -c 5000 /dev/zero")
        .with_max_output_bytes(1000)
        .run(ctx_for(&task), json!(null))
        .await
        .unwrap_err();
    assert_eq!(error.error_type(), error_types::OUTPUT_TOO_LARGE);
    assert!(!error.is_retryable());
}

#[tokio::test]
async fn missing_shell_is_a_spawn_failure() {
    let task = task("exec", "s", json!(null));
    let error = ExecHandler::new("true")
        .with_shell("/nonexistent/shell")
        .run(ctx_for(&task), json!(null))
        .await
        .unwrap_err();
    assert_eq!(error.error_type(), error_types::SPAWN_FAILED);
    assert!(error.is_retryable());
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group() {
    let marker = temp_path("pids");
    // The shell ignores SIGTERM (and so does its background child), so the kill must escalate to SIGKILL.
    let command = format!(
        "trap '' TERM; sleep 30 & echo $! > {marker}.tmp; mv {marker}.tmp {marker}; wait",
        marker = marker.display()
    );
    let task = task("exec", "s", json!(null));
    let ctx = ctx_for(&task);
    let handler = ExecHandler::new(command).with_kill_grace(Duration::from_millis(200));
    let running = tokio::spawn({
        let ctx = ctx.clone();
        async move { handler.run(ctx, json!(null)).await }
    });
    let sleeper = wait_for_file(&marker).await;
    let started = Instant::now();
    ctx.cancellation_token().cancel();
    let error = tokio::time::timeout(BOUND, running)
        .await
        .expect("the command is killed in time")
        .unwrap()
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(error.error_type(), error_types::CANCELLED);
    let pid: u32 = sleeper.trim().parse().unwrap();
    wait_until_dead(pid).await;
    let _ = std::fs::remove_file(&marker);
}

#[tokio::test]
async fn binary_serves_tasks_and_drains_on_sigterm() {
    let broker = FakeBroker::start().await;
    let marker = temp_path("slow-started");
    let slow = format!("slow=touch {}; exec sleep 30", marker.display());
    broker.push(task("echo", "copy", json!({"a": 1})));
    broker.push(task("fail", "broken", json!(null)));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice-worker"))
        .args([
            "--handler",
            "echo=cat",
            "--handler",
            "fail=echo 'bad thing' >&2; exit 7",
            "--handler",
            &slow,
            "--concurrency",
            "3",
            "--shutdown-grace-seconds",
            "1",
            "--kill-grace-seconds",
            "1",
        ])
        .env(sluice_wire::env::BROKER_URL, &broker.url)
        .env(sluice_wire::env::POOL, "exec-pool")
        .env(sluice_wire::env::WORKER_NAME, "exec-worker-0")
        .env_remove(sluice_wire::env::TOKEN_PATH)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let state = broker
        .wait_for("the completion and the failure", |s| {
            !s.completes.is_empty() && !s.fails.is_empty()
        })
        .await;
    let claim = &state.claims[0];
    assert_eq!(claim.pool, "exec-pool");
    assert_eq!(claim.worker, "exec-worker-0");
    assert_eq!(claim.handlers, vec!["echo", "fail", "slow"]);
    assert_eq!(claim.capacity, 3);
    assert_eq!(state.completes[0].output, json!({"a": 1}));
    let fail = &state.fails[0];
    assert_eq!(fail.error.error_type, error_types::NON_ZERO_EXIT);
    assert_eq!(fail.error.exit_code, Some(7));
    assert_eq!(fail.error.message, "bad thing");
    assert!(fail.retryable);

    broker.push(task("slow", "sleepy", json!(null)));
    wait_for_file(&marker).await;
    let _ = std::fs::remove_file(&marker);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .expect("the worker exits after the grace period")
        .unwrap();
    assert!(status.success(), "{status}");
    let state = broker.snapshot();
    let shutdown = state
        .fails
        .iter()
        .find(|f| f.id.as_str().ends_with("/sleepy"))
        .expect("the slow step is failed on shutdown");
    assert_eq!(shutdown.error.error_type, error_types::WORKER_SHUTDOWN);
    assert!(shutdown.retryable);
}

fn temp_path(name: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "sluice-exec-test-{}-{name}-{n}",
        std::process::id()
    ))
}

/// Polls (bounded) for a file another process writes: there is no notification to await.
async fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls (bounded) until the process is gone or a zombie.
async fn wait_until_dead(pid: u32) {
    let deadline = Instant::now() + BOUND;
    loop {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat) => {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                if state.starts_with('Z') || state.starts_with('X') {
                    return;
                }
            }
        }
        assert!(Instant::now() < deadline, "process {pid} is still alive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
