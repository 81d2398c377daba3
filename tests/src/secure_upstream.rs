//! Fake encrypted upstreams on loopback: DNS over HTTPS (HTTP/1.1 and
//! HTTP/2 over TLS), DNS over QUIC and DNS over HTTP/3, with a test CA
//! made by rcgen when the server starts. Each answers `A` queries for any
//! name with one address and `. NS` (health checks) with one name,
//! counts queries, connections and streams, and misbehaves on demand
//! ([`SecureFault`]). Stops on drop.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, NS};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Which transport the fake upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureKind {
    /// DoH: HTTP/1.1 and HTTP/2 over TLS on TCP.
    Https,
    /// DoQ (ALPN `doq`).
    Quic,
    /// DoH3 (ALPN `h3`).
    H3,
}

impl SecureKind {
    /// The forward scheme for this transport, with `://`.
    pub fn scheme(self) -> &'static str {
        match self {
            Self::Https => "https://",
            Self::Quic => "quic://",
            Self::H3 => "h3://",
        }
    }
}

/// How the fake upstream misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureFault {
    /// Answers correctly.
    Normal,
    /// Never answers (the stream stays open).
    Stall,
    /// Answers after a delay.
    Delay(Duration),
    /// Answers bytes that are no DNS reply (DoQ: a length prefix that
    /// does not match the message).
    Malformed,
    /// Answers with message ID 0x1234 instead of 0.
    WrongId,
    /// Resets the stream instead of answering.
    Reset,
    /// HTTP status 500 (DoQ: as `Malformed`).
    Http500,
    /// HTTP content type `text/plain` (DoQ: as `Malformed`).
    WrongContentType,
    /// A body of 70000 bytes (DoQ: a stream that long).
    Oversize,
}

#[derive(Debug)]
struct State {
    fault: Mutex<SecureFault>,
    answer: Ipv4Addr,
    queries: AtomicUsize,
    connections: AtomicUsize,
    open_connections: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Requests by HTTP method ("GET", "POST").
    methods: Mutex<Vec<String>>,
}

/// A running fake encrypted upstream.
#[derive(Debug)]
pub struct SecureUpstream {
    /// Its address (TCP for DoH, UDP for DoQ and DoH3).
    pub addr: SocketAddr,
    /// The PEM of the CA that signed its certificate (for
    /// `dns.example.test` and 127.0.0.1).
    pub ca_pem: String,
    /// The transport.
    pub kind: SecureKind,
    state: Arc<State>,
    task: JoinHandle<()>,
    endpoint: Option<quinn::Endpoint>,
}

impl Drop for SecureUpstream {
    fn drop(&mut self) {
        if let Some(e) = &self.endpoint {
            e.close(0u32.into(), b"");
        }
        self.task.abort();
    }
}

impl SecureUpstream {
    /// Starts a fake upstream of `kind` on 127.0.0.1, port chosen by the
    /// system. `A` queries are answered with 192.0.2.53.
    pub async fn start(kind: SecureKind) -> Self {
        let (tls, ca_pem) = server_tls(kind);
        let state = Arc::new(State {
            fault: Mutex::new(SecureFault::Normal),
            answer: Ipv4Addr::new(192, 0, 2, 53),
            queries: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            open_connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            methods: Mutex::new(Vec::new()),
        });
        match kind {
            SecureKind::Https => {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("addr");
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                let task = tokio::spawn(serve_https(listener, acceptor, Arc::clone(&state)));
                Self {
                    addr,
                    ca_pem,
                    kind,
                    state,
                    task,
                    endpoint: None,
                }
            }
            SecureKind::Quic | SecureKind::H3 => {
                let crypto =
                    quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic crypto");
                let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
                let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("a"))
                    .expect("quic endpoint");
                let addr = endpoint.local_addr().expect("addr");
                let task = tokio::spawn(serve_quic(endpoint.clone(), kind, Arc::clone(&state)));
                Self {
                    addr,
                    ca_pem,
                    kind,
                    state,
                    task,
                    endpoint: Some(endpoint),
                }
            }
        }
    }

    /// Changes how it answers from now on.
    pub fn set_fault(&self, f: SecureFault) {
        *self.state.fault.lock().expect("lock") = f;
    }

    /// DNS queries received (whatever was answered).
    pub fn queries(&self) -> usize {
        self.state.queries.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.state.open_connections.load(Ordering::SeqCst)
    }

    /// Most queries (streams) it was working on at once.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// The HTTP methods of the requests so far (DoH and DoH3).
    pub fn methods(&self) -> Vec<String> {
        self.state.methods.lock().expect("lock").clone()
    }
}

