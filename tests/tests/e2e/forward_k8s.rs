//! forward to `k8s://NAMESPACE/SERVICE`: the upstreams are the ready
//! endpoints of the service's EndpointSlices, read from a fake API server
//! (found through `KUBECONFIG`), and follow them without a reload.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nodedns_tests::kubeapi::{Endpoint, EndpointSlice, FakeKubeApi, Resource};
use nodedns_tests::{Agent, Client, FakeUpstream, http_get, http_request, wait_until};

/// How long a change may take to show (the brief: about a second; this
/// leaves room for a loaded machine).
const DEADLINE: Duration = Duration::from_secs(10);

fn slice(i: usize, up: &FakeUpstream) -> EndpointSlice {
    let port = up.addr.port();
    EndpointSlice::new("kube-system", "kube-dns", &format!("kube-dns-{i}"))
        .endpoint(Endpoint::new(&up.addr.ip().to_string()))
        .port("dns", "UDP", port)
        .port("dns-tcp", "TCP", port)
        .port("metrics", "TCP", 9153)
}

fn not_ready(i: usize, up: &FakeUpstream) -> EndpointSlice {
    let port = up.addr.port();
    EndpointSlice::new("kube-system", "kube-dns", &format!("kube-dns-{i}"))
        .endpoint(Endpoint::new(&up.addr.ip().to_string()).not_ready())
        .port("dns", "UDP", port)
        .port("dns-tcp", "TCP", port)
}

fn queries(up: &FakeUpstream) -> usize {
    up.udp_queries() + up.tcp_queries()
}

async fn upstreams(n: usize) -> Vec<FakeUpstream> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            FakeUpstream::builder()
                .wildcard_a("192.0.2.1")
                .start()
                .await,
        );
    }
    out
}

/// The fake's kubeconfig, as text.
fn kubeconfig(api: &FakeKubeApi) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nodedns-k8sfwd-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(api.kubeconfig(&dir)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    text
}

fn corefile(options: &str) -> String {
    format!(
        ".:0 {{\n    bind 127.0.0.1\n    forward . k8s://kube-system/kube-dns {{\n{options}    }}\n}}\n"
    )
}

async fn start(api: &FakeKubeApi, options: &str) -> Agent {
    Agent::corefile(corefile(options))
        .file("kubeconfig", kubeconfig(api))
        .env("KUBECONFIG", "kubeconfig")
        .start()
        .await
}

/// Asks `n` names; the rcodes seen.
async fn ask(c: &Client, n: usize) -> Vec<ResponseCode> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let m = c.udp(&format!("q{i}.example.org."), RecordType::A).await;
        out.push(m.metadata.response_code);
    }
    out
}

/// Whether a round of queries leaves `up` alone (all answered).
async fn round_skips(c: &Client, up: &FakeUpstream) -> bool {
    let before = queries(up);
    let rcodes = ask(c, 30).await;
    rcodes.iter().all(|r| *r == ResponseCode::NoError) && queries(up) == before
}

async fn follows_the_ready_endpoints(force_tcp: bool) {
    let ups = upstreams(4).await;
    let api = FakeKubeApi::start().await;
    for (i, up) in ups.iter().take(3).enumerate() {
        api.apply(slice(i, up));
    }
    let options = if force_tcp { "        force_tcp\n" } else { "" };
    let agent = start(&api, options).await;
    let c = Client::new(agent.udp());

    // Synced before serving: every query answered, spread over the three.
    let rcodes = ask(&c, 60).await;
    assert!(
        rcodes.iter().all(|r| *r == ResponseCode::NoError),
        "{rcodes:?} {:?}",
        agent.stderr()
    );
    for up in &ups[..3] {
        assert!(queries(up) > 0, "{up} got no query");
        if force_tcp {
            assert_eq!(up.udp_queries(), 0, "force_tcp: {up} got UDP");
        }
    }
    assert_eq!(queries(&ups[3]), 0);
    // The admin plane lists the endpoints as upstreams.
    let (status, body) = http_get(agent.admin(), "/v1/upstreams").await.unwrap();
    assert_eq!(status, 200);
    for up in &ups[..3] {
        assert!(body.contains(&up.addr.to_string()), "{body}");
    }

    // Not ready: no more queries.
    api.apply(not_ready(1, &ups[1]));
    assert!(
        wait_until(DEADLINE, || round_skips(&c, &ups[1])).await,
        "a not-ready endpoint still gets queries"
    );
    assert!(round_skips(&c, &ups[1]).await);

    // A new endpoint gets queries.
    api.apply(slice(3, &ups[3]));
    assert!(
        wait_until(DEADLINE, || async {
            ask(&c, 10).await;
            queries(&ups[3]) > 0
        })
        .await,
        "a new endpoint gets no query"
    );

    // None left: SERVFAIL, at once.
    for i in 0..4 {
        api.delete(
            Resource::EndpointSlices,
            "kube-system",
            &format!("kube-dns-{i}"),
        );
    }
    assert!(
        wait_until(DEADLINE, || async {
            ask(&c, 1).await == [ResponseCode::ServFail]
        })
        .await,
        "no endpoint: SERVFAIL"
    );
    let started = std::time::Instant::now();
    assert_eq!(ask(&c, 20).await, vec![ResponseCode::ServFail; 20]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SERVFAIL without waiting"
    );

    // Back: answers again, from the one that came back.
    let before = queries(&ups[2]);
    api.apply(slice(2, &ups[2]));
    assert!(
        wait_until(DEADLINE, || async {
            ask(&c, 1).await == [ResponseCode::NoError]
        })
        .await,
        "answers once an endpoint is back"
    );
    assert!(queries(&ups[2]) > before);

    // Logged once per change, not per query.
    let log = agent.stderr();
    let empty = log
        .iter()
        .filter(|l| l.contains("forward: no ready endpoint"))
        .count();
    assert_eq!(empty, 1, "{log:?}");
}

