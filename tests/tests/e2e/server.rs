//! Serving over UDP and TCP: routing, truncation, pipelining, limits.

use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use nodedns_tests::client::{query, read_frame, with_edns, write_frame};
use nodedns_tests::{Agent, Client};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn whoami_over_udp_and_tcp() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .start()
        .await;
    assert_eq!(
        agent.udp().port(),
        agent.tcp().port(),
        "UDP and TCP share the port"
    );
    let c = Client::new(agent.udp());
    for (m, proto) in [
        (c.udp("example.org.", RecordType::A).await, "_udp"),
        (c.tcp("example.org.", RecordType::A).await, "_tcp"),
    ] {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.additionals.len(), 2);
        let RData::A(a) = &m.additionals[0].data else {
            panic!("not A: {m:?}")
        };
        assert_eq!(a.0, std::net::Ipv4Addr::LOCALHOST);
        assert_eq!(
            m.additionals[1].name.to_ascii(),
            format!("{proto}.example.org.")
        );
    }
}

#[tokio::test]
async fn longest_zone_wins_and_unknown_zones_are_refused() {
    let agent = Agent::corefile(
        "example.org:0 {\n    bind 127.0.0.1\n    whoami\n}\n\
         sub.example.org:0 {\n    bind 127.0.0.1\n    hosts {\n        192.0.2.7 www.sub.example.org\n    }\n}\n",
    )
    .start()
    .await;
    let c = Client::new(agent.udp());
    let m = c.udp("www.sub.example.org.", RecordType::A).await;
    let RData::A(a) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(
        a.0.to_string(),
        "192.0.2.7",
        "the longer zone's block (hosts) answered"
    );
    let m = c.udp("www.example.org.", RecordType::A).await;
    assert!(
        m.answers.is_empty() && m.additionals.len() == 2,
        "whoami answered: {m:?}"
    );
    for m in [
        c.udp("example.net.", RecordType::A).await,
        c.tcp("example.net.", RecordType::A).await,
    ] {
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    }
}

/// A hosts entry with many addresses makes an answer larger than 512 bytes.
fn big_hosts() -> String {
    let mut s = String::new();
    for i in 1..=100 {
        s.push_str(&format!("192.0.2.{i} big.example.org\n"));
    }
    s
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    hosts hosts.txt\n}\n")
        .file("hosts.txt", big_hosts())
        .start()
        .await;
    let c = Client::new(agent.udp());
    // No EDNS: 512 bytes at most, TC set, what fits kept.
    let m = c.udp_msg(&query("big.example.org.", RecordType::A)).await;
    assert!(m.metadata.truncation, "TC set");
    assert!(
        m.answers.len() < 100 && !m.answers.is_empty(),
        "{} answers",
        m.answers.len()
    );
    assert!(m.to_vec().unwrap().len() <= 512);
    // EDNS 4096, but the server caps UDP at 1232 by default.
    let m = c
        .udp_msg(&with_edns(query("big.example.org.", RecordType::A), 4096))
        .await;
    assert!(m.metadata.truncation);
    let len = m.to_vec().unwrap().len();
    assert!(len > 512 && len <= 1232, "{len} bytes");
    assert!(m.edns.is_some(), "the OPT record survives truncation");
    // TCP: everything.
    let m = c.tcp("big.example.org.", RecordType::A).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
}

#[tokio::test]
async fn max_udp_size_is_configurable() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    hosts hosts.txt\n}\n")
        .file("hosts.txt", big_hosts())
        .arg("--max-udp-size")
        .arg("4096")
        .start()
        .await;
    let c = Client::new(agent.udp());
    let m = c
        .udp_msg(&with_edns(query("big.example.org.", RecordType::A), 4096))
        .await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
}

