//! Every foundation plugin in one running agent, over UDP and TCP.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, RData, RecordType};
use nodedns_tests::client::{query, query_class};
use nodedns_tests::{Agent, Client};

const ALL_PLUGINS: &str = r#"(common) {
    errors
    log . {
        class all
    }
}
example.org:0 {
    bind lo {
        except ::1
    }
    import common
    health 127.0.0.1:0 {
        lameduck 100ms
    }
    ready 127.0.0.1:0
    any
    loadbalance round_robin
    minimal
    hosts hosts.txt {
        192.0.2.10 inline.example.org
        ttl 60
        reload 100ms
        fallthrough
    }
    whoami
}
bind:0 {
    bind 127.0.0.1
    import common
    chaos nodedns-test alice bob
}
"#;

#[tokio::test]
async fn a_corefile_with_every_plugin_serves_udp_and_tcp() {
    let agent = Agent::corefile(ALL_PLUGINS)
        .file(
            "hosts.txt",
            "192.0.2.1 www.example.org\n192.0.2.2 www.example.org\n192.0.2.3 www.example.org\n",
        )
        .start()
        .await;
    assert!(
        agent.listening.iter().all(|(_, a)| a.ip().is_loopback()),
        "bind lo: {:?}",
        agent.listening
    );
    assert!(
        agent.listening.iter().all(|(_, a)| a.is_ipv4()),
        "except ::1: {:?}",
        agent.listening
    );
    let c = Client::new(agent.udp());
    for tcp in [false, true] {
        let ask = |name: &'static str, t: RecordType| async move {
            if tcp {
                c.tcp(name, t).await
            } else {
                c.udp(name, t).await
            }
        };
        // hosts, file and inline.
        let m = ask("www.example.org.", RecordType::A).await;
        assert_eq!(m.answers.len(), 3, "tcp={tcp}: {m:?}");
        assert_eq!(m.answers[0].ttl, 60);
        let m = ask("inline.example.org.", RecordType::A).await;
        assert_eq!(m.answers.len(), 1);
        // fallthrough to whoami, whose additional records minimal strips.
        let m = ask("other.example.org.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative, "{m:?}");
        assert!(
            m.answers.is_empty() && m.additionals.is_empty(),
            "whoami, minimised: {m:?}"
        );
        // any.
        let m = ask("www.example.org.", RecordType::ANY).await;
        assert_eq!(m.answers[0].record_type(), RecordType::HINFO);
        // outside the block's zone.
        let m = ask("example.net.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }
    // chaos (class CH), in its own block for the bind. zone.
    let m = c
        .udp_msg(&query_class("version.bind.", RecordType::TXT, DNSClass::CH))
        .await;
    let RData::TXT(txt) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(txt.to_string(), "nodedns-test");
    let m = c
        .tcp_msg(&query_class("authors.bind.", RecordType::TXT, DNSClass::CH))
        .await;
    assert_eq!(m.answers.len(), 2);
    // loadbalance: the order of the three A records changes across queries.
    let mut orders = std::collections::HashSet::new();
    for _ in 0..30 {
        let m = c.udp("www.example.org.", RecordType::A).await;
        let order: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
        orders.insert(order);
    }
    assert!(orders.len() > 1, "round_robin shuffles");
    // log wrote a line per query to stdout.
    let ok = nodedns_tests::wait_until(Duration::from_secs(5), || async {
        agent
            .stdout()
            .iter()
            .any(|l| l.starts_with("[INFO] ") && l.contains("\"A IN www.example.org. udp"))
    })
    .await;
    assert!(ok, "log line: {:?}", agent.stdout());
    assert!(
        agent
            .stdout()
            .iter()
            .any(|l| l.contains("\"A IN www.example.org. tcp"))
    );
}

#[tokio::test]
async fn hosts_file_changes_are_picked_up() {
    let agent = Agent::corefile(
        ".:0 {\n    bind 127.0.0.1\n    hosts hosts.txt {\n        reload 100ms\n    }\n}\n",
    )
    .file("hosts.txt", "192.0.2.1 www.example.org\n")
    .start()
    .await;
    let c = Client::new(agent.udp());
    let m = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(m.answers[0].data.to_string(), "192.0.2.1");
    // A PTR for the same entry.
    let m = c.udp("1.2.0.192.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(m.answers[0].data.to_string(), "www.example.org.");
    std::fs::write(
        agent.path("hosts.txt"),
        "192.0.2.99 www.example.org\n# a longer file, so its size changes\n",
    )
    .unwrap();
    let ok = nodedns_tests::wait_until(Duration::from_secs(10), || async {
        let m = c.udp("www.example.org.", RecordType::A).await;
        m.answers
            .first()
            .is_some_and(|r| r.data.to_string() == "192.0.2.99")
    })
    .await;
    assert!(ok, "hosts re-read the changed file");
}

#[tokio::test]
async fn errors_logs_failures() {
    // No plugin answers for example.org: SERVFAIL "no next plugin", logged by errors.
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    errors\n    hosts {\n        192.0.2.1 a.example.net\n        fallthrough\n    }\n}\n")
        .start()
        .await;
    let m = Client::new(agent.udp())
        .udp_msg(&query("www.example.org.", RecordType::A))
        .await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let ok = nodedns_tests::wait_until(Duration::from_secs(5), || async {
        agent
            .stdout()
            .iter()
            .chain(agent.stderr().iter())
            .any(|l| l.contains("[ERROR] plugin/errors: 2 www.example.org. A"))
    })
    .await;
    assert!(
        ok,
        "stdout {:?} stderr {:?}",
        agent.stdout(),
        agent.stderr()
    );
}
