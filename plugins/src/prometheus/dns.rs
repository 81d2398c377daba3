//! The per-query families, CoreDNS's `plugin/metrics/vars` (names,
//! labels, help and buckets unchanged): requests, responses by rcode and
//! plugin, duration, request and response sizes, DO queries.
//!
//! Each `(server, zone)` label pair has one [`Sink`]: a [`Striped`] group
//! holding every counter and histogram bucket of the six families for that
//! pair, at fixed indices, so recording a query is a handful of adds to
//! this thread's shard: no lock, no hashing, no allocation. Label values
//! (type, proto, family, rcode, plugin, size bucket) become indices by
//! arithmetic or a `match`; the plugin names a chain can report are mapped
//! to indices once per chain. Sinks live as long as the process, so a
//! reload keeps every series. A series is exported once it has counted
//! something, as CoreDNS's labelled series appear on first use.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError, RwLock};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Histogram, Metric, MetricFamily, MetricType};

use crate::pkg::metrics::striped::{Striped, family, label_pairs};
use crate::pkg::metrics::{Durations, register_collector};
use crate::request::Request;

/// The zone label of queries that never reached a chain (no zone matched,
/// a class the address does not serve, a panic): CoreDNS's `vars.Dropped`.
pub const DROPPED: &str = "dropped";

use crate::pkg::metrics::queries::{RCODES, TYPES, type_index};

const PROTOS: [&str; 2] = ["udp", "tcp"];
const FAMILIES: [&str; 2] = ["1", "2"];

/// An rcode's label.
fn rcode_name(rcode: u16) -> String {
    RCODES
        .get(usize::from(rcode))
        .map_or_else(|| format!("RCODE{rcode}"), |s| (*s).to_string())
}

/// Upper bounds of the duration buckets: CoreDNS's `plugin.TimeBuckets`
/// (0.25 ms doubling 16 times), in nanoseconds.
const TIME_BUCKETS: usize = 16;
const FIRST_BUCKET_NS: u64 = 250_000;

/// The duration bucket (`TIME_BUCKETS` is +Inf) of `ns` nanoseconds.
#[inline]
fn time_bucket(ns: u64) -> usize {
    // Bucket k holds (250 us * 2^(k-1), 250 us * 2^k].
    // Most queries (every hit) take well under the first bound: one compare.
    if ns <= FIRST_BUCKET_NS {
        return 0;
    }
    let q = (ns - 1) / FIRST_BUCKET_NS;
    ((u64::BITS - q.leading_zeros()) as usize).min(TIME_BUCKETS)
}

/// Upper bounds of the size buckets (CoreDNS's, in bytes).
const SIZE_BOUNDS: [u64; 14] = [
    0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16_000, 32_000, 48_000, 64_000,
];

/// The size bucket (`SIZE_BOUNDS.len()` is +Inf) of `n` bytes.
#[inline]
fn size_bucket(n: u64) -> usize {
    SIZE_BOUNDS
        .iter()
        .position(|&b| n <= b)
        .unwrap_or(SIZE_BOUNDS.len())
        .min(SIZE_BOUNDS.len())
}

/// Most distinct plugin names the `plugin` label takes (index 0 is the
/// server, the empty name). nodedns compiles fewer plugins than this.
pub(crate) const MAX_PLUGINS: usize = 32;

/// The plugin names given an index so far.
static PLUGINS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// The index of a plugin name (0 for the empty name, and for a name past
/// [`MAX_PLUGINS`], which cannot happen with the plugins compiled in).
/// Takes a lock: resolved once per chain.
pub(crate) fn plugin_index(name: &'static str) -> usize {
    if name.is_empty() {
        return 0;
    }
    let mut names = PLUGINS.lock().unwrap_or_else(PoisonError::into_inner);
    if names.is_empty() {
        names.push("");
    }
    if let Some(i) = names.iter().position(|n| *n == name) {
        return i;
    }
    if names.len() >= MAX_PLUGINS {
        tracing::warn!(
            plugin = name,
            "too many plugin names for coredns_dns_responses_total; counted as the server's"
        );
        return 0;
    }
    names.push(name);
    names.len() - 1
}

fn plugin_name(i: usize) -> &'static str {
    PLUGINS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(i)
        .copied()
        .unwrap_or("")
}

// Where each family's counters sit in a sink.
const N_TYPES: usize = TYPES.len();
const REQUESTS: usize = 0;
const DO: usize = REQUESTS + PROTOS.len() * FAMILIES.len() * N_TYPES;
/// Duration: the buckets (+Inf last), then the sum in nanoseconds.
const DURATION: usize = DO + 1;
const DURATION_SUM: usize = DURATION + TIME_BUCKETS + 1;
/// A size histogram per proto: the buckets (+Inf last), then the sum.
const SIZE_WIDTH: usize = SIZE_BOUNDS.len() + 2;
const REQUEST_SIZE: usize = DURATION_SUM + 1;
const RESPONSE_SIZE: usize = REQUEST_SIZE + PROTOS.len() * SIZE_WIDTH;
const RESPONSES: usize = RESPONSE_SIZE + PROTOS.len() * SIZE_WIDTH;
const WIDTH: usize = RESPONSES + RCODES.len() * MAX_PLUGINS;

