//! kubernetes's metrics, under CoreDNS 1.14.7's names, labels and buckets
//! (`plugin/kubernetes/metrics.go`, `object/metrics.go`):
//!
//! - `coredns_kubernetes_dns_programming_duration_seconds{service_kind}`:
//!   from an EndpointSlice's `endpoints.kubernetes.io/last-change-trigger-time`
//!   to when the change is served, for slices of a service the store knows
//!   (`cluster_ip` or `headless_with_selector`; CoreDNS never emits
//!   `headless_without_selector`);
//! - the REST client's `coredns_kubernetes_rest_client_requests_total{code,
//!   method,host}` (every request to the API server, `<error>` when none
//!   came back), `…_request_duration_seconds{verb,host}` (requests but
//!   watches, rate limiter wait included) and
//!   `…_rate_limiter_duration_seconds{verb,host}` (the wait for a token of
//!   `apiserver_qps`/`apiserver_burst`), as client-go records them.
//!
//! Families are registered on first use and exported once they have a
//! series, as CoreDNS's vectors are.

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use prometheus::{HistogramVec, IntCounterVec};

use crate::pkg::metrics::{counter_vec, histogram_vec_buckets};

/// Prometheus's `DefBuckets`, which CoreDNS's REST client histograms use.
const DEF_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub(super) static PROGRAMMING: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec_buckets(
        "coredns_kubernetes_dns_programming_duration_seconds",
        "Histogram of the time (in seconds) it took to program a dns instance.",
        &["service_kind"],
        // From 1 millisecond to ~17 minutes.
        prometheus::exponential_buckets(0.001, 2.0, 20).unwrap_or_default(),
    )
});

pub(super) static REQUEST_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec_buckets(
        "coredns_kubernetes_rest_client_request_duration_seconds",
        "Request latency in seconds. Broken down by verb and host.",
        &["verb", "host"],
        DEF_BUCKETS.to_vec(),
    )
});

pub(super) static RATE_LIMITER_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram_vec_buckets(
        "coredns_kubernetes_rest_client_rate_limiter_duration_seconds",
        "Client side rate limiter latency in seconds. Broken down by verb and host.",
        &["verb", "host"],
        DEF_BUCKETS.to_vec(),
    )
});

pub(super) static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "coredns_kubernetes_rest_client_requests_total",
        "Number of HTTP requests, partitioned by status code, method, and host.",
        &["code", "method", "host"],
    )
});

/// The annotation the EndpointSlice controller sets to when the change
/// behind a slice's last update happened.
pub(super) const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The `service_kind` of a slice's service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServiceKindLabel {
    ClusterIp,
    HeadlessWithSelector,
}

impl ServiceKindLabel {
    fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIp => "cluster_ip",
            Self::HeadlessWithSelector => "headless_with_selector",
        }
    }
}

/// Reads a trigger time as Go's `time.Parse(time.RFC3339Nano, …)`: `None`
/// (logged, as CoreDNS) when it is not one.
pub(super) fn trigger_time(namespace: &str, name: &str, value: &str) -> Option<SystemTime> {
    match value.parse::<k8s_openapi::jiff::Timestamp>() {
        Ok(t) => Some(SystemTime::from(t)),
        Err(_) => {
            tracing::warn!(
                namespace,
                name,
                value,
                "kubernetes: DNS programming latency cannot be calculated: invalid {TRIGGER_TIME} annotation"
            );
            None
        }
    }
}

/// A slice changed at `at` is served now.
pub(super) fn programmed(kind: ServiceKindLabel, at: SystemTime) {
    // A trigger time ahead of this clock (skew) counts as no time.
    let took = SystemTime::now()
        .duration_since(at)
        .unwrap_or(Duration::ZERO);
    PROGRAMMING
        .with_label_values(&[kind.as_str()])
        .observe(took.as_secs_f64());
}

/// The rate limiter held a request `waited` (the limiter records it for
/// every paced request, zero included, as client-go's `tryThrottle`).
pub(super) fn rate_limited(verb: &str, host: &str, waited: Duration) {
    RATE_LIMITER_LATENCY
        .with_label_values(&[verb, host])
        .observe(waited.as_secs_f64());
}

/// Whether `uri` asks for a watch (`watch=true`, or `1`, in the query):
/// client-go neither paces watches nor times them.
pub(super) fn is_watch(uri: &hyper::Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    })
}

/// The `host` label: the API server's `host:port` as the client's URL
/// names it (client-go's `URL.Host`), from the configured cluster URL.
pub(super) fn host_label(uri: &hyper::Uri) -> String {
    uri.authority()
        .map(|a| {
            a.as_str()
                .rsplit('@')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .unwrap_or_else(|| "none".to_string())
}

// === The REST client layer ===

/// A tower layer around the kube client's stack that counts every request
/// by status code, method and host, and times the ones that are not
/// watches from the call (so a wait for the rate limiter inside counts, as
/// in client-go's `request`) to the response's headers.
#[derive(Debug, Clone)]
pub(crate) struct Measure {
    host: std::sync::Arc<str>,
}

impl Measure {
    pub(crate) fn new(host: &str) -> Self {
        Self { host: host.into() }
    }
}

impl<S> tower::Layer<S> for Measure {
    type Service = Measured<S>;
    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            host: std::sync::Arc::clone(&self.host),
        }
    }
}

