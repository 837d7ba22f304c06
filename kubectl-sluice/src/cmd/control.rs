//! `kubectl sluice cancel|suspend|resume FLOWRUN`: merge patches of `spec.cancel` and `spec.suspend`.
//!
//! [`apply`] is the one place that makes the change; the command and the web view ([`crate::ui`]) both call it
//! and only word the outcome differently.

use kube::api::{Patch, PatchParams};
use serde::Serialize;
use serde_json::json;
use sluice_api::{FlowPhase, FlowRun};

use super::{api, get, print};
use crate::kubeconfig::Connection;
use crate::{FIELD_MANAGER, Result};

/// What to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `spec.cancel: true`.
    Cancel,
    /// `spec.suspend: true`.
    Suspend,
    /// `spec.suspend: false`.
    Resume,
}

impl Action {
    /// The spec field and the value it sets.
    pub fn field(self) -> (&'static str, bool) {
        match self {
            Action::Cancel => ("cancel", true),
            Action::Suspend => ("suspend", true),
            Action::Resume => ("suspend", false),
        }
    }

    fn current(self, fr: &FlowRun) -> bool {
        match self {
            Action::Cancel => fr.spec.cancel,
            Action::Suspend | Action::Resume => fr.spec.suspend,
        }
    }
}

/// What [`apply`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The FlowRun.
    pub name: String,
    /// The spec field (`cancel` or `suspend`).
    pub field: &'static str,
    /// Its value before.
    pub from: bool,
    /// Its value now.
    pub to: bool,
    /// Whether a patch was written (false: the field already had the value).
    pub changed: bool,
    /// The run's phase when it had already ended (the change then has no effect on it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<FlowPhase>,
}

impl Outcome {
    /// The line the command prints: `flowrun/NAME: spec.FIELD from → to`, or that it was unchanged.
    pub fn message(&self) -> String {
        let Outcome {
            name, field, to, ..
        } = self;
        if self.changed {
            format!("flowrun/{name}: spec.{field} {} → {to}", self.from)
        } else {
            format!("flowrun/{name}: spec.{field} is already {to} (unchanged)")
        }
    }

    /// A note for a change made to a run that already ended.
    pub fn note(&self) -> Option<String> {
        let phase = self.ended.filter(|_| self.changed)?;
        Some(format!(
            "flowrun {} already ended ({phase:?}); the change has no effect on it",
            self.name
        ))
    }
}

/// Sets the field unless it already has the value.
pub async fn apply(conn: &Connection, name: &str, action: Action) -> Result<Outcome> {
    let fr = get(conn, name).await?;
    let (field, value) = action.field();
    let current = action.current(&fr);
    let phase = fr.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    let outcome = Outcome {
        name: name.to_owned(),
        field,
        from: current,
        to: value,
        changed: current != value,
        ended: phase.is_terminal().then_some(phase),
    };
    if !outcome.changed {
        return Ok(outcome);
    }
    api(conn)
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&json!({ "spec": { field: value } })),
        )
        .await?;
    Ok(outcome)
}

/// Sets the field unless it already has the value, and says what changed.
pub async fn run(conn: &Connection, name: &str, action: Action) -> Result<u8> {
    let outcome = apply(conn, name, action).await?;
    if let Some(note) = outcome.note() {
        eprintln!("note: {note}");
    }
    print(&format!("{}\n", outcome.message()))?;
    Ok(0)
}
