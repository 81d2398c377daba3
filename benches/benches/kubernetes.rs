//! A kubernetes answer against a cache hit, both as one plugin step: parse
//! the query, run the plugin's `query` step, the reply in wire form. The
//! issue's bar: a kubernetes answer costs at most 2x a cache hit.
//!
//! For each name the cache is primed with the kubernetes answer, so the
//! two produce the same reply. The store holds 1,000 services (a
//! quarter headless, 4 endpoints each) in 10 namespaces. `chain_walk`'s
//! "cache hit through the server path" is the same hit with routing and
//! the chain driver around it.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{Criterion, criterion_group};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use nodedns_plugins::kubernetes::{
    EndpointRecord, Kind, Kubernetes, PortRecord, ServiceKind, ServiceRecord, SliceRecord, parse,
};
use nodedns_plugins::lexer::lex;
use nodedns_plugins::setup::{BlockInfo, BlockSetup, Controller, Services};
use nodedns_plugins::{Context, Dispenser, Flow, Next, NoChain, Plugin, Reply, Request};
use nodedns_plugins::{ServerInfo, Transport};
use tokio::time::Instant;

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn block() -> BlockInfo {
    BlockInfo {
        zones: vec!["cluster.local.".into()],
        port: 53,
        server_name: Arc::from("dns://:53"),
        bound: Arc::default(),
    }
}

fn port(name: &str, port: i32) -> PortRecord {
    PortRecord {
        name: Some(name.into()),
        protocol: Some("TCP".into()),
        port: Some(port),
    }
}

/// The plugin, its store filled and synced.
fn kubernetes() -> Kubernetes {
    let file: Arc<str> = Arc::from("Corefile");
    // A long TTL so the primed cache entry lives through the run.
    let tokens = lex(&file, "kubernetes cluster.local {\n ttl 3600\n}").unwrap();
    let cfg = parse(&mut Dispenser::new("kubernetes", &tokens), &block()).unwrap();
    let k = Kubernetes::new(&cfg, None);
    let mut b = k.store().batch();
    for kind in [Kind::Services, Kind::EndpointSlices, Kind::Namespaces] {
        b.begin_resync(kind);
    }
    for ns in 0..10 {
        b.apply_namespace(&format!("ns{ns}"));
    }
    for i in 0..1000u32 {
        let ns = format!("ns{}", i % 10);
        let name = format!("svc{i}");
        let headless = i % 4 == 0;
        let kind = if headless {
            ServiceKind::Headless
        } else {
            ServiceKind::ClusterIp(vec![IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i))])
        };
        b.apply_service(ServiceRecord {
            namespace: ns.clone(),
            name: name.clone(),
            kind,
            ports: vec![port("http", 80)],
        });
        let endpoints = (0..4u32)
            .map(|e| EndpointRecord {
                addresses: vec![IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + i * 4 + e))],
                ready: Some(true),
                hostname: None,
                target_name: Some(format!("{name}-{e}")),
                zone: None,
            })
            .collect();
        b.apply_slice(SliceRecord {
            namespace: ns,
            name: format!("{name}-abcde"),
            service: Some(name),
            ports: vec![port("http", 8080)],
            endpoints,
        });
    }
    for kind in [Kind::Services, Kind::EndpointSlices, Kind::Namespaces] {
        b.finish_resync(kind);
    }
    drop(b);
    assert!(k.store().synced());
    k
}

fn cache() -> Box<dyn Plugin> {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, "cache 300").unwrap();
    let block = block();
    let mut out = BlockSetup::default();
    let mut services = Services::default();
    let mut c = Controller {
        d: Dispenser::new("cache", &tokens),
        block: &block,
        out: &mut out,
        services: &mut services,
    };
    nodedns_plugins::cache::setup(&mut c).unwrap();
    out.plugins.remove(0)
}

