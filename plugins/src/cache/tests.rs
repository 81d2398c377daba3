use std::time::Duration;

use super::setup::parse;
use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;

fn cfg(text: &str) -> Result<CacheConfig, String> {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).map_err(|e| e.to_string())?;
    let mut d = Dispenser::new("cache", &tokens);
    parse(&mut d, &[".".to_string()]).map_err(|e| e.to_string())
}

#[test]
fn defaults_as_coredns() {
    let c = cfg("cache").unwrap();
    assert_eq!(c.zones, vec!["."]);
    assert_eq!(c.success.capacity, 9984);
    assert_eq!(c.denial.capacity, 9984);
    assert_eq!(c.success.max_ttl, Duration::from_secs(3600));
    assert_eq!(c.denial.max_ttl, Duration::from_secs(1800));
    assert_eq!(c.success.min_ttl, Duration::from_secs(5));
    assert_eq!(c.servfail, Duration::from_secs(5));
    assert!(c.prefetch.is_none() && c.stale.is_none() && !c.keepttl);
    let c = cfg("cache 30 example.org example.net").unwrap();
    assert_eq!(c.zones, vec!["example.org.", "example.net."]);
    assert_eq!(c.success.max_ttl, Duration::from_secs(30));
    assert_eq!(c.denial.max_ttl, Duration::from_secs(30));
    let c = cfg("cache 3").unwrap();
    assert_eq!(
        c.success.min_ttl,
        Duration::from_secs(3),
        "a cap below MINTTL lowers it"
    );
}

#[test]
fn every_option() {
    let c = cfg("cache 300 {
        success 5000 60 10
        denial 2500 30 2
        prefetch 10 2m 20%
        serve_stale 10m verify 500ms 15s 45s
        serve_stale_policy prefer_positive
        servfail 10s
        disable denial internal.example.org
        keepttl
        max_bytes 4M
    }")
    .unwrap();
    assert_eq!(
        (c.success.capacity, c.success.max_ttl, c.success.min_ttl),
        (5000, Duration::from_secs(60), Duration::from_secs(10))
    );
    assert_eq!(
        (c.denial.capacity, c.denial.max_ttl, c.denial.min_ttl),
        (2500, Duration::from_secs(30), Duration::from_secs(2))
    );
    assert_eq!(
        c.prefetch,
        Some(Prefetch {
            amount: 10,
            window: Duration::from_secs(120),
            percent: 20
        })
    );
    assert_eq!(
        c.stale,
        Some(Stale {
            duration: Duration::from_secs(600),
            mode: StaleMode::Verify(Duration::from_millis(500)),
            response_ttl: Duration::from_secs(15),
            failure_recheck: Duration::from_secs(45),
            prefer_positive: true,
        })
    );
    assert_eq!(c.servfail, Duration::from_secs(10));
    assert_eq!(c.denial.disabled, vec!["internal.example.org."]);
    assert!(c.success.disabled.is_empty());
    assert!(c.keepttl);
    assert_eq!(c.max_bytes, 4 << 20);
    let c = cfg("cache {\n serve_stale\n prefetch 2\n disable success\n}").unwrap();
    let s = c.stale.unwrap();
    assert_eq!(
        (s.duration, s.mode, s.response_ttl),
        (
            Duration::from_secs(3600),
            StaleMode::Immediate,
            Duration::from_secs(30)
        )
    );
    assert_eq!(c.prefetch.unwrap().window, Duration::from_secs(60));
    assert_eq!(c.prefetch.unwrap().percent, 10);
    assert_eq!(
        c.success.disabled,
        vec!["."],
        "disable without zones: the cache's zones"
    );
    let c = cfg("cache {\n serve_stale 1h immediate 5s 10s\n}").unwrap();
    let s = c.stale.unwrap();
    assert_eq!(
        (s.response_ttl, s.failure_recheck),
        (Duration::from_secs(5), Duration::from_secs(10))
    );
}

