//! The encrypted listeners (`tls://`), end to end with a test CA: a query
//! through the whole chain (cache miss, then hit), what a broken client
//! gets, each limit, a certificate replaced on disk, client certificates,
//! and clients nobody here wrote (kdig, dnsperf) when installed.

use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use nodedns_tests::client::a_of;
use nodedns_tests::client::query;
use nodedns_tests::secure_client::{
    DohClient, DotClient, SERVER_NAME, TestCa, certs, grpc_query, read_frame, write_frame,
};
use nodedns_tests::{Agent, FakeUpstream, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An agent serving `tls://` on a free loopback port with `tls_line`,
/// caching in front of `up`; the CA's, server's and any extra files are
/// written beside the Corefile.
async fn dot_agent(ca: &TestCa, tls_line: &str, up: &FakeUpstream, args: &[&str]) -> Agent {
    let (cert, key) = ca.server();
    let mut b = Agent::corefile(format!(
        "tls://.:0 {{\n    bind 127.0.0.1\n    {tls_line}\n    cache 30\n    forward . {up}\n}}\n"
    ))
    .file("cert.pem", cert)
    .file("key.pem", key)
    .file("ca.pem", ca.pem());
    for a in args {
        b = b.arg(*a);
    }
    b.start().await
}

async fn upstream() -> FakeUpstream {
    FakeUpstream::builder()
        .ttl(300)
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await
}

#[tokio::test]
async fn dot_answers_through_the_chain_then_from_the_cache() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = dot_agent(&ca, "tls cert.pem key.pem", &up, &[]).await;
    let dot = DotClient::new(agent.listener("tls"), ca.client_config(&[b"dot"], None));
    let m = dot
        .query(&query("www.example.org.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(a_of(&m), vec!["192.0.2.1"]);
    let m = dot
        .query(&query("www.example.org.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(a_of(&m), vec!["192.0.2.1"]);
    assert_eq!(
        up.count("www.example.org.", RecordType::A),
        1,
        "the second was a hit"
    );
    // DoT is `tcp` to plugins (CoreDNS's state.Proto()): forward asked over TCP.
    assert_eq!(up.udp_queries(), 0);
    // Pipelined on one connection: three queries written at once, three
    // answers, each with its ID.
    let mut s = dot.connect().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3u16 {
        let mut q = query("www.example.org.", RecordType::A);
        q.metadata.id = 100 + i;
        ids.push(q.metadata.id);
        write_frame(&mut s, &q.to_vec().unwrap()).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = Message::from_vec(&read_frame(&mut s).await.unwrap()).unwrap();
        assert_eq!(a_of(&m), vec!["192.0.2.1"]);
        got.push(m.metadata.id);
    }
    got.sort_unstable();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn dot_malformed_and_limits() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = dot_agent(
        &ca,
        "tls cert.pem key.pem",
        &up,
        &[
            "--max-tcp-conns",
            "2",
            "--tcp-idle-timeout",
            "1s",
            "--handshake-timeout",
            "1s",
        ],
    )
    .await;
    let addr = agent.listener("tls");
    let dot = DotClient::new(addr, ca.client_config(&[b"dot"], None));
    // A message with a header but a broken question: FORMERR on the
    // same connection, which stays usable.
    let mut s = dot.connect().await.unwrap();
    let mut bad = query("www.example.org.", RecordType::A).to_vec().unwrap();
    bad.truncate(16);
    write_frame(&mut s, &bad).await.unwrap();
    let m = Message::from_vec(&read_frame(&mut s).await.unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    write_frame(
        &mut s,
        &query("www.example.org.", RecordType::A).to_vec().unwrap(),
    )
    .await
    .unwrap();
    assert!(read_frame(&mut s).await.is_some());
    drop(s);
    // Plain DNS (no TLS) on the TLS port: the handshake fails, the
    // connection is closed, nothing is answered.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    write_frame(
        &mut plain,
        &query("www.example.org.", RecordType::A).to_vec().unwrap(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf)).await;
    assert!(
        !matches!(n, Ok(Ok(n)) if n >= 2 && buf[..2] != [0x15, 0x03]),
        "plain DNS got an answer: {n:?}"
    );
    // A client that never starts the handshake is closed after the
    // handshake timeout.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    // An idle TLS connection is closed after the idle timeout.
    let mut s = dot.connect().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    drop(s);
    // Two connections at most: a third is closed at once, and served
    // again when one goes.
    let a = dot.connect().await.unwrap();
    let b = dot.connect().await.unwrap();
    assert!(
        dot.query(&query("www.example.org.", RecordType::A))
            .await
            .is_none()
    );
    drop((a, b));
    let ok = wait_until(Duration::from_secs(5), || async {
        dot.query(&query("www.example.org.", RecordType::A))
            .await
            .is_some()
    })
    .await;
    assert!(ok, "served again once a connection closed");
}

/// The certificate the agent presents on a new connection.
async fn served(dot: &DotClient) -> Option<Vec<u8>> {
    let s = dot.connect().await.ok()?;
    let (_, conn) = s.get_ref();
    Some(conn.peer_certificates()?[0].as_ref().to_vec())
}

#[tokio::test]
async fn dot_serves_a_replaced_certificate_without_a_restart() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = dot_agent(&ca, "tls cert.pem key.pem", &up, &[]).await;
    let dot = DotClient::new(agent.listener("tls"), ca.client_config(&[b"dot"], None));
    let first = served(&dot).await.unwrap();
    let (cert, key) = ca.server();
    let want = certs(&cert)[0].as_ref().to_vec();
    assert_ne!(first, want);
    // Renewed as a tool does: new files renamed over the old ones.
    for (name, text) in [("key.pem", &key), ("cert.pem", &cert)] {
        let tmp = agent.path(&format!("{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, agent.path(name)).unwrap();
    }
    let renewed = wait_until(Duration::from_secs(10), || async {
        served(&dot).await.as_deref() == Some(want.as_slice())
    })
    .await;
    assert!(renewed, "the new certificate was not served");
    let m = dot
        .query(&query("www.example.org.", RecordType::A))
        .await
        .unwrap();
    assert_eq!(a_of(&m), vec!["192.0.2.1"]);
}

#[tokio::test]
async fn dot_client_certificates_are_verified_with_a_ca() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = dot_agent(
        &ca,
        "tls cert.pem key.pem ca.pem {\n        client_auth require_and_verify\n    }",
        &up,
        &[],
    )
    .await;
    let addr = agent.listener("tls");
    let q = query("www.example.org.", RecordType::A);
    let mine = ca.issue(&["client.example.test"]);
    let other = TestCa::new().issue(&["client.example.test"]);
    let with = |c: Option<&(String, String)>| DotClient::new(addr, ca.client_config(&[b"dot"], c));
    assert!(with(Some(&mine)).query(&q).await.is_some());
    assert!(with(None).query(&q).await.is_none(), "no certificate");
    assert!(with(Some(&other)).query(&q).await.is_none(), "another CA's");
}

#[tokio::test]
async fn tls_without_the_tls_plugin_serves_plain_dns_as_coredns() {
    let up = upstream().await;
    let agent = Agent::corefile(format!(
        "tls://.:0 {{\n    bind 127.0.0.1\n    forward . {up}\n}}\n"
    ))
    .start()
    .await;
    let mut s = tokio::net::TcpStream::connect(agent.listener("tls"))
        .await
        .unwrap();
    write_frame(
        &mut s,
        &query("www.example.org.", RecordType::A).to_vec().unwrap(),
    )
    .await
    .unwrap();
    let m = Message::from_vec(&read_frame(&mut s).await.unwrap()).unwrap();
    assert_eq!(a_of(&m), vec!["192.0.2.1"]);
    s.shutdown().await.unwrap();
}

// === clients nobody here wrote ===

fn have(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: {tool} is not installed (.ci/run installs it)");
    }
    found
}

async fn run(cmd: &str, args: &[String]) -> (bool, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(cmd)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("tool finished in time")
    .expect("tool ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn kdig_tls_is_answered() {
    if !have("kdig") {
        return;
    }
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = dot_agent(&ca, "tls cert.pem key.pem", &up, &[]).await;
    let addr = agent.listener("tls");
    let args: Vec<String> = [
        format!("@{}", addr.ip()),
        "-p".into(),
        addr.port().to_string(),
        "+tls".into(),
        format!("+tls-ca={}", agent.path("ca.pem").display()),
        format!("+tls-hostname={SERVER_NAME}"),
        "+timeout=3".into(),
        "+retry=0".into(),
        "www.example.org.".into(),
        "A".into(),
    ]
    .into();
    let (ok, text) = run("kdig", &args).await;
    assert!(ok, "{text}");
    assert!(text.contains("NOERROR"), "{text}");
    assert!(text.contains("192.0.2.1"), "{text}");
}

#[tokio::test]
async fn dnsperf_dot_runs_without_errors() {
    if !have("dnsperf") {
        return;
    }
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = dot_agent(&ca, "tls cert.pem key.pem", &up, &[]).await;
    let addr = agent.listener("tls");
    let data = agent.path("queries.txt");
    std::fs::write(&data, "www.example.org A\n").unwrap();
    let args: Vec<String> = [
        "-m".into(),
        "dot".into(),
        "-s".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-d".into(),
        data.display().to_string(),
        "-l".into(),
        "2".into(),
        "-c".into(),
        "2".into(),
        "-Q".into(),
        "2000".into(),
    ]
    .into();
    let (ok, text) = run("dnsperf", &args).await;
    assert!(ok, "{text}");
    assert_dnsperf_clean(&text);
}

/// dnsperf's summary: queries completed, none lost, no errors.
fn assert_dnsperf_clean(text: &str) {
    let field = |label: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))?
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    };
    let completed = field("Queries completed:").unwrap_or(0);
    assert!(completed > 0, "{text}");
    assert_eq!(field("Queries lost:"), Some(0), "{text}");
    assert!(!text.contains("error"), "{text}");
}

// === DNS over HTTPS ===

/// An agent serving `https://` on a free loopback port, caching in front
/// of `up`.
async fn doh_agent(ca: &TestCa, up: &FakeUpstream, args: &[&str]) -> Agent {
    let (cert, key) = ca.server();
    let mut b = Agent::corefile(format!(
        "https://.:0 {{\n    bind 127.0.0.1\n    tls cert.pem key.pem\n    cache 30\n    forward . {up}\n}}\n"
    ))
    .file("cert.pem", cert)
    .file("key.pem", key)
    .file("ca.pem", ca.pem());
    for a in args {
        b = b.arg(*a);
    }
    b.start().await
}

#[tokio::test]
async fn doh_get_and_post_over_h2_and_http1_through_the_chain() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = doh_agent(&ca, &up, &[]).await;
    let addr = agent.listener("https");
    let h2 = DohClient::new(addr, ca.client_config(&[b"h2"], None));
    let h1 = DohClient::new(addr, ca.client_config(&[b"http/1.1"], None));
    let q = query("www.example.org.", RecordType::A);
    for (client, how) in [(&h2, "h2"), (&h1, "http/1.1")] {
        for post in [false, true] {
            let r = if post {
                client.post(&q).await
            } else {
                client.get(&q).await
            };
            let r = r.unwrap_or_else(|| panic!("{how} post={post}: no reply"));
            assert_eq!(r.status, 200, "{how} post={post}");
            assert_eq!(r.content_type.as_deref(), Some("application/dns-message"));
            let m = r.message().unwrap();
            assert_eq!(a_of(&m), vec!["192.0.2.1"], "{how} post={post}");
            assert_eq!(m.metadata.id, q.metadata.id);
            // RFC 8484 §5.1: freshness from the smallest TTL (cache 30 caps it).
            let age: u32 = r
                .cache_control
                .as_deref()
                .and_then(|c| c.strip_prefix("max-age="))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("cache-control: {:?}", r.cache_control));
            assert!((1..=30).contains(&age), "max-age={age}");
        }
    }
    assert_eq!(
        up.count("www.example.org.", RecordType::A),
        1,
        "all but the first were hits"
    );
    assert_eq!(up.udp_queries(), 0, "DoH is tcp to forward, as CoreDNS");
}

