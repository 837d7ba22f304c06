//! The status writer's fencing of reports by FlowRun UID, against a fake API server that serves one FlowRun.

use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;

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
    fr.status = Some(
        batch::plan(
            &fr,
            &[],
            Timestamp::now(),
            Limits::default(),
            &crate::engine::NOT_ASKED,
        )
        .decision
        .status,
    );
    serde_json::to_value(&fr).unwrap()
}

/// Gives a stored object the next resourceVersion, as the API server does on every write.
fn bump(object: &mut Value) {
    let rv: u64 = object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    object["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
}

/// Stores a write the way the API server does: a merge patch is merged in; a PUT of the status subresource
/// replaces the status and leaves the rest of the object as stored.
fn store(object: &mut Value, method: &Method, body: &Value) {
    if method == Method::PUT {
        match body.get("status") {
            Some(status) => object["status"] = status.clone(),
            None => {
                object.as_object_mut().unwrap().remove("status");
            }
        }
    } else {
        crate::engine::patch::apply_merge_patch(object, body);
    }
}

/// A JSON answer of the fake API servers below.
fn reply(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// The `Accept` header of a request, or "" without one.
fn accept_of<B>(req: &Request<B>) -> String {
    req.headers()
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The stored `object` as the API server answers a request that accepts `accept`: its metadata alone when
/// `PartialObjectMetadata` comes first, else the whole object.
fn as_asked(accept: &str, object: &Value) -> Value {
    if accept.starts_with("application/json;as=PartialObjectMetadata;") {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
               "metadata": object["metadata"]})
    } else {
        object.clone()
    }
}

/// Answers GETs and status writes of `ns/c` with [`run`], anything else with 404.
fn client() -> Client {
    let service = tower::service_fn(|req: Request<kube::client::Body>| async move {
        let path = "/apis/sluice.dev/v1alpha1/namespaces/ns/flowruns/c";
        let found = (req.method() == Method::GET && req.uri().path() == path)
            || (req.method() == Method::PUT && req.uri().path() == format!("{path}/status"));
        let (status, body) = if found {
            (StatusCode::OK, run())
        } else {
            let missing = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"});
            (StatusCode::NOT_FOUND, missing)
        };
        Ok::<_, Infallible>(reply(status, &body))
    });
    Client::new(service, "default")
}

/// A status writer on `client`, with default limits and its own metrics.
fn writer(client: Client) -> Arc<StatusWriter> {
    StatusWriter::new(
        client.clone(),
        Effects::new(client, None),
        Metrics::default(),
        Limits::default(),
    )
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
    let err = writer(client())
        .record(completion(Some("old")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SinkError::Stale(why) if why.contains("UID old")),
        "{err}"
    );
    // The same report for the live run, or in the older id form without a UID, is persisted (each by a
    // writer of its own, which reads the run with the attempt still open from the fake server).
    for uid in [Some("new"), None] {
        assert_eq!(
            writer(client()).record(completion(uid)).await,
            Ok(Recorded::Applied),
            "{uid:?}"
        );
    }
}

/// Waits until the writer has no lane left; fails after 5 s (a lane idles 10 s when it cannot end at once).
async fn no_lane_within_5s(writer: &Arc<StatusWriter>, what: &str) {
    let lanes = || writer.actors.lock().unwrap().len();
    tokio::time::timeout(Duration::from_secs(5), async {
        while lanes() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!("the lane of {what} is still there after 5 s (it should end at once)")
    });
}

#[tokio::test]
async fn a_lane_ends_when_it_wrote_nothing_or_once_the_watch_delivered_its_last_write() {
    let writer = writer(client());
    let lanes = |writer: &Arc<StatusWriter>| writer.actors.lock().unwrap().len();
    // The run as served is already decided: the reconcile reads it, decides, writes nothing.
    writer.reconcile("ns", "c", None).await.unwrap();
    no_lane_within_5s(&writer, "a run decided without a write").await;
    assert_eq!(writer.metrics.status_writes.get(), 0, "nothing to write");

    // A result is written; the lane stays to recognise the watch echo of that write.
    assert_eq!(
        writer.record(completion(Some("new"))).await,
        Ok(Recorded::Applied)
    );
    assert_eq!(writer.metrics.status_writes.get(), 1);
    assert_eq!(
        lanes(&writer),
        1,
        "the lane that wrote ended before its echo"
    );

    // The watch delivers that write: the cache now holds all the lane knew, and the lane goes.
    let echo = Arc::new(CachedFlowRun::new(serde_json::from_value(run()).unwrap()));
    writer.reconcile("ns", "c", Some(echo)).await.unwrap();
    assert_eq!(
        writer.metrics.own_write_reconciles.get(),
        1,
        "the echo is answered from memory"
    );
    no_lane_within_5s(&writer, "a run whose last write the watch delivered").await;
    assert_eq!(writer.metrics.status_writes.get(), 1);
}

/// A fake API server holding one FlowRun `ns/s` that waits for a signal, enforcing resourceVersion
/// preconditions as the API server does. The user's signal lands between the version the lane decides on and
/// the lane's first write, so that write conflicts. Records every status write.
fn signalled_client(patches: std::sync::Arc<Mutex<Vec<Value>>>) -> (Client, Value) {
    let initial = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "s", "namespace": "ns", "uid": "u", "generation": 1, "resourceVersion": "1"},
        "spec": {"steps": [{"name": "approval", "waitForSignal": {"name": "go"}}]}
    });
    let stored = std::sync::Arc::new(Mutex::new(initial.clone()));
    let service = tower::service_fn(move |req: Request<kube::client::Body>| {
        let (stored, patches) = (stored.clone(), patches.clone());
        async move {
            use http_body_util::BodyExt;
            let method = req.method().clone();
            let accept = accept_of(&req);
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut object = stored.lock().unwrap();
            let mut status = StatusCode::OK;
            if method == Method::PATCH || method == Method::PUT {
                let patch: Value = serde_json::from_slice(&body).unwrap();
                let first = patches.lock().unwrap().is_empty();
                patches.lock().unwrap().push(patch.clone());
                if first {
                    object["status"]["signals"] = json!({"go": {"payload": {"ok": true}}});
                    bump(&mut object);
                }
                let precondition = &patch["metadata"]["resourceVersion"];
                if !precondition.is_null() && *precondition != object["metadata"]["resourceVersion"]
                {
                    status = StatusCode::CONFLICT;
                } else {
                    store(&mut object, &method, &patch);
                    bump(&mut object);
                }
            }
            let body = if status == StatusCode::CONFLICT {
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict",
                       "code": 409, "message": "the object has been modified"})
            } else {
                as_asked(&accept, &object)
            };
            Ok::<_, Infallible>(reply(status, &body))
        }
    });
    (Client::new(service, "default"), initial)
}

