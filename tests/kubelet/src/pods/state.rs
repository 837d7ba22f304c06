//! What the kubelet knows about one container of a pod, independent of the API types.

use jiff::Timestamp;

/// The state of a container's current (or next) run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Not running: not started yet, pulling, or backing off before a restart.
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        pid: u32,
        started_at: Timestamp,
        ready: bool,
    },
    Terminated(Termination),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Termination {
    pub pid: u32,
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub reason: String,
    pub message: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
}

impl Termination {
    /// From a process's exit: an exit code, or the signal that killed it (reported as 128 + signal).
    pub fn from_exit(
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
        started_at: Timestamp,
        finished_at: Timestamp,
    ) -> Self {
        let exit_code = code.unwrap_or_else(|| 128 + signal.unwrap_or(0));
        Self {
            pid,
            exit_code,
            signal: code.is_none().then_some(signal).flatten(),
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_string(),
            message: None,
            started_at,
            finished_at,
        }
    }
}

/// A container as the status builder sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub state: RunState,
    pub last: Option<Termination>,
    pub restart_count: i32,
}

impl ContainerView {
    pub fn waiting(name: &str, image: &str, reason: &str) -> Self {
        Self {
            name: name.to_string(),
            image: image.to_string(),
            image_id: String::new(),
            state: RunState::Waiting {
                reason: reason.to_string(),
                message: None,
            },
            last: None,
            restart_count: 0,
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.state, RunState::Running { ready: true, .. })
    }
}