#[test]
fn errors_name_the_line() {
    let cases = [
        (
            "cache 0",
            "Corefile:1: cache: cache TTL can not be zero or negative",
        ),
        (
            "cache\ncache",
            "Corefile:2: cache: plugin can only be used once per server block",
        ),
        (
            "cache {\n bogus\n}",
            "Corefile:2: cache: option 'bogus' not supported",
        ),
        (
            "cache {\n success\n}",
            "Corefile:2: cache: wrong argument count or unexpected line ending after 'success'",
        ),
        (
            "cache {\n success x\n}",
            "Corefile:2: cache: success: invalid capacity 'x'",
        ),
        (
            "cache {\n denial 10 5 10\n}",
            "Corefile:2: cache: denial: MINTTL is larger than TTL",
        ),
        (
            "cache {\n prefetch 0\n}",
            "Corefile:2: cache: prefetch: amount must be at least 1",
        ),
        (
            "cache {\n prefetch 5 1m 95%\n}",
            "Corefile:2: cache: prefetch: percentage 95% is outside [10%, 90%]",
        ),
        (
            "cache {\n prefetch 5 soon\n}",
            "Corefile:2: cache: prefetch: invalid duration 'soon'",
        ),
        (
            "cache {\n serve_stale 1h later\n}",
            "Corefile:2: cache: serve_stale: invalid refresh mode 'later' (immediate or verify)",
        ),
        (
            "cache {\n serve_stale_policy prefer_positive\n}",
            "Corefile:2: cache: serve_stale_policy needs serve_stale (write serve_stale first)",
        ),
        (
            "cache {\n serve_stale\n serve_stale_policy newest\n}",
            "Corefile:3: cache: serve_stale_policy: unknown policy 'newest'",
        ),
        (
            "cache {\n servfail 6m\n}",
            "Corefile:2: cache: servfail: caching SERVFAIL responses over 5 minutes is not permitted",
        ),
        (
            "cache {\n disable everything\n}",
            "Corefile:2: cache: disable: unknown type 'everything' (success or denial)",
        ),
        (
            "cache {\n max_bytes lots\n}",
            "Corefile:2: cache: max_bytes: invalid size 'lots'",
        ),
        (
            "cache {\n keepttl now\n}",
            "Corefile:2: cache: unexpected argument 'now'",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(cfg(text).unwrap_err(), want, "{text}");
    }
}

#[test]
fn key_hash_separates_what_must_be_apart() {
    let n = crate::request::name_to_wire("example.org.").unwrap();
    let base = key_hash(&n, 1, 1, 0);
    assert_ne!(base, key_hash(&n, 28, 1, 0), "type");
    assert_ne!(base, key_hash(&n, 1, 3, 0), "class");
    assert_ne!(base, key_hash(&n, 1, 1, DO), "DO");
    assert_ne!(base, key_hash(&n, 1, 1, CD), "CD");
    assert_eq!(base, key_hash(&n, 1, 1, 0));
}

#[test]
fn clamps() {
    let t = Tier {
        capacity: 1,
        max_ttl: Duration::from_secs(30),
        min_ttl: Duration::from_secs(5),
        disabled: vec![],
    };
    assert_eq!(clamp(1, &t), 5);
    assert_eq!(clamp(20, &t), 20);
    assert_eq!(clamp(3000, &t), 30);
}

// === handler ===

use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};

use crate::pkg::test::{AnswerStub, SoaStub, Stub, client, run_with, with_context};
use crate::request::Transport;

/// Counts how often the query gets past the cache.
struct Counting<P> {
    n: AtomicUsize,
    inner: P,
}
impl<P: Plugin> Plugin for Counting<P> {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn query(&self, cx: &mut Context<'_>) -> Flow {
        self.n.fetch_add(1, Ordering::Relaxed);
        self.inner.query(cx)
    }
}
fn counting<P: Plugin>(inner: P) -> Counting<P> {
    Counting {
        n: AtomicUsize::new(0),
        inner,
    }
}

fn cache(text: &str) -> Cache {
    Cache::new(cfg(text).unwrap(), "dns://:53").unwrap()
}

