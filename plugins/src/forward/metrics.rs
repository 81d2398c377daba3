//! forward's metrics, under CoreDNS's names and labels: the current
//! `coredns_proxy_*` family and the older `coredns_forward_*` series that
//! dashboards still query. Registered once per process.

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounter, IntCounterVec};

use crate::pkg::metrics::{counter, counter_vec, histogram_vec};

pub(super) static PROXY_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "coredns_proxy_request_duration_seconds",
        "Histogram of the time each request took.",
        &["proxy_name", "to", "rcode"],
    )
});
pub(super) static PROXY_HC_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "coredns_proxy_healthcheck_failures_total",
        "Counter of the number of failed healthchecks.",
        &["proxy_name", "to", "rcode"],
    )
});
pub(super) static CONN_CACHE_HITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "coredns_proxy_conn_cache_hits_total",
        "Counter of connection cache hits per upstream and protocol.",
        &["proxy_name", "to", "proto"],
    )
});
pub(super) static CONN_CACHE_MISSES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "coredns_proxy_conn_cache_misses_total",
        "Counter of connection cache misses per upstream and protocol.",
        &["proxy_name", "to", "proto"],
    )
});
pub(super) static HEALTHCHECK_BROKEN: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "coredns_forward_healthcheck_broken_total",
        "Counter of the number of complete failures of the healthchecks.",
    )
});
pub(super) static MAX_CONCURRENT_REJECTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "coredns_forward_max_concurrent_rejects_total",
        "Counter of the number of queries rejected because the concurrent queries were at maximum.",
    )
});
pub(super) static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "coredns_forward_requests_total",
        "Counter of requests made per upstream.",
        &["to"],
    )
});
pub(super) static RESPONSES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "coredns_forward_responses_total",
        "Counter of responses received per upstream.",
        &["to", "rcode"],
    )
});
pub(super) static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "coredns_forward_request_duration_seconds",
        "Histogram of the time each request took.",
        &["to", "rcode"],
    )
});
