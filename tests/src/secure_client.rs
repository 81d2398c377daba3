//! Clients of the agent's encrypted listeners, and the test CA they trust:
//! a CA minted by rcgen at test time, server certificates for
//! `dns.example.test` and 127.0.0.1, client certificates, and a DNS over
//! TLS client (RFC 7858: length-prefixed messages over TLS). Every wait
//! has a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::Message;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

/// The name the agent's test certificates carry.
pub const SERVER_NAME: &str = "dns.example.test";

/// How long one exchange may take.
const WAIT: Duration = Duration::from_secs(5);

/// A certificate authority for one test.
pub struct TestCa {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A fresh CA.
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nodedns test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key"))
            .expect("ca");
        Self { ca }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate (PEM) and key (PEM) for `names`, signed by the CA.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names.iter().map(|n| (*n).to_string()).collect::<Vec<_>>())
            .expect("params")
            .signed_by(&key, &self.ca)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    /// A server certificate and key for [`SERVER_NAME`] and 127.0.0.1.
    pub fn server(&self) -> (String, String) {
        self.issue(&[SERVER_NAME, "127.0.0.1"])
    }

    /// A client configuration that trusts this CA, offers `alpn`, and
    /// presents `client` (certificate and key, PEM) when given.
    pub fn client_config(&self, alpn: &[&[u8]], client: Option<&(String, String)>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("ca root");
        let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut c = match client {
            None => b.with_no_client_auth(),
            Some((cert, key)) => b
                .with_client_auth_cert(certs(cert), PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"))
                .expect("client cert"),
        };
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

/// The certificates of a PEM text.
pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("pem")
}

/// A DNS over TLS client.
#[derive(Clone)]
pub struct DotClient {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
}

impl DotClient {
    /// A client of `addr` with `config` (from [`TestCa::client_config`]).
    pub fn new(addr: SocketAddr, config: Arc<ClientConfig>) -> Self {
        Self { addr, config }
    }

    /// Connects and runs the handshake (for [`SERVER_NAME`]).
    pub async fn connect(&self) -> std::io::Result<TlsStream<TcpStream>> {
        let fut = async {
            let tcp = TcpStream::connect(self.addr).await?;
            let name = ServerName::try_from(SERVER_NAME.to_string())
                .map_err(std::io::Error::other)?;
            tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
                .connect(name, tcp)
                .await
        };
        timeout(WAIT, fut)
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("tls connect timed out")))
    }

    /// One query on a connection of its own; `None` if anything failed.
    pub async fn query(&self, m: &Message) -> Option<Message> {
        let mut s = self.connect().await.ok()?;
        write_frame(&mut s, &m.to_vec().ok()?).await.ok()?;
        let raw = read_frame(&mut s).await?;
        Message::from_vec(&raw).ok()
    }
}

/// Writes one length-prefixed message.
pub async fn write_frame<S: AsyncWrite + Unpin>(s: &mut S, raw: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(raw.len()).map_err(std::io::Error::other)?;
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(raw);
    s.write_all(&frame).await?;
    s.flush().await
}

/// Reads one length-prefixed message; `None` on close, error or after
/// five seconds.
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let fut = async {
        let len = s.read_u16().await.ok()?;
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await.ok()?;
        Some(buf)
    };
    timeout(WAIT, fut).await.ok().flatten()
}
