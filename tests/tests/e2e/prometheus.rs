//! *prometheus*: `/metrics` on the real binary, fed by cache and forward
//! queries, shared between blocks, and kept over a reload (issue #10,
//! point 3).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nix::sys::signal::Signal;
use nodedns_tests::{Agent, Client, FakeUpstream, http_get, http_status, wait_until};

/// The sum of every series of `family` in a scrape (`None` if absent).
fn total(body: &str, family: &str) -> Option<f64> {
    let mut sum = None;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(family) else {
            continue;
        };
        let value = if rest.starts_with('{') {
            rest.rsplit_once("} ").map(|(_, v)| v)
        } else {
            rest.strip_prefix(' ')
        };
        if let Some(v) = value.and_then(|v| v.trim().parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// A scrape of the agent's `/metrics`.
async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await.expect("metrics answer");
    assert_eq!(status, 200, "{body}");
    body
}

async fn reloaded(agent: &Agent, n: usize) -> bool {
    wait_until(Duration::from_secs(10), || async {
        agent
            .stdout()
            .iter()
            .filter(|l| l.as_str() == "nodedns reloaded")
            .count()
            >= n
    })
    .await
}

fn cached(upstream: &FakeUpstream, ttl: u32, extra: &str) -> String {
    format!(
        ".:0 {{\n    bind 127.0.0.1\n    cache {ttl}\n    forward . {upstream}\n    prometheus 127.0.0.1:0\n}}\n{extra}"
    )
}

#[tokio::test]
async fn metrics_count_cache_and_forward_and_describe_the_process() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = Agent::corefile(cached(&up, 30, "")).start().await;
    let c = Client::new(agent.udp());
    for _ in 0..3 {
        let m = c.udp("www.example.org.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    assert_eq!(up.count("www.example.org.", RecordType::A), 1, "cached");
    let body = scrape(agent.http("prometheus")).await;
    let requests = total(&body, "coredns_cache_requests_total").unwrap_or(0.0);
    assert!(requests >= 3.0, "{body}");
    let misses = total(&body, "coredns_cache_misses_total").unwrap_or(0.0);
    assert!(misses >= 1.0, "{body}");
    assert!(total(&body, "coredns_cache_hits_total").unwrap_or(0.0) >= 2.0);
    assert!(total(&body, "coredns_forward_requests_total").unwrap_or(0.0) >= 1.0);
    assert!(
        body.contains("coredns_build_info{goversion=\"rust\""),
        "{body}"
    );
    assert_eq!(total(&body, "coredns_build_info"), Some(1.0));
    assert!(
        body.contains(
            "coredns_plugin_enabled{name=\"cache\",server=\"dns://:0\",view=\"\",zone=\".\"} 1"
        ),
        "{body}"
    );
    assert!(total(&body, "process_resident_memory_bytes").unwrap_or(0.0) > 0.0);
    assert!(total(&body, "process_open_fds").unwrap_or(0.0) >= 1.0);
    assert!(total(&body, "process_cpu_seconds_total").is_some());
    assert!(total(&body, "process_start_time_seconds").unwrap_or(0.0) > 1e9);
    // Only /metrics is served.
    assert_eq!(http_status(agent.http("prometheus"), "/").await, Some(404));
    assert_eq!(
        http_status(agent.http("prometheus"), "/health").await,
        Some(404)
    );
}

#[tokio::test]
async fn blocks_naming_one_address_share_one_endpoint() {
    let text = ".:0 {\n    bind 127.0.0.1\n    whoami\n    prometheus 127.0.0.1:0\n}\n\
                example.org:0 {\n    bind 127.0.0.1\n    whoami\n    prometheus 127.0.0.1:0\n}\n";
    let agent = Agent::corefile(text).start().await;
    let announced = agent
        .listening
        .iter()
        .filter(|(t, _)| t == "http/prometheus")
        .count();
    assert_eq!(announced, 1, "{:?}", agent.listening);
    let body = scrape(agent.http("prometheus")).await;
    for zone in [".", "example.org."] {
        let series = format!(
            "coredns_plugin_enabled{{name=\"prometheus\",server=\"dns://:0\",view=\"\",zone=\"{zone}\"}} 1"
        );
        assert!(body.contains(&series), "{series} in {body}");
    }
}

/// The registry is process-wide: a reload that changes the Corefile (and
/// replaces the cache) keeps every counter's value, and the endpoint,
/// whose address did not change, keeps serving where it was.
#[tokio::test]
async fn a_reload_keeps_the_series() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = Agent::corefile(cached(&up, 30, "")).start().await;
    let metrics = agent.http("prometheus");
    let c = Client::new(agent.udp());
    for _ in 0..4 {
        c.udp("www.example.org.", RecordType::A).await;
    }
    let before = scrape(metrics).await;
    let requests = total(&before, "coredns_cache_requests_total").unwrap_or(0.0);
    let misses = total(&before, "coredns_cache_misses_total").unwrap_or(0.0);
    assert!(requests >= 4.0 && misses >= 1.0, "{before}");

    // A new cache line (so a fresh store) and a new block.
    let extra = "example.net:0 {\n    bind 127.0.0.1\n    whoami\n}\n";
    std::fs::write(agent.path("Corefile"), cached(&up, 60, extra)).unwrap();
    agent.signal(Signal::SIGUSR1);
    assert!(reloaded(&agent, 1).await, "stdout: {:?}", agent.stdout());
    let after = scrape(metrics).await;
    assert!(
        total(&after, "coredns_cache_requests_total").unwrap_or(0.0) >= requests,
        "reset by the reload: {after}"
    );
    assert!(total(&after, "coredns_cache_misses_total").unwrap_or(0.0) >= misses);
    assert!(
        after.contains("zone=\"example.net.\""),
        "plugin_enabled follows the new config: {after}"
    );
    // And they go on counting from there.
    c.udp("www.example.org.", RecordType::A).await;
    let counted = wait_until(Duration::from_secs(5), || async {
        let now = scrape(metrics).await;
        total(&now, "coredns_cache_requests_total").unwrap_or(0.0) > requests
    })
    .await;
    assert!(counted, "the counter goes on from its value");
}

/// A reload that moves the endpoint announces the new address and closes
/// the old one.
#[tokio::test]
async fn a_reload_moves_the_endpoint() {
    let text = |port: u16| {
        format!(".:0 {{\n    bind 127.0.0.1\n    whoami\n    prometheus 127.0.0.1:{port}\n}}\n")
    };
    let (p1, p2) = (nodedns_tests::free_port(), nodedns_tests::free_port());
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let agent = Agent::corefile(text(p1)).start().await;
    assert_eq!(http_status(at(p1), "/metrics").await, Some(200));
    std::fs::write(agent.path("Corefile"), text(p2)).unwrap();
    agent.signal(Signal::SIGUSR1);
    assert!(reloaded(&agent, 1).await, "stdout: {:?}", agent.stdout());
    assert!(
        agent.stdout().contains(&format!(
            "listening transport=http service=prometheus addr=127.0.0.1:{p2}"
        )),
        "{:?}",
        agent.stdout()
    );
    assert_eq!(http_status(at(p2), "/metrics").await, Some(200));
    let closed = wait_until(Duration::from_secs(5), || async {
        http_status(at(p1), "/metrics").await.is_none()
    })
    .await;
    assert!(closed, "the old address is closed");
}

/// NodeLocal DNSCache's Corefile (tests/corefiles/nodelocaldns.Corefile),
/// which nodedns refused only for `prometheus`, runs with its addresses
/// moved to loopback: its four blocks share one metrics endpoint.
#[tokio::test]
async fn the_nodelocaldns_corefile_runs() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .a("kube-dns.kube-system.svc.cluster.local.", "10.96.0.10")
        .start()
        .await;
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corefiles/nodelocaldns.Corefile");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(":53 {", ":0 {")
        .replace("bind 169.254.20.10 10.96.0.10", "bind 127.0.0.1")
        .replace("__PILLAR__CLUSTER__DNS__", &up.to_string())
        .replace("__PILLAR__UPSTREAM__SERVERS__", &up.to_string())
        .replace("prometheus :9253", "prometheus 127.0.0.1:0")
        .replace("health 169.254.20.10:8080", "health 127.0.0.1:0");
    let agent = Agent::corefile(text).start().await;
    let announced = agent
        .listening
        .iter()
        .filter(|(t, _)| t == "http/prometheus")
        .count();
    assert_eq!(announced, 1, "{:?}", agent.listening);
    let c = Client::new(agent.udp());
    for name in [
        "www.example.org.",
        "kube-dns.kube-system.svc.cluster.local.",
    ] {
        let m = c.udp(name, RecordType::A).await;
        assert_eq!(m.answers.len(), 1, "{name}: {m:?}");
    }
    let body = scrape(agent.http("prometheus")).await;
    for zone in ["cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."] {
        assert!(
            body.contains(&format!(
                "name=\"forward\",server=\"dns://:0\",view=\"\",zone=\"{zone}\""
            )),
            "{zone}: {body}"
        );
    }
    assert!(
        total(&body, "coredns_cache_misses_total").unwrap_or(0.0) >= 2.0,
        "{body}"
    );
    assert_eq!(
        http_status(agent.http("health"), "/health").await,
        Some(200)
    );
}
