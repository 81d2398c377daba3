//! *prometheus*: `/metrics` on the real binary, fed by cache and forward
//! queries, shared between blocks, and kept over a reload (issue #10,
//! point 3); every family issue #10 lists, read with a Prometheus
//! text-format parser.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nix::sys::signal::Signal;
use nodedns_tests::client::{query, with_edns};
use nodedns_tests::{Agent, Client, FakeUpstream, http_get, http_status, wait_until};
use prometheus_parse::{Sample, Scrape, Value};

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
    let queries = total(&before, "coredns_dns_requests_total").unwrap_or(0.0);
    let replies = total(&before, "coredns_dns_responses_total").unwrap_or(0.0);
    assert!(queries >= 4.0 && replies >= 4.0, "{before}");

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
        total(&after, "coredns_dns_requests_total").unwrap_or(0.0) >= queries,
        "reset by the reload: {after}"
    );
    assert!(total(&after, "coredns_dns_responses_total").unwrap_or(0.0) >= replies);
    assert!(
        after.contains("zone=\"example.net.\""),
        "plugin_enabled follows the new config: {after}"
    );
    // And they go on counting from there.
    c.udp("www.example.org.", RecordType::A).await;
    let counted = wait_until(Duration::from_secs(5), || async {
        let now = scrape(metrics).await;
        total(&now, "coredns_cache_requests_total").unwrap_or(0.0) > requests
            && total(&now, "coredns_dns_requests_total").unwrap_or(0.0) > queries
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
    let [p1, p2] = nodedns_tests::free_ports();
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

// === every family of issue #10, parsed ===

/// A scrape, parsed as Prometheus parses it.
async fn parsed(addr: SocketAddr) -> Scrape {
    let body = scrape(addr).await;
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("the text format parses")
}

/// The samples of `name` (a histogram's buckets come as one sample per series).
fn series<'a>(s: &'a Scrape, name: &str) -> Vec<&'a Sample> {
    s.samples.iter().filter(|x| x.metric == name).collect()
}

/// A sample's value (a histogram's: its +Inf bucket, the count).
fn value(x: &Sample) -> f64 {
    match &x.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(b) => b
            .iter()
            .find(|c| c.less_than.is_infinite())
            .map_or(0.0, |c| c.count),
        Value::Summary(_) => f64::NAN,
    }
}

