use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;
use crate::pkg::test::{http_get, setup as run_setup};
use crate::setup::{BlockInfo, BlockSetup, Controller, PrometheusConfig, Services};

fn pc(addr: &str) -> PrometheusConfig {
    PrometheusConfig {
        addr: addr.to_string(),
    }
}

#[test]
fn setup_table() {
    let cases: Vec<(&str, Result<PrometheusConfig, &str>)> = vec![
        ("prometheus", Ok(pc("localhost:9153"))),
        ("prometheus :9253", Ok(pc(":9253"))),
        ("prometheus 127.0.0.1:0", Ok(pc("127.0.0.1:0"))),
        ("prometheus [::1]:9153", Ok(pc("[::1]:9153"))),
        ("prometheus localhost:9154 {\n}", Ok(pc("localhost:9154"))),
        (
            "prometheus bla",
            Err(
                "Corefile:1: prometheus: invalid address 'bla': missing port in address (want HOST:PORT, such as :9153)",
            ),
        ),
        (
            "prometheus :99999",
            Err(
                "Corefile:1: prometheus: invalid address ':99999': invalid port (want HOST:PORT, such as :9153)",
            ),
        ),
        (
            "prometheus :9153 :9154",
            Err(
                "Corefile:1: prometheus: wrong argument count or unexpected line ending after ':9154'",
            ),
        ),
        (
            "prometheus :9153 {\n  path /m\n}",
            Err("Corefile:2: prometheus: option 'path' not supported"),
        ),
        (
            "prometheus {\n  foo\n}",
            Err("Corefile:2: prometheus: option 'foo' not supported"),
        ),
        (
            "prometheus :9153\nprometheus :9154",
            Err("Corefile:2: prometheus: this plugin can only be used once per Server Block"),
        ),
    ];
    for (text, want) in cases {
        let got = run_setup("prometheus", setup, text)
            .map_err(|e| e.to_string())
            .map(|(out, services)| {
                let names: Vec<&str> = out.plugins.iter().map(|p| p.name()).collect();
                assert_eq!(names, ["prometheus"], "{text}: the block's metrics handler");
                assert!(services.health.is_empty() && services.ready.is_empty());
                services.prometheus
            });
        assert_eq!(got, want.map(|p| vec![p]).map_err(str::to_string), "{text}");
    }
}

#[test]
fn blocks_share_an_address() {
    let file: Arc<str> = Arc::from("Corefile");
    let block = BlockInfo {
        zones: vec![".".into()],
        port: 53,
        server_name: Arc::from("dns://:53"),
        bound: Arc::default(),
    };
    let mut services = Services::default();
    for text in [
        "prometheus :9253",
        "prometheus",
        "prometheus :9253",
        "prometheus",
    ] {
        let tokens = lex(&file, text).unwrap();
        let mut out = BlockSetup::default();
        let mut c = Controller {
            d: Dispenser::new("prometheus", &tokens),
            block: &block,
            out: &mut out,
            services: &mut services,
        };
        setup(&mut c).unwrap();
    }
    assert_eq!(services.prometheus, vec![pc(":9253"), pc("localhost:9153")]);
}

#[test]
fn process_files_parse() {
    let stat = "4242 (no de (dns)) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 4 0 12345 100000 500 18446744073709551615";
    let boot = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
    assert_eq!(process::start_from(stat, boot), Some(1_700_000_123.45));
    assert_eq!(process::start_from("garbage", boot), None);
    assert_eq!(process::start_from(stat, "cpu 1\n"), None);
    let status = "Name:\tnodedns\nVmSize:\t  123456 kB\nVmRSS:\t    2048 kB\n";
    assert_eq!(process::status_kb(status, "VmRSS:"), Some(2048));
    assert_eq!(process::status_kb(status, "VmSize:"), Some(123_456));
    assert_eq!(process::status_kb(status, "VmSwap:"), None);
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn serves_metrics_and_404_elsewhere() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve(listener, stopped));
    set_enabled(&[Enabled {
        server: "dns://:53".into(),
        zone: ".".into(),
        name: "cache".into(),
    }]);

    let (status, body) = http_get(addr, PATH).await.unwrap();
    assert_eq!(status, 200);
    let build = format!(
        "coredns_build_info{{goversion=\"rust\",revision=\"{}\",version=\"{VERSION}\"}}",
        option_env!("NODEDNS_REVISION").unwrap_or("")
    );
    assert_eq!(value(&body, &build), Some(1.0), "{body}");
    assert_eq!(
        value(
            &body,
            "coredns_plugin_enabled{name=\"cache\",server=\"dns://:53\",view=\"\",zone=\".\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert!(value(&body, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(value(&body, "process_open_fds").unwrap() >= 1.0);
    assert!(value(&body, "process_max_fds").unwrap() >= 1.0);
    assert!(value(&body, "process_cpu_seconds_total").unwrap() >= 0.0);
    let start = value(&body, "process_start_time_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(start > 1e9 && start <= now + 1.0, "{start} vs {now}");
    assert_eq!(http_get(addr, "/").await.unwrap().0, 404);
    assert_eq!(http_get(addr, "/metricsx").await.unwrap().0, 404);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("task ends when stopped")
        .unwrap();
    assert!(http_get(addr, PATH).await.is_err(), "closed when stopped");
}
