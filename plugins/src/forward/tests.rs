use std::time::Duration;

use super::setup::{Policy, To, parse};
use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;

fn parse_text(text: &str) -> Result<Vec<ForwardConfig>, String> {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).map_err(|e| e.to_string())?;
    let mut d = Dispenser::new("forward", &tokens);
    parse(&mut d).map_err(|e| e.to_string())
}

fn one(text: &str) -> ForwardConfig {
    let mut v = parse_text(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(v.len(), 1);
    v.remove(0)
}

#[test]
fn defaults_as_coredns() {
    let c = one("forward . 192.0.2.1");
    assert_eq!(c.from, ".");
    assert_eq!(
        c.to,
        vec![To::Addr {
            addr: "192.0.2.1:53".parse().unwrap(),
            scheme: Scheme::Dns,
            server_name: None
        }]
    );
    assert_eq!(c.expire, Duration::from_secs(10));
    assert_eq!(c.max_fails, 2);
    assert_eq!(c.health_check, Duration::from_millis(500));
    assert_eq!(c.read_timeout, Duration::from_secs(2));
    assert_eq!(c.policy, Policy::Random);
    assert!(c.hc_recursion_desired);
    assert_eq!(c.hc_domain, ".");
}

#[test]
fn encrypted_schemes_default_ports_and_server_names() {
    let c = one(
        "forward . https://192.0.2.1 h3://192.0.2.2%dns.example.net quic://192.0.2.3 quic://[2001:db8::1]:8853 https://192.0.2.4%dns.example.net:8443 {
            doh_method GET
        }",
    );
    let want = [
        ("192.0.2.1:443", Scheme::Https, None),
        ("192.0.2.2:443", Scheme::H3, Some("dns.example.net")),
        ("192.0.2.3:853", Scheme::Quic, None),
        ("[2001:db8::1]:8853", Scheme::Quic, None),
        ("192.0.2.4:8443", Scheme::Https, Some("dns.example.net")),
    ];
    for (to, (addr, scheme, name)) in c.to.iter().zip(want) {
        assert_eq!(
            *to,
            To::Addr {
                addr: addr.parse().unwrap(),
                scheme,
                server_name: name.map(String::from),
            }
        );
    }
    assert_eq!(c.doh_method, crate::pkg::proxy::DohMethod::Get);
    assert_eq!(
        one("forward . https://192.0.2.1").doh_method,
        crate::pkg::proxy::DohMethod::Post
    );
}

#[test]
fn every_option() {
    let c = one(
        "forward example.org dns://192.0.2.1:1053 [2001:db8::1]:53 2001:db8::2 tls://192.0.2.3%dns.example.net:8853 {
            except a.example.org b.example.org
            force_tcp
            prefer_udp
            expire 30s
            max_age 1m
            max_idle_conns 4
            read_timeout 500ms
            max_fails 3
            max_connect_attempts 2
            tls ca.pem
            policy sequential
            health_check 1s no_rec domain example.net
            max_concurrent 100
            next NXDOMAIN servfail
            next_on_nodata
            failover SERVFAIL REFUSED
            failfast_all_unhealthy_upstreams
            source_address 127.0.0.2
        }",
    );
    assert_eq!(c.from, "example.org.");
    assert_eq!(c.to.len(), 4);
    assert_eq!(
        c.to[3],
        To::Addr {
            addr: "192.0.2.3:8853".parse().unwrap(),
            scheme: Scheme::Tls,
            server_name: Some("dns.example.net".into())
        }
    );
    assert_eq!(
        c.to[2],
        To::Addr {
            addr: "[2001:db8::2]:53".parse().unwrap(),
            scheme: Scheme::Dns,
            server_name: None
        }
    );
    assert_eq!(c.except, vec!["a.example.org.", "b.example.org."]);
    assert!(c.force_tcp && c.prefer_udp && c.next_on_nodata && c.failfast);
    assert_eq!(c.expire, Duration::from_secs(30));
    assert_eq!(c.max_age, Some(Duration::from_secs(60)));
    assert_eq!(c.max_idle_conns, 4);
    assert_eq!(c.read_timeout, Duration::from_millis(500));
    assert_eq!((c.max_fails, c.max_connect_attempts), (3, 2));
    assert_eq!(
        c.tls.as_ref().unwrap().ca.as_deref(),
        Some(std::path::Path::new("ca.pem"))
    );
    assert_eq!(c.policy, Policy::Sequential);
    assert_eq!(c.health_check, Duration::from_secs(1));
    assert!(!c.hc_recursion_desired);
    assert_eq!(c.hc_domain, "example.net.");
    assert_eq!(c.max_concurrent, 100);
    assert_eq!(c.next, vec![3, 2]);
    assert_eq!(c.failover, vec![2, 5]);
    assert_eq!(c.source_address, Some("127.0.0.2".parse().unwrap()));
}

