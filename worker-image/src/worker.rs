//! [`Worker`]: registers handlers and runs the claim loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_wire::ClaimRequest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::client::BrokerClient;
use crate::config::Config;
use crate::context::StepContext;
use crate::error::{Error, StepError, chain};
use crate::handler::{ErasedHandler, TypedHandler};
use crate::task::{TaskEnv, run_task};

/// A Sluice worker: a set of named step handlers and the loop that claims tasks for them from the broker.
///
/// ```no_run
/// use serde::{Deserialize, Serialize};
/// use sluice_worker::{StepContext, StepError, Worker};
///
/// #[derive(Deserialize)]
/// struct ChargeInput { amount: u64 }
/// #[derive(Serialize)]
/// struct ChargeOutput { charge_id: String }
///
/// # async fn run() -> Result<(), sluice_worker::Error> {
/// Worker::from_env()?
///     .handler("charge_payment", |ctx: StepContext, input: ChargeInput| async move {
///         if input.amount == 0 {
///             return Err(StepError::fatal("InvalidAmount", "nothing to charge"));
///         }
///         Ok(ChargeOutput { charge_id: format!("{}-{}", ctx.flow_run_name(), ctx.attempt()) })
///     })
///     .run()
///     .await
/// # }
/// ```
///
/// The loop:
/// * long-polls `/v1/claim` with as many free slots as it has (see [`Config::concurrency`]), backing off on
///   broker errors;
/// * runs each task's handler in its own tokio task, next to one held heartbeat at a time (the broker holds
///   each for up to the task's interval and answers at once when the attempt is cancelled); a heartbeat
///   answered `cancel: true` (or a passed deadline) cancels the handler's [`StepContext`];
/// * reports the result, retrying with backoff until the broker acknowledges it; a 409 (stale attempt) ends
///   the attempt silently;
/// * on shutdown (SIGTERM/SIGINT for [`Worker::run`], or a [`ShutdownHandle`]): stops claiming, lets in-flight
///   handlers finish within [`Config::shutdown_grace`], then cancels the rest and fails them as retryable
///   (`WorkerShutdown`) so the broker hands them to another worker at once.
pub struct Worker {
    config: Config,
    handlers: BTreeMap<String, Arc<dyn ErasedHandler>>,
    duplicate: Option<String>,
    shutdown: CancellationToken,
}

/// Asks a running [`Worker`] to shut down gracefully (as SIGTERM does). Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Starts the graceful shutdown: no more claims, in-flight tasks get the grace period.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

impl Worker {
    /// A worker with this configuration and no handlers yet.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            handlers: BTreeMap::new(),
            duplicate: None,
            shutdown: CancellationToken::new(),
        }
    }

    /// A worker configured from the environment ([`Config::from_env`]).
    pub fn from_env() -> Result<Self, Error> {
        Ok(Self::new(Config::from_env()?))
    }

    /// Registers the handler for tasks named `name`: an async function of the [`StepContext`] and the step's
    /// input decoded as `I`, returning an output encoded from `O` or a [`StepError`].
    ///
    /// An input that does not decode as `I` fails the step (not retryable, type `InvalidInput`). Use
    /// `serde_json::Value` for `I` or `O` to work with raw JSON.
    pub fn handler<F, Fut, I, O>(mut self, name: impl Into<String>, function: F) -> Self
    where
        F: Fn(StepContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, StepError>> + Send + 'static,
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
    {
        let name = name.into();
        let handler: Arc<dyn ErasedHandler> = Arc::new(TypedHandler::new(function));
        if self.handlers.insert(name.clone(), handler).is_some() {
            self.duplicate.get_or_insert(name);
        }
        self
    }

    /// Sets how many tasks run at once.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.config.concurrency = concurrency;
        self
    }

    /// Sets the shutdown grace period.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The names of the registered handlers, sorted.
    pub fn handler_names(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }

    /// A handle that starts the graceful shutdown from elsewhere (tests, embedding programs).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Runs until SIGTERM or SIGINT (or a [`ShutdownHandle`]), then shuts down gracefully.
    pub async fn run(self) -> Result<(), Error> {
        let signals = shutdown_signals()?;
        self.run_until(signals).await
    }

    /// Runs until `signal` completes (or a [`ShutdownHandle`] fires), then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send) -> Result<(), Error> {
        if let Some(name) = self.duplicate {
            return Err(Error::DuplicateHandler(name));
        }
        if self.handlers.is_empty() {
            return Err(Error::NoHandlers);
        }
        self.config.validate()?;
        let shutdown = self.shutdown.clone();
        let mut claim_loop = ClaimLoop::new(self.config, self.handlers)?;
        tokio::select! {
            () = signal => shutdown.cancel(),
            () = shutdown.cancelled() => {}
            () = claim_loop.claim_until_shutdown() => {}
        }
        claim_loop.drain().await;
        Ok(())
    }
}

