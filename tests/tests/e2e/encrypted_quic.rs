//! The QUIC listeners (`quic://` DoQ, `https3://` DoH3), end to end with a
//! test CA: a query through the whole chain (cache miss, then hit), what
//! a broken client gets, the connection and stream limits, a certificate
//! replaced on disk, and dnspython's clients when installed.

use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use nodedns_tests::client::a_of;
use nodedns_tests::client::query;
use nodedns_tests::quic_client::{DoqOutcome, H3Conn, connect, doq_frame, doq_query, doq_stream};
use nodedns_tests::secure_client::{TestCa, certs};
use nodedns_tests::{Agent, FakeUpstream, wait_until};

async fn upstream() -> FakeUpstream {
    FakeUpstream::builder()
        .ttl(300)
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await
}

/// An agent serving `scheme://` on a free loopback port with the CA's
/// server certificate, caching in front of `up`.
async fn quic_agent(ca: &TestCa, scheme: &str, up: &FakeUpstream, args: &[&str]) -> Agent {
    let (cert, key) = ca.server();
    let mut b = Agent::corefile(format!(
        "{scheme}://.:0 {{\n    bind 127.0.0.1\n    tls cert.pem key.pem\n    cache 30\n    forward . {up}\n}}\n"
    ))
    .file("cert.pem", cert)
    .file("key.pem", key)
    .file("ca.pem", ca.pem());
    for a in args {
        b = b.arg(*a);
    }
    b.start().await
}

const DOQ_PROTOCOL_ERROR: u64 = 0x2;
const DOQ_REQUEST_CANCELLED: u64 = 0x3;

#[tokio::test]
async fn doq_answers_through_the_chain_then_from_the_cache() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = quic_agent(&ca, "quic", &up, &[]).await;
    let c = connect(agent.listener("quic"), &ca.client_config(&[b"doq"], None))
        .await
        .unwrap();
    let q = query("www.example.org.", RecordType::A);
    for _ in 0..2 {
        let m = doq_query(&c.conn, &q).await.unwrap();
        assert_eq!(a_of(&m), vec!["192.0.2.1"]);
        assert_eq!(m.metadata.id, 0, "RFC 9250 §4.2.1: the reply's ID is 0");
    }
    assert_eq!(
        up.count("www.example.org.", RecordType::A),
        1,
        "the second was a hit"
    );
    // DoQ is `udp` to plugins (CoreDNS's state.Proto()): forward asked over UDP.
    assert!(up.udp_queries() > 0);
    // Several streams at once on one connection.
    let (a, b, d) = tokio::join!(
        doq_query(&c.conn, &q),
        doq_query(&c.conn, &q),
        doq_query(&c.conn, &q)
    );
    for m in [a, b, d] {
        assert_eq!(a_of(&m.unwrap()), vec!["192.0.2.1"]);
    }
}

