//! Tests against small in-process upstreams on 127.0.0.1:0 (UDP, TCP and
//! TLS with a CA minted by rcgen). Every wait has a deadline.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::wire::Question;
use super::*;
use crate::request::write_name;

/// The longest any test waits for something to happen.
const WAIT: Duration = Duration::from_secs(5);
/// The timeout of exchanges that are expected to succeed.
const T: Duration = Duration::from_secs(5);
const TYPE_A: u16 = 1;

// === helpers ===

/// A name in wire form, letter case kept (`name_to_wire` lower-cases).
fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(u8::try_from(label.len()).unwrap());
        out.extend(label.bytes());
    }
    out.push(0);
    out
}

/// A query in wire form: RD set, one question of class IN.
fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend(id.to_be_bytes());
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend(wire_name(name));
    q.extend(qtype.to_be_bytes());
    q.extend(1u16.to_be_bytes());
    q
}

/// What the echo upstreams answer: the query with QR and RA set.
fn echo(q: &[u8]) -> Vec<u8> {
    let mut r = q.to_vec();
    r[2] |= 0x80;
    r[3] |= 0x80;
    r
}

fn id_of(msg: &[u8]) -> u16 {
    u16::from_be_bytes([msg[0], msg[1]])
}

fn qname_of(msg: &[u8]) -> String {
    let mut s = String::new();
    write_name(&mut s, &msg[12..]);
    s
}

/// The same message with another question name (same length).
fn with_name(msg: &[u8], name: &str) -> Vec<u8> {
    let wire = wire_name(name);
    let mut out = msg[..12].to_vec();
    out.extend(&wire);
    out.extend(&msg[12 + wire.len()..]);
    out
}

fn config(addr: SocketAddr) -> ProxyConfig {
    ProxyConfig::new(addr)
}

async fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    crate::pkg::test::wait_until(what, WAIT, cond).await;
}

/// A UDP upstream: `answer` maps a query to the datagrams sent back, each
/// after its delay. Returns its address and the client addresses it saw.
async fn udp_server<F>(answer: F) -> (SocketAddr, Arc<Mutex<HashSet<SocketAddr>>>)
where
    F: Fn(&[u8]) -> Vec<(Duration, Vec<u8>)> + Send + 'static,
{
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = sock.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&peers);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            seen.lock().unwrap().insert(peer);
            for (delay, reply) in answer(&buf[..n]) {
                if delay.is_zero() {
                    let _ = sock.send_to(&reply, peer).await;
                } else {
                    let sock = Arc::clone(&sock);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = sock.send_to(&reply, peer).await;
                    });
                }
            }
        }
    });
    (addr, peers)
}

fn now(reply: Vec<u8>) -> Vec<(Duration, Vec<u8>)> {
    vec![(Duration::ZERO, reply)]
}

/// How a stream upstream behaves on each connection.
#[derive(Clone)]
enum Mode {
    /// Answers every query at once.
    Echo,
    /// Answers after `n` queries came, last first.
    Batch(usize),
    /// First connection: reads a query and closes. Later ones: `Echo`.
    CloseFirst,
    /// Every connection reads a query and closes.
    CloseAlways,
    /// Answers the first query, then closes.
    EchoOnceThenClose,
    /// Answers nothing until the value turns true, then everything.
    Hold(watch::Receiver<bool>),
    /// Sends a reply with a wrong ID before the right one.
    WrongIdFirst,
    /// Answers the first `k` queries of each connection, then reads on
    /// and answers nothing (a stalled upstream, a NAT that lost the flow).
    StallAfter(usize),
    /// Never answers the first query of a connection; answers the rest.
    IgnoreFirst,
    /// First connection: reads queries and answers none. Later ones: `Echo`.
    SilentFirst,
}

/// What a stream upstream saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    /// Connections the client closed (the server read EOF).
    client_closed: AtomicUsize,
    queries: AtomicUsize,
}

impl Seen {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    fn client_closed(&self) -> usize {
        self.client_closed.load(Ordering::SeqCst)
    }
}

async fn tcp_server(mode: Mode) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let n = s.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(tcp, mode.clone(), n, Arc::clone(&s)));
        }
    });
    (addr, seen)
}

