//! The one in-memory copy of each FlowRun: the controllers' reflector stores, shared with the status writer
//! and the start-up loader.
//!
//! Every FlowRun the operator watches is held once, as a [`CachedFlowRun`]: its metadata without what the
//! operator never reads, and its spec and status as compact JSON text. Text is a fraction of the size of the
//! decoded structs (whose many optional fields take room even when empty), and most cached runs are idle:
//! they are decoded only when a reconcile has to decide on them. The controllers reconcile from this cache, a
//! status writer lane with no copy of its own starts from it instead of reading the API, and the loader walks
//! it after a restart. Nothing else keeps a copy of an idle run.

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use futures::future::join_all;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::{Deserialize, Deserializer, Serialize};

use crate::api::{FlowPhase, FlowRun, FlowRunSpec, FlowRunStatus, StepPhase};
use crate::engine::concurrency;

/// A FlowRun as the cache holds it. Deserializing never fails on the spec or status: a run whose body does not
/// decode as a FlowRun is kept with its metadata and the decoder's message, so one bad object cannot stop
/// the watch of all the others.
#[derive(Clone, Debug)]
pub struct CachedFlowRun {
    metadata: ObjectMeta,
    phase: Option<FlowPhase>,
    /// Never decided on, or a step Ready or Running: work a restart must bring back first.
    in_flight: bool,
    /// A run of a FlowTemplate that has not taken its flow yet: the controller resolves it before the
    /// status writer sees it.
    awaits_template: bool,
    /// For a run with `spec.concurrency`: where it stands on its key's slots (boxed: most runs have none).
    slot: Option<Box<SlotView>>,
    body: Body,
}

/// Where a cached run stands on the slots of its concurrency key: what counting the slots needs, without
/// decoding the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotView {
    /// The resolved key: as recorded in `status.concurrency`, or resolved from the spec before that.
    pub key: Box<str>,
    /// Admitted and not finished: it holds one of the key's slots.
    pub holds: bool,
    /// Waiting for a slot: not admitted, and not finished (or finished and asked to retry).
    pub waiting: bool,
}

impl SlotView {
    fn of(fr: &FlowRun) -> Option<Box<Self>> {
        let limit = fr.spec.concurrency.as_ref()?;
        let recorded = fr.status.as_ref().and_then(|s| s.concurrency.as_ref());
        let key = match recorded {
            Some(c) => c.key.clone(),
            None => concurrency::resolve_key(limit, fr.spec.input.as_ref()).ok()?,
        };
        let holds = fr.status.as_ref().is_some_and(concurrency::holds_slot);
        let waiting = concurrency::needs_admission(&fr.spec, fr.status.as_ref());
        Some(Box::new(Self {
            key: key.into_boxed_str(),
            holds,
            waiting,
        }))
    }
}

#[derive(Clone, Debug)]
enum Body {
    /// `{"spec": …, "status": …}` as compact JSON.
    Json(Box<str>),
    /// A finished run: nothing is decided on it until it changes (a retry, its deletion), so only its
    /// metadata and phase are kept, and the rare reconcile that needs more reads it.
    Finished,
    /// Why the object is not a valid FlowRun.
    Undecodable(Box<str>),
}

/// The part of a FlowRun that is kept as text.
#[derive(Serialize, Deserialize)]
struct SpecAndStatus<S, T> {
    spec: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<T>,
}

/// Why a cached FlowRun cannot be decoded from the cache.
#[derive(Debug, thiserror::Error)]
pub enum NotCached {
    /// The run has finished and is kept without its spec and status.
    #[error("the FlowRun has finished: the cache keeps only its metadata and phase")]
    Finished,
    /// The object is not a valid FlowRun.
    #[error("the FlowRun does not decode: {0}")]
    Undecodable(String),
}