#[tokio::test]
async fn a_write_that_conflicts_with_a_signal_is_decided_again_on_the_fresh_run() {
    let patches = std::sync::Arc::new(Mutex::new(Vec::new()));
    let (client, initial) = signalled_client(patches.clone());
    let writer = StatusWriter::new(
        client.clone(),
        Effects::new(client, None),
        Metrics::default(),
        Limits::default(),
    );
    let observed: FlowRun = serde_json::from_value(initial).unwrap();
    writer
        .reconcile("ns", "s", Some(Arc::new(CachedFlowRun::new(observed))))
        .await
        .unwrap();
    // The first write is fenced by the version without the signal and refused; the lane reads the run and
    // decides again at once, without waiting for a watch event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let consumed = patches
            .lock()
            .unwrap()
            .iter()
            .any(|p| p["status"]["steps"]["approval"]["phase"] == "Succeeded");
        if consumed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the signal was never consumed; patches: {:?}",
            patches.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let patches = patches.lock().unwrap();
    assert!(
        patches
            .iter()
            .all(|p| p["metadata"]["resourceVersion"].is_string()),
        "every write is fenced by a resourceVersion: {patches:?}"
    );
    assert_eq!(
        patches[0]["metadata"]["resourceVersion"], "1",
        "the first write was decided on the version without the signal"
    );
    assert!(
        patches[0]["status"].get("signals").is_none(),
        "the first write carries the signals it observed (none): {}",
        patches[0]
    );
    let consuming = patches
        .iter()
        .find(|p| p["status"]["steps"]["approval"]["phase"] == "Succeeded")
        .unwrap();
    assert_eq!(
        consuming["status"]["signals"],
        json!({"go": {"payload": {"ok": true}}}),
        "the write that consumed the signal keeps it as the user wrote it"
    );
}

