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
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
        Self { ca }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.ca.pem()
    }

    /// A certificate (PEM) and key (PEM) for `names`, signed by the CA.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let cert =
            CertificateParams::new(names.iter().map(|n| (*n).to_string()).collect::<Vec<_>>())
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
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        client: Option<&(String, String)>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("ca root");
        let b =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots);
        let mut c = match client {
            None => b.with_no_client_auth(),
            Some((cert, key)) => b
                .with_client_auth_cert(
                    certs(cert),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
                )
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
            let name =
                ServerName::try_from(SERVER_NAME.to_string()).map_err(std::io::Error::other)?;
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

/// A DNS over HTTPS reply.
#[derive(Debug)]
pub struct DohReply {
    /// The HTTP status.
    pub status: u16,
    /// `Content-Type`, if any.
    pub content_type: Option<String>,
    /// `Cache-Control`, if any.
    pub cache_control: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl DohReply {
    /// The body as a DNS message.
    pub fn message(&self) -> Option<Message> {
        Message::from_vec(&self.body).ok()
    }
}

/// A DNS over HTTPS client: HTTP/2 when its configuration offers `h2`
/// (and the server takes it), HTTP/1.1 otherwise; one connection per
/// request.
#[derive(Clone)]
pub struct DohClient {
    addr: SocketAddr,
    config: Arc<ClientConfig>,
}

impl DohClient {
    /// A client of `addr` with `config` (from [`TestCa::client_config`]).
    pub fn new(addr: SocketAddr, config: Arc<ClientConfig>) -> Self {
        Self { addr, config }
    }

    /// RFC 8484 GET of `m`.
    pub async fn get(&self, m: &Message) -> Option<DohReply> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.to_vec().ok()?);
        self.request("GET", &format!("/dns-query?dns={b64}"), None, Vec::new())
            .await
    }

    /// RFC 8484 POST of `m`.
    pub async fn post(&self, m: &Message) -> Option<DohReply> {
        self.request(
            "POST",
            "/dns-query",
            Some("application/dns-message"),
            m.to_vec().ok()?,
        )
        .await
    }

    /// Any request; `None` if the connection or the exchange failed.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Option<DohReply> {
        use http_body_util::{BodyExt, Full};
        use hyper::body::Bytes;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let fut = async {
            let dot = DotClient::new(self.addr, Arc::clone(&self.config));
            let tls = dot.connect().await.ok()?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(if h2 {
                    format!("https://{SERVER_NAME}{path}")
                } else {
                    path.to_string()
                })
                .header("accept", "application/dns-message");
            if !h2 {
                req = req.header("host", SERVER_NAME);
            }
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let req = req.body(Full::new(Bytes::from(body))).ok()?;
            let io = TokioIo::new(tls);
            let resp = if h2 {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .ok()?;
                tokio::spawn(conn);
                send.send_request(req).await.ok()?
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
                tokio::spawn(conn);
                send.send_request(req).await.ok()?
            };
            let status = resp.status().as_u16();
            let header = |n: &str| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let content_type = header("content-type");
            let cache_control = header("cache-control");
            let body = resp.into_body().collect().await.ok()?.to_bytes().to_vec();
            Some(DohReply {
                status,
                content_type,
                cache_control,
                body,
            })
        };
        timeout(WAIT, fut).await.ok().flatten()
    }
}

/// What a gRPC `coredns.dns.DnsService/Query` call gave: the reply
/// message, or the `grpc-status` code when it failed.
pub type GrpcResult = Result<Vec<u8>, u32>;

/// Calls CoreDNS's `coredns.dns.DnsService/Query` with `msg` on a
/// connection of its own: over TLS (ALPN h2) with `config`, or h2c when
/// `config` is `None`. `None` if the connection or the exchange failed.
/// The protobuf (`DnsPacket { bytes msg = 1; }`) and gRPC framing are
/// written by hand.
pub async fn grpc_query(
    addr: SocketAddr,
    config: Option<Arc<ClientConfig>>,
    msg: &[u8],
) -> Option<GrpcResult> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    // DnsPacket: field 1, wire type 2, varint length, bytes.
    let mut packet = vec![0x0a];
    let mut n = msg.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            packet.push(b);
            break;
        }
        packet.push(b | 0x80);
    }
    packet.extend_from_slice(msg);
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(packet.len()).ok()?.to_be_bytes());
    body.extend_from_slice(&packet);
    let fut = async {
        let req = hyper::Request::builder()
            .method("POST")
            .uri(format!("http://{SERVER_NAME}/coredns.dns.DnsService/Query"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(body)))
            .ok()?;
        let resp = match config {
            Some(config) => {
                let tls = DotClient::new(addr, config).connect().await.ok()?;
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .ok()?;
                tokio::spawn(conn);
                send.send_request(req).await.ok()?
            }
            None => {
                let tcp = TcpStream::connect(addr).await.ok()?;
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                        .ok()?;
                tokio::spawn(conn);
                send.send_request(req).await.ok()?
            }
        };
        let status_in = |h: &hyper::HeaderMap| -> Option<u32> {
            h.get("grpc-status")?.to_str().ok()?.parse().ok()
        };
        let early = status_in(resp.headers());
        let collected = resp.into_body().collect().await.ok()?;
        let status = early
            .or_else(|| collected.trailers().and_then(status_in))
            .unwrap_or(2);
        if status != 0 {
            return Some(Err(status));
        }
        let bytes = collected.to_bytes();
        // gRPC frame: flag, length, then the DnsPacket.
        let packet = bytes.get(5..)?;
        let (&tag, mut rest) = packet.split_first()?;
        if tag != 0x0a {
            return None;
        }
        let mut len = 0usize;
        for shift in (0..35).step_by(7) {
            let (&b, r) = rest.split_first()?;
            rest = r;
            len |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
        }
        Some(Ok(rest.get(..len)?.to_vec()))
    };
    timeout(WAIT, fut).await.ok().flatten()
}
