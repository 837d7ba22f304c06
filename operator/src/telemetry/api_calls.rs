//! Every request the operator sends to the API server, counted by verb (`sluice_api_requests_total`): what a
//! step costs the API server is read off these counters (the benchmark does), not estimated. And bounded in
//! time ([`API_REQUEST_TIMEOUT`]), watches excepted.

use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use kube::Client;
use kube::client::{Body, ClientBuilder};
use prometheus_client::encoding::EncodeLabelSet;
use tower::util::MapRequestLayer;
use tower::{BoxError, Layer, Service};

use super::Metrics;

/// Labels of `sluice_api_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// `get` (reads and lists), `watch`, `patch`, `post`, `put` or `delete`.
    pub verb: String,
}

/// The verb of a request as counted: a GET with `watch=` in its query is a watch.
pub fn verb_of<B>(request: &http::Request<B>) -> String {
    let method = request.method().as_str().to_ascii_lowercase();
    let watch = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p.starts_with("watch=") && p != "watch=false")
    });
    if method == "get" && watch {
        "watch".to_owned()
    } else {
        method
    }
}

/// Longest a request to the API server may take to be answered, watches excepted. A FlowRun's status writes
/// go one at a time through its lane, so one hung request (a half-open connection, a stuck API server) would
/// otherwise freeze the run for good; failed after this long, the write is retried like any other failure.
/// The API server itself gives up on requests after 60 s by default, and the operator's requests are small:
/// 30 s is far beyond a healthy answer and well short of forever.
pub const API_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether a request is a watch (`watch=true` or `watch=1`), whose answer streams for as long as the watch
/// lasts: kube's watcher relies on it staying open, so it is never cut.
pub fn is_watch<B>(request: &http::Request<B>) -> bool {
    request
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| matches!(p, "watch=true" | "watch=1")))
}

/// A request to the API server was not answered in time.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the API server did not answer within {0:?}")]
pub struct RequestTimedOut(pub Duration);

/// Fails every request but watches that is not answered within a time limit ([`RequestTimeout`]).
#[derive(Clone, Copy, Debug)]
pub struct RequestTimeoutLayer {
    limit: Duration,
}

impl RequestTimeoutLayer {
    /// A layer failing requests not answered within `limit`.
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestTimeout {
            inner,
            limit: self.limit,
        }
    }
}

/// The service of [`RequestTimeoutLayer`]. The limit covers the wait for the response's head; its body is read
/// by the caller.
#[derive(Clone, Debug)]
pub struct RequestTimeout<S> {
    inner: S,
    limit: Duration,
}

impl<S, B> Service<http::Request<B>> for RequestTimeout<S>
where
    S: Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let limit = (!is_watch(&request)).then_some(self.limit);
        let answer = self.inner.call(request);
        Box::pin(async move {
            match limit {
                None => answer.await.map_err(Into::into),
                Some(limit) => match tokio::time::timeout(limit, answer).await {
                    Ok(answer) => answer.map_err(Into::into),
                    Err(_) => Err(RequestTimedOut(limit).into()),
                },
            }
        })
    }
}

/// A client for `config` that counts each request it sends into `metrics` and fails those (watches excepted)
/// not answered within [`API_REQUEST_TIMEOUT`].
pub fn counted_client(config: kube::Config, metrics: &Metrics) -> Result<Client, kube::Error> {
    let counters = metrics.api_requests.clone();
    let count = MapRequestLayer::new(move |request: http::Request<Body>| {
        counters
            .get_or_create(&ApiRequestLabels {
                verb: verb_of(&request),
            })
            .inc();
        request
    });
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&count)
        .with_layer(&RequestTimeoutLayer::new(API_REQUEST_TIMEOUT))
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, uri: &str) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
    }

    #[test]
    fn verbs() {
        let flowruns = "/apis/sluice.dev/v1alpha1/namespaces/a/flowruns";
        assert_eq!(verb_of(&request("GET", flowruns)), "get");
        assert_eq!(
            verb_of(&request(
                "GET",
                &format!("{flowruns}?watch=true&resourceVersion=1")
            )),
            "watch"
        );
        assert_eq!(
            verb_of(&request("GET", &format!("{flowruns}?watch=false"))),
            "get"
        );
        assert_eq!(
            verb_of(&request("PATCH", &format!("{flowruns}/x/status"))),
            "patch"
        );
        assert_eq!(verb_of(&request("POST", flowruns)), "post");
    }

    /// A server that never answers, behind the timeout layer.
    fn hung() -> RequestTimeout<
        impl Service<
            http::Request<()>,
            Response = http::Response<()>,
            Error = std::convert::Infallible,
            Future: Send,
        > + Clone,
    > {
        let never = tower::service_fn(|_request: http::Request<()>| {
            futures::future::pending::<Result<http::Response<()>, std::convert::Infallible>>()
        });
        RequestTimeoutLayer::new(API_REQUEST_TIMEOUT).layer(never)
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_are_not_answered_time_out() {
        let flowrun = "/apis/sluice.dev/v1alpha1/namespaces/a/flowruns/x";
        for (method, uri) in [
            ("GET", flowrun.to_owned()),
            ("PATCH", format!("{flowrun}/status")),
            ("GET", format!("{flowrun}?watch=false")),
        ] {
            let started = tokio::time::Instant::now();
            let err = tower::ServiceExt::oneshot(hung(), request(method, &uri))
                .await
                .unwrap_err();
            assert!(err.is::<RequestTimedOut>(), "{method} {uri}: {err}");
            assert_eq!(started.elapsed(), API_REQUEST_TIMEOUT, "{method} {uri}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn watches_are_not_cut() {
        let watches = "/apis/sluice.dev/v1alpha1/flowruns";
        for query in [
            "watch=true&resourceVersion=1",
            "allowWatchBookmarks=true&watch=1",
        ] {
            let watch =
                tower::ServiceExt::oneshot(hung(), request("GET", &format!("{watches}?{query}")));
            // Far past the limit, the watch is still open.
            let still_open = tokio::time::timeout(API_REQUEST_TIMEOUT * 100, watch)
                .await
                .is_err();
            assert!(still_open, "{query}");
        }
    }
}