#[tokio::test]
async fn a_run_that_does_not_decode_is_failed_once_with_the_reason() {
    let patches = std::sync::Arc::new(Mutex::new(Vec::new()));
    let recorded = patches.clone();
    let service = tower::service_fn(move |req: Request<kube::client::Body>| {
        let recorded = recorded.clone();
        async move {
            use http_body_util::BodyExt;
            let (method, path) = (req.method().clone(), req.uri().path().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let response = if method == Method::PATCH && path.ends_with("/flowruns/odd/status") {
                let patch: Value = serde_json::from_slice(&body).unwrap();
                recorded.lock().unwrap().push(patch);
                json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
                       "metadata": {"name": "odd", "namespace": "ns", "resourceVersion": "5"},
                       "spec": {"steps": [{"name": "a", "handler": 7}]},
                       "status": {"phase": "Failed"}})
            } else {
                // Events and anything else: accepted.
                json!({"apiVersion": "v1", "kind": "Status", "status": "Success"})
            };
            Ok::<_, Infallible>(reply(StatusCode::OK, &response))
        }
    });
    let client = Client::new(service, "default");
    let writer = StatusWriter::new(
        client.clone(),
        Effects::new(client, None),
        Metrics::default(),
        Limits::default(),
    );
    let odd = |phase: &str, rv: &str| -> CachedFlowRun {
        serde_json::from_value(json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
            "metadata": {"name": "odd", "namespace": "ns", "resourceVersion": rv, "generation": 1},
            "spec": {"steps": [{"name": "a", "handler": 7}]},
            "status": {"phase": phase}
        }))
        .unwrap()
    };
    let wake = writer
        .reconcile("ns", "odd", Some(Arc::new(odd("Running", "4"))))
        .await
        .unwrap();
    assert_eq!(wake, None);
    {
        let patches = patches.lock().unwrap();
        assert_eq!(patches.len(), 1, "{patches:?}");
        let p = &patches[0];
        assert_eq!(p["metadata"]["resourceVersion"], "4", "fenced: {p}");
        assert_eq!(p["status"]["phase"], "Failed");
        let succeeded = &p["status"]["conditions"][1];
        assert_eq!(succeeded["type"], "Succeeded");
        assert_eq!(succeeded["reason"], "Undecodable");
        assert!(
            succeeded["message"]
                .as_str()
                .unwrap()
                .contains("invalid type"),
            "{succeeded}"
        );
    }
    // Its Failed version, once cached, is left alone: no second write, and a report for it is refused.
    writer
        .reconcile("ns", "odd", Some(Arc::new(odd("Failed", "5"))))
        .await
        .unwrap();
    assert_eq!(patches.lock().unwrap().len(), 1);
}

/// A fake API server holding one FlowRun `ns/t` whose field owners are tracked, enforcing resourceVersion
/// preconditions; clearing `managedFields` on the main resource answers `clear` (200 or a refusal), and a 200
/// clears them only if `honoured` (else the owners stay, as if something put them back). Records every write
/// as (path, body).
fn tracked_client(
    name: &'static str,
    clear: StatusCode,
    honoured: bool,
    patches: std::sync::Arc<Mutex<Vec<(String, Value)>>>,
) -> (Client, Value) {
    let initial = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": name, "namespace": "ns", "uid": "u", "generation": 1, "resourceVersion": "1",
                     "managedFields": [{"manager": "kubectl", "operation": "Update",
                                        "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]},
        "spec": {"pool": "p", "steps": [{"name": "a", "handler": "h"}]}
    });
    let stored = std::sync::Arc::new(Mutex::new(initial.clone()));
    let service = tower::service_fn(move |req: Request<kube::client::Body>| {
        let (stored, patches) = (stored.clone(), patches.clone());
        async move {
            use http_body_util::BodyExt;
            let (method, path) = (req.method().clone(), req.uri().path().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut object = stored.lock().unwrap();
            let patch: Value = serde_json::from_slice(&body).unwrap();
            patches.lock().unwrap().push((path.clone(), patch.clone()));
            let status =
                if patch["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
                    StatusCode::CONFLICT
                } else if path.ends_with("/status") {
                    StatusCode::OK
                } else {
                    clear
                };
            if status == StatusCode::OK {
                let mut patch = patch;
                if patch["metadata"]["managedFields"] == json!([{}]) {
                    if honoured {
                        patch["metadata"]["managedFields"] = Value::Null;
                    } else if let Some(meta) = patch["metadata"].as_object_mut() {
                        meta.remove("managedFields");
                    }
                }
                store(&mut object, &method, &patch);
                bump(&mut object);
            }
            let body = if status == StatusCode::OK {
                object.clone()
            } else {
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "code": status.as_u16(), "message": "refused"})
            };
            Ok::<_, Infallible>(reply(status, &body))
        }
    });
    (Client::new(service, "default"), initial)
}