fn q(name: &str, qtype: RecordType, id: u16, dnssec: Option<bool>, cd: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.metadata.checking_disabled = cd;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(d) = dnssec {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.set_dnssec_ok(d);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

#[test]
fn a_hit_answers_without_asking_on_and_patches_id_case_and_ttl() {
    let c = cache("cache 30");
    let next = counting(AnswerStub);
    let first = run_with(
        &c,
        &q("www.example.org.", RecordType::A, 1, None, false),
        Transport::Udp,
        &next,
    );
    assert!(matches!(first.flow, Flow::Next));
    assert_eq!(
        first.msg.unwrap().answers[0].ttl,
        30,
        "the miss reply carries the cache's TTL, as the hits will"
    );
    let hit = run_with(
        &c,
        &q("WWW.Example.ORG.", RecordType::A, 2, None, false),
        Transport::Udp,
        &next,
    );
    assert!(matches!(hit.flow, Flow::Answered));
    assert_eq!(next.n.load(Ordering::Relaxed), 1, "answered from the cache");
    let m = hit.msg.unwrap();
    assert_eq!(m.metadata.id, 2);
    assert_eq!(m.queries[0].name().to_ascii(), "WWW.Example.ORG.");
    assert_eq!(m.answers[0].ttl, 30, "clamped to the cache's cap");
    assert!(m.edns.is_none(), "no OPT for a query without one");
    // With EDNS, the hit carries an OPT of its own.
    // With EDNS (DO clear: the same key), the hit carries an OPT of its own.
    let hit = run_with(
        &c,
        &q("www.example.org.", RecordType::A, 3, Some(false), false),
        Transport::Udp,
        &next,
    );
    assert!(matches!(hit.flow, Flow::Answered));
    assert_eq!(next.n.load(Ordering::Relaxed), 1);
    let m = hit.msg.unwrap();
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    let s = c.stats();
    assert_eq!(s.success_entries, 1);
}

#[test]
fn do_and_cd_are_keyed_apart() {
    let c = cache("cache");
    let next = counting(AnswerStub);
    for (dnssec, cd) in [
        (None, false),
        (Some(true), false),
        (None, true),
        (Some(true), true),
    ] {
        let _ = run_with(
            &c,
            &q("www.example.org.", RecordType::A, 1, dnssec, cd),
            Transport::Udp,
            &next,
        );
        let again = run_with(
            &c,
            &q("www.example.org.", RecordType::A, 1, dnssec, cd),
            Transport::Udp,
            &next,
        );
        assert!(matches!(again.flow, Flow::Answered), "{dnssec:?} {cd}");
    }
    assert_eq!(next.n.load(Ordering::Relaxed), 4, "four keys, four misses");
}

#[test]
fn negative_answers_use_the_soa_ttl() {
    let c = cache("cache");
    let next = counting(SoaStub(ResponseCode::NXDomain));
    let _ = run_with(
        &c,
        &q("nope.example.org.", RecordType::A, 1, None, false),
        Transport::Udp,
        &next,
    );
    let hit = run_with(
        &c,
        &q("nope.example.org.", RecordType::A, 2, None, false),
        Transport::Udp,
        &next,
    );
    assert!(matches!(hit.flow, Flow::Answered));
    let m = hit.msg.unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].ttl, 60, "min(SOA TTL, SOA MINIMUM) = 60");
    assert_eq!(c.stats().denial_entries, 1);
    // NXDOMAIN without an SOA is not cached.
    let c = cache("cache");
    let next = counting(Stub::Rcode(ResponseCode::NXDomain));
    for _ in 0..2 {
        let _ = run_with(
            &c,
            &q("nope.example.org.", RecordType::A, 1, None, false),
            Transport::Udp,
            &next,
        );
    }
    assert_eq!(next.n.load(Ordering::Relaxed), 2);
}

#[test]
fn servfail_is_cached_for_servfail_duration_only_if_asked() {
    for (text, asked) in [("cache", 1), ("cache {\n servfail 0\n}", 2)] {
        let c = cache(text);
        let next = counting(Stub::Rcode(ResponseCode::ServFail));
        for _ in 0..2 {
            let _ = run_with(
                &c,
                &q("sf.example.org.", RecordType::A, 1, None, false),
                Transport::Udp,
                &next,
            );
        }
        assert_eq!(next.n.load(Ordering::Relaxed), asked, "{text}");
    }
}

