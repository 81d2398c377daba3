//! Running the agent the way operators do: under a supervisor that is slow
//! to read its output, behind probes, with Corefiles edited in place
//! (issue #9). Each test reproduces one way a node's DNS went down.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nix::sys::signal::Signal;
use nodedns_tests::{Agent, Client, FakeUpstream, free_ports, http_status, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

async fn stdout_has(agent: &Agent, needle: &str, n: usize, within: Duration) -> bool {
    wait_until(within, || async { count(&agent.stdout(), needle) >= n }).await
}

async fn stderr_has(agent: &Agent, needle: &str, n: usize, within: Duration) -> bool {
    wait_until(within, || async { count(&agent.stderr(), needle) >= n }).await
}

/// `log` writes a line per query; with stdout a pipe nobody reads, the
/// pipe fills after a few hundred queries. Queries must keep being
/// answered (lines are dropped and counted instead), and SIGTERM must
/// still stop the agent.
#[tokio::test]
async fn an_unread_stdout_pipe_does_not_stall_queries_or_shutdown() {
    let mut agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    log\n    whoami\n}\n")
        .unread_stdout()
        .start()
        .await;
    let c = Client::new(agent.udp());
    // More lines than the pipe (64 KiB, some 650 lines) and the agent's
    // output queue (8192 lines) hold together.
    for i in 0..12_000 {
        let name = format!("q{i}.example.org.");
        let m = if i % 10 == 0 {
            c.tcp(&name, RecordType::A).await
        } else {
            c.udp(&name, RecordType::A).await
        };
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "query {i}");
    }
    // Once the pipe is read again, the agent says what it dropped.
    agent.resume_stdout();
    assert!(
        stdout_has(&agent, "lines dropped", 1, Duration::from_secs(30)).await,
        "no dropped-lines report"
    );
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// Same, with stdout never read again: SIGTERM still ends the process.
#[tokio::test]
async fn sigterm_exits_while_stdout_stays_unread() {
    let mut agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    log\n    whoami\n}\n")
        .unread_stdout()
        .start()
        .await;
    let c = Client::new(agent.udp());
    for i in 0..1500 {
        let m = c.udp(&format!("q{i}.example.org."), RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "query {i}");
    }
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some(), "did not exit with stdout unread");
}

#[tokio::test]
async fn an_empty_corefile_is_refused_at_start() {
    for text in ["", "# nothing but a comment\n"] {
        let (status, stderr) = Agent::corefile(text).start_fails().await;
        assert!(!status.success(), "{text:?}: {status}");
        assert!(stderr.contains("no server blocks"), "{text:?}: {stderr}");
    }
}

const SERVING: &str = ".:0 {\n    bind 127.0.0.1\n    health 127.0.0.1:0\n    whoami\n";

async fn still_serving(agent: &Agent) {
    let c = Client::new(agent.udp());
    for m in [
        c.udp("example.org.", RecordType::A).await,
        c.tcp("example.org.", RecordType::A).await,
    ] {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    assert_eq!(
        http_status(agent.http("health"), "/health").await,
        Some(200)
    );
}

#[tokio::test]
async fn an_empty_corefile_is_refused_on_sigusr1() {
    let agent = Agent::corefile(format!("{SERVING}}}\n")).start().await;
    std::fs::write(agent.path("Corefile"), "").unwrap();
    agent.signal(Signal::SIGUSR1);
    assert!(stderr_has(&agent, "reload refused: ", 1, Duration::from_secs(10)).await);
    assert!(count(&agent.stderr(), "no server blocks") >= 1);
    still_serving(&agent).await;
}

#[tokio::test]
async fn an_empty_corefile_is_refused_by_the_reload_plugin_which_keeps_watching() {
    let agent = Agent::corefile(format!("{SERVING}    reload 2s 1s\n}}\n"))
        .start()
        .await;
    std::fs::write(agent.path("Corefile"), "").unwrap();
    assert!(
        stderr_has(&agent, "no server blocks", 1, Duration::from_secs(20)).await,
        "the reload plugin refuses the empty file"
    );
    still_serving(&agent).await;
    // Restoring a (changed) Corefile is picked up: reload still runs.
    let restored = format!("{SERVING}    reload 2s 1s\n    errors\n}}\n");
    std::fs::write(agent.path("Corefile"), restored).unwrap();
    assert!(
        stdout_has(&agent, "nodedns reloaded", 1, Duration::from_secs(20)).await,
        "reload kept watching after the refusal"
    );
    still_serving(&agent).await;
}

/// The Corefile imports its server blocks; only the imported file
/// changes. SIGUSR1 must apply it.
#[tokio::test]
async fn sigusr1_applies_a_change_in_an_imported_file() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let before = ".:0 {\n    bind 127.0.0.1\n    whoami\n}\n";
    let agent = Agent::corefile("import blocks.conf\n")
        .file("blocks.conf", before)
        .start()
        .await;
    let c = Client::new(agent.udp());
    let m = c.udp("www.example.org.", RecordType::A).await;
    assert!(m.answers.is_empty(), "whoami answers in additionals: {m:?}");
    let after = format!(".:0 {{\n    bind 127.0.0.1\n    forward . {up}\n}}\n");
    std::fs::write(agent.path("blocks.conf"), after).unwrap();
    agent.signal(Signal::SIGUSR1);
    assert!(
        stdout_has(&agent, "nodedns reloaded", 1, Duration::from_secs(10)).await,
        "the imported file's change was not applied; stderr: {:?}",
        agent.stderr()
    );
    let m = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(m.answers.len(), 1, "forwarded after the reload: {m:?}");
}

