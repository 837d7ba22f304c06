//! The JSON endpoints: the list of FlowRuns, one run, one step, and the actions. The actions call the same
//! functions as the plugin's commands ([`crate::cmd::signal::send`], [`crate::cmd::control::apply`],
//! [`crate::cmd::retry::request`]), with the same checks; errors of the API server (Forbidden, Conflict, ...)
//! are answered with its status code and its message as it wrote it.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_api::FlowRun;

use super::server::AppState;
use super::view::{self, RunSummary, RunView, StepDetail};
use crate::Error;
use crate::cmd::{control, retry, signal};
use crate::kubeconfig::Connection;

/// How long a retry from the page waits for the operator's answer before saying it was only requested.
pub const RETRY_WAIT: Duration = Duration::from_secs(15);

/// An error answer: `{"error": message, "reason": ..., "code": ...}` with that status code.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    reason: String,
    message: String,
}

impl ApiError {
    fn new(code: StatusCode, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            // The API server's own words, with its code (403 Forbidden, 409 Conflict, 422 Invalid, ...).
            Error::Kube(kube::Error::Api(status)) => Self {
                code: StatusCode::from_u16(status.code).unwrap_or(StatusCode::BAD_GATEWAY),
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            Error::Kube(other) => Self::new(
                StatusCode::BAD_GATEWAY,
                "KubernetesAPI",
                format!("Kubernetes API: {other}"),
            ),
            e @ (Error::NotFound { .. } | Error::Deleted(_)) => {
                Self::new(StatusCode::NOT_FOUND, "NotFound", e.to_string())
            }
            e @ Error::InvalidJson { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "InvalidJSON", e.to_string())
            }
            e @ Error::NotFailed { .. } => {
                Self::new(StatusCode::CONFLICT, "NotFailed", e.to_string())
            }
            e => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "Error", e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.code,
            Json(
                json!({ "error": self.message, "reason": self.reason, "code": self.code.as_u16() }),
            ),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The connection to use for namespace `ns`, refused when it is outside the server's scope.
pub(crate) fn connection(state: &AppState, ns: &str) -> Result<Connection, ApiError> {
    if !state.scope.allows(ns) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "OutOfScope",
            format!(
                "namespace {ns:?} is not shown by this server (it shows {}; restart it with -n {ns} or -A)",
                state.scope.describe()
            ),
        ));
    }
    Ok(Connection {
        client: state.client.clone(),
        namespace: ns.to_owned(),
    })
}

/// The FlowRuns API of the server's scope.
pub(crate) fn runs_api(state: &AppState) -> Api<FlowRun> {
    match state.scope.namespace() {
        Some(ns) => Api::namespaced(state.client.clone(), ns),
        None => Api::all(state.client.clone()),
    }
}

/// Query of the list.
#[derive(Deserialize, Debug, Default)]
pub struct ListQuery {
    /// A label selector, as kubectl's `-l`.
    #[serde(default)]
    pub label: Option<String>,
    /// Only runs in this phase.
    #[serde(default)]
    pub phase: Option<String>,
}

/// The list's answer.
#[derive(Serialize, Debug)]
pub struct RunList {
    /// The runs, newest first.
    pub items: Vec<RunSummary>,
}

/// `GET /api/runs[?label=SELECTOR&phase=PHASE]`.
pub async fn list_runs(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<RunList> {
    let mut params = ListParams::default();
    if let Some(l) = q.label.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
        params = params.labels(l);
    }
    let list = runs_api(&state)
        .list(&params)
        .await
        .map_err(|e| ApiError::from(Error::Kube(e)))?;
    let mut items: Vec<RunSummary> = list
        .items
        .iter()
        .map(RunSummary::new)
        .filter(|r| {
            q.phase
                .as_deref()
                .filter(|p| !p.is_empty())
                .is_none_or(|p| format!("{:?}", r.phase).eq_ignore_ascii_case(p))
        })
        .collect();
    items.sort_by(|a, b| b.created.cmp(&a.created).then(a.name.cmp(&b.name)));
    Ok(Json(RunList { items }))
}

/// One run's answer: its view and its Events (or why they could not be read).
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct RunAnswer {
    /// The run.
    pub view: RunView,
    /// Its Events, newest first.
    pub events: Vec<view::EventView>,
    /// Why the Events could not be listed (e.g. Forbidden), as the API server said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_error: Option<String>,
}