#[test]
fn disable_and_zones_restrict_what_is_cached() {
    let c = cache("cache {\n disable success internal.example.org\n}");
    let next = counting(AnswerStub);
    for _ in 0..2 {
        let _ = run_with(
            &c,
            &q("a.internal.example.org.", RecordType::A, 1, None, false),
            Transport::Udp,
            &next,
        );
    }
    assert_eq!(next.n.load(Ordering::Relaxed), 2, "success disabled there");
    let c = Cache::new(cfg("cache example.net").unwrap(), "dns://:53").unwrap();
    let next = counting(AnswerStub);
    for _ in 0..2 {
        let _ = run_with(
            &c,
            &q("www.example.org.", RecordType::A, 1, None, false),
            Transport::Udp,
            &next,
        );
    }
    assert_eq!(
        next.n.load(Ordering::Relaxed),
        2,
        "outside the cache's zones"
    );
}

#[test]
fn keepttl_answers_with_the_ttl_as_received() {
    let c = cache("cache 30 {\n keepttl\n}");
    let next = counting(AnswerStub);
    let miss = run_with(
        &c,
        &q("www.example.org.", RecordType::A, 1, None, false),
        Transport::Udp,
        &next,
    );
    assert_eq!(miss.msg.unwrap().answers[0].ttl, 300, "the miss too");
    let hit = run_with(
        &c,
        &q("www.example.org.", RecordType::A, 2, None, false),
        Transport::Udp,
        &next,
    );
    assert_eq!(hit.msg.unwrap().answers[0].ttl, 300);
}

#[test]
fn capacity_bounds_hold_under_a_flood() {
    let c = cache("cache {\n success 100\n}");
    let next = AnswerStub;
    for i in 0..1000 {
        let _ = run_with(
            &c,
            &q(&format!("n{i}.example.org."), RecordType::A, 1, None, false),
            Transport::Udp,
            &next,
        );
        assert!(c.stats().success_entries <= 100);
    }
    assert!(c.stats().evictions >= 900);
    let c = cache("cache {\n max_bytes 16k\n}");
    for i in 0..1000 {
        let _ = run_with(
            &c,
            &q(&format!("n{i}.example.org."), RecordType::A, 1, None, false),
            Transport::Udp,
            &next,
        );
        assert!(c.stats().bytes <= 16 << 10);
    }
    let _ = client();
}

#[test]
fn entries_stay_small() {
    // The whole cache entry is meant to fit in ~200 bytes of RSS; the
    // fixed part is 40 of them.
    assert!(size_of::<Entry>() <= 40, "{}", size_of::<Entry>());
}

#[test]
fn popularity_counts_runs_without_gaps() {
    let e = Entry::new(&[0u8; 12], &[], 0, false, 1, 60, 61).unwrap();
    assert!(!e.popular(10, 3, 60));
    assert!(!e.popular(20, 3, 60));
    assert!(e.popular(30, 3, 60), "three hits within the window");
    assert!(!e.popular(200, 3, 60), "a gap restarts the count");
}

#[tokio::test(start_paused = true)]
async fn stale_answers_are_counted_and_expire() {
    // Its own server label, so other tests' counters do not mix in.
    let c = Cache::new(
        cfg("cache {\n success 100 1 1\n serve_stale 10s immediate 7s\n}").unwrap(),
        "dns://:stale-test",
    )
    .unwrap();
    let up = counting(AnswerStub);
    let _ = run_with(
        &c,
        &q("www.example.org.", RecordType::A, 1, None, false),
        Transport::Udp,
        &up,
    );
    let hit = run_with(
        &c,
        &q("www.example.org.", RecordType::A, 2, None, false),
        Transport::Udp,
        &up,
    );
    assert!(matches!(hit.flow, Flow::Answered));
    let before = c.stats();
    assert_eq!((before.hits, before.misses, before.served_stale), (1, 1, 0));
    assert!((before.hit_ratio() - 0.5).abs() < f64::EPSILON);
    // Past the TTL: stale, with RESPONSE_TTL, counted.
    tokio::time::advance(Duration::from_secs(3)).await;
    let stale = run_with(
        &c,
        &q("www.example.org.", RecordType::A, 3, None, false),
        Transport::Udp,
        &up,
    );
    assert!(matches!(stale.flow, Flow::Answered));
    assert_eq!(stale.msg.unwrap().answers[0].ttl, 7);
    assert_eq!(c.stats().served_stale, 1);
    assert_eq!(
        metrics::SERVED_STALE
            .with_label_values(&["dns://:stale-test", ".", ""])
            .get(),
        1
    );
    // Past the stale window: a miss again.
    tokio::time::advance(Duration::from_secs(20)).await;
    let miss = run_with(
        &c,
        &q("www.example.org.", RecordType::A, 4, None, false),
        Transport::Udp,
        &up,
    );
    assert!(matches!(miss.flow, Flow::Next));
    assert_eq!(c.stats().served_stale, 1);
}

