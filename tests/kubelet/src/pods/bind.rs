//! The scheduler of a one-node cluster: binds every pod without a node to this one.

use std::pin::pin;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};

/// Watches unscheduled pods and binds them to `node_name` (the binding subresource), until the stream ends.
pub async fn run(client: Client, node_name: String) {
    let api: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default().fields("spec.nodeName=");
    let mut events = pin!(watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Apply(pod) | Event::InitApply(pod)) => bind(&client, &node_name, &pod).await,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "unscheduled-pod watch failed; retrying"),
        }
    }
}

fn wants_binding(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && spec.is_some_and(|s| s.node_name.as_deref().unwrap_or_default().is_empty())
        && spec.is_none_or(|s| s.scheduling_gates.as_ref().is_none_or(Vec::is_empty))
}

async fn bind(client: &Client, node_name: &str, pod: &Pod) {
    if !wants_binding(pod) {
        return;
    }
    let (Some(ns), Some(name)) = (
        pod.metadata.namespace.as_deref(),
        pod.metadata.name.as_deref(),
    ) else {
        return;
    };
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node_name.to_string()),
            ..ObjectReference::default()
        },
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    match api
        .create_subresource::<_, serde_json::Value>(
            "binding",
            name,
            &PostParams::default(),
            &binding,
        )
        .await
    {
        Ok(_) => tracing::info!(pod = %format!("{ns}/{name}"), node = node_name, "bound"),
        // Bound meanwhile, or deleted.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
        Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "binding"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSchedulingGate, PodSpec};

    #[test]
    fn only_live_ungated_unbound_pods_are_bound() {
        let pod = |node: Option<&str>, gated: bool| Pod {
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                scheduling_gates: gated.then(|| vec![PodSchedulingGate { name: "g".into() }]),
                ..PodSpec::default()
            }),
            ..Pod::default()
        };
        assert!(wants_binding(&pod(None, false)));
        assert!(wants_binding(&pod(Some(""), false)));
        assert!(!wants_binding(&pod(Some("n"), false)));
        assert!(!wants_binding(&pod(None, true)));
    }
}
