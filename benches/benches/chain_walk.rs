//! A query through the whole driver: parse, route, a chain of plugins
//! that pass it on, whoami answering, encode.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use nodedns::config::load_str;
use nodedns::server::Limits;
use nodedns::server::chain::{Handled, end_batch, handle, handle_batched};
use nodedns_plugins::{Reply, Transport};

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

fn bench(c: &mut Criterion) {
    let client = "127.0.0.1:5353".parse().unwrap();
    let limits = Limits::default();
    for (label, corefile) in [
        ("whoami alone", ". {\n whoami\n}\n"),
        (
            "any, chaos, minimal, hosts (fallthrough) -> whoami",
            ". {\n any\n chaos\n minimal\n hosts {\n  192.0.2.1 other.example\n  fallthrough\n }\n whoami\n}\n",
        ),
    ] {
        let config = load_str(corefile).unwrap();
        let router = config.listeners.values().next().unwrap().clone();
        let raw = query("www.example.org.");
        let mut reply = Reply::new();
        c.bench_function(&format!("chain walk: {label}"), |b| {
            b.iter(|| {
                assert!(matches!(
                    handle(
                        &router,
                        black_box(&raw),
                        client,
                        Transport::Udp,
                        &mut reply,
                        &limits
                    ),
                    Handled::Reply
                ));
                black_box(reply.wire().len());
            })
        });
    }
    let config = load_str("example.org {\n whoami\n}\n").unwrap();
    let router = config.listeners.values().next().unwrap().clone();
    let raw = query("www.example.net.");
    let mut reply = Reply::new();
    c.bench_function("refused (no zone matches)", |b| {
        b.iter(|| {
            assert!(matches!(
                handle(
                    &router,
                    black_box(&raw),
                    client,
                    Transport::Udp,
                    &mut reply,
                    &limits
                ),
                Handled::Reply
            ))
        })
    });
}

/// A cache hit through the whole server path (parse, route, cache, patch),
/// and hit throughput with 1, 2 and 4 threads sharing one cache.
fn cache_hit(c: &mut Criterion) {
    let client = "127.0.0.1:5353".parse().unwrap();
    let limits = Limits::default();
    // hosts answers the first query; the cache keeps it.
    let hit_config = |extra: &str| {
        let text =
            format!(". {{\n cache 300\n hosts {{\n  192.0.2.1 www.example.org\n }}\n{extra}}}\n");
        let config = load_str(&text).unwrap();
        config.listeners.values().next().unwrap().clone()
    };
    let router = hit_config("");
    let raw = query("www.example.org.");
    let mut reply = Reply::new();
    // The same hit, in a block that *prometheus* counts: "cache hit" with
    // and without it is the cost of the per-query metrics.
    let counted = hit_config(" prometheus 127.0.0.1:0\n");
    for (label, router) in [("", &router), (", prometheus", &counted)] {
        assert!(matches!(
            handle(router, &raw, client, Transport::Udp, &mut reply, &limits),
            Handled::Reply
        ));
        c.bench_function(&format!("cache hit through the server path{label}"), |b| {
            b.iter(|| {
                assert!(matches!(
                    handle(
                        router,
                        black_box(&raw),
                        client,
                        Transport::Udp,
                        &mut reply,
                        &limits
                    ),
                    Handled::Reply
                ));
            })
        });
    }
    // As the UDP listener answers: a batch of 32 hits, then the batch's
    // durations recorded with one clock read. Per query.
    let mut group = c.benchmark_group("cache hit, batches of 32");
    group.throughput(criterion::Throughput::Elements(32));
    let mut replies: Vec<Reply> = (0..32).map(|_| Reply::new()).collect();
    for (label, router) in [("without prometheus", &router), ("prometheus", &counted)] {
        group.bench_function(label, |b| {
            b.iter(|| {
                let received = tokio::time::Instant::now();
                for r in replies.iter_mut() {
                    let h = handle_batched(
                        router,
                        black_box(&raw),
                        client,
                        Transport::Udp,
                        r,
                        &limits,
                        received,
                    );
                    assert!(matches!(h, Handled::Reply));
                }
                end_batch(&mut replies);
            })
        });
    }
    group.finish();
    // A 60 KB entry (2,000 A records, uncompressed as hosts writes them)
    // asked over UDP without EDNS: the
    // hit is cut to 512 bytes. Compare with the small hit above.
    let mut hosts = String::new();
    for i in 0..2000u32 {
        hosts.push_str(&format!(
            "  10.{}.{}.{} big.example.org\n",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        ));
    }
    let big_config = load_str(&format!(". {{\n cache 300\n hosts {{\n{hosts} }}\n}}\n")).unwrap();
    let big_router = big_config.listeners.values().next().unwrap().clone();
    let big = query("big.example.org.");
    assert!(matches!(
        handle(
            &big_router,
            &big,
            client,
            Transport::Udp,
            &mut reply,
            &limits
        ),
        Handled::Reply
    ));
    assert!(matches!(
        handle(
            &big_router,
            &big,
            client,
            Transport::Udp,
            &mut reply,
            &limits
        ),
        Handled::Reply
    ));
    assert!(
        reply.wire().len() <= 512 && reply.wire()[2] & 0x02 != 0,
        "a truncated hit"
    );
    c.bench_function("cache hit on a 60 KB entry, truncated for UDP", |b| {
        b.iter(|| {
            assert!(matches!(
                handle(
                    &big_router,
                    black_box(&big),
                    client,
                    Transport::Udp,
                    &mut reply,
                    &limits
                ),
                Handled::Reply
            ));
        })
    });
    let mut group = c.benchmark_group("cache hits, threads sharing one cache");
    for threads in [1usize, 2, 4] {
        group.throughput(criterion::Throughput::Elements(threads as u64));
        group.bench_function(format!("{threads} threads"), |b| {
            b.iter_custom(|iters| {
                let start = std::time::Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        let router = &router;
                        let raw = &raw;
                        s.spawn(move || {
                            let mut reply = Reply::new();
                            for _ in 0..iters {
                                let _ = black_box(handle(
                                    router,
                                    raw,
                                    client,
                                    Transport::Udp,
                                    &mut reply,
                                    &limits,
                                ));
                            }
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench, cache_hit);
criterion_main!(benches);
