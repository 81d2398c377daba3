//! What a cache miss or refresh holds while it waits upstream (its
//! coalescing flight, an in-flight permit) is given back on every path:
//! a query dropped at `--max-inflight`, a background refresh refused for
//! lack of room; verify answers every asker by its timeout; refreshes keep
//! the client's transport.

use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use nodedns_tests::client::a_of;
use nodedns_tests::client::{query, read_frame, write_frame};
use nodedns_tests::{Agent, Client, FakeUpstream, Fault, wait_until};

/// Two blocks on one address: `hang.test` forwards to `hang` (slow, or
/// never answering), everything else is cached in front of `up`.
async fn two_blocks(hang: &FakeUpstream, up: &FakeUpstream, cache: &str) -> Agent {
    Agent::corefile(format!(
        "hang.test:0 {{\n    bind 127.0.0.1\n    forward . {hang} {{\n        max_fails 0\n        read_timeout 4s\n    }}\n}}\n\
         .:0 {{\n    bind 127.0.0.1\n    {cache}\n    forward . {up} {{\n        max_fails 0\n    }}\n}}\n"
    ))
    .arg("--max-inflight")
    .arg("1")
    .start()
    .await
}

/// Holds the agent's only in-flight permit with a query to the upstream
/// that never answers; returns the task that ends when that query does.
async fn hold_the_permit(c: Client, hang: &FakeUpstream) -> tokio::task::JoinHandle<()> {
    let task = tokio::spawn(async move {
        let raw = query("x.hang.test.", RecordType::A).to_vec().unwrap();
        let _ = c.udp_raw_within(&raw, Duration::from_secs(30)).await;
    });
    let asked = wait_until(Duration::from_secs(10), || async {
        hang.count("x.hang.test.", RecordType::A) >= 1
    })
    .await;
    assert!(asked, "the query holding the permit reached its upstream");
    task
}

#[tokio::test]
async fn a_miss_dropped_at_the_inflight_limit_does_not_hold_its_flight() {
    for tcp in [false, true] {
        // Answers after a second: the retry below comes well within the
        // 5 s a leaked flight would make it wait.
        let hang = FakeUpstream::builder()
            .wildcard_a("192.0.2.1")
            .fault(Fault::Delay(Duration::from_secs(1)))
            .start()
            .await;
        let up = FakeUpstream::builder()
            .a("y.example.org.", "192.0.2.7")
            .start()
            .await;
        let agent = two_blocks(&hang, &up, "cache").await;
        let c = Client::new(agent.udp());
        let holder = hold_the_permit(c, &hang).await;
        // A miss with no permit left is turned away (dropped over UDP,
        // refused over TCP); its flight must end with it.
        let raw = query("y.example.org.", RecordType::A).to_vec().unwrap();
        if tcp {
            let mut s = c.connect().await;
            write_frame(&mut s, &raw).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), read_frame(&mut s)).await;
        } else {
            let _ = c.udp_raw_within(&raw, Duration::from_millis(500)).await;
        }
        assert_eq!(up.count("y.example.org.", RecordType::A), 0, "tcp={tcp}");
        tokio::time::timeout(Duration::from_secs(30), holder)
            .await
            .expect("the held query ends")
            .unwrap();
        // The client's retry asks at once: it does not wait out the
        // dropped query's flight (5 s).
        let t = Instant::now();
        let reply = c
            .udp_raw_within(&raw, Duration::from_secs(3))
            .await
            .unwrap_or_else(|| panic!("tcp={tcp}: the retry is answered within 3 s"));
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(a_of(&m), vec!["192.0.2.7"], "tcp={tcp}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}

#[tokio::test]
async fn background_refreshes_wait_for_room_under_the_inflight_limit() {
    let hang = FakeUpstream::builder().fault(Fault::Drop).start().await;
    let up = FakeUpstream::builder()
        .ttl(1)
        .a("stale.example.org.", "192.0.2.8")
        .start()
        .await;
    let agent = two_blocks(
        &hang,
        &up,
        "cache {\n        success 1000 1 1\n        serve_stale 1h\n    }",
    )
    .await;
    let c = Client::new(agent.udp());
    assert_eq!(
        a_of(&c.udp("stale.example.org.", RecordType::A).await),
        vec!["192.0.2.8"]
    );
    let holder = hold_the_permit(c, &hang).await;
    // Once the entry has expired, hits are stale (TTL 30) and each wants a
    // refresh: with no permit free, none may start.
    let stale = wait_until(Duration::from_secs(10), || async {
        c.udp("stale.example.org.", RecordType::A).await.answers[0].ttl == 30
    })
    .await;
    assert!(stale, "a stale answer");
    assert!(!holder.is_finished(), "the permit is still held");
    tokio::time::timeout(Duration::from_secs(30), holder)
        .await
        .expect("the held query ends")
        .unwrap();
    assert_eq!(
        up.count("stale.example.org.", RecordType::A),
        1,
        "no refresh ran while the in-flight bound was reached"
    );
    // With room again, the next stale hit refreshes.
    let refreshed = wait_until(Duration::from_secs(10), || async {
        let _ = c.udp("stale.example.org.", RecordType::A).await;
        up.count("stale.example.org.", RecordType::A) >= 2
    })
    .await;
    assert!(refreshed, "a refresh once there is room");
}

async fn cached(up: &FakeUpstream, cache: &str) -> Agent {
    Agent::corefile(format!(
        ".:0 {{\n    bind 127.0.0.1\n    {cache}\n    forward . {up} {{\n        max_fails 0\n    }}\n}}\n"
    ))
    .start()
    .await
}

#[tokio::test]
async fn verify_answers_every_asker_of_a_stale_entry_by_its_timeout() {
    let up = FakeUpstream::builder()
        .ttl(1)
        .a("v.example.org.", "192.0.2.9")
        .start()
        .await;
    let agent = cached(
        &up,
        "cache {\n        success 1000 1 1\n        serve_stale 1h verify 1s\n    }",
    )
    .await;
    let c = Client::new(agent.udp());
    assert_eq!(
        a_of(&c.udp("v.example.org.", RecordType::A).await),
        vec!["192.0.2.9"]
    );
    up.set_fault(Fault::Drop);
    // The first stale answer comes after the verify timeout; its refresh
    // is still waiting on the dead upstream.
    let stale = wait_until(Duration::from_secs(10), || async {
        c.udp("v.example.org.", RecordType::A).await.answers[0].ttl == 30
    })
    .await;
    assert!(stale, "a stale answer");
    // Later askers join that refresh, and are answered by their own
    // verify timeout too, not after the refresh gives up.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..3 {
        set.spawn(async move {
            let raw = query("v.example.org.", RecordType::A).to_vec().unwrap();
            let t = Instant::now();
            let r = c.udp_raw_within(&raw, Duration::from_millis(2800)).await;
            (r, t.elapsed())
        });
    }
    while let Some(r) = set.join_next().await {
        let (reply, took) = r.unwrap();
        let reply = reply.expect("answered within 2.8 s (verify 1 s)");
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(a_of(&m), vec!["192.0.2.9"], "{took:?}");
        assert_eq!(m.answers[0].ttl, 30, "stale");
    }
}

