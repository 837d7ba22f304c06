//! The serving certificate of the external metrics API, kept current while the process runs.
//!
//! Two sources, as an aggregated API server is usually installed:
//! - **generated**: a CA made at start (kept in memory only) signs a short-lived certificate for
//!   `<service>.<namespace>.svc`, re-signed well before it expires; the leader publishes the CA as the
//!   `APIService`'s `caBundle`. Nothing to manage, and a restart simply publishes a new CA.
//! - **a directory** holding `tls.crt` and `tls.key` (a mounted Secret, e.g. one cert-manager issues and
//!   renews): re-read whenever its content changes, so a renewed Secret is served without a restart. Whoever
//!   issues it also sets the `caBundle` (cert-manager's CA injector does).
//!
//! The TLS server asks [`CertStore`] for the certificate at every handshake, so a rotation takes effect for the
//! next connection while open ones go on.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use tracing::{info, warn};

use super::Error;

/// How long a generated serving certificate is valid.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// A generated certificate is re-signed once less than this is left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(10 * 24 * 3600);
/// How long the generated CA is valid: longer than any process lives between restarts.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How often the store looks for a renewal (generated) or a changed Secret (directory).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Where the serving certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertificateSource {
    /// Generated for the Service `namespace/service`, signed by a CA made at start.
    Generate {
        /// The Service the aggregator reaches the API through.
        service: String,
        /// Its namespace.
        namespace: String,
    },
    /// `tls.crt` (the chain, leaf first) and `tls.key` of this directory, re-read when they change.
    Directory(PathBuf),
}

/// The certificate served now, and how to renew it. Cheap to share (`Arc`).
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    source: Source,
}

enum Source {
    Generated {
        // Boxed: the CA's certificate and key are large next to a directory's path.
        issuer: Box<Issuer>,
        /// When the served certificate expires.
        not_after: Mutex<OffsetDateTime>,
    },
    Directory {
        dir: PathBuf,
        /// The files' content as last loaded, to notice a change.
        loaded: Mutex<Vec<u8>>,
    },
}

struct Issuer {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    ca_pem: String,
    host: String,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Generated { issuer, .. } => format!("generated for {}", issuer.host),
            Source::Directory { dir, .. } => format!("from {}", dir.display()),
        };
        f.debug_struct("CertStore")
            .field("source", &source)
            .finish()
    }
}

impl CertStore {
    /// Loads or generates the first certificate.
    pub fn new(source: CertificateSource) -> Result<Arc<Self>, Error> {
        Self::new_at(source, OffsetDateTime::now_utc())
    }

    fn new_at(source: CertificateSource, now: OffsetDateTime) -> Result<Arc<Self>, Error> {
        let store = match source {
            CertificateSource::Generate { service, namespace } => {
                let issuer = Box::new(Issuer::new(&service, &namespace, now)?);
                let (key, not_after) = issuer.sign(now)?;
                Self {
                    current: RwLock::new(Arc::new(key)),
                    source: Source::Generated {
                        issuer,
                        not_after: Mutex::new(not_after),
                    },
                }
            }
            CertificateSource::Directory(dir) => {
                let (key, content) = load_dir(&dir)?;
                Self {
                    current: RwLock::new(Arc::new(key)),
                    source: Source::Directory {
                        dir,
                        loaded: Mutex::new(content),
                    },
                }
            }
        };
        Ok(Arc::new(store))
    }

