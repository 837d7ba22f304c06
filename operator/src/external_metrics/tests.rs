use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sluice_wire::{FlowRunRef, Task, TaskId};
use tower::ServiceExt;

use super::tls::RequestHeaderAuth;
use super::*;
use crate::broker::auth::TrustAll;
use crate::broker::queue::QueuedTask;
use crate::broker::sink::{Claimed, Recorded, Report, ResultSink, SinkError};

struct NullSink;

impl ResultSink for NullSink {
    fn record(&self, _: Report) -> BoxFuture<'static, Result<Recorded, SinkError>> {
        Box::pin(async { Ok(Recorded::Applied) })
    }
    fn claimed(&self, _: Vec<Claimed>) {}
}

/// Allows only `system:serviceaccount:kube-system:horizontal-pod-autoscaler`, and records what it was asked.
#[derive(Default)]
struct OnlyHpa {
    asked: Mutex<Vec<(Caller, String, String)>>,
}

impl Authorizer for OnlyHpa {
    fn allow<'a>(
        &'a self,
        caller: &'a Caller,
        namespace: &'a str,
        metric: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.asked
            .lock()
            .unwrap()
            .push((caller.clone(), namespace.into(), metric.into()));
        let ok = caller.user == "system:serviceaccount:kube-system:horizontal-pod-autoscaler";
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err(Error::Forbidden("no".into()))
            }
        })
    }
}

fn task(ns: &str, pool: &str, step: &str) -> QueuedTask {
    QueuedTask {
        task: Task {
            id: TaskId::from_parts(ns, "fr", step, None),
            attempt: 1,
            handler: "h".into(),
            input: Value::Null,
            deadline: None,
            heartbeat_interval_seconds: 1,
            flow_run: FlowRunRef {
                namespace: ns.into(),
                name: "fr".into(),
                uid: "u".into(),
            },
            step: step.into(),
            instance: None,
        },
        pool: format!("{ns}/{pool}"),
        timeout: None,
        heartbeat_timeout: Duration::from_secs(30),
    }
}

fn setup() -> (Router, Broker, Arc<OnlyHpa>) {
    let broker = Broker::new(Arc::new(NullSink), Arc::new(TrustAll));
    broker.set_ready(true);
    broker.offer((0..3).map(|i| task("ns", "a", &format!("a{i}"))));
    broker.offer((0..5).map(|i| task("ns", "b", &format!("b{i}"))));
    broker.offer([task("other", "a", "x")]);
    let authz = Arc::new(OnlyHpa::default());
    let router = router(broker.clone(), RequestHeaders::default(), authz.clone());
    (router, broker, authz)
}

async fn get(router: &Router, path: &str, user: Option<&str>) -> (StatusCode, Value) {
    let mut request = Request::get(path);
    if let Some(user) = user {
        request = request
            .header("X-Remote-User", user)
            .header("X-Remote-Group", "system:serviceaccounts")
            .header("X-Remote-Group", "system:authenticated")
            .header("X-Remote-Extra-Scopes", "s1");
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

const HPA: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";

#[tokio::test]
async fn serves_the_queue_depth_of_the_selected_pool_to_an_authorized_caller() {
    let (router, _, authz) = setup();
    let (status, body) = get(
        &router,
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/sluice_queue_depth?labelSelector=pool%3Db",
        Some(HPA),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kind"], "ExternalMetricValueList");
    assert_eq!(body["apiVersion"], "external.metrics.k8s.io/v1beta1");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metricName"], QUEUE_DEPTH);
    assert_eq!(items[0]["metricLabels"], json!({"pool": "b"}));
    assert_eq!(items[0]["value"], "5");
    assert!(items[0]["timestamp"].as_str().unwrap().ends_with('Z'));

    let asked = authz.asked.lock().unwrap().clone();
    let (caller, namespace, metric) = &asked[0];
    assert_eq!((namespace.as_str(), metric.as_str()), ("ns", QUEUE_DEPTH));
    assert_eq!(
        caller.groups,
        ["system:serviceaccounts", "system:authenticated"]
    );
    assert_eq!(caller.extra.get("scopes"), Some(&vec!["s1".to_owned()]));
}

#[tokio::test]
async fn without_a_pool_selector_every_pool_of_the_namespace_is_listed() {
    let (router, _, _) = setup();
    let (status, body) = get(
        &router,
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/sluice_queue_depth",
        Some(HPA),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let values: Vec<(String, String)> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["metricLabels"]["pool"].as_str().unwrap().to_owned(),
                i["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        values,
        [("a".into(), "3".into()), ("b".into(), "5".into())],
        "the other namespace's pool a is not listed"
    );
    let (_, body) = get(
        &router,
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/sluice_queue_depth?labelSelector=team%3Dx",
        Some(HPA),
    )
    .await;
    assert_eq!(body["items"], json!([]), "no pool carries the label team");
}

#[tokio::test]
async fn refuses_anonymous_unauthorized_unknown_and_unready() {
    let (router, broker, _) = setup();
    let path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/sluice_queue_depth";
    let (status, body) = get(&router, path, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["kind"], "Status");
    let (status, _) = get(&router, path, Some("system:anonymous")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get(
        &router,
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/ns/other_metric",
        Some(HPA),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    broker.set_ready(false);
    let (status, _) = get(&router, path, Some(HPA)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn discovery_names_the_metric() {
    let (router, _, _) = setup();
    let (status, body) = get(&router, "/apis/external.metrics.k8s.io/v1beta1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["groupVersion"], "external.metrics.k8s.io/v1beta1");
    assert_eq!(body["resources"][0]["name"], QUEUE_DEPTH);
    assert_eq!(body["resources"][0]["namespaced"], true);
    let (_, body) = get(&router, "/apis", None).await;
    assert_eq!(body["groups"][0]["name"], GROUP);
}

#[test]
fn label_selectors_pick_pools() {
    let pools = |names: &[&str]| Selected::Pools(names.iter().map(|s| s.to_string()).collect());
    assert_eq!(pools_selected("").unwrap(), Selected::AnyPool);
    assert_eq!(pools_selected("pool=a").unwrap(), pools(&["a"]));
    assert_eq!(pools_selected("pool == a").unwrap(), pools(&["a"]));
    assert_eq!(
        pools_selected("pool in (a, b)").unwrap(),
        pools(&["a", "b"])
    );
    assert_eq!(
        pools_selected("pool in (a,b),pool=b").unwrap(),
        pools(&["b"])
    );
    assert_eq!(pools_selected("team=x").unwrap(), pools(&[]));
    assert!(pools_selected("pool!=a").is_err());
    assert!(pools_selected("!pool").is_err());
}

#[test]
fn request_header_settings_are_read_from_the_configmap() {
    let data: BTreeMap<String, String> = [
        (
            "requestheader-client-ca-file",
            "-----BEGIN CERTIFICATE-----\n...",
        ),
        ("requestheader-allowed-names", r#"["front-proxy-client"]"#),
        ("requestheader-username-headers", r#"["X-Remote-User"]"#),
        ("requestheader-group-headers", r#"["X-Remote-Group"]"#),
        (
            "requestheader-extra-headers-prefix",
            r#"["X-Remote-Extra-"]"#,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let auth = RequestHeaderAuth::from_data(&data).unwrap();
    assert_eq!(auth.allowed_names, ["front-proxy-client"]);
    assert_eq!(auth.headers, RequestHeaders::default());
    let mut without_ca = data.clone();
    without_ca.remove("requestheader-client-ca-file");
    assert!(RequestHeaderAuth::from_data(&without_ca).is_err());
}