/// Reads until the peer closes (EOF or reset). `false` if it stayed open
/// for `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let read_all = async {
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all).await.is_ok()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Clients that send half a request line and stop: the agent closes them
/// within the header timeout, never holds more than its cap, and DNS and
/// the probes keep working meanwhile.
#[tokio::test]
async fn partial_http_requests_are_closed_and_dns_keeps_answering() {
    let agent = Agent::corefile(
        ".:0 {\n    bind 127.0.0.1\n    health 127.0.0.1:0\n    ready 127.0.0.1:0\n    whoami\n}\n",
    )
    .start()
    .await;
    let baseline = open_fds(agent.pid());
    let mut partial = Vec::new();
    for service in ["health", "ready"] {
        for _ in 0..100 {
            let mut s = TcpStream::connect(agent.http(service)).await.unwrap();
            s.write_all(b"GET /hea").await.unwrap();
            partial.push(s);
        }
    }
    // Accepted connections are capped (64 per endpoint); the rest wait in
    // the kernel's backlog and cost the agent no descriptor.
    let held = open_fds(agent.pid()).saturating_sub(baseline);
    assert!(
        held <= 2 * 64 + 8,
        "{held} descriptors for 200 idle clients"
    );
    let c = Client::new(agent.udp());
    assert_eq!(
        c.udp("example.org.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NoError
    );
    assert_eq!(
        c.tcp("example.org.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NoError
    );
    // Each is closed at most 5 s after it is accepted; with 100 per
    // endpoint and room for 64, that is two rounds. 60 s is a generous
    // bound on a loaded machine (without the fix they stay open for good).
    let start = Instant::now();
    for (i, s) in partial.iter_mut().enumerate() {
        let left = Duration::from_secs(60).saturating_sub(start.elapsed());
        assert!(closed_within(s, left).await, "connection {i} still open");
    }
    assert_eq!(
        http_status(agent.http("health"), "/health").await,
        Some(200)
    );
    assert_eq!(http_status(agent.http("ready"), "/ready").await, Some(200));
}

#[tokio::test]
async fn the_open_file_soft_limit_is_raised_to_the_hard_limit() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .soft_nofile(256)
        .start()
        .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", agent.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    let [soft, hard] = nums.as_slice() else {
        panic!("unexpected limits line: {line}");
    };
    assert_ne!(
        *hard, "256",
        "the hard limit must be above 256 for this test"
    );
    assert_eq!(soft, hard, "{line}");
}

/// A health endpoint that a reload moves to another address stops serving
/// on the old one: by the time the reload is announced, its connections
/// are closed — an idle keep-alive one, and one part-way through a request
/// (which a graceful stop would wait on for good).
#[tokio::test]
async fn a_moved_health_endpoint_closes_its_connections() {
    let [p1, p2] = free_ports();
    let corefile = |port: u16| {
        format!(".:0 {{\n    bind 127.0.0.1\n    health 127.0.0.1:{port}\n    whoami\n}}\n")
    };
    let agent = Agent::corefile(corefile(p1)).start().await;
    let mut idle = TcpStream::connect(("127.0.0.1", p1)).await.unwrap();
    let get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    idle.write_all(get).await.unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "keep-alive request");
    let mut partial = TcpStream::connect(("127.0.0.1", p1)).await.unwrap();
    partial
        .write_all(b"GET /health HTTP/1.1\r\nHo")
        .await
        .unwrap();
    std::fs::write(agent.path("Corefile"), corefile(p2)).unwrap();
    agent.signal(Signal::SIGUSR1);
    assert!(stdout_has(&agent, "nodedns reloaded", 1, Duration::from_secs(10)).await);
    assert_eq!(
        http_status(std::net::SocketAddr::from(([127, 0, 0, 1], p2)), "/health").await,
        Some(200)
    );
    // Both are closed already (well inside the 5 s header timeout, which
    // is not what closes them): EOF or reset, and no answer.
    for (what, s) in [("idle", &mut idle), ("partial", &mut partial)] {
        let _ = s.write_all(get).await;
        let mut rest = Vec::new();
        let got = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest)).await;
        assert!(
            got.is_ok(),
            "{what} connection left open on the old address"
        );
        assert!(
            !rest.windows(12).any(|w| w == b"HTTP/1.1 200"),
            "{what}: old address still serving: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }
}
