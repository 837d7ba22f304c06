//! Start Sluice flows from Rust code and await their results.
//!
//! A [`Client`] creates FlowRuns in one namespace — from a spec written inline ([`Start::inline`]) or from a
//! FlowTemplate ([`Start::template`]) — and hands back a [`Run`]: a handle to one FlowRun by name,
//! with the verbs a program needs — [`Run::wait`] for the typed output (or a typed failure), [`Run::signal`],
//! [`Run::cancel`] and [`Run::status`]. Everything goes through the Kubernetes API with the caller's
//! credentials, exactly as `kubectl` and `kubectl sluice` would: the client creates FlowRuns, writes
//! `spec.cancel` and `status.signals` (through the status subresource), deletes a finished run only when a
//! start asks to replace it ([`IfExists::ReplaceFailed`]), and writes nothing else.
//!
//! Starting is **idempotent by name**: the FlowRun's name is the run's identity, so a program that restarts
//! and starts the same name again gets the same run back instead of a second one. What happens when the name
//! is taken is the caller's choice ([`IfExists`]); by default the existing run is returned when its spec is
//! the one asked for, and a different spec is refused with [`Error::SpecConflict`].
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use sluice_client::api::{FlowRunSpec, Step};
//! use sluice_client::{Client, Start};
//! use std::time::Duration;
//!
//! #[derive(Serialize)]
//! struct Greeting { name: String }
//! #[derive(Deserialize)]
//! struct Greeted { greeting: String }
//!
//! # async fn demo() -> Result<(), sluice_client::Error> {
//! let client = Client::try_default().await?; // kubeconfig or in-cluster config, its namespace
//! let spec = FlowRunSpec {
//!     pool: Some("shell".into()),
//!     steps: vec![Step { name: "greet".into(), handler: Some("greet".into()),
//!                        input: Some("${{ input.name }}".into()), ..Step::default() }],
//!     output: Some("${{ steps.greet.output }}".into()),
//!     ..FlowRunSpec::default()
//! };
//! let run = client
//!     .start(Start::inline("hello-ada", spec).input(&Greeting { name: "ada".into() })?)
//!     .await?;
//! let out: Greeted = run.wait(Duration::from_secs(60)).await?;
//! println!("{}", out.greeting);
//! # Ok(()) }
//! ```
//!
//! Every error is one [`Error`] enum to match on: [`Error::Failed`] carries the failed steps and their errors,
//! [`Error::Timeout`] names the run and the phase it was last seen in.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod error;
mod run;
mod spec;
mod start;
mod status;

pub use client::Client;
pub use error::{Error, FailedStep, Result, RunFailure};
pub use run::Run;
pub use spec::spec_differences;
pub use start::{IfExists, Start};
pub use status::{RunStatus, StepSummary};

/// Field manager of every write the client makes, so `managedFields` show who wrote what.
///
/// ```
/// assert_eq!(sluice_client::FIELD_MANAGER, "sluice-client");
/// ```
pub const FIELD_MANAGER: &str = "sluice-client";

/// The FlowRun API types (`sluice-api`) callers build specs from, so a program needs only this crate.
///
/// ```
/// use sluice_client::api::{FlowRunSpec, Step};
/// let spec = FlowRunSpec {
///     steps: vec![Step { name: "nap".into(), sleep: Some("1s".into()), ..Step::default() }],
///     ..FlowRunSpec::default()
/// };
/// assert_eq!(spec.steps.len(), 1);
/// ```
pub use sluice_api as api;
