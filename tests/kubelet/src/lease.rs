//! The node's Lease in `kube-node-lease`, renewed on every heartbeat.

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};

pub const NAMESPACE: &str = "kube-node-lease";
/// A kubelet's lease duration.
pub const DURATION_SECONDS: i32 = 40;

/// Errors renewing the lease.
#[derive(Debug, thiserror::Error)]
#[error("{action} lease {NAMESPACE}/{node}: {source}")]
pub struct LeaseError {
    action: &'static str,
    node: String,
    #[source]
    source: kube::Error,
}

/// The lease of `node` (owned by the Node, so it goes when the Node goes).
pub fn lease_object(node: &Node, now: Timestamp) -> Lease {
    let name = node.metadata.name.clone().unwrap_or_default();
    Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(NAMESPACE.into()),
            owner_references: node.metadata.uid.clone().map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".into(),
                    kind: "Node".into(),
                    name: name.clone(),
                    uid,
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name),
            lease_duration_seconds: Some(DURATION_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    }
}

/// Renews the lease, creating it when missing.
pub async fn renew(client: &Client, node: &Node) -> Result<(), LeaseError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let now = Timestamp::now();
    let err = |action| {
        let node = name.clone();
        move |source| LeaseError {
            action,
            node,
            source,
        }
    };
    let patch =
        serde_json::json!({ "spec": { "holderIdentity": name, "renewTime": MicroTime(now) } });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            match api
                .create(&PostParams::default(), &lease_object(node, now))
                .await
            {
                Ok(_) => {
                    tracing::info!(node = %name, "node lease created");
                    Ok(())
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                Err(e) => Err(err("creating")(e)),
            }
        }
        Err(e) => Err(err("renewing")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_held_by_and_owned_by_the_node() {
        let mut node = crate::node::node_object("n1");
        node.metadata.uid = Some("u".into());
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let lease = lease_object(&node, now);
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));
        assert_eq!(lease.metadata.namespace.as_deref(), Some(NAMESPACE));
        assert_eq!(lease.metadata.owner_references.unwrap()[0].kind, "Node");
    }
}
