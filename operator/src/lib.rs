//! Sluice operator library: the API types, the pure flow engine, the FlowRun controller and status writer,
//! and the worker broker.
#![forbid(unsafe_code)]

pub mod api;
pub mod broker;
pub mod crds;
pub mod engine;
pub mod flowrun;
pub mod telemetry;
pub mod workerpool;