#[tokio::test]
async fn tcp_pipelined_queries_on_one_connection() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .start()
        .await;
    let c = Client::new(agent.tcp());
    let mut s = c.connect().await;
    // Twenty queries in one write, then read twenty answers.
    let mut ids = Vec::new();
    let mut buf = Vec::new();
    for i in 0..20u16 {
        let mut q = query(&format!("q{i}.example.org."), RecordType::A);
        q.metadata.id = 1000 + i;
        ids.push(q.metadata.id);
        let raw = q.to_vec().unwrap();
        buf.extend_from_slice(&u16::try_from(raw.len()).unwrap().to_be_bytes());
        buf.extend_from_slice(&raw);
    }
    s.write_all(&buf).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        let raw = read_frame(&mut s).await.expect("answer");
        let m = Message::from_vec(&raw).unwrap();
        assert_eq!(
            m.queries[0].name().to_ascii(),
            format!("q{}.example.org.", m.metadata.id - 1000)
        );
        got.push(m.metadata.id);
    }
    got.sort_unstable();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn tcp_length_prefix_split_across_writes() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .start()
        .await;
    let c = Client::new(agent.tcp());
    let mut s = c.connect().await;
    let q = query("split.example.org.", RecordType::A);
    let raw = q.to_vec().unwrap();
    let len = u16::try_from(raw.len()).unwrap().to_be_bytes();
    // One byte of the prefix, then the other with half the message, then the rest.
    s.write_all(&len[..1]).await.unwrap();
    s.flush().await.unwrap();
    tokio::task::yield_now().await;
    s.write_all(&len[1..]).await.unwrap();
    s.write_all(&raw[..raw.len() / 2]).await.unwrap();
    s.flush().await.unwrap();
    tokio::task::yield_now().await;
    s.write_all(&raw[raw.len() / 2..]).await.unwrap();
    let m = Message::from_vec(&read_frame(&mut s).await.expect("answer")).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
}

#[tokio::test]
async fn tcp_idle_connections_are_closed() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .arg("--tcp-idle-timeout")
        .arg("200ms")
        .start()
        .await;
    let c = Client::new(agent.tcp());
    let mut s = c.connect().await;
    write_frame(
        &mut s,
        &query("a.example.org.", RecordType::A).to_vec().unwrap(),
    )
    .await;
    assert!(read_frame(&mut s).await.is_some());
    // Then nothing: the server closes (EOF) well before the client's timeout.
    let started = std::time::Instant::now();
    assert!(read_frame(&mut s).await.is_none(), "connection closed");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn tcp_connection_limit_holds() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .arg("--max-tcp-conns")
        .arg("2")
        .start()
        .await;
    let c = Client::new(agent.tcp());
    let mut a = c.connect().await;
    let mut b = c.connect().await;
    for s in [&mut a, &mut b] {
        write_frame(s, &query("a.example.org.", RecordType::A).to_vec().unwrap()).await;
        assert!(read_frame(s).await.is_some(), "within the limit");
    }
    // The third is closed at once.
    let mut third = c.connect().await;
    let q = query("a.example.org.", RecordType::A).to_vec().unwrap();
    let len = u16::try_from(q.len()).unwrap().to_be_bytes();
    let _ = third.write_all(&len).await;
    let _ = third.write_all(&q).await;
    assert!(
        read_frame(&mut third).await.is_none(),
        "over the limit: closed"
    );
    // Closing one makes room.
    drop(a);
    let ok = nodedns_tests::wait_until(Duration::from_secs(5), || async {
        let mut s = c.connect().await;
        let q = query("b.example.org.", RecordType::A).to_vec().unwrap();
        let len = u16::try_from(q.len()).unwrap().to_be_bytes();
        if s.write_all(&len).await.is_err() || s.write_all(&q).await.is_err() {
            return false;
        }
        read_frame(&mut s).await.is_some()
    })
    .await;
    assert!(ok, "a slot frees when a connection closes");
}

#[tokio::test]
async fn same_zone_on_two_ports() {
    let [p1, p2] = nodedns_tests::free_ports();
    let agent = Agent::corefile(format!(
        "example.org:{p1} example.org:{p2} {{\n    bind 127.0.0.1\n    whoami\n}}\n"
    ))
    .start()
    .await;
    let ports: Vec<u16> = agent
        .listening
        .iter()
        .filter(|(t, _)| t == "udp")
        .map(|(_, a)| a.port())
        .collect();
    assert_eq!(ports.len(), 2, "{:?}", agent.listening);
    for p in ports {
        let c = Client::new(std::net::SocketAddr::from(([127, 0, 0, 1], p)));
        assert_eq!(
            c.udp("a.example.org.", RecordType::A)
                .await
                .metadata
                .response_code,
            ResponseCode::NoError
        );
        assert_eq!(
            c.tcp("a.example.org.", RecordType::A)
                .await
                .metadata
                .response_code,
            ResponseCode::NoError
        );
    }
}