/// A writer on [`tracked_client`] after it reconciled the run once, and the writes it sent.
async fn reconcile_tracked(
    clear: StatusCode,
    honoured: bool,
) -> (Arc<StatusWriter>, Vec<(String, Value)>) {
    let patches = std::sync::Arc::new(Mutex::new(Vec::new()));
    let (client, initial) = tracked_client("t", clear, honoured, patches.clone());
    let writer = writer(client);
    let observed: FlowRun = serde_json::from_value(initial).unwrap();
    let reconcile = writer.reconcile("ns", "t", Some(Arc::new(CachedFlowRun::new(observed))));
    tokio::time::timeout(Duration::from_secs(5), reconcile)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no answer within 5 s after {} writes",
                patches.lock().unwrap().len()
            )
        })
        .unwrap();
    let sent = patches.lock().unwrap().clone();
    (writer, sent)
}

#[tokio::test]
async fn field_owners_are_cleared_once_before_the_first_status_write() {
    let (writer, patches) = reconcile_tracked(StatusCode::OK, true).await;
    let run = "/apis/sluice.dev/v1alpha1/namespaces/ns/flowruns/t";
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert_eq!(patches[0].0, run);
    assert_eq!(
        patches[0].1,
        json!({"metadata": {"managedFields": [{}], "resourceVersion": "1"}}),
        "only the field owners are cleared, fenced by the version decided on"
    );
    assert_eq!(patches[1].0, format!("{run}/status"));
    assert_eq!(patches[1].1["metadata"]["resourceVersion"], "2");
    assert_eq!(patches[1].1["status"]["steps"]["a"]["phase"], "Ready");
    assert_eq!(writer.metrics.field_owner_clears.get(), 1);
    assert_eq!(writer.metrics.status_writes.get(), 1);
}

/// Reconciles a tracked run whose clear answers `clear` (the owners gone or not, per `honoured`) and checks
/// that the writer tried once, wrote the status anyway, and cleared no more from then on.
async fn clearing_turns_off(clear: StatusCode, honoured: bool) {
    let (writer, patches) = reconcile_tracked(clear, honoured).await;
    let paths: Vec<String> = patches.iter().map(|(p, _)| p.clone()).collect();
    let run = "/apis/sluice.dev/v1alpha1/namespaces/ns/flowruns/t";
    assert_eq!(paths, [run.to_owned(), format!("{run}/status")]);
    assert_eq!(writer.metrics.status_writes.get(), 1);
    assert!(
        !writer.clear_field_owners.load(Ordering::Relaxed),
        "the writer still clears field owners after a clear answered {clear} (owners gone: {honoured})"
    );
}

#[tokio::test]
async fn a_refused_clear_of_field_owners_turns_clearing_off_and_the_status_is_written() {
    clearing_turns_off(StatusCode::FORBIDDEN, true).await;
}

#[tokio::test]
async fn a_clear_that_leaves_the_owners_turns_clearing_off_instead_of_repeating() {
    clearing_turns_off(StatusCode::OK, false).await;
}

