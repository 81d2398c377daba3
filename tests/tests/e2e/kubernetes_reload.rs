//! kubernetes across a start and a reload: the server waits for the
//! first sync (up to `startup_timeout`) before it answers, a reload that
//! keeps the plugin's settings keeps its synced view and its watch, and a
//! reload that changes them lets the new view sync while the old one
//! answers. No query gets SERVFAIL for a name the cluster has.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nodedns_tests::kubeapi::{FakeKubeApi, Namespace, Resource, Service};
use nodedns_tests::{Agent, Client, http_request, wait_until};

const NAME: &str = "web.default.svc.cluster.local.";

fn corefile(api: &FakeKubeApi, extra: &str) -> String {
    format!(
        "cluster.local:0 {{\n    bind 127.0.0.1\n    kubernetes cluster.local {{\n        endpoint {}\n{extra}    }}\n}}\n",
        api.endpoint_url()
    )
}

async fn cluster() -> FakeKubeApi {
    let api = FakeKubeApi::start().await;
    api.apply(Namespace::new("default"));
    api.apply(Service::cluster_ip("default", "web", "10.96.0.10"));
    api
}

/// The rcode and the TTL of the first answer.
async fn ask(c: &Client) -> (ResponseCode, Option<u32>) {
    let m = c.udp(NAME, RecordType::A).await;
    (m.metadata.response_code, m.answers.first().map(|r| r.ttl))
}

async fn put_config(agent: &Agent, text: &str) -> u16 {
    http_request(agent.admin(), "PUT", "/v1/config", &[], text.as_bytes())
        .await
        .expect("PUT /v1/config: no reply")
        .status
}

/// Asks `NAME` over and over until `stop`, counting answers that are not
/// NOERROR with an address.
fn asker(
    c: Arc<Client>,
    stop: Arc<AtomicBool>,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
) {
    let bad = Arc::new(AtomicUsize::new(0));
    let asked = Arc::new(AtomicUsize::new(0));
    let (b, a) = (Arc::clone(&bad), Arc::clone(&asked));
    let task = tokio::spawn(async move {
        // Bounded: at most 20,000 queries (far more than a test needs).
        for _ in 0..20_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let m = c.udp(NAME, RecordType::A).await;
            a.fetch_add(1, Ordering::Relaxed);
            if m.metadata.response_code != ResponseCode::NoError || m.answers.is_empty() {
                b.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (task, bad, asked)
}

#[tokio::test]
async fn the_first_answer_after_start_is_already_synced() {
    let api = cluster().await;
    let agent = Agent::corefile(corefile(&api, "")).start().await;
    // No wait loop: the server answers only once the view is synced.
    let c = Client::new(agent.udp());
    assert_eq!(
        ask(&c).await,
        (ResponseCode::NoError, Some(5)),
        "{:?}",
        agent.stderr()
    );
}

#[tokio::test]
async fn start_waits_for_startup_timeout_then_serves_unsynced() {
    let api = cluster().await;
    api.stall_lists(true);
    let started = std::time::Instant::now();
    let agent = Agent::corefile(corefile(&api, "        startup_timeout 1500ms\n"))
        .start()
        .await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "served after {took:?}");
    let log = agent.stderr().join("\n");
    assert!(
        log.contains("plugin/kubernetes: waiting for Kubernetes API before starting server"),
        "{log}"
    );
    assert!(
        log.contains("plugin/kubernetes: starting server with unsynced Kubernetes API"),
        "{log}"
    );
    let c = Client::new(agent.udp());
    assert_eq!(ask(&c).await, (ResponseCode::ServFail, None));
    api.stall_lists(false);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            ask(&c).await == (ResponseCode::NoError, Some(5))
        })
        .await,
        "answered once synced"
    );
}

#[tokio::test]
async fn a_reload_that_keeps_the_settings_keeps_the_view_and_the_watch() {
    let api = cluster().await;
    let text = corefile(&api, "");
    let agent = Agent::corefile(text.clone()).start().await;
    let c = Arc::new(Client::new(agent.udp()));
    assert_eq!(ask(&c).await.0, ResponseCode::NoError);
    let lists = api.list_count(Resource::Services);
    let watches = api.watch_count(Resource::Services);
    let stop = Arc::new(AtomicBool::new(false));
    let (task, bad, asked) = asker(Arc::clone(&c), Arc::clone(&stop));
    // Another plugin changes; kubernetes' settings do not.
    for extra in ["errors", "any", "minimal"] {
        let changed = text.replace(
            "    bind 127.0.0.1\n",
            &format!("    bind 127.0.0.1\n    {extra}\n"),
        );
        assert_eq!(put_config(&agent, &changed).await, 200);
    }
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert!(asked.load(Ordering::Relaxed) > 0);
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "every query answered across the reloads"
    );
    // A change in the cluster still arrives: the carried watch runs.
    api.apply(Service::cluster_ip("default", "web", "10.96.0.20"));
    assert!(
        wait_until(Duration::from_secs(2), || async {
            let m = c.udp(NAME, RecordType::A).await;
            m.answers.first().map(|r| r.data.to_string()).as_deref() == Some("10.96.0.20")
        })
        .await,
        "a change after the reloads shows within 2 s"
    );
    assert_eq!(api.list_count(Resource::Services), lists, "no relist");
    assert_eq!(api.watch_count(Resource::Services), watches, "no new watch");
}