/// The sum of `name`'s series whose labels include `with`.
fn sum(s: &Scrape, name: &str, with: &[(&str, &str)]) -> f64 {
    series(s, name)
        .into_iter()
        .filter(|x| with.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(value)
        .sum()
}

/// Asserts `name` is exported, every series with exactly `labels`.
fn has_family(s: &Scrape, name: &str, labels: &[&str]) {
    let all = series(s, name);
    assert!(!all.is_empty(), "{name} is exported");
    let want: BTreeSet<&str> = labels.iter().copied().collect();
    for x in all {
        let got: BTreeSet<&str> = x.labels.keys().map(String::as_str).collect();
        assert_eq!(got, want, "{name}'s labels");
    }
}

const DNS_LABELS: [&str; 3] = ["server", "zone", "view"];

/// Issue #10's families, after UDP and TCP traffic (misses, hits,
/// NXDOMAIN, a DO query) through cache and forward, with health running:
/// each is exported with CoreDNS's labels and values that add up.
#[tokio::test]
async fn every_family_of_issue_10_is_exported_with_its_labels() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let corefile = format!(
        ".:0 {{\n    bind 127.0.0.1\n    cache 30\n    forward . {up}\n    prometheus 127.0.0.1:0\n    health 127.0.0.1:0\n}}\n"
    );
    let agent = Agent::corefile(corefile).start().await;
    let metrics = agent.http("prometheus");
    let c = Client::new(agent.udp());
    // UDP: a miss, two hits, an NXDOMAIN (a miss), a DO query (a miss:
    // DO is part of the cache key). TCP: two hits.
    for _ in 0..3 {
        let m = c.udp("www.example.org.", RecordType::A).await;
        assert_eq!(m.answers.len(), 1);
    }
    let m = c.udp("nx.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let mut q = with_edns(query("www.example.org.", RecordType::A), 1232);
    if let Some(e) = q.edns.as_mut() {
        e.set_dnssec_ok(true);
    }
    let m = c.udp_msg(&q).await;
    assert_eq!(m.answers.len(), 1);
    for _ in 0..2 {
        let m = c.tcp("www.example.org.", RecordType::A).await;
        assert_eq!(m.answers.len(), 1);
    }
    // The health self-check runs once a second.
    let checked = wait_until(Duration::from_secs(10), || async {
        let s = parsed(metrics).await;
        sum(&s, "coredns_health_request_duration_seconds", &[]) >= 1.0
    })
    .await;
    assert!(checked, "the health self-check was timed");
    let s = parsed(metrics).await;
    let here = [("server", "dns://:0"), ("zone", ".")];

    // Per query.
    has_family(
        &s,
        "coredns_dns_requests_total",
        &["server", "zone", "view", "proto", "family", "type"],
    );
    let udp = [
        here[0],
        here[1],
        ("proto", "udp"),
        ("family", "1"),
        ("type", "A"),
    ];
    assert_eq!(sum(&s, "coredns_dns_requests_total", &udp), 5.0);
    let tcp = [
        here[0],
        here[1],
        ("proto", "tcp"),
        ("family", "1"),
        ("type", "A"),
    ];
    assert_eq!(sum(&s, "coredns_dns_requests_total", &tcp), 2.0);
    has_family(
        &s,
        "coredns_dns_responses_total",
        &["server", "zone", "view", "rcode", "plugin"],
    );
    let responses = |rcode: &str, plugin: &str| {
        sum(
            &s,
            "coredns_dns_responses_total",
            &[here[0], here[1], ("rcode", rcode), ("plugin", plugin)],
        )
    };
    assert_eq!(responses("NOERROR", "cache"), 4.0, "the hits");
    assert_eq!(responses("NOERROR", "forward"), 2.0, "the misses");
    assert_eq!(responses("NXDOMAIN", "forward"), 1.0);
    has_family(&s, "coredns_dns_request_duration_seconds", &DNS_LABELS);
    assert_eq!(sum(&s, "coredns_dns_request_duration_seconds", &here), 7.0);
    let with_proto = ["server", "zone", "view", "proto"];
    for family in [
        "coredns_dns_request_size_bytes",
        "coredns_dns_response_size_bytes",
    ] {
        has_family(&s, family, &with_proto);
        assert_eq!(
            sum(&s, family, &[here[0], ("proto", "udp")]),
            5.0,
            "{family}"
        );
        assert_eq!(
            sum(&s, family, &[here[0], ("proto", "tcp")]),
            2.0,
            "{family}"
        );
    }
    has_family(&s, "coredns_dns_do_requests_total", &DNS_LABELS);
    assert_eq!(sum(&s, "coredns_dns_do_requests_total", &here), 1.0);

    // Unlabelled counters are exported from the start, at 0 here.
    for name in [
        "coredns_panics_total",
        "coredns_reload_failed_total",
        "coredns_health_request_failures_total",
        "coredns_forward_healthcheck_broken_total",
        "coredns_forward_max_concurrent_rejects_total",
    ] {
        has_family(&s, name, &[]);
        assert_eq!(sum(&s, name, &[]), 0.0, "{name}");
    }
    has_family(&s, "coredns_health_request_duration_seconds", &[]);
    has_family(
        &s,
        "coredns_plugin_enabled",
        &["server", "zone", "view", "name"],
    );
    has_family(
        &s,
        "coredns_build_info",
        &["version", "revision", "goversion"],
    );
    assert_eq!(sum(&s, "coredns_build_info", &[]), 1.0);

    // cache: 7 lookups, 4 hits, 3 misses; one positive entry, one for DO, one denial.
    let cache = ["server", "zones", "view"];
    let typed = ["server", "type", "zones", "view"];
    for (name, labels) in [
        ("coredns_cache_requests_total", &cache[..]),
        ("coredns_cache_misses_total", &cache[..]),
        ("coredns_cache_prefetch_total", &cache[..]),
        ("coredns_cache_served_stale_total", &cache[..]),
        ("coredns_cache_drops_total", &cache[..]),
        ("coredns_cache_hits_total", &typed[..]),
        ("coredns_cache_entries", &typed[..]),
        ("coredns_cache_evictions_total", &typed[..]),
    ] {
        has_family(&s, name, labels);
    }
    assert_eq!(sum(&s, "coredns_cache_requests_total", &[]), 7.0);
    assert_eq!(sum(&s, "coredns_cache_hits_total", &[]), 4.0);
    assert_eq!(sum(&s, "coredns_cache_misses_total", &[]), 3.0);
    assert_eq!(
        sum(&s, "coredns_cache_entries", &[("type", "success")]),
        2.0
    );
    assert_eq!(sum(&s, "coredns_cache_entries", &[("type", "denial")]), 1.0);

    // forward: three exchanges with the upstream (health checks aside).
    let to = up.to_string();
    has_family(&s, "coredns_forward_requests_total", &["to"]);
    assert!(sum(&s, "coredns_forward_requests_total", &[("to", to.as_str())]) >= 3.0);
    has_family(&s, "coredns_forward_responses_total", &["to", "rcode"]);
    assert_eq!(
        sum(
            &s,
            "coredns_forward_responses_total",
            &[("to", to.as_str()), ("rcode", "NXDOMAIN")]
        ),
        1.0
    );
    has_family(
        &s,
        "coredns_forward_request_duration_seconds",
        &["to", "rcode"],
    );
    has_family(&s, "coredns_forward_healthcheck_failures_total", &["to"]);

    // The process.
    assert!(sum(&s, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(sum(&s, "process_open_fds", &[]) >= 1.0);
    has_family(&s, "process_cpu_seconds_total", &[]);
}
