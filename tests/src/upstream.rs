//! A fake upstream DNS server on loopback (UDP and TCP on one port) with
//! fault modes, for testing what nodedns does with a good or a bad upstream.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

/// How the upstream misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers correctly.
    Normal,
    /// Never answers.
    Drop,
    /// Answers after a delay.
    Delay(Duration),
    /// Answers SERVFAIL.
    ServFail,
    /// Over UDP, answers with TC=1 and no records; over TCP, in full.
    Truncate,
    /// Answers random bytes.
    Garbage,
    /// Answers with the wrong query ID.
    WrongId,
    /// Sends first a SERVFAIL with the query's ID and no question
    /// (QDCOUNT 0), then the right answer.
    NoQuestionFirst,
}

#[derive(Debug)]
struct State {
    fault: Mutex<Fault>,
    records: Mutex<HashMap<(String, RecordType), Vec<Record>>>,
    wildcard_a: Mutex<Option<IpAddr>>,
    counts: Mutex<HashMap<(String, RecordType), usize>>,
    udp_queries: AtomicUsize,
    tcp_queries: AtomicUsize,
    tcp_connections: AtomicUsize,
    tcp_open: AtomicUsize,
    tls_resumed: AtomicUsize,
    udp_peers: Mutex<Vec<IpAddr>>,
    canned: Mutex<HashMap<(String, RecordType), Canned>>,
    /// Queries a TCP/TLS connection answers before it goes silent
    /// (`usize::MAX`: no limit).
    stall_after: AtomicUsize,
    /// Names (normalized) answered only after a delay, whatever the fault.
    name_delays: Mutex<HashMap<String, Duration>>,
}

/// A reply set up whole with [`FakeUpstreamBuilder::canned`]: rcode,
/// answer and authority records.
type Canned = (ResponseCode, Vec<Record>, Vec<Record>);

/// Builder for a [`FakeUpstream`].
#[derive(Debug)]
pub struct FakeUpstreamBuilder {
    state: State,
    ttl: u32,
    tls: bool,
    client_auth: bool,
}

/// A running fake upstream. Stops on drop.
#[derive(Debug)]
pub struct FakeUpstream {
    /// Its address (UDP and TCP).
    pub addr: SocketAddr,
    /// With [`FakeUpstreamBuilder::tls`]: its DNS-over-TLS address and the
    /// PEM of the CA that signed its certificate (for `dns.example.test`
    /// and 127.0.0.1).
    pub tls: Option<(SocketAddr, String)>,
    /// With [`FakeUpstreamBuilder::tls_client_auth`]: the PEM certificate
    /// and PKCS#8 key of a client the TLS port accepts (signed by the same
    /// CA); a client without them fails the handshake.
    pub tls_client: Option<(String, String)>,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Display for FakeUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)
    }
}