#[tokio::test]
async fn forward_follows_the_ready_endpoints_of_a_service() {
    follows_the_ready_endpoints(false).await;
}

#[tokio::test]
async fn forward_follows_the_ready_endpoints_with_force_tcp() {
    follows_the_ready_endpoints(true).await;
}

#[tokio::test]
async fn a_reload_keeps_the_watch_and_answers_throughout() {
    let ups = upstreams(2).await;
    let api = FakeKubeApi::start().await;
    for (i, up) in ups.iter().enumerate() {
        api.apply(slice(i, up));
    }
    let agent = start(&api, "").await;
    let c = Arc::new(Client::new(agent.udp()));
    assert_eq!(ask(&c, 1).await, [ResponseCode::NoError]);
    let lists = api.list_count(Resource::EndpointSlices);
    assert_eq!(lists, 1);

    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(AtomicUsize::new(0));
    let asked = Arc::new(AtomicUsize::new(0));
    let task = {
        let (c, stop, bad, asked) = (
            Arc::clone(&c),
            Arc::clone(&stop),
            Arc::clone(&bad),
            Arc::clone(&asked),
        );
        tokio::spawn(async move {
            // Bounded: far more than the test needs.
            for i in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let m = c.udp(&format!("r{i}.example.org."), RecordType::A).await;
                asked.fetch_add(1, Ordering::Relaxed);
                if m.metadata.response_code != ResponseCode::NoError {
                    bad.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let text = std::fs::read_to_string(agent.path("Corefile")).unwrap();
    for extra in ["errors", "any", "minimal"] {
        let changed = text.replace(
            "    bind 127.0.0.1\n",
            &format!("    bind 127.0.0.1\n    {extra}\n"),
        );
        let r = http_request(agent.admin(), "PUT", "/v1/config", &[], changed.as_bytes())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert!(asked.load(Ordering::Relaxed) > 0);
    assert_eq!(bad.load(Ordering::Relaxed), 0, "{:?}", agent.stderr());
    assert_eq!(
        api.list_count(Resource::EndpointSlices),
        lists,
        "the watch was carried, not relisted"
    );

    // The new configuration follows the carried watch.
    api.apply(not_ready(0, &ups[0]));
    assert!(
        wait_until(DEADLINE, || round_skips(&c, &ups[0])).await,
        "the reloaded forward still follows the endpoints"
    );
}

#[tokio::test]
async fn start_waits_for_the_first_list_then_serves_without_it() {
    let ups = upstreams(1).await;
    let api = FakeKubeApi::start().await;
    api.apply(slice(0, &ups[0]));
    api.stall_lists(true);
    let started = std::time::Instant::now();
    let agent = start(&api, "").await;
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(5), "served after {took:?}");
    let log = agent.stderr().join("\n");
    assert!(
        log.contains("plugin/forward: starting server with k8s:// upstreams not synced"),
        "{log}"
    );
    let c = Client::new(agent.udp());
    assert_eq!(ask(&c, 1).await, [ResponseCode::ServFail]);
    api.stall_lists(false);
    assert!(
        wait_until(DEADLINE, || async {
            ask(&c, 1).await == [ResponseCode::NoError]
        })
        .await,
        "answers once the list is in"
    );
}
