//! Node-local mode on loopback: handover between two agents under load,
//! the refusal of a second agent on a served address, the cache snapshot,
//! DNS-level health, and node-cache's Corefile template. The parts that
//! need addresses and packet filters run in network namespaces
//! (`nodelocal_netns.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, RecordType};
use nix::sys::signal::Signal;
use nodedns_tests::client::query_class;
use nodedns_tests::load::{Streamed, udp_stream};
use nodedns_tests::{Agent, Client, FakeUpstream, free_ports, http_get, wait_until};

/// Names warmed before a rollout.
const WARM: usize = 200;

fn name(i: usize) -> String {
    format!("n{i}.example.org.")
}

async fn upstream_with_names() -> FakeUpstream {
    let mut b = FakeUpstream::builder().ttl(600);
    for i in 0..WARM {
        b = b.a(&name(i), &format!("192.0.2.{}", i % 250 + 1));
    }
    b.start().await
}

fn handover_dir() -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nodedns-handover-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("handover dir");
    dir
}

/// An agent on `corefile` with a handover socket at `sock`.
fn with_handover(corefile: String, sock: &std::path::Path) -> nodedns_tests::agent::AgentBuilder {
    Agent::corefile(corefile)
        .arg("--handover-socket")
        .arg(sock.display().to_string())
}

fn corefile(port: u16, health: u16, up: &FakeUpstream) -> String {
    format!(
        ".:{port} {{\n    bind 127.0.0.1\n    health 127.0.0.1:{health}\n    cache 600\n    forward . {up}\n}}\n"
    )
}