impl FakeUpstream {
    /// A builder: no records, no fault, TTL 300.
    pub fn builder() -> FakeUpstreamBuilder {
        FakeUpstreamBuilder {
            state: State {
                fault: Mutex::new(Fault::Normal),
                records: Mutex::new(HashMap::new()),
                wildcard_a: Mutex::new(None),
                counts: Mutex::new(HashMap::new()),
                udp_queries: AtomicUsize::new(0),
                tcp_queries: AtomicUsize::new(0),
                tcp_connections: AtomicUsize::new(0),
                tcp_open: AtomicUsize::new(0),
                tls_resumed: AtomicUsize::new(0),
                udp_peers: Mutex::new(Vec::new()),
                canned: Mutex::new(HashMap::new()),
                stall_after: AtomicUsize::new(usize::MAX),
                name_delays: Mutex::new(HashMap::new()),
            },
            ttl: 300,
            tls: false,
            client_auth: false,
        }
    }
    /// Changes the fault mode.
    pub fn set_fault(&self, f: Fault) {
        *self.state.fault.lock().expect("fault lock") = f;
    }
    /// Queries seen for a name (any case) and type.
    pub fn count(&self, name: &str, qtype: RecordType) -> usize {
        let key = (normalize(name), qtype);
        self.state
            .counts
            .lock()
            .expect("counts lock")
            .get(&key)
            .copied()
            .unwrap_or(0)
    }
    /// Queries seen over UDP.
    pub fn udp_queries(&self) -> usize {
        self.state.udp_queries.load(Ordering::Relaxed)
    }
    /// Queries seen over TCP.
    pub fn tcp_queries(&self) -> usize {
        self.state.tcp_queries.load(Ordering::Relaxed)
    }
    /// TCP (and TLS) connections accepted.
    pub fn tcp_connections(&self) -> usize {
        self.state.tcp_connections.load(Ordering::Relaxed)
    }
    /// The source addresses UDP queries came from (each once).
    pub fn udp_peers(&self) -> Vec<IpAddr> {
        self.state.udp_peers.lock().expect("peers lock").clone()
    }
    /// TLS connections that resumed an earlier session.
    pub fn tls_resumed(&self) -> usize {
        self.state.tls_resumed.load(Ordering::Relaxed)
    }
    /// TCP (and TLS) connections open now.
    pub fn tcp_open(&self) -> usize {
        self.state.tcp_open.load(Ordering::Relaxed)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn normalize(name: &str) -> String {
    let mut n = name.to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

impl FakeUpstreamBuilder {
    /// Adds an A record.
    pub fn a(self, name: &str, ip: &str) -> Self {
        let ip: std::net::Ipv4Addr = ip.parse().expect("IPv4 address");
        self.record(name, RecordType::A, RData::A(A(ip)))
    }
    /// Adds an AAAA record.
    pub fn aaaa(self, name: &str, ip: &str) -> Self {
        let ip: std::net::Ipv6Addr = ip.parse().expect("IPv6 address");
        self.record(name, RecordType::AAAA, RData::AAAA(AAAA(ip)))
    }
    /// Answers every A query for a name without records with `ip`.
    pub fn wildcard_a(self, ip: &str) -> Self {
        *self.state.wildcard_a.lock().expect("lock") = Some(ip.parse().expect("IP address"));
        self
    }
    /// Answers `name` and `qtype` with `rcode` and exactly these answer
    /// and authority records (their own TTLs), whatever else is set up.
    pub fn canned(
        self,
        name: &str,
        qtype: RecordType,
        rcode: ResponseCode,
        answers: Vec<Record>,
        authority: Vec<Record>,
    ) -> Self {
        self.state
            .canned
            .lock()
            .expect("lock")
            .insert((normalize(name), qtype), (rcode, answers, authority));
        self
    }
    /// TTL of the records added after this call.
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }
    /// Also serves DNS-over-TLS, on another port, with a certificate from a
    /// CA made for this upstream.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
    /// Serves DNS-over-TLS (as [`Self::tls`]) only to clients that present
    /// a certificate signed by the upstream's CA.
    pub fn tls_client_auth(mut self) -> Self {
        self.tls = true;
        self.client_auth = true;
        self
    }
    /// Each TCP (and TLS) connection answers its first `n` queries, then
    /// stays open, reads on and answers nothing: a stalled upstream, or a
    /// NAT that dropped the flow.
    pub fn tcp_stall_after(self, n: usize) -> Self {
        self.state.stall_after.store(n, Ordering::Relaxed);
        self
    }
    /// Answers queries for `name` (any type) only after `delay`, as a
    /// resolver that recurses for it; other names at once.
    pub fn delay_name(self, name: &str, delay: Duration) -> Self {
        self.state
            .name_delays
            .lock()
            .expect("lock")
            .insert(normalize(name), delay);
        self
    }
    /// The fault mode to start with.
    pub fn fault(self, f: Fault) -> Self {
        *self.state.fault.lock().expect("lock") = f;
        self
    }
    fn record(self, name: &str, t: RecordType, data: RData) -> Self {
        let n = Name::from_ascii(name).expect("valid name");
        self.state
            .records
            .lock()
            .expect("lock")
            .entry((normalize(name), t))
            .or_default()
            .push(Record::from_rdata(n, self.ttl, data));
        self
    }

    /// Binds 127.0.0.1 (UDP and TCP on one free port) and serves.
    pub async fn start(self) -> FakeUpstream {
        let state = Arc::new(self.state);
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("local addr");
        let udp = Arc::new(udp);
        let s = Arc::clone(&state);
        let u = Arc::clone(&udp);
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            loop {
                let Ok((n, peer)) = u.recv_from(&mut buf).await else {
                    continue;
                };
                let q = buf[..n].to_vec();
                {
                    let mut peers = s.udp_peers.lock().expect("peers lock");
                    if !peers.contains(&peer.ip()) {
                        peers.push(peer.ip());
                    }
                }
                let s = Arc::clone(&s);
                let u = Arc::clone(&u);
                tokio::spawn(async move {
                    s.udp_queries.fetch_add(1, Ordering::Relaxed);
                    if let Some(r) = bare_reply(&s, &q) {
                        let _ = u.send_to(&r, peer).await;
                    }
                    if let Some(r) = answer(&s, &q, false).await {
                        let _ = u.send_to(&r, peer).await;
                    }
                });
            }
        });
        let s = Arc::clone(&state);
        let tcp_task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = tcp.accept().await else {
                    continue;
                };
                tokio::spawn(serve_stream(Arc::clone(&s), stream));
            }
        });
        let mut tasks = vec![udp_task, tcp_task];
        let mut tls = None;
        let mut tls_client = None;
        if self.tls {
            let (acceptor, ca_pem, client) = tls_acceptor(self.client_auth);
            tls_client = client;
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind tls");
            let tls_addr = listener.local_addr().expect("addr");
            let s = Arc::clone(&state);
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let s = Arc::clone(&s);
                    tokio::spawn(async move {
                        if let Ok(Ok(tls)) =
                            tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream))
                                .await
                        {
                            if tls.get_ref().1.handshake_kind()
                                == Some(rustls::HandshakeKind::Resumed)
                            {
                                s.tls_resumed.fetch_add(1, Ordering::Relaxed);
                            }
                            serve_stream(s, tls).await;
                        }
                    });
                }
            }));
            tls = Some((tls_addr, ca_pem));
        }
        FakeUpstream {
            addr,
            tls,
            tls_client,
            state,
            tasks,
        }
    }
}

