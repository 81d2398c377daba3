//! The process-wide metrics registry that the `prometheus` plugin serves.
//!
//! Metric families are registered once per process (statics), never per
//! config, so a reload keeps every series (unlike coredns#2111). Plugins
//! resolve their label values once, at build time, and the hot path is an
//! atomic add; counters every query touches are per thread ([`striped`]).

pub mod queries;
pub mod striped;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::core::{Collector, GenericCounter, GenericCounterVec};
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// The registry every nodedns metric lives in.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

fn register<C: Collector + Clone + 'static>(c: C) -> C {
    // Names are fixed at compile time and each family is created once (a
    // static), so registration cannot collide; if it ever did, the metric
    // still counts, it is just not exported.
    if let Err(e) = REGISTRY.register(Box::new(c.clone())) {
        tracing::warn!(error = %e, "metric registration failed");
    }
    c
}

/// Registers a collector built elsewhere (the process metrics). `false`
/// if the registry refused it (logged).
pub fn register_collector(c: Box<dyn Collector>) -> bool {
    match REGISTRY.register(c) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "collector registration failed");
            false
        }
    }
}

/// A counter family with labels, registered.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| unreachable_metric(name, &e)),
    )
}

/// A gauge family with labels, registered.
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        IntGaugeVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| unreachable_metric(name, &e)),
    )
}

/// A gauge without labels (a float), registered.
pub fn gauge(name: &str, help: &str) -> Gauge {
    register(Gauge::new(name, help).unwrap_or_else(|e| unreachable_metric(name, &e)))
}

/// A counter without labels, registered.
pub fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).unwrap_or_else(|e| unreachable_metric(name, &e)))
}

/// A histogram family with labels, registered; buckets as CoreDNS's
/// `plugin.TimeBuckets` (0.25 ms doubling to about 8 s).
pub fn histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = prometheus::exponential_buckets(0.00025, 2.0, 16).unwrap_or_default();
    register(
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .unwrap_or_else(|e| unreachable_metric(name, &e)),
    )
}

/// A histogram family with labels, registered, with these buckets.
pub fn histogram_vec_buckets(
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    register(
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .unwrap_or_else(|e| unreachable_metric(name, &e)),
    )
}

/// A histogram without labels, registered, with these buckets.
pub fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .unwrap_or_else(|e| unreachable_metric(name, &e)),
    )
}

/// Metric construction fails only for an invalid name or label set, which
/// are literals in this crate; each plugin's `metric_names_*` test builds
/// all of its families.
#[cold]
pub(crate) fn unreachable_metric(name: &str, e: &prometheus::Error) -> ! {
    panic!("invariant: metric {name} is well-formed: {e}")
}

/// `coredns_panics_total`: panics caught in a plugin's query or response
/// step (the server answered SERVFAIL and kept serving). Exported from the
/// start, at 0, as CoreDNS's.
pub fn panics() -> &'static IntCounter {
    static PANICS: LazyLock<IntCounter> = LazyLock::new(|| {
        counter(
            "coredns_panics_total",
            "A metrics that counts the number of panics.",
        )
    });
    &PANICS
}

/// Takes the duration of a query once its reply is sent: the *prometheus*
/// plugin's request duration histogram. A listener that sends replies in
/// batches reads the clock once per batch and hands each reply's duration
/// over (see [`crate::plugin::Reply::end_timing`]).
pub trait Durations: Sync {
    /// Records one query's duration.
    fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }
    /// Records `n` queries that took `d` each (a batch read and sent together).
    fn observe_n(&self, d: Duration, n: u64);
}

/// Renders the registry in Prometheus's text format.
pub fn render() -> String {
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&REGISTRY.gather(), &mut out) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// The value of a counter with these labels (for tests and stats).
pub fn counter_value(vec: &GenericCounterVec<prometheus::core::AtomicU64>, labels: &[&str]) -> u64 {
    vec.get_metric_with_label_values(labels)
        .map_or(0, |c: GenericCounter<_>| c.get())
}
