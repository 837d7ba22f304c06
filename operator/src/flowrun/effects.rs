//! What a persisted decision does to the world beyond the FlowRun's own status: child FlowRuns created or
//! cancelled, Kubernetes Events, and the broker's view of queued and running attempts.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use sluice_wire::{FlowRunRef, Task as WireTask, TaskId};
use tracing::warn;

use super::writer::child_outcome;
use crate::api::{FlowRun, FlowRunStatus, StepPhase};
use crate::broker::queue::QueuedTask;
use crate::context::event_recorder;
use crate::engine::{self, Decision, Event, FlowMeta, FlowRunInput, Limits, Note, NoteKind};

/// Label put on child FlowRuns, naming their parent.
pub const PARENT_LABEL: &str = "sluice.dev/parent";

/// Seconds between worker heartbeats: a third of the heartbeat timeout, so two may be lost in a row.
fn heartbeat_interval(timeout: Duration) -> u32 {
    u32::try_from((timeout.as_secs() / 3).max(1)).unwrap_or(u32::MAX)
}

/// The broker's entry for a task the engine queued.
pub fn queued_task(namespace: &str, name: &str, uid: &str, task: &engine::Task) -> QueuedTask {
    QueuedTask {
        task: WireTask {
            id: TaskId::for_run(
                namespace,
                name,
                uid,
                &task.attempt.step,
                task.attempt.instance,
            ),
            attempt: task.attempt.attempt,
            handler: task.handler.clone(),
            input: task.input.clone(),
            deadline: None,
            heartbeat_interval_seconds: heartbeat_interval(task.heartbeat_timeout),
            flow_run: FlowRunRef {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                uid: uid.to_owned(),
            },
            step: task.attempt.step.clone(),
            instance: task.attempt.instance,
        },
        pool: format!("{namespace}/{}", task.pool),
        timeout: task.timeout,
        heartbeat_timeout: task.heartbeat_timeout,
    }
}

/// Attempts the status shows Running on a worker, for the broker to watch their heartbeats (after a restart
/// it learns of them here). The input is not kept in status and not needed: the worker already has it.
pub fn running_attempts(
    namespace: &str,
    name: &str,
    uid: &str,
    fr: &FlowRun,
    status: &FlowRunStatus,
    limits: Limits,
) -> Vec<(QueuedTask, String)> {
    let meta = FlowMeta::of(fr);
    let input = FlowRunInput {
        meta: &meta,
        spec: &fr.spec,
        status,
        limits,
        admission: &engine::NOT_ASKED,
    };
    engine::running_attempts(&input)
        .into_iter()
        .filter_map(|running| {
            let worker = running.worker?;
            Some((queued_task(namespace, name, uid, &running.task), worker))
        })
        .collect()
}

/// Side effects of persisted decisions.
pub struct Effects {
    client: Client,
    recorder: Recorder,
}

impl Effects {
    /// Effects written with `client`, Events reported as `sluice-operator` from `instance`.
    pub fn new(client: Client, instance: Option<String>) -> Self {
        Self {
            recorder: event_recorder(client.clone(), instance),
            client,
        }
    }

    /// `ChildFinished` events for the running `flow` steps whose child FlowRun has ended.
    pub async fn finished_children(&self, fr: &FlowRun, status: &FlowRunStatus) -> Vec<Event> {
        let namespace = fr.namespace().unwrap_or_default();
        let api: Api<FlowRun> = Api::namespaced(self.client.clone(), &namespace);
        let mut events = Vec::new();
        for (step, st) in &status.steps {
            if st.phase != StepPhase::Running {
                continue;
            }
            // The step's own child, then the children of its forEach instances.
            let mut children: Vec<(Option<u32>, &String)> =
                st.child.iter().map(|c| (None, c)).collect();
            if let Some(inst) = &st.instances {
                children.extend(inst.active.iter().filter_map(|(k, one)| {
                    let child = one
                        .child
                        .as_ref()
                        .filter(|_| one.phase == StepPhase::Running)?;
                    Some((Some(k.parse().ok()?), child))
                }));
            }
            for (instance, child) in children {
                match api.get_opt(child).await {
                    Ok(Some(obj)) => {
                        let Some(outcome) = child_outcome(&obj) else {
                            continue;
                        };
                        let (step, child) = (step.clone(), child.clone());
                        events.push(match instance {
                            None => Event::ChildFinished {
                                step,
                                child,
                                outcome,
                            },
                            Some(index) => Event::InstanceChildFinished {
                                step,
                                index,
                                child,
                                outcome,
                            },
                        });
                    }
                    // Not created yet (the create follows the status write) or deleted by hand: the next
                    // decision creates it again, since its name is deterministic.
                    Ok(None) => {}
                    Err(e) => warn!(child = %child, error = %e, "cannot read child FlowRun"),
                }
            }
        }
        events
    }

    /// Creates and cancels children and publishes Events, after the decision's status is persisted.
    pub async fn apply(&self, fr: &FlowRun, decision: &Decision, notes: &[Note]) {
        let namespace = fr.namespace().unwrap_or_default();
        let api: Api<FlowRun> = Api::namespaced(self.client.clone(), &namespace);
        for request in &decision.create_children {
            let child = FlowRun {
                metadata: ObjectMeta {
                    name: Some(request.name.clone()),
                    namespace: Some(namespace.clone()),
                    labels: Some([(PARENT_LABEL.to_owned(), fr.name_any())].into()),
                    owner_references: owner_reference(fr).map(|o| vec![o]),
                    ..ObjectMeta::default()
                },
                spec: request.spec.clone(),
                status: None,
            };
            match api.create(&PostParams::default(), &child).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => warn!(child = %request.name, error = %e, "cannot create child FlowRun"),
            }
        }
        for name in &decision.cancel_children {
            let patch = json!({ "spec": { "cancel": true } });
            if let Err(e) = api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                && !matches!(&e, kube::Error::Api(s) if s.code == 404)
            {
                warn!(child = %name, error = %e, "cannot cancel child FlowRun");
            }
        }
        let reference = fr.object_ref(&());
        for note in notes {
            let event = KubeEvent {
                type_: match note.kind {
                    NoteKind::Normal => EventType::Normal,
                    NoteKind::Warning => EventType::Warning,
                },
                reason: note.reason.to_owned(),
                note: Some(truncate(&note.message, 1000)),
                action: note.step.as_deref().map_or("Flow", |_| "Step").to_owned(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                warn!(reason = note.reason, error = %e, "cannot publish Event");
            }
        }
    }
}

impl Effects {
    /// Publishes a Warning Event on `reference` (for what happens outside a decision).
    pub async fn warn(
        &self,
        reference: k8s_openapi::api::core::v1::ObjectReference,
        reason: &str,
        message: &str,
    ) {
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(truncate(message, 1000)),
            action: "Flow".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            warn!(reason, error = %e, "cannot publish Event");
        }
    }
}

fn owner_reference(fr: &FlowRun) -> Option<OwnerReference> {
    fr.controller_owner_ref(&())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