#[tokio::test]
async fn doq_malformed_streams_get_the_rfc_9250_errors() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = quic_agent(&ca, "quic", &up, &["--tcp-idle-timeout", "1s"]).await;
    let addr = agent.listener("quic");
    let config = ca.client_config(&[b"doq"], None);
    let q = query("www.example.org.", RecordType::A);
    // A non-zero message ID: the connection closes with DOQ_PROTOCOL_ERROR.
    let c = connect(addr, &config).await.unwrap();
    let mut wire = doq_frame(&q);
    wire[2..4].copy_from_slice(&[0x12, 0x34]);
    match doq_stream(&c.conn, &wire).await {
        DoqOutcome::Closed(code) => assert_eq!(code, DOQ_PROTOCOL_ERROR),
        o => panic!("non-zero ID: {o:?}"),
    }
    // A stream that ends inside its message, one with bytes past it, and
    // one too short for a DNS header: the same.
    let framed = doq_frame(&q);
    let cases: [(&str, Vec<u8>); 3] = [
        ("short", framed[..framed.len() - 3].to_vec()),
        ("trailing", [framed.clone(), vec![0, 0]].concat()),
        ("no header", vec![0, 3, 0, 0, 0]),
    ];
    for (what, bytes) in cases {
        let c = connect(addr, &config).await.unwrap();
        match doq_stream(&c.conn, &bytes).await {
            DoqOutcome::Closed(code) => assert_eq!(code, DOQ_PROTOCOL_ERROR, "{what}"),
            o => panic!("{what}: {o:?}"),
        }
    }
    // A header with a broken question: FORMERR, as on every transport.
    let c = connect(addr, &config).await.unwrap();
    let mut bad = q.clone();
    bad.metadata.id = 0;
    let mut bad = bad.to_vec().unwrap();
    bad.truncate(16);
    let mut framed = u16::try_from(bad.len()).unwrap().to_be_bytes().to_vec();
    framed.extend_from_slice(&bad);
    match doq_stream(&c.conn, &framed).await {
        DoqOutcome::Data(d) => {
            let m = Message::from_vec(&d[2..]).unwrap();
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        }
        o => panic!("formerr: {o:?}"),
    }
    // A query that never arrives: its stream is cancelled after the idle
    // timeout; the connection stays usable.
    let (mut send, mut recv) = c.conn.open_bi().await.unwrap();
    send.write_all(&[0]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(100))
        .await
        .expect("the stalled stream was not cancelled");
    match got {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(code.into_inner(), DOQ_REQUEST_CANCELLED);
        }
        o => panic!("stalled: {o:?}"),
    }
    assert!(doq_query(&c.conn, &q).await.is_some());
    // The agent still answers new connections.
    let c = connect(addr, &config).await.unwrap();
    assert!(doq_query(&c.conn, &q).await.is_some());
}

#[tokio::test]
async fn doq_limits_connections_and_streams() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = quic_agent(
        &ca,
        "quic",
        &up,
        &["--max-tcp-conns", "2", "--max-http-streams", "2"],
    )
    .await;
    let addr = agent.listener("quic");
    let config = ca.client_config(&[b"doq"], None);
    let q = query("www.example.org.", RecordType::A);
    let a = connect(addr, &config).await.unwrap();
    let b = connect(addr, &config).await.unwrap();
    assert!(doq_query(&a.conn, &q).await.is_some());
    assert!(doq_query(&b.conn, &q).await.is_some());
    // A third connection is refused at the QUIC layer.
    match connect(addr, &config).await {
        Err(quinn::ConnectionError::ConnectionClosed(c)) => {
            assert_eq!(c.error_code, quinn::TransportErrorCode::CONNECTION_REFUSED);
        }
        Err(e) => panic!("third connection: {e}"),
        Ok(_) => panic!("a third connection was accepted"),
    }
    // Two streams at once: the client gets no credit for a third until
    // one ends.
    let (mut s1, mut r1) = a.conn.open_bi().await.unwrap();
    let (_s2, _r2) = a.conn.open_bi().await.unwrap();
    {
        use futures::FutureExt as _;
        assert!(
            a.conn.open_bi().now_or_never().is_none(),
            "a third stream was allowed"
        );
    }
    s1.write_all(&doq_frame(&q)).await.unwrap();
    s1.finish().unwrap();
    assert!(r1.read_to_end(1000).await.is_ok());
    let third = tokio::time::timeout(Duration::from_secs(5), a.conn.open_bi()).await;
    assert!(matches!(third, Ok(Ok(_))), "no credit once a stream ended");
    // Once a connection closes, a new one is served.
    drop(b);
    let ok = wait_until(Duration::from_secs(10), || async {
        match connect(addr, &config).await {
            Ok(c) => doq_query(&c.conn, &q).await.is_some(),
            Err(_) => false,
        }
    })
    .await;
    assert!(ok, "served again once a connection closed");
}

