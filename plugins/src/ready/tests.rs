use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;
use crate::pkg::lifecycle::{Lifecycle, Readiness};
use crate::pkg::test::{http_get, setup as run_setup};
use crate::setup::{BlockInfo, BlockSetup, Controller, ReadyConfig, Services};

fn rc(addr: &str) -> ReadyConfig {
    ReadyConfig {
        addr: addr.to_string(),
    }
}

#[test]
fn setup_table() {
    let cases: Vec<(&str, Result<ReadyConfig, &str>)> = vec![
        ("ready", Ok(rc(":8181"))),
        ("ready localhost:8182", Ok(rc("localhost:8182"))),
        ("ready [::1]:8181 {\n}", Ok(rc("[::1]:8181"))),
        ("ready {\n  monitor continuously\n}", Ok(rc(":8181"))),
        (
            "ready bla",
            Err(
                "Corefile:1: ready: invalid address 'bla': missing port in address (want HOST:PORT, such as :8181)",
            ),
        ),
        (
            "ready :http",
            Err(
                "Corefile:1: ready: invalid address ':http': invalid port (want HOST:PORT, such as :8181)",
            ),
        ),
        (
            "ready :8181 :8182",
            Err("Corefile:1: ready: wrong argument count or unexpected line ending after ':8182'"),
        ),
        (
            "ready\nready :8182",
            Err("Corefile:2: ready: this plugin can only be used once per Server Block"),
        ),
        (
            "ready {\n  monitor until-ready\n}",
            Err(
                "Corefile:2: ready: monitor type 'until-ready' not supported (nodedns always monitors continuously)",
            ),
        ),
        (
            "ready {\n  monitor sometimes\n}",
            Err("Corefile:2: ready: monitor type 'sometimes' not supported"),
        ),
        (
            "ready {\n  monitor\n}",
            Err(
                "Corefile:2: ready: wrong argument count or unexpected line ending after 'monitor'",
            ),
        ),
        (
            "ready {\n  lameduck 5s\n}",
            Err("Corefile:2: ready: unknown property 'lameduck'"),
        ),
    ];
    for (text, want) in cases {
        let got = run_setup("ready", setup, text)
            .map_err(|e| e.to_string())
            .map(|(out, services)| {
                assert!(out.plugins.is_empty(), "{text}: ready adds no handler");
                assert!(services.health.is_empty());
                services.ready
            });
        assert_eq!(got, want.map(|r| vec![r]).map_err(str::to_string), "{text}");
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
    for text in ["ready", "ready :8181", "ready 127.0.0.1:8182", "ready"] {
        let tokens = lex(&file, text).unwrap();
        let mut out = BlockSetup::default();
        let mut c = Controller {
            d: Dispenser::new("ready", &tokens),
            block: &block,
            out: &mut out,
            services: &mut services,
        };
        setup(&mut c).unwrap();
    }
    assert_eq!(services.ready, vec![rc(":8181"), rc("127.0.0.1:8182")]);
}

struct Flag {
    name: &'static str,
    ok: AtomicBool,
}

impl Readiness for Flag {
    fn name(&self) -> &'static str {
        self.name
    }
    fn ready(&self) -> bool {
        self.ok.load(Ordering::Relaxed)
    }
}

fn flag(name: &'static str) -> Arc<Flag> {
    Arc::new(Flag {
        name,
        ok: AtomicBool::new(false),
    })
}

#[tokio::test]
async fn reports_what_is_not_ready() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let life = Lifecycle::new();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(serve(listener, Arc::clone(&life), stopped));
    let get = || http_get(addr, "/ready");

    assert_eq!(
        get().await.unwrap(),
        (503, "server".to_string()),
        "not serving yet"
    );
    life.set_serving();
    assert_eq!(get().await.unwrap(), (200, "OK".to_string()));

    let (zeta, alpha) = (flag("zeta"), flag("alpha"));
    life.set_reporters(vec![zeta.clone(), alpha.clone(), flag("zeta")]);
    assert_eq!(get().await.unwrap(), (503, "alpha,zeta".to_string()));
    alpha.ok.store(true, Ordering::Relaxed);
    assert_eq!(get().await.unwrap(), (503, "zeta".to_string()));
    life.set_reporters(vec![zeta.clone(), alpha.clone()]);
    zeta.ok.store(true, Ordering::Relaxed);
    assert_eq!(get().await.unwrap(), (200, "OK".to_string()));

    life.set_stopping();
    assert_eq!(get().await.unwrap(), (503, "Shutting down".to_string()));
    assert_eq!(http_get(addr, "/health").await.unwrap().0, 404);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("task ends when stopped")
        .unwrap();
    assert!(get().await.is_err(), "listener closed when stopped");
}
