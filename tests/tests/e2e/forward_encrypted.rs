//! forward to encrypted upstreams: DoH (`https://`), DoQ (`quic://`) and
//! DoH3 (`h3://`) against fake upstreams of each transport with a test CA:
//! answered through the chain (cache miss then hit), many queries on one
//! connection, malformed replies and reset streams, health checks, a
//! reload that keeps the pool, certificate checks; and the proxy alone,
//! to prove that every stream is given back.

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use nix::sys::signal::Signal;
use nodedns_plugins::pkg::proxy::{
    DohMethod, Proto, Proxy, ProxyConfig, ProxyError, Secure, TlsSettings, tls_client_config,
};
use nodedns_tests::client::query;
use nodedns_tests::{Agent, Client, SecureFault, SecureKind, SecureUpstream, http_get, wait_until};

const KINDS: [SecureKind; 3] = [SecureKind::Https, SecureKind::Quic, SecureKind::H3];

fn a_of(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

fn corefile(up: &SecureUpstream, options: &str, plugins: &str) -> String {
    format!(
        ".:0 {{\n    bind 127.0.0.1\n{plugins}    forward . {}{} {{\n        tls_servername dns.example.test\n        tls ca.pem\n{options}    }}\n}}\n",
        up.kind.scheme(),
        up.addr
    )
}

async fn agent_for(up: &SecureUpstream, options: &str, plugins: &str) -> Agent {
    Agent::corefile(corefile(up, options, plugins))
        .file("ca.pem", up.ca_pem.clone())
        .start()
        .await
}

#[tokio::test]
async fn forward_encrypted_answers_through_the_cache_miss_then_hit() {
    for kind in KINDS {
        let up = SecureUpstream::start(kind).await;
        let agent = agent_for(&up, "", "    cache 30\n").await;
        let c = Client::new(agent.udp());
        let m = c.udp("www.example.org.", RecordType::A).await;
        assert_eq!(a_of(&m), vec!["192.0.2.53"], "{kind:?}");
        let m = c.tcp("www.example.org.", RecordType::A).await;
        assert_eq!(a_of(&m), vec!["192.0.2.53"], "{kind:?}");
        assert_eq!(up.queries(), 1, "{kind:?}: the second is a cache hit");
        let m = c.udp("other.example.org.", RecordType::A).await;
        assert_eq!(a_of(&m), vec!["192.0.2.53"], "{kind:?}");
        assert_eq!(up.queries(), 2, "{kind:?}");
        assert_eq!(up.connections(), 1, "{kind:?}: one connection carries both");
        assert_eq!(
            up.methods().len(),
            if kind == SecureKind::Quic { 0 } else { 2 }
        );
        assert!(
            up.methods().iter().all(|m| m == "POST"),
            "{kind:?}: POST by default"
        );
    }
}

#[tokio::test]
async fn forward_encrypted_doh_method_get() {
    for kind in [SecureKind::Https, SecureKind::H3] {
        let up = SecureUpstream::start(kind).await;
        let agent = agent_for(&up, "        doh_method GET\n", "").await;
        let c = Client::new(agent.udp());
        let m = c.udp("www.example.org.", RecordType::A).await;
        assert_eq!(a_of(&m), vec!["192.0.2.53"], "{kind:?}");
        assert_eq!(up.methods(), vec!["GET".to_string()], "{kind:?}");
    }
}

#[tokio::test]
async fn forward_encrypted_many_concurrent_queries_share_one_connection() {
    for kind in KINDS {
        let up = SecureUpstream::start(kind).await;
        // Slow answers, so the queries are in flight together.
        up.set_fault(SecureFault::Delay(Duration::from_millis(200)));
        let agent = agent_for(&up, "", "").await;
        let addr = agent.udp();
        let mut tasks = Vec::new();
        for i in 0..50 {
            tasks.push(tokio::spawn(async move {
                Client::new(addr)
                    .udp(&format!("q{i}.example.org."), RecordType::A)
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(a_of(&t.await.unwrap()), vec!["192.0.2.53"], "{kind:?}");
        }
        assert_eq!(up.queries(), 50, "{kind:?}");
        assert_eq!(up.connections(), 1, "{kind:?}: multiplexed on one");
        assert!(up.max_in_flight() > 10, "{kind:?}: {}", up.max_in_flight());
    }
}

#[tokio::test]
async fn forward_encrypted_misbehaving_upstream_fails_the_query_not_the_agent() {
    let faults = [
        SecureFault::Malformed,
        SecureFault::WrongId,
        SecureFault::Reset,
        SecureFault::Http500,
        SecureFault::WrongContentType,
        SecureFault::Oversize,
    ];
    for kind in KINDS {
        let up = SecureUpstream::start(kind).await;
        let agent = agent_for(&up, "        max_fails 0\n        read_timeout 1s\n", "").await;
        let c = Client::new(agent.udp());
        for (i, f) in faults.iter().enumerate() {
            up.set_fault(*f);
            let start = std::time::Instant::now();
            let m = c.udp(&format!("bad{i}.example.org."), RecordType::A).await;
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::ServFail,
                "{kind:?} {f:?}"
            );
            // Refused at once, not after the timeout.
            assert!(
                start.elapsed() < Duration::from_millis(900),
                "{kind:?} {f:?}: {:?}",
                start.elapsed()
            );
            up.set_fault(SecureFault::Normal);
            let m = c.udp(&format!("good{i}.example.org."), RecordType::A).await;
            assert_eq!(a_of(&m), vec!["192.0.2.53"], "{kind:?} after {f:?}");
        }
    }
}

async fn upstreams_json(agent: &Agent) -> String {
    http_get(agent.admin(), "/v1/upstreams")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default()
}

#[tokio::test]
async fn forward_encrypted_health_check_marks_down_and_up_over_the_same_transport() {
    for kind in KINDS {
        let up = SecureUpstream::start(kind).await;
        let agent = agent_for(
            &up,
            "        max_fails 1\n        read_timeout 300ms\n        health_check 100ms\n",
            "",
        )
        .await;
        let c = Client::new(agent.udp());
        up.set_fault(SecureFault::Http500);
        let m = c.udp("a.example.org.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{kind:?}");
        let down = wait_until(Duration::from_secs(5), || async {
            upstreams_json(&agent).await.contains("\"healthy\":false")
        })
        .await;
        assert!(down, "{kind:?}: {}", upstreams_json(&agent).await);
        let json = upstreams_json(&agent).await;
        assert!(json.contains(kind.scheme()), "{kind:?}: {json}");
        let before = up.queries();
        up.set_fault(SecureFault::Normal);
        // The checks (`. NS`) go over the same transport and bring it back.
        let healthy = wait_until(Duration::from_secs(5), || async {
            upstreams_json(&agent).await.contains("\"healthy\":true")
        })
        .await;
        assert!(healthy, "{kind:?}: {}", upstreams_json(&agent).await);
        assert!(up.queries() > before, "{kind:?}");
        let m = c.udp("b.example.org.", RecordType::A).await;
        assert_eq!(a_of(&m), vec!["192.0.2.53"], "{kind:?}");
    }
}

#[tokio::test]
async fn forward_encrypted_reload_keeps_the_pool() {
    for kind in KINDS {
        let up = SecureUpstream::start(kind).await;
        let text = corefile(&up, "        expire 1m\n", "");
        let agent = Agent::corefile(text.clone())
            .file("ca.pem", up.ca_pem.clone())
            .start()
            .await;
        let c = Client::new(agent.udp());
        assert_eq!(
            a_of(&c.udp("r0.example.org.", RecordType::A).await),
            vec!["192.0.2.53"]
        );
        let extra = "example.net:0 {\n    bind 127.0.0.1\n    whoami\n}\n";
        std::fs::write(agent.path("Corefile"), format!("{text}{extra}")).unwrap();
        agent.signal(Signal::SIGUSR1);
        let reloaded = wait_until(Duration::from_secs(10), || async {
            agent.stdout().iter().any(|l| l == "nodedns reloaded")
        })
        .await;
        assert!(reloaded, "{kind:?}: {:?}", agent.stderr());
        assert_eq!(
            a_of(&c.udp("r1.example.org.", RecordType::A).await),
            vec!["192.0.2.53"]
        );
        assert_eq!(up.queries(), 2, "{kind:?}");
        assert_eq!(up.connections(), 1, "{kind:?}: the pool was carried over");
    }
}

#[tokio::test]
async fn forward_encrypted_certificate_checks() {
    for kind in KINDS {
        let up = SecureUpstream::start(kind).await;
        let other = SecureUpstream::start(kind).await;
        // The right CA and the IP (in the certificate) with no name.
        let ok = Agent::corefile(format!(
            ".:0 {{\n    bind 127.0.0.1\n    forward . {}{} {{\n        tls ca.pem\n    }}\n}}\n",
            kind.scheme(),
            up.addr
        ))
        .file("ca.pem", up.ca_pem.clone())
        .start()
        .await;
        let m = Client::new(ok.udp())
            .udp("www.example.org.", RecordType::A)
            .await;
        assert_eq!(a_of(&m), vec!["192.0.2.53"], "{kind:?}");
        // Another CA, or a name the certificate lacks: no query gets there.
        for (ca, name) in [
            (other.ca_pem.clone(), "dns.example.test"),
            (up.ca_pem.clone(), "wrong.example.test"),
        ] {
            let bad = Agent::corefile(format!(
                ".:0 {{\n    bind 127.0.0.1\n    forward . {}{}%{name} {{\n        tls ca.pem\n        max_fails 0\n    }}\n}}\n",
                kind.scheme(),
                up.addr
            ))
            .file("ca.pem", ca)
            .start()
            .await;
            let m = Client::new(bad.udp())
                .udp("www.example.org.", RecordType::A)
                .await;
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{kind:?}");
        }
        assert_eq!(up.queries(), 1, "{kind:?}");
    }
}

#[tokio::test]
async fn forward_encrypted_rejects_paths_and_bad_doh_method() {
    for (to, opt, want) in [
        ("https://127.0.0.1/custom", "", "paths are not allowed"),
        ("h3://127.0.0.1/dns-query", "", "paths are not allowed"),
        ("https://127.0.0.1", "doh_method PUT", "doh_method must be"),
    ] {
        let (status, stderr) = Agent::corefile(format!(
            ".:0 {{\n    forward . {to} {{\n        {opt}\n    }}\n}}\n"
        ))
        .start_fails()
        .await;
        assert!(!status.success());
        assert!(stderr.contains(want), "{to}: {stderr}");
    }
}

// === the proxy alone ===

fn proxy_for(up: &SecureUpstream, dir: &std::path::Path) -> Proxy {
    let ca = dir.join(format!("ca-{}.pem", up.addr.port()));
    std::fs::write(&ca, &up.ca_pem).unwrap();
    let config = tls_client_config(Some(&ca), None).unwrap();
    let mut cfg = ProxyConfig::new(up.addr);
    cfg.tls = Some(TlsSettings {
        config,
        server_name: rustls::pki_types::ServerName::try_from("dns.example.test").unwrap(),
    });
    cfg.secure = Some(match up.kind {
        SecureKind::Https => Secure::Https(DohMethod::Post),
        SecureKind::Quic => Secure::Quic,
        SecureKind::H3 => Secure::H3(DohMethod::Post),
    });
    Proxy::new(cfg)
}

fn wire(name: &str, id: u16) -> Vec<u8> {
    let mut q = query(name, RecordType::A);
    q.metadata.id = id;
    q.to_vec().unwrap()
}

#[tokio::test]
async fn forward_encrypted_proxy_gives_every_stream_back() {
    let dir = std::env::temp_dir().join(format!("nodedns-secure-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for kind in KINDS {
        let up = SecureUpstream::start(kind).await;
        let proxy = Arc::new(proxy_for(&up, &dir));
        // The client's ID comes back; the wire carried 0.
        let x = proxy
            .exchange(
                &wire("a.example.org.", 0xbeef),
                Proto::Udp,
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        assert_eq!(&x.reply[..2], &[0xbe, 0xef], "{kind:?}");
        assert!(!x.reused_conn);
        // Timeouts: a stalled upstream, more queries than one connection
        // has streams.
        up.set_fault(SecureFault::Stall);
        let mut tasks = Vec::new();
        for i in 0..150u16 {
            let p = Arc::clone(&proxy);
            tasks.push(tokio::spawn(async move {
                p.exchange(
                    &wire(&format!("s{i}.example.org."), i),
                    Proto::Udp,
                    Duration::from_millis(500),
                )
                .await
            }));
        }
        // Each fails: a timeout, busy, or (the silent connection retired
        // under the others) closed.
        for t in tasks {
            let r = t.await.unwrap();
            assert!(r.is_err(), "{kind:?}: {r:?}");
        }
        let s = proxy.stats();
        assert_eq!((s.in_flight, s.mux_streams), (0, 0), "{kind:?}: {s:?}");
        // Malformed replies and resets give their streams back too.
        for f in [
            SecureFault::Malformed,
            SecureFault::Reset,
            SecureFault::Oversize,
        ] {
            up.set_fault(f);
            let r = proxy
                .exchange(
                    &wire("m.example.org.", 1),
                    Proto::Udp,
                    Duration::from_secs(2),
                )
                .await;
            assert!(
                matches!(r, Err(ProxyError::BadReply(_))),
                "{kind:?} {f:?}: {r:?}"
            );
            let s = proxy.stats();
            assert_eq!((s.in_flight, s.mux_streams), (0, 0), "{kind:?} {f:?}");
        }
        up.set_fault(SecureFault::Normal);
        let x = proxy
            .exchange(
                &wire("b.example.org.", 7),
                Proto::Udp,
                Duration::from_secs(2),
            )
            .await;
        assert!(x.is_ok(), "{kind:?}: {x:?}");
        // Dropping the proxy closes its connections.
        drop(proxy);
        let closed = wait_until(Duration::from_secs(5), || async {
            up.open_connections() == 0
        })
        .await;
        assert!(closed, "{kind:?}: {} open", up.open_connections());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn forward_encrypted_proxy_closes_idle_connections_after_expire() {
    let dir = std::env::temp_dir().join(format!("nodedns-secure-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for kind in KINDS {
        let up = SecureUpstream::start(kind).await;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &up.ca_pem).unwrap();
        let mut cfg = ProxyConfig::new(up.addr);
        cfg.expire = Duration::from_millis(200);
        cfg.tls = Some(TlsSettings {
            config: tls_client_config(Some(&ca), None).unwrap(),
            server_name: rustls::pki_types::ServerName::try_from("dns.example.test").unwrap(),
        });
        cfg.secure = Some(match kind {
            SecureKind::Https => Secure::Https(DohMethod::Post),
            SecureKind::Quic => Secure::Quic,
            SecureKind::H3 => Secure::H3(DohMethod::Post),
        });
        let proxy = Proxy::new(cfg);
        proxy
            .exchange(
                &wire("a.example.org.", 1),
                Proto::Udp,
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        assert_eq!(proxy.stats().open_streams, 1);
        let closed = wait_until(Duration::from_secs(5), || async {
            proxy.stats().open_streams == 0 && up.open_connections() == 0
        })
        .await;
        assert!(closed, "{kind:?}");
        let x = proxy
            .exchange(
                &wire("b.example.org.", 2),
                Proto::Udp,
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        assert!(!x.reused_conn, "{kind:?}: a fresh connection");
        assert_eq!(up.connections(), 2, "{kind:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