#[test]
fn several_forward_lines_and_cidr_from() {
    let v = parse_text("forward 10.0.0.0/8 192.0.2.1\nforward . 192.0.2.2").unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].from, "10.in-addr.arpa.");
    assert_eq!(v[1].from, ".");
}

#[test]
fn resolv_conf_upstreams() {
    let dir = std::env::temp_dir().join(format!("nodedns-forward-resolv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("resolv.conf");
    std::fs::write(&f, "nameserver 192.0.2.53\nnameserver 192.0.2.54\n").unwrap();
    let c = one(&format!("forward . {}", f.display()));
    assert_eq!(c.to, vec![To::File(f.clone())]);
    let (fwd, task) = Forward::build(c).unwrap();
    assert!(task.is_some(), "a file upstream is watched");
    let addrs: Vec<String> = fwd.upstreams.load().iter().map(|u| u.to.clone()).collect();
    assert_eq!(addrs, vec!["192.0.2.53:53", "192.0.2.54:53"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_name_the_line() {
    let many: String = (1..=16).map(|i| format!(" 192.0.2.{i}")).collect();
    let cases = [
        ("forward", "Corefile:1: forward: missing FROM"),
        (
            "forward .",
            "Corefile:1: forward: missing TO: at least one upstream address or file",
        ),
        (
            "forward . example.com",
            "Corefile:1: forward: upstream 'example.com' is not an IP address, [IPv6]:port or file (host names are not supported)",
        ),
        (
            "forward . grpc://192.0.2.1",
            "Corefile:1: forward: upstream 'grpc://192.0.2.1': transport 'grpc://' not supported (dns://, tls://, https://, quic:// and h3:// are)",
        ),
        (
            "forward . https://192.0.2.1/custom",
            "Corefile:1: forward: upstream 'https://192.0.2.1/custom': paths are not allowed in HTTPS upstream addresses (the /dns-query path is used)",
        ),
        (
            "forward . 192.0.2.1 {\n  bogus\n}",
            "Corefile:2: forward: option 'bogus' not supported",
        ),
        (
            "forward . 192.0.2.1 {\n  doh_method PUT\n}",
            "Corefile:2: forward: doh_method must be either POST or GET, not 'PUT'",
        ),
        (
            "forward . 192.0.2.1 {\n  policy fastest\n}",
            "Corefile:2: forward: unknown policy 'fastest'",
        ),
        (
            "forward . 192.0.2.1 {\n  expire x\n}",
            "Corefile:2: forward: invalid duration 'x'",
        ),
        (
            "forward . 192.0.2.1 {\n  max_fails -1\n}",
            "Corefile:2: forward: invalid number '-1'",
        ),
        (
            "forward . 192.0.2.1 {\n  max_concurrent 0\n}",
            "Corefile:2: forward: max_concurrent must be at least 1",
        ),
        (
            "forward . 192.0.2.1 {\n  failover NOERROR\n}",
            "Corefile:2: forward: failover: NOERROR cannot be used",
        ),
        (
            "forward . 192.0.2.1 {\n  next BOGUS\n}",
            "Corefile:2: forward: unknown rcode 'BOGUS'",
        ),
        (
            "forward . 192.0.2.1 {\n  health_check 1s maybe\n}",
            "Corefile:2: forward: health_check: unknown argument 'maybe'",
        ),
        (
            "forward . 192.0.2.1 {\n  tls a b c d\n}",
            "Corefile:2: forward: wrong argument count or unexpected line ending after 'd'",
        ),
        (
            "forward . 192.0.2.1 {\n  source_address nope\n}",
            "Corefile:2: forward: invalid source_address 'nope'",
        ),
        (
            "forward . tls://192.0.2.1%a.example {\n  tls_servername b.example\n}",
            "Corefile:3: forward: tls_servername cannot be combined with tls://IP%NAME upstreams",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(parse_text(text).unwrap_err(), want, "{text}");
    }
    assert_eq!(
        parse_text(&format!("forward .{many}")).unwrap_err(),
        "Corefile:1: forward: more than 15 upstreams (16)"
    );
}

#[test]
fn matching_from_and_except() {
    let (f, _) = Forward::build(one(
        "forward example.org 192.0.2.1 {\n except skip.example.org\n}",
    ))
    .unwrap();
    let w = |n: &str| name_to_wire(n).unwrap();
    assert!(f.matches(&w("example.org.")));
    assert!(f.matches(&w("www.example.org.")));
    assert!(!f.matches(&w("skip.example.org.")));
    assert!(!f.matches(&w("a.skip.example.org.")));
    assert!(!f.matches(&w("example.net.")));
}

#[test]
fn policies_order_upstreams() {
    let text = |p: &str| format!("forward . 192.0.2.1 192.0.2.2 192.0.2.3 {{\n policy {p}\n}}");
    let (seq, _) = Forward::build(one(&text("sequential"))).unwrap();
    for _ in 0..5 {
        assert_eq!(&seq.order(3).0[..3], &[0, 1, 2]);
    }
    let (rr, _) = Forward::build(one(&text("round_robin"))).unwrap();
    let firsts: Vec<u8> = (0..6).map(|_| rr.order(3).0[0]).collect();
    assert_eq!(firsts, vec![0, 1, 2, 0, 1, 2]);
    let (random, _) = Forward::build(one(&text("random"))).unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let (o, n) = random.order(3);
        let mut sorted = o[..n].to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2], "a permutation");
        seen.insert(o[0]);
    }
    assert_eq!(seen.len(), 3, "random starts anywhere");
}

#[test]
fn adaptive_hedge_delay_is_bounded() {
    let (f, _) = Forward::build(one("forward . 192.0.2.1")).unwrap();
    let up = &f.upstreams.load()[0];
    assert_eq!(
        up.hedge_delay(Duration::from_secs(2)),
        Duration::from_secs(2),
        "no sample yet"
    );
    up.observe(Duration::from_micros(100));
    let t = up.hedge_delay(Duration::from_secs(2));
    assert!(
        t >= RTT_SLACK && t < RTT_SLACK + Duration::from_millis(10),
        "{t:?}"
    );
    for _ in 0..50 {
        up.observe(Duration::from_secs(3));
    }
    assert_eq!(
        up.hedge_delay(Duration::from_secs(2)),
        Duration::from_secs(2)
    );
}

#[test]
fn health_query_is_root_ns() {
    let q = health_query(".", true).unwrap();
    assert_eq!(q, vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1]);
    let q = health_query("example.org.", false).unwrap();
    assert_eq!(q[2], 0, "no_rec clears RD");
}

/// An upstream on loopback that answers every query with its own
/// question, NOERROR.
async fn echo_upstream() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        for _ in 0..1000 {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            buf[2] |= 0x80;
            let _ = sock.send_to(&buf[..n], peer).await;
        }
    });
    addr
}

