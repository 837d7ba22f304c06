//! Runs of a FlowTemplate: the step of a FlowRun's reconcile that comes before the status writer. A run
//! with `spec.templateRef` and no steps yet takes its flow from the template here, once; from then on it is an
//! ordinary FlowRun and this step lets it through.
//!
//! Taking the flow costs two writes, in this order, each fenced by the resourceVersion it was decided on:
//! 1. `status.template` (which template version), through the status subresource;
//! 2. the template's flow into the run's spec (a merge patch of steps, onExit, output, input and the pool,
//!    defaults and deadline the run does not set).
//!
//! The FlowRun CRD allows steps next to `templateRef` only once `status.template` is recorded, which is why
//! it is written first. A crash between the two leaves a run with `status.template` and no steps, which the
//! next reconcile resolves again (nothing has run yet, so taking a newer template version then is harmless).
//! A run whose input does not match the declared inputs is marked Failed with reason InvalidInput (or
//! InvalidTemplate for a template whose default does not match its type) and a Warning Event. A template that
//! does not exist is waited for [`TEMPLATE_WAIT`] after the run's creation (a template and its run applied
//! together may arrive in either order), then the run fails with reason TemplateNotFound.

use std::time::Duration;

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::Error;
use crate::api::{FlowRun, FlowTemplate, TemplateSource};
use crate::context::FIELD_MANAGER;
use crate::template::{self, TEMPLATE_NOT_FOUND, TemplateError};

/// How long after its creation a run waits for a template that does not exist yet.
pub const TEMPLATE_WAIT: Duration = Duration::from_secs(30);
/// How often a run waiting for its template looks again.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// Resolves runs of FlowTemplates for the FlowRun controller.
pub struct TemplateResolver {
    client: Client,
    recorder: Recorder,
}

impl TemplateResolver {
    /// Reads templates and writes runs with `client`; Events are published through `recorder`.
    pub fn new(client: Client, recorder: Recorder) -> Self {
        Self { client, recorder }
    }

    /// Takes the flow of `fr`'s template into `fr` (which [`template::awaits_template`]), or fails the run.
    /// Returns when to look at the run again: nothing to do after a write (its watch event brings the next
    /// reconcile), a short requeue while the template is awaited.
    pub async fn resolve(&self, fr: &FlowRun, now: Timestamp) -> Result<Action, Error> {
        let Some(reference) = &fr.spec.template_ref else {
            return Ok(Action::await_change());
        };
        let namespace = fr.namespace().unwrap_or_default();
        let templates: Api<FlowTemplate> = Api::namespaced(self.client.clone(), &namespace);
        let Some(template) = templates.get_opt(&reference.name).await? else {
            let age = fr
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| Duration::try_from(now.duration_since(t.0)).unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::MAX);
            if age < TEMPLATE_WAIT {
                info!(template = %reference.name, "FlowTemplate not found yet; looking again");
                return Ok(Action::requeue(RETRY_EVERY));
            }
            let message = format!(
                "FlowTemplate {} does not exist in namespace {namespace} (waited {}s after the run was created): create it, then create the run again",
                reference.name,
                TEMPLATE_WAIT.as_secs()
            );
            return self.fail(fr, TEMPLATE_NOT_FOUND, &message, None, now).await;
        };
        let resolved = match template::resolve(&fr.spec, &template) {
            Ok(r) => r,
            Err(e) => {
                let source = template::source_of(&template);
                return self
                    .fail(fr, e.reason(), &message_of(&e), Some(source), now)
                    .await;
            }
        };
        let api: Api<FlowRun> = Api::namespaced(self.client.clone(), &namespace);
        let params = PatchParams::apply(FIELD_MANAGER);
        let status = json!({
            "metadata": {"resourceVersion": fr.metadata.resource_version},
            "status": {"template": resolved.source},
        });
        let written = match api
            .patch_status(&fr.name_any(), &params, &Patch::Merge(&status))
            .await
        {
            Ok(written) => written,
            // A newer version exists (our cache lags, or someone wrote): its watch event brings the next look.
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        };
        let mut spec = template::spec_patch(&resolved.spec);
        spec["metadata"] = json!({"resourceVersion": written.metadata.resource_version});
        match api
            .patch(&fr.name_any(), &params, &Patch::Merge(&spec))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
        info!(
            template = %resolved.source.name,
            resource_version = %resolved.source.resource_version,
            "took the flow of its FlowTemplate"
        );
        Ok(Action::await_change())
    }

    /// Marks the run Failed with `reason` in its `Ready` and `Succeeded` conditions (and `Invalid` for input
    /// or template problems), records the template when there is one, and publishes a Warning Event.
    async fn fail(
        &self,
        fr: &FlowRun,
        reason: &str,
        message: &str,
        source: Option<TemplateSource>,
        now: Timestamp,
    ) -> Result<Action, Error> {
        warn!(
            reason,
            message, "FlowRun of a FlowTemplate cannot start: marking it Failed"
        );
        let generation = fr.metadata.generation;
        let now = Timestamp::from_second(now.as_second())
            .unwrap_or(now)
            .to_string();
        let condition = |type_: &str, status: &str| {
            json!({"type": type_, "status": status, "reason": reason, "message": message,
                   "lastTransitionTime": now, "observedGeneration": generation})
        };
        let mut conditions = vec![condition("Ready", "False"), condition("Succeeded", "False")];
        if reason != TEMPLATE_NOT_FOUND {
            conditions.push(condition("Invalid", "True"));
        }
        let mut status = json!({
            "phase": "Failed",
            "finishedAt": now,
            "observedGeneration": generation,
            "conditions": conditions,
        });
        if let Some(source) = source {
            status["template"] = json!(source);
        }
        let patch = json!({
            "metadata": {"resourceVersion": fr.metadata.resource_version},
            "status": status,
        });
        let api: Api<FlowRun> =
            Api::namespaced(self.client.clone(), &fr.namespace().unwrap_or_default());
        match api
            .patch_status(
                &fr.name_any(),
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(sluice_wire::truncate_message(message, 1000)),
            action: "Flow".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &fr.object_ref(&())).await {
            warn!(reason, error = %e, "cannot publish Event");
        }
        Ok(Action::await_change())
    }
}

/// The message of a run's condition: what is wrong, and how to fix it.
fn message_of(e: &TemplateError) -> String {
    match e {
        TemplateError::InvalidInput(_) => format!(
            "{e} (fix spec.templateRef.input and create the run again; the FlowTemplate's spec.inputs declares what it takes)"
        ),
        TemplateError::InvalidTemplate(_) => {
            format!("{e} (fix the FlowTemplate, then create the run again)")
        }
    }
}