/// The certificate the agent presents on a new QUIC connection.
async fn served_cert(addr: std::net::SocketAddr, ca: &TestCa, alpn: &[u8]) -> Option<Vec<u8>> {
    let c = connect(addr, &ca.client_config(&[alpn], None)).await.ok()?;
    let id = c.conn.peer_identity()?;
    let chain = id
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    Some(chain.first()?.as_ref().to_vec())
}

#[tokio::test]
async fn quic_listeners_serve_a_replaced_certificate_without_a_restart() {
    for (scheme, alpn) in [("quic", b"doq".as_slice()), ("https3", b"h3")] {
        let ca = TestCa::new();
        let up = upstream().await;
        let agent = quic_agent(&ca, scheme, &up, &[]).await;
        let addr = agent.listener(scheme);
        let first = served_cert(addr, &ca, alpn).await.unwrap();
        let (cert, key) = ca.server();
        let want = certs(&cert)[0].as_ref().to_vec();
        assert_ne!(first, want);
        for (name, text) in [("key.pem", &key), ("cert.pem", &cert)] {
            let tmp = agent.path(&format!("{name}.new"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, agent.path(name)).unwrap();
        }
        let renewed = wait_until(Duration::from_secs(10), || async {
            served_cert(addr, &ca, alpn).await.as_deref() == Some(want.as_slice())
        })
        .await;
        assert!(renewed, "{scheme}: the new certificate was not served");
    }
}

#[tokio::test]
async fn doh3_get_and_post_through_the_chain() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = quic_agent(&ca, "https3", &up, &[]).await;
    let h3 = H3Conn::connect(agent.listener("https3"), &ca.client_config(&[b"h3"], None))
        .await
        .unwrap();
    let q = query("www.example.org.", RecordType::A);
    for post in [false, true, false] {
        let r = if post {
            h3.post(&q).await
        } else {
            h3.get(&q).await
        };
        let r = r.unwrap_or_else(|| panic!("post={post}: no reply"));
        assert_eq!(r.status, 200, "post={post}");
        assert_eq!(r.content_type.as_deref(), Some("application/dns-message"));
        let m = r.message().unwrap();
        assert_eq!(a_of(&m), vec!["192.0.2.1"]);
        assert_eq!(m.metadata.id, q.metadata.id);
        let age: u32 = r
            .cache_control
            .as_deref()
            .and_then(|c| c.strip_prefix("max-age="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("cache-control: {:?}", r.cache_control));
        assert!((1..=30).contains(&age), "max-age={age}");
    }
    assert_eq!(
        up.count("www.example.org.", RecordType::A),
        1,
        "all but the first were hits"
    );
}

#[tokio::test]
async fn doh3_broken_requests_get_the_rfc_8484_statuses() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = quic_agent(&ca, "https3", &up, &[]).await;
    let h3 = H3Conn::connect(agent.listener("https3"), &ca.client_config(&[b"h3"], None))
        .await
        .unwrap();
    let q = query("www.example.org.", RecordType::A).to_vec().unwrap();
    let mime = Some("application/dns-message");
    let status = |r: Option<nodedns_tests::quic_client::H3Reply>| r.map(|r| r.status);
    assert_eq!(
        status(h3.request("GET", "/other?dns=AAAB", None, vec![]).await),
        Some(404)
    );
    assert_eq!(
        status(h3.request("PUT", "/dns-query", mime, q.clone()).await),
        Some(405)
    );
    assert_eq!(
        status(
            h3.request("POST", "/dns-query", Some("text/plain"), q.clone())
                .await
        ),
        Some(415)
    );
    assert_eq!(
        status(
            h3.request("POST", "/dns-query", mime, vec![0; 70_000])
                .await
        ),
        Some(413)
    );
    assert_eq!(
        status(h3.request("POST", "/dns-query", mime, vec![1, 2, 3]).await),
        Some(400)
    );
    assert_eq!(
        status(h3.request("GET", "/dns-query?dns=!!!", None, vec![]).await),
        Some(400)
    );
    assert_eq!(
        status(h3.request("POST", "/dns-query", mime, q.clone()).await),
        Some(200),
        "the connection still answers"
    );
}