/// Runs `f` on a context for `raw`, as the server would set one up.
fn step(
    raw: &[u8],
    reply: &mut Reply,
    server: &ServerInfo,
    f: impl FnOnce(&mut Context<'_>) -> Flow,
) -> Flow {
    reply.clear();
    let client = SocketAddr::from(([10, 0, 0, 99], 5353));
    let req = Request::parse(raw, client, Transport::Udp).unwrap();
    let mut cx = Context {
        req: &req,
        server,
        zone: b"\x07cluster\x05local\x00",
        reply,
        start: Instant::now(),
        next: Next {
            chain: &NoChain,
            at: 0,
        },
    };
    f(&mut cx)
}

/// The names compared: a label, the name, the type.
const CASES: [(&str, &str, RecordType); 5] = [
    (
        "svc A (cluster IP)",
        "svc1.ns1.svc.cluster.local.",
        RecordType::A,
    ),
    (
        "headless A (4 endpoints)",
        "svc4.ns4.svc.cluster.local.",
        RecordType::A,
    ),
    (
        "endpoint A",
        "10-128-0-18.svc4.ns4.svc.cluster.local.",
        RecordType::A,
    ),
    (
        "SRV (4 targets, 4 additionals)",
        "_http._tcp.svc4.ns4.svc.cluster.local.",
        RecordType::SRV,
    ),
    (
        "NXDOMAIN with SOA",
        "nope.ns1.svc.cluster.local.",
        RecordType::A,
    ),
];

/// Primes the cache with the kubernetes answer to `raw`, as the chain
/// would, and checks both give the same reply.
fn prime(k: &Kubernetes, cache: &dyn Plugin, raw: &[u8], server: &ServerInfo, reply: &mut Reply) {
    let primed = step(raw, reply, server, |cx| {
        assert!(matches!(cache.query(cx), Flow::Next));
        assert!(matches!(k.query(cx), Flow::Answered));
        cache.response(cx);
        Flow::Answered
    });
    assert!(matches!(primed, Flow::Answered));
    let hit = step(raw, reply, server, |cx| cache.query(cx));
    assert!(matches!(hit, Flow::Answered), "a hit");
    let cached = Message::from_vec(reply.finish().unwrap()).unwrap();
    let answered = step(raw, reply, server, |cx| k.query(cx));
    assert!(matches!(answered, Flow::Answered));
    let direct = Message::from_vec(reply.finish().unwrap()).unwrap();
    assert_eq!(direct.answers, cached.answers, "the same answer");
    assert_eq!(direct.additionals, cached.additionals);
}

fn server() -> ServerInfo {
    ServerInfo {
        name: Arc::from("dns://:53"),
        zones: vec!["cluster.local.".into()],
        port: 53,
    }
}

fn bench(c: &mut Criterion) {
    let k = kubernetes();
    let cache = cache();
    let server = server();
    let mut reply = Reply::new();
    let mut g = c.benchmark_group("kubernetes answer vs cache hit of the same reply");
    for (label, name, qtype) in CASES {
        let raw = query(name, qtype);
        prime(&k, &*cache, &raw, &server, &mut reply);

        g.bench_function(format!("cache hit: {label}"), |b| {
            b.iter(|| {
                let f = step(black_box(&raw), &mut reply, &server, |cx| cache.query(cx));
                assert!(matches!(f, Flow::Answered));
            })
        });
        g.bench_function(format!("kubernetes: {label}"), |b| {
            b.iter(|| {
                let f = step(black_box(&raw), &mut reply, &server, |cx| k.query(cx));
                assert!(matches!(f, Flow::Answered));
            })
        });
    }
    g.finish();
}

/// With `NODEDNS_BENCH_ITERS=N` (and `NODEDNS_BENCH_CASE`, `NODEDNS_BENCH_SIDE`
/// = `cache` or `kubernetes`), runs one case N times and exits instead:
/// `perf stat -e instructions:u` over two counts gives the instructions
/// per answer, which other processes on the machine do not disturb.
fn count_mode(iters: u64) {
    let case = std::env::var("NODEDNS_BENCH_CASE").unwrap_or_default();
    let side = std::env::var("NODEDNS_BENCH_SIDE").unwrap_or_default();
    let (_, name, qtype) = CASES
        .iter()
        .find(|(l, _, _)| l.starts_with(case.as_str()))
        .copied()
        .expect("NODEDNS_BENCH_CASE names a case");
    let k = kubernetes();
    let cache = cache();
    let server = server();
    let mut reply = Reply::new();
    let raw = query(name, qtype);
    prime(&k, &*cache, &raw, &server, &mut reply);
    let plugin: &dyn Plugin = if side == "cache" { &*cache } else { &k };
    for _ in 0..iters {
        let f = step(black_box(&raw), &mut reply, &server, |cx| plugin.query(cx));
        assert!(matches!(f, Flow::Answered));
    }
}

criterion_group!(benches, bench);

fn main() {
    if let Some(n) = std::env::var("NODEDNS_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        count_mode(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