/// A fake API server holding the chain `ns/c` (UID `new`): `a`, then `b`. It stores status writes the way
/// the API server does, fenced by resourceVersion, answers them as asked (or, without `metadata_answers`,
/// always with the whole run, as a server that cannot answer with metadata only), and records each write
/// with its `Accept` header and every GET.
fn chain_client(
    writes: Arc<Mutex<Vec<(String, Value)>>>,
    gets: Arc<AtomicUsize>,
    metadata_answers: bool,
) -> (Client, Value) {
    let initial = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "FlowRun",
        "metadata": {"name": "c", "namespace": "ns", "uid": "new", "generation": 1, "resourceVersion": "1"},
        "spec": {"pool": "p", "steps": [{"name": "a", "handler": "h"},
                                         {"name": "b", "handler": "h", "dependsOn": ["a"]}]}
    });
    let stored = Arc::new(Mutex::new(initial.clone()));
    let service = tower::service_fn(move |req: Request<kube::client::Body>| {
        let (stored, writes, gets) = (stored.clone(), writes.clone(), gets.clone());
        async move {
            use http_body_util::BodyExt;
            let method = req.method().clone();
            let accept = accept_of(&req);
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut object = stored.lock().unwrap();
            if method == Method::GET {
                gets.fetch_add(1, Ordering::SeqCst);
                return Ok::<_, Infallible>(reply(StatusCode::OK, &object));
            }
            let write: Value = serde_json::from_slice(&body).unwrap();
            writes.lock().unwrap().push((accept.clone(), write.clone()));
            if write["metadata"]["resourceVersion"] != object["metadata"]["resourceVersion"] {
                let conflict = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Conflict", "code": 409, "message": "the object has been modified"});
                return Ok(reply(StatusCode::CONFLICT, &conflict));
            }
            store(&mut object, &method, &write);
            bump(&mut object);
            let answer = if metadata_answers {
                as_asked(&accept, &object)
            } else {
                object.clone()
            };
            Ok(reply(StatusCode::OK, &answer))
        }
    });
    (Client::new(service, "default"), initial)
}

#[tokio::test]
async fn a_status_write_is_answered_with_metadata_only_and_the_lane_goes_on_from_what_it_sent() {
    lane_goes_on_from_what_it_sent(true).await;
}

#[tokio::test]
async fn a_status_write_answered_with_the_whole_run_is_read_the_same() {
    lane_goes_on_from_what_it_sent(false).await;
}

/// A chain's first two writes against [`chain_client`]: the second is decided on the lane's own copy of the
/// first.
async fn lane_goes_on_from_what_it_sent(metadata_answers: bool) {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let gets = Arc::new(AtomicUsize::new(0));
    let (client, initial) = chain_client(writes.clone(), gets.clone(), metadata_answers);
    let writer = writer(client);
    let observed: FlowRun = serde_json::from_value(initial).unwrap();
    writer
        .reconcile("ns", "c", Some(Arc::new(CachedFlowRun::new(observed))))
        .await
        .unwrap();
    // `a`'s result lands on the lane's own copy of the first write: its version and the attempt it reserved.
    assert_eq!(
        writer.record(completion(Some("new"))).await,
        Ok(Recorded::Applied)
    );
    let writes = writes.lock().unwrap();
    assert_eq!(
        writes.len(),
        2,
        "one write to start, one for the result: {writes:?}"
    );
    assert!(
        writes
            .iter()
            .all(|(accept, _)| accept.starts_with("application/json;as=PartialObjectMetadata;")),
        "every status write asks for the metadata alone first: {writes:?}"
    );
    assert_eq!(
        writes[1].1["metadata"]["resourceVersion"], "2",
        "the second write is fenced by the version the first one made"
    );
    let steps = &writes[1].1["status"]["steps"];
    assert_eq!(steps["a"]["phase"], "Succeeded", "{steps}");
    assert_eq!(steps["a"]["output"], json!({"ok": true}), "{steps}");
    assert_eq!(
        steps["b"]["attempts"], 1,
        "b's first attempt is reserved: {steps}"
    );
    assert_eq!(
        gets.load(Ordering::SeqCst),
        0,
        "nothing was read back: the answers' versions and the statuses sent were enough"
    );
}

/// Finds every `default` in a schema, with its path.
fn defaults_under(schema: &Value, path: &str, found: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            for (key, sub) in map {
                if key == "default" {
                    found.push(path.to_owned());
                }
                defaults_under(sub, &format!("{path}.{key}"), found);
            }
        }
        Value::Array(items) => {
            for (i, sub) in items.iter().enumerate() {
                defaults_under(sub, &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[test]
fn the_status_schema_sets_no_defaults_so_the_api_server_stores_the_status_as_sent() {
    // The CRD as shipped (crds/), after the generator opened most of the status.
    let crd = crate::api::crds::all()
        .into_iter()
        .find(|crd| crd.metadata.name.as_deref() == Some("flowruns.sluice.dev"))
        .expect("the FlowRun CRD");
    let crd = serde_json::to_value(crd).unwrap();
    let status = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"];
    assert!(status.is_object(), "the CRD has a status schema");
    let mut found = Vec::new();
    defaults_under(status, "status", &mut found);
    assert!(
        found.is_empty(),
        "a default in the status schema would make the stored status differ from the one the writer sent, \
         and the lane goes on from what it sent: {found:?}"
    );
}