impl CachedFlowRun {
    /// Keeps `fr`, compacted.
    pub fn new(mut fr: FlowRun) -> Self {
        compact(&mut fr);
        let phase = fr.status.as_ref().and_then(|s| s.phase);
        let awaits_template = crate::template::awaits_template(&fr.spec);
        let slot = if awaits_template {
            None
        } else {
            SlotView::of(&fr)
        };
        // A run still to take its flow from a template has nothing for the loader: its controller resolves it.
        let in_flight = !awaits_template
            && fr.status.as_ref().is_none_or(|s| {
                s.steps
                    .values()
                    .any(|st| matches!(st.phase, StepPhase::Ready | StepPhase::Running))
            });
        let body = SpecAndStatus {
            spec: &fr.spec,
            status: fr.status.as_ref(),
        };
        // A retry request not acted on yet is the one change a finished run waits for: keep that run whole.
        let retry_pending = fr.spec.retry_request.as_deref().is_some_and(|token| {
            fr.status
                .as_ref()
                .and_then(|s| s.retry.as_ref())
                .is_none_or(|r| r.request != token)
        });
        let body = if phase.is_some_and(|p| p.is_terminal()) && !retry_pending {
            Body::Finished
        } else {
            match serde_json::to_string(&body) {
                Ok(json) => Body::Json(json.into_boxed_str()),
                Err(e) => Body::Undecodable(e.to_string().into_boxed_str()),
            }
        };
        Self {
            metadata: fr.metadata,
            phase,
            in_flight,
            awaits_template,
            slot,
            body,
        }
    }

    /// Where the run stands on its concurrency key's slots, if it has a limit.
    pub fn slot(&self) -> Option<&SlotView> {
        self.slot.as_deref()
    }

    /// The FlowRun, decoded.
    pub fn decode(&self) -> Result<FlowRun, NotCached> {
        match &self.body {
            Body::Json(json) => {
                let body: SpecAndStatus<FlowRunSpec, FlowRunStatus> = serde_json::from_str(json)
                    .map_err(|e| NotCached::Undecodable(e.to_string()))?;
                Ok(FlowRun {
                    metadata: self.metadata.clone(),
                    spec: body.spec,
                    status: body.status,
                })
            }
            Body::Finished => Err(NotCached::Finished),
            Body::Undecodable(why) => Err(NotCached::Undecodable(why.to_string())),
        }
    }

    /// The run's phase.
    pub fn phase(&self) -> Option<FlowPhase> {
        self.phase
    }

    /// Whether the run has (or may have) an attempt queued or running: never decided on, a step Ready or
    /// Running, or an object that does not decode (so its failure is not left for last).
    pub fn has_work_in_flight(&self) -> bool {
        self.in_flight
    }

    /// Whether this is a run of a FlowTemplate that has not taken its flow from the template yet.
    pub fn awaits_template(&self) -> bool {
        self.awaits_template
    }

    /// Whether the run has ended (its phase is terminal).
    pub fn is_finished(&self) -> bool {
        self.phase.is_some_and(|p| p.is_terminal())
    }

    /// Whether this is a finished run kept without its spec and status: nothing is decided on it.
    pub fn is_finished_summary(&self) -> bool {
        matches!(self.body, Body::Finished)
    }

    /// Why the run does not decode, if it does not.
    pub fn undecodable(&self) -> Option<&str> {
        match &self.body {
            Body::Undecodable(why) => Some(why),
            _ => None,
        }
    }

    /// The text a cached run takes besides its metadata, in bytes (what the tests compare sizes with).
    #[cfg(test)]
    fn body_len(&self) -> usize {
        match &self.body {
            Body::Json(s) | Body::Undecodable(s) => s.len(),
            Body::Finished => 0,
        }
    }
}