#[tokio::test]
async fn several_zones_on_one_port() {
    let agent = Agent::corefile(
        "example.org:0 {\n    bind 127.0.0.1\n    whoami\n}\n\
         example.net:0 {\n    bind 127.0.0.1\n    whoami\n}\n",
    )
    .start()
    .await;
    // Both blocks on port 0 share one listener (the same key), and route by zone.
    let c = Client::new(agent.udp());
    assert_eq!(
        c.udp("a.example.org.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NoError
    );
    assert_eq!(
        c.udp("a.example.net.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NoError
    );
    assert_eq!(
        c.udp("a.example.com.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::Refused
    );
}

#[tokio::test]
async fn tcp_answers_leave_as_they_complete() {
    // slow.example.org waits 600 ms at the upstream; fast.example.org is
    // answered by hosts at once. Asked in that order on one connection,
    // the fast answer comes first.
    let up = nodedns_tests::FakeUpstream::builder()
        .wildcard_a("192.0.2.66")
        .fault(nodedns_tests::Fault::Delay(Duration::from_millis(600)))
        .start()
        .await;
    let agent = Agent::corefile(format!(
        ".:0 {{\n    bind 127.0.0.1\n    hosts {{\n        192.0.2.1 fast.example.org\n        fallthrough\n    }}\n    forward . {up}\n}}\n"
    ))
    .start()
    .await;
    let c = Client::new(agent.tcp());
    let mut s = c.connect().await;
    let mut slow = query("slow.example.org.", RecordType::A);
    slow.metadata.id = 1;
    let mut fast = query("fast.example.org.", RecordType::A);
    fast.metadata.id = 2;
    write_frame(&mut s, &slow.to_vec().unwrap()).await;
    write_frame(&mut s, &fast.to_vec().unwrap()).await;
    let first = Message::from_vec(&read_frame(&mut s).await.expect("first answer")).unwrap();
    let second = Message::from_vec(&read_frame(&mut s).await.expect("second answer")).unwrap();
    assert_eq!(
        (first.metadata.id, second.metadata.id),
        (2, 1),
        "out of order: fast first"
    );
}

/// `--udp-rcvbuf` sizes each UDP socket's receive buffer: while the agent
/// is stopped, a burst of queries waits in that buffer, and once it runs
/// again it answers only those that fitted.
#[tokio::test]
async fn udp_rcvbuf_bounds_the_queries_that_wait() {
    const BURST: u16 = 100;
    async fn answered_after_a_pause(rcvbuf: &str) -> usize {
        use nix::sys::signal::Signal;
        let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
            .arg("--udp-rcvbuf")
            .arg(rcvbuf)
            .start()
            .await;
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(agent.udp()).await.unwrap();
        agent.signal(Signal::SIGSTOP);
        // Stopped means every thread: none is still reading.
        let tasks = format!("/proc/{}/task", agent.pid());
        let stopped = nodedns_tests::wait_until(Duration::from_secs(5), || {
            let tasks = tasks.clone();
            async move {
                std::fs::read_dir(&tasks).is_ok_and(|d| {
                    d.flatten().all(|t| {
                        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|s| {
                            s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('T'))
                        })
                    })
                })
            }
        })
        .await;
        assert!(stopped, "the agent stops");
        for id in 0..BURST {
            let mut q = query("example.org.", RecordType::A);
            q.metadata.id = id;
            sock.send(&q.to_vec().unwrap()).await.unwrap();
        }
        agent.signal(Signal::SIGCONT);
        // Every reply that will come comes at once: stop after a quiet
        // second (bounded by the burst's size).
        let mut ids = std::collections::HashSet::new();
        let mut buf = [0u8; 512];
        for _ in 0..BURST {
            match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    ids.insert(Message::from_vec(&buf[..n]).unwrap().metadata.id);
                }
                _ => break,
            }
        }
        ids.len()
    }
    let roomy = answered_after_a_pause("8388608").await;
    let tight = answered_after_a_pause("4096").await;
    assert_eq!(roomy, usize::from(BURST), "8 MiB holds the whole burst");
    assert!(
        tight < usize::from(BURST) / 2,
        "4 KiB holds a few queries, not {tight}"
    );
}

