//! Live updates: server-sent events fed by watches of the API server, with the user's credentials.
//!
//! - `GET /api/live/runs`: a watch of the FlowRuns in scope. Events `reset` (the watch (re)started; a complete
//!   list of `upsert`s follows, then `synced`), `upsert` (a [`RunSummary`]), `delete` (`{namespace, name}`) and
//!   `problem` (`{error}`: the watch failed and is retried).
//! - `GET /api/live/runs/{namespace}/{name}`: a watch of one run and one of its Events. Events `run` (a
//!   [`RunView`]), `events` (`{events, error}`), `deleted`, and `problem`. Bursts of status writes are
//!   coalesced: at most one `run` every [`MIN_INTERVAL`].
//!
//! Each stream runs its watches in a task that ends when the browser goes away.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watch_object};
use serde::Serialize;
use serde_json::json;
use sluice_api::FlowRun;
use tokio::sync::mpsc;

use super::api::{self, ApiError};
use super::server::AppState;
use super::view::{self, RunSummary, RunView};

/// Shortest time between two `run` events of one stream.
pub const MIN_INTERVAL: Duration = Duration::from_millis(150);

fn sse(name: &str, data: &impl Serialize) -> Sse {
    Sse::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "null".into()))
}

fn problem(e: &impl std::fmt::Display) -> Sse {
    sse("problem", &json!({ "error": e.to_string() }))
}

/// The response of a stream fed by `task`, which sends until the channel closes.
fn stream_of<F, Fut>(task: F) -> Response
where
    F: FnOnce(mpsc::Sender<Sse>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Sse>(64);
    tokio::spawn(task(tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    axum::response::Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Ends when the watch stream ends or the browser went away.
async fn pump<S, T>(tx: &mpsc::Sender<Sse>, stream: S, mut each: impl FnMut(T) -> Option<Sse>)
where
    S: Stream<Item = T>,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            item = stream.next() => {
                let Some(item) = item else { return };
                if let Some(event) = each(item)
                    && tx.send(event).await.is_err()
                {
                    return;
                }
            }
        }
    }
}

/// `GET /api/live/runs`.
pub async fn runs(State(state): State<Arc<AppState>>) -> Response {
    let api = api::runs_api(&state);
    stream_of(move |tx| async move {
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        pump(&tx, stream, |item| {
            Some(match item {
                Ok(watcher::Event::Init) => sse("reset", &json!({})),
                Ok(watcher::Event::InitApply(fr) | watcher::Event::Apply(fr)) => {
                    sse("upsert", &RunSummary::new(&fr))
                }
                Ok(watcher::Event::Delete(fr)) => sse(
                    "delete",
                    &json!({ "namespace": fr.metadata.namespace, "name": fr.metadata.name }),
                ),
                Ok(watcher::Event::InitDone) => sse("synced", &json!({})),
                Err(e) => problem(&watch_error(&e)),
            })
        })
        .await;
    })
}

/// The API server's message when it refused the watch, else the watcher's error.
fn watch_error(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.message.clone(),
        watcher::Error::WatchError(s) => s.message.clone(),
        other => other.to_string(),
    }
}

enum Change {
    Run(Option<Box<FlowRun>>),
    Events(Result<Vec<Event>, String>),
    Problem(String),
}

/// `GET /api/live/runs/{namespace}/{name}`.
pub async fn run(
    State(state): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let conn = api::connection(&state, &ns)?;
    let runs: Api<FlowRun> = Api::namespaced(conn.client.clone(), &ns);
    let events: Api<Event> = Api::namespaced(conn.client.clone(), &ns);
    Ok(stream_of(move |tx| async move {
        let run_changes = watch_object(runs, &name)
            .default_backoff()
            .map(|r| match r {
                Ok(fr) => Change::Run(fr.map(Box::new)),
                Err(e) => Change::Problem(watch_error(&e)),
            });
        // The run's Events as a list kept up to date by its watch.
        let mut store: Vec<Event> = Vec::new();
        let mut buffer: Vec<Event> = Vec::new();
        let event_changes = watcher::watcher(
            events,
            watcher::Config::default().fields(&api::events_selector(&name)),
        )
        .default_backoff()
        .filter_map(move |r| {
            let out = match r {
                Ok(watcher::Event::Init) => {
                    buffer.clear();
                    None
                }
                Ok(watcher::Event::InitApply(e)) => {
                    buffer.push(e);
                    None
                }
                Ok(watcher::Event::InitDone) => {
                    store = std::mem::take(&mut buffer);
                    Some(Change::Events(Ok(store.clone())))
                }
                Ok(watcher::Event::Apply(e)) => {
                    store.retain(|o| o.metadata.uid != e.metadata.uid);
                    store.push(e);
                    Some(Change::Events(Ok(store.clone())))
                }
                Ok(watcher::Event::Delete(e)) => {
                    store.retain(|o| o.metadata.uid != e.metadata.uid);
                    Some(Change::Events(Ok(store.clone())))
                }
                Err(e) => Some(Change::Events(Err(watch_error(&e)))),
            };
            std::future::ready(out)
        });
        let mut changes = std::pin::pin!(futures::stream::select(run_changes, event_changes));
        let mut pending: Option<Box<FlowRun>> = None;
        let mut last_sent = tokio::time::Instant::now() - MIN_INTERVAL;
        let mut events_error: Option<String> = None;
        loop {
            let due = last_sent + MIN_INTERVAL;
            let event = tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep_until(due), if pending.is_some() => {
                    let Some(fr) = pending.take() else { continue };
                    last_sent = tokio::time::Instant::now();
                    sse("run", &RunView::new(&fr, Timestamp::now()))
                }
                change = changes.next() => match change {
                    None => return,
                    Some(Change::Run(Some(fr))) => {
                        pending = Some(fr);
                        continue;
                    }
                    Some(Change::Run(None)) => {
                        pending = None;
                        sse("deleted", &json!({ "namespace": ns, "name": name }))
                    }
                    Some(Change::Events(Ok(list))) => {
                        events_error = None;
                        sse("events", &json!({ "events": view::events(&list) }))
                    }
                    Some(Change::Events(Err(e))) => {
                        // Reported once per failure, not at every retry of the watch.
                        if events_error.as_ref() == Some(&e) {
                            continue;
                        }
                        events_error = Some(e.clone());
                        sse("events", &json!({ "events": [], "error": e }))
                    }
                    Some(Change::Problem(e)) => problem(&e),
                },
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }))
}
