//! cache in front of forward and a fake upstream: hits, TTLs, negative
//! caching, keys, serve-stale, prefetch, coalescing, bounds.

use std::time::Duration;

use hickory_proto::op::{Edns, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use nodedns_tests::client::a_of;
use nodedns_tests::client::query;
use nodedns_tests::{Agent, Client, FakeUpstream, Fault, wait_until};

async fn start(cache: &str, up: &FakeUpstream, forward_opts: &str) -> Agent {
    Agent::corefile(format!(
        ".:0 {{\n    bind 127.0.0.1\n    {cache}\n    forward . {up} {{\n        max_fails 0\n        read_timeout 300ms\n{forward_opts}    }}\n}}\n"
    ))
    .start()
    .await
}

#[tokio::test]
async fn a_hit_leaves_the_upstream_alone_and_ttl_counts_down() {
    let up = FakeUpstream::builder()
        .ttl(300)
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = start("cache 30", &up, "").await;
    let c = Client::new(agent.udp());
    let m = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(a_of(&m), vec!["192.0.2.1"]);
    for _ in 0..5 {
        let m = c.udp("WWW.example.org.", RecordType::A).await;
        assert_eq!(a_of(&m), vec!["192.0.2.1"]);
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "WWW.example.org.",
            "the asker's spelling"
        );
        assert!(m.answers[0].ttl <= 30, "clamped: {}", m.answers[0].ttl);
    }
    let m = c.tcp("www.example.org.", RecordType::A).await;
    assert_eq!(a_of(&m), vec!["192.0.2.1"]);
    assert_eq!(
        up.count("www.example.org.", RecordType::A),
        1,
        "hits never reach the upstream"
    );
    // The TTL counts down as time passes.
    let first = c.udp("www.example.org.", RecordType::A).await.answers[0].ttl;
    let lower = wait_until(Duration::from_secs(5), || async {
        c.udp("www.example.org.", RecordType::A).await.answers[0].ttl < first
    })
    .await;
    assert!(lower, "TTL counts down from {first}");
}

