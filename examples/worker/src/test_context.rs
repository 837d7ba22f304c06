//! A step context for the handlers' unit tests: one task of a fixed FlowRun, detached from any broker.

use serde_json::Value;
use sluice_worker::StepContext;
use sluice_worker::wire::{FlowRunRef, Task, TaskId};

/// The context of attempt `attempt` of handler `handler`, as worker `worker` would see it.
pub fn context(attempt: u32, handler: &str, worker: &str) -> StepContext {
    let task = Task {
        id: TaskId::from_parts("ns", "flow", "step", None),
        attempt,
        handler: handler.into(),
        input: Value::Null,
        deadline: None,
        heartbeat_interval_seconds: 5,
        flow_run: FlowRunRef {
            namespace: "ns".into(),
            name: "flow".into(),
            uid: "u".into(),
        },
        step: "step".into(),
        instance: None,
    };
    StepContext::detached(&task, worker)
}