/// A reply with its two-byte length prefix.
fn frame(r: &[u8]) -> Vec<u8> {
    let len = u16::try_from(r.len()).unwrap_or(u16::MAX);
    let mut out = Vec::with_capacity(r.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(r);
    out
}

/// Serves length-prefixed queries on a stream, answering each as it
/// completes (a delayed answer does not hold up the next).
async fn serve_stream<S>(s: Arc<State>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    s.tcp_connections.fetch_add(1, Ordering::Relaxed);
    s.tcp_open.fetch_add(1, Ordering::Relaxed);
    let (mut rd, wr) = tokio::io::split(stream);
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let stall_after = s.stall_after.load(Ordering::Relaxed);
    // Bounded: a test connection carries at most this many queries.
    for n in 0..100_000 {
        let Ok(len) = rd.read_u16().await else { break };
        let mut q = vec![0u8; usize::from(len)];
        if rd.read_exact(&mut q).await.is_err() {
            break;
        }
        if n >= stall_after {
            continue;
        }
        let s = Arc::clone(&s);
        let wr = Arc::clone(&wr);
        tokio::spawn(async move {
            s.tcp_queries.fetch_add(1, Ordering::Relaxed);
            // Each frame in one write: a length prefix sent apart waits on
            // Nagle and the peer's delayed ACK (about 40 ms a reply).
            if let Some(r) = bare_reply(&s, &q) {
                let mut w = wr.lock().await;
                let _ = w.write_all(&frame(&r)).await;
            }
            if let Some(r) = answer(&s, &q, true).await {
                let mut w = wr.lock().await;
                let _ = w.write_all(&frame(&r)).await;
            }
        });
    }
    s.tcp_open.fetch_sub(1, Ordering::Relaxed);
}

/// A TLS acceptor with a fresh CA and a certificate for
/// `dns.example.test` and 127.0.0.1; returns the CA's PEM too. With
/// `client_auth`, it requires a client certificate from that CA, and
/// returns one (certificate and key, PEM).
fn tls_acceptor(
    client_auth: bool,
) -> (tokio_rustls::TlsAcceptor, String, Option<(String, String)>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec![
        "dns.example.test".to_string(),
        "127.0.0.1".to_string(),
    ])
    .expect("params");
    let cert = params.signed_by(&key, &ca).expect("cert");
    let chain = vec![cert.der().clone()];
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("protocols");
    let (builder, client) = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).expect("ca root");
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
        let client_key = KeyPair::generate().expect("client key");
        let client_cert = CertificateParams::new(vec!["client.example.test".to_string()])
            .expect("client params")
            .signed_by(&client_key, &ca)
            .expect("client cert");
        (
            builder.with_client_cert_verifier(verifier),
            Some((client_cert.pem(), client_key.serialize_pem())),
        )
    } else {
        (builder.with_no_client_auth(), None)
    };
    let config = builder
        .with_single_cert(chain, key_der)
        .expect("server config");
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca.pem(),
        client,
    )
}