async fn tls_server(mode: Mode, pki: &Pki) -> (SocketAddr, Arc<Seen>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let n = s.accepted.fetch_add(1, Ordering::SeqCst);
            let (acceptor, mode, s) = (acceptor.clone(), mode.clone(), Arc::clone(&s));
            tokio::spawn(async move {
                // A client that refuses the certificate ends here.
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve(tls, mode, n, s).await;
                }
            });
        }
    });
    (addr, seen)
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<Vec<u8>> {
    let len = r.read_u16().await.ok()?;
    let mut buf = vec![0u8; usize::from(len)];
    r.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

type Writer<S> = Arc<tokio::sync::Mutex<tokio::io::WriteHalf<S>>>;

async fn write_frame<S: AsyncWrite>(w: &Writer<S>, msg: &[u8]) {
    let mut frame = u16::try_from(msg.len()).unwrap().to_be_bytes().to_vec();
    frame.extend(msg);
    let mut w = w.lock().await;
    let _ = w.write_all(&frame).await;
    let _ = w.flush().await;
}

/// Serves one connection in `mode`; `n` is its number (0 for the first).
async fn serve<S>(stream: S, mode: Mode, n: usize, seen: Arc<Seen>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let wr: Writer<S> = Arc::new(tokio::sync::Mutex::new(wr));
    let mut batch = Vec::new();
    let mut answered = 0usize;
    loop {
        let Some(q) = read_frame(&mut rd).await else {
            seen.client_closed.fetch_add(1, Ordering::SeqCst);
            return;
        };
        seen.queries.fetch_add(1, Ordering::SeqCst);
        match &mode {
            Mode::Echo => write_frame(&wr, &echo(&q)).await,
            Mode::Batch(k) => {
                batch.push(q);
                if batch.len() == *k {
                    for q in batch.drain(..).rev() {
                        write_frame(&wr, &echo(&q)).await;
                    }
                }
            }
            Mode::CloseFirst if n == 0 => return,
            Mode::CloseFirst => write_frame(&wr, &echo(&q)).await,
            Mode::CloseAlways => return,
            Mode::EchoOnceThenClose => {
                if answered == 1 {
                    return;
                }
                write_frame(&wr, &echo(&q)).await;
                answered += 1;
                let mut w = wr.lock().await;
                let _ = w.shutdown().await;
            }
            Mode::Hold(release) => {
                let (mut release, wr) = (release.clone(), Arc::clone(&wr));
                tokio::spawn(async move {
                    if release.wait_for(|go| *go).await.is_ok() {
                        write_frame(&wr, &echo(&q)).await;
                    }
                });
            }
            Mode::WrongIdFirst => {
                let mut wrong = echo(&q);
                wrong[1] ^= 1;
                write_frame(&wr, &wrong).await;
                write_frame(&wr, &echo(&q)).await;
            }
            Mode::StallAfter(k) => {
                if answered < *k {
                    write_frame(&wr, &echo(&q)).await;
                    answered += 1;
                }
            }
            Mode::SilentFirst if n == 0 => {}
            Mode::SilentFirst => write_frame(&wr, &echo(&q)).await,
            Mode::IgnoreFirst => {
                if answered > 0 {
                    write_frame(&wr, &echo(&q)).await;
                }
                answered += 1;
            }
        }
    }
}

/// A test CA and a server certificate for `dns.example.test` signed by it.
struct Pki {
    ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "nodedns test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["dns.example.test".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        server_chain: vec![cert.der().clone()],
        server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("nodedns-proxy-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tls_proxy(addr: SocketAddr, config: Arc<rustls::ClientConfig>, name: &str) -> Proxy {
    let mut cfg = ProxyConfig::new(addr);
    cfg.tls = Some(TlsSettings {
        config,
        server_name: ServerName::try_from(name.to_string()).unwrap(),
    });
    Proxy::new(cfg)
}

// === construction and input ===

#[test]
fn new_needs_no_runtime_and_is_send_sync() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let p = Proxy::new(config("127.0.0.1:53".parse().unwrap()));
    send_sync(&p);
    send(&p.exchange(&[], Proto::Udp, T));
    assert_eq!(p.stats(), ProxyStats::default());
    assert_eq!(p.addr(), "127.0.0.1:53".parse().unwrap());
}

#[tokio::test]
async fn malformed_queries_are_refused_before_sending() {
    let p = Proxy::new(config("127.0.0.1:9".parse().unwrap()));
    let q = query(1, "example.org.", TYPE_A);
    let mut no_question = q.clone();
    no_question[5] = 0;
    let mut two_questions = q.clone();
    two_questions[5] = 2;
    let mut too_long = q.clone();
    too_long.resize(MAX_MESSAGE + 1, 0);
    for bad in [
        &q[..5],
        &q[..q.len() - 1],
        &no_question[..],
        &two_questions[..],
        &too_long[..],
    ] {
        for proto in [Proto::Udp, Proto::Tcp] {
            let e = p.exchange(bad, proto, T).await.unwrap_err();
            assert!(matches!(e, ProxyError::Malformed), "{e:?}");
            assert!(!e.is_network());
        }
    }
    assert_eq!(p.stats().in_flight, 0);
}

#[test]
fn question_matching() {
    let q = query(7, "Www.Example.ORG.", TYPE_A);
    let question = Question::of_query(&q).unwrap();
    assert!(question.answered_by(&echo(&q)));
    // Case differs (0x20): still the same question.
    assert!(question.answered_by(&echo(&query(7, "WWW.example.org.", TYPE_A))));
    // Not a response, other type, other name, truncated.
    assert!(!question.answered_by(&q));
    assert!(!question.answered_by(&echo(&query(7, "www.example.org.", 28))));
    assert!(!question.answered_by(&with_name(&echo(&q), "www.example.net.")));
    let r = echo(&q);
    assert!(!question.answered_by(&r[..r.len() - 1]));
    assert!(!question.answered_by(&r[..12]));
    // No question: refused, whatever the rcode.
    let mut bare = r[..12].to_vec();
    bare[5] = 0;
    assert!(!question.answered_by(&bare));
    for rcode in [1, 2, 4, 5] {
        bare[3] = (bare[3] & 0xf0) | rcode;
        assert!(!question.answered_by(&bare), "rcode {rcode}");
    }
    // Two questions, the first the right one: refused too.
    let mut two = echo(&q);
    two[5] = 2;
    two.extend_from_slice(&q[12..]);
    assert!(!question.answered_by(&two));
}

// === UDP ===

#[tokio::test]
async fn udp_exchange_restores_the_client_id() {
    let wire_ids = Arc::new(Mutex::new(HashSet::new()));
    let ids = Arc::clone(&wire_ids);
    let (addr, _) = udp_server(move |q| {
        ids.lock().unwrap().insert(id_of(q));
        now(echo(q))
    })
    .await;
    let mut cfg = config(addr);
    cfg.udp_sockets = 1;
    let p = Proxy::new(cfg);
    for i in 0..20 {
        let x = p
            .exchange(&query(0xbeef, "Example.org.", TYPE_A), Proto::Udp, T)
            .await
            .unwrap();
        assert_eq!(id_of(&x.reply), 0xbeef);
        assert_eq!(qname_of(&x.reply), "Example.org.");
        assert_eq!(x.reused_conn, i > 0, "exchange {i}");
    }
    // The wire carried fresh random IDs, not the client's.
    assert!(wire_ids.lock().unwrap().len() > 1);
    assert_eq!(p.stats().in_flight, 0);
    assert_eq!(p.waiting(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_many_queries_on_few_sockets() {
    // Replies come back out of order: each after 0-19 ms.
    let (addr, peers) = udp_server(|q| {
        let delay = Duration::from_millis(u64::from(id_of(q) % 20));
        vec![(delay, echo(q))]
    })
    .await;
    let mut cfg = config(addr);
    cfg.udp_sockets = 2;
    let p = Arc::new(Proxy::new(cfg));
    let retries = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for i in 0..300u16 {
        let (p, retries) = (Arc::clone(&p), Arc::clone(&retries));
        set.spawn(async move {
            let name = format!("q{i}.example.org.");
            let q = query(i, &name, TYPE_A);
            // Loopback drops datagrams when a receive buffer overflows on a
            // loaded machine: ask again, as a client would.
            let mut tries = 0;
            let x = loop {
                match p.exchange(&q, Proto::Udp, Duration::from_secs(1)).await {
                    Ok(x) => break x,
                    Err(e) if e.is_timeout() && tries < 4 => {
                        tries += 1;
                        retries.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("{name}: {e}"),
                }
            };
            assert_eq!(id_of(&x.reply), i);
            assert_eq!(qname_of(&x.reply), name);
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert!(
        peers.lock().unwrap().len() <= 2,
        "one source port per socket"
    );
    let s = p.stats();
    assert_eq!((s.in_flight, s.open_streams), (0, 0));
    // Only a reply that came after its query gave up can miss.
    assert!(s.mismatched <= retries.load(Ordering::SeqCst) as u64);
    assert_eq!(p.waiting(), 0);
}

#[tokio::test]
async fn udp_replies_that_do_not_match_are_dropped() {
    let (addr, _) = udp_server(|q| {
        let right = echo(q);
        let mut wrong_id = right.clone();
        wrong_id[1] ^= 1;
        let wrong_question = with_name(&right, "zzz.example.org.");
        let not_a_response = q.to_vec();
        // The right one last, its name in other letter case.
        let right = with_name(&right, "WWW.EXAMPLE.ORG.");
        vec![
            (Duration::ZERO, wrong_id),
            (Duration::ZERO, wrong_question),
            (Duration::ZERO, not_a_response),
            (Duration::ZERO, right),
        ]
    })
    .await;
    let p = Proxy::new(config(addr));
    let x = p
        .exchange(&query(42, "www.example.org.", TYPE_A), Proto::Udp, T)
        .await
        .unwrap();
    assert_eq!(id_of(&x.reply), 42);
    assert_eq!(qname_of(&x.reply), "WWW.EXAMPLE.ORG.");
    assert_eq!(p.stats().mismatched, 3);
}

#[tokio::test]
async fn udp_reply_without_question_is_dropped() {
    // An error reply with the right ID but no question, then the real one.
    let (addr, _) = udp_server(|q| {
        let mut bare = echo(&q[..12]);
        bare[5] = 0; // no question
        bare[3] |= 2; // SERVFAIL
        vec![(Duration::ZERO, bare), (Duration::from_millis(20), echo(q))]
    })
    .await;
    let p = Proxy::new(config(addr));
    let x = p
        .exchange(&query(9, "example.org.", TYPE_A), Proto::Udp, T)
        .await
        .unwrap();
    assert_eq!(x.reply[3] & 0x0f, 0, "the reply with the question");
    assert_eq!(qname_of(&x.reply), "example.org.");
    assert_eq!(p.stats().mismatched, 1);
}

#[tokio::test]
async fn udp_an_icmp_error_does_not_fail_the_queries_waiting() {
    // The upstream reads a query and closes; the next query draws an ICMP
    // port unreachable, which the shared socket reports as ECONNREFUSED.
    // The first query still takes the reply that comes later from the
    // same address: the error fails no one.
    let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = up.local_addr().unwrap();
    let p = Arc::new(Proxy::new(config(addr)));
    let first = {
        let p = Arc::clone(&p);
        tokio::spawn(async move {
            p.exchange(&query(1, "first.example.org.", TYPE_A), Proto::Udp, T)
                .await
        })
    };
    let mut buf = vec![0u8; 512];
    let (n, client) = tokio::time::timeout(WAIT, up.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let q1 = buf[..n].to_vec();
    drop(up);
    // Queries to the closed port draw ICMP errors; the socket reports one
    // on a later send or receive. Each such query times out (it is not
    // failed by the error, nor is the one whose send reports it).
    let mut probes = 0u16;
    let start = Instant::now();
    while p.stats().unreachable == 0 {
        assert!(start.elapsed() < WAIT, "no ICMP error reported");
        probes += 1;
        let e = p
            .exchange(
                &query(probes, "probe.example.org.", TYPE_A),
                Proto::Udp,
                Duration::from_millis(50),
            )
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "probe {probes}: {e:?}");
    }
    assert!(!first.is_finished(), "the first query still waits");
    let up = UdpSocket::bind(addr).await.unwrap();
    up.send_to(&echo(&q1), client).await.unwrap();
    let x = first.await.unwrap().unwrap();
    assert_eq!(qname_of(&x.reply), "first.example.org.");
    assert_eq!(p.waiting(), 0);
}

#[tokio::test]
async fn udp_source_ports_rotate_and_old_sockets_serve_their_queries_out() {
    let up = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = up.local_addr().unwrap();
    let mut cfg = config(addr);
    cfg.expire = Duration::from_millis(100); // rotation: at least 1 s
    let p = Arc::new(Proxy::new(cfg));
    let t0 = Instant::now();
    let first = {
        let p = Arc::clone(&p);
        tokio::spawn(async move {
            p.exchange(&query(1, "first.example.org.", TYPE_A), Proto::Udp, T)
                .await
        })
    };
    let mut buf = vec![0u8; 512];
    let (n, old_port) = tokio::time::timeout(WAIT, up.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let q1 = buf[..n].to_vec();
    // Queries go on; after a second they come from another port.
    let start = Instant::now();
    let mut probes = 0u16;
    loop {
        assert!(start.elapsed() < WAIT, "the source port never changed");
        probes += 1;
        let probe = {
            let p = Arc::clone(&p);
            tokio::spawn(async move {
                p.exchange(&query(probes, "probe.example.org.", TYPE_A), Proto::Udp, T)
                    .await
            })
        };
        let (n, from) = tokio::time::timeout(WAIT, up.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        up.send_to(&echo(&buf[..n]), from).await.unwrap();
        probe.await.unwrap().unwrap();
        if from != old_port {
            break;
        }
        // Bounded by the deadline above; not a busy loop.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "not before a second"
    );
    assert_eq!(
        p.stats().udp_sockets,
        2,
        "the old socket still serves a query"
    );
    // The query on the old socket still gets its reply there.
    up.send_to(&echo(&q1), old_port).await.unwrap();
    let x = first.await.unwrap().unwrap();
    assert_eq!(qname_of(&x.reply), "first.example.org.");
    wait_until("the old socket to close once its queries are done", || {
        p.stats().udp_sockets == 1
    })
    .await;
    assert_eq!(p.waiting(), 0);
}

#[tokio::test]
async fn udp_timeout_leaves_no_waiter() {
    let (addr, _) = udp_server(|_| Vec::new()).await;
    let p = Proxy::new(config(addr));
    let q = query(1, "example.org.", TYPE_A);
    let e = p
        .exchange(&q, Proto::Udp, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(e.is_timeout() && e.is_network(), "{e:?}");
    assert_eq!(p.stats().in_flight, 0);
    assert_eq!(p.waiting(), 0);
}

#[tokio::test]
async fn udp_to_a_closed_port_fails_without_panic() {
    let addr = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let p = Proxy::new(config(addr));
    let q = query(1, "example.org.", TYPE_A);
    // The ICMP port unreachable usually makes it fail at once; when it is
    // rate limited, the timeout does.
    let e = p
        .exchange(&q, Proto::Udp, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(e.is_network(), "{e:?}");
    // The socket still works for the next query.
    let e = p
        .exchange(&q, Proto::Udp, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(e.is_network(), "{e:?}");
    assert_eq!(p.waiting(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_past_max_in_flight() {
    let (addr, _) = udp_server(|_| Vec::new()).await;
    let mut cfg = config(addr);
    cfg.max_in_flight = 2;
    let p = Arc::new(Proxy::new(cfg));
    let mut stuck = JoinSet::new();
    for i in 0..2 {
        let p = Arc::clone(&p);
        stuck.spawn(async move {
            let _ = p
                .exchange(&query(i, "example.org.", TYPE_A), Proto::Udp, WAIT * 2)
                .await;
        });
    }
    wait_until("two queries in flight", || p.stats().in_flight == 2).await;
    let started = Instant::now();
    let e = p
        .exchange(&query(3, "example.org.", TYPE_A), Proto::Udp, T)
        .await
        .unwrap_err();
    assert!(e.is_busy() && !e.is_network(), "{e:?}");
    assert!(started.elapsed() < T, "Busy comes at once");
    stuck.abort_all();
    wait_until("the stuck queries to leave", || {
        p.stats().in_flight == 0 && p.waiting() == 0
    })
    .await;
}

#[tokio::test]
async fn dropping_the_proxy_ends_its_udp_tasks() {
    let (addr, peers) = udp_server(|q| now(echo(q))).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let mut cfg = config(addr);
    cfg.udp_sockets = 3;
    let p = Proxy::new(cfg);
    for i in 0..3 {
        p.exchange(&query(i, "example.org.", TYPE_A), Proto::Udp, T)
            .await
            .unwrap();
    }
    // One thread keeps to one socket: its replies come back together.
    assert_eq!(peers.lock().unwrap().len(), 1, "one socket for this thread");
    assert_eq!(
        metrics.num_alive_tasks(),
        before + 1,
        "one reader per socket"
    );
    drop(p);
    wait_until("the readers to end", || metrics.num_alive_tasks() == before).await;
}

/// A thread with a runtime of its own, as a server thread has: it makes
/// one exchange (so the socket or connection it opens is read by its
/// runtime), then keeps the runtime running until [`ServerThread::end`],
/// which ends the runtime with the thread.
struct ServerThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    fn start(p: &Arc<Proxy>, q: Vec<u8>, proto: Proto) -> Self {
        let p = Arc::clone(p);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done, first) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let r = p.exchange(&q, proto, T).await.map(drop);
                done.send(r).unwrap();
                let _ = stopped.await;
            });
        });
        first
            .recv_timeout(WAIT)
            .expect("the first exchange ends")
            .expect("the first exchange is answered");
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Ends the thread and its runtime, with every task on it.
    fn end(mut self) {
        drop(self.stop.take());
        self.thread.take().unwrap().join().unwrap();
    }
}

/// A query waiting on a UDP socket whose reader stopped (the runtime that
/// opened the socket and ran its reader ended, as a server thread's does
/// when a reload removes its listener, while the pool lives on): the
/// socket is dead at once, and the query is sent again on a fresh socket,
/// read on the asking runtime, and answered, well within its timeout.
#[test]
fn a_query_on_a_socket_whose_reader_stopped_is_sent_again_at_once_on_a_fresh_socket() {
    // Multi-threaded, so the fake upstream keeps serving while the opener
    // runs.
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Answers "open." at once, "wait." only the second time it is asked.
    let asked = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&asked);
    let (addr, peers) = main.block_on(udp_server(move |q| {
        if qname_of(q) == "open." || seen.fetch_add(1, Ordering::SeqCst) > 0 {
            now(echo(q))
        } else {
            Vec::new()
        }
    }));
    let mut cfg = config(addr);
    cfg.udp_sockets = 1;
    let p = Arc::new(Proxy::new(cfg));
    // One socket for every thread; its reader runs on the runtime of the
    // thread that opened it.
    let opener = ServerThread::start(&p, query(1, "open.", TYPE_A), Proto::Udp);
    let waiting = {
        let p = Arc::clone(&p);
        main.spawn(async move {
            p.exchange(
                &query(2, "wait.", TYPE_A),
                Proto::Udp,
                Duration::from_secs(30),
            )
            .await
        })
    };
    main.block_on(wait_until("the query to wait on the shared socket", || {
        p.waiting() == 1
    }));
    assert_eq!(p.stats().udp_sockets, 1);
    // The opener's runtime ends: so does the socket's reader.
    opener.end();
    main.block_on(async {
        let x = tokio::time::timeout(T, waiting)
            .await
            .expect("answered at once, not at its 30 s timeout")
            .unwrap()
            .expect("sent again on a fresh socket, and answered");
        assert_eq!(id_of(&x.reply), 2, "the client's ID");
        assert!(!x.reused_conn, "a socket opened for it");
        assert_eq!(asked.load(Ordering::SeqCst), 2, "asked twice");
        assert_eq!(peers.lock().unwrap().len(), 2, "from two source ports");
        // The dead socket takes no new query: the fresh one, read on this
        // runtime, is the one open, and serves on.
        assert_eq!(p.stats().udp_sockets, 1);
        let again = p
            .exchange(&query(3, "open.", TYPE_A), Proto::Udp, T)
            .await
            .unwrap();
        assert!(again.reused_conn, "the fresh socket serves on");
        assert_eq!(peers.lock().unwrap().len(), 2);
        assert_eq!(p.waiting(), 0);
    });
}

#[test]
fn a_stopped_reader_is_not_the_upstreams_fault() {
    assert!(!ProxyError::Stopped.is_network());
    assert!(!ProxyError::Stopped.is_timeout());
}

/// A stream connection whose task ran on a runtime that ended: the
/// queries on it are sent again at once on a fresh connection (made on
/// the asking runtime), not failed as the upstream's fault, nor left to
/// time out.
#[test]
fn a_query_on_a_connection_whose_runtime_ended_is_sent_again_on_a_fresh_one() {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // Each connection answers its first query, then reads on without
    // answering.
    let (addr, seen) = main.block_on(tcp_server(Mode::StallAfter(1)));
    let p = Arc::new(Proxy::new(config(addr)));
    let opener = ServerThread::start(&p, query(1, "open.", TYPE_A), Proto::Tcp);
    let waiting = {
        let p = Arc::clone(&p);
        main.spawn(async move {
            p.exchange(
                &query(2, "wait.", TYPE_A),
                Proto::Tcp,
                Duration::from_secs(30),
            )
            .await
        })
    };
    main.block_on(wait_until(
        "the query to wait on the pooled connection",
        || p.waiting() == 1 && seen.queries.load(Ordering::SeqCst) == 2,
    ));
    // The runtime that ran the connection's task ends.
    opener.end();
    main.block_on(async {
        let x = tokio::time::timeout(T, waiting)
            .await
            .expect("answered at once, not at its 30 s timeout")
            .unwrap()
            .expect("sent again on a fresh connection, and answered");
        assert_eq!(id_of(&x.reply), 2);
        assert_eq!(seen.accepted(), 2, "a fresh connection");
        wait_until("the old connection to leave the pool", || {
            p.stats().open_streams == 1
        })
        .await;
        assert_eq!(p.waiting(), 0);
    });
}

#[tokio::test]
async fn a_udp_reply_too_long_to_read_whole_comes_back_truncated() {
    // 5000 bytes: longer than a batch's slot for one reply.
    let (addr, _) = udp_server(|q| {
        let mut r = echo(q);
        r[7] = 1; // ANCOUNT: the record is what the kernel cuts
        r.resize(5000, 0);
        now(r)
    })
    .await;
    let p = Proxy::new(config(addr));
    let q = query(7, "long.example.org.", TYPE_A);
    let x = p.exchange(&q, Proto::Udp, T).await.unwrap();
    // The header with TC and no records, and the question: what a server
    // sends when the answer does not fit, so the forward plugin asks again
    // over TCP.
    assert_eq!(x.reply.len(), q.len());
    assert_eq!(id_of(&x.reply), 7);
    assert_eq!(qname_of(&x.reply), "long.example.org.");
    assert_ne!(x.reply[2] & 0x02, 0, "TC set");
    assert_eq!(&x.reply[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
}

// === TCP ===

#[tokio::test]
async fn tcp_reuses_its_connection() {
    let (addr, seen) = tcp_server(Mode::Echo).await;
    let p = Proxy::new(config(addr));
    let q = query(0x1234, "Example.org.", TYPE_A);
    let first = p.exchange(&q, Proto::Tcp, T).await.unwrap();
    let second = p.exchange(&q, Proto::Tcp, T).await.unwrap();
    assert!(!first.reused_conn);
    assert!(second.reused_conn);
    assert_eq!(id_of(&second.reply), 0x1234);
    assert_eq!(qname_of(&second.reply), "Example.org.");
    assert_eq!(seen.accepted(), 1);
    let s = p.stats();
    assert_eq!((s.open_streams, s.streams_opened, s.in_flight), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_pipelines_and_matches_out_of_order_replies() {
    let n = STREAM_PIPELINE_SOFT;
    let (addr, seen) = tcp_server(Mode::Batch(n)).await;
    let p = Arc::new(Proxy::new(config(addr)));
    for round in 0..2 {
        let mut set = JoinSet::new();
        for i in 0..n {
            let p = Arc::clone(&p);
            set.spawn(async move {
                let id = u16::try_from(round * 100 + i).unwrap();
                let name = format!("q{i}.example.org.");
                let x = p
                    .exchange(&query(id, &name, TYPE_A), Proto::Tcp, T)
                    .await
                    .unwrap();
                assert_eq!(id_of(&x.reply), id);
                assert_eq!(qname_of(&x.reply), name);
                x.reused_conn
            });
        }
        let mut reused = 0;
        while let Some(r) = set.join_next().await {
            reused += usize::from(r.unwrap());
        }
        // All but the query that opened the connection rode a pooled one.
        assert_eq!(reused, if round == 0 { n - 1 } else { n });
    }
    assert_eq!(seen.accepted(), 1, "one connection carried them all");
    assert_eq!(p.stats().streams_opened, 1);
    assert_eq!(p.waiting(), 0);
}

#[tokio::test]
async fn tcp_drops_a_reply_with_a_wrong_id() {
    let (addr, _) = tcp_server(Mode::WrongIdFirst).await;
    let p = Proxy::new(config(addr));
    let x = p
        .exchange(&query(5, "example.org.", TYPE_A), Proto::Tcp, T)
        .await
        .unwrap();
    assert_eq!(id_of(&x.reply), 5);
    assert_eq!(p.stats().mismatched, 1);
}

#[tokio::test]
async fn tcp_a_silent_connection_is_retired_and_replaced() {
    let (addr, seen) = tcp_server(Mode::StallAfter(2)).await;
    let p = Proxy::new(config(addr));
    let q = query(1, "example.org.", TYPE_A);
    for _ in 0..2 {
        p.exchange(&q, Proto::Tcp, T).await.unwrap();
    }
    // The connection goes silent: the query times out and the connection,
    // which read nothing meanwhile, is retired and closed.
    let e = p
        .exchange(&q, Proto::Tcp, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert_eq!(p.stats().streams_retired, 1);
    wait_until("the server to see the silent connection close", || {
        seen.client_closed() == 1
    })
    .await;
    // The next query (a health check as much as a client's) opens a fresh
    // one rather than waiting on the silent one.
    let x = p.exchange(&q, Proto::Tcp, T).await.unwrap();
    assert!(!x.reused_conn);
    assert_eq!(seen.accepted(), 2);
    let s = p.stats();
    assert_eq!((s.open_streams, s.streams_opened, s.in_flight), (1, 2, 0));
    assert_eq!(p.waiting(), 0);
}

#[tokio::test]
async fn tcp_queries_on_a_retired_connection_move_to_a_fresh_one() {
    // The first connection answers nothing; queries waiting on it when it
    // is retired are sent again on a fresh connection, which answers.
    let (addr, seen) = tcp_server(Mode::SilentFirst).await;
    let p = Arc::new(Proxy::new(config(addr)));
    let q = query(1, "example.org.", TYPE_A);
    let waiting = {
        let p = Arc::clone(&p);
        let q = query(2, "other.example.org.", TYPE_A);
        tokio::spawn(async move { p.exchange(&q, Proto::Tcp, T).await })
    };
    wait_until("the server to see the waiting query", || {
        seen.queries.load(Ordering::SeqCst) == 1
    })
    .await;
    let e = p
        .exchange(&q, Proto::Tcp, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert_eq!(p.stats().streams_retired, 1);
    let x = waiting.await.unwrap().unwrap();
    assert_eq!(qname_of(&x.reply), "other.example.org.");
    assert_eq!(seen.accepted(), 2, "retried on a fresh connection");
    assert_eq!(p.waiting(), 0);
}

#[tokio::test]
async fn tcp_a_timeout_while_other_replies_come_keeps_the_connection() {
    let (addr, seen) = tcp_server(Mode::IgnoreFirst).await;
    let p = Arc::new(Proxy::new(config(addr)));
    let ignored = {
        let p = Arc::clone(&p);
        let q = query(1, "ignored.example.org.", TYPE_A);
        tokio::spawn(async move { p.exchange(&q, Proto::Tcp, Duration::from_millis(300)).await })
    };
    wait_until("the server to see the ignored query", || {
        seen.queries.load(Ordering::SeqCst) == 1
    })
    .await;
    let x = p
        .exchange(&query(2, "ok.example.org.", TYPE_A), Proto::Tcp, T)
        .await
        .unwrap();
    assert!(x.reused_conn);
    let e = ignored.await.unwrap().unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    // The connection answered meanwhile: it stays.
    assert_eq!(p.stats().streams_retired, 0);
    let x = p
        .exchange(&query(3, "ok.example.org.", TYPE_A), Proto::Tcp, T)
        .await
        .unwrap();
    assert!(x.reused_conn);
    assert_eq!(seen.accepted(), 1);
}

#[tokio::test]
async fn tcp_a_cancelled_query_does_not_retire_the_connection() {
    let (release, hold) = watch::channel(false);
    let (addr, seen) = tcp_server(Mode::Hold(hold)).await;
    let p = Proxy::new(config(addr));
    let q = query(1, "example.org.", TYPE_A);
    // Dropped before its own deadline (as when another upstream answers
    // first): that says nothing about the connection.
    let cancelled =
        tokio::time::timeout(Duration::from_millis(100), p.exchange(&q, Proto::Tcp, T)).await;
    assert!(cancelled.is_err());
    assert_eq!(p.stats().streams_retired, 0);
    release.send(true).unwrap();
    let x = p.exchange(&q, Proto::Tcp, T).await.unwrap();
    assert!(x.reused_conn);
    assert_eq!(seen.accepted(), 1);
}

#[tokio::test]
async fn tcp_idle_connections_close_after_expire() {
    let (addr, seen) = tcp_server(Mode::Echo).await;
    let mut cfg = config(addr);
    cfg.expire = Duration::from_millis(100);
    let p = Proxy::new(cfg);
    let q = query(1, "example.org.", TYPE_A);
    p.exchange(&q, Proto::Tcp, T).await.unwrap();
    wait_until("the server to see the idle connection close", || {
        seen.client_closed() == 1
    })
    .await;
    assert_eq!(p.stats().open_streams, 0);
    let x = p.exchange(&q, Proto::Tcp, T).await.unwrap();
    assert!(!x.reused_conn);
    assert_eq!(seen.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_idle_connections_beyond_max_idle_close() {
    let (release, held) = watch::channel(false);
    let (addr, seen) = tcp_server(Mode::Hold(held)).await;
    let mut cfg = config(addr);
    cfg.max_idle_conns = 1;
    let p = Arc::new(Proxy::new(cfg));
    let n = 3 * STREAM_PIPELINE_SOFT;
    let mut set = JoinSet::new();
    for i in 0..n {
        let p = Arc::clone(&p);
        set.spawn(async move {
            let id = u16::try_from(i).unwrap();
            p.exchange(&query(id, "example.org.", TYPE_A), Proto::Tcp, T)
                .await
                .unwrap();
        });
    }
    wait_until("every query to reach the server", || {
        seen.queries.load(Ordering::SeqCst) == n
    })
    .await;
    let opened = seen.accepted();
    assert!(opened >= 2, "busy connections spread: {opened}");
    release.send(true).unwrap();
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    wait_until("all idle connections but one to close", || {
        seen.client_closed() == opened - 1
    })
    .await;
    assert_eq!(p.stats().open_streams, 1);
}

#[tokio::test]
async fn tcp_broken_connection_is_retried_once_on_a_fresh_one() {
    let (addr, seen) = tcp_server(Mode::CloseFirst).await;
    let p = Proxy::new(config(addr));
    let x = p
        .exchange(&query(3, "example.org.", TYPE_A), Proto::Tcp, T)
        .await
        .unwrap();
    assert_eq!(id_of(&x.reply), 3);
    assert!(!x.reused_conn);
    assert_eq!(seen.accepted(), 2);
}

#[tokio::test]
async fn tcp_retries_only_once() {
    let (addr, seen) = tcp_server(Mode::CloseAlways).await;
    let p = Proxy::new(config(addr));
    let e = p
        .exchange(&query(3, "example.org.", TYPE_A), Proto::Tcp, T)
        .await
        .unwrap_err();
    assert!(e.is_network() && !e.is_timeout(), "{e:?}");
    assert_eq!(seen.accepted(), 2);
    assert_eq!(p.waiting(), 0);
}

#[tokio::test]
async fn tcp_pooled_connection_closed_by_the_server_is_replaced() {
    let (addr, seen) = tcp_server(Mode::EchoOnceThenClose).await;
    let p = Proxy::new(config(addr));
    for i in 0..3 {
        let x = p
            .exchange(&query(i, "example.org.", TYPE_A), Proto::Tcp, T)
            .await
            .unwrap();
        assert_eq!(id_of(&x.reply), i);
    }
    assert_eq!(seen.accepted(), 3);
}

#[tokio::test]
async fn tcp_connection_refused_is_an_io_error() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = Proxy::new(config(addr));
    let e = p
        .exchange(&query(1, "example.org.", TYPE_A), Proto::Tcp, T)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ProxyError::Io(io) if io.kind() == io::ErrorKind::ConnectionRefused),
        "{e:?}"
    );
    assert!(e.is_network());
    assert_eq!(p.stats().open_streams, 0);
}

#[tokio::test]
async fn tcp_timeout_leaves_no_waiter_and_the_connection_idles_out() {
    let (release, held) = watch::channel(false);
    let (addr, seen) = tcp_server(Mode::Hold(held)).await;
    let mut cfg = config(addr);
    cfg.expire = Duration::from_millis(100);
    let p = Proxy::new(cfg);
    let e = p
        .exchange(
            &query(1, "example.org.", TYPE_A),
            Proto::Tcp,
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert_eq!(p.stats().in_flight, 0);
    assert_eq!(p.waiting(), 0);
    // The late reply (if it comes before the close) is dropped; the
    // connection, idle, closes.
    release.send(true).unwrap();
    wait_until("the idle connection to close", || seen.client_closed() == 1).await;
    assert_eq!(p.stats().open_streams, 0);
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections() {
    let (addr, seen) = tcp_server(Mode::Echo).await;
    let p = Proxy::new(config(addr));
    p.exchange(&query(1, "example.org.", TYPE_A), Proto::Tcp, T)
        .await
        .unwrap();
    assert_eq!(seen.client_closed(), 0);
    drop(p);
    wait_until("the server to see the connection close", || {
        seen.client_closed() == 1
    })
    .await;
}

// === TLS ===

#[tokio::test]
async fn tls_exchange_with_the_test_ca() {
    let pki = pki();
    let (addr, seen) = tls_server(Mode::Echo, &pki).await;
    let ca = TempFile::new("ca.pem", &pki.ca_pem);
    let tls = tls_client_config(Some(ca.path()), None).unwrap();
    let p = tls_proxy(addr, tls, "dns.example.test");
    // TLS is used whatever the protocol asked.
    let first = p
        .exchange(&query(0xabcd, "example.org.", TYPE_A), Proto::Udp, T)
        .await
        .unwrap();
    let second = p
        .exchange(&query(0xabce, "example.org.", TYPE_A), Proto::Tcp, T)
        .await
        .unwrap();
    assert_eq!(id_of(&first.reply), 0xabcd);
    assert_eq!(id_of(&second.reply), 0xabce);
    assert!(!first.reused_conn && second.reused_conn);
    assert_eq!(seen.accepted(), 1);
    drop(p);
    wait_until("close_notify and FIN to reach the server", || {
        seen.client_closed() == 1
    })
    .await;
}

#[tokio::test]
async fn tls_with_system_roots_refuses_the_test_certificate() {
    let pki = pki();
    let (addr, _) = tls_server(Mode::Echo, &pki).await;
    let tls = match tls_client_config(None, None) {
        Ok(tls) => tls,
        // A machine without roots: the error says so, nothing to connect with.
        Err(TlsConfigError::NoSystemRoots) => return,
        Err(e) => panic!("{e}"),
    };
    let p = tls_proxy(addr, tls, "dns.example.test");
    let e = p
        .exchange(&query(1, "example.org.", TYPE_A), Proto::Tcp, T)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProxyError::Tls(rustls::Error::InvalidCertificate(_))),
        "{e:?}"
    );
    assert!(e.is_network());
    assert_eq!(p.stats().open_streams, 0);
}

#[tokio::test]
async fn tls_server_name_mismatch_fails() {
    let pki = pki();
    let (addr, _) = tls_server(Mode::Echo, &pki).await;
    let ca = TempFile::new("ca.pem", &pki.ca_pem);
    let tls = tls_client_config(Some(ca.path()), None).unwrap();
    let p = tls_proxy(addr, tls, "other.example.test");
    let e = p
        .exchange(&query(1, "example.org.", TYPE_A), Proto::Tcp, T)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ProxyError::Tls(rustls::Error::InvalidCertificate(_))),
        "{e:?}"
    );
}

#[test]
fn tls_config_errors_name_the_file() {
    let missing = Path::new("/nonexistent/nodedns/ca.pem");
    let e = tls_client_config(Some(missing), None).unwrap_err();
    assert!(matches!(e, TlsConfigError::CaFile { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/nodedns/ca.pem"), "{e}");

    let empty = TempFile::new("empty.pem", "no certificates here\n");
    let e = tls_client_config(Some(empty.path()), None).unwrap_err();
    assert!(matches!(e, TlsConfigError::NoCa { .. }), "{e:?}");

    let pki = pki();
    let ca = TempFile::new("ca.pem", &pki.ca_pem);
    let e = tls_client_config(Some(ca.path()), Some((empty.path(), empty.path()))).unwrap_err();
    assert!(matches!(e, TlsConfigError::NoCert { .. }), "{e:?}");
}

#[test]
fn tls_config_takes_a_client_certificate() {
    let pki = pki();
    let ca = TempFile::new("ca.pem", &pki.ca_pem);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["client.example.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_file = TempFile::new("client.pem", &cert.pem());
    let key_file = TempFile::new("client.key", &key.serialize_pem());
    let cfg = tls_client_config(Some(ca.path()), Some((cert_file.path(), key_file.path())));
    assert!(cfg.unwrap().client_auth_cert_resolver.has_certs());
}