#[tokio::test]
async fn a_rollout_through_the_handover_socket_loses_no_query_and_starts_warm() {
    let up = upstream_with_names().await;
    let [port, health] = free_ports::<2>();
    let dir = handover_dir();
    let sock = dir.join("handover.sock");
    let old = with_handover(corefile(port, health, &up), &sock)
        .start()
        .await;
    let server = old.udp();
    let c = Client::new(server);
    for i in 0..WARM {
        assert_eq!(c.udp(&name(i), RecordType::A).await.answers.len(), 1);
    }
    let asked: usize = (0..WARM).map(|i| up.count(&name(i), RecordType::A)).sum();
    assert_eq!(asked, WARM);

    let stop = Arc::new(AtomicBool::new(false));
    let load = udp_stream(server, 3000, stop.clone(), None, |i| name(i % WARM));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The new agent starts beside the old one and takes over.
    let new = with_handover(corefile(port, health, &up), &sock)
        .start()
        .await;
    assert!(
        old.wait_stdout("handed over", Duration::from_secs(10))
            .await,
        "the old agent never released: {:?}",
        old.stderr()
    );
    // Health on the shared port is the new agent's.
    assert_eq!(
        http_get(SocketAddr::from(([127, 0, 0, 1], health)), "/health")
            .await
            .map(|r| r.0),
        Some(200)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut old = old;
    old.signal(Signal::SIGTERM);
    let status = old
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("old agent exits");
    assert!(status.success(), "{status}");
    // Half a second more of queries with only the new agent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let Streamed {
        sent,
        answered,
        failed,
    } = load.join().expect("load thread");
    assert!(sent > 2000, "the stream sent only {sent}");
    assert_eq!(answered, sent, "queries lost during the rollout");
    assert_eq!(failed, 0, "error answers during the rollout");
    // The new agent answered from the cache it was handed: the upstream
    // saw no warmed name again.
    let asked: usize = (0..WARM).map(|i| up.count(&name(i), RecordType::A)).sum();
    assert_eq!(asked, WARM, "the new agent's answers went upstream");
    let c = Client::new(new.udp());
    assert_eq!(c.udp(&name(7), RecordType::A).await.answers.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_second_agent_on_a_served_address_is_refused_unless_it_takes_over() {
    let up = upstream_with_names().await;
    let [port, health] = free_ports::<2>();
    let first = Agent::corefile(corefile(port, health, &up)).start().await;
    // Another health port: the refusal must come from the DNS address.
    let [other_health] = free_ports::<1>();
    let (status, stderr) = Agent::corefile(corefile(port, other_health, &up))
        .start_fails()
        .await;
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "127.0.0.1:{port} (udp) is already served by another process"
        )) && stderr.contains("--handover-socket"),
        "{stderr}"
    );
    // The first agent still answers alone.
    let c = Client::new(first.udp());
    assert_eq!(c.udp(&name(1), RecordType::A).await.answers.len(), 1);
    // A handover socket nobody listens on does not make sharing legal.
    let dir = handover_dir();
    let (status, stderr) = Agent::corefile(corefile(port, other_health, &up))
        .arg("--handover-socket")
        .arg(dir.join("none.sock").display().to_string())
        .start_fails()
        .await;
    assert!(!status.success());
    assert!(
        stderr.contains("already served by another process"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_new_agent_that_fails_leaves_the_old_one_serving() {
    let up = upstream_with_names().await;
    let [port, health] = free_ports::<2>();
    let dir = handover_dir();
    let sock = dir.join("handover.sock");
    let old = with_handover(corefile(port, health, &up), &sock)
        .start()
        .await;
    // The successor's Corefile names an address it cannot bind (a port
    // this test holds without SO_REUSEPORT): it takes the sockets, fails,
    // and the old agent goes on.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = held.local_addr().expect("addr").port();
    let bad = format!(
        "{}\n.:{busy} {{\n    bind 127.0.0.1\n    whoami\n}}\n",
        corefile(port, health, &up)
    );
    let (status, _stderr) = Agent::corefile(bad)
        .arg("--handover-socket")
        .arg(sock.display().to_string())
        .start_fails()
        .await;
    assert!(!status.success());
    assert!(
        wait_until(Duration::from_secs(5), || {
            let seen = old
                .stderr()
                .iter()
                .any(|l| l.contains("went away before serving"));
            async move { seen }
        })
        .await,
        "{:?}",
        old.stderr()
    );
    let c = Client::new(old.udp());
    for i in 0..20 {
        assert_eq!(c.udp(&name(i), RecordType::A).await.answers.len(), 1);
    }
    assert!(!old.stdout().iter().any(|l| l.contains("handed over")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn cache_snapshot_makes_a_restart_warm() {
    let up = upstream_with_names().await;
    let [port, health] = free_ports::<2>();
    let dir = handover_dir();
    let snap = dir.join("cache.snap");
    let mut first = Agent::corefile(corefile(port, health, &up))
        .arg("--cache-snapshot")
        .arg(snap.display().to_string())
        .start()
        .await;
    let c = Client::new(first.udp());
    for i in 0..50 {
        assert_eq!(c.udp(&name(i), RecordType::A).await.answers.len(), 1);
    }
    first.signal(Signal::SIGTERM);
    assert!(
        first
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("exits")
            .success()
    );
    assert!(snap.is_file(), "no snapshot written at exit");
    let second = Agent::corefile(corefile(port, health, &up))
        .arg("--cache-snapshot")
        .arg(snap.display().to_string())
        .start()
        .await;
    let c = Client::new(second.udp());
    for i in 0..50 {
        let m = c.udp(&name(i), RecordType::A).await;
        assert_eq!(m.answers.len(), 1);
        assert!(
            m.answers[0].ttl < 600,
            "a TTL counted down: {}",
            m.answers[0].ttl
        );
    }
    let asked: usize = (0..50).map(|i| up.count(&name(i), RecordType::A)).sum();
    assert_eq!(
        asked, 50,
        "the restarted agent went upstream for warmed names"
    );
    // A corrupt snapshot is refused (logged), not half loaded, and the
    // agent starts cold.
    drop(second);
    std::fs::write(&snap, b"not a snapshot").expect("write");
    let third = Agent::corefile(corefile(port, health, &up))
        .arg("--cache-snapshot")
        .arg(snap.display().to_string())
        .start()
        .await;
    assert!(
        third
            .stderr()
            .iter()
            .any(|l| l.contains("cache snapshot not loaded")),
        "{:?}",
        third.stderr()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn health_answers_200_only_while_the_dns_listeners_answer() {
    let up = upstream_with_names().await;
    let [port, health] = free_ports::<2>();
    let agent = Agent::corefile(corefile(port, health, &up))
        .arg("--max-tcp-conns")
        .arg("1")
        .start()
        .await;
    let h = SocketAddr::from(([127, 0, 0, 1], health));
    assert_eq!(http_get(h, "/health").await.map(|r| r.0), Some(200));
    // The probe is answered by the listener itself, over UDP and TCP.
    let c = Client::new(agent.udp());
    let probe = query_class("probe.nodedns.invalid.", RecordType::TXT, DNSClass::CH);
    assert_eq!(
        c.udp_msg(&probe).await.metadata.response_code,
        ResponseCode::NoError
    );
    assert_eq!(
        c.tcp_msg(&probe).await.metadata.response_code,
        ResponseCode::NoError
    );
    // Upstream down: still healthy (the check is the agent's own).
    drop(up);
    assert_eq!(http_get(h, "/health").await.map(|r| r.0), Some(200));
    // The one TCP connection allowed is taken: the TCP listener no longer
    // answers a new client, and health says so.
    let _held = c.connect().await;
    let unhealthy = wait_until(Duration::from_secs(5), || async {
        matches!(http_get(h, "/health").await, Some((503, body)) if body.contains(&format!("tcp 127.0.0.1:{port}")))
    })
    .await;
    assert!(unhealthy, "{:?}", http_get(h, "/health").await);
    drop(_held);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            http_get(h, "/health").await.map(|r| r.0) == Some(200)
        })
        .await
    );
}

/// node-cache's template: the base Corefile filled from flags and env at
/// start, and again when the kube-dns ConfigMap changes.
#[tokio::test]
async fn the_base_corefile_is_filled_from_flags_env_and_the_configmap() {
    let cluster = FakeUpstream::builder()
        .a("svc.cluster.local.", "10.0.0.1")
        .start()
        .await;
    let stub = FakeUpstream::builder()
        .a("www.acme.local.", "10.9.9.9")
        .start()
        .await;
    let [port, health, metrics] = free_ports::<3>();
    let base = format!(
        "cluster.local:{port} {{\n    bind __PILLAR__LOCAL__DNS__\n    health 127.0.0.1:{health}\n    forward . __PILLAR__CLUSTER__DNS__:{} {{\n        force_tcp\n    }}\n}}\n__PILLAR__DNS__SERVER__.:{port} {{\n    bind __PILLAR__LOCAL__DNS__\n    forward . __PILLAR__UPSTREAM__SERVERS__\n}}\n",
        cluster.addr.port()
    );
    let dir = handover_dir();
    std::fs::create_dir_all(dir.join("kube-dns")).expect("cm dir");
    let agent = Agent::corefile("")
        .file("Corefile.base", base)
        .env("KUBE_DNS_UPSTREAM_SERVICE_HOST", "127.0.0.1")
        .arg("-localip")
        .arg("127.0.0.1")
        .arg("-setupinterface=false")
        .arg("-setupiptables=false")
        .arg("-upstreamsvc")
        .arg("kube-dns-upstream")
        .arg("-basecorefile")
        .arg("Corefile.base")
        .arg("-kubednscm")
        .arg(dir.join("kube-dns").display().to_string())
        .arg("-metrics-listen-address")
        .arg(format!("127.0.0.1:{metrics}"))
        .arg("-dns.port")
        .arg(port.to_string())
        .start()
        .await;
    let written = std::fs::read_to_string(agent.path("Corefile")).expect("written Corefile");
    assert!(!written.contains("__PILLAR__"), "{written}");
    assert!(written.contains("forward . /etc/resolv.conf"), "{written}");
    let c = Client::new(SocketAddr::from(([127, 0, 0, 1], port)));
    let m = c.udp("svc.cluster.local.", RecordType::A).await;
    assert_eq!(m.answers.len(), 1, "{m:?}");
    assert!(
        cluster.tcp_queries() >= 1,
        "force_tcp kept for the cluster zone"
    );
    // A stub domain appears in the ConfigMap: a block is added and served.
    std::fs::write(
        dir.join("kube-dns").join("stubDomains"),
        format!(r#"{{"acme.local": ["{}"]}}"#, stub.addr),
    )
    .expect("write cm");
    let served = wait_until(Duration::from_secs(10), || async {
        c.udp("www.acme.local.", RecordType::A).await.answers.len() == 1
    })
    .await;
    assert!(served, "{:?}", agent.stderr());
    // A broken ConfigMap changes nothing and is counted.
    std::fs::write(dir.join("kube-dns").join("stubDomains"), "{").expect("write cm");
    let counted = wait_until(Duration::from_secs(10), || async {
        http_get(SocketAddr::from(([127, 0, 0, 1], metrics)), "/metrics")
            .await
            .is_some_and(|(_, body)| {
                body.lines().any(|l| {
                    l.starts_with("coredns_nodecache_setup_errors_total{errortype=\"configmap\"}")
                        && !l.ends_with(" 0")
                })
            })
    })
    .await;
    let nodecache: Vec<String> = http_get(SocketAddr::from(([127, 0, 0, 1], metrics)), "/metrics")
        .await
        .map(|(_, body)| {
            body.lines()
                .filter(|l| l.contains("nodecache"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    assert!(counted, "{nodecache:?}");
    assert_eq!(
        c.udp("www.acme.local.", RecordType::A).await.answers.len(),
        1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unset_service_env_is_a_clear_start_error() {
    let [port] = free_ports::<1>();
    let (status, stderr) = Agent::corefile("")
        .file(
            "Corefile.base",
            format!(".:{port} {{\n    forward . __PILLAR__CLUSTER__DNS__\n}}\n"),
        )
        .arg("-localip")
        .arg("127.0.0.1")
        .arg("-setupinterface=false")
        .arg("-setupiptables=false")
        .arg("-upstreamsvc")
        .arg("no-such-svc")
        .arg("-basecorefile")
        .arg("Corefile.base")
        .arg("-metrics-listen-address=")
        .start_fails()
        .await;
    assert!(!status.success());
    assert!(
        stderr.contains("env NO_SUCH_SVC_SERVICE_HOST is not set"),
        "{stderr}"
    );
}