/// CoreDNS's server refuses a query in any class but IN before a block
/// sees it, unless a block on the address runs `chaos` or `forward`
/// (`dnsserver.EnableChaos`); then every block on it gets such queries.
#[tokio::test]
async fn classes_other_than_in_are_refused_unless_a_block_opens_them() {
    use hickory_proto::rr::DNSClass;
    use nodedns_tests::client::query_class;
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .start()
        .await;
    let c = Client::new(agent.udp());
    for class in [DNSClass::CH, DNSClass::HS] {
        let q = query_class("version.bind.", RecordType::TXT, class);
        for m in [c.udp_msg(&q).await, c.tcp_msg(&q).await] {
            assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{m:?}");
            assert!(m.answers.is_empty() && m.additionals.is_empty(), "{m:?}");
        }
    }
    let m = c.udp("example.org.", RecordType::A).await;
    assert_eq!(m.additionals.len(), 2, "IN still reaches whoami");
    drop(agent);

    let agent = Agent::corefile(
        "version.bind:0 {\n    bind 127.0.0.1\n    chaos nodedns-test\n}\n\
         .:0 {\n    bind 127.0.0.1\n    whoami\n}\n",
    )
    .start()
    .await;
    let c = Client::new(agent.udp());
    let m = c
        .udp_msg(&query_class("version.bind.", RecordType::TXT, DNSClass::CH))
        .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let RData::TXT(txt) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(txt.to_string(), "nodedns-test");
}

/// A DS query goes to the parent zone's block (the DS lives in the
/// parent), as CoreDNS's server routes it; other types go to the longest zone.
#[tokio::test]
async fn ds_queries_go_to_the_parent_zones_block() {
    let agent = Agent::corefile(
        "example.org:0 {\n    bind 127.0.0.1\n    hosts {\n        192.0.2.9 www.example.org\n    }\n}\n\
         org:0 {\n    bind 127.0.0.1\n    whoami\n}\n",
    )
    .start()
    .await;
    let c = Client::new(agent.udp());
    for m in [
        c.udp("example.org.", RecordType::DS).await,
        c.tcp("example.org.", RecordType::DS).await,
    ] {
        assert_eq!(
            m.additionals.len(),
            2,
            "the org block (whoami) answered: {m:?}"
        );
    }
    let m = c.udp("www.example.org.", RecordType::A).await;
    let RData::A(a) = &m.answers[0].data else {
        panic!("{m:?}")
    };
    assert_eq!(
        a.0.to_string(),
        "192.0.2.9",
        "A stays with example.org's block"
    );
    let m = c.udp("example.org.", RecordType::NS).await;
    assert!(
        m.additionals.is_empty(),
        "NS stays with example.org's block: {m:?}"
    );
}

/// At `--max-inflight`, a TCP query that needs an upstream is refused at
/// once: a stream client has no retry timer and would wait for the idle timeout.
#[tokio::test]
async fn tcp_at_the_inflight_limit_is_refused_at_once() {
    let up = nodedns_tests::FakeUpstream::builder()
        .fault(nodedns_tests::Fault::Drop)
        .start()
        .await;
    let agent = Agent::corefile(format!(
        ".:0 {{\n    bind 127.0.0.1\n    forward . {up}\n}}\n"
    ))
    .arg("--max-inflight")
    .arg("1")
    .start()
    .await;
    // One query waits on the silent upstream and holds the only permit.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(agent.udp()).await.unwrap();
    sock.send(&query("held.example.org.", RecordType::A).to_vec().unwrap())
        .await
        .unwrap();
    assert!(
        nodedns_tests::wait_until(Duration::from_secs(5), || async { up.udp_queries() >= 1 }).await,
        "the first query reaches the upstream"
    );
    let c = Client::new(agent.tcp());
    let mut s = c.connect().await;
    let q = query("refused.example.org.", RecordType::A);
    write_frame(&mut s, &q.to_vec().unwrap()).await;
    let raw = read_frame(&mut s).await.expect("an answer, not silence");
    let m = Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.id, q.metadata.id);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert_eq!(
        up.count("refused.example.org.", RecordType::A),
        0,
        "not sent upstream"
    );
}

