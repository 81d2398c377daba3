//! A warmed cache hit, through the whole server path (parse, route, chain,
//! cache, encode), makes no heap allocation. Counted with a global
//! allocator, so timing plays no part.

// A global allocator is the one way to count allocations: it needs unsafe.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use nodedns::config::{Router, load_str};
use nodedns::server::Limits;
use nodedns::server::chain::{Handled, handle, resume};
use nodedns_plugins::{Reply, Transport};
use nodedns_tests::FakeUpstream;

struct Counting;

thread_local! {
    /// Only this thread's allocations count, and only while armed, so
    /// tests running side by side do not see each other's.
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    if ARMED.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
    }
}

fn count_while(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    ALLOCATIONS.with(Cell::get)
}

/// Warms `raw` up over UDP (first-use lazies: the metric handles, the
/// clock), then counts what `n` more queries allocate; each must be
/// answered at once (a hit).
fn allocations_in_hits(router: &Router, raw: &[u8], reply: &mut Reply, n: usize) -> usize {
    let client = "127.0.0.1:40000".parse().expect("addr");
    let limits = Limits::default();
    for _ in 0..10 {
        assert!(matches!(
            handle(router, raw, client, Transport::Udp, reply, &limits),
            Handled::Reply
        ));
    }
    let mut all_replies = true;
    let allocations = count_while(|| {
        for _ in 0..n {
            let h = handle(router, raw, client, Transport::Udp, reply, &limits);
            all_replies &= matches!(h, Handled::Reply);
        }
    });
    assert!(all_replies, "every query a hit");
    allocations
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// only addition is an atomic counter and a const-initialised thread-local
// read, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn query(name: &str, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().expect("query encodes")
}

#[test]
fn the_counter_counts() {
    let n = count_while(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert!(n >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_warm_cache_hit_does_not_allocate() {
    warm_hits_do_not_allocate("").await;
}

/// With *prometheus* in the block, every hit is also counted (requests,
/// responses, sizes, duration): still no allocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_warm_cache_hit_counted_by_prometheus_does_not_allocate() {
    warm_hits_do_not_allocate("    prometheus 127.0.0.1:0\n").await;
    let text = nodedns_plugins::prometheus::render();
    let hits = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "coredns_dns_responses_total{plugin=\"cache\",rcode=\"NOERROR\",server=\"dns://:53\",view=\"\",zone=\".\"} ",
            )
        })
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        hits.is_some_and(|n| n >= 2000.0),
        "the hits were counted: {text}"
    );
}

async fn warm_hits_do_not_allocate(extra: &str) {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let config = load_str(&format!(
        ". {{\n    cache 300\n    forward . {up}\n{extra}}}\n"
    ))
    .expect("config");
    let router = config
        .listeners
        .values()
        .next()
        .expect("a listener")
        .clone();
    let client = "127.0.0.1:40000".parse().expect("addr");
    let limits = Limits::default();
    let mut reply = Reply::new();
    for edns in [false, true] {
        let raw = query("www.example.org.", edns);
        // The miss (EDNS without DO is the same key: one miss for both):
        // through forward to the upstream, stored by the cache.
        if !edns {
            match handle(&router, &raw, client, Transport::Udp, &mut reply, &limits) {
                Handled::Upstream(p) => {
                    let bytes = resume(p, &raw, client, Transport::Udp, limits)
                        .await
                        .expect("a reply");
                    assert!(bytes.len() > 12);
                }
                _ => panic!("the first query misses"),
            }
        }
        let n = allocations_in_hits(&router, &raw, &mut reply, 1000);
        let m = Message::from_vec(reply.wire()).expect("the hit decodes");
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.edns.is_some(), edns);
        assert_eq!(n, 0, "1000 cache hits (edns={edns}) made {n} allocations");
    }
    assert_eq!(
        up.count("www.example.org.", RecordType::A),
        1,
        "one miss in all"
    );
}

/// A hit on an entry far larger than the client takes over UDP is cut to
/// fit without parsing or encoding it, and without allocating.
#[test]
fn a_warm_hit_on_a_large_entry_truncated_for_udp_does_not_allocate() {
    let mut hosts = String::new();
    for i in 0..1000u32 {
        hosts.push_str(&format!("  10.0.{}.{} big.example.org\n", i / 250, i % 250));
    }
    let config =
        load_str(&format!(". {{\n cache 300\n hosts {{\n{hosts} }}\n}}\n")).expect("config");
    let router = config
        .listeners
        .values()
        .next()
        .expect("a listener")
        .clone();
    let mut reply = Reply::new();
    for edns in [false, true] {
        let raw = query("big.example.org.", edns);
        // The first answer (hosts) is stored by the warm-up.
        let n = allocations_in_hits(&router, &raw, &mut reply, 100);
        let limit = if edns { 1232 } else { 512 };
        assert!(reply.wire().len() <= limit, "{} bytes", reply.wire().len());
        let m = Message::from_vec(reply.wire()).expect("the hit decodes");
        assert!(m.metadata.truncation, "TC set");
        assert!(!m.answers.is_empty() && m.answers.len() < 1000);
        assert_eq!(m.edns.is_some(), edns);
        assert_eq!(n, 0, "100 large hits (edns={edns}) made {n} allocations");
    }
}

/// An entry loaded from a snapshot (as a new agent loads the old one's) is
/// answered as a hit, without asking upstream and without allocating.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_hit_on_an_entry_loaded_from_a_snapshot_does_not_allocate() {
    use nodedns_plugins::pkg::snapshot;
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let corefile = format!(". {{\n    cache 300\n    forward . {up}\n}}\n");
    let old = load_str(&corefile).expect("config");
    let router = old.listeners.values().next().expect("a listener").clone();
    let client = "127.0.0.1:40000".parse().expect("addr");
    let limits = Limits::default();
    let raw = query("www.example.org.", false);
    let mut reply = Reply::new();
    match handle(&router, &raw, client, Transport::Udp, &mut reply, &limits) {
        Handled::Upstream(p) => {
            resume(p, &raw, client, Transport::Udp, limits)
                .await
                .expect("a reply");
        }
        _ => panic!("the first query misses"),
    }
    let (bytes, saved) = snapshot::encode_to_vec(&old.services.caches);
    assert_eq!(saved.entries, 1);
    drop(old);

    let new = load_str(&corefile).expect("config");
    let loaded = snapshot::decode_slice(&bytes, &new.services.caches, &snapshot::Limits::default())
        .expect("the snapshot loads");
    assert_eq!(loaded.import.imported, 1, "{loaded:?}");
    let router = new.listeners.values().next().expect("a listener").clone();
    let n = allocations_in_hits(&router, &raw, &mut reply, 1000);
    let m = Message::from_vec(reply.wire()).expect("the hit decodes");
    assert_eq!(m.answers.len(), 1);
    assert!(m.answers[0].ttl <= 300 && m.answers[0].ttl >= 290);
    assert_eq!(n, 0, "1000 hits on a loaded entry made {n} allocations");
    assert_eq!(
        up.count("www.example.org.", RecordType::A),
        1,
        "the new configuration never asked"
    );
}
