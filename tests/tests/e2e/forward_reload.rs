//! forward over a reload: an upstream whose pool settings did not change
//! keeps its pool (connections, sockets) and its health; one whose
//! settings changed gets a fresh pool, and the old one closes; a listener
//! removed by the reload takes no query of the remaining ones down with
//! the sockets its thread was reading.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use nix::sys::signal::Signal;
use nodedns_tests::client::query;
use nodedns_tests::{Agent, Client, FakeUpstream, Fault, free_ports, wait_until};

fn a_of(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

/// Waits until the agent has printed `nodedns reloaded` `n` times.
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

/// Rewrites the agent's Corefile and signals a reload; waits for the `n`th.
async fn reload(agent: &Agent, text: &str, n: usize) {
    std::fs::write(agent.path("Corefile"), text).unwrap();
    agent.signal(Signal::SIGUSR1);
    assert!(
        reloaded(agent, n).await,
        "reload {n}: stdout {:?}, stderr {:?}",
        agent.stdout(),
        agent.stderr()
    );
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_upstreams_connection_and_a_changed_one_gets_a_fresh_pool() {
    let up = FakeUpstream::builder()
        .wildcard_a("192.0.2.1")
        .start()
        .await;
    let text = |expire: &str, extra: &str| {
        format!(
            ".:0 {{\n    bind 127.0.0.1\n    forward . {up} {{\n        force_tcp\n        expire {expire}\n    }}\n}}\n{extra}"
        )
    };
    let agent = Agent::corefile(text("1m", "")).start().await;
    let c = Client::new(agent.udp());
    for i in 0..5 {
        assert_eq!(
            a_of(&c.udp(&format!("r{i}.example.org."), RecordType::A).await),
            vec!["192.0.2.1"]
        );
    }
    assert_eq!(up.tcp_connections(), 1, "one pooled connection");
    // A change elsewhere: a block added. Port 0 again: the same listener.
    let extra = "example.net:0 {\n    bind 127.0.0.1\n    whoami\n}\n";
    reload(&agent, &text("1m", extra), 1).await;
    for i in 5..10 {
        assert_eq!(
            a_of(&c.udp(&format!("r{i}.example.org."), RecordType::A).await),
            vec!["192.0.2.1"]
        );
    }
    assert_eq!(up.tcp_queries(), 10);
    assert_eq!(
        up.tcp_connections(),
        1,
        "the pool was carried over the reload: still one connection"
    );
    // A change of the forward's own pool settings: a fresh pool…
    reload(&agent, &text("2m", extra), 2).await;
    assert_eq!(
        a_of(&c.udp("fresh.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    assert_eq!(up.tcp_connections(), 2, "a fresh pool, a new connection");
    // …and the old pool is closed once the old config is dropped.
    let closed = wait_until(Duration::from_secs(10), || async { up.tcp_open() == 1 }).await;
    assert!(closed, "{} connections open", up.tcp_open());
}

#[tokio::test]
async fn an_upstream_marked_down_is_still_down_right_after_a_reload() {
    let dead = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.66")
        .fault(Fault::Drop)
        .start()
        .await;
    let good = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let text = |extra: &str| {
        format!(
            ".:0 {{\n    bind 127.0.0.1\n    forward . {dead} {good} {{\n        policy sequential\n        max_fails 2\n        read_timeout 300ms\n    }}\n}}\n{extra}"
        )
    };
    let agent = Agent::corefile(text("")).start().await;
    let c = Client::new(agent.udp());
    // The dead one is asked first until it is marked down (max_fails).
    for _ in 0..5 {
        assert_eq!(
            a_of(&c.udp("www.example.org.", RecordType::A).await),
            vec!["192.0.2.1"]
        );
    }
    let before = dead.count("www.example.org.", RecordType::A);
    assert!(
        (1..=3).contains(&before),
        "{before} tries before it was down"
    );
    // A reload that leaves the forward alone.
    let extra = "example.net:0 {\n    bind 127.0.0.1\n    whoami\n}\n";
    reload(&agent, &text(extra), 1).await;
    // Still down: the good one answers at once, the dead one is not asked.
    for _ in 0..5 {
        assert_eq!(
            a_of(&c.udp("www.example.org.", RecordType::A).await),
            vec!["192.0.2.1"]
        );
    }
    assert_eq!(
        dead.count("www.example.org.", RecordType::A),
        before,
        "the dead upstream's failures were carried: it is skipped"
    );
}

/// A UDP upstream that records the source ports it is asked from, and
/// answers names that start with `slow` after a delay.
struct PortUpstream {
    addr: SocketAddr,
    ports: Arc<Mutex<HashSet<u16>>>,
    slow: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl PortUpstream {
    async fn start(delay: Duration) -> Self {
        let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let ports = Arc::new(Mutex::new(HashSet::new()));
        let slow = Arc::new(AtomicUsize::new(0));
        let (p, s) = (Arc::clone(&ports), Arc::clone(&slow));
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                p.lock().unwrap().insert(peer.port());
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut r = q.clone();
                r.metadata.message_type = hickory_proto::op::MessageType::Response;
                r.metadata.recursion_available = true;
                let Ok(wire) = r.to_vec() else { continue };
                let is_slow = q
                    .queries
                    .first()
                    .is_some_and(|q| q.name().to_ascii().starts_with("slow"));
                if is_slow {
                    s.fetch_add(1, Ordering::SeqCst);
                    let sock = Arc::clone(&sock);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = sock.send_to(&wire, peer).await;
                    });
                } else {
                    let _ = sock.send_to(&wire, peer).await;
                }
            }
        });
        Self {
            addr,
            ports,
            slow,
            task,
        }
    }

    fn ports(&self) -> usize {
        self.ports.lock().unwrap().len()
    }
}

impl Drop for PortUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sockets in each upstream's UDP pool in the agent: one per core, at
/// least four (forward's `UDP_SOCKETS`).
fn pool_sockets() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get().max(4))
}

