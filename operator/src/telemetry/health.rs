//! The operator's health port: `/healthz` (the process is alive), `/readyz` (this replica leads and its broker
//! serves workers; non-leaders answer 503 so a Service routes workers to the leader only) and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use super::Metrics;

/// Path of the liveness probe.
pub const HEALTHZ_PATH: &str = "/healthz";
/// Path of the readiness probe.
pub const READYZ_PATH: &str = "/readyz";
/// Path of the Prometheus scrape endpoint.
pub const METRICS_PATH: &str = "/metrics";
/// Content type of `/metrics` (the OpenMetrics text format `prometheus-client` writes).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the health endpoints look at. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    metrics: Metrics,
    leader: watch::Receiver<bool>,
    broker_ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Health {
    /// Health of a replica whose leadership `leader` reports and whose broker readiness `broker_ready` tells
    /// (typically `move || broker.is_ready()`).
    pub fn new(
        metrics: Metrics,
        leader: watch::Receiver<bool>,
        broker_ready: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            metrics,
            leader,
            broker_ready: Arc::new(broker_ready),
        }
    }

    /// Why this replica is not ready, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if !*self.leader.borrow() {
            Some("not the leader")
        } else if !(self.broker_ready)() {
            Some("leader, broker not ready yet")
        } else {
            None
        }
    }

    /// The routes of the health port.
    pub fn router(&self) -> Router {
        Router::new()
            .route(HEALTHZ_PATH, get(healthz))
            .route(READYZ_PATH, get(readyz))
            .route(METRICS_PATH, get(metrics))
            .with_state(self.clone())
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(health): State<Health>) -> Response {
    match health.not_ready_reason() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn metrics(State(health): State<Health>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        health.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(router: &Router, path: &str) -> (StatusCode, Option<String>, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn healthz_is_ok_whatever_the_leadership() {
        let (_tx, rx) = watch::channel(false);
        let router = Health::new(Metrics::new(), rx, || false).router();
        let (status, _, body) = get(&router, HEALTHZ_PATH).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ok\n");
    }

    #[tokio::test]
    async fn readyz_needs_leadership_and_a_ready_broker() {
        let (tx, rx) = watch::channel(false);
        let broker_ready = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&broker_ready);
        let router = Health::new(Metrics::new(), rx, move || flag.load(Ordering::SeqCst)).router();

        let (status, _, body) = get(&router, READYZ_PATH).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not the leader\n");

        // A non-leader is not ready even if its broker claims to be.
        broker_ready.store(true, Ordering::SeqCst);
        let (status, _, _) = get(&router, READYZ_PATH).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

        broker_ready.store(false, Ordering::SeqCst);
        tx.send(true).unwrap();
        let (status, _, body) = get(&router, READYZ_PATH).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "leader, broker not ready yet\n");

        broker_ready.store(true, Ordering::SeqCst);
        let (status, _, body) = get(&router, READYZ_PATH).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ok\n");

        // Losing leadership makes it unready again at once.
        tx.send(false).unwrap();
        let (status, _, _) = get(&router, READYZ_PATH).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_text() {
        let (_tx, rx) = watch::channel(true);
        let metrics = Metrics::new();
        metrics.outcome("succeeded");
        let router = Health::new(metrics, rx, || true).router();
        let (status, content_type, body) = get(&router, METRICS_PATH).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
        assert!(
            body.contains(r#"sluice_step_outcomes_total{outcome="succeeded"} 1"#),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
    }

    #[tokio::test]
    async fn unknown_paths_are_404() {
        let (_tx, rx) = watch::channel(true);
        let router = Health::new(Metrics::new(), rx, || true).router();
        let (status, _, _) = get(&router, "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
