//! The kubernetes plugin against the fake API server: a cluster name
//! answered from the watch, a service created, changed and deleted
//! showing in answers within 2 s, and every golden Corefile that uses
//! kubernetes serving (a test each). Record by record answers are in
//! `kubernetes_records.rs`.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nodedns_tests::kubeapi::{Endpoint, EndpointSlice, FakeKubeApi, Namespace, Resource, Service};
use nodedns_tests::{Agent, Client, http_status, wait_until};

/// The A records of `name`, or the rcode when there are none.
async fn a_records(c: &Client, name: &str) -> Result<Vec<String>, ResponseCode> {
    let m = c.udp(name, RecordType::A).await;
    let ips: Vec<String> = m
        .answers
        .iter()
        .filter(|r| r.record_type() == RecordType::A)
        .map(|r| r.data.to_string())
        .collect();
    if ips.is_empty() {
        Err(m.metadata.response_code)
    } else {
        Ok(ips)
    }
}

#[tokio::test]
async fn services_follow_the_watch_within_two_seconds() {
    let api = FakeKubeApi::start().await;
    api.apply(Namespace::new("default"));
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    let ready_port = nodedns_tests::free_port();
    let agent = Agent::corefile(format!(
        "cluster.local:0 {{\n    bind 127.0.0.1\n    ready 127.0.0.1:{ready_port}\n    kubernetes cluster.local {{\n        endpoint {}\n    }}\n}}\n",
        api.endpoint_url()
    ))
    .start()
    .await;
    let ready = std::net::SocketAddr::from(([127, 0, 0, 1], ready_port));
    assert!(
        wait_until(Duration::from_secs(10), || async {
            http_status(ready, "/ready").await == Some(200)
        })
        .await,
        "ready once synced: {:?}",
        agent.stderr()
    );
    let c = Client::new(agent.udp());
    assert_eq!(
        a_records(&c, "web.default.svc.cluster.local.").await,
        Ok(vec!["10.96.0.10".to_string()])
    );
    // Created: a headless service with one ready endpoint.
    api.apply(Service::headless("default", "db"));
    api.apply(
        EndpointSlice::new("default", "db", "db-abc")
            .endpoint(Endpoint::new("10.1.0.5").hostname("db-0"))
            .port("pg", "TCP", 5432),
    );
    let within = Duration::from_secs(2);
    assert!(
        wait_until(within, || async {
            a_records(&c, "db.default.svc.cluster.local.").await == Ok(vec!["10.1.0.5".into()])
        })
        .await,
        "a new headless service answers within 2 s"
    );
    // Changed.
    api.apply(Service::cluster_ip("default", "web", "10.96.0.11").port("http", "TCP", 80));
    assert!(
        wait_until(within, || async {
            a_records(&c, "web.default.svc.cluster.local.").await == Ok(vec!["10.96.0.11".into()])
        })
        .await,
        "a changed service answers within 2 s"
    );
    // Deleted.
    api.delete(Resource::Services, "default", "web");
    assert!(
        wait_until(within, || async {
            a_records(&c, "web.default.svc.cluster.local.").await == Err(ResponseCode::NXDomain)
        })
        .await,
        "a deleted service is NXDOMAIN within 2 s"
    );
    // A dropped watch recovers with nothing lost.
    api.drop_watches();
    api.apply(Service::cluster_ip("default", "late", "10.96.0.12"));
    assert!(
        wait_until(Duration::from_secs(5), || async {
            a_records(&c, "late.default.svc.cluster.local.").await == Ok(vec!["10.96.0.12".into()])
        })
        .await,
        "a change made while the watch was down arrives"
    );
}