/// Runs forward's network step for one query.
pub(super) async fn exchange(f: &Forward, name: &str) -> (Flow, crate::plugin::Reply) {
    let raw = crate::pkg::test::query(name, hickory_proto::rr::RecordType::A);
    let req = crate::request::Request::parse(
        &raw,
        crate::pkg::test::client(),
        crate::request::Transport::Udp,
    )
    .unwrap();
    let server = crate::plugin::ServerInfo {
        name: Arc::from("dns://:53"),
        zones: vec![".".into()],
        port: 53,
    };
    let mut reply = crate::plugin::Reply::new();
    let mut cx = Context {
        req: &req,
        server: &server,
        zone: &[0],
        reply: &mut reply,
        start: Instant::now(),
        next: crate::plugin::Next {
            chain: &crate::plugin::NoChain,
            at: 0,
        },
    };
    assert!(matches!(f.query(&mut cx), Flow::Upstream));
    let flow = f.forward(&mut cx).await;
    (flow, reply)
}

#[tokio::test]
async fn metrics_count_requests_responses_connections_and_rejects() {
    use crate::pkg::metrics::counter_value;
    let up = echo_upstream().await;
    let to = up.to_string();
    let (f, _) = Forward::build(one(&format!("forward . {up} {{\n max_concurrent 1\n}}"))).unwrap();
    let requests = || counter_value(&metrics::REQUESTS, &[&to]);
    let responses = || counter_value(&metrics::RESPONSES, &[&to, "NOERROR"]);
    let misses = || counter_value(&metrics::CONN_CACHE_MISSES, &["forward", &to, "udp"]);
    let hits = || counter_value(&metrics::CONN_CACHE_HITS, &["forward", &to, "udp"]);
    let observed = || {
        metrics::PROXY_DURATION
            .with_label_values(&["forward", &to, "NOERROR"])
            .get_sample_count()
    };
    let (flow, mut reply) = exchange(&f, "a.example.org.").await;
    assert!(matches!(flow, Flow::Answered));
    assert_eq!(reply.rcode(), ResponseCode::NoError);
    assert!(reply.finish().unwrap().len() > 12);
    assert_eq!(
        (requests(), responses(), misses(), hits(), observed()),
        (1, 1, 1, 0, 1)
    );
    // Each of the UDP pool's sockets opens once (a miss); after that, hits.
    for i in 0..UDP_SOCKETS {
        let (flow, _) = exchange(&f, &format!("b{i}.example.org.")).await;
        assert!(matches!(flow, Flow::Answered));
    }
    let n = 1 + UDP_SOCKETS as u64;
    assert_eq!((requests(), responses(), observed()), (n, n, n));
    assert!(
        misses() <= UDP_SOCKETS as u64 && hits() >= 1,
        "{} misses, {} hits",
        misses(),
        hits()
    );
    assert_eq!(misses() + hits(), n);
    // At max_concurrent: REFUSED, counted, upstream not asked.
    let rejects = metrics::MAX_CONCURRENT_REJECTS.get();
    f.concurrent.store(1, Ordering::Relaxed);
    let (flow, _) = exchange(&f, "c.example.org.").await;
    assert!(matches!(
        flow,
        Flow::Fail(
            ResponseCode::Refused,
            Some(PluginError::MaxConcurrent { max: 1, .. })
        )
    ));
    assert_eq!(metrics::MAX_CONCURRENT_REJECTS.get(), rejects + 1);
    assert_eq!(requests(), n);
    assert_eq!(
        f.concurrent.load(Ordering::Relaxed),
        1,
        "a rejected query gives its slot back"
    );
}

