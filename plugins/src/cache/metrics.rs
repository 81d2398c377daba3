//! cache's metrics, under CoreDNS's names and labels. The counters every
//! lookup touches (requests, hits, misses) are striped per thread
//! ([`crate::pkg::metrics::striped`]); the rest are plain counters.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGaugeVec};

use crate::pkg::metrics::striped::{CounterFamily, counter_family};
use crate::pkg::metrics::{counter_vec, gauge_vec};

pub(super) static ENTRIES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "coredns_cache_entries",
        "The number of elements in the cache.",
        &["server", "type", "zones", "view"],
    )
});
pub(super) static REQUESTS: LazyLock<&'static CounterFamily> = LazyLock::new(|| {
    counter_family(
        "coredns_cache_requests_total",
        "The count of cache requests.",
        &["server", "zones", "view"],
    )
});
pub(super) static HITS: LazyLock<&'static CounterFamily> = LazyLock::new(|| {
    counter_family(
        "coredns_cache_hits_total",
        "The count of cache hits.",
        &["server", "type", "zones", "view"],
    )
});
pub(super) static MISSES: LazyLock<&'static CounterFamily> = LazyLock::new(|| {
    counter_family(
        "coredns_cache_misses_total",
        "The count of cache misses. Deprecated, derive misses from cache hits/requests counters.",
        &["server", "zones", "view"],
    )
});
pub(super) static PREFETCH: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "coredns_cache_prefetch_total",
        "The number of times the cache has prefetched a cached item.",
        &["server", "zones", "view"],
    )
});
pub(super) static DROPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "coredns_cache_drops_total",
        "The number responses that are not cached, because the reply is malformed.",
        &["server", "zones", "view"],
    )
});
pub(super) static SERVED_STALE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "coredns_cache_served_stale_total",
        "The number of requests served from stale cache entries.",
        &["server", "zones", "view"],
    )
});
pub(super) static EVICTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "coredns_cache_evictions_total",
        "The count of cache evictions.",
        &["server", "type", "zones", "view"],
    )
});
