//! Sluice operator library: the API types, the pure flow engine, and (later) the controllers and broker.
#![forbid(unsafe_code)]

pub mod api;
pub mod broker;
pub mod telemetry;
pub mod crds;
pub mod engine;
