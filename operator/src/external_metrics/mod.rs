//! The external metrics API (`external.metrics.k8s.io/v1beta1`), so a plain HorizontalPodAutoscaler scales a
//! WorkerPool on its queue depth with no metrics adapter: the operator serves the API itself, over HTTPS on a
//! port of its own, registered with the API server's aggregation layer by an `APIService`.
//!
//! What the aggregator sends here and what it gets:
//! - `GET /apis/external.metrics.k8s.io/v1beta1` — discovery: the one metric, [`QUEUE_DEPTH`], as a resource;
//! - `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/sluice_queue_depth?labelSelector=pool=NAME`
//!   — an `ExternalMetricValueList` with the number of steps queued for the pool and not yet claimed (the same
//!   number as the `sluice_queue_depth` Prometheus gauge). Without a `pool` in the selector, one item per pool
//!   of the namespace the broker knows.
//!
//! Security, as for any aggregated API server ([`tls`]): the connection must present the aggregator's client
//! certificate (signed by the request-header CA of the `kube-system/extension-apiserver-authentication`
//! ConfigMap, with an allowed common name); the user the aggregator names in the request headers must be
//! allowed to `list` the metric in the namespace (a SubjectAccessReview; the HPA controller's role allows it).

pub mod cert;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{debug, warn};

use crate::broker::Broker;

/// The API group.
pub const GROUP: &str = "external.metrics.k8s.io";
/// The API version.
pub const VERSION: &str = "v1beta1";
/// The one metric: steps queued for a pool and not yet claimed.
pub const QUEUE_DEPTH: &str = "sluice_queue_depth";
/// The metric label naming the WorkerPool.
pub const POOL_LABEL: &str = "pool";

/// Errors of the external metrics API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be answered as asked (bad selector, unknown metric).
    #[error("{0}")]
    BadRequest(String),
    /// The metric does not exist.
    #[error("no external metric named {0:?} (this server serves {QUEUE_DEPTH})")]
    NotFound(String),
    /// The aggregator named no user.
    #[error("no user in the request headers")]
    Unauthenticated,
    /// The user may not read the metric.
    #[error("{0}")]
    Forbidden(String),
    /// This replica does not lead, so its broker knows no queue.
    #[error("this operator replica is not the leader; it knows no queue")]
    NotLeader,
    /// The API server failed a request (SubjectAccessReview, ConfigMap, APIService).
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The TLS setup failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Generating the serving certificate failed.
    #[error("generating the serving certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The `APIService` belongs to another external metrics provider.
    #[error("{0}")]
    Registration(String),
    /// The `APIService` does not exist (yet).
    #[error("{0}")]
    ApiServiceMissing(String),
}

impl Error {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            Error::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            Error::NotLeader => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            Error::Kube(_)
            | Error::Tls(_)
            | Error::Certificate(_)
            | Error::Registration(_)
            | Error::ApiServiceMissing(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }
}

impl IntoResponse for Error {
    /// A `metav1.Status`, as the API server answers errors.
    fn into_response(self) -> Response {
        let (code, reason) = self.status();
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.to_string(), "reason": reason,
            "code": code.as_u16(),
        });
        (code, axum::Json(body)).into_response()
    }
}

/// Who the aggregator says the caller is (request-header authentication).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// The user name.
    pub user: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// Extra attributes (lower-cased keys).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Header names of request-header authentication, from the `extension-apiserver-authentication` ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHeaders {
    /// Headers naming the user (the first present wins).
    pub username: Vec<String>,
    /// Headers naming groups (every value of each).
    pub group: Vec<String>,
    /// Prefixes of headers carrying extra attributes.
    pub extra_prefix: Vec<String>,
}

impl Default for RequestHeaders {
    fn default() -> Self {
        Self {
            username: vec!["X-Remote-User".into()],
            group: vec!["X-Remote-Group".into()],
            extra_prefix: vec!["X-Remote-Extra-".into()],
        }
    }
}

impl RequestHeaders {
    /// The caller the headers name, if any.
    pub fn caller(&self, headers: &HeaderMap) -> Option<Caller> {
        let user = self
            .username
            .iter()
            .find_map(|h| headers.get(h.as_str())?.to_str().ok())
            .filter(|u| !u.is_empty())?
            .to_owned();
        let groups = self
            .group
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()))
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            for prefix in &self.extra_prefix {
                let prefix = prefix.to_ascii_lowercase();
                if let Some(key) = name.as_str().strip_prefix(prefix.as_str())
                    && let Ok(v) = value.to_str()
                {
                    extra.entry(key.to_owned()).or_default().push(v.to_owned());
                }
            }
        }
        Some(Caller {
            user,
            groups,
            extra,
        })
    }
}

