//! Container processes: each runs in its own process group, its stdout and stderr appended to a log file.

use std::path::Path;
use std::process::Stdio;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Errors starting a process.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("container has no command and its image no entrypoint")]
    NoCommand,
    #[error("opening log {path}: {source}")]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Starts `argv` with exactly `env`, in `cwd`, as the leader of a new process group.
pub fn spawn(
    argv: &[String],
    env: &[(String, String)],
    cwd: &Path,
    log: &Path,
) -> Result<Child, RunError> {
    let (program, args) = argv.split_first().ok_or(RunError::NoCommand)?;
    let log_err = |source| RunError::Log {
        path: log.display().to_string(),
        source,
    };
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    Command::new(program)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: program.clone(),
            source,
        })
}

/// Sends `signal` to the process group led by `pid`; a group that is already gone is not an error.
pub fn signal_group(pid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, ?signal, error = %e, "signalling process group"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sluice-kubelet-run-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn runs_with_env_cwd_and_log() {
        let dir = scratch("env");
        let log = dir.join("c.log");
        let argv = [
            "/bin/sh",
            "-c",
            "echo \"$GREETING from $(pwd)\"; echo oops >&2; exit 3",
        ]
        .map(String::from);
        let env = [("GREETING".to_string(), "hello".to_string())];
        let status = spawn(&argv, &env, &dir, &log)
            .unwrap()
            .wait()
            .await
            .unwrap();
        assert_eq!(status.code(), Some(3));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains(&format!("hello from {}", dir.display())),
            "{text}"
        );
        assert!(text.contains("oops"), "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn group_signal_reaches_children() {
        let dir = scratch("group");
        let log = dir.join("c.log");
        let pid_file = dir.join("child.pid");
        // The shell waits on a child sleep: SIGTERM to the group ends both.
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let argv = ["/bin/sh".to_string(), "-c".to_string(), script];
        let mut child = spawn(&argv, &[], &dir, &log).unwrap();
        let pid = child.id().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let sleeper: i32 = loop {
            if let Some(p) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the shell never wrote its child's pid"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        signal_group(pid, Signal::SIGTERM);
        let status = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.signal(), Some(15));
        // The grandchild got the signal too (it is not our child, so it is gone once init reaps it).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::path::Path::new(&format!("/proc/{sleeper}/stat")).exists()
            && !std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
                .unwrap_or_default()
                .contains(") Z")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the group's other process survived SIGTERM"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        signal_group(pid, Signal::SIGKILL); // already gone: no error
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn empty_command_is_an_error() {
        assert!(matches!(
            spawn(&[], &[], Path::new("/"), Path::new("/dev/null")),
            Err(RunError::NoCommand)
        ));
    }
}
