//! The router, the embedded assets and the server's state.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use kube::Client;

use super::security::{self, Guard};
use super::{api, live};

/// The page, with `__TOKEN__` and `__NAMESPACE__` to fill in.
const INDEX: &str = include_str!("assets/index.html");
/// The assets, served from the binary: no CDN, works offline.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "dag.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/dag.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("assets/favicon.svg"),
    ),
];

/// Which FlowRuns the server shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Those of one namespace.
    Namespace(String),
    /// Those of every namespace (`-A`).
    All,
}

impl Scope {
    /// Whether runs of namespace `ns` are shown.
    pub fn allows(&self, ns: &str) -> bool {
        match self {
            Scope::Namespace(n) => n == ns,
            Scope::All => true,
        }
    }

    /// The one namespace, unless all are shown.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Scope::Namespace(n) => Some(n),
            Scope::All => None,
        }
    }

    /// For people: `namespace "x"` or `all namespaces`.
    pub fn describe(&self) -> String {
        match self {
            Scope::Namespace(n) => format!("namespace {n:?}"),
            Scope::All => "all namespaces".into(),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    /// The client, with the user's kubeconfig credentials.
    pub client: Client,
    /// The runs shown.
    pub scope: Scope,
    /// The page, with this session's token in it.
    pub index: String,
}

fn attribute(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The page of this session: the token and the scope in `<meta>` elements (no inline script, which the
/// Content-Security-Policy forbids).
pub fn index_page(token: &str, scope: &Scope) -> String {
    INDEX
        .replace("__TOKEN__", &attribute(token))
        .replace("__NAMESPACE__", &attribute(scope.namespace().unwrap_or("")))
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// The router of a server whose requests `guard` checks.
pub fn router(state: Arc<AppState>, guard: Arc<Guard>) -> Router {
    let page = {
        let state = state.clone();
        move || {
            let html = state.index.clone();
            async move { Html(html) }
        }
    };
    Router::new()
        .route("/", get(page.clone()))
        .route("/runs/{namespace}/{name}", get(page))
        .route("/assets/{file}", get(asset))
        .route("/api/config", get(api::config))
        .route("/api/runs", get(api::list_runs))
        .route("/api/runs/{namespace}/{name}", get(api::get_run))
        .route(
            "/api/runs/{namespace}/{name}/steps/{step}",
            get(api::get_step),
        )
        .route(
            "/api/runs/{namespace}/{name}/signal",
            post(api::post_signal),
        )
        .route(
            "/api/runs/{namespace}/{name}/{action}",
            post(api::post_control),
        )
        .route("/api/live/runs", get(live::runs))
        .route("/api/live/runs/{namespace}/{name}", get(live::run))
        .fallback(api::not_found)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(guard, security::guard))
}
