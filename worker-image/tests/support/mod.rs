//! An in-process fake broker (axum) that records every request and answers as a test programs it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use sluice_wire::{
    Ack, CLAIM_PATH, COMPLETE_PATH, ClaimRequest, ClaimResponse, CompleteRequest, ErrorBody,
    ErrorCode, FAIL_PATH, FailRequest, FlowRunRef, HEARTBEAT_PATH, HeartbeatRequest,
    HeartbeatResponse, Task, TaskId,
};
use tokio::sync::watch;

/// Everything the fake broker saw, and how it is told to answer.
#[derive(Clone, Debug, Default)]
pub struct BrokerState {
    /// Tasks waiting to be claimed.
    pub queue: VecDeque<Task>,
    pub claims: Vec<ClaimRequest>,
    pub heartbeats: Vec<HeartbeatRequest>,
    pub completes: Vec<CompleteRequest>,
    pub fails: Vec<FailRequest>,
    /// `Authorization` header of every request, in order.
    pub authorizations: Vec<Option<String>>,
    /// The next N claims answer 503.
    pub claim_errors_left: u32,
    /// The next N completes answer 503.
    pub complete_errors_left: u32,
    /// Every complete answers this error (e.g. 409).
    pub complete_error: Option<ErrorCode>,
    /// Every fail answers this error.
    pub fail_error: Option<ErrorCode>,
    /// Every heartbeat answers this error.
    pub heartbeat_error: Option<ErrorCode>,
    /// The heartbeat answer's `cancel`.
    pub heartbeat_cancel: bool,
}

type Shared = Arc<watch::Sender<BrokerState>>;

/// A running fake broker on 127.0.0.1.
pub struct FakeBroker {
    pub url: String,
    state: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeBroker {
    pub async fn start() -> Self {
        let state: Shared = Arc::new(watch::Sender::new(BrokerState::default()));
        let app = Router::new()
            .route(CLAIM_PATH, post(claim))
            .route(HEARTBEAT_PATH, post(heartbeat))
            .route(COMPLETE_PATH, post(complete))
            .route(FAIL_PATH, post(fail))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, state, server }
    }

    /// Queues a task for the next claim.
    pub fn push(&self, task: Task) {
        self.state.send_modify(|s| s.queue.push_back(task));
    }

    /// Changes how the broker answers.
    pub fn program(&self, change: impl FnOnce(&mut BrokerState)) {
        self.state.send_modify(change);
    }

    /// A copy of the state now.
    pub fn snapshot(&self) -> BrokerState {
        self.state.borrow().clone()
    }

    /// Waits (at most 10 s) until `condition` holds; panics naming `what` otherwise.
    pub async fn wait_for(
        &self,
        what: &str,
        condition: impl FnMut(&BrokerState) -> bool,
    ) -> BrokerState {
        let mut receiver = self.state.subscribe();
        match tokio::time::timeout(Duration::from_secs(10), receiver.wait_for(condition)).await {
            Ok(Ok(state)) => state.clone(),
            _ => panic!(
                "timed out waiting for {what}; broker state: {:#?}",
                self.snapshot()
            ),
        }
    }
}

fn error(code: ErrorCode) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap();
    (
        status,
        Json(ErrorBody::new(code, format!("fake broker says {code:?}"))),
    )
        .into_response()
}

fn authorization(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

async fn claim(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Json(request): Json<ClaimRequest>,
) -> Response {
    let mut fail = false;
    state.send_modify(|s| {
        s.claims.push(request.clone());
        s.authorizations.push(authorization(&headers));
        if s.claim_errors_left > 0 {
            s.claim_errors_left -= 1;
            fail = true;
        }
    });
    if fail {
        return error(ErrorCode::Unavailable);
    }
    let mut receiver = state.subscribe();
    let wait = Duration::from_secs(request.wait_seconds.into());
    let _ = tokio::time::timeout(wait, receiver.wait_for(|s| !s.queue.is_empty())).await;
    let mut tasks = Vec::new();
    state.send_if_modified(|s| {
        while tasks.len() < request.capacity as usize {
            match s.queue.pop_front() {
                Some(task) => tasks.push(task),
                None => break,
            }
        }
        !tasks.is_empty()
    });
    Json(ClaimResponse { tasks }).into_response()
}

/// Holds a heartbeat that asks to wait until `heartbeat_cancel` or `heartbeat_error` is set or the wait is
/// over, as the real broker does.
async fn heartbeat(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Json(request): Json<HeartbeatRequest>,
) -> Response {
    let wait = Duration::from_secs(request.wait_seconds.into());
    state.send_modify(|s| {
        s.heartbeats.push(request);
        s.authorizations.push(authorization(&headers));
    });
    let mut receiver = state.subscribe();
    let _ = tokio::time::timeout(
        wait,
        receiver.wait_for(|s| s.heartbeat_cancel || s.heartbeat_error.is_some()),
    )
    .await;
    let (answer, cancel) = {
        let s = state.borrow();
        (s.heartbeat_error, s.heartbeat_cancel)
    };
    match answer {
        Some(code) => error(code),
        None => Json(HeartbeatResponse { cancel }).into_response(),
    }
}

async fn complete(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Json(request): Json<CompleteRequest>,
) -> Response {
    let mut answer = None;
    state.send_modify(|s| {
        s.completes.push(request);
        s.authorizations.push(authorization(&headers));
        answer = s.complete_error;
        if answer.is_none() && s.complete_errors_left > 0 {
            s.complete_errors_left -= 1;
            answer = Some(ErrorCode::Unavailable);
        }
    });
    match answer {
        Some(code) => error(code),
        None => Json(Ack::default()).into_response(),
    }
}

async fn fail(
    AxumState(state): AxumState<Shared>,
    headers: HeaderMap,
    Json(request): Json<FailRequest>,
) -> Response {
    let mut answer = None;
    state.send_modify(|s| {
        s.fails.push(request);
        s.authorizations.push(authorization(&headers));
        answer = s.fail_error;
    });
    match answer {
        Some(code) => error(code),
        None => Json(Ack::default()).into_response(),
    }
}

/// A task of FlowRun `shop/order-1` for `handler`, step `step`.
pub fn task(handler: &str, step: &str, input: Value) -> Task {
    Task {
        id: TaskId::from_parts("shop", "order-1", step, None),
        attempt: 1,
        handler: handler.into(),
        input,
        deadline: None,
        heartbeat_interval_seconds: 30,
        flow_run: FlowRunRef {
            namespace: "shop".into(),
            name: "order-1".into(),
            uid: "uid-1".into(),
        },
        step: step.into(),
        instance: None,
    }
}

/// A config for the fake broker with short waits and backoffs.
pub fn config(broker: &FakeBroker) -> sluice_worker::Config {
    let mut config = sluice_worker::Config::new(&broker.url, "payments", "worker-0");
    config.wait_seconds = 1;
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    config.cancel_grace = Duration::from_secs(2);
    config.report_grace = Duration::from_secs(2);
    config
}

/// An empty JSON object.
pub fn empty() -> Value {
    json!({})
}
