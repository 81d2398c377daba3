//! *tls*: the certificate, key and client-certificate policy of a server
//! block's encrypted listeners (`tls://`, `https://`, `grpc://`, `quic://`,
//! `https3://`). It adds nothing to the chain: the listener takes the
//! [`TlsSettings`] from the block and asks it for a rustls
//! [`ServerConfig`](rustls::ServerConfig) with its transport's ALPN.
//!
//! The certificate and key are re-read when their files change (checked
//! at most once per [`CHECK_INTERVAL`], on a handshake), so a renewed
//! certificate is served on the next connection without a restart; a
//! file that no longer parses keeps the one in use, with a warning.
//! Sessions resume both ways rustls offers: TLS 1.3 tickets (keys
//! rotated by rustls's ticketer) and a bounded server-side session cache.

mod setup;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

pub use setup::{ClientAuth, TlsConfig};

use crate::dispenser::SetupError;
use crate::setup::Controller;

/// How often, at most, the certificate files are checked for a change.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Sessions the server-side cache remembers (TLS 1.2 session IDs and
/// TLS 1.3 stateful resumption); the oldest go first.
const SESSION_CACHE: usize = 4096;

/// ALPN of DNS over TLS (RFC 7858 §3.2; IANA `dot`).
pub const ALPN_DOT: &[&[u8]] = &[b"dot"];
/// ALPN of DNS over HTTPS on HTTP/2 and HTTP/1.1, h2 first.
pub const ALPN_DOH: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN of gRPC (h2 only).
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of DNS over QUIC (RFC 9250 §4.1).
pub const ALPN_DOQ: &[&[u8]] = &[b"doq"];
/// ALPN of DNS over HTTP/3.
pub const ALPN_H3: &[&[u8]] = &[b"h3"];

/// Why a certificate, key or CA could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of the kind wanted.
    #[error("reading {what} {path}: {msg}")]
    File {
        /// certificate, key, CA.
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// rustls refused the material (a key that does not match the
    /// certificate, an unsupported key type, a CA that is not one).
    #[error("{0}")]
    Rustls(String),
}

/// Parses `tls` and hands the block its settings.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let cfg = setup::parse(&mut c.d)?;
    // A reload with the same settings keeps the ticket keys and session
    // cache, so clients resume across it.
    let key = format!("tls|{cfg:?}");
    let settings = match c.services.carry_in.take::<TlsSettings>(&key) {
        Some(s) => {
            // The files may have changed meanwhile: a reload reads them.
            s.resolver.check(true);
            s
        }
        None => Arc::new(TlsSettings::new(cfg).map_err(|e| c.d.err(e))?),
    };
    c.services.carry_out.keep(key, Arc::clone(&settings));
    c.out.tls = Some(settings);
    Ok(())
}

// === impl TlsSettings ===

/// A block's TLS: what it was configured with and the state its
/// listeners share (certificate, client verifier, session resumption).
#[derive(Debug)]
pub struct TlsSettings {
    cfg: TlsConfig,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Reloading>,
    /// The client CA, when one verifies.
    ca: Option<Arc<ReloadingCa>>,
    verifier: Arc<dyn ClientCertVerifier>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
}

