//! Bounded waits on watches, whose timeout errors say what was awaited and what was seen last.

use std::fmt::Debug;
use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::wait::Condition;
use kube::runtime::watcher::{self, Event};
use kube::runtime::watcher::{watch_object, watcher};
use kube::runtime::{WatchStreamExt, reflector};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::{HarnessError, Result};

const SUMMARY_LIMIT: usize = 4000;

/// Waits until the object `name` exists and `cond` holds for it (as kube-runtime's `await_condition`), for at
/// most `timeout`. `what` names the wait in the timeout error, which also shows the object as last seen.
///
/// `cond` can be any kube-runtime [`Condition`], e.g. `conditions::is_pod_running()` or a closure
/// `|pod: Option<&Pod>| ...`. To wait for absence use [`wait_deleted`].
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    cond: impl Condition<K>,
    timeout: Duration,
    what: &str,
) -> Result<K>
where
    K: Clone + Debug + Send + DeserializeOwned + Serialize + Resource + 'static,
{
    let deadline = Instant::now() + timeout;
    let mut stream = pin!(watch_object(api.clone(), name).default_backoff());
    let mut last_seen = "nothing yet".to_string();
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) | Ok(None) => {
                return Err(HarnessError::Timeout {
                    what: what.to_string(),
                    timeout,
                    last_seen,
                });
            }
            Ok(Some(Err(e))) => last_seen = format!("watch error {e}"),
            Ok(Some(Ok(None))) => last_seen = format!("{name} does not exist"),
            Ok(Some(Ok(Some(obj)))) => {
                if cond.matches_object(Some(&obj)) {
                    return Ok(obj);
                }
                last_seen = summarize(&obj);
            }
        }
    }
}

/// Waits until the object `name` no longer exists, for at most `timeout`.
pub async fn wait_deleted<K>(api: &Api<K>, name: &str, timeout: Duration, what: &str) -> Result<()>
where
    K: Clone + Debug + Send + DeserializeOwned + Serialize + Resource + 'static,
{
    let deadline = Instant::now() + timeout;
    let mut stream = pin!(watch_object(api.clone(), name).default_backoff());
    let mut last_seen = "nothing yet".to_string();
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) | Ok(None) => {
                return Err(HarnessError::Timeout {
                    what: what.to_string(),
                    timeout,
                    last_seen,
                });
            }
            Ok(Some(Err(e))) => last_seen = format!("watch error {e}"),
            Ok(Some(Ok(None))) => return Ok(()),
            Ok(Some(Ok(Some(obj)))) => last_seen = summarize(&obj),
        }
    }
}

/// Watches the objects `config` selects (labels, fields) and waits until `cond` holds for the complete set, for
/// at most `timeout`; returns that set. The timeout error lists the objects last seen.
pub async fn wait_for_list<K>(
    api: &Api<K>,
    config: watcher::Config,
    cond: impl Fn(&[K]) -> bool,
    timeout: Duration,
    what: &str,
) -> Result<Vec<K>>
where
    K: Clone + Debug + Send + Sync + DeserializeOwned + Serialize + Resource + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let deadline = Instant::now() + timeout;
    let (reader, writer) = reflector::store();
    let mut stream = pin!(reflector(writer, watcher(api.clone(), config)).default_backoff());
    let mut listed = false;
    let mut last_seen = "nothing yet".to_string();
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) | Ok(None) => {
                return Err(HarnessError::Timeout {
                    what: what.to_string(),
                    timeout,
                    last_seen,
                });
            }
            Ok(Some(Err(e))) => last_seen = format!("watch error {e}"),
            Ok(Some(Ok(event))) => {
                if matches!(event, Event::InitDone) {
                    listed = true;
                }
                if !listed || matches!(event, Event::Init | Event::InitApply(_)) {
                    continue;
                }
                let mut objects: Vec<K> = reader.state().iter().map(|o| (**o).clone()).collect();
                objects.sort_by_key(|o| o.meta().name.clone());
                if cond(&objects) {
                    return Ok(objects);
                }
                last_seen = format!(
                    "{} objects: [{}]",
                    objects.len(),
                    objects.iter().map(summarize).collect::<Vec<_>>().join(", ")
                );
            }
        }
    }
}

/// The object as compact JSON without managed fields, cut to a readable length.
fn summarize<K: Serialize + Resource>(obj: &K) -> String {
    let mut value = serde_json::to_value(obj).unwrap_or_default();
    if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("managedFields");
    }
    let mut text = value.to_string();
    if text.len() > SUMMARY_LIMIT {
        let mut cut = SUMMARY_LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// A [`wait_for`] condition: the HorizontalPodAutoscaler reports condition `type_` (e.g. `AbleToScale`,
/// `ScalingActive`) with status `True`.
pub fn hpa_condition_true(
    type_: &'static str,
) -> impl Fn(Option<&k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler>) -> bool {
    move |hpa| {
        hpa.and_then(|h| h.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
    }
}

/// A [`wait_for`] condition: the aggregator reports the `APIService` `Available` (it reached its backend).
pub fn api_service_available(
    service: Option<&k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService>,
) -> bool {
    service
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
        })
}
