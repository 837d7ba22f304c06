//! The per-pod directory under the state dir.
//!
//! ```text
//! <state>/pods/<namespace>_<name>/
//!   <container>.log        stdout and stderr of every run, appended
//!   work/                  working directory of the pod's processes
//!   volumes/<volume>/      the files of each volume
//!   roots/<container>/     the container's volume root: <mountPath> links to its volume
//!   roots/<container>.kubeconfig   the container's in-cluster kubeconfig (with a service-account volume)
//! ```

use std::path::{Path, PathBuf};

/// Paths of one pod.
#[derive(Debug, Clone)]
pub struct PodDir {
    root: PathBuf,
}

impl PodDir {
    pub fn new(state_dir: &Path, namespace: &str, name: &str) -> Self {
        Self {
            root: state_dir.join("pods").join(format!("{namespace}_{name}")),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn log(&self, container: &str) -> PathBuf {
        self.root.join(format!("{container}.log"))
    }

    pub fn work(&self) -> PathBuf {
        self.root.join("work")
    }

    pub fn volumes(&self) -> PathBuf {
        self.root.join("volumes")
    }

    pub fn container_root(&self, container: &str) -> PathBuf {
        self.root.join("roots").join(container)
    }

    /// The kubeconfig a container with a service-account volume is given (see `incluster`).
    pub fn kubeconfig(&self, container: &str) -> PathBuf {
        self.root
            .join("roots")
            .join(format!("{container}.kubeconfig"))
    }

    /// Creates the directory for the pod `uid`; what a previous pod of the same name left (except its logs) is
    /// removed.
    pub fn prepare(&self, uid: &str) -> std::io::Result<()> {
        let marker = self.root.join(".uid");
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(uid) {
            for dir in [self.work(), self.volumes(), self.root.join("roots")] {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        std::fs::create_dir_all(self.work())?;
        std::fs::create_dir_all(self.volumes())?;
        std::fs::write(marker, uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_uid_clears_the_previous_pods_files_but_not_logs() {
        let state =
            std::env::temp_dir().join(format!("sluice-kubelet-dirs-{}", std::process::id()));
        let dir = PodDir::new(&state, "ns", "p");
        dir.prepare("u1").unwrap();
        std::fs::write(dir.work().join("f"), "x").unwrap();
        std::fs::write(dir.log("c"), "log").unwrap();
        dir.prepare("u1").unwrap();
        assert!(dir.work().join("f").exists());
        dir.prepare("u2").unwrap();
        assert!(!dir.work().join("f").exists());
        assert!(dir.log("c").exists());
        assert_eq!(dir.root(), state.join("pods/ns_p"));
        std::fs::remove_dir_all(state).unwrap();
    }
}
