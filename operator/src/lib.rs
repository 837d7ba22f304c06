//! Sluice operator library: the API types, the pure flow engine, the FlowRun controller and status writer,
//! the worker broker and the external metrics API.
#![forbid(unsafe_code)]

/// The API types live in their own crate (the kubectl plugin uses them without the operator).
pub use sluice_api as api;
pub use sluice_api::crds;

pub mod broker;
pub mod context;
pub mod cronflow;
pub mod engine;
pub mod external_metrics;
pub mod flowrun;
pub mod runtime;
pub mod telemetry;
pub mod template;
pub mod workerpool;
