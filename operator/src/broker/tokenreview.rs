//! The Kubernetes [`Authenticator`]: a worker's projected service-account token is checked with the
//! TokenReview API (audience [`sluice_wire::TOKEN_AUDIENCE`]), the pod it is bound to is read, and that pod's
//! [`POOL_LABEL`] names the WorkerPool the worker may serve.
//!
//! Positive answers are cached per token for a short while ([`DEFAULT_CACHE_TTL`]) so a busy worker does not
//! cost one TokenReview and one pod GET per request. The cache is keyed by the SHA-256 digest of the token (the
//! token itself is never stored or logged) and bounded in size. A consequence worth knowing: a token whose pod
//! was deleted keeps working for at most the cache TTL; the reaper's fencing of attempts covers that window.
//!
//! Refusals (401 and 403, not an unreachable API server) are cached too, for a shorter while
//! ([`DEFAULT_REFUSAL_TTL`]): otherwise every request with a garbage token would cost a TokenReview, and a flood
//! of them would load the API server on the broker's behalf.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{debug, warn};

use super::auth::{AuthError, Authenticator, WorkerIdentity};

/// Label on a worker pod naming its WorkerPool (set by the WorkerPool controller on the pod template).
pub const POOL_LABEL: &str = "sluice.dev/pool";

/// The `user.extra` key of a TokenReview that names the pod a token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

/// The `user.extra` key of a TokenReview that carries the UID of the pod a token is bound to.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// How long a successful authentication is reused for the same token.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);

/// How many tokens the cache remembers at most.
pub const DEFAULT_CACHE_CAPACITY: usize = 4096;

/// How long a refused token is refused again without asking the API server. Short, because some refusals
/// heal by themselves (a pod not yet labelled with its pool).
pub const DEFAULT_REFUSAL_TTL: Duration = Duration::from_secs(10);

/// Bound on one TokenReview or pod GET; past it the worker is told to retry (503).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Authenticates broker callers with TokenReview and the pool label of their pod. Cheap to clone.
#[derive(Clone)]
pub struct TokenReviewAuthenticator {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    cache: Mutex<Cache<WorkerIdentity>>,
    refusals: Mutex<Cache<AuthError>>,
    request_timeout: Duration,
}

impl TokenReviewAuthenticator {
    /// An authenticator using `client` (which needs `tokenreviews create` and `pods get`), with the default
    /// cache TTL and capacity.
    pub fn new(client: Client) -> Self {
        Self::with_cache(client, DEFAULT_CACHE_TTL, DEFAULT_CACHE_CAPACITY)
    }

    /// An authenticator whose cache keeps `capacity` tokens for `ttl` (a zero TTL or capacity disables it), and
    /// as many refused tokens for [`DEFAULT_REFUSAL_TTL`].
    pub fn with_cache(client: Client, ttl: Duration, capacity: usize) -> Self {
        Self::with_caches(client, ttl, DEFAULT_REFUSAL_TTL, capacity)
    }

    /// An authenticator whose caches keep `capacity` accepted tokens for `ttl` and as many refused ones for
    /// `refusal_ttl` (a zero TTL or capacity disables a cache).
    pub fn with_caches(
        client: Client,
        ttl: Duration,
        refusal_ttl: Duration,
        capacity: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                cache: Mutex::new(Cache::new(ttl, capacity)),
                refusals: Mutex::new(Cache::new(refusal_ttl, capacity)),
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
            }),
        }
    }
}

impl Authenticator for TokenReviewAuthenticator {
    fn authenticate(
        &self,
        token: Option<&str>,
    ) -> BoxFuture<'static, Result<WorkerIdentity, AuthError>> {
        let inner = Arc::clone(&self.inner);
        let token = token.map(str::to_owned);
        Box::pin(async move { inner.authenticate(token).await })
    }
}