impl TlsSettings {
    /// Reads the files and checks them: a bad certificate, key or CA is a
    /// configuration error, found before anything serves.
    pub fn new(cfg: TlsConfig) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(Reloading::new(&cfg.cert, &cfg.key, Arc::clone(&provider))?);
        // A CA that verifies is re-read when its file changes.
        let ca = match (&cfg.ca, cfg.client_auth) {
            (Some(ca), ClientAuth::VerifyIfGiven | ClientAuth::RequireAndVerify) => Some(Arc::new(
                ReloadingCa::new(ca.clone(), cfg.clone(), Arc::clone(&provider))?,
            )),
            _ => None,
        };
        let verifier: Arc<dyn ClientCertVerifier> = match &ca {
            Some(ca) => Arc::clone(ca) as _,
            None => client_verifier(&cfg, &provider)?,
        };
        let ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Rustls(e.to_string()))?;
        Ok(Self {
            cfg,
            provider,
            resolver,
            ca,
            verifier,
            ticketer,
            sessions: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE),
        })
    }

    /// What the `tls` line said.
    pub fn config(&self) -> &TlsConfig {
        &self.cfg
    }

    /// When the client CA was last looked at (tests set it to 0 to make
    /// the next client certificate look again).
    #[cfg(test)]
    fn verifier_checked(&self) -> &AtomicU64 {
        &self.ca.as_ref().expect("a verifying CA").checked
    }

    /// A server configuration offering `alpn` (one of the `ALPN_*`
    /// constants): TLS 1.2 and 1.3 (CoreDNS's minimum is 1.2), this
    /// block's certificate (re-read on change), client policy and session
    /// resumption. Build it once per listener, not per connection.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let mut sc = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(match &self.ca {
                Some(ca) => Arc::clone(ca) as Arc<dyn ClientCertVerifier>,
                None => Arc::clone(&self.verifier),
            })
            .with_cert_resolver(Arc::clone(&self.resolver) as Arc<dyn ResolvesServerCert>);
        sc.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        sc.ticketer = Arc::clone(&self.ticketer);
        sc.session_storage = Arc::clone(&self.sessions);
        Ok(Arc::new(sc))
    }
}

/// The verifier for the configured client policy: CoreDNS verifies
/// against the CA file when given, else against the system's roots.
fn client_verifier(
    cfg: &TlsConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = match &cfg.ca {
        Some(path) => Some(ca_roots(path)?),
        None => None,
    };
    let verify = |optional: bool| -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let roots = match &roots {
            Some(r) => Arc::clone(r),
            None => Arc::new(system_roots()?),
        };
        let b = WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(provider));
        let b = if optional {
            b.allow_unauthenticated()
        } else {
            b
        };
        b.build().map_err(|e| TlsError::Rustls(e.to_string()))
    };
    Ok(match cfg.client_auth {
        ClientAuth::NoCert => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::Request => Arc::new(AnyClientCert {
            mandatory: false,
            provider: Arc::clone(provider),
        }),
        ClientAuth::Require => Arc::new(AnyClientCert {
            mandatory: true,
            provider: Arc::clone(provider),
        }),
        ClientAuth::VerifyIfGiven => verify(true)?,
        ClientAuth::RequireAndVerify => verify(false)?,
    })
}

fn ca_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let certs = read_certs(path, "CA")?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::File {
            what: "CA",
            path: path.to_owned(),
            msg: "no usable CA certificate in it".to_string(),
        });
    }
    Ok(Arc::new(roots))
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(TlsError::Rustls(
            "no system root certificates to verify clients against: give a CA file".to_string(),
        ));
    }
    Ok(roots)
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::File {
            what,
            path: path.to_owned(),
            msg: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            what,
            path: path.to_owned(),
            msg: "no PEM certificate in it".to_string(),
        });
    }
    Ok(certs)
}

fn load_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certs(cert, "certificate")?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        what: "key",
        path: key.to_owned(),
        msg: e.to_string(),
    })?;
    let ck = CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        TlsError::Rustls(format!(
            "certificate {} and key {}: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(Arc::new(ck))
}

// === impl Reloading ===

/// Serves the certificate in the files, re-read when they change.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// What the files looked like when last read.
    stamp: std::sync::Mutex<Stamp>,
    /// Milliseconds since [`Reloading::epoch`] of the last check.
    checked: AtomicU64,
    epoch: std::time::Instant,
}

