//! The Sluice worker SDK: register typed async step handlers and run them for a WorkerPool.
//!
//! ```no_run
//! use sluice_worker::{StepContext, StepError, Worker};
//!
//! # async fn run() -> Result<(), sluice_worker::Error> {
//! Worker::from_env()? // SLUICE_BROKER_URL, SLUICE_POOL, SLUICE_TOKEN_PATH, SLUICE_CONCURRENCY, ...
//!     .handler("greet", |ctx: StepContext, name: String| async move {
//!         tokio::select! {
//!             () = ctx.cancelled() => Err(ctx.cancellation_error()),
//!             () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {
//!                 Ok::<_, StepError>(format!("hello {name} from {}", ctx.step()))
//!             }
//!         }
//!     })
//!     .run() // until SIGTERM: then drain within the grace period
//!     .await
//! # }
//! ```
//!
//! * [`Worker`] — handlers and the claim loop (heartbeats, reports, graceful shutdown).
//! * [`StepContext`] — the attempt's identity and its cancellation signal.
//! * [`StepError`] — a handler's failure: retryable or fatal, with a type.
//! * [`Config`] — broker URL, pool, token file, concurrency, grace periods (from the environment).
//! * [`BrokerClient`] — the raw protocol calls ([`wire`] holds the types).
//! * [`exec`] — the generic exec handler behind the `sluice-worker` binary.
#![forbid(unsafe_code)]

mod backoff;
mod client;
mod config;
mod context;
mod error;
pub mod exec;
mod handler;
mod task;
mod worker;

pub use sluice_wire as wire;

pub use client::BrokerClient;
pub use config::{Config, DEFAULT_SHUTDOWN_GRACE};
pub use context::{CancelReason, StepContext};
pub use error::{Error, StepError};
pub use worker::{ShutdownHandle, Worker};
