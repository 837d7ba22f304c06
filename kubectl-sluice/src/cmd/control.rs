//! `kubectl sluice cancel|suspend|resume FLOWRUN`: merge patches of `spec.cancel` and `spec.suspend`.

use kube::api::{Patch, PatchParams};
use serde_json::json;
use sluice_api::FlowRun;

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

/// Sets the field unless it already has the value, and says what changed.
pub async fn run(conn: &Connection, name: &str, action: Action) -> Result<u8> {
    let fr = get(conn, name).await?;
    let (field, value) = action.field();
    let current = action.current(&fr);
    if current == value {
        print(&format!(
            "flowrun/{name}: spec.{field} is already {value} (unchanged)\n"
        ))?;
        return Ok(0);
    }
    let phase = fr.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    if phase.is_terminal() {
        eprintln!("note: flowrun {name} already ended ({phase:?}); the change has no effect on it");
    }
    api(conn)
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&json!({ "spec": { field: value } })),
        )
        .await?;
    print(&format!(
        "flowrun/{name}: spec.{field} {current} → {value}\n"
    ))?;
    Ok(0)
}