/// Every per-query counter of one `(server, zone)` pair.
pub struct Sink {
    server: Box<str>,
    zone: Box<str>,
    cells: Striped<WIDTH>,
    /// Responses with an rcode past [`RCODES`] (extended rcodes CoreDNS
    /// names `RCODE<n>`): rare, so counted under a lock.
    rare: Mutex<Vec<((u16, usize), u64)>>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("server", &self.server)
            .field("zone", &self.zone)
            .finish_non_exhaustive()
    }
}

static SINKS: Mutex<Vec<&'static Sink>> = Mutex::new(Vec::new());

/// The sink for a `(server, zone)` pair, made the first time (and its
/// families registered). Takes a lock: called when a chain is built.
pub fn sink(server: &str, zone: &str) -> &'static Sink {
    LazyLock::force(&COLLECTOR);
    let mut sinks = SINKS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(s) = sinks
        .iter()
        .find(|s| &*s.server == server && &*s.zone == zone)
    {
        return s;
    }
    let s: &'static Sink = Box::leak(Box::new(Sink {
        server: server.into(),
        zone: zone.into(),
        cells: Striped::new(),
        rare: Mutex::new(Vec::new()),
    }));
    sinks.push(s);
    s
}

/// Sinks for queries dropped before any chain, by server; `ANY_DROPPED`
/// says whether there are any, so a server without *prometheus* pays one
/// load.
static DROPPED_SINKS: RwLock<Vec<&'static Sink>> = RwLock::new(Vec::new());
static ANY_DROPPED: AtomicBool = AtomicBool::new(false);

/// The sink for `server`'s dropped queries, made (and looked up by
/// [`report_dropped`]) from now on.
pub(crate) fn dropped_sink(server: &str) -> &'static Sink {
    let s = sink(server, DROPPED);
    let mut list = DROPPED_SINKS
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    if !list.iter().any(|d| std::ptr::eq(*d, s)) {
        list.push(s);
    }
    ANY_DROPPED.store(true, Ordering::Relaxed);
    s
}

/// Reports a query that never reached a plugin chain (refused for its
/// class or its zone) or whose chain panicked, as CoreDNS's
/// `errorAndMetricsFunc`: zone `dropped`, plugin empty. Only for servers
/// one of whose blocks has *prometheus*.
pub fn report_dropped(
    server: &str,
    req: &Request<'_>,
    rcode: ResponseCode,
    size: usize,
    took: Duration,
) {
    if !ANY_DROPPED.load(Ordering::Relaxed) {
        return;
    }
    let found = DROPPED_SINKS
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|s| &*s.server == server)
        .copied();
    if let Some(s) = found {
        s.record(req, u16::from(rcode), 0, Some(size));
        s.observe(took);
    }
}

impl Durations for Sink {
    #[inline]
    fn observe_n(&self, d: Duration, n: u64) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let s = self.cells.shard();
        s.add(DURATION + time_bucket(ns), n);
        s.add(DURATION_SUM, ns.saturating_mul(n));
    }
}

impl Sink {
    /// Counts one query: its request, its DO bit, its size, the response's
    /// rcode, the plugin that wrote it (an index from [`plugin_index`]) and
    /// its size (`None`: nothing sent, counted as 0 bytes as CoreDNS's
    /// recorder does). The duration goes to [`Durations::observe`].
    #[inline]
    pub fn record(&self, req: &Request<'_>, rcode: u16, plugin: usize, size: Option<usize>) {
        let s = self.cells.shard();
        // CoreDNS's `state.Proto()`: DoT, DoH and gRPC count as tcp.
        let proto = usize::from(!req.transport().is_udp());
        let family = usize::from(!req.client().is_ipv4());
        s.add(
            REQUESTS + (proto * FAMILIES.len() + family) * N_TYPES + type_index(req.qtype()),
            1,
        );
        if req.dnssec_ok() {
            s.add(DO, 1);
        }
        let asked = req.raw().len() as u64;
        let at = REQUEST_SIZE + proto * SIZE_WIDTH;
        s.add(at + size_bucket(asked), 1);
        s.add(at + SIZE_WIDTH - 1, asked);
        let sent = size.unwrap_or(0) as u64;
        let at = RESPONSE_SIZE + proto * SIZE_WIDTH;
        s.add(at + size_bucket(sent), 1);
        s.add(at + SIZE_WIDTH - 1, sent);
        let rc = usize::from(rcode);
        if rc < RCODES.len() && plugin < MAX_PLUGINS {
            s.add(RESPONSES + rc * MAX_PLUGINS + plugin, 1);
        } else {
            self.count_rare(rcode, plugin);
        }
    }