#[tokio::test]
async fn a_reload_that_changes_the_settings_syncs_while_the_old_view_answers() {
    let api = cluster().await;
    let agent = Agent::corefile(corefile(&api, "")).start().await;
    let c = Arc::new(Client::new(agent.udp()));
    assert_eq!(ask(&c).await, (ResponseCode::NoError, Some(5)));
    // The new view cannot sync until the lists are released.
    api.stall_lists(true);
    let stop = Arc::new(AtomicBool::new(false));
    let (task, bad, asked) = asker(Arc::clone(&c), Arc::clone(&stop));
    let admin = agent.admin();
    let new_text = corefile(&api, "        ttl 30\n        startup_timeout 20s\n");
    let put = tokio::spawn(async move {
        http_request(admin, "PUT", "/v1/config", &[], new_text.as_bytes())
            .await
            .map(|r| r.status)
    });
    // While the new view waits, the old one answers (TTL 5).
    let before = asked.load(Ordering::Relaxed);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            asked.load(Ordering::Relaxed) >= before + 50
        })
        .await
    );
    assert!(
        !put.is_finished(),
        "the reload waits for the new view's sync"
    );
    assert_eq!(ask(&c).await, (ResponseCode::NoError, Some(5)));
    api.stall_lists(false);
    assert_eq!(put.await.unwrap(), Some(200));
    assert_eq!(
        ask(&c).await,
        (ResponseCode::NoError, Some(30)),
        "the new view, synced"
    );
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert_eq!(
        bad.load(Ordering::Relaxed),
        0,
        "no SERVFAIL across the reload"
    );
}

#[tokio::test]
async fn sigterm_while_waiting_for_the_first_sync_exits_at_once() {
    let api = cluster().await;
    api.stall_lists(true);
    let agent = Agent::corefile(corefile(&api, "        startup_timeout 10m\n"));
    let started = std::time::Instant::now();
    let (status, log) = agent
        .signalled_when(
            "waiting for Kubernetes API before starting server",
            nix::sys::signal::Signal::SIGTERM,
        )
        .await;
    let took = started.elapsed();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        took < Duration::from_secs(8),
        "exited after {took:?}\n{log}"
    );
    assert!(log.contains("SIGTERM: shutting down"), "{log}");
}

/// The records of the answer section, as `TYPE data`.
async fn answers(c: &Client, name: &str) -> (ResponseCode, Vec<String>) {
    let m = c.udp(name, RecordType::A).await;
    let v = m
        .answers
        .iter()
        .map(|r| format!("{} {}", r.record_type(), r.data))
        .collect();
    (m.metadata.response_code, v)
}

#[tokio::test]
async fn an_external_name_target_is_asked_of_the_whole_server_as_coredns_does() {
    let api = cluster().await;
    api.apply(Service::external_name("default", "ext", "www.stub.test"));
    // The stub domain's block has its own upstream; the default block's
    // upstream would answer the target differently.
    let stub = nodedns_tests::FakeUpstream::builder()
        .a("www.stub.test.", "192.0.2.99")
        .start()
        .await;
    let default = nodedns_tests::FakeUpstream::builder()
        .a("www.stub.test.", "192.0.2.1")
        .start()
        .await;
    let text = format!(
        ".:0 {{\n    bind 127.0.0.1\n    kubernetes cluster.local {{\n        endpoint {}\n    }}\n    forward . {default}\n}}\nstub.test:0 {{\n    bind 127.0.0.1\n    cache 30\n    forward . {stub}\n}}\n",
        api.endpoint_url()
    );
    let agent = Agent::corefile(text).start().await;
    let c = Client::new(agent.udp());
    let want = (
        ResponseCode::NoError,
        vec![
            "CNAME www.stub.test.".to_string(),
            "A 192.0.2.99".to_string(),
        ],
    );
    assert_eq!(answers(&c, "ext.default.svc.cluster.local.").await, want);
    // Through the stub block's cache: asked of its upstream once.
    assert_eq!(answers(&c, "ext.default.svc.cluster.local.").await, want);
    assert_eq!(stub.count("www.stub.test.", RecordType::A), 1);
    assert_eq!(default.count("www.stub.test.", RecordType::A), 0);
}

#[tokio::test]
async fn external_names_pointing_at_each_other_across_blocks_do_not_loop() {
    let api = cluster().await;
    // a (cluster.local) -> b in other.local -> a in cluster.local -> ...
    api.apply(Service::external_name(
        "default",
        "a",
        "b.default.svc.other.local",
    ));
    api.apply(Service::external_name(
        "default",
        "b",
        "a.default.svc.cluster.local",
    ));
    let url = api.endpoint_url();
    let text = format!(
        "cluster.local:0 {{\n    bind 127.0.0.1\n    kubernetes cluster.local {{\n        endpoint {url}\n    }}\n}}\nother.local:0 {{\n    bind 127.0.0.1\n    kubernetes other.local {{\n        endpoint {url}\n    }}\n}}\n"
    );
    let agent = Agent::corefile(text).start().await;
    let c = Client::new(agent.udp());
    let started = std::time::Instant::now();
    let (rcode, records) = answers(&c, "a.default.svc.cluster.local.").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rcode, ResponseCode::NoError);
    assert!(
        !records.is_empty()
            && records.len() <= 20
            && records.iter().all(|r| r.starts_with("CNAME ")),
        "{records:?}"
    );
    // Nothing is left holding the server's in-flight slots.
    assert_eq!(ask(&c).await, (ResponseCode::NoError, Some(5)));
}
