//! Service-account tokens bound to a pod, from the TokenRequest API.

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::{Api, Client};

/// A kubelet's default token lifetime for a projected token without `expirationSeconds`.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// Errors obtaining a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("requesting a token for service account {namespace}/{service_account}: {source}")]
    Request {
        namespace: String,
        service_account: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("the token request for {namespace}/{service_account} returned no token")]
    Empty {
        namespace: String,
        service_account: String,
    },
}

/// What to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub audience: Option<String>,
    pub expiration_seconds: i64,
}

/// A token and when it expires.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub issued: Timestamp,
    pub expires: Timestamp,
}

impl IssuedToken {
    /// When to get a new one: at 80% of its lifetime, as a kubelet does.
    pub fn refresh_at(&self) -> Timestamp {
        let life = self.expires.as_millisecond() - self.issued.as_millisecond();
        Timestamp::from_millisecond(self.issued.as_millisecond() + life * 4 / 5)
            .unwrap_or(self.expires)
    }
}

/// Requests a token for `service_account` bound to the pod `pod_name`/`pod_uid`.
pub async fn request(
    client: Client,
    namespace: &str,
    service_account: &str,
    pod_name: &str,
    pod_uid: &str,
    spec: &TokenSpec,
) -> Result<IssuedToken, TokenError> {
    let api: Api<ServiceAccount> = Api::namespaced(client, namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: spec.audience.as_ref().map(|a| vec![a.clone()]),
            expiration_seconds: Some(spec.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod_name.into()),
                uid: Some(pod_uid.into()),
            }),
        }),
        ..TokenRequest::default()
    };
    let issued = Timestamp::now();
    let response: TokenRequest = api
        .create_subresource("token", service_account, &PostParams::default(), &request)
        .await
        .map_err(|source| TokenError::Request {
            namespace: namespace.into(),
            service_account: service_account.into(),
            source: Box::new(source),
        })?;
    let status = response.status.ok_or_else(|| TokenError::Empty {
        namespace: namespace.into(),
        service_account: service_account.into(),
    })?;
    let token = status
        .token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Empty {
            namespace: namespace.into(),
            service_account: service_account.into(),
        })?;
    let expires = status.expiration_timestamp.map(|t| t.0).unwrap_or_else(|| {
        Timestamp::from_second(issued.as_second() + spec.expiration_seconds).unwrap_or(issued)
    });
    Ok(IssuedToken {
        token,
        issued,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_at_eighty_percent() {
        let issued = Timestamp::from_second(1_000).unwrap();
        let token = IssuedToken {
            token: String::new(),
            issued,
            expires: Timestamp::from_second(1_000 + 3600).unwrap(),
        };
        assert_eq!(
            token.refresh_at(),
            Timestamp::from_second(1_000 + 2880).unwrap()
        );
    }
}
