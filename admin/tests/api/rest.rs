//! Every REST endpoint, its errors, and the token.

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::*;

async fn put(admin: &Admin, path: &str, if_match: Option<&str>, body: &str) -> Answer {
    let mut r = req(Method::PUT, path).header("content-type", "text/plain");
    if let Some(m) = if_match {
        r = r.header("if-match", m);
    }
    http1(admin.addr, r.body(Bytes::from(body.to_string())).unwrap()).await
}

#[tokio::test]
async fn config_get_is_the_corefile_with_its_version_as_etag() {
    let admin = Admin::start().await;
    let a = get(admin.addr, "/v1/config").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(a.header("etag"), "\"1\"");
    assert_eq!(a.text(), COREFILE);
}

#[tokio::test]
async fn config_put_applies_and_answers_version_and_persisted() {
    let admin = Admin::start().await;
    let new = ". {\n    forward . 192.0.2.1\n}\n";
    let a = put(&admin, "/v1/config", None, new).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json(), json!({"version": 2, "persisted": true}));
    assert_eq!(a.header("etag"), "\"2\"");
    let a = get(admin.addr, "/v1/config").await;
    assert_eq!(a.text(), new);
    assert_eq!(a.header("etag"), "\"2\"");
}

#[tokio::test]
async fn config_put_dry_run_validates_without_applying() {
    let admin = Admin::start().await;
    let a = put(&admin, "/v1/config?dry_run=true", None, ". {\n}\n").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.json(), json!({"version": 1, "persisted": false}));
    assert_eq!(admin.fake.version(), 1);
    assert_eq!(get(admin.addr, "/v1/config").await.text(), COREFILE);
    // dry_run=false applies; a bad value is a 400, not a silent apply.
    let a = put(&admin, "/v1/config?dry_run=false", None, ". {\n}\n").await;
    assert_eq!(a.json()["version"], 2);
    let e = put(&admin, "/v1/config?dry_run=yes", None, ". {\n}\n").await;
    e.error(StatusCode::BAD_REQUEST);
    let e = put(&admin, "/v1/config?dryrun=true", None, ". {\n}\n").await;
    e.error(StatusCode::BAD_REQUEST);
    assert_eq!(admin.fake.version(), 2);
}

#[tokio::test]
async fn config_put_invalid_is_400_with_the_line() {
    let admin = Admin::start().await;
    let a = put(&admin, "/v1/config", None, ". {\n    bogus\n}\n").await;
    let e = a.error(StatusCode::BAD_REQUEST);
    assert_eq!(
        e,
        json!({"error": "Corefile:2: unknown directive 'bogus'", "line": 2})
    );
    assert_eq!(admin.fake.version(), 1);
    // Not UTF-8: refused before the agent sees it.
    let r = req(Method::PUT, "/v1/config")
        .body(Bytes::from_static(b"\xff\xfe"))
        .unwrap();
    let e = http1(admin.addr, r).await.error(StatusCode::BAD_REQUEST);
    assert!(e["error"].as_str().unwrap().contains("UTF-8"), "{e}");
}

#[tokio::test]
async fn config_put_if_match_guards_against_lost_updates() {
    let admin = Admin::start().await;
    // Quoted, bare and * all match the running version 1.
    let a = put(&admin, "/v1/config", Some("\"1\""), ". {\n}\n").await;
    assert_eq!(a.json()["version"], 2);
    let a = put(&admin, "/v1/config", Some("2"), ". {\n}\n").await;
    assert_eq!(a.json()["version"], 3);
    let a = put(&admin, "/v1/config", Some("*"), ". {\n}\n").await;
    assert_eq!(a.json()["version"], 4);
    // Stale: 412, nothing applied.
    let e = put(&admin, "/v1/config", Some("\"1\""), ". {\n}\n")
        .await
        .error(StatusCode::PRECONDITION_FAILED);
    assert_eq!(e["error"], "config version 1 is not the running version 4");
    assert_eq!(admin.fake.version(), 4);
    // Unparsable: 400, nothing applied.
    for bad in ["W/\"4\"", "\"4\", \"5\"", "four", "\"\""] {
        let e = put(&admin, "/v1/config", Some(bad), ". {\n}\n")
            .await
            .error(StatusCode::BAD_REQUEST);
        assert!(e["error"].as_str().unwrap().contains("If-Match"), "{e}");
    }
    assert_eq!(admin.fake.version(), 4);
}

#[tokio::test]
async fn config_put_when_the_agent_is_busy_is_503() {
    let admin = Admin::start().await;
    let e = put(&admin, "/v1/config", None, ". {\n    # busy\n}\n")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(e, json!({"error": "agent: shutting down"}));
}