impl<'de> Deserialize<'de> for CachedFlowRun {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        match serde_json::from_str::<FlowRun>(raw.get()) {
            Ok(fr) => Ok(Self::new(fr)),
            Err(e) => {
                #[derive(Deserialize)]
                struct MetadataOnly {
                    metadata: ObjectMeta,
                }
                #[derive(Deserialize)]
                struct PhaseOnly {
                    status: PhaseOf,
                }
                #[derive(Deserialize)]
                struct PhaseOf {
                    phase: Option<FlowPhase>,
                }
                let mut metadata = serde_json::from_str::<MetadataOnly>(raw.get())
                    .map_err(serde::de::Error::custom)?
                    .metadata;
                compact_metadata(&mut metadata);
                // The phase, if it still reads: a run already failed for not decoding is left alone.
                let phase = serde_json::from_str::<PhaseOnly>(raw.get())
                    .ok()
                    .and_then(|p| p.status.phase);
                Ok(Self {
                    metadata,
                    phase,
                    in_flight: true,
                    awaits_template: false,
                    slot: None,
                    body: Body::Undecodable(e.to_string().into_boxed_str()),
                })
            }
        }
    }
}

impl Resource for CachedFlowRun {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        FlowRun::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        FlowRun::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        FlowRun::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        FlowRun::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The FlowRun stores of the running controllers (one per watched namespace, or one for all).
#[derive(Clone, Default)]
pub struct FlowRunCache {
    stores: Arc<RwLock<Vec<Store<CachedFlowRun>>>>,
}

impl FlowRunCache {
    /// Adds a controller's store.
    pub fn add(&self, store: Store<CachedFlowRun>) {
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

    fn stores(&self) -> Vec<Store<CachedFlowRun>> {
        self.stores
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The cached FlowRun `namespace/name`, if a store holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CachedFlowRun>> {
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
    pub fn all(&self) -> Vec<Arc<CachedFlowRun>> {
        self.stores().iter().flat_map(Store::state).collect()
    }
}

/// Keeps only the metadata the operator reads before a FlowRun is held in memory: its identity and version,
/// generation, timestamps, owner references and finalizers. Dropped: annotations (kubectl's last-applied copy
/// of the whole manifest among them), labels and the entries of `managedFields` (often the larger half of the
/// object), of which one bit stays: an empty list marks a run the API server still tracks field owners of
/// (see [`tracks_fields`]).
pub fn compact(fr: &mut FlowRun) {
    compact_metadata(&mut fr.metadata);
}

/// Whether the API server keeps `metadata.managedFields` for this (compacted) run. The status writer clears
/// them before a run's first status write: for an object written once per step, recording field owners
/// costs the API server more than the step itself (see `docs/design.md`).
pub fn tracks_fields(metadata: &ObjectMeta) -> bool {
    metadata.managed_fields.is_some()
}

fn compact_metadata(metadata: &mut ObjectMeta) {
    let full = std::mem::take(metadata);
    let tracked = full
        .managed_fields
        .is_some_and(|entries| !entries.is_empty());
    *metadata = ObjectMeta {
        managed_fields: tracked.then(Vec::new),
        name: full.name,
        namespace: full.namespace,
        uid: full.uid,
        resource_version: full.resource_version,
        generation: full.generation,
        creation_timestamp: full.creation_timestamp,
        deletion_timestamp: full.deletion_timestamp,
        owner_references: full.owner_references,
        finalizers: full.finalizers,
        ..ObjectMeta::default()
    };
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
        assert_eq!(fr.metadata.managed_fields, Some(Vec::new()));
        assert!(tracks_fields(&fr.metadata));
        assert!(fr.metadata.annotations.is_none());
        assert!(fr.metadata.labels.is_none());
        assert_eq!(
            fr.metadata.resource_version,
            before.metadata.resource_version
        );
        assert_eq!(fr.metadata.generation, before.metadata.generation);
        assert_eq!(fr.metadata.uid, before.metadata.uid);
        assert_eq!(
            fr.metadata.owner_references,
            before.metadata.owner_references
        );
        assert_eq!(fr.spec, before.spec);
        assert_eq!(fr.status, before.status);
    }

    #[test]
    fn a_run_without_field_owners_is_not_marked_as_tracked() {
        for managed in [json!(null), json!([])] {
            let mut fr: FlowRun = serde_json::from_value(json!({
                "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
                "metadata": {"name": "r", "namespace": "ns", "managedFields": managed},
                "spec": {"steps": [{"name": "a", "handler": "h"}]}
            }))
            .unwrap();
            compact(&mut fr);
            assert!(!tracks_fields(&fr.metadata), "managedFields {managed}");
        }
    }

    #[test]
    fn a_cached_run_decodes_to_the_compacted_run() {
        let json = json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "r", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                         "annotations": {"a": "b"}},
            "spec": {"pool": "p", "input": {"n": 1}, "steps": [{"name": "a", "handler": "h"}]},
            "status": {"phase": "Running", "signals": {"go": {"payload": {"ok": true}}}}
        });
        let cached: CachedFlowRun = serde_json::from_value(json.clone()).unwrap();
        let mut expected: FlowRun = serde_json::from_value(json).unwrap();
        compact(&mut expected);
        assert_eq!(cached.decode().unwrap(), expected);
        assert_eq!(cached.phase(), Some(FlowPhase::Running));
        assert!(!cached.is_finished());
        assert_eq!(cached.meta().resource_version.as_deref(), Some("7"));
        assert!(cached.body_len() < serde_json::to_string(&expected).unwrap().len());
    }