#[test]
fn metric_names_are_coredns_names() {
    // Touch every family so it registers, then read the registry.
    let _ = (
        &*metrics::PROXY_DURATION,
        &*metrics::PROXY_HC_FAILURES,
        &*metrics::CONN_CACHE_HITS,
    );
    let _ = (
        &*metrics::CONN_CACHE_MISSES,
        &*metrics::HEALTHCHECK_BROKEN,
        &*metrics::MAX_CONCURRENT_REJECTS,
    );
    let _ = (
        &*metrics::REQUESTS,
        &*metrics::RESPONSES,
        &*metrics::DURATION,
    );
    metrics::HEALTHCHECK_BROKEN.inc_by(0);
    let names: Vec<String> = crate::pkg::metrics::registry()
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    for want in [
        "coredns_forward_healthcheck_broken_total",
        "coredns_forward_max_concurrent_rejects_total",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    for n in &names {
        assert!(n.starts_with("coredns_"), "{n}");
    }
}

/// Every miss boxes this future: past 1 KiB, glibc serves it from its
/// slower bins (and sweeps its fast bins first), not from the per-thread
/// cache.
#[test]
fn a_forward_future_fits_mallocs_thread_cache() {
    let (f, _) = Forward::build(one("forward . 127.0.0.1:53")).unwrap();
    let raw = crate::pkg::test::query("a.example.org.", hickory_proto::rr::RecordType::A);
    let req = crate::request::Request::parse(
        &raw,
        crate::pkg::test::client(),
        crate::request::Transport::Udp,
    )
    .unwrap();
    let server = crate::plugin::ServerInfo {
        name: Arc::from("dns://:53"),
        zones: vec![".".into()],
        port: 53,
    };
    let mut reply = crate::plugin::Reply::new();
    let mut cx = Context {
        req: &req,
        server: &server,
        zone: &[0],
        reply: &mut reply,
        start: Instant::now(),
        next: crate::plugin::Next {
            chain: &crate::plugin::NoChain,
            at: 0,
        },
    };
    let size = size_of_val(&f.forward(&mut cx));
    assert!(size <= 1024, "forward's future takes {size} bytes");
}

#[tokio::test]
async fn a_full_pool_does_not_count_against_the_upstream() {
    // An upstream that never answers, behind a pool that takes one query.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let (f, _) = Forward::build(one(&format!("forward . {addr} {{\n max_fails 1\n}}"))).unwrap();
    let mut cfg = ProxyConfig::new(addr);
    cfg.max_in_flight = 1;
    let up = Up::new(Proxy::new(cfg), Scheme::Dns);
    f.upstreams.store(Arc::new(vec![Arc::clone(&up)]));
    let f = Arc::new(f);
    let held = {
        let f = Arc::clone(&f);
        tokio::spawn(async move { exchange(&f, "held.example.org.").await })
    };
    crate::pkg::test::wait_until(
        "the first query to take the slot",
        Duration::from_secs(5),
        || up.proxy.stats().in_flight == 1,
    )
    .await;
    // The second finds the pool full: SERVFAIL, and the upstream is
    // still healthy (no failure counted, no health check started).
    let (flow, _) = exchange(&f, "busy.example.org.").await;
    assert!(
        matches!(flow, Flow::Fail(ResponseCode::ServFail, _)),
        "{flow:?}"
    );
    assert_eq!(up.fails.load(Ordering::Relaxed), 0);
    assert!(!up.checking.load(Ordering::Relaxed));
    held.abort();
}

/// Set in the child process that [`running_out_of_descriptors_does_not_count_against_the_upstream`]
/// starts.
const EMFILE_CHILD: &str = "NODEDNS_TEST_EMFILE_CHILD";

#[test]
fn running_out_of_descriptors_does_not_count_against_the_upstream() {
    // The descriptor limit is per process: the test runs itself again in a
    // child, which lowers its own limit.
    if std::env::var_os(EMFILE_CHILD).is_some() {
        return emfile_child();
    }
    let name = "forward::tests::running_out_of_descriptors_does_not_count_against_the_upstream";
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(EMFILE_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn emfile_child() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for force_tcp in [false, true] {
            let opts = if force_tcp { "force_tcp\n" } else { "" };
            let (f, _) = Forward::build(one(&format!(
                "forward . 127.0.0.1:9 {{\n{opts} max_fails 1\n}}"
            )))
            .unwrap();
            let up = Arc::clone(&f.upstreams.load()[0]);
            // No descriptor can be opened from here on: the first socket
            // to the upstream fails with EMFILE.
            let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
            let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
            setrlimit(Resource::RLIMIT_NOFILE, 0, hard).unwrap();
            let (flow, _) = exchange(&f, "emfile.example.org.").await;
            setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
            let Flow::Fail(ResponseCode::ServFail, Some(PluginError::Upstream { source, .. })) =
                &flow
            else {
                panic!("{flow:?}");
            };
            let e = source
                .downcast_ref::<crate::pkg::proxy::ProxyError>()
                .unwrap();
            assert!(!e.is_network(), "force_tcp {force_tcp}: {e:?}");
            assert_eq!(up.fails.load(Ordering::Relaxed), 0, "force_tcp {force_tcp}");
            assert!(
                !up.checking.load(Ordering::Relaxed),
                "force_tcp {force_tcp}"
            );
        }
    });
}