impl Inner {
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache<WorkerIdentity>> {
        // The cache holds no invariant a panic could break half-way.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refusals(&self) -> std::sync::MutexGuard<'_, Cache<AuthError>> {
        self.refusals.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn authenticate(&self, token: Option<String>) -> Result<WorkerIdentity, AuthError> {
        let token = token
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| AuthError::Unauthorized("no bearer token".into()))?;
        let key = TokenDigest::of(&token);
        if let Some(identity) = self.cache().get(&key, Instant::now()) {
            return Ok(identity);
        }
        if let Some(refusal) = self.refusals().get(&key, Instant::now()) {
            return Err(refusal);
        }
        let result = self.check(token).await;
        match &result {
            Ok(identity) => {
                self.cache().insert(key, identity.clone(), Instant::now());
            }
            // Not an outage: the next request may well succeed.
            Err(AuthError::Unavailable(_)) => {}
            Err(refusal) => {
                self.refusals().insert(key, refusal.clone(), Instant::now());
            }
        }
        result
    }

    /// Authenticates a token with the API server.
    async fn check(&self, token: String) -> Result<WorkerIdentity, AuthError> {
        let user = self.review(token).await?;
        let (namespace, service_account) = service_account_of(&user)?;
        let pod_name = single_extra(&user, POD_NAME_EXTRA).ok_or_else(|| {
            AuthError::Forbidden(format!(
                "the token of service account {namespace}/{service_account} is not bound to a pod; \
                 workers must present their pod's projected token"
            ))
        })?;
        let pod = self.pod(&namespace, &pod_name).await?;
        if let (Some(want), Some(got)) = (
            single_extra(&user, POD_UID_EXTRA),
            pod.metadata.uid.as_deref(),
        ) && want != got
        {
            return Err(AuthError::Forbidden(format!(
                "pod {namespace}/{pod_name} was replaced since the token was issued"
            )));
        }
        let pool = pool_of(&pod).ok_or_else(|| {
            AuthError::Forbidden(format!(
                "pod {namespace}/{pod_name} is not a worker of any WorkerPool (no {POOL_LABEL} label)"
            ))
        })?;
        let identity = WorkerIdentity {
            namespace: Some(namespace),
            pod: Some(pod_name),
            pool: Some(pool),
        };
        debug!(namespace = ?identity.namespace, pod = ?identity.pod, pool = ?identity.pool, "worker authenticated");
        Ok(identity)
    }

    /// Asks the API server who holds `token`; only an authenticated answer returns.
    async fn review(&self, token: String) -> Result<UserInfo, AuthError> {
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token,
                audiences: Some(vec![sluice_wire::TOKEN_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let answer = tokio::time::timeout(
            self.request_timeout,
            reviews.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| AuthError::Unavailable("TokenReview timed out".into()))?
        .map_err(|e| {
            warn!(error = %e, "TokenReview failed");
            AuthError::Unavailable(format!("TokenReview failed: {e}"))
        })?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let reason = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "token not authenticated".into());
            return Err(AuthError::Unauthorized(reason));
        }
        // An answer that names no audiences does not say the token is for ours (an API server or webhook that
        // ignores the requested audiences would accept any token of the cluster, e.g. one meant for another
        // service): only an explicit match is trusted.
        let for_us = status
            .audiences
            .as_ref()
            .is_some_and(|audiences| audiences.iter().any(|a| a == sluice_wire::TOKEN_AUDIENCE));
        if !for_us {
            return Err(AuthError::Unauthorized(format!(
                "the TokenReview did not confirm that the token is for audience {}",
                sluice_wire::TOKEN_AUDIENCE
            )));
        }
        status
            .user
            .ok_or_else(|| AuthError::Unauthorized("TokenReview named no user".into()))
    }

    async fn pod(&self, namespace: &str, name: &str) -> Result<Pod, AuthError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(self.request_timeout, pods.get_opt(name)).await {
            Err(_) => Err(AuthError::Unavailable(format!(
                "reading pod {namespace}/{name} timed out"
            ))),
            Ok(Ok(Some(pod))) => Ok(pod),
            Ok(Ok(None)) => Err(AuthError::Forbidden(format!(
                "pod {namespace}/{name} does not exist"
            ))),
            Ok(Err(e)) => {
                warn!(namespace, pod = name, error = %e, "reading a worker pod failed");
                Err(AuthError::Unavailable(format!(
                    "reading pod {namespace}/{name} failed: {e}"
                )))
            }
        }
    }
}

/// The namespace and name of the service account a user is, or Forbidden for any other kind of user.
fn service_account_of(user: &UserInfo) -> Result<(String, String), AuthError> {
    let username = user.username.as_deref().unwrap_or_default();
    username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .map(|(ns, sa)| (ns.to_owned(), sa.to_owned()))
        .ok_or_else(|| {
            AuthError::Forbidden(format!(
                "user {username:?} is not a service account; only worker pods may use the broker"
            ))
        })
}