/// Two blocks on two ports forward to one upstream (one shared pool). The
/// first port's server threads open every socket of the pool, so the
/// second port's thread uses a socket read by one of them. A reload then
/// removes the first port: its threads end, and the readers with them,
/// while the pool lives on. A query waiting on such a socket at that
/// moment, and the queries after, are still answered over UDP, well
/// within the forward's timeout. `max_connect_attempts 1`: forward makes
/// no second attempt, so what is sent again is sent again by the pool.
#[tokio::test]
async fn queries_survive_the_removal_of_the_listener_whose_threads_read_the_pool() {
    const DELAY: Duration = Duration::from_millis(500);
    let up = PortUpstream::start(DELAY).await;
    let sockets = pool_sockets();
    let [p1, p2] = free_ports();
    let block = |port: u16| {
        format!(
            ".:{port} {{\n    bind 127.0.0.1\n    forward . {} {{\n        read_timeout 5s\n        max_connect_attempts 1\n        expire 1h\n    }}\n}}\n",
            up.addr
        )
    };
    let agent = Agent::corefile(format!("{}{}", block(p1), block(p2)))
        .arg("--udp-sockets")
        .arg(sockets.to_string())
        .start()
        .await;
    let at = |port: u16| Client::new(SocketAddr::from(([127, 0, 0, 1], port)));
    let answered = |m: Option<Vec<u8>>| {
        m.and_then(|raw| Message::from_vec(&raw).ok())
            .is_some_and(|m| m.metadata.response_code == ResponseCode::NoError)
    };
    // Queries from fresh client ports spread over the first port's
    // threads, until each socket of the pool has been opened by one.
    let mut filled = false;
    for i in 0..2000 {
        let m = at(p1)
            .udp_raw(
                &query(&format!("fill{i}.example.org."), RecordType::A)
                    .to_vec()
                    .unwrap(),
            )
            .await;
        assert!(answered(m), "fill{i} answered");
        if up.ports() >= sockets {
            filled = true;
            break;
        }
    }
    assert!(filled, "{} of {sockets} pool sockets opened", up.ports());
    // A slow query through the second port, on a socket the first port's
    // threads read.
    let waiting = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let m = at(p2)
            .udp_raw_within(
                &query("slow.example.org.", RecordType::A).to_vec().unwrap(),
                Duration::from_secs(10),
            )
            .await;
        (m, start.elapsed())
    });
    assert!(
        wait_until(Duration::from_secs(5), || async {
            up.slow.load(Ordering::SeqCst) >= 1
        })
        .await,
        "the slow query reached the upstream"
    );
    // The first port goes; its threads end.
    reload(&agent, &block(p2), 1).await;
    let (m, took) = waiting.await.unwrap();
    assert!(
        answered(m),
        "the waiting query was answered (after {took:?})"
    );
    assert!(
        took < Duration::from_secs(3),
        "promptly ({took:?}), well within read_timeout 5s"
    );
    // And every query after it, each at its first try.
    for i in 0..20 {
        let m = at(p2)
            .udp_raw_within(
                &query(&format!("after{i}.example.org."), RecordType::A)
                    .to_vec()
                    .unwrap(),
                Duration::from_secs(2),
            )
            .await;
        assert!(answered(m), "after{i} answered within 2 s");
    }
}
