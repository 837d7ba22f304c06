//! The project's Python environment for tests that run Python workers and clients: the venv that
//! `tests/scripts/python-venv.sh` makes (outside the repository, hash-pinned packages, the `sluice` package of
//! `worker-image/python` installed), made or refreshed once per test process.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use crate::{HarnessError, Result, repo_root};

/// The venv's directory (made or refreshed on first use in this process).
pub async fn python_venv() -> Result<PathBuf> {
    static VENV: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let venv = tokio::task::spawn_blocking(|| {
        VENV.get_or_init(|| make_venv().map_err(|e| e.to_string()))
            .clone()
    })
    .await
    .map_err(|e| HarnessError::Build(e.to_string()))?;
    venv.map_err(HarnessError::Build)
}

/// The venv's Python interpreter.
pub async fn python() -> Result<PathBuf> {
    Ok(python_venv().await?.join("bin/python"))
}

fn make_venv() -> Result<PathBuf> {
    let script = repo_root().join("tests/scripts/python-venv.sh");
    let output = std::process::Command::new(&script)
        .stdin(Stdio::null())
        .output()
        .map_err(HarnessError::io(format!("running {}", script.display())))?;
    if !output.status.success() {
        return Err(HarnessError::Build(format!(
            "{}: {}\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let dir = stdout
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| HarnessError::Build(format!("{} printed no venv path", script.display())))?;
    Ok(PathBuf::from(dir))
}