#[test]
fn metric_names_are_coredns_names() {
    let _ = (
        &*metrics::ENTRIES,
        &*metrics::REQUESTS,
        &*metrics::HITS,
        &*metrics::MISSES,
    );
    let _ = (
        &*metrics::PREFETCH,
        &*metrics::DROPS,
        &*metrics::SERVED_STALE,
        &*metrics::EVICTIONS,
    );
    let c = cache("cache");
    let _ = c.stats();
    let names: Vec<String> = crate::pkg::metrics::registry()
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    for want in [
        "coredns_cache_entries",
        "coredns_cache_requests_total",
        "coredns_cache_misses_total",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    assert!(names.iter().all(|n| n.starts_with("coredns_")), "{names:?}");
}

// === TTL bounds (issue #8, point 9) ===

#[test]
fn out_of_range_ttls_are_refused_with_the_line() {
    let cases = [
        (
            "cache {\n success 9984 5000000000 4294967295\n}",
            "Corefile:2: cache: success: TTL 5000000000 is too large (at most 2147483647)",
        ),
        (
            "cache {\n denial 9984 60 4294967295\n}",
            "Corefile:2: cache: denial: TTL 4294967295 is too large (at most 2147483647)",
        ),
        (
            "cache 2147483648",
            "Corefile:1: cache: cache TTL 2147483648 is too large (at most 2147483647)",
        ),
        (
            "cache {\n serve_stale 1h immediate 600000h\n}",
            "Corefile:2: cache: serve_stale: response TTL '600000h' is too large (at most 2147483647s)",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(cfg(text).unwrap_err(), want, "{text}");
    }
    let c = cfg("cache 2147483647 {\n success 1 2147483647 2147483647\n}").unwrap();
    assert_eq!(c.success.min_ttl, Duration::from_secs(2_147_483_647));
}

#[test]
fn a_huge_ttl_stays_fresh() {
    // However large the TTL, the expiry saturates instead of wrapping.
    let e = Entry::new(&[0u8; 12], &[], 0, false, 100, u32::MAX, u32::MAX).unwrap();
    assert!(!e.expired(100));
    assert!(!e.expired(1_000_000));
    assert_eq!(e.remaining(100), u32::MAX - 100);
    // Through the handler, with the largest TTL setup accepts.
    let c = cache("cache {\n success 10 2147483647 2147483647\n}");
    let next = counting(AnswerStub);
    for id in 1..=3 {
        let r = run_with(
            &c,
            &q("www.example.org.", RecordType::A, id, None, false),
            Transport::Udp,
            &next,
        );
        let ttl = r.msg.unwrap().answers[0].ttl;
        assert!(ttl >= 2_147_483_600, "{ttl}");
    }
    assert_eq!(next.n.load(Ordering::Relaxed), 1, "hits, not misses");
}

// === prefetch (issue #8, point 17) ===

#[tokio::test(start_paused = true)]
async fn prefetch_threshold_is_the_ceiling_of_the_percentage() {
    let c = Cache::new(
        cfg("cache {\n success 100 15 15\n prefetch 1 1m 10%\n}").unwrap(),
        "dns://:prefetch-ceil",
    )
    .unwrap();
    let up = counting(AnswerStub);
    let ask = |id| {
        run_with(
            &c,
            &q("www.example.org.", RecordType::A, id, None, false),
            Transport::Udp,
            &up,
        )
    };
    assert!(matches!(ask(1).flow, Flow::Next));
    // 3 s of 15 left: above 10% rounded up (2 s), no prefetch.
    tokio::time::advance(Duration::from_secs(12)).await;
    assert!(matches!(ask(2).flow, Flow::Answered));
    assert_eq!(c.stats().prefetches, 0);
    // 2 s left: 15 * 10% = 1.5, and CoreDNS takes the ceiling.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(matches!(ask(3).flow, Flow::Answered));
    assert_eq!(c.stats().prefetches, 1);
}

#[tokio::test(start_paused = true)]
async fn a_prefetched_entry_keeps_its_hits() {
    let c = Cache::new(
        cfg("cache {\n success 100 15 15\n prefetch 3 1m 10%\n}").unwrap(),
        "dns://:prefetch-carry",
    )
    .unwrap();
    let up = counting(AnswerStub);
    let raw = q("www.example.org.", RecordType::A, 1, None, false);
    let ask = || run_with(&c, &raw, Transport::Udp, &up);
    let reply = ask().msg.unwrap().to_vec().unwrap();
    for _ in 0..3 {
        assert!(matches!(ask().flow, Flow::Answered));
    }
    assert_eq!(c.stats().prefetches, 0, "popular, but the TTL is young");
    // The prefetch's reply replaces the entry (as a background refresh
    // stores it).
    let req = Request::parse(&raw, client(), Transport::Udp).unwrap();
    let bits = key_bits(&req);
    let h = key_hash(req.qname_lower(), req.qtype(), req.qclass(), bits);
    c.inner.store(&req, &reply, h, bits, now_secs(), true);
    // Near the new entry's end, one more hit is enough: the hits carried over.
    tokio::time::advance(Duration::from_secs(14)).await;
    assert!(matches!(ask().flow, Flow::Answered));
    assert_eq!(c.stats().prefetches, 1);
    assert_eq!(up.n.load(Ordering::Relaxed), 1);
}

#[test]
fn a_coalesced_reply_must_carry_the_waiters_question() {
    let c = cache("cache");
    let raw = q("www.example.org.", RecordType::A, 5, None, false);
    with_context(&raw, Transport::Udp, |cx| {
        // A SERVFAIL with no question, as a broken upstream might send: the
        // waiter's spelling would be written over whatever follows the header.
        let bare = [0, 9, 0x81, 0x82, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(!c.inner.serve_bytes(cx, &bare));
        assert!(!cx.reply.is_written());
        // Another question is refused too; the waiter's own is served.
        let mut other =
            Message::from_vec(&q("www.example.net.", RecordType::A, 9, None, false)).unwrap();
        other.metadata.message_type = hickory_proto::op::MessageType::Response;
        assert!(!c.inner.serve_bytes(cx, &other.to_vec().unwrap()));
        let mut own = Message::from_vec(&raw).unwrap();
        own.metadata.message_type = hickory_proto::op::MessageType::Response;
        assert!(c.inner.serve_bytes(cx, &own.to_vec().unwrap()));
        assert_eq!(Message::from_vec(cx.reply.wire()).unwrap().metadata.id, 5);
    });
}

/// Runs `c` for `raw` as a miss answered with `answer` (its ID set to the
/// query's): the query step, then the response step.
fn miss_answered_with(c: &Cache, raw: &[u8], answer: &[u8]) {
    with_context(raw, Transport::Udp, |cx| {
        assert!(matches!(c.query(cx), Flow::Next), "a miss");
        let mut b = answer.to_vec();
        b[..2].copy_from_slice(&cx.req.id().to_be_bytes());
        cx.reply.set_wire(&b);
        c.response(cx);
    });
}

#[test]
fn a_large_reply_that_could_not_be_cut_as_stored_is_not_kept() {
    use hickory_proto::rr::{RData, Record, rdata};
    let mut m = Message::from_vec(&q("www.example.org.", RecordType::A, 1, None, false)).unwrap();
    m.metadata.message_type = hickory_proto::op::MessageType::Response;
    for i in 0..60u8 {
        m.add_answer(Record::from_rdata(
            Name::from_ascii("www.example.org.").unwrap(),
            300,
            RData::A(rdata::A::new(192, 0, 2, i)),
        ));
    }
    let plain = m.to_vec().unwrap();
    assert!(plain.len() > MIN_REPLY_LIMIT);
    // The first record's data becomes a label and a pointer forward (to the
    // last owner); the second owner points back at it: a name that reads
    // past any cut, which a hit could not cut as stored.
    let mut crafted = plain.clone();
    let rdata0 = wire::analyze(&crafted).unwrap().question_end + 12;
    let last = u16::try_from(crafted.len() - 16).unwrap() | 0xc000;
    crafted[rdata0..rdata0 + 2].copy_from_slice(&[1, b'x']);
    crafted[rdata0 + 2..rdata0 + 4].copy_from_slice(&last.to_be_bytes());
    let back = u16::try_from(rdata0).unwrap() | 0xc000;
    crafted[rdata0 + 4..rdata0 + 6].copy_from_slice(&back.to_be_bytes());
    assert!(wire::analyze(&crafted).is_ok());
    let c = cache("cache");
    let raw = q("www.example.org.", RecordType::A, 2, None, false);
    miss_answered_with(&c, &raw, &crafted);
    assert_eq!(c.stats().success_entries, 0, "passed on, not kept");
    miss_answered_with(&c, &raw, &plain);
    assert_eq!(
        c.stats().success_entries,
        1,
        "as a compressor writes it: kept"
    );
}

// === admin listing and purge ===

#[test]
fn the_admin_plane_lists_one_row_per_question_and_purges_by_name_or_rrset() {
    use crate::pkg::inspect::{CacheInspect, Selector};
    let c = cache("cache 30");
    let next = counting(AnswerStub);
    for (name, qtype, dnssec) in [
        ("www.example.org.", RecordType::A, None),
        // Another key (DO) for the same question: still one row.
        ("WWW.example.org.", RecordType::A, Some(true)),
        ("www.example.org.", RecordType::AAAA, None),
        ("mail.example.org.", RecordType::A, None),
    ] {
        let _ = run_with(&c, &q(name, qtype, 1, dnssec, false), Transport::Udp, &next);
    }
    let inner: &dyn CacheInspect = &*c.inner;
    assert_eq!(inner.len(), 4);
    let all = Selector {
        name: None,
        qtype: None,
    };
    let rows = inner.entries(all, 100);
    let listed: Vec<(&str, u16, bool)> = rows
        .iter()
        .map(|r| (r.name.as_str(), r.qtype, r.stale))
        .collect();
    assert_eq!(
        listed,
        [
            ("mail.example.org.", 1, false),
            ("www.example.org.", 1, false),
            ("www.example.org.", 28, false)
        ]
    );
    assert!(rows.iter().all(|r| r.ttl > 0 && r.ttl <= 30), "{rows:?}");
    assert_eq!(inner.entries(all, 1).len(), 1, "the limit holds");
    let www = b"\x03www\x07example\x03org\0";
    let one = Selector {
        name: Some(www),
        qtype: Some(28),
    };
    assert_eq!(inner.entries(one, 100).len(), 1);
    // One RRset, then one name (both DO variants of A), then everything.
    assert_eq!(inner.purge(one), 1);
    assert_eq!(
        inner.purge(Selector {
            name: Some(www),
            qtype: None
        }),
        2
    );
    assert_eq!(inner.len(), 1);
    assert_eq!(
        inner.purge(Selector {
            name: Some(b"\x02no\0"),
            qtype: None
        }),
        0
    );
    assert_eq!(inner.purge(all), 1);
    assert_eq!(inner.len(), 0);
    // A purged name is asked again.
    let before = next.n.load(Ordering::Relaxed);
    let _ = run_with(
        &c,
        &q("mail.example.org.", RecordType::A, 1, None, false),
        Transport::Udp,
        &next,
    );
    assert_eq!(next.n.load(Ordering::Relaxed), before + 1);
}
