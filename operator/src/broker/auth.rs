//! Who is calling the broker. Workers present their pod's projected service-account token; an
//! [`Authenticator`] turns it into a [`WorkerIdentity`] (the Kubernetes implementation asks TokenReview), and
//! the broker only lets a worker touch the pool its pod belongs to.

use futures::future::BoxFuture;

/// The caller of a broker request, as established from its token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerIdentity {
    /// Namespace of the worker's pod; its pool lives there. `None` only from the development authenticator,
    /// whose callers name the namespace themselves.
    pub namespace: Option<String>,
    /// Name of the worker's pod, when the token is bound to one.
    pub pod: Option<String>,
    /// The WorkerPool the pod belongs to; `None` lets the caller serve any pool of its namespace (only the
    /// development authenticator says so).
    pub pool: Option<String>,
}

impl WorkerIdentity {
    /// Whether this caller may claim and report tasks of `pool` in `namespace`.
    pub fn may_serve(&self, namespace: &str, pool: &str) -> bool {
        self.namespace.as_deref().is_none_or(|own| own == namespace)
            && self.pool.as_deref().is_none_or(|own| own == pool)
    }
}

/// Why a caller was turned away.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, or a token the API server does not accept (401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// A valid token that may not use the broker (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The check itself failed (the API server is unreachable); the worker should retry (503).
    #[error("cannot authenticate now: {0}")]
    Unavailable(String),
}

/// Turns a bearer token into an identity.
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates the bearer token of a request (`None` when the request had none).
    fn authenticate(
        &self,
        token: Option<&str>,
    ) -> BoxFuture<'static, Result<WorkerIdentity, AuthError>>;
}

/// Accepts every caller as a worker of any pool. For local development and for tests of the broker's own
/// rules; the operator uses it only when started with authentication explicitly disabled.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrustAll;

impl Authenticator for TrustAll {
    fn authenticate(
        &self,
        _token: Option<&str>,
    ) -> BoxFuture<'static, Result<WorkerIdentity, AuthError>> {
        let identity = WorkerIdentity {
            namespace: None,
            pod: None,
            pool: None,
        };
        Box::pin(async move { Ok(identity) })
    }
}