    /// The CA to publish as the `APIService`'s `caBundle` (PEM), for a generated certificate; `None` when the
    /// certificate comes from a directory (its issuer publishes the CA).
    pub fn ca_bundle(&self) -> Option<&str> {
        match &self.source {
            Source::Generated { issuer, .. } => Some(&issuer.ca_pem),
            Source::Directory { .. } => None,
        }
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Renews the certificate if it is due (generated) or changed on disk (directory); `true` when the served
    /// certificate changed.
    pub fn refresh(&self) -> Result<bool, Error> {
        self.refresh_at(OffsetDateTime::now_utc())
    }

    fn refresh_at(&self, now: OffsetDateTime) -> Result<bool, Error> {
        let renewed = match &self.source {
            Source::Generated { issuer, not_after } => {
                let mut not_after = not_after.lock().unwrap_or_else(|p| p.into_inner());
                if *not_after - now > RENEW_BEFORE {
                    return Ok(false);
                }
                let (key, until) = issuer.sign(now)?;
                *not_after = until;
                key
            }
            Source::Directory { dir, loaded } => {
                let mut loaded = loaded.lock().unwrap_or_else(|p| p.into_inner());
                let (key, content) = load_dir(dir)?;
                if content == *loaded {
                    return Ok(false);
                }
                *loaded = content;
                key
            }
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(renewed);
        Ok(true)
    }

    /// Refreshes every [`REFRESH_INTERVAL`] until `shutdown` resolves. A failed refresh (a half-written
    /// Secret, say) keeps serving the previous certificate and is tried again.
    pub async fn keep_current(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(REFRESH_INTERVAL) => {}
            }
            match self.refresh() {
                Ok(true) => info!(store = ?self, "external metrics: serving a renewed certificate"),
                Ok(false) => {}
                Err(e) => {
                    warn!(store = ?self, error = %e, "external metrics: cannot renew the serving certificate; keeping the current one")
                }
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl Issuer {
    fn new(service: &str, namespace: &str, now: OffsetDateTime) -> Result<Self, Error> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sluice-operator external metrics CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CA_VALIDITY;
        let ca_key = KeyPair::generate()?;
        let ca = params.self_signed(&ca_key)?;
        Ok(Self {
            ca_pem: ca.pem(),
            ca,
            ca_key,
            host: format!("{service}.{namespace}.svc"),
        })
    }

    /// A fresh certificate for the Service, valid from an hour ago (clock skew) for [`LEAF_VALIDITY`].
    fn sign(&self, now: OffsetDateTime) -> Result<(CertifiedKey, OffsetDateTime), Error> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(vec![
            self.host.clone(),
            format!("{}.cluster.local", self.host),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, self.host.clone());
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + LEAF_VALIDITY;
        let not_after = params.not_after;
        let key = KeyPair::generate()?;
        let leaf = params.signed_by(&key, &self.ca, &self.ca_key)?;
        let chain = vec![leaf.der().clone(), self.ca.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((certified(chain, &key)?, not_after))
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<CertifiedKey, Error> {
    let signer = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| Error::Tls(format!("serving key: {e}")))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// `tls.crt` and `tls.key` of `dir`, and their bytes (to notice a change).
fn load_dir(dir: &std::path::Path) -> Result<(CertifiedKey, Vec<u8>), Error> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|e| {
            Error::Tls(format!(
                "reading {} (the serving certificate's Secret must hold tls.crt and tls.key): {e}",
                path.display()
            ))
        })
    };
    let crt = read("tls.crt")?;
    let key_pem = read("tls.key")?;
    let chain = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("tls.crt: {e}")))?;
    if chain.is_empty() {
        return Err(Error::Tls("tls.crt holds no certificate".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| Error::Tls(format!("tls.key: {e}")))?;
    let mut content = crt;
    content.extend_from_slice(&key_pem);
    Ok((certified(chain, &key)?, content))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf_names(key: &CertifiedKey) -> (Vec<String>, OffsetDateTime) {
        let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
        let names = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        (names, cert.validity().not_after.to_datetime())
    }

    fn generated(now: OffsetDateTime) -> Arc<CertStore> {
        CertStore::new_at(
            CertificateSource::Generate {
                service: "sluice-external-metrics".into(),
                namespace: "sluice-system".into(),
            },
            now,
        )
        .unwrap()
    }

    #[test]
    fn a_generated_certificate_names_the_service_and_chains_to_the_published_ca() {
        let store = generated(OffsetDateTime::now_utc());
        let key = store.current();
        let (names, _) = leaf_names(&key);
        assert_eq!(
            names,
            [
                "DNSName(sluice-external-metrics.sluice-system.svc)",
                "DNSName(sluice-external-metrics.sluice-system.svc.cluster.local)"
            ]
        );
        let ca = CertificateDer::from_pem_slice(store.ca_bundle().unwrap().as_bytes()).unwrap();
        assert_eq!(key.cert[1], ca, "the chain ends in the CA of the caBundle");
        let (_, leaf) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(ca.as_ref()).unwrap();
        assert_eq!(
            leaf.issuer(),
            ca.subject(),
            "the leaf is issued by the published CA"
        );
        assert!(ca.is_ca());
    }

    #[test]
    fn a_generated_certificate_is_renewed_before_it_expires_under_the_same_ca() {
        let start = OffsetDateTime::now_utc();
        let store = generated(start);
        let first = store.current();
        let (_, expires) = leaf_names(&first);
        assert!(expires - start <= LEAF_VALIDITY + time::Duration::seconds(1));

        // Not due yet: the same certificate.
        let early = start + (LEAF_VALIDITY - RENEW_BEFORE) - time::Duration::hours(1);
        assert!(!store.refresh_at(early).unwrap());
        assert_eq!(store.current().cert[0], first.cert[0]);

        // Due: a new leaf, later expiry, same CA.
        let due = start + (LEAF_VALIDITY - RENEW_BEFORE) + time::Duration::hours(1);
        let ca = store.ca_bundle().unwrap().to_owned();
        assert!(store.refresh_at(due).unwrap());
        let second = store.current();
        assert_ne!(second.cert[0], first.cert[0]);
        assert!(leaf_names(&second).1 > expires);
        assert_eq!(store.ca_bundle().unwrap(), ca);
        assert_eq!(second.cert[1], first.cert[1]);
    }

    #[test]
    fn a_directory_certificate_is_reloaded_when_the_secret_changes() {
        let dir = std::env::temp_dir().join(format!("sluice-cert-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |cn: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![cn.to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
            std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        };
        write("first.example");
        let store = CertStore::new(CertificateSource::Directory(dir.clone())).unwrap();
        assert!(store.ca_bundle().is_none());
        assert_eq!(leaf_names(&store.current()).0, ["DNSName(first.example)"]);
        assert!(
            !store.refresh().unwrap(),
            "unchanged files are not reloaded"
        );

        write("second.example");
        assert!(store.refresh().unwrap());
        assert_eq!(leaf_names(&store.current()).0, ["DNSName(second.example)"]);

        // A broken Secret keeps the last good certificate.
        std::fs::write(dir.join("tls.key"), "not a key").unwrap();
        assert!(store.refresh().is_err());
        assert_eq!(leaf_names(&store.current()).0, ["DNSName(second.example)"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_secret_says_what_it_needs() {
        let err = CertStore::new(CertificateSource::Directory("/nonexistent/dir".into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.crt and tls.key"), "{err}");
    }
}