    #[cold]
    fn count_rare(&self, rcode: u16, plugin: usize) {
        let mut rare = self.rare.lock().unwrap_or_else(PoisonError::into_inner);
        match rare.iter_mut().find(|(k, _)| *k == (rcode, plugin)) {
            Some((_, n)) => *n += 1,
            // Bounded: 4096 rcodes times the plugin names.
            None => rare.push(((rcode, plugin), 1)),
        }
    }
}

// === the collector ===

struct Families {
    descs: Vec<Desc>,
}

static COLLECTOR: LazyLock<()> = LazyLock::new(|| {
    let descs = SPECS
        .iter()
        .map(|(name, help, labels)| {
            Desc::new(
                (*name).to_string(),
                (*help).to_string(),
                labels.iter().map(|l| (*l).to_string()).collect(),
                std::collections::HashMap::new(),
            )
            .unwrap_or_else(|e| crate::pkg::metrics::unreachable_metric(name, &e))
        })
        .collect();
    register_collector(Box::new(Families { descs }));
});

/// Registers the six families (they are exported once they count something).
pub(crate) fn register() {
    LazyLock::force(&COLLECTOR);
}

const REQUESTS_TOTAL: &str = "coredns_dns_requests_total";
const DO_TOTAL: &str = "coredns_dns_do_requests_total";
const DURATION_SECONDS: &str = "coredns_dns_request_duration_seconds";
const REQUEST_BYTES: &str = "coredns_dns_request_size_bytes";
const RESPONSE_BYTES: &str = "coredns_dns_response_size_bytes";
const RESPONSES_TOTAL: &str = "coredns_dns_responses_total";

/// Name, help and labels of each family, as CoreDNS's `vars.go`.
const SPECS: [(&str, &str, &[&str]); 6] = [
    (
        REQUESTS_TOTAL,
        "Counter of DNS requests made per zone, protocol and family.",
        &["server", "zone", "view", "proto", "family", "type"],
    ),
    (
        DURATION_SECONDS,
        "Histogram of the time (in seconds) each request took per zone.",
        &["server", "zone", "view"],
    ),
    (
        REQUEST_BYTES,
        "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
        &["server", "zone", "view", "proto"],
    ),
    (
        DO_TOTAL,
        "Counter of DNS requests with DO bit set per zone.",
        &["server", "zone", "view"],
    ),
    (
        RESPONSE_BYTES,
        "Size of the returned response in bytes.",
        &["server", "zone", "view", "proto"],
    ),
    (
        RESPONSES_TOTAL,
        "Counter of response status codes.",
        &["server", "zone", "view", "rcode", "plugin"],
    ),
];

fn help(name: &str) -> &'static str {
    SPECS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or("", |(_, h, _)| h)
}

fn counter(labels: &[(&str, &str)], v: u64) -> Metric {
    let mut m = Metric::from_label(label_pairs(labels.iter().copied()));
    let mut c = Counter::default();
    c.set_value(v as f64);
    m.set_counter(c);
    m
}

/// A histogram from per-bucket counts (+Inf last) and a sum.
fn histogram(labels: &[(&str, &str)], counts: &[u64], bounds: &[f64], sum: f64) -> Metric {
    let mut m = Metric::from_label(label_pairs(labels.iter().copied()));
    let mut h = Histogram::default();
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(bounds.len());
    for (count, bound) in counts.iter().zip(bounds) {
        cumulative += count;
        let mut b = Bucket::default();
        b.set_cumulative_count(cumulative);
        b.set_upper_bound(*bound);
        buckets.push(b);
    }
    h.set_bucket(buckets);
    h.set_sample_count(counts.iter().sum());
    h.set_sample_sum(sum);
    m.set_histogram(h);
    m
}

