//! The operator installed by the real chart: `helm install charts/sluice` into a test namespace, its pod run by
//! the process kubelet from the operator binary of this checkout, and `helm uninstall` when the test is done
//! (also on drop, so that cluster-scoped objects such as the external metrics `APIService` never outlive a
//! failed test — an `APIService` without a backend breaks discovery for every other test).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::{
    HarnessError, Result, TestNamespace, build_binaries, free_port, helm, pod_log, wait_for_list,
};

/// The chart, relative to the repository root.
pub const CHART: &str = "charts/sluice";
/// The image tag `tests/kubelet/images.yaml` maps to this checkout's operator binary.
pub const OPERATOR_IMAGE_TAG: &str = "dev";
/// Pod annotation of the process kubelet: report a non-loopback address of this machine as the pod's IP, so
/// that Service endpoints (which may not be loopback addresses) can lead to it.
pub const HOST_POD_IP_ANNOTATION: &str = "sluice.dev/kubelet-pod-ip";

/// A Helm release of the chart in a test namespace, named like the namespace (so its cluster-scoped objects are
/// unique too).
pub struct HelmRelease {
    name: String,
    namespace: String,
    pod: String,
    broker_url: String,
    installed: bool,
}

/// Whether the pod's Ready condition is true.
pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `overlay` merged into `base`: objects key by key, anything else replaced.
pub fn merge_values(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                merge_values(base.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

impl HelmRelease {
    /// Installs the chart into `ns`, watching `ns` only, with the operator image of this checkout on free
    /// loopback ports and `values` merged over that, then waits (bounded) for a Ready operator pod.
    pub async fn install(ns: &TestNamespace, values: &Value) -> Result<Self> {
        build_binaries().await?;
        let broker = free_port()?;
        let health = free_port()?;
        let broker_url = format!("http://127.0.0.1:{broker}");
        let mut all = json!({
            "image": {"tag": OPERATOR_IMAGE_TAG},
            "watchNamespaces": [ns.name()],
            "broker": {"port": broker, "bindAddress": "127.0.0.1"},
            "health": {"port": health, "bindAddress": "127.0.0.1"},
            "brokerUrl": broker_url,
            "logFormat": "text",
            "logLevel": "info,sluice_operator=debug",
            // The process kubelet restarts a crashed operator after 500 ms instead of 10 s.
            "podAnnotations": {"sluice.dev/kubelet-backoff-base": "500ms"},
        });
        merge_values(&mut all, values);
        let file = ns.scratch_dir().join("values.json");
        std::fs::write(&file, all.to_string())
            .map_err(HarnessError::io(format!("writing {}", file.display())))?;
        let name = ns.name().to_owned();
        let args: Vec<std::ffi::OsString> = vec![
            "install".into(),
            name.clone().into(),
            CHART.into(),
            "--namespace".into(),
            ns.name().into(),
            "-f".into(),
            file.into_os_string(),
        ];
        let installed = helm(args).ok().await?;
        if !installed.contains("STATUS: deployed") {
            return Err(HarnessError::Process(format!("helm install: {installed}")));
        }
        let mut release = Self {
            name,
            namespace: ns.name().to_owned(),
            pod: String::new(),
            broker_url,
            installed: true,
        };
        release.pod = release.wait_ready(ns).await?;
        Ok(release)
    }

    async fn wait_ready(&self, ns: &TestNamespace) -> Result<String> {
        let pods: Api<Pod> = ns.api();
        let ready = wait_for_list(
            &pods,
            watcher::Config::default().labels(&self.selector()),
            |pods: &[Pod]| pods.iter().any(pod_is_ready),
            Duration::from_secs(120),
            "the operator pod to be Ready",
        )
        .await;
        match ready {
            Ok(pods) => pods
                .into_iter()
                .find(pod_is_ready)
                .and_then(|p| p.metadata.name)
                .ok_or_else(|| HarnessError::Process("a Ready pod without a name".into())),
            Err(e) => {
                let names: Vec<String> = pods
                    .list(&Default::default())
                    .await
                    .map(|l| {
                        l.items
                            .into_iter()
                            .filter_map(|p| p.metadata.name)
                            .collect()
                    })
                    .unwrap_or_default();
                let logs: Vec<String> = names
                    .iter()
                    .map(|p| format!("{p}:\n{}", pod_log(ns.name(), p, "operator")))
                    .collect();
                Err(HarnessError::Process(format!(
                    "{e}\noperator logs:\n{}",
                    logs.join("\n")
                )))
            }
        }
    }

    /// The release name (also the Deployment's and the Lease's).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The label selector of the operator pods.
    pub fn selector(&self) -> String {
        format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/name=sluice",
            self.name
        )
    }

    /// The operator pod that turned Ready first.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// The broker's URL as worker pods reach it.
    pub fn broker_url(&self) -> &str {
        &self.broker_url
    }

    /// The operator pod's log so far.
    pub fn log(&self) -> String {
        pod_log(&self.namespace, &self.pod, "operator")
    }

    /// `helm uninstall --wait`.
    pub async fn uninstall(mut self) -> Result<()> {
        self.installed = false;
        helm([
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--wait",
            "--timeout",
            "120s",
        ])
        .ok()
        .await?;
        Ok(())
    }
}

impl Drop for HelmRelease {
    fn drop(&mut self) {
        if !self.installed {
            return;
        }
        // Drop cannot await: the helm binary, synchronously.
        if let Ok(helm) = crate::helm_path() {
            let _ = std::process::Command::new(helm)
                .args(["uninstall", &self.name, "--namespace", &self.namespace])
                .env("KUBECONFIG", crate::kubeconfig_path().unwrap_or_default())
                .output();
        }
    }
}
