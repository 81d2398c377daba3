//! Stopping: SIGTERM and SIGINT end the process cleanly; `health`'s
//! lameduck keeps serving (and reporting healthy) for its duration.

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nix::sys::signal::Signal;
use nodedns_tests::{Agent, Client, http_status};

#[tokio::test]
async fn sigterm_and_sigint_exit_zero() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
            .start()
            .await;
        agent.signal(sig);
        let status = agent
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("exits");
        assert!(status.success(), "{sig}: {status}");
    }
}

#[tokio::test]
async fn lameduck_keeps_serving_then_stops() {
    let mut agent = Agent::corefile(
        ".:0 {\n    bind 127.0.0.1\n    health 127.0.0.1:0 {\n        lameduck 1s\n    }\n    ready 127.0.0.1:0\n    whoami\n}\n",
    )
    .start()
    .await;
    let health = agent.http("health");
    let ready = agent.http("ready");
    assert_eq!(http_status(health, "/health").await, Some(200));
    assert_eq!(http_status(ready, "/ready").await, Some(200));
    let c = Client::new(agent.udp());
    let sent = Instant::now();
    agent.signal(Signal::SIGTERM);
    // During the lame duck: healthy, not ready, still answering. (Ready
    // turning 503 proves the signal was handled before these queries.)
    let ok = nodedns_tests::wait_until(Duration::from_secs(5), || async {
        http_status(ready, "/ready").await == Some(503)
    })
    .await;
    assert!(ok, "ready turns 503 at the stop signal");
    assert_eq!(
        http_status(health, "/health").await,
        Some(200),
        "healthy during lameduck"
    );
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
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits after lameduck");
    assert!(status.success(), "{status}");
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "not before the lameduck ended"
    );
}

#[tokio::test]
async fn queries_in_flight_finish_before_exit() {
    let up = nodedns_tests::FakeUpstream::builder()
        .wildcard_a("192.0.2.1")
        .fault(nodedns_tests::Fault::Delay(Duration::from_millis(800)))
        .start()
        .await;
    let mut agent = Agent::corefile(format!(
        ".:0 {{\n    bind 127.0.0.1\n    forward . {up}\n}}\n"
    ))
    .start()
    .await;
    let c = Client::new(agent.udp());
    let asking = tokio::spawn(async move {
        c.udp_raw(
            &nodedns_tests::client::query("slow.example.org.", RecordType::A)
                .to_vec()
                .unwrap(),
        )
        .await
    });
    // Once the query is at the upstream, stop the agent.
    let at_upstream = nodedns_tests::wait_until(Duration::from_secs(5), || async {
        up.count("slow.example.org.", RecordType::A) >= 1
    })
    .await;
    assert!(at_upstream);
    agent.signal(Signal::SIGTERM);
    let reply = asking.await.unwrap().expect("the answer still comes");
    let m = hickory_proto::op::Message::from_vec(&reply).unwrap();
    assert_eq!(m.answers.len(), 1);
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("exits");
    assert!(status.success(), "{status}");
}