impl Collector for Families {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let sinks: Vec<&'static Sink> =
            SINKS.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let time_bounds: Vec<f64> = (0..TIME_BUCKETS)
            .map(|k| FIRST_BUCKET_NS as f64 * f64::from(1u32 << k) / 1e9)
            .collect();
        let size_bounds: Vec<f64> = SIZE_BOUNDS.iter().map(|b| *b as f64).collect();
        let mut out: [Vec<Metric>; 6] = Default::default();
        for sink in sinks {
            let v = sink.cells.snapshot();
            let (server, zone) = (&*sink.server, &*sink.zone);
            let base = [("server", server), ("zone", zone), ("view", "")];
            for (p, proto) in PROTOS.iter().enumerate() {
                for (f, fam) in FAMILIES.iter().enumerate() {
                    for (t, qtype) in TYPES.iter().enumerate() {
                        let n = v[REQUESTS + (p * FAMILIES.len() + f) * N_TYPES + t];
                        if n > 0 {
                            let mut l = base.to_vec();
                            l.extend([("proto", *proto), ("family", *fam), ("type", *qtype)]);
                            out[0].push(counter(&l, n));
                        }
                    }
                }
            }
            let durations = &v[DURATION..=DURATION + TIME_BUCKETS];
            if durations.iter().any(|n| *n > 0) {
                let sum = v[DURATION_SUM] as f64 / 1e9;
                out[1].push(histogram(&base, durations, &time_bounds, sum));
            }
            for (p, proto) in PROTOS.iter().enumerate() {
                let mut l = base.to_vec();
                l.push(("proto", *proto));
                for (at, slot) in [(REQUEST_SIZE, 2), (RESPONSE_SIZE, 4)] {
                    let at = at + p * SIZE_WIDTH;
                    let counts = &v[at..at + SIZE_WIDTH - 1];
                    if counts.iter().any(|n| *n > 0) {
                        let sum = v[at + SIZE_WIDTH - 1] as f64;
                        out[slot].push(histogram(&l, counts, &size_bounds, sum));
                    }
                }
            }
            if v[DO] > 0 {
                out[3].push(counter(&base, v[DO]));
            }
            for (rc, name) in RCODES.iter().enumerate() {
                for plugin in 0..MAX_PLUGINS {
                    let n = v[RESPONSES + rc * MAX_PLUGINS + plugin];
                    if n > 0 {
                        let mut l = base.to_vec();
                        l.extend([("rcode", *name), ("plugin", plugin_name(plugin))]);
                        out[5].push(counter(&l, n));
                    }
                }
            }
            let rare = sink
                .rare
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            for ((rcode, plugin), n) in rare {
                let name = rcode_name(rcode);
                let mut l = base.to_vec();
                l.extend([("rcode", name.as_str()), ("plugin", plugin_name(plugin))]);
                out[5].push(counter(&l, n));
            }
        }
        let kinds = [
            MetricType::COUNTER,
            MetricType::HISTOGRAM,
            MetricType::HISTOGRAM,
            MetricType::COUNTER,
            MetricType::HISTOGRAM,
            MetricType::COUNTER,
        ];
        out.into_iter()
            .zip(SPECS)
            .zip(kinds)
            .map(|((metrics, (name, _, _)), kind)| family(name, help(name), kind, metrics))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_corednss() {
        assert_eq!(time_bucket(0), 0);
        assert_eq!(time_bucket(250_000), 0);
        assert_eq!(time_bucket(250_001), 1);
        assert_eq!(time_bucket(500_000), 1);
        assert_eq!(time_bucket(500_001), 2);
        assert_eq!(time_bucket(8_192_000_000), 15);
        assert_eq!(time_bucket(8_192_000_001), 16);
        assert_eq!(time_bucket(u64::MAX), 16);
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(1), 1);
        assert_eq!(size_bucket(100), 1);
        assert_eq!(size_bucket(511), 5);
        assert_eq!(size_bucket(512), 6);
        assert_eq!(size_bucket(64_000), 13);
        assert_eq!(size_bucket(65_535), 14);
    }

    #[test]
    fn types_outside_the_monitored_set_are_other() {
        assert_eq!(TYPES[type_index(1)], "A");
        assert_eq!(TYPES[type_index(28)], "AAAA");
        assert_eq!(TYPES[type_index(65)], "HTTPS");
        assert_eq!(TYPES[type_index(255)], "ANY");
        assert_eq!(TYPES[type_index(99)], "other");
        assert_eq!(TYPES[type_index(13)], "other", "HINFO is not monitored");
    }

    #[test]
    fn rcodes_are_named_as_coredns_names_them() {
        assert_eq!(rcode_name(0), "NOERROR");
        assert_eq!(rcode_name(3), "NXDOMAIN");
        assert_eq!(rcode_name(11), "DSOTYPENI");
        assert_eq!(rcode_name(12), "RCODE12");
        assert_eq!(rcode_name(16), "BADSIG");
        assert_eq!(rcode_name(23), "BADCOOKIE");
        assert_eq!(rcode_name(24), "RCODE24");
    }

    #[test]
    fn plugin_names_get_stable_indices() {
        assert_eq!(plugin_index(""), 0);
        let a = plugin_index("dns-test-a");
        assert_eq!(plugin_index("dns-test-a"), a);
        assert_ne!(plugin_index("dns-test-b"), a);
        assert_eq!(plugin_name(a), "dns-test-a");
        assert_eq!(plugin_name(0), "");
    }
}
