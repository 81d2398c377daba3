//! Live reload: SIGUSR1 and the reload plugin apply a changed Corefile;
//! a bad one is refused; caches with unchanged settings keep their entries.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nix::sys::signal::Signal;
use nodedns_tests::{Agent, Client, FakeUpstream, free_port, http_status, wait_until};

fn corefile(up: &FakeUpstream, cache: &str, extra: &str) -> String {
    format!(".:0 {{\n    bind 127.0.0.1\n    {cache}\n    forward . {up}\n}}\n{extra}")
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

#[tokio::test]
async fn sigusr1_applies_a_new_corefile_and_the_cache_carries_over() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = Agent::corefile(corefile(&up, "cache 300", ""))
        .start()
        .await;
    let c = Client::new(agent.udp());
    let _ = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(up.count("www.example.org.", RecordType::A), 1);
    // Before: example.net is forwarded (the fake upstream says NXDOMAIN).
    assert_eq!(
        c.udp("who.example.net.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    // Add a block that answers example.net with whoami. Port 0 again: the
    // same listener (a reload keeps what port 0 became).
    let extra = "example.net:0 {\n    bind 127.0.0.1\n    whoami\n}\n";
    let text = corefile(&up, "cache 300", extra);
    std::fs::write(agent.path("Corefile"), text).unwrap();
    agent.signal(Signal::SIGUSR1);
    assert!(reloaded(&agent, 1).await, "stdout: {:?}", agent.stdout());
    // The new block serves on the same socket…
    let m = c.udp("who.example.net.", RecordType::A).await;
    assert_eq!(
        m.additionals.len(),
        2,
        "whoami answers after the reload: {m:?}"
    );
    // …and the cache kept its entry: no second upstream query.
    let _ = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(
        up.count("www.example.org.", RecordType::A),
        1,
        "cache entries carried over"
    );
}

#[tokio::test]
async fn changed_cache_settings_start_a_fresh_cache() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = Agent::corefile(corefile(&up, "cache 300", ""))
        .start()
        .await;
    let c = Client::new(agent.udp());
    let _ = c.udp("www.example.org.", RecordType::A).await;
    std::fs::write(agent.path("Corefile"), corefile(&up, "cache 60", "")).unwrap();
    agent.signal(Signal::SIGUSR1);
    assert!(reloaded(&agent, 1).await);
    let _ = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(
        up.count("www.example.org.", RecordType::A),
        2,
        "a different cache starts empty"
    );
}

#[tokio::test]
async fn a_bad_corefile_is_refused_and_the_running_one_keeps_serving() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = Agent::corefile(corefile(&up, "cache 300", ""))
        .start()
        .await;
    let c = Client::new(agent.udp());
    std::fs::write(
        agent.path("Corefile"),
        ".:0 {\n    whoami\n    nonesuch\n}\n",
    )
    .unwrap();
    agent.signal(Signal::SIGUSR1);
    let refused = wait_until(Duration::from_secs(10), || async {
        agent.stderr().iter().any(|l| {
            l.contains("reload refused") && l.contains("Corefile:3: unknown directive 'nonesuch'")
        })
    })
    .await;
    assert!(refused, "stderr: {:?}", agent.stderr());
    let m = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(m.answers.len(), 1, "still forwarding");
}

#[tokio::test]
async fn the_reload_plugin_picks_up_changes_by_itself() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    reload 2s 1s\n    hosts {\n        192.0.2.1 www.example.org\n    }\n}\n")
        .start()
        .await;
    let port = agent.udp().port();
    let c = Client::new(agent.udp());
    assert_eq!(
        c.udp("www.example.org.", RecordType::A).await.answers[0]
            .data
            .to_string(),
        "192.0.2.1"
    );
    std::fs::write(
        agent.path("Corefile"),
        format!(".:{port} {{\n    bind 127.0.0.1\n    reload 2s 1s\n    hosts {{\n        192.0.2.2 www.example.org\n    }}\n}}\n"),
    )
    .unwrap();
    assert!(reloaded(&agent, 1).await, "reloaded within a few intervals");
    assert_eq!(
        c.udp("www.example.org.", RecordType::A).await.answers[0]
            .data
            .to_string(),
        "192.0.2.2"
    );
}

