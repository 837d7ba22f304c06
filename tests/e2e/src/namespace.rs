//! A namespace (and a scratch dir) per test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::cluster::{client_for, cluster, kubeconfig_path};
use crate::{HarnessError, Result, wait_for};

/// Label set on every namespace the harness creates, so leftovers are easy to find.
pub const E2E_LABEL: &str = "sluice.dev/e2e";

/// A namespace of its own for one test, plus a scratch dir on the local disk for files the test's processes
/// write. Both go away on [`TestNamespace::cleanup`] or on drop (set `SLUICE_E2E_KEEP=1` to keep them for
/// debugging).
pub struct TestNamespace {
    name: String,
    client: Client,
    scratch: PathBuf,
    done: bool,
}

impl TestNamespace {
    /// Creates a namespace named `<prefix>-<unique suffix>` and waits for its `default` ServiceAccount (pods
    /// cannot be created before it exists).
    pub async fn new(prefix: &str) -> Result<Self> {
        let client = cluster().await?;
        let name = unique_name(prefix);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(E2E_LABEL.to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .map_err(HarnessError::kube(format!("creating namespace {name}")))?;
        let scratch = std::env::temp_dir().join("sluice-e2e").join(&name);
        std::fs::create_dir_all(&scratch)
            .map_err(HarnessError::io(format!("creating {}", scratch.display())))?;
        let this = Self {
            name,
            client,
            scratch,
            done: false,
        };
        let sas: Api<ServiceAccount> = this.api();
        wait_for(
            &sas,
            "default",
            |sa: Option<&ServiceAccount>| sa.is_some(),
            Duration::from_secs(60),
            &format!("the default ServiceAccount of namespace {}", this.name),
        )
        .await?;
        Ok(this)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A client for the cluster.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// An API for a namespaced kind in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// A local directory for this test only (processes of its pods may write here).
    pub fn scratch_dir(&self) -> &Path {
        &self.scratch
    }

    /// Deletes the namespace (without waiting for its finalization) and the scratch dir.
    pub async fn cleanup(mut self) -> Result<()> {
        self.done = true;
        if keep() {
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
        delete_namespace(self.client.clone(), &self.name).await
    }
}

fn keep() -> bool {
    std::env::var_os("SLUICE_E2E_KEEP").is_some_and(|v| v == "1")
}

async fn delete_namespace(client: Client, name: &str) -> Result<()> {
    let namespaces: Api<Namespace> = Api::all(client);
    match namespaces.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(HarnessError::kube(format!("deleting namespace {name}"))(e)),
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.done || keep() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.scratch);
        // The test's runtime may be shutting down (a panic): delete from a thread with a runtime of its own.
        let name = self.name.clone();
        let joined = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = client_for(&kubeconfig_path()?).await?;
                delete_namespace(client, &name).await
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if let Ok(Err(e)) = joined {
            eprintln!("sluice-e2e: could not delete namespace {}: {e}", self.name);
        }
    }
}

/// `<prefix>-<pid><counter><time>` in base 36, lower-case and at most 63 characters.
fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000)
        .unwrap_or_default();
    let suffix = format!(
        "{}{}{}",
        base36(u128::from(std::process::id())),
        base36(u128::from(COUNTER.fetch_add(1, Ordering::Relaxed))),
        base36(nanos)
    );
    let keep = 62usize.saturating_sub(suffix.len()).min(prefix.len());
    let prefix = prefix[..keep].trim_matches('-');
    if prefix.is_empty() {
        format!("t{suffix}")
    } else {
        format!("{prefix}-{suffix}")
    }
}

fn base36(mut n: u128) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_dns_labels() {
        let a = unique_name("Kubelet_Test");
        let b = unique_name("Kubelet_Test");
        assert_ne!(a, b);
        for n in [&a, &b, &unique_name(&"x".repeat(100)), &unique_name("--")] {
            assert!(n.len() <= 63, "{n}");
            assert!(n.starts_with(|c: char| c.is_ascii_alphanumeric()), "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{n}"
            );
        }
        assert!(a.starts_with("kubelet-test-"), "{a}");
    }
}
