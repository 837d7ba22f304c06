//! The status writer's fencing of reports by FlowRun UID, against a fake API server that serves one FlowRun.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::*;
use crate::broker::sink::TaskRef;

/// The FlowRun `ns/c` with UID `new`, its step `a` at attempt 1 reserved (as after its first write).
fn run() -> Value {
    let fr: FlowRun = serde_json::from_value(json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "c", "namespace": "ns", "uid": "new", "generation": 1, "resourceVersion": "1"},
        "spec": {"pool": "p", "steps": [{"name": "a", "handler": "h"}]}
    }))
    .unwrap();
    let mut fr = fr;
    fr.status = Some(batch::plan(&fr, &[], Timestamp::now()).decision.status);
    serde_json::to_value(&fr).unwrap()
}

/// Answers GETs and status patches of `ns/c` with [`run`], anything else with 404.
fn client() -> Client {
    let service = tower::service_fn(|req: Request<kube::client::Body>| async move {
        let path = "/apis/sluice.dev/v1alpha1/namespaces/ns/flowruns/c";
        let found = (req.method() == Method::GET && req.uri().path() == path)
            || (req.method() == Method::PATCH && req.uri().path() == format!("{path}/status"));
        let (status, body) = if found {
            (StatusCode::OK, run())
        } else {
            let missing = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"});
            (StatusCode::NOT_FOUND, missing)
        };
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        Ok::<_, Infallible>(response)
    });
    Client::new(service, "default")
}

fn completion(uid: Option<&str>) -> Report {
    Report {
        task: TaskRef {
            namespace: "ns".into(),
            flow_run: "c".into(),
            step: "a".into(),
            instance: None,
            uid: uid.map(str::to_owned),
        },
        attempt: 1,
        worker: "w".into(),
        outcome: Outcome::Completed(json!({"ok": true})),
    }
}

#[tokio::test]
async fn a_report_for_a_deleted_run_of_the_same_name_is_stale() {
    let client = client();
    let writer = StatusWriter::new(
        client.clone(),
        Effects::new(client, None),
        Metrics::default(),
    );
    let err = writer.record(completion(Some("old"))).await.unwrap_err();
    assert!(
        matches!(&err, SinkError::Stale(why) if why.contains("UID old")),
        "{err}"
    );
    // The same report for the live run, or in the older id form without a UID, is persisted (the fake server
    // answers every patch with the run as it was, so the attempt stays open for the second one).
    for uid in [Some("new"), None] {
        assert_eq!(
            writer.record(completion(uid)).await,
            Ok(Recorded::Applied),
            "{uid:?}"
        );
    }
}
