//! The Node object: registration and the Ready heartbeat.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};

/// The Kubernetes version this kubelet reports.
pub const KUBELET_VERSION: &str = "v1.36.0-sluice";
/// Pods the node accepts.
pub const MAX_PODS: u32 = 110;

/// Errors registering or updating the Node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{action} node {node}: {source}")]
    Api {
        action: &'static str,
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// CPUs of this machine.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Memory of this machine in bytes (from /proc/meminfo; 4 GiB if unreadable).
pub fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(4 << 30, |kib| kib * 1024)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The Node as registered.
pub fn node_object(name: &str) -> Node {
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch()),
        ("sluice.dev/process-kubelet", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The Node's status: capacity, addresses, info, and Ready since `ready_since`, heartbeat `now`.
pub fn node_status(name: &str, ready_since: Timestamp, now: Timestamp) -> NodeStatus {
    let resources: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity(cpu_count().to_string())),
        (
            "memory".to_string(),
            Quantity(format!("{}Ki", memory_bytes() / 1024)),
        ),
        ("pods".to_string(), Quantity(MAX_PODS.to_string())),
        (
            "ephemeral-storage".to_string(),
            Quantity("100Gi".to_string()),
        ),
    ]
    .into();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(ready_since)),
    };
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(vec![
            condition(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            condition(
                "Ready",
                "True",
                "KubeletReady",
                "sluice-kubelet is posting ready status",
            ),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: "127.0.0.1".into(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: name.to_string(),
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: arch().into(),
            operating_system: "linux".into(),
            os_image: "sluice process kubelet".into(),
            kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
            kubelet_version: KUBELET_VERSION.into(),
            kube_proxy_version: String::new(),
            container_runtime_version: format!("sluice://{}", env!("CARGO_PKG_VERSION")),
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            system_uuid: String::new(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Creates the Node if it does not exist (an existing one is reused) and writes its status.
pub async fn register(
    client: &Client,
    name: &str,
    ready_since: Timestamp,
) -> Result<Node, NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    match api.create(&PostParams::default(), &node_object(name)).await {
        Ok(_) => tracing::info!(node = name, "node registered"),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            tracing::info!(node = name, "node exists; reusing it")
        }
        Err(source) => {
            return Err(NodeError::Api {
                action: "creating",
                node: name.into(),
                source,
            });
        }
    }
    heartbeat(client, name, ready_since).await
}

/// Writes the Node's status with a fresh heartbeat.
pub async fn heartbeat(
    client: &Client,
    name: &str,
    ready_since: Timestamp,
) -> Result<Node, NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({ "status": node_status(name, ready_since, Timestamp::now()) });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| NodeError::Api {
            action: "updating the status of",
            node: name.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_ready_with_capacity_and_loopback_address() {
        let since = Timestamp::from_second(1_700_000_000).unwrap();
        let now = Timestamp::from_second(1_700_000_100).unwrap();
        let s = node_status("sluice-local", since, now);
        let ready = s
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(ready.last_heartbeat_time, Some(Time(now)));
        assert_eq!(ready.last_transition_time, Some(Time(since)));
        let cap = s.capacity.as_ref().unwrap();
        assert!(cap.get("cpu").unwrap().0.parse::<usize>().unwrap() >= 1);
        assert!(cap.get("memory").unwrap().0.ends_with("Ki"));
        assert_eq!(cap.get("pods").unwrap().0, "110");
        assert_eq!(s.allocatable, s.capacity);
        assert_eq!(s.addresses.as_ref().unwrap()[0].address, "127.0.0.1");
        assert_eq!(
            s.node_info.as_ref().unwrap().kubelet_version,
            KUBELET_VERSION
        );
        assert!(memory_bytes() > 0);
    }
}