/// A health-check loop dropped with the runtime that ran it (a server
/// thread's, whose listener a reload removed) leaves no upstream stuck
/// down: `checking` is cleared, and the next query that finds the
/// upstream down starts another loop.
#[test]
fn a_health_check_dropped_with_its_runtime_is_started_again() {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let silent = main
        .block_on(tokio::net::UdpSocket::bind("127.0.0.1:0"))
        .unwrap();
    let dead = silent.local_addr().unwrap();
    let good = main.block_on(echo_upstream());
    let (f, _) = Forward::build(one(&format!(
        "forward . {dead} {good} {{\n max_fails 1\n policy sequential\n read_timeout 100ms\n health_check 1h\n}}"
    )))
    .unwrap();
    let down = Arc::clone(&f.upstreams.load()[0]);
    // A query on a runtime of its own: the dead upstream fails it over,
    // and its health check starts there.
    let thread = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (flow, _) = thread.block_on(exchange(&f, "a.example.org."));
    assert!(matches!(flow, Flow::Answered), "{flow:?}");
    assert!(down.down(1));
    assert!(down.checking.load(Ordering::Acquire), "a check runs");
    // That runtime ends, and the loop with it.
    drop(thread);
    assert!(
        !down.checking.load(Ordering::Acquire),
        "the dropped loop says so"
    );
    // The next query skips the down upstream and starts another loop.
    main.block_on(async {
        let (flow, _) = exchange(&f, "b.example.org.").await;
        assert!(matches!(flow, Flow::Answered), "{flow:?}");
    });
    assert!(down.checking.load(Ordering::Acquire), "checked again");
    assert!(down.down(1), "still down: the check got no reply");
}