/// The state of a running worker.
struct ClaimLoop {
    env: Arc<TaskEnv>,
    handlers: BTreeMap<String, Arc<dyn ErasedHandler>>,
    permits: Arc<Semaphore>,
    tasks: JoinSet<()>,
}

impl ClaimLoop {
    fn new(
        config: Config,
        handlers: BTreeMap<String, Arc<dyn ErasedHandler>>,
    ) -> Result<Self, Error> {
        let client = BrokerClient::new(&config)?;
        let permits = Arc::new(Semaphore::new(config.concurrency));
        Ok(Self {
            env: Arc::new(TaskEnv {
                client,
                config: Arc::new(config),
                force_stop: CancellationToken::new(),
            }),
            handlers,
            permits,
            tasks: JoinSet::new(),
        })
    }

    /// Claims and starts tasks until the shutdown token fires (the caller's `select!` drops this future then,
    /// which also abandons a claim in flight: the broker hands out nothing to a request that went away).
    async fn claim_until_shutdown(&mut self) {
        let config = Arc::clone(&self.env.config);
        let mut backoff = Backoff::new(config.backoff_initial, config.backoff_max);
        let handlers: Vec<String> = self.handlers.keys().cloned().collect();
        info!(
            pool = %config.pool,
            worker = %config.worker_name,
            ?handlers,
            concurrency = config.concurrency,
            "worker started"
        );
        loop {
            self.reap_finished();
            let mut slots = self.free_slots().await;
            let request = ClaimRequest {
                pool: config.pool.clone(),
                worker: config.worker_name.clone(),
                handlers: handlers.clone(),
                capacity: u32::try_from(slots.len()).unwrap_or(u32::MAX),
                wait_seconds: config.wait_seconds,
                namespace: config.namespace.clone(),
            };
            match self.env.client.claim(&request).await {
                Ok(response) => {
                    backoff.reset();
                    if response.tasks.len() > slots.len() {
                        warn!(
                            got = response.tasks.len(),
                            capacity = slots.len(),
                            "broker handed out more tasks than asked; running them all"
                        );
                    }
                    for task in response.tasks {
                        let permit = slots.pop();
                        self.start(task, permit);
                    }
                }
                Err(error) => {
                    drop(slots);
                    let delay = backoff.next_delay();
                    warn!(error = %chain(&error), ?delay, "claim failed; backing off");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Waits for at least one free slot, then takes every free slot.
    async fn free_slots(&self) -> Vec<OwnedSemaphorePermit> {
        let first = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut slots = vec![first];
        while let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            slots.push(permit);
        }
        slots
    }

    fn start(&mut self, task: sluice_wire::Task, permit: Option<OwnedSemaphorePermit>) {
        debug!(id = %task.id, attempt = task.attempt, handler = %task.handler, "claimed");
        let handler = self.handlers.get(&task.handler).cloned();
        let env = Arc::clone(&self.env);
        self.tasks.spawn(async move {
            run_task(env, handler, task).await;
            drop(permit);
        });
    }

    fn reap_finished(&mut self) {
        while let Some(result) = self.tasks.try_join_next() {
            if let Err(error) = result {
                warn!(error = %chain(&error), "task runner ended abnormally");
            }
        }
    }

    /// Lets in-flight tasks finish within the grace period, then stops the rest and waits (bounded) for their
    /// failure reports.
    async fn drain(self) {
        let mut tasks = self.tasks;
        let config = &self.env.config;
        info!(
            in_flight = tasks.len(),
            grace = ?config.shutdown_grace,
            "shutting down: no more claims"
        );
        let finished = tokio::time::timeout(config.shutdown_grace, join_all(&mut tasks)).await;
        if finished.is_err() {
            warn!(
                left = tasks.len(),
                "grace period over: failing the remaining tasks as retryable"
            );
            self.env.force_stop.cancel();
            if tokio::time::timeout(config.report_grace, join_all(&mut tasks))
                .await
                .is_err()
            {
                warn!(
                    left = tasks.len(),
                    "some failure reports were not acknowledged in time"
                );
                tasks.abort_all();
            }
        }
        info!("worker stopped");
    }
}

async fn join_all(tasks: &mut JoinSet<()>) {
    while let Some(result) = tasks.join_next().await {
        if let Err(error) = result {
            warn!(error = %chain(&error), "task runner ended abnormally");
        }
    }
}

/// Completes on SIGTERM or SIGINT.
fn shutdown_signals() -> Result<impl Future<Output = ()> + Send, Error> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
        Ok(async move {
            tokio::select! {
                _ = terminate.recv() => info!("SIGTERM received"),
                _ = interrupt.recv() => info!("SIGINT received"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