#[tokio::test]
async fn a_reload_moves_health_and_ready_and_refuses_an_address_in_use() {
    let text = |health: u16, ready: u16| {
        format!(
            ".:0 {{\n    bind 127.0.0.1\n    health 127.0.0.1:{health}\n    ready 127.0.0.1:{ready}\n    whoami\n}}\n"
        )
    };
    let at = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let [h1, r, h2] = nodedns_tests::free_ports();
    let agent = Agent::corefile(text(h1, r)).start().await;
    assert_eq!(http_status(at(h1), "/health").await, Some(200));
    assert_eq!(http_status(at(r), "/ready").await, Some(200));
    // health moves; ready stays where it was.
    std::fs::write(agent.path("Corefile"), text(h2, r)).unwrap();
    agent.signal(Signal::SIGUSR1);
    assert!(reloaded(&agent, 1).await, "stdout: {:?}", agent.stdout());
    assert!(
        agent.stdout().contains(&format!(
            "listening transport=http service=health addr=127.0.0.1:{h2}"
        )),
        "the new endpoint is announced: {:?}",
        agent.stdout()
    );
    assert_eq!(http_status(at(h2), "/health").await, Some(200));
    assert_eq!(http_status(at(r), "/ready").await, Some(200));
    let closed = wait_until(Duration::from_secs(5), || async {
        http_status(at(h1), "/health").await.is_none()
    })
    .await;
    assert!(closed, "the old health address is closed");
    // An address something else holds refuses the whole reload.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    std::fs::write(agent.path("Corefile"), text(taken, r)).unwrap();
    agent.signal(Signal::SIGUSR1);
    let refused = wait_until(Duration::from_secs(10), || async {
        agent.stderr().iter().any(|l| l.contains("reload refused"))
    })
    .await;
    assert!(refused, "stderr: {:?}", agent.stderr());
    assert_eq!(
        http_status(at(h2), "/health").await,
        Some(200),
        "still serving"
    );
    assert_eq!(http_status(at(r), "/ready").await, Some(200));
}

/// Issue #8, point 3: two blocks on one port split by `bind`, with the same
/// zones and the same `cache` line but different upstreams. After a reload
/// each address still answers from its own block's cache.
#[tokio::test]
async fn blocks_split_by_bind_keep_their_own_caches_over_a_reload() {
    let one = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let two = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.2")
        .start()
        .await;
    let port = free_port();
    let text = |extra: &str| {
        format!(
            ".:{port} {{\n    bind 127.0.0.1\n    cache 300\n    forward . {one}\n}}\n\
             .:{port} {{\n    bind 127.0.0.2\n    cache 300\n    forward . {two}\n}}\n{extra}"
        )
    };
    let agent = Agent::corefile(text("")).start().await;
    let at = |last: u8| Client::new(std::net::SocketAddr::from(([127, 0, 0, last], port)));
    let answer = |m: hickory_proto::op::Message| {
        m.answers
            .first()
            .map(|r| r.data.to_string())
            .unwrap_or_default()
    };
    // Both addresses answer once the listeners are up (127.0.0.2 included).
    let up = wait_until(Duration::from_secs(10), || async {
        answer(at(2).udp("www.example.org.", RecordType::A).await) == "192.0.2.2"
    })
    .await;
    assert!(up, "127.0.0.2 answers from its own upstream");
    assert_eq!(
        answer(at(1).udp("www.example.org.", RecordType::A).await),
        "192.0.2.1"
    );
    // A change elsewhere in the file (a comment alone is no change); the
    // two blocks stay as they were.
    let extra = format!("example.net:{port} {{\n    bind 127.0.0.1\n    whoami\n}}\n");
    std::fs::write(agent.path("Corefile"), text(&extra)).unwrap();
    agent.signal(Signal::SIGUSR1);
    assert!(reloaded(&agent, 1).await, "stdout: {:?}", agent.stdout());
    for _ in 0..3 {
        assert_eq!(
            answer(at(1).udp("www.example.org.", RecordType::A).await),
            "192.0.2.1",
            "127.0.0.1 answers from its own block's cache"
        );
        assert_eq!(
            answer(at(2).udp("www.example.org.", RecordType::A).await),
            "192.0.2.2",
            "127.0.0.2 answers from its own block's cache"
        );
    }
    // And both caches were carried over: no upstream was asked again.
    assert_eq!(one.count("www.example.org.", RecordType::A), 1);
    assert_eq!(two.count("www.example.org.", RecordType::A), 1);
}