#[tokio::test]
async fn doh_broken_requests_get_the_rfc_8484_statuses() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = doh_agent(&ca, &up, &[]).await;
    let addr = agent.listener("https");
    let q = query("www.example.org.", RecordType::A).to_vec().unwrap();
    for alpn in [b"h2".as_slice(), b"http/1.1"] {
        let c = DohClient::new(addr, ca.client_config(&[alpn], None));
        let ask =
            |method: &'static str, path: &'static str, ct: Option<&'static str>, body: Vec<u8>| {
                let c = c.clone();
                async move { c.request(method, path, ct, body).await.map(|r| r.status) }
            };
        let mime = Some("application/dns-message");
        assert_eq!(ask("GET", "/other?dns=AAAB", None, vec![]).await, Some(404));
        assert_eq!(ask("PUT", "/dns-query", mime, q.clone()).await, Some(405));
        assert_eq!(
            ask("POST", "/dns-query", Some("text/plain"), q.clone()).await,
            Some(415)
        );
        assert_eq!(ask("POST", "/dns-query", None, q.clone()).await, Some(415));
        assert_eq!(
            ask("POST", "/dns-query", mime, vec![0; 70_000]).await,
            Some(413)
        );
        assert_eq!(
            ask("POST", "/dns-query", mime, vec![1, 2, 3]).await,
            Some(400)
        );
        assert_eq!(
            ask("GET", "/dns-query", None, vec![]).await,
            Some(400),
            "no dns="
        );
        assert_eq!(
            ask("GET", "/dns-query?dns=!!!", None, vec![]).await,
            Some(400)
        );
        // A header but no question is not a DNS query either.
        let mut bad = q.clone();
        bad.truncate(14);
        assert_eq!(ask("POST", "/dns-query", mime, bad).await, Some(400));
        // The agent still answers.
        assert_eq!(ask("POST", "/dns-query", mime, q.clone()).await, Some(200));
    }
}