/// A query being worked on: counted in flight until dropped.
struct Working<'a>(&'a State);

impl<'a> Working<'a> {
    fn new(s: &'a State) -> Self {
        s.queries.fetch_add(1, Ordering::SeqCst);
        let n = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(n, Ordering::SeqCst);
        Self(s)
    }
}

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection counted open until dropped.
struct Open(Arc<State>);

impl Open {
    fn new(s: &Arc<State>) -> Self {
        s.connections.fetch_add(1, Ordering::SeqCst);
        s.open_connections.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(s))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What to do with one query.
enum Action {
    Reply(Vec<u8>),
    Reset,
    Http500,
    WrongContentType(Vec<u8>),
}

/// Answers one query by the current fault (after waiting if it says so).
async fn answer(state: &State, query: &[u8]) -> Action {
    let fault = *state.fault.lock().expect("lock");
    match fault {
        SecureFault::Stall => std::future::pending::<()>().await,
        SecureFault::Delay(d) => tokio::time::sleep(d).await,
        _ => {}
    }
    let Ok(q) = Message::from_vec(query) else {
        return Action::Reset;
    };
    let mut reply = Message::response(q.metadata.id, q.metadata.op_code);
    reply.metadata.recursion_desired = q.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    for question in &q.queries {
        reply.add_query(question.clone());
    }
    if let Some(question) = q.queries.first() {
        let name: Name = question.name().clone();
        match question.query_type() {
            RecordType::A => {
                reply.add_answer(Record::from_rdata(name, 300, RData::A(A(state.answer))));
            }
            RecordType::NS => {
                let ns = Name::from_ascii("ns.example.test.").expect("name");
                reply.add_answer(Record::from_rdata(name, 300, RData::NS(NS(ns))));
            }
            _ => {}
        }
    } else {
        reply.metadata.response_code = ResponseCode::FormErr;
    }
    let mut wire = reply.to_vec().expect("reply");
    match fault {
        SecureFault::Malformed => Action::Reply(b"\x00\x00not a dns reply".to_vec()),
        SecureFault::WrongId => {
            wire[..2].copy_from_slice(&[0x12, 0x34]);
            Action::Reply(wire)
        }
        SecureFault::Reset => Action::Reset,
        SecureFault::Http500 => Action::Http500,
        SecureFault::WrongContentType => Action::WrongContentType(wire),
        SecureFault::Oversize => Action::Reply(vec![0u8; 70_000]),
        _ => Action::Reply(wire),
    }
}

// === DoH ===

async fn serve_https(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let _open = Open::new(&state);
            let service = hyper::service::service_fn(move |req| {
                let state = Arc::clone(&state);
                async move { doh_request(&state, req).await }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
    }
}

/// The query of a DoH request: the body of a POST, the `dns` parameter
/// of a GET.
async fn doh_query<B>(state: &State, req: Request<B>) -> Option<Vec<u8>>
where
    B: hyper::body::Body,
{
    state
        .methods
        .lock()
        .expect("lock")
        .push(req.method().as_str().to_string());
    if req.uri().path() != "/dns-query" {
        return None;
    }
    match *req.method() {
        Method::POST => req
            .into_body()
            .collect()
            .await
            .ok()
            .map(|b| b.to_bytes().to_vec()),
        Method::GET => {
            let q = req.uri().query()?;
            let b64 = q.split('&').find_map(|kv| kv.strip_prefix("dns="))?;
            base64url_decode(b64)
        }
        _ => None,
    }
}

type DohBody = Full<Bytes>;

async fn doh_request(
    state: &Arc<State>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<DohBody>, std::io::Error> {
    let Some(query) = doh_query(state, req).await else {
        return Ok(status(StatusCode::BAD_REQUEST));
    };
    let _w = Working::new(state);
    http_action(answer(state, &query).await)
}

fn status(code: StatusCode) -> Response<DohBody> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

/// The HTTP response for an action; `Err` resets the stream (HTTP/2).
fn http_action(a: Action) -> Result<Response<DohBody>, std::io::Error> {
    let (ctype, body) = match a {
        Action::Reset => return Err(std::io::Error::other("reset on purpose")),
        Action::Http500 => return Ok(status(StatusCode::INTERNAL_SERVER_ERROR)),
        Action::WrongContentType(b) => ("text/plain", b),
        Action::Reply(b) => ("application/dns-message", b),
    };
    Response::builder()
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .map_err(std::io::Error::other)
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

// === DoQ and DoH3 ===

async fn serve_quic(endpoint: quinn::Endpoint, kind: SecureKind, state: Arc<State>) {
    while let Some(incoming) = endpoint.accept().await {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let _open = Open::new(&state);
            match kind {
                SecureKind::H3 => serve_h3(conn, state).await,
                _ => serve_doq(conn, state).await,
            }
        });
    }
}

async fn serve_doq(conn: quinn::Connection, state: Arc<State>) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let Ok(data) = recv.read_to_end(65537).await else {
                return;
            };
            let Some(query) = data.get(2..) else { return };
            let _w = Working::new(&state);
            let reply = match answer(&state, query).await {
                Action::Reset => {
                    let _ = send.reset(0x2u32.into());
                    return;
                }
                Action::Reply(r) if r.len() > 65535 => r,
                Action::Reply(r)
                    if *state.fault.lock().expect("lock") != SecureFault::Malformed =>
                {
                    let mut f = (r.len() as u16).to_be_bytes().to_vec();
                    f.extend_from_slice(&r);
                    f
                }
                // A prefix that says more than the stream holds.
                Action::Reply(r) | Action::WrongContentType(r) => {
                    let mut f = ((r.len() + 10) as u16).to_be_bytes().to_vec();
                    f.extend_from_slice(&r);
                    f
                }
                Action::Http500 => vec![0, 40, 1, 2, 3],
            };
            let _ = send.write_all(&reply).await;
            let _ = send.finish();
            // Wait for the client to read it all before the stream goes.
            let _ = send.stopped().await;
        });
    }
}

