//! The kubernetes plugin's metrics through `/metrics` of the real binary,
//! against the fake API server: the REST client's counters and histograms
//! under the API server's `host:port`, and the DNS programming latency of
//! slices with a trigger time, by service kind.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use nodedns_tests::kubeapi::{Endpoint, EndpointSlice, FakeKubeApi, Namespace, Service};
use nodedns_tests::{Agent, http_get, http_status, wait_until};

const TRIGGER: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The value of the line `series` (name and labels as exported) in a
/// scrape, if there is one.
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn kubernetes_metrics_are_exported_with_coredns_names_and_labels() {
    let api = FakeKubeApi::start().await;
    let host = api.addr().to_string();
    api.apply(Namespace::new("shop"));
    api.apply(Service::cluster_ip("shop", "web", "10.96.0.7").port("http", "TCP", 80));
    api.apply(Service::headless("shop", "db"));
    let ready_port = nodedns_tests::free_port();
    let agent = Agent::corefile(format!(
        "cluster.local:0 {{\n    bind 127.0.0.1\n    ready 127.0.0.1:{ready_port}\n    prometheus 127.0.0.1:0\n    kubernetes cluster.local {{\n        endpoint {}\n    }}\n}}\n",
        api.endpoint_url()
    ))
    .start()
    .await;
    let ready = std::net::SocketAddr::from(([127, 0, 0, 1], ready_port));
    let limit = Duration::from_secs(10);
    assert!(
        wait_until(limit, || async {
            http_status(ready, "/ready").await == Some(200)
        })
        .await,
        "ready once synced: {:?}",
        agent.stderr()
    );
    // After the sync, so the services are known when the slices come.
    let ago = (Timestamp::now() - SignedDuration::from_secs(1)).to_string();
    api.apply(
        EndpointSlice::new("shop", "web", "web-1")
            .port("http", "TCP", 8080)
            .endpoint(Endpoint::new("10.1.0.1"))
            .annotation(TRIGGER, &ago),
    );
    api.apply(
        EndpointSlice::new("shop", "db", "db-1")
            .port("pg", "TCP", 5432)
            .endpoint(Endpoint::new("10.1.1.1").hostname("db-0"))
            .annotation(TRIGGER, &ago),
    );
    let metrics = agent.http("prometheus");
    let scrape = || async {
        http_get(metrics, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let programming = "coredns_kubernetes_dns_programming_duration_seconds_count";
    assert!(
        wait_until(limit, || async {
            let body = scrape().await;
            value(
                &body,
                &format!("{programming}{{service_kind=\"cluster_ip\"}}"),
            ) == Some(1.0)
                && value(
                    &body,
                    &format!("{programming}{{service_kind=\"headless_with_selector\"}}"),
                ) == Some(1.0)
        })
        .await,
        "{}",
        scrape().await
    );
    let body = scrape().await;
    let sum = value(
        &body,
        "coredns_kubernetes_dns_programming_duration_seconds_sum{service_kind=\"cluster_ip\"}",
    )
    .unwrap_or_default();
    assert!((1.0..11.0).contains(&sum), "{sum}");
    assert!(
        body.contains(
            "coredns_kubernetes_dns_programming_duration_seconds_bucket{service_kind=\"cluster_ip\",le=\"0.001\"}"
        ),
        "CoreDNS's buckets"
    );
    // Three lists and three watches at least, all answered 200.
    let requests = format!(
        "coredns_kubernetes_rest_client_requests_total{{code=\"200\",host=\"{host}\",method=\"GET\"}}"
    );
    assert!(value(&body, &requests).unwrap_or_default() >= 6.0, "{body}");
    for family in [
        "coredns_kubernetes_rest_client_request_duration_seconds_count",
        "coredns_kubernetes_rest_client_rate_limiter_duration_seconds_count",
    ] {
        let series = format!("{family}{{host=\"{host}\",verb=\"GET\"}}");
        assert_eq!(
            value(&body, &series),
            Some(3.0),
            "the three lists: {series}"
        );
    }
    assert!(
        body.contains(&format!(
            "coredns_kubernetes_rest_client_request_duration_seconds_bucket{{host=\"{host}\",verb=\"GET\",le=\"0.005\"}}"
        )),
        "Prometheus's default buckets"
    );
}