/// Modification time, length and inode of both files: a rewrite in
/// place and a rename over both show.
type Stamp = [(Option<SystemTime>, u64, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Stamp {
    [file_stamp(cert), file_stamp(key)]
}

/// One file's modification time, length and inode.
fn file_stamp(p: &Path) -> (Option<SystemTime>, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(p) {
        Ok(m) => (m.modified().ok(), m.len(), m.ino()),
        Err(_) => (None, 0, 0),
    }
}

/// Whether a look at the files is due: at most once per
/// [`CHECK_INTERVAL`] (`checked`: milliseconds since `epoch` of the last
/// look, 0 for none), claimed by one caller; always when `force`.
fn claim_check(checked: &AtomicU64, epoch: std::time::Instant, force: bool) -> bool {
    let now = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    let last = checked.load(Ordering::Relaxed);
    let due = last == 0 || now.saturating_sub(last) >= CHECK_INTERVAL.as_millis() as u64;
    if !force && !due {
        return false;
    }
    // One handshake looks; the others go on with what is in use.
    if !force
        && checked
            .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return false;
    }
    checked.store(now.max(1), Ordering::Relaxed);
    true
}

impl Reloading {
    fn new(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let before = stamp(cert, key);
        let ck = load_key(cert, key, &provider)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            current: ArcSwap::new(ck),
            stamp: std::sync::Mutex::new(before),
            checked: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        })
    }

    /// Re-reads the files if they changed, at most once per
    /// [`CHECK_INTERVAL`] (at once when `force`).
    fn check(&self, force: bool) {
        if !claim_check(&self.checked, self.epoch, force) {
            return;
        }
        let Ok(mut seen) = self.stamp.try_lock() else {
            return;
        };
        let fresh = stamp(&self.cert, &self.key);
        if fresh == *seen {
            return;
        }
        match load_key(&self.cert, &self.key, &self.provider) {
            Ok(ck) => {
                self.current.store(ck);
                *seen = fresh;
                tracing::info!(cert = %self.cert.display(), "tls: certificate reloaded");
            }
            // Half-written (cert renewed, key not yet): keep the old one
            // and look again at the next check.
            Err(e) => tracing::warn!(error = %e, "tls: keeping the certificate in use"),
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.check(false);
        Some(self.current.load_full())
    }
}

// === impl ReloadingCa ===

/// Verifies client certificates against the CA file, re-read when it
/// changes (looked at on a client's certificate, at most once per
/// [`CHECK_INTERVAL`]). A CA file that fails to load keeps the one in use.
/// It names no root hints: they would go stale, and they are only hints.
#[derive(Debug)]
struct ReloadingCa {
    path: PathBuf,
    cfg: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Arc<dyn ClientCertVerifier>>,
    stamp: std::sync::Mutex<(Option<SystemTime>, u64, u64)>,
    checked: AtomicU64,
    epoch: std::time::Instant,
}

impl ReloadingCa {
    fn new(path: PathBuf, cfg: TlsConfig, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let before = file_stamp(&path);
        let v = client_verifier(&cfg, &provider)?;
        Ok(Self {
            path,
            cfg,
            provider,
            current: ArcSwap::from_pointee(v),
            stamp: std::sync::Mutex::new(before),
            checked: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        })
    }

    fn check(&self, force: bool) {
        if !claim_check(&self.checked, self.epoch, force) {
            return;
        }
        let Ok(mut seen) = self.stamp.try_lock() else {
            return;
        };
        let fresh = file_stamp(&self.path);
        if fresh == *seen {
            return;
        }
        match client_verifier(&self.cfg, &self.provider) {
            Ok(v) => {
                self.current.store(Arc::new(v));
                *seen = fresh;
                tracing::info!(ca = %self.path.display(), "tls: client CA reloaded");
            }
            Err(e) => tracing::warn!(error = %e, "tls: keeping the client CA in use"),
        }
    }
}

impl ClientCertVerifier for ReloadingCa {
    fn offer_client_auth(&self) -> bool {
        self.current.load().offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.current.load().client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(false);
        self.current
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }
}

// === impl AnyClientCert ===

/// Go's `RequestClientCert` and `RequireAnyClientCert`: a certificate is
/// asked for (and, for `require`, needed) but its chain is not verified;
/// the handshake signature still is, so the client holds the key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