    #[test]
    fn a_run_that_does_not_decode_is_kept_with_the_reason() {
        let cached: CachedFlowRun = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "bad", "namespace": "ns", "resourceVersion": "3"},
            "spec": {"steps": "not a list"}
        }))
        .unwrap();
        assert_eq!(cached.meta().name.as_deref(), Some("bad"));
        let err = cached.decode().unwrap_err().to_string();
        assert!(err.contains("steps") || err.contains("sequence"), "{err}");
    }

    #[test]
    fn a_run_that_does_not_decode_fails_that_run_only_in_a_list() {
        // E.g. written under a newer schema than this operator knows: a field of another type.
        let list = json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRunList", "metadata": {},
            "items": [
                {"apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
                 "metadata": {"name": "odd", "namespace": "ns"},
                 "spec": {"steps": [{"name": "a", "handler": 7}]},
                 "status": {"phase": "Running"}},
                {"apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
                 "metadata": {"name": "fine", "namespace": "ns"},
                 "spec": {"steps": [{"name": "a", "handler": "h"}]}}
            ]
        });
        // As the watch decodes a list: one bad item must not fail the others.
        let list: kube::core::ObjectList<CachedFlowRun> =
            serde_json::from_str(&list.to_string()).unwrap();
        let by_name = |n: &str| {
            list.items
                .iter()
                .find(|i| i.meta().name.as_deref() == Some(n))
                .unwrap()
        };
        assert!(by_name("odd").undecodable().is_some());
        assert_eq!(
            by_name("odd").phase(),
            Some(FlowPhase::Running),
            "the phase still reads"
        );
        assert!(by_name("fine").decode().is_ok());
    }

    #[test]
    fn a_finished_run_keeps_only_its_metadata_and_phase() {
        let cached: CachedFlowRun = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "done", "namespace": "ns", "resourceVersion": "9"},
            "spec": {"steps": [{"name": "a", "handler": "h"}]},
            "status": {"phase": "Succeeded", "output": {"big": "x".repeat(1000)}}
        }))
        .unwrap();
        assert!(cached.is_finished());
        assert!(cached.is_finished_summary());
        assert_eq!(cached.body_len(), 0);
        assert!(matches!(cached.decode(), Err(NotCached::Finished)));

        // A retry request not acted on yet keeps the run whole: the engine has to decide on it.
        let retried: CachedFlowRun = serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "done", "namespace": "ns", "resourceVersion": "10"},
            "spec": {"retryRequest": "r1", "steps": [{"name": "a", "handler": "h"}]},
            "status": {"phase": "Failed"}
        }))
        .unwrap();
        assert!(!retried.is_finished_summary());
        assert!(retried.decode().is_ok());
    }
}