#[tokio::test]
async fn doh3_limits_connections_and_streams() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = quic_agent(
        &ca,
        "https3",
        &up,
        &["--max-tcp-conns", "1", "--max-http-streams", "2"],
    )
    .await;
    let addr = agent.listener("https3");
    let config = ca.client_config(&[b"h3"], None);
    let q = query("www.example.org.", RecordType::A);
    let a = H3Conn::connect(addr, &config).await.unwrap();
    assert_eq!(a.post(&q).await.map(|r| r.status), Some(200));
    match connect(addr, &config).await {
        Err(quinn::ConnectionError::ConnectionClosed(c)) => {
            assert_eq!(c.error_code, quinn::TransportErrorCode::CONNECTION_REFUSED);
        }
        Err(e) => panic!("second connection: {e}"),
        Ok(_) => panic!("a second connection was accepted"),
    }
    // The stream credit the server gives: two request streams at once.
    let (_s1, _r1) = a.quic.conn.open_bi().await.unwrap();
    let (_s2, _r2) = a.quic.conn.open_bi().await.unwrap();
    use futures::FutureExt as _;
    assert!(
        a.quic.conn.open_bi().now_or_never().is_none(),
        "a third stream was allowed"
    );
}

/// The python of the tools venv CI installs (dnspython, aioquic), else
/// the system's.
fn python() -> Option<std::path::PathBuf> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let venv = home.map(|h| h.join(".cache/nodedns-tools/bin/python3"));
    let candidates = venv
        .into_iter()
        .chain([std::path::PathBuf::from("python3")]);
    for p in candidates {
        let ok = std::process::Command::new(&p)
            .args([
                "-c",
                "import sys, dns._features as f; sys.exit(0 if f.have('doq') and f.have('doh') else 1)",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(p);
        }
    }
    None
}

/// Runs `script` with python (its output on success); `None` when python
/// or the modules are missing.
async fn run_python(script: String) -> Option<Result<String, String>> {
    let Some(py) = python() else {
        eprintln!(
            "skipped: no python3 with dnspython's DoQ and DoH support (CI installs them in ~/.cache/nodedns-tools)"
        );
        return None;
    };
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(py)
            .args(["-c", &script])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python took over 30 s")
    .expect("run python");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Some(Ok(text))
    } else {
        Some(Err(format!(
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

#[tokio::test]
async fn dnspython_doq_and_doh3_clients_are_answered() {
    let ca = TestCa::new();
    let up = upstream().await;
    // dnspython 2.7.0's synchronous HTTP/3 client lost the wake-up of a
    // reply that came before it waited (a race in its `wait_for_end`),
    // timing out on about half the queries to a fast server; 2.9.2 (what
    // CI installs) does not. `h3=True` became `http_version=H3`.
    for scheme in ["quic", "https3"] {
        let agent = quic_agent(&ca, scheme, &up, &[]).await;
        let port = agent.listener(scheme).port();
        let ca_path = agent.path("ca.pem");
        let ca_path = ca_path.display();
        let ask = if scheme == "quic" {
            format!(
                "dns.query.quic(q, '127.0.0.1', port={port}, verify='{ca_path}', server_hostname='dns.example.test', timeout=5)"
            )
        } else {
            format!(
                "dns.query.https(q, 'https://127.0.0.1:{port}/dns-query', http_version=dns.query.HTTPVersion.H3, verify='{ca_path}', timeout=5)"
            )
        };
        let script = format!(
            "import dns.message, dns.query\nq = dns.message.make_query('www.example.org.', 'A')\nr = {ask}\nprint(r.answer[0][0].address)\n"
        );
        let Some(out) = run_python(script).await else {
            return;
        };
        let out = out.unwrap_or_else(|e| panic!("{scheme}: dnspython failed: {e}"));
        assert_eq!(out.trim(), "192.0.2.1", "{scheme}");
    }
}