/// The field selector of a run's Events.
pub fn events_selector(name: &str) -> String {
    format!("involvedObject.kind=FlowRun,involvedObject.name={name}")
}

/// `GET /api/runs/{namespace}/{name}`.
pub async fn get_run(
    State(state): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<RunAnswer> {
    let conn = connection(&state, &ns)?;
    let fr = crate::cmd::get(&conn, &name).await?;
    let events: Api<Event> = Api::namespaced(state.client.clone(), &ns);
    let (events, events_error) = match events
        .list(&ListParams::default().fields(&events_selector(&name)))
        .await
    {
        Ok(list) => (view::events(&list.items), None),
        Err(kube::Error::Api(s)) => (Vec::new(), Some(s.message.clone())),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Ok(Json(RunAnswer {
        view: RunView::new(&fr, Timestamp::now()),
        events,
        events_error,
    }))
}

/// `GET /api/runs/{namespace}/{name}/steps/{step}`.
pub async fn get_step(
    State(state): State<Arc<AppState>>,
    Path((ns, name, step)): Path<(String, String, String)>,
) -> ApiResult<StepDetail> {
    let conn = connection(&state, &ns)?;
    let fr = crate::cmd::get(&conn, &name).await?;
    StepDetail::new(&fr, &step).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("flowrun {name:?} has no step {step:?}"),
        )
    })
}

/// What an action did, in the words of the plugin's command.
#[derive(Serialize, Debug)]
pub struct Done {
    /// The line the command prints.
    pub message: String,
    /// A note or warning it prints on stderr.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Body of `POST .../signal`.
#[derive(Deserialize, Debug)]
pub struct SignalBody {
    /// Name of the signal.
    pub signal: String,
    /// The payload as JSON text (validated as `--data` is); absent or blank: no payload.
    #[serde(default)]
    pub payload: Option<String>,
}

/// `POST /api/runs/{namespace}/{name}/signal`: validates the payload, then delivers the signal.
pub async fn post_signal(
    State(state): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
    Json(body): Json<SignalBody>,
) -> ApiResult<Done> {
    let conn = connection(&state, &ns)?;
    let signal_name = body.signal.trim();
    if signal_name.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "Invalid",
            "a signal needs a name",
        ));
    }
    let payload = match body.payload.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(signal::parse_payload("payload", text)?),
    };
    let delivered = signal::send(&conn, &name, signal_name, payload).await?;
    Ok(Json(Done {
        message: delivered.message(),
        note: delivered.warning(),
    }))
}

/// `POST /api/runs/{namespace}/{name}/{cancel|suspend|resume}`.
pub async fn post_control(
    State(state): State<Arc<AppState>>,
    Path((ns, name, action)): Path<(String, String, String)>,
) -> ApiResult<Done> {
    let conn = connection(&state, &ns)?;
    let action = match action.as_str() {
        "cancel" => control::Action::Cancel,
        "suspend" => control::Action::Suspend,
        "resume" => control::Action::Resume,
        "retry" => return post_retry(&conn, &name).await,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no action {other:?}"),
            ));
        }
    };
    let outcome = control::apply(&conn, &name, action).await?;
    Ok(Json(Done {
        message: outcome.message(),
        note: outcome.note(),
    }))
}

/// Retry: the request, then the operator's answer within [`RETRY_WAIT`].
async fn post_retry(conn: &Connection, name: &str) -> ApiResult<Done> {
    let token = retry::request(conn, name).await?;
    match retry::answer(conn, name, &token, RETRY_WAIT).await {
        Ok(status) => Ok(Json(Done {
            message: retry::retried_message(name, &status),
            note: None,
        })),
        Err(Error::Timeout(why)) => Ok(Json(Done {
            message: format!("flowrun/{name}: retry requested (spec.retryRequest={token})"),
            note: Some(why),
        })),
        Err(e) => Err(e.into()),
    }
}

/// Answer of unknown API paths.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NotFound", "no such endpoint")
}

/// `GET /api/config`: what the server shows.
pub async fn config(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "namespace": state.scope.namespace(),
        "allNamespaces": state.scope.namespace().is_none(),
    }))
}
