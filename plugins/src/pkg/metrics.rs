//! The process-wide metrics registry that the `prometheus` plugin serves.
//!
//! Metric families are registered once per process (statics), never per
//! config, so a reload keeps every series (unlike coredns#2111). Plugins
//! resolve their label values once, at build time, and the hot path is an
//! atomic add.

use std::sync::LazyLock;

use prometheus::core::{Collector, GenericCounter, GenericCounterVec};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
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

/// Metric construction fails only for an invalid name or label set, which
/// are literals in this crate; each plugin's `metric_names_*` test builds
/// all of its families.
#[cold]
fn unreachable_metric(name: &str, e: &prometheus::Error) -> ! {
    panic!("invariant: metric {name} is well-formed: {e}")
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
