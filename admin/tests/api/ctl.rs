//! `nodedns ctl` against the fake: every command, as tables and as JSON,
//! and its errors.

use std::path::PathBuf;
use std::process::ExitCode;

use nodedns_admin::ctl::{self, CtlError};
use serde_json::json;

use crate::support::*;

/// A file under the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, body: &str) -> Self {
        let p = std::env::temp_dir().join(format!("nodedns-ctl-{}-{name}", std::process::id()));
        std::fs::write(&p, body).unwrap();
        Self(p)
    }

    fn path(&self) -> String {
        self.0.to_str().unwrap().to_string()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn ctl(admin: &Admin, args: &[&str]) -> Result<String, CtlError> {
    let mut argv = vec!["--admin".to_string(), admin.addr.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let mut out = Vec::new();
    within(ctl::run(argv, &mut out)).await?;
    Ok(String::from_utf8(out).unwrap())
}

async fn ctl_json(admin: &Admin, args: &[&str]) -> serde_json::Value {
    let mut argv = vec!["-o", "json"];
    argv.extend(args);
    serde_json::from_str(&ctl(admin, &argv).await.unwrap()).unwrap()
}

#[tokio::test]
async fn stats_as_a_table_and_as_rest_json() {
    let admin = Admin::start().await;
    let out = ctl(&admin, &["stats"]).await.unwrap();
    assert_eq!(
        out,
        "\
queries: 101
cache: 3 entries, 60 hits, 40 misses, 5 prefetches, 1 stale

RCODE     COUNT
NOERROR   90
NXDOMAIN  10

TYPE  COUNT
A     70
AAAA  30

UPSTREAM              HEALTHY  FAILS  RTT_MS  POOLED
192.0.2.53:53         yes      0      0.40    2
tls://192.0.2.54:853  no       3      12.50   0
"
    );
    // The same shape as GET /v1/stats (the fake counts one more call).
    let j = ctl_json(&admin, &["stats"]).await;
    let mut rest = get(admin.addr, "/v1/stats").await.json();
    rest["queries"]["total"] = j["queries"]["total"].clone();
    assert_eq!(j, rest);
    assert_eq!(j["queries"]["total"], 102);
}

#[tokio::test]
async fn config_get() {
    let admin = Admin::start().await;
    assert_eq!(ctl(&admin, &["config", "get"]).await.unwrap(), COREFILE);
    assert_eq!(
        ctl_json(&admin, &["config", "get"]).await,
        json!({"corefile": COREFILE, "version": 1})
    );
}

#[tokio::test]
async fn config_apply_dry_run_and_invalid() {
    let admin = Admin::start().await;
    let good = TempFile::new("good", ". {\n    forward . 192.0.2.1\n}\n");
    let out = ctl(&admin, &["config", "apply", &good.path(), "--dry-run"])
        .await
        .unwrap();
    assert_eq!(
        out,
        "valid: the Corefile would apply (version 1 runs, unchanged)\n"
    );
    assert_eq!(admin.fake.version(), 1);

    let out = ctl(&admin, &["config", "apply", &good.path()])
        .await
        .unwrap();
    assert_eq!(out, "applied: version 2 runs, written to the -conf file\n");
    assert_eq!(
        ctl(&admin, &["config", "get"]).await.unwrap(),
        ". {\n    forward . 192.0.2.1\n}\n"
    );
    assert_eq!(
        ctl_json(&admin, &["config", "apply", &good.path()]).await,
        json!({"version": 3, "persisted": true})
    );

    let bad = TempFile::new("bad", ". {\n    bogus\n}\n");
    let e = ctl(&admin, &["config", "apply", &bad.path()])
        .await
        .unwrap_err();
    assert!(
        matches!(e, CtlError::Invalid { line: Some(2), .. }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "config apply: Corefile:2: unknown directive 'bogus'"
    );
    assert_eq!(e.exit_code(), 1);
    assert_eq!(admin.fake.version(), 3);

    let e = ctl(&admin, &["config", "apply", "/nonexistent/Corefile"])
        .await
        .unwrap_err();
    assert!(matches!(e, CtlError::ReadFile { .. }), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/Corefile"), "{e}");
}

#[tokio::test]
async fn cache_list_and_flush() {
    let admin = Admin::start().await;
    let out = ctl(&admin, &["cache", "list"]).await.unwrap();
    assert_eq!(
        out,
        "\
NAME              TYPE  TTL  STALE
www.example.org.  A     27   no
www.example.org.  AAAA  30   no
old.example.org.  A     0    yes
"
    );
    assert_eq!(
        ctl_json(&admin, &["cache", "list", "www.example.org.", "AAAA"]).await,
        json!({"entries": [{"name": "www.example.org.", "type": "AAAA", "ttl": 30, "stale": false}]})
    );
    assert_eq!(
        ctl(&admin, &["cache", "list", "nx.example.org."])
            .await
            .unwrap(),
        "no cached entries\n"
    );
    let e = ctl(&admin, &["cache", "list", "a.", "BOGUS"])
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "cache list: unknown type 'BOGUS'");

    assert_eq!(
        ctl(&admin, &["cache", "flush", "www.example.org.", "A"])
            .await
            .unwrap(),
        "removed 1 entries (www.example.org. A)\n"
    );
    assert_eq!(
        ctl_json(&admin, &["cache", "flush", "www.example.org."]).await,
        json!({"removed": 1})
    );
    assert_eq!(
        ctl(&admin, &["cache", "flush"]).await.unwrap(),
        "removed 1 entries (every cache)\n"
    );
    assert!(admin.fake.entries().is_empty());
}

#[tokio::test]
async fn upstreams_plugins_status() {
    let admin = Admin::start().await;
    assert_eq!(
        ctl(&admin, &["upstreams"]).await.unwrap(),
        "\
UPSTREAM              HEALTHY  FAILS  RTT_MS  POOLED
192.0.2.53:53         yes      0      0.40    2
tls://192.0.2.54:853  no       3      12.50   0
"
    );
    assert_eq!(
        ctl_json(&admin, &["upstreams"]).await,
        get(admin.addr, "/v1/upstreams").await.json()
    );
    assert_eq!(
        ctl(&admin, &["plugins"]).await.unwrap(),
        "errors\ncache\nforward\n"
    );
    assert_eq!(
        ctl_json(&admin, &["plugins"]).await,
        json!({"plugins": ["errors", "cache", "forward"]})
    );
    assert_eq!(
        ctl(&admin, &["status"]).await.unwrap(),
        "healthy: yes\nready: yes\n"
    );
    assert_eq!(
        ctl_json(&admin, &["status"]).await,
        json!({"healthy": true, "ready": true, "not_ready": []})
    );
    admin.fake.set_not_ready(&["kubernetes"]);
    let e = ctl(&admin, &["status"]).await.unwrap_err();
    assert_eq!(e.to_string(), "status: not ready: kubernetes");
    assert_eq!(e.exit_code(), 1);
}

#[tokio::test]
async fn the_token_file_is_sent() {
    let admin = Admin::with_token().await;
    let token = TempFile::new("token", &format!("{TOKEN}\n"));
    let out = ctl(&admin, &["-admin-token-file", &token.path(), "plugins"])
        .await
        .unwrap();
    assert_eq!(out, "errors\ncache\nforward\n");
    let e = ctl(&admin, &["plugins"]).await.unwrap_err();
    assert!(
        matches!(
            e,
            CtlError::Call {
                code: tonic::Code::Unauthenticated,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("--admin-token-file"), "{e}");
    let empty = TempFile::new("empty-token", "\n");
    let e = ctl(&admin, &["--admin-token-file", &empty.path(), "plugins"])
        .await
        .unwrap_err();
    assert!(matches!(e, CtlError::Token(_)), "{e:?}");
}

#[tokio::test]
async fn nothing_listening_names_the_address() {
    // A port that was free a moment ago.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut out = Vec::new();
    let e = within(ctl::run(
        vec!["--admin".into(), addr.to_string(), "stats".into()],
        &mut out,
    ))
    .await
    .unwrap_err();
    assert!(matches!(e, CtlError::Connect { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("cannot connect to the admin plane at {addr}")),
        "{msg}"
    );
    assert!(msg.contains("refused"), "{msg}");
}

#[tokio::test]
async fn help_needs_no_agent() {
    let mut out = Vec::new();
    ctl::run(vec!["--help".into()], &mut out).await.unwrap();
    let help = String::from_utf8(out).unwrap();
    assert_eq!(help, ctl::HELP);
    for cmd in [
        "stats",
        "config get",
        "config apply",
        "cache list",
        "cache flush",
        "upstreams",
        "plugins",
    ] {
        assert!(help.contains(cmd), "{cmd}");
    }
}

/// `ctl::main` (what `nodedns ctl` runs): its own runtime, exit codes.
#[test]
fn main_exit_codes() {
    assert_eq!(ctl::main(vec!["bogus".into()]), ExitCode::from(2));
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    assert_eq!(
        ctl::main(vec!["-admin".into(), addr.to_string(), "stats".into()]),
        ExitCode::FAILURE
    );
    assert_eq!(ctl::main(vec!["-h".into()]), ExitCode::SUCCESS);
}