/// Decides whether a caller may read a metric in a namespace.
pub trait Authorizer: Send + Sync {
    /// `Ok(())` when allowed, else why not.
    fn allow<'a>(
        &'a self,
        caller: &'a Caller,
        namespace: &'a str,
        metric: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

/// Asks the API server (SubjectAccessReview) whether the caller may `list` the metric in the namespace, as the
/// API server would for a resource of this group.
pub struct SubjectAccessReviewer {
    client: Client,
}

impl SubjectAccessReviewer {
    /// An authorizer using `client` (which may create SubjectAccessReviews).
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl Authorizer for SubjectAccessReviewer {
    fn allow<'a>(
        &'a self,
        caller: &'a Caller,
        namespace: &'a str,
        metric: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(self.review(caller, namespace, metric))
    }
}

impl SubjectAccessReviewer {
    async fn review(&self, caller: &Caller, namespace: &str, metric: &str) -> Result<(), Error> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(caller.user.clone()),
                groups: Some(caller.groups.clone()),
                extra: (!caller.extra.is_empty()).then(|| caller.extra.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(GROUP.into()),
                    version: Some(VERSION.into()),
                    resource: Some(metric.into()),
                    namespace: Some(namespace.into()),
                    verb: Some("list".into()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await?;
        let status = answer.status.unwrap_or_default();
        if status.allowed {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "user {:?} may not list {GROUP}/{metric} in namespace {namespace:?}{}",
                caller.user,
                status
                    .reason
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )))
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
struct Shared {
    broker: Broker,
    headers: Arc<RequestHeaders>,
    authorizer: Arc<dyn Authorizer>,
}

/// The routes of the external metrics API. Serve them only behind [`tls`]: the request headers are trusted
/// because the connection carries the aggregator's client certificate.
pub fn router(broker: Broker, headers: RequestHeaders, authorizer: Arc<dyn Authorizer>) -> Router {
    let shared = Shared {
        broker,
        headers: Arc::new(headers),
        authorizer,
    };
    Router::new()
        .route("/apis", get(group_list))
        .route(&format!("/apis/{GROUP}"), get(group))
        .route(&format!("/apis/{GROUP}/{VERSION}"), get(resources))
        .route(
            &format!("/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{{metric}}"),
            get(metric_values),
        )
        .with_state(shared)
}

fn api_group() -> Value {
    let version = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
        "versions": [version.clone()], "preferredVersion": version,
    })
}

async fn group_list() -> axum::Json<Value> {
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group()]}))
}

async fn group() -> axum::Json<Value> {
    axum::Json(api_group())
}

async fn resources() -> axum::Json<Value> {
    axum::Json(json!({
        "kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [{
            "name": QUEUE_DEPTH, "singularName": "", "namespaced": true,
            "kind": "ExternalMetricValueList", "verbs": ["get"],
        }],
    }))
}

/// Query parameters of a metric read.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetricQuery {
    #[serde(default)]
    label_selector: String,
}

async fn metric_values(
    State(shared): State<Shared>,
    Path((namespace, metric)): Path<(String, String)>,
    Query(query): Query<MetricQuery>,
    headers: HeaderMap,
) -> Result<axum::Json<Value>, Error> {
    let caller = shared
        .headers
        .caller(&headers)
        .ok_or(Error::Unauthenticated)?;
    if metric != QUEUE_DEPTH {
        return Err(Error::NotFound(metric));
    }
    shared
        .authorizer
        .allow(&caller, &namespace, &metric)
        .await
        .inspect_err(
            |e| warn!(user = %caller.user, namespace, metric, error = %e, "external metric read refused"),
        )?;
    if !shared.broker.is_ready() {
        return Err(Error::NotLeader);
    }
    let pools = match pools_selected(&query.label_selector)? {
        Selected::Pools(pools) => pools,
        Selected::AnyPool => shared.broker.pools(&namespace),
    };
    let now = jiff::Timestamp::now();
    let items: Vec<Value> = pools
        .iter()
        .map(|pool| {
            let queued = shared.broker.demand(&namespace, pool).queued;
            json!({
                "metricName": QUEUE_DEPTH,
                "metricLabels": {POOL_LABEL: pool},
                "timestamp": now.to_string(),
                "value": queued.to_string(),
            })
        })
        .collect();
    debug!(user = %caller.user, namespace, selector = %query.label_selector, items = items.len(), "external metric read");
    Ok(axum::Json(json!({
        "kind": "ExternalMetricValueList",
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    })))
}

/// Which pools a label selector picks.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Selected {
    /// These pools (possibly none: the selector matches no pool).
    Pools(BTreeSet<String>),
    /// The selector says nothing about pools.
    AnyPool,
}

/// Reads a label selector over the metric's one label, [`POOL_LABEL`]: `pool=a`, `pool==a`, `pool in (a,b)`,
/// comma-separated requirements (all must hold). A requirement on any other label matches nothing (the metric
/// carries no other label); other operators are refused.
fn pools_selected(selector: &str) -> Result<Selected, Error> {
    let mut selected = Selected::AnyPool;
    for requirement in split_requirements(selector) {
        let requirement = requirement.trim();
        if requirement.is_empty() {
            continue;
        }
        let (key, values) = if let Some((k, v)) = requirement.split_once("==") {
            (k.trim(), BTreeSet::from([v.trim().to_owned()]))
        } else if let Some((k, v)) = requirement.split_once("!=") {
            return Err(Error::BadRequest(format!(
                "label selector {requirement:?}: only = and in are supported (key {k:?}, value {v:?})"
            )));
        } else if let Some((k, v)) = requirement.split_once('=') {
            (k.trim(), BTreeSet::from([v.trim().to_owned()]))
        } else if let Some((k, rest)) = requirement.split_once(" in ") {
            let set = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| {
                    Error::BadRequest(format!("label selector {requirement:?}: expected (a,b)"))
                })?;
            (
                k.trim(),
                set.split(',').map(|v| v.trim().to_owned()).collect(),
            )
        } else {
            return Err(Error::BadRequest(format!(
                "label selector {requirement:?}: only = and in are supported"
            )));
        };
        if key != POOL_LABEL {
            return Ok(Selected::Pools(BTreeSet::new()));
        }
        selected = match selected {
            Selected::AnyPool => Selected::Pools(values),
            Selected::Pools(have) => Selected::Pools(have.intersection(&values).cloned().collect()),
        };
    }
    Ok(selected)
}

/// Splits a selector at the commas that are not inside parentheses.
fn split_requirements(selector: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0u32, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
}

#[cfg(test)]
mod tests;
