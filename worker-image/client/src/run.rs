//! A handle to one FlowRun: wait for it, signal it, cancel it, read its status.

use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::watch_object;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sluice_api::{FlowPhase, FlowRun};

use crate::status::{RunStatus, cancel_message, failure, has_ended, phase, summary};
use crate::{Error, FIELD_MANAGER, Result};

/// A handle to one FlowRun, by name: from [`Client::start`](crate::Client::start) or
/// [`Client::run`](crate::Client::run). Holding it costs nothing; every verb is a request (or a watch).
///
/// ```no_run
/// # async fn demo(client: sluice_client::Client) -> sluice_client::Result<()> {
/// use std::time::Duration;
/// let run = client.run("expense-42");
/// run.signal("manager-approval", &serde_json::json!({"approved": true, "by": "grace"})).await?;
/// let output: serde_json::Value = run.wait(Duration::from_secs(120)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Run {
    api: Api<FlowRun>,
    namespace: String,
    name: String,
    created: bool,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl Run {
    pub(crate) fn new(api: Api<FlowRun>, namespace: &str, name: String, created: bool) -> Self {
        Self {
            api,
            namespace: namespace.to_owned(),
            name,
            created,
        }
    }

    /// The FlowRun's name.
    ///
    /// ```no_run
    /// # fn demo(client: sluice_client::Client) {
    /// assert_eq!(client.run("expense-42").name(), "expense-42");
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The FlowRun's namespace.
    ///
    /// ```no_run
    /// # fn demo(client: sluice_client::Client) {
    /// assert_eq!(client.run("expense-42").namespace(), client.namespace());
    /// # }
    /// ```
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether the [`Client::start`](crate::Client::start) that returned this handle created the FlowRun
    /// (`false` when it returned an existing run, and for handles from [`Client::run`](crate::Client::run)).
    ///
    /// ```no_run
    /// # async fn demo(client: sluice_client::Client, spec: sluice_client::api::FlowRunSpec) -> sluice_client::Result<()> {
    /// let run = client.start(sluice_client::Start::inline("nightly", spec)).await?;
    /// if !run.created() {
    ///     println!("nightly was started before; awaiting that run");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn created(&self) -> bool {
        self.created
    }

    /// Waits until the run ends, at most `timeout`, following it with a watch (no polling).
    ///
    /// Succeeded: the flow's output (`status.output`, `null` when the flow declares none) decoded into `T`,
    /// or [`Error::Decode`]. Failed: [`Error::Failed`] with the failed steps and their errors. Cancelled:
    /// [`Error::Cancelled`]. Not ended in time: [`Error::Timeout`] with the phase last seen (the run goes on;
    /// wait again or [`cancel`](Run::cancel) it). Deleted, or never created: [`Error::NotFound`]. A run that
    /// has already ended answers at once. A Failed run whose retry (`spec.retryRequest`) the operator has not
    /// answered yet is waited for: it is about to run again.
    ///
    /// The watch resumes by itself after a dropped connection or an API error; such errors only show in
    /// the timeout's message.
    ///
    /// ```no_run
    /// # async fn demo(run: sluice_client::Run) -> sluice_client::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct Receipt { payment_id: String }
    /// let receipt: Receipt = run.wait(std::time::Duration::from_secs(300)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait<T: DeserializeOwned>(&self, timeout: Duration) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        // watch_object lists the one object, then watches it from that version: a run that already ended
        // answers from the list, and nothing between the list and the watch is missed.
        let stream = watch_object(self.api.clone(), &self.name).default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut last_phase: Option<FlowPhase> = None;
        let mut last_watch_error: Option<String> = None;
        loop {
            let item = match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => {
                    // With a backoff the stream does not end; if it ever does, stop waiting and say so.
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let waited = timeout.saturating_sub(left);
                    let error = Some("the watch ended".to_owned());
                    return Err(self.timeout(waited, last_phase, error));
                }
                Err(_) => return Err(self.timeout(timeout, last_phase, last_watch_error)),
            };
            let fr = match item {
                Ok(Some(fr)) => fr,
                Ok(None) => return Err(self.not_found()),
                Err(e) => {
                    tracing::debug!(namespace = %self.namespace, name = %self.name, error = %e, "watch interrupted; resuming");
                    last_watch_error = Some(e.to_string());
                    continue;
                }
            };
            if fr.status.as_ref().and_then(|s| s.phase).is_some() {
                last_phase = Some(phase(&fr));
            }
            if !has_ended(&fr) {
                continue;
            }
            return match phase(&fr) {
                FlowPhase::Succeeded => {
                    let output = fr.status.and_then(|s| s.output).unwrap_or(Value::Null);
                    serde_json::from_value(output).map_err(|source| Error::Decode {
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                        source,
                    })
                }
                FlowPhase::Cancelled => Err(Error::Cancelled {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    message: cancel_message(&fr),
                }),
                _ => Err(Error::Failed(Box::new(failure(&fr)))),
            };
        }
    }

    /// Delivers signal `signal` with `payload` (any `Serialize` value; `&()` sends one without payload) by a
    /// JSON merge patch of `status.signals` through the status subresource — the patch users write with
    /// `kubectl patch --subresource=status`, which keeps every other signal. A signal written before the step
    /// waits is kept and consumed when it does; writing the same name again replaces its payload unless a step
    /// already consumed it (the chart's admission policy refuses that).
    ///
    /// ```no_run
    /// # async fn demo(run: sluice_client::Run) -> sluice_client::Result<()> {
    /// #[derive(serde::Serialize)]
    /// struct Decision { approved: bool, by: String }
    /// run.signal("manager-approval", &Decision { approved: true, by: "grace".into() }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn signal<P: Serialize + ?Sized>(&self, signal: &str, payload: &P) -> Result<()> {
        let payload = serde_json::to_value(payload).map_err(|source| Error::Encode {
            what: "signal payload",
            source,
        })?;
        // A `null` payload is dropped by the merge patch anyway; write the signal without one.
        let entry = if payload.is_null() {
            json!({})
        } else {
            json!({ "payload": payload })
        };
        let patch = json!({ "status": { "signals": { signal: entry } } });
        self.api
            .patch_status(&self.name, &self.params(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::from_kube(e, &self.namespace, &self.name))?;
        tracing::debug!(namespace = %self.namespace, name = %self.name, signal, "signal delivered");
        Ok(())
    }

    /// Cancels the run (`spec.cancel: true`): no new step starts, running handlers are asked to stop, and the
    /// run ends Cancelled — its [`wait`](Run::wait) returns [`Error::Cancelled`]. Cancelling a run that
    /// already ended changes nothing about how it ended.
    ///
    /// ```no_run
    /// # async fn demo(run: sluice_client::Run) -> sluice_client::Result<()> {
    /// run.cancel().await?;
    /// # Ok(()) }
    /// ```
    pub async fn cancel(&self) -> Result<()> {
        let patch = json!({ "spec": { "cancel": true } });
        self.api
            .patch(&self.name, &self.params(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::from_kube(e, &self.namespace, &self.name))?;
        tracing::debug!(namespace = %self.namespace, name = %self.name, "cancel requested");
        Ok(())
    }

    /// The run's phase, progress and a summary of every step, read now.
    ///
    /// ```no_run
    /// # async fn demo(run: sluice_client::Run) -> sluice_client::Result<()> {
    /// let status = run.status().await?;
    /// println!("{:?} {}", status.phase, status.progress.unwrap_or_default());
    /// # Ok(()) }
    /// ```
    pub async fn status(&self) -> Result<RunStatus> {
        Ok(summary(&self.get().await?))
    }

    /// The whole FlowRun object, read now.
    ///
    /// ```no_run
    /// # async fn demo(run: sluice_client::Run) -> sluice_client::Result<()> {
    /// let fr = run.get().await?;
    /// println!("{} steps", fr.spec.steps.len());
    /// # Ok(()) }
    /// ```
    pub async fn get(&self) -> Result<FlowRun> {
        self.api
            .get_opt(&self.name)
            .await?
            .ok_or_else(|| self.not_found())
    }

    fn params(&self) -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        }
    }

    fn not_found(&self) -> Error {
        Error::NotFound {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    fn timeout(
        &self,
        waited: Duration,
        last_phase: Option<FlowPhase>,
        last_watch_error: Option<String>,
    ) -> Error {
        Error::Timeout {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            waited,
            last_phase,
            last_watch_error,
        }
    }
}
