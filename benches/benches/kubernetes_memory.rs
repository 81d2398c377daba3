//! What the kubernetes store costs in memory: 10,000 services and 50,000
//! endpoints (10,000 EndpointSlices of 5 ready addresses; a fifth of the
//! services headless, the rest with an IPv4 cluster IP and two ports), in
//! 100 namespaces, loaded as a watch's first list would load them.
//!
//! Prints the heap the store holds once loaded (counted by a wrapping
//! allocator), the peak heap while loading, and the growth of the
//! process's RSS, against CoreDNS's sizing rule for its kubernetes plugin,
//! (pods + services) / 1000 + 54 MB, with the 50,000 endpoints as pods.
//!
//! Run: `cargo bench -p nodedns-benches --bench kubernetes_memory`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

use nodedns_plugins::kubernetes::{
    EndpointRecord, Kind, PortRecord, ServiceKind, ServiceRecord, SliceRecord, Store, StoreOptions,
};

const SERVICES: u32 = 10_000;
const ENDPOINTS_PER_SLICE: u32 = 5;
const NAMESPACES: u32 = 100;

/// Counts the bytes live on the heap, and the peak since the last reset.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n as isize, Relaxed) + n as isize;
    PEAK.fetch_max(now.max(0) as usize, Relaxed);
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged and only adds bookkeeping on atomics.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (the caller upholds `alloc`'s contract).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size() as isize, Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Relaxed).max(0) as usize
}

/// Resident set size, from /proc/self/statm (0 where there is none).
fn rss() -> usize {
    let page = 4096;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * page)
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn port(name: &str, port: i32) -> PortRecord {
    PortRecord {
        name: Some(name.into()),
        protocol: Some("TCP".into()),
        port: Some(port),
    }
}

fn load(store: &Store) {
    let mut b = store.batch();
    for kind in [Kind::Services, Kind::EndpointSlices, Kind::Namespaces] {
        b.begin_resync(kind);
    }
    for ns in 0..NAMESPACES {
        b.apply_namespace(&format!("team-{ns}"));
    }
    for i in 0..SERVICES {
        let ns = format!("team-{}", i % NAMESPACES);
        let name = format!("service-{i}");
        let kind = if i % 5 == 0 {
            ServiceKind::Headless
        } else {
            ServiceKind::ClusterIp(vec![IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i))])
        };
        b.apply_service(ServiceRecord {
            namespace: ns.clone(),
            name: name.clone(),
            kind,
            ports: vec![port("http", 80), port("metrics", 9090)],
        });
        let endpoints = (0..ENDPOINTS_PER_SLICE)
            .map(|e| EndpointRecord {
                addresses: vec![IpAddr::V4(Ipv4Addr::from(
                    0x0a80_0000 + i * ENDPOINTS_PER_SLICE + e,
                ))],
                ready: Some(true),
                hostname: None,
                target_name: Some(format!("{name}-7d9f8b6c5-{e:05}")),
                zone: None,
            })
            .collect();
        b.apply_slice(SliceRecord {
            namespace: ns,
            name: format!("{name}-x7k2p"),
            service: Some(name),
            ports: vec![port("http", 8080), port("metrics", 9090)],
            endpoints,
        });
    }
    for kind in [Kind::Services, Kind::EndpointSlices, Kind::Namespaces] {
        b.finish_resync(kind);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to select.
    let rss_before = rss();
    let heap_before = live();
    PEAK.store(heap_before, Relaxed);
    let store: Arc<Store> = Store::new(StoreOptions {
        endpoints: true,
        pods: false,
        endpoint_pod_names: false,
        zones: false,
    });
    load(&store);
    let heap = live() - heap_before;
    let peak = PEAK.load(Relaxed) - heap_before;
    let rss_growth = rss().saturating_sub(rss_before);
    let stats = store.stats();
    assert!(store.synced());
    assert_eq!(stats.services, SERVICES as usize);
    assert_eq!(stats.endpoints, (SERVICES * ENDPOINTS_PER_SLICE) as usize);

    let objects = stats.services + stats.endpoints;
    let coredns_mib = objects as f64 / 1000.0 + 54.0;
    println!(
        "kubernetes store: {} services, {} slices, {} endpoints, {} namespaces",
        stats.services, stats.slices, stats.endpoints, stats.namespaces
    );
    println!(
        "  heap held: {:.1} MiB ({:.0} bytes per service+endpoint); peak while loading: {:.1} MiB",
        mib(heap),
        heap as f64 / objects as f64,
        mib(peak)
    );
    println!("  RSS growth: {:.1} MiB", mib(rss_growth));
    println!(
        "  CoreDNS's rule, (pods + services)/1000 + 54 MB: {coredns_mib:.0} MB; a quarter: {:.1} MB",
        coredns_mib / 4.0
    );
    // The store's data stays alive until here.
    drop(store);
}
