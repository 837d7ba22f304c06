//! Where the broker sends what workers report: the FlowRun status writer. The broker acknowledges a worker only
//! after the sink says the report is persisted (invariant 2), and learns from it whether the report was fenced.

use futures::future::BoxFuture;
use sluice_wire::{TaskError, TaskId};

/// Which FlowRun step (or forEach instance) a task is, decoded from its id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TaskRef {
    /// The FlowRun's namespace.
    pub namespace: String,
    /// The FlowRun's name.
    pub flow_run: String,
    /// The step's name.
    pub step: String,
    /// The forEach instance, if any.
    pub instance: Option<u32>,
    /// The FlowRun's UID, telling it from a deleted run of the same name; `None` in ids of the older form, which
    /// the sink cannot check.
    pub uid: Option<String>,
}

impl TaskRef {
    /// Decodes the broker's own `namespace/flowrun/step[/index][@uid]` task ids.
    pub fn parse(id: &TaskId) -> Option<Self> {
        let (path, uid) = match id.as_str().rsplit_once('@') {
            Some((path, uid)) if !uid.is_empty() && !uid.contains('/') => {
                (path, Some(uid.to_owned()))
            }
            Some(_) => return None,
            None => (id.as_str(), None),
        };
        let mut parts = path.split('/');
        let namespace = parts.next().filter(|s| !s.is_empty())?.to_owned();
        let flow_run = parts.next().filter(|s| !s.is_empty())?.to_owned();
        let step = parts.next().filter(|s| !s.is_empty())?.to_owned();
        let instance = match parts.next() {
            Some(index) => Some(index.parse().ok()?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            namespace,
            flow_run,
            step,
            instance,
            uid,
        })
    }

    /// The task id of this step or instance.
    pub fn id(&self) -> TaskId {
        TaskId::for_run(
            &self.namespace,
            &self.flow_run,
            self.uid.as_deref().unwrap_or_default(),
            &self.step,
            self.instance,
        )
    }
}

/// A result to persist.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The handler returned this output.
    Completed(serde_json::Value),
    /// The handler failed; `retryable` is the worker's opinion, the step's policy decides.
    Failed {
        /// What went wrong.
        error: TaskError,
        /// The worker's opinion.
        retryable: bool,
    },
    /// The worker went silent or its pod went away: a retryable failure recorded by the broker itself.
    Lost,
}

/// One attempt's result, as reported.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The step or instance.
    pub task: TaskRef,
    /// The attempt the result belongs to (the fencing token).
    pub attempt: u32,
    /// The worker that ran it.
    pub worker: String,
    /// The result.
    pub outcome: Outcome,
}

/// What the sink did with a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Persisted now.
    Applied,
    /// The same result of the same attempt was already persisted; nothing changed.
    Duplicate,
}

/// Why the sink did not persist a report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The attempt is not the step's current one, or the step already ended, or the task belongs to a deleted
    /// FlowRun of the same name.
    #[error("stale attempt: {0}")]
    Stale(String),
    /// The FlowRun or step does not exist.
    #[error("unknown task: {0}")]
    Unknown(String),
    /// The report could not be persisted now; the worker should retry.
    #[error("not persisted, retry: {0}")]
    Unavailable(String),
}

/// A claimed attempt, for the sink to record the worker and start time in the next batched write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed {
    /// The step or instance.
    pub task: TaskRef,
    /// The attempt handed out.
    pub attempt: u32,
    /// The worker that claimed it.
    pub worker: String,
}

/// The persistence side of the broker.
pub trait ResultSink: Send + Sync + 'static {
    /// Persists a result; resolves once it is in the FlowRun's status (or refused).
    fn record(&self, report: Report) -> BoxFuture<'static, Result<Recorded, SinkError>>;

    /// Notes that attempts were claimed. Fire and forget: the claim does not wait for it, because the attempt
    /// was already recorded when it was queued (invariant 1); a crash before it lands re-dispatches the same
    /// attempt, which fencing handles.
    fn claimed(&self, claims: Vec<Claimed>);

    /// Brings the FlowRun of `task` into the broker now (its queued attempts offered, its running ones
    /// adopted), for a worker that asks about an attempt while the runs are still being loaded after a
    /// restart. Resolves when that is done or could not be done; the caller looks again either way.
    fn load(&self, task: &TaskRef) -> BoxFuture<'static, ()> {
        let _ = task;
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip() {
        for instance in [None, Some(7)] {
            for uid in [
                None,
                Some("7c9e6679-7425-40de-944b-e07fc1f90ae7".to_owned()),
            ] {
                let r = TaskRef {
                    namespace: "ns".into(),
                    flow_run: "order-1".into(),
                    step: "cooling-off".into(),
                    instance,
                    uid,
                };
                assert_eq!(TaskRef::parse(&r.id()), Some(r));
            }
        }
        assert_eq!(
            TaskRef::parse(&TaskId::new("ns/fr/s/3@u")).map(|r| (r.instance, r.uid)),
            Some((Some(3), Some("u".to_owned())))
        );
        for bad in [
            "",
            "ns/fr",
            "ns//step",
            "ns/fr/step/x",
            "ns/fr/step/1/2",
            "ns/fr/step@",
            "ns/fr/step@a/b",
            "ns/fr@u/step",
        ] {
            assert_eq!(TaskRef::parse(&TaskId::new(bad)), None, "{bad:?}");
        }
    }
}
