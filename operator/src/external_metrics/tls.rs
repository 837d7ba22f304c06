//! TLS and registration of the external metrics API: the request-header authentication the API server
//! publishes for extension API servers, the HTTPS accept loop that checks the aggregator's client certificate
//! (serving the certificate of [`super::cert`]), and the CA bundle of the `APIService` that points the
//! aggregator here.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::cert::CertStore;
use super::{Error, GROUP, RequestHeaders, VERSION};
use crate::context::FIELD_MANAGER;

/// Where the API server publishes how extension API servers authenticate its requests.
pub const AUTHENTICATION_CONFIGMAP: (&str, &str) =
    ("kube-system", "extension-apiserver-authentication");

/// The name of the `APIService` of the external metrics API.
pub fn api_service_name() -> String {
    format!("{VERSION}.{GROUP}")
}

/// Request-header authentication as the API server configured it: which CA signs the aggregator's client
/// certificate, which common names it may have, and which headers carry the user.
#[derive(Clone, Debug)]
pub struct RequestHeaderAuth {
    /// The client CA bundle, PEM.
    pub client_ca_pem: String,
    /// Allowed common names of the client certificate (empty: any certificate the CA signed).
    pub allowed_names: Vec<String>,
    /// The user headers.
    pub headers: RequestHeaders,
}

impl RequestHeaderAuth {
    /// Reads it from the `kube-system/extension-apiserver-authentication` ConfigMap.
    pub async fn load(client: Client) -> Result<Self, Error> {
        let (namespace, name) = AUTHENTICATION_CONFIGMAP;
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let data = api.get(name).await?.data.unwrap_or_default();
        Self::from_data(&data)
    }

    /// Reads the ConfigMap's data.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, Error> {
        let client_ca_pem = data
            .get("requestheader-client-ca-file")
            .filter(|ca| !ca.trim().is_empty())
            .ok_or_else(|| {
                Error::Tls(
                    "the API server publishes no requestheader-client-ca-file: its aggregation layer is not configured (--requestheader-client-ca-file, --proxy-client-cert-file)".into(),
                )
            })?
            .clone();
        let list = |key: &str| -> Result<Option<Vec<String>>, Error> {
            data.get(key)
                .map(|v| {
                    serde_json::from_str::<Vec<String>>(v)
                        .map_err(|e| Error::Tls(format!("{key}: {e}")))
                })
                .transpose()
        };
        let defaults = RequestHeaders::default();
        Ok(Self {
            client_ca_pem,
            allowed_names: list("requestheader-allowed-names")?.unwrap_or_default(),
            headers: RequestHeaders {
                username: list("requestheader-username-headers")?.unwrap_or(defaults.username),
                group: list("requestheader-group-headers")?.unwrap_or(defaults.group),
                extra_prefix: list("requestheader-extra-headers-prefix")?
                    .unwrap_or(defaults.extra_prefix),
            },
        })
    }
}

/// The TLS configuration: the certificate `certs` holds at each handshake served, client certificates required
/// and verified against the request-header CA.
pub fn server_config(
    certs: Arc<CertStore>,
    auth: &RequestHeaderAuth,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(auth.client_ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| Error::Tls(format!("request-header client CA: {e}")))?;
        roots
            .add(ca)
            .map_err(|e| Error::Tls(format!("request-header client CA: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The common name of a DER certificate's subject.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves. A connection is served only when its
/// client certificate chains to the request-header CA (checked in the handshake) and its common name is
/// allowed; only then are the user headers of its requests trusted.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: Arc<ServerConfig>,
    allowed_names: Vec<String>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(config);
    let allowed_names = Arc::new(allowed_names);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "external metrics: accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let allowed_names = allowed_names.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    debug!(%peer, error = %e, "external metrics: TLS handshake refused");
                    return;
                }
            };
            let name = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|c| common_name(c));
            if !allowed_names.is_empty()
                && !name.as_ref().is_some_and(|n| allowed_names.contains(n))
            {
                warn!(%peer, common_name = ?name, allowed = ?allowed_names, "external metrics: client certificate name not allowed");
                return;
            }
            let service = TowerToHyperService::new(router);
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                debug!(%peer, error = %e, "external metrics: connection ended");
            }
        });
    }
}

/// Publishes `ca_pem` as the `caBundle` of the `APIService` `v1beta1.external.metrics.k8s.io`, so the
/// aggregator trusts the generated serving certificate. Only that field is written (server-side apply, field
/// manager `sluice-operator`); the `APIService` itself belongs to whoever installed the operator (the chart).
/// An `APIService` that is missing, or that sends the API to another Service (a cluster has room for one
/// external metrics provider, e.g. KEDA's), is left alone with an error saying so.
pub async fn publish_ca_bundle(
    client: Client,
    ca_pem: &str,
    namespace: &str,
    service: &str,
) -> Result<(), Error> {
    let api: Api<APIService> = Api::all(client);
    let name = api_service_name();
    let existing = api.get_opt(&name).await?.ok_or_else(|| {
        Error::ApiServiceMissing(format!(
            "the APIService {name} does not exist: install it with the operator (the Helm chart does with \
             externalMetrics.enabled=true)"
        ))
    })?;
    let target = existing.spec.as_ref().and_then(|s| s.service.as_ref());
    let ours = target.is_some_and(|t| {
        t.namespace.as_deref() == Some(namespace) && t.name.as_deref() == Some(service)
    });
    if !ours {
        return Err(Error::Registration(format!(
            "the APIService {name} sends external metrics to {}, not to this operator's Service \
             {namespace}/{service}: another external metrics provider is installed (a cluster has room for \
             one); its caBundle is left alone",
            target
                .map(|t| format!(
                    "the Service {}/{}",
                    t.namespace.as_deref().unwrap_or_default(),
                    t.name.as_deref().unwrap_or_default()
                ))
                .unwrap_or_else(|| "the API server itself".to_owned())
        )));
    }
    let patch = serde_json::json!({
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": name},
        "spec": {"caBundle": ByteString(ca_pem.as_bytes().to_vec())},
    });
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    info!(apiservice = %name, service = %format!("{namespace}/{service}"), "published the external metrics CA");
    Ok(())
}

/// Removes the `APIService` (an unavailable one keeps the API server's discovery incomplete).
pub async fn unregister(client: Client) -> Result<(), Error> {
    let api: Api<APIService> = Api::all(client);
    match api
        .delete(&api_service_name(), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