/// A query's deadline runs from its arrival: misses queued behind busy
/// workers (an upstream that never answers) are answered SERVFAIL once
/// their time is up, not after waiting a full deadline of their own.
#[tokio::test]
async fn queued_misses_are_answered_at_their_deadline_from_arrival() {
    // More than one socket thread's workers (256), all on one socket.
    const QUERIES: u16 = 320;
    let up = nodedns_tests::FakeUpstream::builder()
        .fault(nodedns_tests::Fault::Drop)
        .start()
        .await;
    let agent = Agent::corefile(format!(
        ".:0 {{\n    bind 127.0.0.1\n    forward . {up}\n}}\n"
    ))
    .arg("--udp-sockets")
    .arg("1")
    .start()
    .await;
    // The replies all come at once: several client sockets, so that none
    // overflows its receive buffer.
    let mut socks = Vec::new();
    for _ in 0..QUERIES / 32 {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.connect(agent.udp()).await.unwrap();
        socks.push(sock);
    }
    let sent = std::time::Instant::now();
    for id in 0..QUERIES {
        let mut q = query(&format!("q{id}.example.org."), RecordType::A);
        q.metadata.id = id;
        socks[usize::from(id) % socks.len()]
            .send(&q.to_vec().unwrap())
            .await
            .unwrap();
    }
    // Forward's deadline is 5 s from arrival; a queued query that waited
    // for a worker and then for a deadline of its own would take 10 s.
    let within = Duration::from_secs(9);
    let mut tasks = tokio::task::JoinSet::new();
    for sock in socks {
        tasks.spawn(async move {
            let mut ids = Vec::new();
            let mut buf = [0u8; 512];
            while ids.len() < 32 {
                let left = within.saturating_sub(sent.elapsed());
                let Ok(Ok(n)) = tokio::time::timeout(left, sock.recv(&mut buf)).await else {
                    break;
                };
                let m = Message::from_vec(&buf[..n]).unwrap();
                assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
                ids.push(m.metadata.id);
            }
            ids
        });
    }
    let mut answered = std::collections::HashSet::new();
    while let Some(ids) = tasks.join_next().await {
        answered.extend(ids.unwrap());
    }
    assert_eq!(
        answered.len(),
        usize::from(QUERIES),
        "answered within {within:?} of arrival"
    );
}

/// Removing a listener and adding it back at once (within the time its
/// old socket would drain queries waiting on upstreams) closes the old
/// socket first: it would otherwise take, and never read, a share of the
/// datagrams (SO_REUSEPORT).
#[tokio::test]
async fn a_listener_added_back_right_after_removal_gets_every_datagram() {
    use nix::sys::signal::Signal;
    const QUERIES: usize = 40;
    let up = nodedns_tests::FakeUpstream::builder()
        .fault(nodedns_tests::Fault::Drop)
        .start()
        .await;
    let [p1, p2] = nodedns_tests::free_ports();
    let one = format!(".:{p1} {{\n    bind 127.0.0.1\n    whoami\n}}\n");
    let both = format!(
        "{one}example.org:{p2} {{\n    bind 127.0.0.1\n    forward . {up}\n}}\n\
         .:{p2} {{\n    bind 127.0.0.1\n    whoami\n}}\n"
    );
    let agent = Agent::corefile(both.clone())
        .arg("--udp-sockets")
        .arg("1")
        .start()
        .await;
    let reloaded = |n: usize| {
        let agent = &agent;
        nodedns_tests::wait_until(Duration::from_secs(10), move || async move {
            agent
                .stdout()
                .iter()
                .filter(|l| l.as_str() == "nodedns reloaded")
                .count()
                >= n
        })
    };
    let addr2 = std::net::SocketAddr::from(([127, 0, 0, 1], p2));
    // A query waits on the silent upstream: p2's socket has work in flight.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(addr2).await.unwrap();
    sock.send(&query("held.example.org.", RecordType::A).to_vec().unwrap())
        .await
        .unwrap();
    assert!(
        nodedns_tests::wait_until(Duration::from_secs(5), || async { up.udp_queries() >= 1 }).await
    );
    std::fs::write(agent.path("Corefile"), &one).unwrap();
    agent.signal(Signal::SIGUSR1);
    assert!(reloaded(1).await, "removed: {:?}", agent.stdout());
    std::fs::write(agent.path("Corefile"), &both).unwrap();
    agent.signal(Signal::SIGUSR1);
    assert!(reloaded(2).await, "added back: {:?}", agent.stdout());
    // Each from its own socket (its own port, so its own SO_REUSEPORT
    // hash), sent once: a datagram given to an unread socket is lost.
    let c = Client::new(addr2);
    let raw = query("who.example.net.", RecordType::A).to_vec().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..QUERIES {
        let raw = raw.clone();
        tasks.spawn(async move { c.udp_raw_within(&raw, Duration::from_secs(3)).await });
    }
    let mut answered = 0;
    while let Some(r) = tasks.join_next().await {
        answered += usize::from(r.unwrap().is_some());
    }
    assert_eq!(answered, QUERIES, "every datagram answered");
}