// === carried and shared upstreams ===

/// Builds `text`'s forward(s) as a configuration would: taking from
/// `carry_in`, keeping in (and sharing through) the returned carry.
fn build_all_carried(text: &str, carry_in: &mut Carry) -> (Vec<Forward>, Carry) {
    let mut kept = Carry::default();
    let fwds = parse_text(text)
        .unwrap()
        .into_iter()
        .map(|cfg| Forward::build_carried(cfg, carry_in, &mut kept).unwrap().0)
        .collect();
    (fwds, kept)
}

fn ups(f: &Forward) -> Vec<Arc<Up>> {
    f.upstreams.load().iter().cloned().collect()
}

#[test]
fn an_upstream_whose_pool_settings_did_not_change_is_carried_with_its_state() {
    let text = "forward . 192.0.2.1 192.0.2.2 {\n expire 30s\n policy sequential\n}";
    let (old, kept) = build_all_carried(text, &mut Carry::default());
    let before = ups(&old[0]);
    before[0].fails.store(3, Ordering::Relaxed);
    before[0].observe(Duration::from_millis(7));
    // Other settings of the forward change; the pools' do not.
    let changed = "forward . 192.0.2.2 192.0.2.1 {\n expire 30s\n policy random\n max_fails 5\n}";
    let (new, _) = build_all_carried(changed, &mut kept.clone());
    let after = ups(&new[0]);
    assert!(Arc::ptr_eq(&after[1], &before[0]), "192.0.2.1 kept its Up");
    assert!(Arc::ptr_eq(&after[0], &before[1]), "192.0.2.2 kept its Up");
    assert_eq!(after[1].fails.load(Ordering::Relaxed), 3, "fails carried");
    assert_eq!(
        after[1].srtt_us.load(Ordering::Relaxed),
        7000,
        "RTT carried"
    );
}

