//! The one error type of the client.

use std::fmt;
use std::time::Duration;

use sluice_api::{FlowPhase, StepError};

/// Result type of the client.
///
/// ```
/// fn check(n: u32) -> sluice_client::Result<u32> { Ok(n) }
/// assert_eq!(check(3).unwrap(), 3);
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, as variants a caller can match on.
///
/// Variants name the FlowRun (`namespace/name`) so a log line says which run it was about.
///
/// ```no_run
/// # async fn demo(run: sluice_client::Run) {
/// use sluice_client::Error;
/// use std::time::Duration;
/// match run.wait::<serde_json::Value>(Duration::from_secs(30)).await {
///     Ok(output) => println!("output: {output}"),
///     Err(Error::Failed(failure)) => {
///         for step in &failure.failed_steps {
///             eprintln!("step {} failed: {:?}", step.name, step.error);
///         }
///     }
///     Err(Error::Timeout { last_phase, .. }) => eprintln!("still {last_phase:?}"),
///     Err(other) => eprintln!("{other}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The FlowRun does not exist (or was deleted while being waited for).
    #[error("flowrun {namespace}/{name} not found")]
    NotFound {
        /// Namespace looked in.
        namespace: String,
        /// Name of the FlowRun.
        name: String,
    },

    /// A run of that name exists and the start's policy is [`IfExists::Reject`](crate::IfExists::Reject).
    #[error("flowrun {namespace}/{name} already exists")]
    AlreadyExists {
        /// Namespace of the FlowRun.
        namespace: String,
        /// Name of the FlowRun.
        name: String,
    },

    /// A run of that name exists with a different spec than the one asked for.
    #[error(
        "flowrun {namespace}/{name} already exists with a different spec (differs at {}): start it under another name, or choose another IfExists policy",
        differences.join(", ")
    )]
    SpecConflict {
        /// Namespace of the FlowRun.
        namespace: String,
        /// Name of the FlowRun.
        name: String,
        /// Where the specs differ, as JSON paths such as `spec.input.amount` or `spec.steps[1].handler`.
        differences: Vec<String>,
    },

    /// The run ended Failed. Boxed: the failure carries the failed steps' errors.
    #[error("{0}")]
    Failed(Box<RunFailure>),

    /// The run ended Cancelled (through `spec.cancel`, by [`Run::cancel`](crate::Run::cancel) or anyone else).
    #[error("flowrun {namespace}/{name} was cancelled{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Cancelled {
        /// Namespace of the FlowRun.
        namespace: String,
        /// Name of the FlowRun.
        name: String,
        /// The operator's message on the run's `Succeeded` condition, if any.
        message: String,
    },

    /// The run did not end within the time the caller gave [`Run::wait`](crate::Run::wait). The run goes on.
    #[error(
        "flowrun {namespace}/{name} did not finish within {waited:?}: last seen {}{}",
        last_phase.map_or("never (no status seen)".to_owned(), |p| format!("{p:?}")),
        last_watch_error.as_ref().map_or(String::new(), |e| format!(" (last watch error: {e})"))
    )]
    Timeout {
        /// Namespace of the FlowRun.
        namespace: String,
        /// Name of the FlowRun.
        name: String,
        /// How long the caller waited.
        waited: Duration,
        /// The phase the run was last seen in; `None` when no status was seen.
        last_phase: Option<FlowPhase>,
        /// The last error of the watch, when it could not follow the run.
        last_watch_error: Option<String>,
    },

    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// The run's output does not decode into the type the caller asked for.
    #[error(
        "flowrun {namespace}/{name}: the output does not decode into the requested type: {source}"
    )]
    Decode {
        /// Namespace of the FlowRun.
        namespace: String,
        /// Name of the FlowRun.
        name: String,
        /// What serde said.
        source: serde_json::Error,
    },

    /// An input or signal payload could not be turned into JSON.
    #[error("{what} is not representable as JSON: {source}")]
    Encode {
        /// What was being encoded (`input`, `signal payload`).
        what: &'static str,
        /// What serde said.
        source: serde_json::Error,
    },
}

impl Error {
    /// Maps a 404 from the API server to [`Error::NotFound`] for this run.
    pub(crate) fn from_kube(e: kube::Error, namespace: &str, name: &str) -> Self {
        match &e {
            kube::Error::Api(status) if status.is_not_found() => Error::NotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            _ => Error::Kube(e),
        }
    }
}

/// How a run failed: what [`Error::Failed`] carries.
///
/// ```
/// use sluice_client::{FailedStep, RunFailure};
/// let failure = RunFailure {
///     namespace: "default".into(),
///     name: "order-42".into(),
///     reason: "StepFailed".into(),
///     message: "step \"charge\" failed: card_declined: over the limit".into(),
///     failed_steps: vec![],
/// };
/// assert!(failure.to_string().contains("order-42"));
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct RunFailure {
    /// Namespace of the FlowRun.
    pub namespace: String,
    /// Name of the FlowRun.
    pub name: String,
    /// The reason on the run's `Succeeded` condition: `StepFailed`, `Invalid`, `OutputFailed`, `Undecodable`, …
    pub reason: String,
    /// The operator's message on that condition (it names the failed step and its error).
    pub message: String,
    /// The steps that failed for good, in the order of `spec.steps`.
    pub failed_steps: Vec<FailedStep>,
}

impl fmt::Display for RunFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flowrun {}/{} failed", self.namespace, self.name)?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        } else if let Some(step) = self.failed_steps.first() {
            write!(f, ": step {:?} failed", step.name)?;
            if let Some(e) = &step.error {
                write!(f, ": {}: {}", e.type_, e.message)?;
            }
        }
        Ok(())
    }
}

/// A step that failed for good.
///
/// ```
/// use sluice_client::FailedStep;
/// let step = FailedStep { name: "charge".into(), attempts: 3, error: None };
/// assert_eq!(step.attempts, 3);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct FailedStep {
    /// Name of the step.
    pub name: String,
    /// Number of its last attempt.
    pub attempts: u32,
    /// Its last error (type as the handler reported it, or one of Sluice's own such as `Timeout`), if recorded.
    pub error: Option<StepError>,
}
