//! forward against fake upstreams: transports, faults, health, policies,
//! pooling, DoT, and loop detection.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nodedns_tests::client::a_of;
use nodedns_tests::{Agent, Client, FakeUpstream, Fault, wait_until};

async fn start(body: &str) -> Agent {
    Agent::corefile(format!(".:0 {{\n    bind 127.0.0.1\n{body}\n}}\n"))
        .start()
        .await
}

#[tokio::test]
async fn forwards_over_udp_and_tcp() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = start(&format!("    forward . {up}")).await;
    let c = Client::new(agent.udp());
    let m = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(a_of(&m), vec!["192.0.2.1"]);
    let m = c.tcp("www.example.org.", RecordType::A).await;
    assert_eq!(a_of(&m), vec!["192.0.2.1"]);
    // The client's transport is kept by default.
    assert_eq!((up.udp_queries(), up.tcp_queries()), (1, 1));
    // NXDOMAIN comes back as such.
    let m = c.udp("nope.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn force_tcp_and_prefer_udp() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = start(&format!("    forward . {up} {{\n        force_tcp\n    }}")).await;
    let c = Client::new(agent.udp());
    for _ in 0..3 {
        assert_eq!(
            a_of(&c.udp("www.example.org.", RecordType::A).await),
            vec!["192.0.2.1"]
        );
    }
    assert_eq!((up.udp_queries(), up.tcp_queries()), (0, 3));

    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent2 = start(&format!(
        "    forward . {up} {{\n        prefer_udp\n    }}"
    ))
    .await;
    let c = Client::new(agent2.tcp());
    assert_eq!(
        a_of(&c.tcp("www.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    assert_eq!((up.udp_queries(), up.tcp_queries()), (1, 0));
}

#[tokio::test]
async fn truncated_udp_answers_are_retried_over_tcp() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .fault(Fault::Truncate)
        .start()
        .await;
    let agent = start(&format!("    forward . {up}")).await;
    let m = Client::new(agent.udp())
        .udp("www.example.org.", RecordType::A)
        .await;
    assert!(!m.metadata.truncation);
    assert_eq!(a_of(&m), vec!["192.0.2.1"]);
    assert_eq!((up.udp_queries(), up.tcp_queries()), (1, 1));
}

#[tokio::test]
async fn a_dead_upstream_is_marked_down_and_comes_back() {
    let dead = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.66")
        .fault(Fault::Drop)
        .start()
        .await;
    let good = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = start(&format!(
        "    forward . {dead} {good} {{\n        policy sequential\n        max_fails 2\n        health_check 100ms\n        read_timeout 300ms\n    }}"
    ))
    .await;
    let c = Client::new(agent.udp());
    // Every query is answered, by the good one.
    for _ in 0..10 {
        assert_eq!(
            a_of(&c.udp("www.example.org.", RecordType::A).await),
            vec!["192.0.2.1"]
        );
    }
    // Down after max_fails: the dead one stops seeing client queries (health checks go on).
    let before = dead.count("www.example.org.", RecordType::A);
    assert!(
        (1..=3).contains(&before),
        "{before} tries before it was marked down"
    );
    for _ in 0..10 {
        assert_eq!(
            a_of(&c.udp("www.example.org.", RecordType::A).await),
            vec!["192.0.2.1"]
        );
    }
    assert_eq!(
        dead.count("www.example.org.", RecordType::A),
        before,
        "skipped while down"
    );
    assert!(dead.count(".", RecordType::NS) >= 1, "health-checked");
    // It recovers: a passing check brings it back, and sequential prefers it.
    dead.set_fault(Fault::Normal);
    let back = wait_until(Duration::from_secs(10), || async {
        a_of(&c.udp("www.example.org.", RecordType::A).await) == vec!["192.0.2.66"]
    })
    .await;
    assert!(back, "up again after a passing health check");
}

#[tokio::test]
async fn all_down_picks_one_at_random_or_fails_fast() {
    let a = FakeUpstream::builder()
        .wildcard_a("192.0.2.1")
        .fault(Fault::Drop)
        .start()
        .await;
    let b = FakeUpstream::builder()
        .wildcard_a("192.0.2.2")
        .fault(Fault::Drop)
        .start()
        .await;
    let agent = start(&format!(
        "    forward . {a} {b} {{\n        max_fails 1\n        health_check 10s\n        read_timeout 200ms\n    }}"
    ))
    .await;
    let c = Client::new(agent.udp());
    // Both fail and go down; their first health checks fail too (wait for
    // them to arrive before healing, so they cannot pass).
    let m = c.udp("one.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let checked = wait_until(Duration::from_secs(5), || async {
        a.count(".", RecordType::NS) >= 1 && b.count(".", RecordType::NS) >= 1
    })
    .await;
    assert!(checked);
    // Now all are down (next checks in 10 s): forward still tries one at random.
    a.set_fault(Fault::Normal);
    b.set_fault(Fault::Normal);
    let m = c.udp("two.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_of(&m).len(), 1);
    assert_eq!(
        a.count("two.example.org.", RecordType::A) + b.count("two.example.org.", RecordType::A),
        1
    );

    let x = FakeUpstream::builder()
        .wildcard_a("192.0.2.1")
        .fault(Fault::Drop)
        .start()
        .await;
    let agent = start(&format!(
        "    forward . {x} {{\n        max_fails 1\n        health_check 10s\n        read_timeout 1s\n        failfast_all_unhealthy_upstreams\n    }}"
    ))
    .await;
    let c = Client::new(agent.udp());
    assert_eq!(
        c.udp("one.example.org.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::ServFail
    );
    let checked = wait_until(Duration::from_secs(5), || async {
        x.count(".", RecordType::NS) >= 1
    })
    .await;
    assert!(checked);
    x.set_fault(Fault::Normal);
    let seen = x.count("two.example.org.", RecordType::A);
    let t = std::time::Instant::now();
    assert_eq!(
        c.udp("two.example.org.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::ServFail
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "fails fast (an attempt would take 1 s)"
    );
    assert_eq!(
        x.count("two.example.org.", RecordType::A),
        seen,
        "no upstream asked"
    );
}

#[tokio::test]
async fn wrong_id_and_garbage_replies_are_ignored() {
    for fault in [Fault::WrongId, Fault::Garbage] {
        let bad = FakeUpstream::builder()
            .a("www.example.org.", "192.0.2.66")
            .fault(fault)
            .start()
            .await;
        let good = FakeUpstream::builder()
            .a("www.example.org.", "192.0.2.1")
            .start()
            .await;
        let agent = start(&format!(
            "    forward . {bad} {good} {{\n        policy sequential\n        read_timeout 300ms\n    }}"
        ))
        .await;
        let m = Client::new(agent.udp())
            .udp("www.example.org.", RecordType::A)
            .await;
        assert_eq!(
            a_of(&m),
            vec!["192.0.2.1"],
            "{fault:?}: the bad reply is never returned"
        );
        assert_eq!(
            bad.count("www.example.org.", RecordType::A),
            1,
            "{fault:?}: the bad one was asked"
        );
    }
}

#[tokio::test]
async fn max_concurrent_refuses_the_excess() {
    let up = FakeUpstream::builder()
        .wildcard_a("192.0.2.1")
        .fault(Fault::Delay(Duration::from_millis(1500)))
        .start()
        .await;
    let agent = start(&format!(
        "    forward . {up} {{\n        max_concurrent 2\n    }}"
    ))
    .await;
    let c = Client::new(agent.udp());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..6 {
        set.spawn(async move {
            c.udp(&format!("q{i}.example.org."), RecordType::A)
                .await
                .metadata
                .response_code
        });
    }
    let mut refused = 0;
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            ResponseCode::Refused => refused += 1,
            ResponseCode::NoError => ok += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((ok, refused), (2, 4));
}

#[tokio::test]
async fn except_and_next() {
    let first = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let second = FakeUpstream::builder()
        .wildcard_a("192.0.2.2")
        .start()
        .await;
    let agent = start(&format!(
        "    forward . {first} {{\n        except internal.example.org\n        next NXDOMAIN\n    }}\n    forward . {second}\n    whoami"
    ))
    .await;
    let c = Client::new(agent.udp());
    assert_eq!(
        a_of(&c.udp("www.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    // NXDOMAIN from the first: handed to the second forward.
    assert_eq!(
        a_of(&c.udp("missing.example.org.", RecordType::A).await),
        vec!["192.0.2.2"]
    );
    // except: the first forward passes it on unasked.
    assert_eq!(
        a_of(&c.udp("a.internal.example.org.", RecordType::A).await),
        vec!["192.0.2.2"]
    );
    assert_eq!(first.count("a.internal.example.org.", RecordType::A), 0);
}

#[tokio::test]
async fn policies_distribute_as_named() {
    let n = 30;
    for (policy, check) in [
        (
            "sequential",
            (|a: usize, b: usize| a == 30 && b == 0) as fn(usize, usize) -> bool,
        ),
        ("round_robin", |a, b| a == 15 && b == 15),
        ("random", |a, b| a > 0 && b > 0 && a + b == 30),
    ] {
        let a = FakeUpstream::builder()
            .wildcard_a("192.0.2.1")
            .start()
            .await;
        let b = FakeUpstream::builder()
            .wildcard_a("192.0.2.2")
            .start()
            .await;
        // One attempt per query: a slow moment on a loaded machine then
        // costs an answer, never a count on the other upstream.
        let agent = start(&format!(
            "    forward . {a} {b} {{\n        policy {policy}\n        max_connect_attempts 1\n    }}"
        ))
        .await;
        let c = Client::new(agent.udp());
        for i in 0..n {
            let _ = c.udp(&format!("p{i}.example.org."), RecordType::A).await;
        }
        let (qa, qb) = (a.udp_queries(), b.udp_queries());
        assert!(check(qa, qb), "{policy}: {qa} / {qb}");
    }
}

#[tokio::test]
async fn tcp_connections_are_pooled_and_expire() {
    let up = FakeUpstream::builder()
        .wildcard_a("192.0.2.1")
        .start()
        .await;
    let agent = start(&format!(
        "    forward . {up} {{\n        force_tcp\n        expire 300ms\n    }}"
    ))
    .await;
    let c = Client::new(agent.udp());
    for i in 0..50 {
        assert_eq!(
            a_of(&c.udp(&format!("r{i}.example.org."), RecordType::A).await),
            vec!["192.0.2.1"]
        );
    }
    assert_eq!(up.tcp_queries(), 50);
    assert!(
        up.tcp_connections() <= 2,
        "{} connections for 50 queries",
        up.tcp_connections()
    );
    // Idle, they close after `expire`.
    let closed = wait_until(Duration::from_secs(10), || async { up.tcp_open() == 0 }).await;
    assert!(closed, "idle connections closed");
    // And a new query opens a fresh one.
    assert_eq!(
        a_of(&c.udp("again.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
}

#[tokio::test]
async fn max_age_retires_old_connections() {
    let up = FakeUpstream::builder()
        .wildcard_a("192.0.2.1")
        .start()
        .await;
    let agent = start(&format!(
        "    forward . {up} {{\n        force_tcp\n        max_age 200ms\n    }}"
    ))
    .await;
    let c = Client::new(agent.udp());
    assert_eq!(
        a_of(&c.udp("a.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    assert_eq!(up.tcp_connections(), 1);
    // Let the connection age past max_age (time must pass: nothing to wait on).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a_of(&c.udp("b.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    assert_eq!(
        up.tcp_connections(),
        2,
        "an aged connection takes no new query"
    );
    let closed = wait_until(Duration::from_secs(10), || async { up.tcp_open() <= 1 }).await;
    assert!(closed, "the aged connection closes once idle");
}

#[tokio::test]
async fn dns_over_tls_with_a_test_ca() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .tls()
        .start()
        .await;
    let (tls_addr, ca) = up.tls.clone().unwrap();
    let agent = Agent::corefile(format!(
        ".:0 {{\n    bind 127.0.0.1\n    forward . tls://{tls_addr} {{\n        tls ca.pem\n        tls_servername dns.example.test\n    }}\n}}\n\
         example.net:0 {{\n    bind 127.0.0.1\n    forward . tls://{tls_addr} {{\n        tls ca.pem\n        tls_servername wrong.example.test\n        max_fails 0\n        read_timeout 500ms\n    }}\n}}\n"
    ))
    .file("ca.pem", ca)
    .start()
    .await;
    let c = Client::new(agent.udp());
    for _ in 0..3 {
        assert_eq!(
            a_of(&c.udp("www.example.org.", RecordType::A).await),
            vec!["192.0.2.1"]
        );
    }
    assert_eq!(up.tcp_queries(), 3);
    assert_eq!(
        up.tcp_connections(),
        1,
        "one TLS connection carries them all"
    );
    // A name the certificate does not carry fails verification: SERVFAIL, not an answer.
    let m = c.udp("www.example.net.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn dns_over_tls_presents_the_client_certificate() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .tls_client_auth()
        .start()
        .await;
    let (tls_addr, ca) = up.tls.clone().unwrap();
    let (cert, key) = up.tls_client.clone().unwrap();
    // `tls CERT KEY CA` authenticates; `tls CA` alone is refused by this
    // upstream, so its zone gets SERVFAIL.
    let agent = Agent::corefile(format!(
        ".:0 {{\n    bind 127.0.0.1\n    forward . tls://{tls_addr}%dns.example.test {{\n        tls client.pem client.key ca.pem\n    }}\n}}\n\
         example.net:0 {{\n    bind 127.0.0.1\n    forward . tls://{tls_addr}%dns.example.test {{\n        tls ca.pem\n        max_fails 0\n        read_timeout 500ms\n    }}\n}}\n"
    ))
    .file("ca.pem", ca)
    .file("client.pem", cert)
    .file("client.key", key)
    .start()
    .await;
    let c = Client::new(agent.udp());
    assert_eq!(
        a_of(&c.udp("www.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    assert_eq!(up.tcp_queries(), 1);
    let m = c.udp("www.example.net.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(up.tcp_queries(), 1, "no query without the certificate");
}

#[tokio::test]
async fn dns_over_tls_resumes_sessions() {
    let up = FakeUpstream::builder()
        .wildcard_a("192.0.2.1")
        .tls()
        .start()
        .await;
    let (tls_addr, ca) = up.tls.clone().unwrap();
    let agent = Agent::corefile(format!(
        ".:0 {{\n    bind 127.0.0.1\n    forward . tls://{tls_addr}%dns.example.test {{\n        tls ca.pem\n        expire 100ms\n    }}\n}}\n"
    ))
    .file("ca.pem", ca)
    .start()
    .await;
    let c = Client::new(agent.udp());
    assert_eq!(
        a_of(&c.udp("a.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    // The idle connection expires; the next query opens a new one, which
    // resumes the session instead of a full handshake.
    let closed = wait_until(Duration::from_secs(10), || async { up.tcp_open() == 0 }).await;
    assert!(closed);
    assert_eq!(
        a_of(&c.udp("b.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    assert_eq!(up.tcp_connections(), 2);
    assert_eq!(
        up.tls_resumed(),
        1,
        "the second connection resumed the first's session"
    );
}

#[tokio::test]
async fn a_forwarding_loop_exits_non_zero() {
    let port = nodedns_tests::free_port();
    // The loop may be found before or after start-up completes: wait for
    // the exit either way.
    let (status, err) = Agent::corefile(format!(
        ".:{port} {{\n    bind 127.0.0.1\n    loop\n    forward . 127.0.0.1:{port}\n}}\n"
    ))
    .start_fails()
    .await;
    assert!(!status.success());
    assert!(
        err.contains("Loop (") && err.contains("detected for zone \".\""),
        "{err}"
    );
}

#[tokio::test]
async fn a_resolv_conf_upstream_file_is_re_read_when_it_changes() {
    let a = FakeUpstream::builder()
        .wildcard_a("192.0.2.1")
        .start()
        .await;
    let b = FakeUpstream::builder()
        .wildcard_a("192.0.2.2")
        .start()
        .await;
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    forward . resolv.conf\n}\n")
        .file("resolv.conf", format!("nameserver {a}\n"))
        .start()
        .await;
    let c = Client::new(agent.udp());
    assert_eq!(
        a_of(&c.udp("x.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    std::fs::write(
        agent.path("resolv.conf"),
        format!("# moved\nnameserver {b}\n"),
    )
    .unwrap();
    let moved = wait_until(Duration::from_secs(15), || async {
        a_of(&c.udp("y.example.org.", RecordType::A).await) == vec!["192.0.2.2"]
    })
    .await;
    assert!(moved, "the new nameserver is used without a reload");
}

#[tokio::test]
async fn failover_tries_the_next_upstream_on_listed_rcodes() {
    for (opt, want) in [
        ("        failover SERVFAIL REFUSED\n", ResponseCode::NoError),
        ("", ResponseCode::ServFail),
    ] {
        let bad = FakeUpstream::builder()
            .wildcard_a("192.0.2.66")
            .fault(Fault::ServFail)
            .start()
            .await;
        let good = FakeUpstream::builder()
            .wildcard_a("192.0.2.1")
            .start()
            .await;
        let agent = start(&format!(
            "    forward . {bad} {good} {{\n        policy sequential\n{opt}    }}"
        ))
        .await;
        let m = Client::new(agent.udp())
            .udp("x.example.org.", RecordType::A)
            .await;
        assert_eq!(m.metadata.response_code, want, "with {opt:?}");
        assert_eq!(bad.count("x.example.org.", RecordType::A), 1);
        assert_eq!(
            good.count("x.example.org.", RecordType::A),
            usize::from(!opt.is_empty())
        );
    }
}

#[tokio::test]
async fn next_on_nodata_hands_empty_answers_on() {
    let first = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let second = FakeUpstream::builder()
        .aaaa("www.example.org.", "2001:db8::1")
        .start()
        .await;
    let agent = start(&format!(
        "    forward . {first} {{\n        next_on_nodata\n    }}\n    forward . {second}"
    ))
    .await;
    let c = Client::new(agent.udp());
    // A: the first answers. AAAA: the first has none (NODATA), the second does.
    assert_eq!(
        a_of(&c.udp("www.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    let m = c.udp("www.example.org.", RecordType::AAAA).await;
    assert_eq!(m.answers.len(), 1, "{m:?}");
    assert_eq!(second.count("www.example.org.", RecordType::A), 0);
}

#[tokio::test]
async fn source_address_sets_where_queries_come_from() {
    let up = FakeUpstream::builder()
        .wildcard_a("192.0.2.1")
        .start()
        .await;
    let agent = start(&format!(
        "    forward . {up} {{\n        source_address 127.0.0.3\n    }}"
    ))
    .await;
    let _ = Client::new(agent.udp())
        .udp("x.example.org.", RecordType::A)
        .await;
    assert_eq!(
        up.udp_peers(),
        vec!["127.0.0.3".parse::<std::net::IpAddr>().unwrap()]
    );
}

#[tokio::test]
async fn a_reply_without_the_question_is_dropped() {
    // The upstream sends a SERVFAIL with the right ID and no question
    // before each real answer: the real one must be served, over UDP and
    // TCP, to concurrent (coalesced) clients as well.
    let up = FakeUpstream::builder()
        .wildcard_a("192.0.2.7")
        .fault(Fault::NoQuestionFirst)
        .start()
        .await;
    let agent = start(&format!("    cache\n    forward . {up}")).await;
    let c = Client::new(agent.udp());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..16 {
        set.spawn(async move {
            let name = format!("n{}.example.org.", i % 4);
            let m = if i % 2 == 0 {
                c.udp(&name, RecordType::A).await
            } else {
                c.tcp(&name, RecordType::A).await
            };
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert_eq!(m.queries.len(), 1, "{name}: the question is there");
            assert_eq!(a_of(&m), vec!["192.0.2.7"], "{name}");
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("client task");
    }
}

#[tokio::test]
async fn a_stalled_tcp_connection_is_replaced() {
    // Each connection answers two queries, then stays open and silent. A
    // query that times out there retires it; the next attempt (and the
    // health check) opens a fresh one, so every query is answered.
    let up = FakeUpstream::builder()
        .wildcard_a("192.0.2.8")
        .tcp_stall_after(2)
        .start()
        .await;
    let agent = start(&format!(
        "    forward . {up} {{\n        force_tcp\n        read_timeout 500ms\n        health_check 100ms\n    }}"
    ))
    .await;
    let c = Client::new(agent.udp());
    for i in 0..8 {
        let name = format!("s{i}.example.org.");
        let m = c.udp(&name, RecordType::A).await;
        assert_eq!(a_of(&m), vec!["192.0.2.8"], "{name}");
    }
    assert!(
        up.tcp_connections() >= 3,
        "{} connections: silent ones were replaced",
        up.tcp_connections()
    );
}

#[tokio::test]
async fn a_slow_but_live_upstream_is_waited_for() {
    // The first upstream answers fast, so its adaptive attempt timeout is
    // about 100 ms, but takes 700 ms for two names (it recurses); the
    // second takes longer than read_timeout for them. The first one's
    // answer is still taken, and no upstream is counted as failing.
    let mut ups = Vec::new();
    for slow in [Duration::from_millis(700), Duration::from_secs(3)] {
        ups.push(
            FakeUpstream::builder()
                .wildcard_a("192.0.2.9")
                .delay_name("slow1.example.org.", slow)
                .delay_name("slow2.example.org.", slow)
                .start()
                .await,
        );
    }
    let agent = start(&format!(
        "    forward . {} {} {{\n        policy sequential\n        read_timeout 2s\n        health_check 100ms\n    }}",
        ups[0], ups[1]
    ))
    .await;
    let c = Client::new(agent.udp());
    // Fast answers set a short RTT.
    for i in 0..8 {
        let m = c.udp(&format!("fast{i}.example.org."), RecordType::A).await;
        assert_eq!(a_of(&m), vec!["192.0.2.9"]);
    }
    for name in ["slow1.example.org.", "slow2.example.org."] {
        let m = c.udp(name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(a_of(&m), vec!["192.0.2.9"], "{name}");
    }
    // No attempt was counted as failed: no health check was started.
    for up in &ups {
        assert_eq!(up.count(".", RecordType::NS), 0, "{up} health-checked");
    }
}

#[tokio::test]
async fn an_upstream_that_dies_behind_hedges_is_still_marked_down() {
    // Both answer fast; then the first stops answering. Its queries are
    // hedged to the second, which answers; the first is health-checked,
    // fails the checks and is skipped from then on.
    let dead = FakeUpstream::builder()
        .wildcard_a("192.0.2.66")
        .start()
        .await;
    let good = FakeUpstream::builder()
        .wildcard_a("192.0.2.1")
        .start()
        .await;
    let agent = start(&format!(
        "    forward . {dead} {good} {{\n        policy sequential\n        max_fails 2\n        health_check 100ms\n        read_timeout 500ms\n    }}"
    ))
    .await;
    let c = Client::new(agent.udp());
    for i in 0..4 {
        let m = c.udp(&format!("w{i}.example.org."), RecordType::A).await;
        assert_eq!(a_of(&m), vec!["192.0.2.66"]);
    }
    dead.set_fault(Fault::Drop);
    let mut i = 0;
    let down = wait_until(Duration::from_secs(15), || {
        i += 1;
        let name = format!("d{i}.example.org.");
        let dead = &dead;
        async move {
            let m = c.udp(&name, RecordType::A).await;
            assert_eq!(a_of(&m), vec!["192.0.2.1"], "{name}: answered by the hedge");
            dead.count(&name, RecordType::A) == 0
        }
    })
    .await;
    assert!(down, "the dead upstream is skipped");
    assert!(dead.count(".", RecordType::NS) >= 2, "health-checked");
}
