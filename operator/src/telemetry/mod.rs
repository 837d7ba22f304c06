//! What the operator tells about itself: Prometheus metrics (and, with the `run` command, health endpoints).

pub mod api_calls;
pub mod health;
pub mod metrics;

pub use metrics::Metrics;