/// The one non-empty value of an extra field of a user.
fn single_extra(user: &UserInfo, key: &str) -> Option<String> {
    match user.extra.as_ref()?.get(key)?.as_slice() {
        [value] if !value.is_empty() => Some(value.clone()),
        _ => None,
    }
}

/// The WorkerPool a pod belongs to, from its label.
fn pool_of(pod: &Pod) -> Option<String> {
    pod.metadata
        .labels
        .as_ref()?
        .get(POOL_LABEL)
        .filter(|p| !p.is_empty())
        .cloned()
}

/// SHA-256 of a token: the cache key, so tokens themselves are never kept in memory longer than a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct TokenDigest([u8; 32]);

impl TokenDigest {
    fn of(token: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

/// Authentication results by token digest, each valid until its deadline; bounded in size.
struct Cache<V> {
    ttl: Duration,
    capacity: usize,
    entries: HashMap<TokenDigest, (Instant, V)>,
}

impl<V: Clone> Cache<V> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            entries: HashMap::new(),
        }
    }

    fn get(&mut self, key: &TokenDigest, now: Instant) -> Option<V> {
        match self.entries.get(key) {
            Some((until, identity)) if *until > now => Some(identity.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: TokenDigest, value: V, now: Instant) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (until, _)| *until > now);
        }
        while self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            // Still full of live entries: drop the one closest to expiry.
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (until, _))| *until)
                .map(|(k, _)| *k)
            else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.entries.insert(key, (now + self.ttl, value));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::body::Body;
    use axum::http::{Method, Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use serde_json::{Value, json};

    use super::*;

    fn identity(pool: &str) -> WorkerIdentity {
        WorkerIdentity {
            namespace: Some("ns".into()),
            pod: Some("p".into()),
            pool: Some(pool.into()),
        }
    }

    #[test]
    fn the_cache_expires_entries_and_stays_bounded() {
        let now = Instant::now();
        let mut cache = Cache::new(Duration::from_secs(60), 2);
        let (a, b, c) = (
            TokenDigest::of("a"),
            TokenDigest::of("b"),
            TokenDigest::of("c"),
        );
        cache.insert(a, identity("a"), now);
        cache.insert(b, identity("b"), now + Duration::from_secs(1));
        assert_eq!(
            cache.get(&a, now + Duration::from_secs(59)),
            Some(identity("a"))
        );
        // Full: inserting a third token evicts the one closest to expiry.
        cache.insert(c, identity("c"), now + Duration::from_secs(2));
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&a, now + Duration::from_secs(2)), None);
        assert_eq!(
            cache.get(&b, now + Duration::from_secs(2)),
            Some(identity("b"))
        );
        // Past the TTL nothing is returned, and the entry is dropped.
        assert_eq!(cache.get(&b, now + Duration::from_secs(61)), None);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn a_zero_ttl_disables_the_cache() {
        let mut cache = Cache::new(Duration::ZERO, 10);
        cache.insert(TokenDigest::of("a"), identity("a"), Instant::now());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_digest_is_sha256() {
        let d = TokenDigest::of("abc");
        assert_eq!(d.0[..4], [0xba, 0x78, 0x16, 0xbf]);
        assert_ne!(TokenDigest::of("abd"), d);
    }

    #[test]
    fn service_account_usernames_are_parsed() {
        let user = |name: &str| UserInfo {
            username: Some(name.into()),
            ..UserInfo::default()
        };
        assert_eq!(
            service_account_of(&user("system:serviceaccount:team-a:worker")).unwrap(),
            ("team-a".to_owned(), "worker".to_owned())
        );
        for bad in [
            "admin",
            "system:serviceaccount:ns",
            "system:serviceaccount::sa",
            "system:serviceaccount:ns:",
        ] {
            assert!(
                matches!(service_account_of(&user(bad)), Err(AuthError::Forbidden(_))),
                "{bad}"
            );
        }
    }

    /// A fake API server: answers TokenReviews from `reviews` (token → status JSON) and pod GETs from `pods`,
    /// counting requests.
    struct FakeApi {
        reviews: BTreeMap<String, Value>,
        pods: BTreeMap<String, Value>,
        requests: AtomicUsize,
        down: bool,
    }

    fn client(api: Arc<FakeApi>) -> Client {
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let api = Arc::clone(&api);
            async move {
                api.requests.fetch_add(1, Ordering::SeqCst);
                let (status, body) = api.answer(req).await;
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        });
        Client::new(service, "default")
    }

    impl FakeApi {
        async fn answer(&self, req: Request<kube::client::Body>) -> (StatusCode, Value) {
            let not_found = json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"
            });
            if self.down {
                let body = json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "InternalError", "code": 500, "message": "etcd is down"
                });
                return (StatusCode::INTERNAL_SERVER_ERROR, body);
            }
            let path = req.uri().path().to_owned();
            if req.method() == Method::POST && path == "/apis/authentication.k8s.io/v1/tokenreviews"
            {
                let bytes = req.into_body().collect().await.unwrap().to_bytes();
                let review: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(
                    review["spec"]["audiences"],
                    json!([sluice_wire::TOKEN_AUDIENCE])
                );
                let token = review["spec"]["token"].as_str().unwrap_or_default();
                let status = self.reviews.get(token).cloned().unwrap_or_else(
                    || json!({ "authenticated": false, "error": "invalid bearer token" }),
                );
                let mut answer = review.clone();
                answer["status"] = status;
                return (StatusCode::CREATED, answer);
            }
            if req.method() == Method::GET
                && let Some(name) = path.strip_prefix("/api/v1/namespaces/team/pods/")
                && let Some(pod) = self.pods.get(name)
            {
                return (StatusCode::OK, pod.clone());
            }
            (StatusCode::NOT_FOUND, not_found)
        }
    }

    fn pod_review(pod: &str, uid: &str) -> Value {
        json!({
            "authenticated": true,
            "audiences": [sluice_wire::TOKEN_AUDIENCE],
            "user": {
                "username": "system:serviceaccount:team:worker",
                "extra": {
                    POD_NAME_EXTRA: [pod],
                    POD_UID_EXTRA: [uid],
                }
            }
        })
    }

    fn pod(name: &str, uid: &str, pool: Option<&str>) -> Value {
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": "team", "uid": uid, "labels": {} }
        });
        if let Some(pool) = pool {
            pod["metadata"]["labels"][POOL_LABEL] = json!(pool);
        }
        pod
    }

    fn fake() -> FakeApi {
        FakeApi {
            reviews: [
                ("good".to_owned(), pod_review("w-1", "uid-1")),
                ("unlabelled".to_owned(), pod_review("plain", "uid-2")),
                ("replaced".to_owned(), pod_review("w-1", "uid-old")),
                ("gone".to_owned(), pod_review("w-gone", "uid-3")),
                (
                    "unbound".to_owned(),
                    json!({
                        "authenticated": true,
                        "audiences": [sluice_wire::TOKEN_AUDIENCE],
                        "user": { "username": "system:serviceaccount:team:worker" }
                    }),
                ),
                (
                    "human".to_owned(),
                    json!({
                        "authenticated": true,
                        "audiences": [sluice_wire::TOKEN_AUDIENCE],
                        "user": { "username": "alice" }
                    }),
                ),
                ("no-audiences".to_owned(), {
                    let mut review = pod_review("w-1", "uid-1");
                    review.as_object_mut().unwrap().remove("audiences");
                    review
                }),
                ("empty-audiences".to_owned(), {
                    let mut review = pod_review("w-1", "uid-1");
                    review["audiences"] = json!([]);
                    review
                }),
                ("other-audience".to_owned(), {
                    let mut review = pod_review("w-1", "uid-1");
                    review["audiences"] = json!(["https://kubernetes.default.svc"]);
                    review
                }),
            ]
            .into(),
            pods: [
                ("w-1".to_owned(), pod("w-1", "uid-1", Some("a"))),
                ("plain".to_owned(), pod("plain", "uid-2", None)),
            ]
            .into(),
            requests: AtomicUsize::new(0),
            down: false,
        }
    }

    #[tokio::test]
    async fn a_pod_bound_token_names_namespace_pod_and_pool_and_is_cached() {
        let api = Arc::new(fake());
        let auth = TokenReviewAuthenticator::new(client(Arc::clone(&api)));
        let id = auth.authenticate(Some("good")).await.unwrap();
        assert_eq!(
            id,
            WorkerIdentity {
                namespace: Some("team".into()),
                pod: Some("w-1".into()),
                pool: Some("a".into()),
            }
        );
        assert_eq!(
            api.requests.load(Ordering::SeqCst),
            2,
            "one review, one pod GET"
        );
        assert_eq!(auth.authenticate(Some("good")).await.unwrap(), id);
        assert_eq!(
            api.requests.load(Ordering::SeqCst),
            2,
            "the second call is served from the cache"
        );
    }

    #[tokio::test]
    async fn refusals_say_unauthorized_or_forbidden() {
        let api = Arc::new(fake());
        let auth = TokenReviewAuthenticator::new(client(Arc::clone(&api)));
        let cases = [
            (None, "unauthorized"),
            (Some(""), "unauthorized"),
            (Some("garbage"), "unauthorized"),
            (Some("no-audiences"), "unauthorized"),
            (Some("empty-audiences"), "unauthorized"),
            (Some("other-audience"), "unauthorized"),
            (Some("unbound"), "forbidden"),
            (Some("human"), "forbidden"),
            (Some("unlabelled"), "forbidden"),
            (Some("replaced"), "forbidden"),
            (Some("gone"), "forbidden"),
        ];
        for (token, want) in cases {
            let err = auth.authenticate(token).await.unwrap_err();
            let got = match &err {
                AuthError::Unauthorized(_) => "unauthorized",
                AuthError::Forbidden(_) => "forbidden",
                AuthError::Unavailable(_) => "unavailable",
            };
            assert_eq!(got, want, "{token:?}: {err}");
        }
        let err = auth.authenticate(Some("unlabelled")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "forbidden: pod team/plain is not a worker of any WorkerPool (no sluice.dev/pool label)"
        );
        let err = auth.authenticate(Some("no-audiences")).await.unwrap_err();
        assert!(err.to_string().contains("audience"), "{err}");
    }

    #[tokio::test]
    async fn refusals_are_cached_briefly_so_garbage_cannot_flood_token_review() {
        let api = Arc::new(fake());
        let auth = TokenReviewAuthenticator::new(client(Arc::clone(&api)));
        for token in ["garbage", "unlabelled"] {
            let first = auth.authenticate(Some(token)).await.unwrap_err();
            let before = api.requests.load(Ordering::SeqCst);
            for _ in 0..100 {
                assert_eq!(auth.authenticate(Some(token)).await.unwrap_err(), first);
            }
            assert_eq!(
                api.requests.load(Ordering::SeqCst),
                before,
                "{token}: refused again from the cache"
            );
        }
        // Without the refusal cache, each attempt asks again.
        let api = Arc::new(fake());
        let auth = TokenReviewAuthenticator::with_caches(
            client(Arc::clone(&api)),
            DEFAULT_CACHE_TTL,
            Duration::ZERO,
            DEFAULT_CACHE_CAPACITY,
        );
        let _ = auth.authenticate(Some("garbage")).await;
        let _ = auth.authenticate(Some("garbage")).await;
        assert_eq!(api.requests.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_refusal_cache_expires_after_its_ttl() {
        let now = Instant::now();
        let mut cache = Cache::new(DEFAULT_REFUSAL_TTL, 2);
        let refusal = AuthError::Unauthorized("invalid bearer token".into());
        cache.insert(TokenDigest::of("x"), refusal.clone(), now);
        let later = |secs| now + Duration::from_secs(secs);
        assert_eq!(cache.get(&TokenDigest::of("x"), later(9)), Some(refusal));
        assert_eq!(cache.get(&TokenDigest::of("x"), later(10)), None);
    }

    #[tokio::test]
    async fn api_errors_are_unavailable() {
        let api = Arc::new(FakeApi {
            down: true,
            ..fake()
        });
        let auth = TokenReviewAuthenticator::new(client(Arc::clone(&api)));
        let err = auth.authenticate(Some("good")).await.unwrap_err();
        assert!(matches!(err, AuthError::Unavailable(_)), "{err}");
        // An outage is not remembered as a refusal: the next request asks again.
        let _ = auth.authenticate(Some("good")).await;
        assert_eq!(api.requests.load(Ordering::SeqCst), 2);
    }
}