#[tokio::test]
async fn negative_answers_are_cached_with_the_soa_minimum() {
    // The fake upstream's SOA: TTL 60, MINIMUM 30.
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = start("cache", &up, "").await;
    let c = Client::new(agent.udp());
    let m = c.udp("nope.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = c.udp("nope.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        m.authorities[0].ttl <= 30,
        "negative TTL from the SOA minimum: {}",
        m.authorities[0].ttl
    );
    // NODATA too.
    let _ = c.udp("www.example.org.", RecordType::AAAA).await;
    let m = c.udp("www.example.org.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert_eq!(up.count("nope.example.org.", RecordType::A), 1);
    assert_eq!(up.count("www.example.org.", RecordType::AAAA), 1);
}

#[tokio::test]
async fn do_and_cd_are_cached_apart() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = start("cache", &up, "").await;
    let c = Client::new(agent.udp());
    let plain = query("www.example.org.", RecordType::A);
    let mut dnssec = query("www.example.org.", RecordType::A);
    let mut e = Edns::new();
    e.set_max_payload(1232);
    e.set_dnssec_ok(true);
    dnssec.set_edns(e);
    let mut cd = query("www.example.org.", RecordType::A);
    cd.metadata.checking_disabled = true;
    for m in [&plain, &dnssec, &cd] {
        for _ in 0..2 {
            let mut q = m.clone();
            q.metadata.id = rand_id();
            let _ = c.udp_msg(&q).await;
        }
    }
    assert_eq!(
        up.count("www.example.org.", RecordType::A),
        3,
        "three keys, one miss each"
    );
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static N: AtomicU16 = AtomicU16::new(100);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn disable_servfail_and_keepttl() {
    let up = FakeUpstream::builder()
        .ttl(300)
        .wildcard_a("192.0.2.1")
        .start()
        .await;
    let agent = start(
        "cache {\n        disable success internal.example.org\n        keepttl\n    }",
        &up,
        "",
    )
    .await;
    let c = Client::new(agent.udp());
    for _ in 0..2 {
        let _ = c.udp("a.internal.example.org.", RecordType::A).await;
    }
    assert_eq!(
        up.count("a.internal.example.org.", RecordType::A),
        2,
        "success disabled for the zone"
    );
    let _ = c.udp("www.example.org.", RecordType::A).await;
    let m = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(m.answers[0].ttl, 300, "keepttl: as received");
    // SERVFAIL is cached for `servfail` (5 s by default)...
    up.set_fault(Fault::ServFail);
    for _ in 0..3 {
        assert_eq!(
            c.udp("sf.example.org.", RecordType::A)
                .await
                .metadata
                .response_code,
            ResponseCode::ServFail
        );
    }
    assert_eq!(up.count("sf.example.org.", RecordType::A), 1);
    // ...and expires after it.
    let again = wait_until(Duration::from_secs(10), || async {
        let _ = c.udp("sf.example.org.", RecordType::A).await;
        up.count("sf.example.org.", RecordType::A) == 2
    })
    .await;
    assert!(again, "SERVFAIL expires after the servfail duration");
}

#[tokio::test]
async fn serve_stale_immediate_keeps_answering_with_the_upstream_down() {
    let up = FakeUpstream::builder()
        .ttl(1)
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = start(
        "cache {\n        success 1000 1 1\n        serve_stale 3s immediate 7s 1s\n    }",
        &up,
        // A slow failure upstream: waiting for it would take seconds.
        "        read_timeout 3s\n        max_connect_attempts 1\n",
    )
    .await;
    let c = Client::new(agent.udp());
    assert_eq!(
        a_of(&c.udp("www.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    up.set_fault(Fault::Drop);
    // Expired but within 3 s: served stale at once, TTL 7, upstream asked behind.
    let stale = wait_until(Duration::from_secs(5), || async {
        let m = c.udp("www.example.org.", RecordType::A).await;
        a_of(&m) == vec!["192.0.2.1"] && m.answers[0].ttl == 7
    })
    .await;
    assert!(stale, "a stale answer with RESPONSE_TTL");
    let t = std::time::Instant::now();
    let m = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(a_of(&m), vec!["192.0.2.1"]);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "immediate: no wait for the dead upstream"
    );
    // The refresh runs in the background: wait for it to reach the upstream.
    let tried = wait_until(Duration::from_secs(5), || async {
        up.count("www.example.org.", RecordType::A) >= 2
    })
    .await;
    assert!(tried, "refreshes were tried");
    // Past the stale window: no more stale answers, SERVFAIL from forward.
    let gone = wait_until(Duration::from_secs(10), || async {
        c.udp("www.example.org.", RecordType::A)
            .await
            .metadata
            .response_code
            == ResponseCode::ServFail
    })
    .await;
    assert!(gone, "stale entries expire after DURATION");
}

#[tokio::test]
async fn serve_stale_verify_asks_first_then_answers_stale() {
    let up = FakeUpstream::builder()
        .ttl(1)
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = start(
        "cache {\n        success 1000 1 1\n        serve_stale 1h verify 300ms\n    }",
        &up,
        "",
    )
    .await;
    let c = Client::new(agent.udp());
    assert_eq!(
        a_of(&c.udp("www.example.org.", RecordType::A).await),
        vec!["192.0.2.1"]
    );
    // Upstream up: an expired entry is refreshed (asked first), not served stale.
    let refreshed = wait_until(Duration::from_secs(5), || async {
        let _ = c.udp("www.example.org.", RecordType::A).await;
        up.count("www.example.org.", RecordType::A) >= 2
    })
    .await;
    assert!(refreshed);
    up.set_fault(Fault::Drop);
    // Upstream down: after the verify timeout, the stale answer (TTL 30 by default).
    let stale = wait_until(Duration::from_secs(5), || async {
        let m = c.udp("www.example.org.", RecordType::A).await;
        a_of(&m) == vec!["192.0.2.1"] && m.answers[0].ttl == 30
    })
    .await;
    assert!(stale, "stale after verify failed");
}

#[tokio::test]
async fn prefetch_refreshes_a_hot_name_before_it_expires() {
    let up = FakeUpstream::builder()
        .ttl(3)
        .a("hot.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = start(
        "cache {\n        success 1000 3 1\n        prefetch 2 1m 50%\n    }",
        &up,
        "",
    )
    .await;
    let c = Client::new(agent.udp());
    let _ = c.udp("hot.example.org.", RecordType::A).await;
    // Keep asking: once at most half the TTL is left, a hit triggers a
    // background refresh; every answer stays a hit (never TTL 0, never a miss).
    let prefetched = wait_until(Duration::from_secs(10), || async {
        let m = c.udp("hot.example.org.", RecordType::A).await;
        assert_eq!(a_of(&m), vec!["192.0.2.1"]);
        up.count("hot.example.org.", RecordType::A) >= 2
    })
    .await;
    assert!(prefetched, "a prefetch reached the upstream");
    // After the refresh, the TTL is back near the top.
    let fresh = wait_until(Duration::from_secs(5), || async {
        c.udp("hot.example.org.", RecordType::A).await.answers[0].ttl >= 2
    })
    .await;
    assert!(fresh);
}

#[tokio::test]
async fn concurrent_identical_misses_reach_the_upstream_once() {
    let up = FakeUpstream::builder()
        .a("burst.example.org.", "192.0.2.1")
        .fault(Fault::Delay(Duration::from_millis(300)))
        .start()
        .await;
    let agent = start("cache", &up, "        read_timeout 2s\n").await;
    let c = Client::new(agent.udp());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        set.spawn(async move { a_of(&c.udp("burst.example.org.", RecordType::A).await) });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.unwrap(), vec!["192.0.2.1"]);
    }
    assert_eq!(
        up.count("burst.example.org.", RecordType::A),
        1,
        "one upstream query for 100 clients"
    );
}

#[tokio::test]
async fn a_flood_of_unique_names_stays_within_capacity() {
    let up = FakeUpstream::builder()
        .wildcard_a("192.0.2.1")
        .start()
        .await;
    let agent = start("cache {\n        success 50\n    }", &up, "").await;
    let c = Client::new(agent.udp());
    for i in 0..300 {
        let _ = c.udp(&format!("n{i}.example.org."), RecordType::A).await;
    }
    // The first names were evicted: asking again goes upstream.
    let before = up.udp_queries();
    for i in 0..20 {
        let _ = c.udp(&format!("n{i}.example.org."), RecordType::A).await;
    }
    assert!(
        up.udp_queries() - before >= 15,
        "old entries were evicted to keep 50"
    );
    // The newest are still there.
    let before = up.udp_queries();
    for i in 290..300 {
        let _ = c.udp(&format!("n{i}.example.org."), RecordType::A).await;
    }
    assert!(up.udp_queries() - before <= 2);
}

fn soa_record(ttl: u32, minimum: u32) -> hickory_proto::rr::Record {
    use hickory_proto::rr::rdata::SOA;
    use hickory_proto::rr::{Name, Record};
    let zone = Name::from_ascii("example.org.").unwrap();
    Record::from_rdata(
        zone.clone(),
        ttl,
        RData::SOA(SOA::new(zone.clone(), zone, 1, 7200, 3600, 86400, minimum)),
    )
}

/// Issue #8, point 2: the reply to a miss carries the TTL the entry gets
/// (capped, or raised to MINTTL) in every section, as CoreDNS writes it, so
/// the first answer and the hits after it agree.
#[tokio::test]
async fn the_reply_to_a_miss_carries_the_cache_ttl() {
    let up = FakeUpstream::builder()
        .ttl(3600)
        .a("www.example.org.", "192.0.2.1")
        .ttl(1)
        .a("short.example.org.", "192.0.2.2")
        .canned(
            "gone.example.org.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
            vec![soa_record(3600, 3600)],
        )
        .start()
        .await;
    let agent = start("cache 30", &up, "").await;
    let c = Client::new(agent.udp());
    let miss = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(a_of(&miss), vec!["192.0.2.1"]);
    assert_eq!(miss.answers[0].ttl, 30, "capped on the miss too");
    let hit = c.udp("www.example.org.", RecordType::A).await;
    assert!((29..=30).contains(&hit.answers[0].ttl), "{:?}", hit.answers);
    // The denial cap.
    let miss = c.udp("gone.example.org.", RecordType::A).await;
    assert_eq!(miss.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(miss.authorities[0].ttl, 30, "{:?}", miss.authorities);
    // MINTTL raises a short TTL (5 s by default).
    let miss = c.udp("short.example.org.", RecordType::A).await;
    assert_eq!(miss.answers[0].ttl, 5, "{:?}", miss.answers);
    assert_eq!(up.count("www.example.org.", RecordType::A), 1);
}

/// Issue #8, point 14: a denial lives as long as its shortest record (a
/// CNAME of TTL 10 beside an SOA of TTL 3600), not the SOA's TTL.
#[tokio::test]
async fn a_denial_lives_as_long_as_its_shortest_record() {
    use hickory_proto::rr::rdata::CNAME;
    use hickory_proto::rr::{Name, Record};
    let cname = Record::from_rdata(
        Name::from_ascii("alias.example.org.").unwrap(),
        10,
        RData::CNAME(CNAME(Name::from_ascii("gone.example.org.").unwrap())),
    );
    let up = FakeUpstream::builder()
        .canned(
            "alias.example.org.",
            RecordType::A,
            ResponseCode::NXDomain,
            vec![cname],
            vec![soa_record(3600, 3600)],
        )
        .start()
        .await;
    let agent = start("cache", &up, "").await;
    let c = Client::new(agent.udp());
    let miss = c.udp("alias.example.org.", RecordType::A).await;
    assert_eq!(miss.metadata.response_code, ResponseCode::NXDomain);
    let ttls = |m: &hickory_proto::op::Message| {
        m.answers
            .iter()
            .chain(&m.authorities)
            .map(|r| r.ttl)
            .collect::<Vec<_>>()
    };
    assert_eq!(ttls(&miss), vec![10, 10], "{miss:?}");
    let hit = c.udp("alias.example.org.", RecordType::A).await;
    assert_eq!(hit.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(hit.answers.len(), 1);
    assert!(
        ttls(&hit).iter().all(|t| (9..=10).contains(t)),
        "cached for the CNAME's 10 s: {:?}",
        ttls(&hit)
    );
    assert_eq!(up.count("alias.example.org.", RecordType::A), 1);
}
