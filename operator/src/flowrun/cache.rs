//! The one in-memory copy of each FlowRun: the controllers' reflector stores, shared with the status writer
//! and the start-up loader.
//!
//! Every FlowRun the operator watches is held once, compacted (see [`compact`]): the controllers reconcile
//! from it, a status writer lane with no copy of its own starts from it instead of reading the API, and the
//! loader walks it after a restart. Nothing else keeps a copy of an idle run.

use std::sync::{Arc, RwLock};

use futures::future::join_all;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::FlowRun;

/// The FlowRun stores of the running controllers (one per watched namespace, or one for all).
#[derive(Clone, Default)]
pub struct FlowRunCache {
    stores: Arc<RwLock<Vec<Store<FlowRun>>>>,
}

impl FlowRunCache {
    /// Adds a controller's store.
    pub fn add(&self, store: Store<FlowRun>) {
        self.stores
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(store);
    }

    /// Drops every store (the controllers stopped: their copies would go stale).
    pub fn clear(&self) {
        self.stores
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn stores(&self) -> Vec<Store<FlowRun>> {
        self.stores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The cached FlowRun `namespace/name`, if a store holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<FlowRun>> {
        let key = ObjectRef::new(name).within(namespace);
        self.stores().iter().find_map(|store| store.get(&key))
    }

    /// Waits until every store added so far has its initial list.
    pub async fn wait_until_ready(&self) {
        join_all(self.stores().into_iter().map(|store| async move {
            // An error means the store's writer was dropped (the controller stopped): nothing to wait for.
            let _ = store.wait_until_ready().await;
        }))
        .await;
    }

    /// Every cached FlowRun.
    pub fn all(&self) -> Vec<Arc<FlowRun>> {
        self.stores().iter().flat_map(Store::state).collect()
    }
}

/// Drops what the operator never reads before a FlowRun is kept in memory: `managedFields` (often the larger
/// half of the object) and the annotations (kubectl's last-applied copy of the whole manifest among them).
pub fn compact(fr: &mut FlowRun) {
    fr.metadata.managed_fields = None;
    fr.metadata.annotations = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compaction_keeps_what_the_engine_and_writer_read() {
        let mut fr: FlowRun = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {
                "name": "r", "namespace": "ns", "uid": "u", "generation": 2, "resourceVersion": "7",
                "labels": {"sluice.dev/parent": "p"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "managedFields": [{"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {}}],
                "ownerReferences": [{"apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun", "name": "p", "uid": "pu"}]
            },
            "spec": {"steps": [{"name": "a", "handler": "h"}]},
            "status": {"signals": {"go": {"payload": {"ok": true}}}}
        }))
        .unwrap();
        let before = fr.clone();
        compact(&mut fr);
        assert!(fr.metadata.managed_fields.is_none());
        assert!(fr.metadata.annotations.is_none());
        assert_eq!(fr.metadata.resource_version, before.metadata.resource_version);
        assert_eq!(fr.metadata.generation, before.metadata.generation);
        assert_eq!(fr.metadata.uid, before.metadata.uid);
        assert_eq!(fr.metadata.labels, before.metadata.labels);
        assert_eq!(fr.metadata.owner_references, before.metadata.owner_references);
        assert_eq!(fr.spec, before.spec);
        assert_eq!(fr.status, before.status);
    }
}