#[tokio::test]
async fn not_ready_until_synced_and_a_410_relists_without_losing_a_change() {
    let api = FakeKubeApi::start().await;
    api.apply(Namespace::new("default"));
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10"));
    // Lists hang: the first sync cannot finish (the server starts after
    // startup_timeout).
    api.stall_lists(true);
    let ready_port = nodedns_tests::free_port();
    let agent = Agent::corefile(format!(
        "cluster.local:0 {{\n    bind 127.0.0.1\n    ready 127.0.0.1:{ready_port}\n    kubernetes cluster.local {{\n        endpoint {}\n        startup_timeout 1s\n    }}\n}}\n",
        api.endpoint_url()
    ))
    .start()
    .await;
    let ready = std::net::SocketAddr::from(([127, 0, 0, 1], ready_port));
    let c = Client::new(agent.udp());
    assert!(
        wait_until(Duration::from_secs(5), || async {
            http_status(ready, "/ready").await == Some(503)
        })
        .await,
        "not ready while the lists hang"
    );
    // CoreDNS answers SERVFAIL before the first sync.
    assert_eq!(
        a_records(&c, "web.default.svc.cluster.local.").await,
        Err(ResponseCode::ServFail)
    );
    api.stall_lists(false);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            http_status(ready, "/ready").await == Some(200)
        })
        .await,
        "ready once synced"
    );
    assert_eq!(
        a_records(&c, "web.default.svc.cluster.local.").await,
        Ok(vec!["10.96.0.10".to_string()])
    );
    // History compacted and every watch told 410 Gone: the watcher must
    // relist, and a change made meanwhile must not be lost.
    api.expire_watches();
    api.apply(Service::cluster_ip("default", "web", "10.96.0.20"));
    api.apply(Service::cluster_ip("default", "api", "10.96.0.30"));
    for (name, ip) in [("web", "10.96.0.20"), ("api", "10.96.0.30")] {
        let fqdn = format!("{name}.default.svc.cluster.local.");
        assert!(
            wait_until(Duration::from_secs(10), || async {
                a_records(&c, &fqdn).await == Ok(vec![ip.to_string()])
            })
            .await,
            "{fqdn} after the relist"
        );
    }
    assert!(
        api.list_count(Resource::Services) >= 2,
        "the 410 made the watcher list again"
    );
}

/// A golden Corefile made to run here: its port, health, ready and
/// prometheus addresses on loopback port 0, its upstreams the fake
/// upstream, its kubernetes block pointed at the fake API server.
fn localized(text: &str, upstream: &str, api: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let words: Vec<&str> = line.split_whitespace().collect();
        let opens = line.trim_end().ends_with('{');
        let brace = if opens { " {" } else { "" };
        match words.first().copied() {
            Some(".:53") => out.push_str(".:0 {\n    bind 127.0.0.1\n"),
            Some(w @ ("health" | "ready" | "prometheus")) if indent.len() == 4 => {
                out.push_str(&format!("{indent}{w} 127.0.0.1:0{brace}\n"));
            }
            Some("forward") if indent.len() == 4 => {
                out.push_str(&format!("{indent}forward {} {upstream}{brace}\n", words[1]));
            }
            Some("kubernetes") if indent.len() == 4 => {
                assert!(opens, "{line}");
                out.push_str(&format!("{line}\n{indent}    endpoint {api}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Loads the golden Corefile `file` (from `tests/corefiles/`) against a
/// fake API server and a fake upstream, and checks that it serves one
/// cluster name (from the API) and one external name (through forward).
async fn golden(file: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corefiles")
        .join(file);
    let api = FakeKubeApi::start().await;
    api.apply(Namespace::new("default"));
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
    let up = nodedns_tests::FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let text = localized(
        &std::fs::read_to_string(&path).unwrap(),
        &up.to_string(),
        &api.endpoint_url(),
    );
    let agent = Agent::corefile(text.clone()).start().await;
    // Synced first: were the server to start unsynced (after
    // startup_timeout), a name asked would fall through to forward (most
    // of these files have `fallthrough`) and its NXDOMAIN be cached.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            http_status(agent.admin(), "/readyz").await == Some(200)
        })
        .await,
        "{file}: ready\n{text}\n{:?}",
        agent.stderr()
    );
    let c = Client::new(agent.udp());
    let cluster = || async {
        a_records(&c, "web.default.svc.cluster.local.").await == Ok(vec!["10.96.0.10".to_string()])
    };
    assert!(
        wait_until(Duration::from_secs(10), cluster).await,
        "{file}: a cluster name\n{text}\n{:?}",
        agent.stderr()
    );
    assert_eq!(
        a_records(&c, "www.example.org.").await,
        Ok(vec!["192.0.2.1".to_string()]),
        "{file}: an external name"
    );
}

/// A test per golden Corefile that uses kubernetes, named after it, and
/// the list of them.
macro_rules! golden {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[tokio::test]
            async fn $test() {
                golden($file).await;
            }
        )*
        const GOLDEN: &[&str] = &[$($file),*];
    };
}

golden! {
    golden_kubernetes_default => "kubernetes-default.Corefile",
    golden_seed_financeflow => "seed-financeflow.Corefile",
    golden_seed_gamestream => "seed-gamestream.Corefile",
    golden_seed_healthtech => "seed-healthtech.Corefile",
    golden_seed_phase2 => "seed-phase2.Corefile",
    golden_seed_week2 => "seed-week2.Corefile",
    golden_seed_week4 => "seed-week4.Corefile",
}

#[test]
fn every_golden_corefile_with_kubernetes_has_a_test() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corefiles");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("kubernetes ")))
        .filter_map(|p| p.file_name()?.to_str().map(String::from))
        .collect();
    files.sort();
    assert_eq!(
        files, GOLDEN,
        "a golden Corefile with kubernetes and no test of its own"
    );
}