#[tokio::test]
async fn bodies_over_one_mib_are_413_json() {
    let admin = Admin::start().await;
    let big = "#".repeat(1024 * 1024 + 1);
    // With Content-Length: refused before reading.
    put(&admin, "/v1/config", None, &big)
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE);
    // Over HTTP/2 without Content-Length: refused while reading.
    let r = req(Method::PUT, "/v1/config")
        .body(Bytes::from(big.clone()))
        .unwrap();
    let a = http2(admin.addr, r).await;
    a.error(StatusCode::PAYLOAD_TOO_LARGE);
    // Exactly 1 MiB is allowed.
    let ok = put(&admin, "/v1/config", None, &big[1..]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(admin.fake.version(), 2);
}

#[tokio::test]
async fn stats_have_the_documented_shape() {
    let admin = Admin::start().await;
    let a = get(admin.addr, "/v1/stats").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), "application/json");
    assert_eq!(
        a.json(),
        json!({
            "queries": {"total": 101, "by_rcode": {"NOERROR": 90, "NXDOMAIN": 10}, "by_type": {"A": 70, "AAAA": 30}},
            "cache": {"hits": 60, "misses": 40, "prefetches": 5, "stale": 1, "entries": 3},
            "upstreams": [
                {"address": "192.0.2.53:53", "healthy": true, "fails": 0, "rtt_ms": 0.4, "pooled": 2},
                {"address": "tls://192.0.2.54:853", "healthy": false, "fails": 3, "rtt_ms": 12.5, "pooled": 0}
            ]
        })
    );
}

#[tokio::test]
async fn cache_list_all_by_name_and_by_rrset() {
    let admin = Admin::start().await;
    let all = get(admin.addr, "/v1/cache").await.json();
    assert_eq!(all["entries"].as_array().unwrap().len(), 3);
    assert_eq!(
        all["entries"][0],
        json!({"name": "www.example.org.", "type": "A", "ttl": 27, "stale": false})
    );
    let one = get(admin.addr, "/v1/cache?name=www.example.org.")
        .await
        .json();
    assert_eq!(one["entries"].as_array().unwrap().len(), 2);
    let rrset = get(admin.addr, "/v1/cache?name=www.example.org.&type=AAAA")
        .await
        .json();
    assert_eq!(
        rrset,
        json!({"entries": [{"name": "www.example.org.", "type": "AAAA", "ttl": 30, "stale": false}]})
    );
    let none = get(admin.addr, "/v1/cache?name=nx.example.org.")
        .await
        .json();
    assert_eq!(none, json!({"entries": []}));
}

#[tokio::test]
async fn cache_list_bad_requests_are_400() {
    let admin = Admin::start().await;
    for path in [
        "/v1/cache?name=www.example.org.&type=BOGUS",
        "/v1/cache?type=A",
        "/v1/cache?name=",
        "/v1/cache?name=a.&type=",
        "/v1/cache?nmae=a.",
        "/v1/cache?name=a.&name=b.",
    ] {
        get(admin.addr, path).await.error(StatusCode::BAD_REQUEST);
    }
    let e = get(admin.addr, "/v1/cache?name=a.&type=BOGUS").await.json();
    assert_eq!(e, json!({"error": "unknown type 'BOGUS'"}));
}

#[tokio::test]
async fn cache_delete_one_rrset_one_name_or_all() {
    let admin = Admin::start().await;
    let delete = |path: &'static str| {
        let addr = admin.addr;
        async move { http1(addr, req(Method::DELETE, path).body(Bytes::new()).unwrap()).await }
    };
    // Mistakes flush nothing.
    for path in [
        "/v1/cache?type=A",
        "/v1/cache?nmae=x.",
        "/v1/cache?name=",
        "/v1/cache?name=a.&type=BOGUS",
    ] {
        delete(path).await.error(StatusCode::BAD_REQUEST);
    }
    assert_eq!(admin.fake.entries().len(), 3);
    let a = delete("/v1/cache?name=www.example.org.&type=AAAA").await;
    assert_eq!(a.json(), json!({"removed": 1}));
    assert_eq!(admin.fake.entries().len(), 2);
    let a = delete("/v1/cache?name=www.example.org.").await;
    assert_eq!(a.json(), json!({"removed": 1}));
    let a = delete("/v1/cache").await;
    assert_eq!(a.json(), json!({"removed": 1}));
    assert!(admin.fake.entries().is_empty());
}

#[tokio::test]
async fn upstreams_and_plugins() {
    let admin = Admin::start().await;
    let u = get(admin.addr, "/v1/upstreams").await.json();
    assert_eq!(
        u["upstreams"][0],
        json!({"address": "192.0.2.53:53", "healthy": true, "fails": 0, "rtt_ms": 0.4, "pooled": 2})
    );
    assert_eq!(u["upstreams"].as_array().unwrap().len(), 2);
    let p = get(admin.addr, "/v1/plugins").await.json();
    assert_eq!(p, json!({"plugins": ["errors", "cache", "forward"]}));
}