#[tokio::test]
async fn doh_limits_connections_and_idle_time() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = doh_agent(
        &ca,
        &up,
        &[
            "--max-tcp-conns",
            "1",
            "--tcp-idle-timeout",
            "1s",
            "--handshake-timeout",
            "1s",
        ],
    )
    .await;
    let addr = agent.listener("https");
    let c = DohClient::new(addr, ca.client_config(&[b"h2"], None));
    let q = query("www.example.org.", RecordType::A);
    let dot = DotClient::new(addr, ca.client_config(&[b"h2"], None));
    let mut held = dot.connect().await.unwrap();
    assert!(c.post(&q).await.is_none(), "a second connection is refused");
    // The held connection idles out, then others are served.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf)).await;
    assert!(closed.is_ok(), "idle connection not closed");
    drop(held);
    let ok = wait_until(Duration::from_secs(5), || async {
        c.post(&q).await.is_some_and(|r| r.status == 200)
    })
    .await;
    assert!(ok);
}

#[tokio::test]
async fn doh_closes_a_request_header_that_never_ends() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = doh_agent(&ca, &up, &["--handshake-timeout", "1s"]).await;
    let addr = agent.listener("https");
    let h1 = DotClient::new(addr, ca.client_config(&[b"http/1.1"], None));
    // A whole request is answered ...
    let doh = DohClient::new(addr, ca.client_config(&[b"http/1.1"], None));
    let r = doh.get(&query("www.example.org.", RecordType::A)).await;
    assert_eq!(r.map(|r| r.status), Some(200));
    // ... one whose header never ends is closed after the
    // header timeout (no 200, no hang).
    let mut s = h1.connect().await.unwrap();
    s.write_all(b"GET /dns-query?dns=AAAB HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    s.flush().await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "a slow header kept the connection open");
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn kdig_https_is_answered() {
    if !have("kdig") {
        return;
    }
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = doh_agent(&ca, &up, &[]).await;
    let addr = agent.listener("https");
    let args: Vec<String> = [
        format!("@{}", addr.ip()),
        "-p".into(),
        addr.port().to_string(),
        "+https".into(),
        format!("+tls-ca={}", agent.path("ca.pem").display()),
        format!("+tls-hostname={SERVER_NAME}"),
        "+timeout=3".into(),
        "+retry=0".into(),
        "www.example.org.".into(),
        "A".into(),
    ]
    .into();
    let (ok, text) = run("kdig", &args).await;
    assert!(ok, "{text}");
    assert!(text.contains("NOERROR"), "{text}");
    assert!(text.contains("192.0.2.1"), "{text}");
}

#[tokio::test]
async fn dnsperf_doh_runs_without_errors() {
    if !have("dnsperf") {
        return;
    }
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = doh_agent(&ca, &up, &[]).await;
    let addr = agent.listener("https");
    let data = agent.path("queries.txt");
    std::fs::write(&data, "www.example.org A\n").unwrap();
    let args: Vec<String> = [
        "-m".into(),
        "doh".into(),
        "-s".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-d".into(),
        data.display().to_string(),
        "-l".into(),
        "2".into(),
        // One query outstanding: dnsperf 2.10's DoH keeps one message
        // buffer per connection (src/net_doh.c), so replies of several
        // streams that arrive in one read are merged and counted lost.
        "-c".into(),
        "1".into(),
        "-q".into(),
        "1".into(),
    ]
    .into();
    let (ok, text) = run("dnsperf", &args).await;
    assert!(ok, "{text}");
    assert_dnsperf_clean(&text);
}

// === DNS over gRPC ===

#[tokio::test]
async fn grpc_answers_through_the_chain_and_refuses_what_is_not_dns() {
    let ca = TestCa::new();
    let up = upstream().await;
    let (cert, key) = ca.server();
    let agent = Agent::corefile(format!(
        "grpc://.:0 {{\n    bind 127.0.0.1\n    tls cert.pem key.pem\n    cache 30\n    forward . {up}\n}}\n"
    ))
    .file("cert.pem", cert)
    .file("key.pem", key)
    .start()
    .await;
    let addr = agent.listener("grpc");
    let config = || Some(ca.client_config(&[b"h2"], None));
    let q = query("www.example.org.", RecordType::A);
    for _ in 0..2 {
        let raw = grpc_query(addr, config(), &q.to_vec().unwrap())
            .await
            .expect("grpc exchange")
            .expect("grpc status OK");
        let m = Message::from_vec(&raw).unwrap();
        assert_eq!(a_of(&m), vec!["192.0.2.1"]);
        assert_eq!(m.metadata.id, q.metadata.id);
    }
    assert_eq!(
        up.count("www.example.org.", RecordType::A),
        1,
        "the second was a hit"
    );
    // Not a DNS query: INVALID_ARGUMENT (3); too long: the same.
    assert_eq!(grpc_query(addr, config(), &[1, 2, 3]).await, Some(Err(3)));
    assert_eq!(
        grpc_query(addr, config(), &vec![0; 70_000])
            .await
            .map(|r| r.is_err()),
        Some(true)
    );
    // Still answering.
    assert!(matches!(
        grpc_query(addr, config(), &q.to_vec().unwrap()).await,
        Some(Ok(_))
    ));
}

#[tokio::test]
async fn grpc_without_tls_is_h2c_as_coredns() {
    let up = upstream().await;
    let agent = Agent::corefile(format!(
        "grpc://.:0 {{\n    bind 127.0.0.1\n    forward . {up}\n}}\n"
    ))
    .start()
    .await;
    let q = query("www.example.org.", RecordType::A);
    let raw = grpc_query(agent.listener("grpc"), None, &q.to_vec().unwrap())
        .await
        .expect("grpc exchange")
        .expect("grpc status OK");
    assert_eq!(a_of(&Message::from_vec(&raw).unwrap()), vec!["192.0.2.1"]);
}

/// The SETTINGS_MAX_CONCURRENT_STREAMS an h2 listener at `addr` advertises,
/// read by an h2 client after one request has gone through.
async fn advertised_h2_streams(
    addr: std::net::SocketAddr,
    ca: &TestCa,
    path: &str,
) -> Option<usize> {
    let tls = DotClient::new(addr, ca.client_config(&[b"h2"], None))
        .connect()
        .await
        .ok()?;
    let (mut send, conn) = h2::client::handshake(tls).await.ok()?;
    let mut conn = std::pin::pin!(conn);
    let ask = async {
        let raw = query("www.example.org.", RecordType::A).to_vec().ok()?;
        let req = http::Request::post(format!("https://dns.example.test{path}"))
            .header(
                "content-type",
                if path == "/dns-query" {
                    "application/dns-message"
                } else {
                    "application/grpc"
                },
            )
            .body(())
            .ok()?;
        let (resp, mut body) = send.send_request(req, false).ok()?;
        body.send_data(bytes::Bytes::from(raw), true).ok()?;
        resp.await.ok().map(|r| r.status())
    };
    let status = tokio::select! {
        s = tokio::time::timeout(Duration::from_secs(5), ask) => s.ok().flatten(),
        _ = &mut conn => None,
    };
    status?;
    Some(conn.max_concurrent_send_streams())
}

#[tokio::test]
async fn doh_and_grpc_advertise_the_stream_limit() {
    let ca = TestCa::new();
    let up = upstream().await;
    let agent = doh_agent(&ca, &up, &["--max-http-streams", "3"]).await;
    assert_eq!(
        advertised_h2_streams(agent.listener("https"), &ca, "/dns-query").await,
        Some(3),
        "DoH over h2"
    );
    let (cert, key) = ca.server();
    let grpc = Agent::corefile(format!(
        "grpc://.:0 {{\n    bind 127.0.0.1\n    tls cert.pem key.pem\n    forward . {up}\n}}\n"
    ))
    .file("cert.pem", cert)
    .file("key.pem", key)
    .arg("--max-http-streams")
    .arg("7")
    .start()
    .await;
    assert_eq!(
        advertised_h2_streams(grpc.listener("grpc"), &ca, "/coredns.dns.DnsService/Query").await,
        Some(7),
        "gRPC"
    );
}
