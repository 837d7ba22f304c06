//! Every request the operator sends to the API server, counted by verb (`sluice_api_requests_total`): what a
//! step costs the API server is read off these counters (the benchmark does), not estimated.

use kube::Client;
use kube::client::{Body, ClientBuilder};
use prometheus_client::encoding::EncodeLabelSet;
use tower::util::MapRequestLayer;

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

/// A client for `config` that counts each request it sends into `metrics`.
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
    Ok(ClientBuilder::try_from(config)?.with_layer(&count).build())
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
}