#[tokio::test]
async fn healthz_and_readyz() {
    let admin = Admin::start().await;
    let h = get(admin.addr, "/healthz").await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.json(), json!({"status": "ok"}));
    let r = get(admin.addr, "/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"status": "ok"}));

    admin.fake.set_not_ready(&["kubernetes", "forward"]);
    let e = get(admin.addr, "/readyz")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        e,
        json!({"error": "not ready: kubernetes, forward", "not_ready": ["kubernetes", "forward"]})
    );
    admin
        .fake
        .healthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    get(admin.addr, "/healthz")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn unknown_paths_are_json_404_and_wrong_methods_json_405() {
    let admin = Admin::start().await;
    for path in [
        "/",
        "/v1",
        "/v2/config",
        "/v1/config/extra",
        "/nodedns.admin.v1.Admin",
    ] {
        let e = get(admin.addr, path).await.error(StatusCode::NOT_FOUND);
        assert!(e["error"].as_str().unwrap().contains(path), "{e}");
    }
    let r = req(Method::POST, "/v1/stats").body(Bytes::new()).unwrap();
    let a = http1(admin.addr, r).await;
    a.error(StatusCode::METHOD_NOT_ALLOWED);
    assert!(a.header("allow").contains("GET"), "{:?}", a.headers);
    let r = req(Method::DELETE, "/v1/config")
        .body(Bytes::new())
        .unwrap();
    http1(admin.addr, r)
        .await
        .error(StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn rest_over_http2_on_the_same_port() {
    let admin = Admin::start().await;
    let r = req(Method::GET, "/v1/plugins").body(Bytes::new()).unwrap();
    let a = http2(admin.addr, r).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["plugins"][0], "errors");
}

#[tokio::test]
async fn openapi_lists_every_path_and_method() {
    let admin = Admin::start().await;
    let a = get(admin.addr, "/v1/openapi.json").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), "application/json");
    let doc = a.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let want: &[(&str, &[&str])] = &[
        ("/v1/config", &["get", "put"]),
        ("/v1/stats", &["get"]),
        ("/v1/cache", &["get", "delete"]),
        ("/v1/upstreams", &["get"]),
        ("/v1/plugins", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/v1/openapi.json", &["get"]),
    ];
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths.len(),
        want.len(),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for (path, methods) in want {
        let item = &paths[*path];
        for m in *methods {
            assert!(item[*m].is_object(), "{path} {m} missing");
        }
        // Each path answers what the document says (not a 404 or 405).
        let answer = get(admin.addr, path).await;
        assert_ne!(answer.status, StatusCode::NOT_FOUND, "{path}");
    }
    // The query parameters and the error schema are in it.
    let params = &paths["/v1/cache"]["delete"]["parameters"];
    let names: Vec<&str> = params
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["name", "type"]);
    for schema in ["ErrorBody", "Stats", "CacheEntry", "Upstream", "Applied"] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
    assert_eq!(
        doc["components"]["schemas"]["CacheEntry"]["properties"]["type"]["type"],
        "string"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn with_a_token_every_path_needs_it() {
    let admin = Admin::with_token().await;
    let paths = [
        "/v1/config",
        "/v1/stats",
        "/v1/cache",
        "/v1/upstreams",
        "/v1/plugins",
        "/healthz",
        "/readyz",
        "/v1/openapi.json",
        "/no/such/path",
    ];
    for path in paths {
        // None, wrong, wrong scheme.
        for auth in [None, Some(bearer("wrong")), Some(format!("Basic {TOKEN}"))] {
            let mut r = req(Method::GET, path);
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            let a = http1(admin.addr, r.body(Bytes::new()).unwrap()).await;
            a.error(StatusCode::UNAUTHORIZED);
            assert_eq!(
                a.header("www-authenticate"),
                "Bearer realm=\"nodedns-admin\""
            );
        }
        let r = req(Method::GET, path)
            .header("authorization", bearer(TOKEN))
            .body(Bytes::new())
            .unwrap();
        let a = http1(admin.addr, r).await;
        if path == "/no/such/path" {
            a.error(StatusCode::NOT_FOUND);
        } else {
            assert_eq!(a.status, StatusCode::OK, "{path}");
        }
    }
    // A write without the token changes nothing.
    let r = req(Method::PUT, "/v1/config")
        .body(Bytes::from_static(b". {\n}\n"))
        .unwrap();
    http1(admin.addr, r).await.error(StatusCode::UNAUTHORIZED);
    let r = req(Method::DELETE, "/v1/cache").body(Bytes::new()).unwrap();
    http1(admin.addr, r).await.error(StatusCode::UNAUTHORIZED);
    assert_eq!(admin.fake.version(), 1);
    assert_eq!(admin.fake.entries().len(), 3);
    let r = req(Method::PUT, "/v1/config")
        .header("authorization", bearer(TOKEN))
        .body(Bytes::from_static(b". {\n}\n"))
        .unwrap();
    assert_eq!(http1(admin.addr, r).await.json()["version"], 2);
}