async fn serve_h3(conn: quinn::Connection, state: Arc<State>) {
    let Ok(mut h3conn) =
        h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await
    else {
        return;
    };
    while let Ok(Some(resolver)) = h3conn.accept().await {
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let Ok((req, mut stream)) = resolver.resolve_request().await else {
                return;
            };
            let mut body = Vec::new();
            while let Ok(Some(mut chunk)) = stream.recv_data().await {
                while chunk.has_remaining() {
                    let part = chunk.chunk().to_vec();
                    chunk.advance(part.len());
                    body.extend_from_slice(&part);
                }
            }
            let (parts, ()) = req.into_parts();
            let req = Request::from_parts(parts, Full::new(Bytes::from(body)));
            let Some(query) = doh_query(&state, req).await else {
                let _ = stream
                    .send_response(status(StatusCode::BAD_REQUEST).map(|_| ()))
                    .await;
                let _ = stream.finish().await;
                return;
            };
            let _w = Working::new(&state);
            let Ok(resp) = http_action(answer(&state, &query).await) else {
                stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                return;
            };
            let (parts, body) = resp.into_parts();
            let data = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let _ = stream.send_response(Response::from_parts(parts, ())).await;
            if !data.is_empty() {
                let _ = stream.send_data(data).await;
            }
            let _ = stream.finish().await;
        });
    }
}

/// A server TLS configuration with a fresh CA and a certificate for
/// `dns.example.test` and 127.0.0.1, offering the transport's ALPN;
/// returns the CA's PEM too.
fn server_tls(kind: SecureKind) -> (Arc<rustls::ServerConfig>, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec![
        "dns.example.test".to_string(),
        "127.0.0.1".to_string(),
    ])
    .expect("params")
    .signed_by(&key, &ca)
    .expect("cert");
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .expect("server config");
    config.alpn_protocols = match kind {
        SecureKind::Https => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        SecureKind::Quic => vec![b"doq".to_vec()],
        SecureKind::H3 => vec![b"h3".to_vec()],
    };
    (Arc::new(config), ca.pem())
}