#[test]
fn a_changed_pool_setting_or_address_gets_a_fresh_upstream() {
    let (old, kept) = build_all_carried("forward . 192.0.2.1", &mut Carry::default());
    let before = ups(&old[0]).remove(0);
    for text in [
        "forward . 192.0.2.1 {\n expire 20s\n}",
        "forward . 192.0.2.1 {\n max_age 1m\n}",
        "forward . 192.0.2.1 {\n max_idle_conns 2\n}",
        "forward . 192.0.2.1 {\n source_address 127.0.0.1\n}",
        "forward . 192.0.2.1:5353",
        "forward . 192.0.2.9",
    ] {
        let (new, _) = build_all_carried(text, &mut kept.clone());
        assert!(
            !Arc::ptr_eq(&ups(&new[0])[0], &before),
            "{text}: a fresh pool"
        );
    }
    // And the same text again keeps it (the copies above changed nothing).
    let (new, _) = build_all_carried("forward . 192.0.2.1", &mut kept.clone());
    assert!(Arc::ptr_eq(&ups(&new[0])[0], &before));
}

#[test]
fn plain_and_tls_to_one_address_are_different_upstreams() {
    let plain = PoolKey::new(
        &Builder {
            cfg: one("forward . 192.0.2.1:853"),
            tls: None,
            tls_files: 0,
        },
        "192.0.2.1:853".parse().unwrap(),
        Scheme::Dns,
        None,
    );
    let b = Builder {
        cfg: one("forward . tls://192.0.2.1"),
        tls: None,
        tls_files: 0,
    };
    let addr = "192.0.2.1:853".parse().unwrap();
    let tls = PoolKey::new(&b, addr, Scheme::Tls, None);
    let named = PoolKey::new(&b, addr, Scheme::Tls, Some("dns.example.org"));
    let other_files = PoolKey::new(
        &Builder {
            tls_files: 1,
            ..b.clone()
        },
        addr,
        Scheme::Tls,
        None,
    );
    let keys = [&plain.0, &tls.0, &named.0, &other_files.0];
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn forwards_that_name_one_upstream_share_it() {
    // Two forward lines (as two blocks would): one Up for 192.0.2.1.
    let text =
        "forward example.org 192.0.2.1 192.0.2.2\nforward . 192.0.2.1 {\n policy sequential\n}";
    let (fwds, kept) = build_all_carried(text, &mut Carry::default());
    let (a, b) = (ups(&fwds[0]), ups(&fwds[1]));
    assert!(Arc::ptr_eq(&a[0], &b[0]), "shared within a configuration");
    assert_eq!(kept.len(), 2, "kept once each: {kept:?}");
    // And carried as one over a reload.
    let (again, _) = build_all_carried(text, &mut kept.clone());
    assert!(Arc::ptr_eq(&ups(&again[1])[0], &a[0]));
    assert!(Arc::ptr_eq(&ups(&again[0])[0], &a[0]));
    // With other pool settings, the second forward gets its own.
    let text = "forward example.org 192.0.2.1\nforward . 192.0.2.1 {\n expire 1m\n}";
    let (fwds, _) = build_all_carried(text, &mut Carry::default());
    assert!(!Arc::ptr_eq(&ups(&fwds[0])[0], &ups(&fwds[1])[0]));
}

#[test]
fn nothing_keeps_an_upstream_alive_but_a_forward_that_uses_it() {
    let (old, kept) = build_all_carried("forward . 192.0.2.1", &mut Carry::default());
    let weak = Arc::downgrade(&ups(&old[0])[0]);
    // A dry run takes from a copy and is dropped: the running one still
    // holds it.
    drop(build_all_carried("forward . 192.0.2.1", &mut kept.clone()));
    assert!(weak.upgrade().is_some());
    // The running config goes (its upstream is gone from the new one):
    // the pool goes with it, though the carry is still around.
    drop(old);
    assert!(weak.upgrade().is_none(), "closed with the config");
    let (new, _) = build_all_carried("forward . 192.0.2.1", &mut kept.clone());
    assert_eq!(ups(&new[0]).len(), 1, "a fresh one");
}

#[tokio::test]
async fn inspect_shows_health_fails_rtt_and_what_is_open() {
    let up = echo_upstream().await;
    let (f, _) = Forward::build(one(&format!(
        "forward . {up} tls://192.0.2.1 {{\n max_fails 2\n tls_servername dns.example.org\n}}"
    )))
    .unwrap_or_else(|e| {
        // No system roots in this environment: plain only.
        assert!(e.contains("root"), "{e}");
        Forward::build(one(&format!("forward . {up} {{\n max_fails 2\n}}"))).unwrap()
    });
    let inspect = f.inspect();
    let states = inspect.upstreams();
    assert_eq!(states[0].address, up.to_string());
    if let Some(tls) = states.get(1) {
        assert_eq!(tls.address, "tls://192.0.2.1:853");
    }
    assert_eq!(
        (
            states[0].healthy,
            states[0].fails,
            states[0].rtt,
            states[0].pooled
        ),
        (true, 0, Duration::ZERO, 0),
        "nothing open before the first query"
    );
    // One query through the first upstream opens one UDP socket.
    let first = ups(&f)[0].clone();
    first
        .proxy
        .exchange(
            &crate::pkg::test::query("a.example.org.", hickory_proto::rr::RecordType::A),
            Proto::Udp,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    first.observe(Duration::from_micros(1500));
    let s = &inspect.upstreams()[0];
    assert_eq!((s.healthy, s.pooled), (true, 1));
    assert_eq!(s.rtt, Duration::from_micros(1500));
    // Failures: consecutive count, down at max_fails.
    first.fails.store(1, Ordering::Relaxed);
    let s = &inspect.upstreams()[0];
    assert_eq!((s.healthy, s.fails), (true, 1));
    first.fails.store(2, Ordering::Relaxed);
    let s = &inspect.upstreams()[0];
    assert_eq!((s.healthy, s.fails), (false, 2));
    // The view keeps nothing alive.
    let weak = Arc::downgrade(&first);
    drop((first, f));
    assert!(weak.upgrade().is_none(), "the pool closed with the forward");
    assert!(inspect.upstreams().is_empty());
}

#[test]
fn setup_carries_upstreams_and_lists_them_for_the_admin_plane() {
    use crate::setup::{BlockInfo, BlockSetup, Controller, Services};
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, "forward . 192.0.2.1").unwrap();
    let block = BlockInfo {
        zones: vec![".".into()],
        port: 53,
        server_name: Arc::from("dns://:53"),
        bound: Arc::default(),
    };
    let run = |carry_in: Carry| {
        let mut services = Services {
            carry_in,
            ..Services::default()
        };
        let mut out = BlockSetup::default();
        setup(&mut Controller {
            d: Dispenser::new("forward", &tokens),
            block: &block,
            out: &mut out,
            services: &mut services,
        })
        .unwrap();
        (out, services)
    };
    let (_old, first) = run(Carry::default());
    assert_eq!(first.upstreams.len(), 1);
    assert_eq!(first.upstreams[0].upstreams()[0].address, "192.0.2.1:53");
    assert_eq!(first.carry_out.len(), 1, "kept for the next config");
    let (_new, second) = run(first.carry_out.clone());
    assert_eq!(second.carry_out.len(), 1);
}
