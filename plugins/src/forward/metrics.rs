//! forward's metrics, under CoreDNS's names and labels: the current
//! `coredns_proxy_*` family and the older `coredns_forward_*` series that
//! dashboards still query. Registered once per process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Metric, MetricFamily, MetricType};
use prometheus::{HistogramVec, IntCounter, IntCounterVec};

use crate::pkg::metrics::striped::{family, label_pairs};
use crate::pkg::metrics::{counter, counter_vec, histogram_vec, register_collector};

pub(super) static PROXY_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec(
        "coredns_proxy_request_duration_seconds",
        "Histogram of the time each request took.",
        &["proxy_name", "to", "rcode"],
    )
});
pub(super) static PROXY_HC_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let proxy = counter_vec(
        "coredns_proxy_healthcheck_failures_total",
        "Counter of the number of failed healthchecks.",
        &["proxy_name", "to", "rcode"],
    );
    if let Ok(desc) = Desc::new(
        LEGACY_HC_FAILURES.to_string(),
        LEGACY_HC_HELP.to_string(),
        vec!["to".to_string()],
        HashMap::new(),
    ) {
        register_collector(Box::new(LegacyHcFailures {
            proxy: proxy.clone(),
            desc,
        }));
    }
    // Every forward resolves its series here, when it is built: the
    // unlabelled counters are exported from then on, at 0 until counted,
    // as CoreDNS's (registered when the process starts).
    LazyLock::force(&HEALTHCHECK_BROKEN);
    LazyLock::force(&MAX_CONCURRENT_REJECTS);
    proxy
});

const LEGACY_HC_FAILURES: &str = "coredns_forward_healthcheck_failures_total";
const LEGACY_HC_HELP: &str = "Counter of the number of failed healthchecks.";

/// `coredns_forward_healthcheck_failures_total{to}`, CoreDNS's older name
/// for forward's failed health checks, which dashboards still query: the
/// `coredns_proxy_healthcheck_failures_total{proxy_name="forward"}` series
/// read again at each scrape, by upstream.
struct LegacyHcFailures {
    proxy: IntCounterVec,
    desc: Desc,
}

impl Collector for LegacyHcFailures {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut by_to: BTreeMap<String, f64> = BTreeMap::new();
        for f in self.proxy.collect() {
            for m in f.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                };
                if label("proxy_name").as_deref() != Some("forward") {
                    continue;
                }
                let to = label("to").unwrap_or_default();
                *by_to.entry(to).or_default() += m.get_counter().get_value();
            }
        }
        let metrics = by_to
            .into_iter()
            .map(|(to, v)| {
                let mut m = Metric::from_label(label_pairs([("to", to.as_str())]));
                let mut c = Counter::default();
                c.set_value(v);
                m.set_counter(c);
                m
            })
            .collect();
        vec![family(
            LEGACY_HC_FAILURES,
            LEGACY_HC_HELP,
            MetricType::COUNTER,
            metrics,
        )]
    }
}
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

/// Upstreams alive per `to`: an upstream that follows the cluster
/// (`k8s://`) takes its series with it when it goes and no other upstream
/// has its address, so pods that come and go do not grow the registry
/// without bound.
static LIVE: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Mutex::default);

fn live() -> std::sync::MutexGuard<'static, HashMap<String, usize>> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An upstream for `to` is made (before its series are resolved).
pub(super) fn up_created(to: &str) {
    *live().entry(to.to_string()).or_default() += 1;
}

/// An upstream for `to` is gone; with `forget`, the series labelled with
/// `to` are removed when it was the last. Under the lock, so an upstream
/// made for `to` meanwhile keeps its series.
pub(super) fn up_dropped(to: &str, forget: bool) {
    let mut live = live();
    match live.get_mut(to) {
        Some(n) if *n > 1 => {
            *n -= 1;
            return;
        }
        Some(_) => {
            live.remove(to);
        }
        None => {}
    }
    if !forget {
        return;
    }
    let _ = REQUESTS.remove_label_values(&[to]);
    let names = (0..=23u16)
        .filter_map(crate::pkg::names::rcode_name)
        .chain(["OTHER"]);
    for rc in names {
        let _ = RESPONSES.remove_label_values(&[to, rc]);
        let _ = DURATION.remove_label_values(&[to, rc]);
        let _ = PROXY_DURATION.remove_label_values(&["forward", to, rc]);
    }
    for p in super::PROTOS {
        let _ = CONN_CACHE_HITS.remove_label_values(&["forward", to, p]);
        let _ = CONN_CACHE_MISSES.remove_label_values(&["forward", to, p]);
    }
    let _ = PROXY_HC_FAILURES.remove_label_values(&["forward", to, ""]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The older family follows the current one, summed by upstream.
    #[test]
    fn legacy_healthcheck_failures_mirror_the_proxy_family() {
        let to = "192.0.2.77:53";
        PROXY_HC_FAILURES
            .with_label_values(&["forward", to, ""])
            .inc_by(3);
        PROXY_HC_FAILURES
            .with_label_values(&["other", to, ""])
            .inc_by(5);
        let text = crate::pkg::metrics::render();
        assert!(
            text.contains("coredns_forward_healthcheck_failures_total{to=\"192.0.2.77:53\"} 3"),
            "{text}"
        );
    }
}