/// A service counted and timed by [`Measure`].
#[derive(Debug, Clone)]
pub(crate) struct Measured<S> {
    inner: S,
    host: std::sync::Arc<str>,
}

impl<S, B, RB> tower::Service<hyper::Request<B>> for Measured<S>
where
    S: tower::Service<hyper::Request<B>, Response = hyper::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        let verb = req.method().as_str().to_string();
        let timed = !is_watch(req.uri());
        let host = std::sync::Arc::clone(&self.host);
        let start = tokio::time::Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let out = fut.await;
            let code = match &out {
                Ok(resp) => resp.status().as_u16().to_string(),
                // Errors are arbitrary strings: one label for all.
                Err(_) => "<error>".to_string(),
            };
            REQUESTS
                .with_label_values(&[code.as_str(), verb.as_str(), &host])
                .inc();
            if timed {
                REQUEST_LATENCY
                    .with_label_values(&[verb.as_str(), &host])
                    .observe(start.elapsed().as_secs_f64());
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_and_buckets_are_coredns() {
        // Each family builds (names and label sets are well-formed).
        PROGRAMMING.with_label_values(&["cluster_ip"]);
        REQUEST_LATENCY.with_label_values(&["GET", "h:1"]);
        RATE_LIMITER_LATENCY.with_label_values(&["GET", "h:1"]);
        REQUESTS.with_label_values(&["200", "GET", "h:1"]);
        let text = crate::pkg::metrics::render();
        for le in ["0.001", "0.002", "524.288"] {
            assert!(
                text.contains(&format!(
                    "coredns_kubernetes_dns_programming_duration_seconds_bucket{{service_kind=\"cluster_ip\",le=\"{le}\"}}"
                )),
                "{le}"
            );
        }
        for le in ["0.005", "0.25", "10"] {
            assert!(
                text.contains(&format!(
                    "coredns_kubernetes_rest_client_request_duration_seconds_bucket{{host=\"h:1\",verb=\"GET\",le=\"{le}\"}}"
                )),
                "{le}"
            );
        }
    }

    #[test]
    fn trigger_times_as_go_reads_rfc3339nano() {
        let at = |s: &str| {
            trigger_time("ns", "s", s)
                .map(|t| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos())
        };
        assert_eq!(at("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(at("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(
            at("1970-01-01T01:00:01.000000001+01:00"),
            Some(1_000_000_001)
        );
        assert_eq!(at("yesterday"), None);
        assert_eq!(at(""), None);
    }

    #[test]
    fn watches_and_hosts() {
        let uri = |s: &str| s.parse::<hyper::Uri>().unwrap();
        assert!(is_watch(&uri(
            "/api/v1/services?watch=true&resourceVersion=5"
        )));
        assert!(is_watch(&uri(
            "/api/v1/services?allowWatchBookmarks=true&watch=1"
        )));
        assert!(!is_watch(&uri("/api/v1/services?limit=500")));
        assert!(!is_watch(&uri("/api/v1/services?allowWatchBookmarks=true")));
        assert!(!is_watch(&uri("/api/v1/services")));
        assert_eq!(host_label(&uri("https://10.96.0.1:443")), "10.96.0.1:443");
        assert_eq!(host_label(&uri("http://127.0.0.1:6443/")), "127.0.0.1:6443");
        assert_eq!(
            host_label(&uri("https://kubernetes.default.svc")),
            "kubernetes.default.svc"
        );
        assert_eq!(host_label(&uri("/relative")), "none");
    }

    #[test]
    fn programming_observes_time_since_the_trigger() {
        let before = PROGRAMMING
            .with_label_values(&["headless_with_selector"])
            .get_sample_count();
        let sum = PROGRAMMING
            .with_label_values(&["headless_with_selector"])
            .get_sample_sum();
        programmed(
            ServiceKindLabel::HeadlessWithSelector,
            SystemTime::now() - Duration::from_secs(3),
        );
        let h = PROGRAMMING.with_label_values(&["headless_with_selector"]);
        assert_eq!(h.get_sample_count(), before + 1);
        let took = h.get_sample_sum() - sum;
        assert!((3.0..4.0).contains(&took), "{took}");
        // A trigger time in the future (clock skew) is no time at all.
        programmed(
            ServiceKindLabel::HeadlessWithSelector,
            SystemTime::now() + Duration::from_secs(60),
        );
        assert_eq!(h.get_sample_count(), before + 2);
        assert!(h.get_sample_sum() - sum < 4.0);
    }
}
