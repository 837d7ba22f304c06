//! Sluice operator library: the API types, the pure flow engine, the FlowRun controller and status writer,
//! the worker broker and the external metrics API.
#![forbid(unsafe_code)]

pub mod api;
pub mod broker;
pub mod crds;
pub mod engine;
pub mod external_metrics;
pub mod flowrun;
pub mod telemetry;
pub mod workerpool;