async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let port = tcp.local_addr().expect("addr").port();
        if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("no free port for UDP and TCP together");
}

/// The reply to a query under the current fault, or `None` to stay silent.
async fn answer(s: &State, raw: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(raw).ok()?;
    let query = q.queries.first()?.clone();
    let name = normalize(&query.name().to_ascii());
    // The fault is read before the query is counted, so a test that saw
    // the count knows which fault the query met.
    let fault = *s.fault.lock().expect("fault lock");
    *s.counts
        .lock()
        .expect("counts lock")
        .entry((name.clone(), query.query_type()))
        .or_default() += 1;
    let name_delay = s.name_delays.lock().expect("lock").get(&name).copied();
    if let Some(d) = name_delay {
        tokio::time::sleep(d).await;
    }
    match fault {
        Fault::Drop => return None,
        Fault::Delay(d) => tokio::time::sleep(d).await,
        Fault::Garbage => return Some((0..40).map(|_| rand::random::<u8>()).collect()),
        _ => {}
    }
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.add_query(query.clone());
    if let Some(e) = &q.edns {
        m.set_edns(e.clone());
    }
    if fault == Fault::ServFail {
        m.metadata.response_code = ResponseCode::ServFail;
    } else if fault == Fault::Truncate && !tcp {
        m.metadata.truncation = true;
    } else if let Some((rcode, answers, authority)) = s
        .canned
        .lock()
        .expect("canned lock")
        .get(&(name.clone(), query.query_type()))
        .cloned()
    {
        m.metadata.response_code = rcode;
        m.answers.extend(answers);
        m.authorities.extend(authority);
    } else {
        let records = s.records.lock().expect("records lock");
        let exact = records.get(&(name.clone(), query.query_type())).cloned();
        let exists = records.keys().any(|(n, _)| *n == name);
        drop(records);
        let wildcard = *s.wildcard_a.lock().expect("lock");
        match (exact, wildcard) {
            (Some(rs), _) => m.answers.extend(rs),
            (None, Some(IpAddr::V4(ip))) if query.query_type() == RecordType::A => {
                m.add_answer(Record::from_rdata(
                    query.name().clone(),
                    300,
                    RData::A(A(ip)),
                ));
            }
            _ => {
                if !exists && wildcard.is_none() {
                    m.metadata.response_code = ResponseCode::NXDomain;
                }
                let zone = Name::from_ascii("example.org.").expect("name");
                m.add_authority(Record::from_rdata(
                    zone.clone(),
                    60,
                    RData::SOA(SOA::new(zone.clone(), zone, 1, 7200, 3600, 86400, 30)),
                ));
            }
        }
    }
    if fault == Fault::WrongId {
        m.metadata.id = m.metadata.id.wrapping_add(1);
    }
    m.to_vec().ok()
}

/// With [`Fault::NoQuestionFirst`]: a SERVFAIL header with the query's ID,
/// QR set and no question, sent before the answer.
fn bare_reply(s: &State, raw: &[u8]) -> Option<Vec<u8>> {
    if *s.fault.lock().expect("fault lock") != Fault::NoQuestionFirst {
        return None;
    }
    let id = raw.get(..2)?;
    Some(vec![id[0], id[1], 0x81, 0x82, 0, 0, 0, 0, 0, 0, 0, 0])
}
