//! TLS and registration of the external metrics API: a serving certificate for the operator's Service, the
//! request-header authentication the API server publishes for extension API servers, the HTTPS accept loop
//! that checks the aggregator's client certificate, and the `APIService` that points the aggregator here.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
    APIService, APIServiceSpec, ServiceReference,
};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{Error, GROUP, RequestHeaders, VERSION};
use crate::flowrun::writer::FIELD_MANAGER;

/// Where the API server publishes how extension API servers authenticate its requests.
pub const AUTHENTICATION_CONFIGMAP: (&str, &str) =
    ("kube-system", "extension-apiserver-authentication");

/// The name of the `APIService` of the external metrics API.
pub fn api_service_name() -> String {
    format!("{VERSION}.{GROUP}")
}

/// A serving certificate for `<service>.<namespace>.svc` (the name the aggregator verifies) and the CA that
/// signed it (the `APIService`'s `caBundle`). Generated at start; nothing is stored.
pub struct ServingCert {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ServingCert {
    /// A fresh CA and a certificate for the Service `namespace/service` signed by it.
    pub fn generate(service: &str, namespace: &str) -> Result<Self, Error> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sluice-operator external metrics CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;

        let host = format!("{service}.{namespace}.svc");
        let mut params =
            CertificateParams::new(vec![host.clone(), format!("{host}.cluster.local")])?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let leaf = params.signed_by(&key, &ca, &ca_key)?;
        Ok(Self {
            ca_pem: ca.pem(),
            chain: vec![leaf.der().clone(), ca.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
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

/// The TLS configuration: `cert` served, client certificates required and verified against the request-header
/// CA.
pub fn server_config(
    cert: &ServingCert,
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
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(|e| Error::Tls(format!("serving certificate: {e}")))?;
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

/// Registers the API with the aggregator: the `APIService` `v1beta1.external.metrics.k8s.io` pointing at the
/// Service `namespace/name` on `port`, trusting `ca_pem` (server-side apply, field manager `sluice-operator`).
pub async fn register(
    client: Client,
    ca_pem: &str,
    namespace: &str,
    name: &str,
    port: i32,
) -> Result<(), Error> {
    let api: Api<APIService> = Api::all(client);
    let object = APIService {
        metadata: ObjectMeta {
            name: Some(api_service_name()),
            ..ObjectMeta::default()
        },
        spec: Some(APIServiceSpec {
            group: Some(GROUP.into()),
            version: Some(VERSION.into()),
            service: Some(ServiceReference {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                port: Some(port),
            }),
            ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
            group_priority_minimum: 100,
            version_priority: 100,
            insecure_skip_tls_verify: None,
        }),
        status: None,
    };
    let mut object = serde_json::to_value(&object).map_err(|e| Error::Tls(e.to_string()))?;
    object["apiVersion"] = "apiregistration.k8s.io/v1".into();
    object["kind"] = "APIService".into();
    api.patch(
        &api_service_name(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await?;
    info!(apiservice = %api_service_name(), service = %format!("{namespace}/{name}"), port, "registered the external metrics API");
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
