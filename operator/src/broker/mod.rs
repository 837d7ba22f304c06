//! The worker broker: workers long-poll it for tasks, heartbeat, and report results over HTTP
//! (protocol in the `sluice-wire` crate). The operator is the single writer of step state, so the broker only
//! hands out attempts already recorded in status and acknowledges results only once they are persisted.

pub mod auth;
pub mod listener;
pub mod queue;
pub mod server;
pub mod sink;
pub mod tokenreview;
mod waiters;

pub use server::Broker;

#[cfg(test)]
mod tests;
