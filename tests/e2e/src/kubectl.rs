//! The real kubectl and helm binaries, pointed at this run's cluster.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::OnceLock;

use tokio::io::AsyncWriteExt;

use crate::cluster::{kubeconfig_path, repo_root};
use crate::{HarnessError, Result};

/// Where `tests/scripts/install-tools.sh` puts kubectl, installing it on first use.
pub fn kubectl_path() -> Result<PathBuf> {
    static PATH: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| tool_path("kubectl").map_err(|e| e.to_string()))
        .clone()
        .map_err(|reason| HarnessError::Kubectl {
            args: String::new(),
            reason,
        })
}

/// Where `tests/scripts/install-tools.sh` puts helm, installing it on first use.
pub fn helm_path() -> Result<PathBuf> {
    static PATH: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| tool_path("helm").map_err(|e| e.to_string()))
        .clone()
        .map_err(|reason| HarnessError::Kubectl {
            args: String::new(),
            reason,
        })
}

fn tools_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("sluice/tools")
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let cached = tools_dir().join(name);
    if cached.is_file() {
        return Some(cached);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A tool the tests use (kubectl, helm, hadolint, umoci): from the tools cache dir or PATH, running
/// `tests/scripts/install-tools.sh` first when it is in neither.
pub fn tool_path(name: &str) -> Result<PathBuf> {
    if let Some(path) = find_tool(name) {
        return Ok(path);
    }
    let script = repo_root().join("tests/scripts/install-tools.sh");
    let status = std::process::Command::new("bash")
        .arg(&script)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .map_err(HarnessError::io(format!("running {}", script.display())))?;
    find_tool(name).ok_or_else(|| {
        HarnessError::Process(format!(
            "{} ({status}) did not install {name}; run `make tools` and check its output",
            script.display()
        ))
    })
}

/// A kubectl invocation: `kubectl(["get", "nodes"]).ok().await?` returns its stdout.
pub fn kubectl<I, S>(args: I) -> Kubectl
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    Kubectl {
        tool: Tool::Kubectl,
        args: args.into_iter().map(Into::into).collect(),
        stdin: None,
        env: Vec::new(),
    }
}

/// A helm invocation against this run's cluster, run like [`kubectl`]: `helm(["lint", "charts/sluice"])`.
/// Relative paths are relative to the repository root.
pub fn helm<I, S>(args: I) -> Kubectl
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    Kubectl {
        tool: Tool::Helm,
        args: args.into_iter().map(Into::into).collect(),
        stdin: None,
        env: Vec::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Kubectl,
    Helm,
}

/// A kubectl (or helm) command line, run with `KUBECONFIG` set to this run's cluster.
#[derive(Debug, Clone)]
pub struct Kubectl {
    tool: Tool,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    env: Vec<(OsString, OsString)>,
}

impl Kubectl {
    /// Feeds `input` to kubectl's stdin (e.g. a manifest for `apply -f -`).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Sets an environment variable of kubectl (and of the plugins it runs), e.g. `PATH` for plugin discovery.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    fn display_args(&self) -> String {
        let name = match self.tool {
            Tool::Kubectl => "",
            Tool::Helm => "(helm) ",
        };
        let args = self
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        format!("{name}{args}")
    }

    /// Runs kubectl and returns its output whatever the exit status.
    pub async fn output(self) -> Result<Output> {
        let args = self.display_args();
        let tool = self.tool;
        let (program, kubeconfig) = tokio::task::spawn_blocking(move || {
            let program = match tool {
                Tool::Kubectl => kubectl_path()?,
                Tool::Helm => helm_path()?,
            };
            Ok::<_, HarnessError>((program, kubeconfig_path()?))
        })
        .await
        .map_err(|e| HarnessError::Kubectl {
            args: args.clone(),
            reason: e.to_string(),
        })??;
        let mut child = tokio::process::Command::new(program)
            .args(&self.args)
            .env("KUBECONFIG", kubeconfig)
            .current_dir(repo_root())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(HarnessError::io(format!("spawning kubectl {args}")))?;
        if let (Some(input), Some(mut pipe)) = (self.stdin, child.stdin.take()) {
            pipe.write_all(&input)
                .await
                .map_err(HarnessError::io(format!("writing stdin of kubectl {args}")))?;
        }
        child
            .wait_with_output()
            .await
            .map_err(HarnessError::io(format!("waiting for kubectl {args}")))
    }

    /// Runs kubectl, fails unless it exits 0, and returns its stdout.
    pub async fn ok(self) -> Result<String> {
        let args = self.display_args();
        let output = self.output().await?;
        if !output.status.success() {
            return Err(HarnessError::Kubectl {
                args,
                reason: format!(
                    "{}; stderr: {}; stdout: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim(),
                    String::from_utf8_lossy(&output.stdout).trim()
                ),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}
