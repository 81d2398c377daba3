use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;
use crate::pkg::lifecycle::Lifecycle;
use crate::pkg::listen::check_listen_addr;
use crate::pkg::test::{http_get, setup as run_setup};
use crate::setup::{BlockInfo, BlockSetup, Controller, HealthConfig, Services};

fn hc(addr: &str, lameduck: Duration) -> HealthConfig {
    HealthConfig {
        addr: addr.to_string(),
        lameduck,
    }
}

#[test]
fn listen_addresses() {
    for good in [
        ":8080",
        "localhost:8091",
        "127.0.0.1:0",
        "[::1]:8080",
        "[fe80::1%eth0]:80",
        ":65535",
    ] {
        assert_eq!(check_listen_addr(good), Ok(()), "{good}");
    }
    let bad = [
        ("bla", "missing port in address"),
        ("localhost:", "missing port in address"),
        ("[::1]", "missing port in address"),
        ("[::1", "missing ']' in address"),
        (
            "::1:8080",
            "too many colons in address (write IPv6 as [ADDRESS]:PORT)",
        ),
        ("bla:a", "invalid port"),
        (":65536", "invalid port"),
        (":+80", "invalid port"),
    ];
    for (addr, why) in bad {
        assert_eq!(check_listen_addr(addr), Err(why), "{addr}");
    }
}

#[test]
fn setup_table() {
    let secs = Duration::from_secs;
    let cases: Vec<(&str, Result<HealthConfig, &str>)> = vec![
        ("health", Ok(hc(":8080", Duration::ZERO))),
        (
            "health localhost:8091",
            Ok(hc("localhost:8091", Duration::ZERO)),
        ),
        (
            "health [::1]:8091 {\n}",
            Ok(hc("[::1]:8091", Duration::ZERO)),
        ),
        (
            "health localhost:8092 {\n  lameduck 1s\n}",
            Ok(hc("localhost:8092", secs(1))),
        ),
        ("health {\n  lameduck 1m30s\n}", Ok(hc(":8080", secs(90)))),
        (
            "health :8080 {\n  lameduck 5s\n}\nhealth :8081",
            Ok(hc(":8081", secs(5))),
        ),
        (
            "health bla",
            Err(
                "Corefile:1: health: invalid address 'bla': missing port in address (want HOST:PORT, such as :8080)",
            ),
        ),
        (
            "health bla:a",
            Err(
                "Corefile:1: health: invalid address 'bla:a': invalid port (want HOST:PORT, such as :8080)",
            ),
        ),
        (
            "health bla bla",
            Err("Corefile:1: health: wrong argument count or unexpected line ending after 'bla'"),
        ),
        (
            "health localhost:1234 {\n  lameduck a\n}",
            Err("Corefile:2: health: unable to parse lameduck duration value: 'a'"),
        ),
        (
            "health localhost:1234 {\n  lameduck -1s\n}",
            Err("Corefile:2: health: unable to parse lameduck duration value: '-1s'"),
        ),
        (
            "health {\n  lameduck\n}",
            Err(
                "Corefile:2: health: wrong argument count or unexpected line ending after 'lameduck'",
            ),
        ),
        (
            "health {\n  lameduck 1s 2s\n}",
            Err("Corefile:2: health: wrong argument count or unexpected line ending after '2s'"),
        ),
        (
            "health localhost:1234 {\n  lamedudk 4\n}",
            Err("Corefile:2: health: unknown property 'lamedudk'"),
        ),
    ];
    for (text, want) in cases {
        let got = run_setup("health", setup, text)
            .map_err(|e| e.to_string())
            .map(|(out, services)| {
                assert!(out.plugins.is_empty(), "{text}: health adds no handler");
                assert!(services.ready.is_empty());
                services.health
            });
        assert_eq!(got, want.map(|h| vec![h]).map_err(str::to_string), "{text}");
    }
}

/// Runs `health` setup for several server blocks sharing one `Services`.
fn setup_blocks(blocks: &[&str]) -> Vec<HealthConfig> {
    let file: Arc<str> = Arc::from("Corefile");
    let block = BlockInfo {
        zones: vec![".".into()],
        port: 53,
        server_name: Arc::from("dns://:53"),
        bound: Arc::default(),
    };
    let mut services = Services::default();
    for text in blocks {
        let tokens = lex(&file, text).unwrap();
        let mut out = BlockSetup::default();
        let mut c = Controller {
            d: Dispenser::new("health", &tokens),
            block: &block,
            out: &mut out,
            services: &mut services,
        };
        setup(&mut c).unwrap();
    }
    services.health
}

#[test]
fn blocks_share_an_address() {
    let got = setup_blocks(&[
        "health",
        "health {\n  lameduck 3s\n}",
        "health :8081",
        "health :8080 {\n  lameduck 1s\n}",
    ]);
    assert_eq!(
        got,
        vec![
            hc(":8080", Duration::from_secs(3)),
            hc(":8081", Duration::ZERO)
        ]
    );
}

#[tokio::test]
async fn serves_ok_also_in_lame_duck() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let life = Lifecycle::new();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve(listener, Arc::clone(&life), stopped));

    assert_eq!(
        http_get(addr, "/health").await.unwrap(),
        (200, "OK".to_string())
    );
    life.set_serving();
    assert_eq!(
        http_get(addr, "/health").await.unwrap(),
        (200, "OK".to_string())
    );
    life.set_stopping();
    assert_eq!(
        http_get(addr, "/health").await.unwrap(),
        (200, "OK".to_string())
    );
    assert_eq!(http_get(addr, "/ready").await.unwrap().0, 404);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("task ends when stopped")
        .unwrap();
    assert!(
        http_get(addr, "/health").await.is_err(),
        "listener closed when stopped"
    );
}

/// The self-check asks the endpoint once a second and records how long it
/// took, while the endpoint serves; it ends with the endpoint.
#[tokio::test]
async fn the_self_check_times_the_endpoint_while_it_serves() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let checks = || overloaded::DURATION.get_sample_count();
    let before = checks();
    let task = tokio::spawn(serve(listener, Lifecycle::new(), stopped));
    crate::pkg::test::wait_until("two self checks", Duration::from_secs(10), || {
        checks() >= before + 2
    })
    .await;
    let text = crate::pkg::metrics::render();
    assert!(
        text.contains("coredns_health_request_duration_seconds_bucket{le=\"0.00025\"}"),
        "{text}"
    );
    assert!(
        text.contains("coredns_health_request_failures_total "),
        "{text}"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the endpoint and its self-check end when stopped")
        .unwrap();
}

/// A check that gets no answer is timed and counted as a failure.
#[tokio::test]
async fn a_failed_self_check_is_counted() {
    // A port with nothing listening: the connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let failures = overloaded::FAILURES.get();
    let checks = overloaded::DURATION.get_sample_count();
    overloaded::check_once(port).await;
    assert!(overloaded::FAILURES.get() > failures);
    assert!(overloaded::DURATION.get_sample_count() > checks);
}

#[test]
fn the_self_check_asks_loopback_for_a_wildcard_address() {
    let t = |a: &str| overloaded::target(a.parse().unwrap()).to_string();
    assert_eq!(t("0.0.0.0:8080"), "127.0.0.1:8080");
    assert_eq!(t("[::]:8080"), "[::1]:8080");
    assert_eq!(t("192.0.2.1:8080"), "192.0.2.1:8080");
}
