//! TLS settings for DNS over TLS (`tls://` upstreams).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// TLS settings for a `tls://` upstream.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The client configuration; share one per `forward` (see
    /// [`tls_client_config`]).
    pub config: Arc<ClientConfig>,
    /// The name the upstream's certificate must carry (CoreDNS's
    /// `tls_servername`), also sent as SNI when it is a DNS name.
    pub server_name: ServerName<'static>,
}

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The CA file does not read as PEM.
    #[error("reading CA file {path}: {source}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: pem::Error,
    },
    /// The CA file holds no certificate that can be used as a root.
    #[error("CA file {path} holds no usable certificate")]
    NoCa {
        /// The file.
        path: PathBuf,
    },
    /// No CA file was given and the system has no root certificates.
    #[error(
        "no system root certificates found; install the ca-certificates package, set SSL_CERT_FILE, or give a CA file (tls CERT KEY CA)"
    )]
    NoSystemRoots,
    /// The client certificate file does not read as PEM.
    #[error("reading certificate file {path}: {source}")]
    CertFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: pem::Error,
    },
    /// The client certificate file holds no certificate.
    #[error("certificate file {path} holds no certificate")]
    NoCert {
        /// The file.
        path: PathBuf,
    },
    /// The client key file does not read as a PEM private key.
    #[error("reading key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: pem::Error,
    },
    /// rustls refused the settings (a key that does not fit the
    /// certificate, for one).
    #[error("TLS settings refused: {0}")]
    Rustls(#[source] rustls::Error),
}

/// A TLS client configuration for DoT upstreams.
///
/// Roots: the system's (via `rustls-native-certs`, which honours
/// `SSL_CERT_FILE` and `SSL_CERT_DIR`) when `ca_file` is `None`; a PEM CA
/// file replaces them. `cert_and_key` adds a PEM client certificate
/// (chain) and key for upstreams that ask for one.
///
/// Build this once per `forward` and hand the same `Arc` to all its
/// proxies: the configuration holds rustls's in-memory session store
/// (its default), so reconnections resume TLS sessions instead of doing
/// full handshakes — which only works if the store is shared.
pub fn tls_client_config(
    ca_file: Option<&Path>,
    cert_and_key: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|source| TlsConfigError::CaFile {
                    path: path.to_owned(),
                    source,
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsConfigError::NoCa {
                    path: path.to_owned(),
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "proxy: reading system root certificates");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsConfigError::NoSystemRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::Rustls)?
        .with_root_certificates(roots);
    let config = match cert_and_key {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|source| TlsConfigError::CertFile {
                    path: cert.to_owned(),
                    source,
                })?;
            if chain.is_empty() {
                return Err(TlsConfigError::NoCert {
                    path: cert.to_owned(),
                });
            }
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|source| TlsConfigError::KeyFile {
                    path: key.to_owned(),
                    source,
                })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsConfigError::Rustls)?
        }
    };
    Ok(Arc::new(config))
}