#[tokio::test]
async fn verify_honours_failure_recheck() {
    let up = FakeUpstream::builder()
        .ttl(1)
        .a("r.example.org.", "192.0.2.10")
        .start()
        .await;
    let agent = cached(
        &up,
        "cache {\n        success 1000 1 1\n        serve_stale 1h verify 2s\n    }",
    )
    .await;
    let c = Client::new(agent.udp());
    assert_eq!(
        a_of(&c.udp("r.example.org.", RecordType::A).await),
        vec!["192.0.2.10"]
    );
    up.set_fault(Fault::ServFail);
    // Expired: verify asks, the upstream fails, the stale answer is served.
    let stale = wait_until(Duration::from_secs(10), || async {
        c.udp("r.example.org.", RecordType::A).await.answers[0].ttl == 30
    })
    .await;
    assert!(stale, "a stale answer");
    let asked = up.count("r.example.org.", RecordType::A);
    // Within FAILURE_RECHECK (30 s by default), the next askers get the
    // stale answer at once and start no refresh.
    for _ in 0..3 {
        let m = c.udp("r.example.org.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers[0].ttl, 30);
    }
    assert_eq!(up.count("r.example.org.", RecordType::A), asked);
}

#[tokio::test]
async fn background_refreshes_keep_the_clients_transport() {
    let up = FakeUpstream::builder()
        .ttl(3)
        .a("hot.example.org.", "192.0.2.11")
        .start()
        .await;
    let agent = cached(
        &up,
        "cache {\n        success 1000 3 1\n        prefetch 2 1m 50%\n    }",
    )
    .await;
    let c = Client::new(agent.udp());
    let _ = c.udp("hot.example.org.", RecordType::A).await;
    let prefetched = wait_until(Duration::from_secs(10), || async {
        let _ = c.udp("hot.example.org.", RecordType::A).await;
        up.count("hot.example.org.", RecordType::A) >= 2
    })
    .await;
    assert!(prefetched, "a prefetch reached the upstream");
    assert_eq!(up.tcp_queries(), 0, "a UDP client's prefetch goes over UDP");
    assert!(up.udp_queries() >= 2);
}
