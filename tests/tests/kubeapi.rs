//! Tests of the fake Kubernetes API server itself, with a plain HTTP
//! client over loopback: lists, pages, selectors, watches, bookmarks,
//! 410s and broken connections, as the API concepts page documents them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use nodedns_tests::kubeapi::{
    Endpoint, EndpointSlice, FakeKubeApi, Namespace, Pod, Resource, Service, ServiceImport,
    encode_query_value,
};
use nodedns_tests::{http_request, wait_until};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A GET: status and JSON body.
async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    get_with(addr, path, &[]).await
}

async fn get_with(addr: SocketAddr, path: &str, headers: &[&str]) -> (u16, Value) {
    let r = http_request(addr, "GET", path, headers, b"")
        .await
        .expect("a reply");
    let v = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

/// What reading a watch stream gave.
#[derive(Debug)]
enum Next {
    Event(Value),
    /// The stream ended with its last chunk.
    End,
    /// The connection closed mid-stream.
    Cut,
    /// Nothing within the wait.
    Idle,
}

/// A watch read chunk by chunk over a raw connection.
struct Watch {
    r: BufReader<TcpStream>,
    lines: VecDeque<Value>,
    partial: Vec<u8>,
    done: bool,
}

async fn watch(addr: SocketAddr, path: &str) -> Watch {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut r = BufReader::new(s);
    let mut head = String::new();
    for _ in 0..50 {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
            .await
            .expect("headers in time")
            .expect("read");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    Watch {
        r,
        lines: VecDeque::new(),
        partial: Vec::new(),
        done: false,
    }
}

impl Watch {
    /// The next event, or how the stream stopped, within `within`.
    async fn next_within(&mut self, within: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(v) = self.lines.pop_front() {
                return Next::Event(v);
            }
            if self.done {
                return Next::End;
            }
            match tokio::time::timeout_at(deadline, self.chunk()).await {
                Err(_) => return Next::Idle,
                Ok(None) => return Next::Cut,
                Ok(Some(c)) if c.is_empty() => self.done = true,
                Ok(Some(c)) => {
                    self.partial.extend_from_slice(&c);
                    while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = self.partial.drain(..=i).collect();
                        self.lines
                            .push_back(serde_json::from_slice(&line).expect("a JSON line"));
                    }
                }
            }
        }
    }

    async fn next(&mut self) -> Next {
        self.next_within(Duration::from_secs(5)).await
    }

    /// The next event, which must come.
    async fn event(&mut self) -> (String, Value) {
        match self.next().await {
            Next::Event(v) => (v["type"].as_str().unwrap().to_string(), v["object"].clone()),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// One chunk; `None` if the connection ended first.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let mut size = String::new();
        if self.r.read_line(&mut size).await.ok()? == 0 {
            return None;
        }
        let n = usize::from_str_radix(size.trim(), 16).ok()?;
        let mut data = vec![0; n + 2];
        self.r.read_exact(&mut data).await.ok()?;
        data.truncate(n);
        Some(data)
    }
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap()
}

fn rv(o: &Value) -> u64 {
    o["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| name(i).to_string())
        .collect()
}

#[tokio::test]
async fn list_then_watch_from_its_version_sees_every_change_in_order() {
    let api = FakeKubeApi::start().await;
    api.apply(Service::cluster_ip("default", "a", "10.96.0.1").port("http", "TCP", 80));
    api.apply(Service::headless("default", "b"));
    let (code, list) = get(api.addr(), "/api/v1/services").await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(names(&list), ["a", "b"]);
    let item = &list["items"][0];
    assert!(item.get("kind").is_none(), "list items carry no kind");
    assert_eq!(item["metadata"]["namespace"], "default");
    assert_eq!(item["spec"]["clusterIP"], "10.96.0.1");
    assert_eq!(item["spec"]["ports"][0]["port"], 80);
    assert!(item["metadata"]["uid"].as_str().unwrap().len() == 36);
    assert!(item["metadata"]["creationTimestamp"].is_string());
    let list_rv = list["metadata"]["resourceVersion"].as_str().unwrap();
    assert_eq!(list_rv, api.resource_version().to_string());

    let mut w = watch(
        api.addr(),
        &format!("/api/v1/services?watch=true&resourceVersion={list_rv}"),
    )
    .await;
    let c_rv = api.apply(Service::cluster_ip("other", "c", "10.96.0.3"));
    let a_rv = api.apply(Service::cluster_ip("default", "a", "10.96.0.1").label("v", "2"));
    let b_rv = api.delete(Resource::Services, "default", "b").unwrap();
    let (t, o) = w.event().await;
    assert_eq!((t.as_str(), name(&o), rv(&o)), ("ADDED", "c", c_rv));
    assert_eq!(o["kind"], "Service", "watch objects carry their kind");
    let (t, o) = w.event().await;
    assert_eq!((t.as_str(), name(&o), rv(&o)), ("MODIFIED", "a", a_rv));
    assert_eq!(o["metadata"]["labels"]["v"], "2");
    assert_eq!(
        o["metadata"]["uid"], list["items"][0]["metadata"]["uid"],
        "an update keeps the uid"
    );
    let (t, o) = w.event().await;
    assert_eq!((t.as_str(), name(&o), rv(&o)), ("DELETED", "b", b_rv));
    assert!(matches!(
        w.next_within(Duration::from_millis(200)).await,
        Next::Idle
    ));

    // A second watch from the same version replays the same history.
    let mut again = watch(
        api.addr(),
        &format!("/api/v1/watch/services?resourceVersion={list_rv}"),
    )
    .await;
    for want in ["ADDED", "MODIFIED", "DELETED"] {
        assert_eq!(again.event().await.0, want);
    }
    assert_eq!(api.list_count(Resource::Services), 1);
    assert_eq!(api.watch_count(Resource::Services), 2);
    assert_eq!(api.open_watches(Resource::Services), 2);
}

#[tokio::test]
async fn a_watch_without_a_version_starts_with_the_state() {
    let api = FakeKubeApi::start().await;
    api.apply(Namespace::new("kube-system"));
    api.apply(Namespace::new("team-a").label("team", "a"));
    let mut w = watch(
        api.addr(),
        "/api/v1/namespaces?watch=1&allowWatchBookmarks=true",
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (t, o) = w.event().await;
        assert_eq!(t, "ADDED");
        assert_eq!(
            o["metadata"]["labels"]["kubernetes.io/metadata.name"],
            name(&o)
        );
        seen.push(name(&o).to_string());
    }
    assert_eq!(seen, ["kube-system", "team-a"]);
    let (t, o) = w.event().await;
    assert_eq!(t, "BOOKMARK");
    assert_eq!(rv(&o), api.resource_version());
    assert_eq!(
        o["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );

    // Streaming list: sendInitialEvents needs resourceVersionMatch.
    let (code, st) = get(
        api.addr(),
        "/api/v1/namespaces?watch=1&sendInitialEvents=true&allowWatchBookmarks=true",
    )
    .await;
    assert_eq!(code, 422);
    assert_eq!(st["reason"], "Invalid");
    let mut w = watch(
        api.addr(),
        "/api/v1/namespaces?watch=1&sendInitialEvents=true&allowWatchBookmarks=true\
         &resourceVersionMatch=NotOlderThan&resourceVersion=",
    )
    .await;
    assert_eq!(w.event().await.0, "ADDED");
    assert_eq!(w.event().await.0, "ADDED");
    assert_eq!(w.event().await.0, "BOOKMARK");
    api.apply(Namespace::new("team-b"));
    let (t, o) = w.event().await;
    assert_eq!((t.as_str(), name(&o)), ("ADDED", "team-b"));
}

#[tokio::test]
async fn pages_are_a_consistent_snapshot() {
    let api = FakeKubeApi::start().await;
    for (ns, n) in [
        ("a", "s1"),
        ("a", "s2"),
        ("b", "s3"),
        ("b", "s4"),
        ("c", "s5"),
    ] {
        api.apply(Service::headless(ns, n));
    }
    let (code, p1) = get(api.addr(), "/api/v1/services?limit=2").await;
    assert_eq!(code, 200);
    assert_eq!(names(&p1), ["s1", "s2"]);
    assert_eq!(p1["metadata"]["remainingItemCount"], 3);
    let snapshot = p1["metadata"]["resourceVersion"].clone();
    let first_token = p1["metadata"]["continue"].as_str().unwrap().to_string();
    // Changes after the first page do not show in the next ones.
    api.apply(Service::headless("b", "s3b"));
    api.delete(Resource::Services, "c", "s5");
    let mut all = names(&p1);
    let mut token = p1["metadata"]["continue"].as_str().unwrap().to_string();
    for _ in 0..10 {
        let (code, p) = get(
            api.addr(),
            &format!(
                "/api/v1/services?limit=2&continue={}",
                encode_query_value(&token)
            ),
        )
        .await;
        assert_eq!(code, 200, "{p}");
        assert_eq!(p["metadata"]["resourceVersion"], snapshot);
        all.extend(names(&p));
        match p["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => {
                assert!(p["metadata"].get("remainingItemCount").is_none());
                break;
            }
        }
    }
    assert_eq!(all, ["s1", "s2", "s3", "s4", "s5"]);

    // One namespace, and a selector (no remainingItemCount then).
    let (_, p) = get(api.addr(), "/api/v1/namespaces/b/services?limit=1").await;
    assert_eq!(names(&p), ["s3"]);
    assert_eq!(p["metadata"]["remainingItemCount"], 2);
    let (_, p) = get(
        api.addr(),
        "/api/v1/services?limit=1&labelSelector=x%21%3Dy",
    )
    .await;
    assert_eq!(names(&p), ["s1"]);
    assert!(p["metadata"]["continue"].is_string());
    assert!(p["metadata"].get("remainingItemCount").is_none());

    // A continue token past compaction: 410 with a token that goes on.
    api.compact();
    let (code, st) = get(
        api.addr(),
        &format!(
            "/api/v1/services?limit=2&continue={}",
            encode_query_value(&first_token)
        ),
    )
    .await;
    assert_eq!(code, 410);
    assert_eq!(st["reason"], "Expired");
    let go_on = st["metadata"]["continue"].as_str().unwrap();
    let (code, p) = get(
        api.addr(),
        &format!(
            "/api/v1/services?limit=10&continue={}",
            encode_query_value(go_on)
        ),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        names(&p),
        ["s3", "s3b", "s4"],
        "inconsistent: from now, after the last key"
    );

    // Bad tokens and resource versions with continue are refused.
    let (code, _) = get(api.addr(), "/api/v1/services?limit=1&continue=garbage").await;
    assert_eq!(code, 400);
    let (code, _) = get(
        api.addr(),
        &format!(
            "/api/v1/services?limit=1&resourceVersion=5&continue={}",
            encode_query_value(&token)
        ),
    )
    .await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn list_resource_versions_follow_the_documented_table() {
    let api = FakeKubeApi::start().await;
    let first = api.apply(Pod::new("ns", "p1", "10.0.0.1"));
    api.apply(Pod::new("ns", "p2", "10.0.0.2"));
    let now = api.resource_version();
    // Exact: the state at that version.
    let (code, l) = get(
        api.addr(),
        &format!("/api/v1/pods?resourceVersion={first}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(names(&l), ["p1"]);
    assert_eq!(l["metadata"]["resourceVersion"], first.to_string());
    // limit with a version and no match is Exact too.
    let (_, l) = get(
        api.addr(),
        &format!("/api/v1/pods?resourceVersion={first}&limit=5"),
    )
    .await;
    assert_eq!(names(&l), ["p1"]);
    // NotOlderThan (or no match, no limit): the newest.
    for q in [
        format!("resourceVersion={first}&resourceVersionMatch=NotOlderThan"),
        format!("resourceVersion={first}"),
        "resourceVersion=0".to_string(),
        String::new(),
    ] {
        let (_, l) = get(api.addr(), &format!("/api/v1/pods?{q}")).await;
        assert_eq!(names(&l), ["p1", "p2"], "{q}");
        assert_eq!(l["metadata"]["resourceVersion"], now.to_string(), "{q}");
    }
    // Invalid combinations: 422.
    for q in [
        "resourceVersionMatch=Exact",
        "resourceVersion=0&resourceVersionMatch=Exact",
        "resourceVersion=1&resourceVersionMatch=Newest",
        "sendInitialEvents=true",
    ] {
        let (code, st) = get(api.addr(), &format!("/api/v1/pods?{q}")).await;
        assert_eq!(code, 422, "{q}");
        assert_eq!(st["details"]["kind"], "ListOptions", "{q}");
    }
    // Compacted: 410 for Exact.
    api.compact();
    let (code, st) = get(
        api.addr(),
        &format!("/api/v1/pods?resourceVersion={first}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!((code, st["code"].as_u64()), (410, Some(410)));
    assert_eq!(st["reason"], "Expired");
    // From the future: 504 after a short wait, unless the version comes.
    let (code, st) = get(
        api.addr(),
        &format!("/api/v1/pods?resourceVersion={}", now + 5),
    )
    .await;
    assert_eq!(code, 504);
    assert_eq!(
        st["details"]["causes"][0]["reason"],
        "ResourceVersionTooLarge"
    );
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() {
    let api = FakeKubeApi::start().await;
    api.apply(
        Service::headless("ns1", "web")
            .label("app", "web")
            .label("tier", "front"),
    );
    api.apply(Service::headless("ns1", "api").label("app", "api"));
    api.apply(
        Service::headless("ns2", "db")
            .label("app", "db")
            .label("tier", "back"),
    );
    api.apply(Service::headless("ns2", "bare"));
    let cases = [
        ("app=web", vec!["web"]),
        ("app in (web,api)", vec!["api", "web"]),
        ("app notin (web,api)", vec!["bare", "db"]),
        ("tier!=back", vec!["api", "bare", "web"]),
        ("tier", vec!["db", "web"]),
        ("!tier", vec!["api", "bare"]),
        ("app,tier=front", vec!["web"]),
    ];
    for (sel, want) in cases {
        let (code, l) = get(
            api.addr(),
            &format!("/api/v1/services?labelSelector={}", encode_query_value(sel)),
        )
        .await;
        assert_eq!(code, 200, "{sel}");
        let mut got = names(&l);
        got.sort();
        assert_eq!(got, want, "{sel}");
    }
    let (_, l) = get(
        api.addr(),
        "/api/v1/services?fieldSelector=metadata.namespace%3Dns2",
    )
    .await;
    assert_eq!(names(&l), ["bare", "db"]);
    let (_, l) = get(
        api.addr(),
        "/api/v1/services?fieldSelector=metadata.name%21%3Dweb,metadata.namespace%3D%3Dns1",
    )
    .await;
    assert_eq!(names(&l), ["api"]);
    let (code, st) = get(api.addr(), "/api/v1/services?fieldSelector=spec.ports%3D1").await;
    assert_eq!(code, 400);
    assert_eq!(st["kind"], "Status");
    assert_eq!(st["reason"], "BadRequest");
    let (code, _) = get(api.addr(), "/api/v1/services?labelSelector=a+in+%28").await;
    assert_eq!(code, 400);

    // A watch on app=web: labels moving in are ADDED, out are DELETED.
    let from = api.resource_version();
    let mut w = watch(
        api.addr(),
        &format!(
            "/api/v1/services?watch=true&resourceVersion={from}&labelSelector={}",
            encode_query_value("app=web")
        ),
    )
    .await;
    api.apply(Service::headless("ns1", "api").label("app", "web"));
    let out_rv = api.apply(Service::headless("ns1", "web").label("app", "other"));
    api.apply(Service::headless("ns2", "db").label("app", "db2"));
    api.apply(
        Service::headless("ns1", "api")
            .label("app", "web")
            .label("x", "y"),
    );
    let (t, o) = w.event().await;
    assert_eq!((t.as_str(), name(&o)), ("ADDED", "api"));
    let (t, o) = w.event().await;
    assert_eq!((t.as_str(), name(&o)), ("DELETED", "web"));
    assert_eq!(
        o["metadata"]["labels"]["app"], "web",
        "the object as it was"
    );
    assert_eq!(rv(&o), out_rv, "at the version of the write");
    let (t, o) = w.event().await;
    assert_eq!((t.as_str(), name(&o)), ("MODIFIED", "api"));

    // A namespaced watch sees its namespace only.
    let mut w = watch(
        api.addr(),
        &format!("/api/v1/namespaces/ns2/services?watch=true&resourceVersion={from}"),
    )
    .await;
    let (t, o) = w.event().await;
    assert_eq!((t.as_str(), name(&o)), ("MODIFIED", "db"));
    assert!(matches!(
        w.next_within(Duration::from_millis(200)).await,
        Next::Idle
    ));
}

#[tokio::test]
async fn compaction_makes_old_versions_gone() {
    let api = FakeKubeApi::start().await;
    let old = api.apply(Service::headless("ns", "a"));
    api.apply(Service::headless("ns", "b"));
    api.compact();
    let mut w = watch(
        api.addr(),
        &format!("/api/v1/services?watch=true&resourceVersion={old}"),
    )
    .await;
    let (t, st) = w.event().await;
    assert_eq!(t, "ERROR");
    assert_eq!(st["kind"], "Status");
    assert_eq!(st["code"], 410);
    assert_eq!(st["reason"], "Expired");
    assert!(matches!(w.next().await, Next::End));

    // The current version still watches, from where it is.
    let now = api.resource_version();
    let mut w = watch(
        api.addr(),
        &format!("/api/v1/services?watch=true&resourceVersion={now}"),
    )
    .await;
    api.apply(Service::headless("ns", "c"));
    assert_eq!(w.event().await.0, "ADDED");

    // expire_watches: an ERROR 410 on the open watch, then its end.
    api.expire_watches();
    let (t, st) = w.event().await;
    assert_eq!((t.as_str(), st["code"].as_u64()), ("ERROR", Some(410)));
    assert!(matches!(w.next().await, Next::End));

    // expire_before keeps newer history.
    let keep = api.apply(Service::headless("ns", "d"));
    api.apply(Service::headless("ns", "e"));
    api.expire_before(keep);
    let mut w = watch(
        api.addr(),
        &format!("/api/v1/services?watch=true&resourceVersion={keep}"),
    )
    .await;
    let (t, o) = w.event().await;
    assert_eq!((t.as_str(), name(&o)), ("ADDED", "e"));
    let mut w = watch(
        api.addr(),
        &format!("/api/v1/services?watch=true&resourceVersion={}", keep - 1),
    )
    .await;
    assert_eq!(w.event().await.0, "ERROR");
}

#[tokio::test]
async fn bookmarks_only_when_allowed() {
    let api = FakeKubeApi::start().await;
    let from =
        api.apply(EndpointSlice::new("ns", "web", "web-abc12").endpoint(Endpoint::new("10.0.0.1")));
    let path = "/apis/discovery.k8s.io/v1/endpointslices?watch=true";
    let mut with = watch(
        api.addr(),
        &format!("{path}&resourceVersion={from}&allowWatchBookmarks=true"),
    )
    .await;
    let mut without = watch(api.addr(), &format!("{path}&resourceVersion={from}")).await;
    let at = api.bookmark();
    let (t, o) = with.event().await;
    assert_eq!(t, "BOOKMARK");
    assert_eq!(o["kind"], "EndpointSlice");
    assert_eq!(o["apiVersion"], "discovery.k8s.io/v1");
    assert_eq!(rv(&o), at);
    assert_eq!(
        o["metadata"].as_object().unwrap().len(),
        1,
        "only the version: {o}"
    );
    api.apply(EndpointSlice::new("ns", "web", "web-xyz98"));
    let (t, o) = without.event().await;
    assert_eq!((t.as_str(), name(&o)), ("ADDED", "web-xyz98"));
    assert_eq!(with.event().await.0, "ADDED");

    // Periodic bookmarks.
    let api = FakeKubeApi::builder()
        .bookmark_interval(Duration::from_millis(50))
        .start()
        .await;
    let mut w = watch(
        api.addr(),
        "/api/v1/pods?watch=true&resourceVersion=1&allowWatchBookmarks=true",
    )
    .await;
    assert_eq!(w.event().await.0, "BOOKMARK");
    assert_eq!(w.event().await.0, "BOOKMARK");
}

#[tokio::test]
async fn watches_end_by_timeout_drop_or_end() {
    let api = FakeKubeApi::start().await;
    let started = tokio::time::Instant::now();
    let mut w = watch(
        api.addr(),
        "/api/v1/pods?watch=true&resourceVersion=1&timeoutSeconds=1",
    )
    .await;
    assert!(matches!(w.next().await, Next::End));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "{took:?}");

    let mut cut = watch(api.addr(), "/api/v1/pods?watch=true&resourceVersion=1").await;
    let mut other = watch(api.addr(), "/api/v1/services?watch=true&resourceVersion=1").await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            api.open_watches(Resource::Pods) == 1
        })
        .await
    );
    api.drop_watches();
    assert!(matches!(cut.next().await, Next::Cut), "no final chunk");
    assert!(matches!(other.next().await, Next::Cut));
    assert!(
        wait_until(Duration::from_secs(5), || async {
            api.open_watches(Resource::Pods) == 0
        })
        .await
    );

    let mut w = watch(api.addr(), "/api/v1/services?watch=true&resourceVersion=1").await;
    api.end_watches();
    assert!(matches!(w.next().await, Next::End));

    // Dropping the fake closes its connections.
    let mut w = watch(api.addr(), "/api/v1/services?watch=true&resourceVersion=1").await;
    drop(api);
    assert!(matches!(w.next().await, Next::Cut));
}

#[tokio::test]
async fn a_slow_watcher_is_closed_and_resumes() {
    let api = FakeKubeApi::builder().watch_queue(4).start().await;
    let from = api.resource_version();
    let mut w = watch(
        api.addr(),
        &format!("/api/v1/pods?watch=true&resourceVersion={from}"),
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            api.open_watches(Resource::Pods) == 1
        })
        .await
    );
    // Big objects fill the socket buffers while the client reads nothing.
    let big = "x".repeat(60_000);
    let mut last = from;
    for i in 0..400 {
        last = api.apply(Pod::new("ns", &format!("p{i}"), "10.0.0.1").annotation("big", &big));
        if api.open_watches(Resource::Pods) == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        api.open_watches(Resource::Pods),
        0,
        "the slow watcher was closed"
    );
    let mut seen = from;
    loop {
        match w.next().await {
            Next::Event(e) => seen = rv(&e["object"]),
            Next::End => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(seen < last, "closed before the end");
    // It resumes from what it saw, and gets the rest.
    let mut w = watch(
        api.addr(),
        &format!("/api/v1/pods?watch=true&resourceVersion={seen}"),
    )
    .await;
    let mut n = 0;
    while seen < last {
        let (t, o) = w.event().await;
        assert_eq!(t, "ADDED");
        assert_eq!(rv(&o), seen + 1);
        seen += 1;
        n += 1;
    }
    assert!(n > 0);
}

#[tokio::test]
async fn the_rest_of_the_surface() {
    let api = FakeKubeApi::builder().token("s3cret").start().await;
    let auth = "Authorization: Bearer s3cret";
    let (code, st) = get(api.addr(), "/api/v1/services").await;
    assert_eq!((code, st["reason"].as_str()), (401, Some("Unauthorized")));
    let (code, v) = get_with(api.addr(), "/version", &[auth]).await;
    assert_eq!(code, 200);
    assert_eq!(v["major"], "1");
    let (code, st) = get_with(api.addr(), "/api/v1/nothings", &[auth]).await;
    assert_eq!(code, 404);
    assert_eq!(st["kind"], "Status");
    assert_eq!(st["reason"], "NotFound");
    let (code, _) = get_with(api.addr(), "/nowhere", &[auth]).await;
    assert_eq!(code, 404);
    let r = http_request(
        api.addr(),
        "POST",
        "/api/v1/namespaces/ns/services",
        &[auth],
        b"{}",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 405);
    let (code, l) = get_with(api.addr(), "/api/v1", &[auth]).await;
    assert_eq!(code, 200);
    assert_eq!(l["kind"], "APIResourceList");

    // One object, and a missing one.
    api.apply(Pod::ips("ns", "p", &["10.0.0.1", "fd00::1"]).node("n2"));
    let (code, p) = get_with(api.addr(), "/api/v1/namespaces/ns/pods/p", &[auth]).await;
    assert_eq!(code, 200);
    assert_eq!(p["kind"], "Pod");
    assert_eq!(p["status"]["podIPs"][1]["ip"], "fd00::1");
    let (code, st) = get_with(api.addr(), "/api/v1/namespaces/ns/pods/q", &[auth]).await;
    assert_eq!(code, 404);
    assert_eq!(st["details"]["name"], "q");

    // Injected failures, then normal service.
    api.fail_next(2, 503);
    let (code, st) = get_with(api.addr(), "/api/v1/pods", &[auth]).await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (503, Some("ServiceUnavailable"))
    );
    let (code, _) = get_with(api.addr(), "/api/v1/pods", &[auth]).await;
    assert_eq!(code, 503);
    let (code, _) = get_with(api.addr(), "/api/v1/pods", &[auth]).await;
    assert_eq!(code, 200);
    assert_eq!(api.list_count(Resource::Pods), 3);

    // The request log.
    let last = api.requests().pop().unwrap();
    assert_eq!(last.path, "/api/v1/pods");
    assert_eq!(last.resource(), Some(Resource::Pods));
    assert!(!last.is_watch());

    // Stalled lists wait.
    api.stall_lists(true);
    let addr = api.addr();
    let mut pending = tokio::spawn(async move { get_with(addr, "/api/v1/pods", &[auth]).await });
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut pending)
            .await
            .is_err(),
        "a stalled list is not answered"
    );
    api.stall_lists(false);
    assert_eq!(pending.await.unwrap().0, 200);
}

#[tokio::test]
async fn service_imports_are_served_as_a_custom_resource() {
    let api = FakeKubeApi::start().await;
    const ALL: &str = "/apis/multicluster.x-k8s.io/v1alpha1/serviceimports";
    api.apply(
        ServiceImport::cluster_set_ip("shop", "web", &["10.42.0.7", "fd00::7"])
            .port("http", "TCP", 80)
            .cluster("west")
            .label("tier", "front"),
    );
    api.apply(ServiceImport::headless("shop", "db").port("pg", "TCP", 5432));
    api.apply(ServiceImport::headless("other", "cache"));

    // Discovery names the group and the resource.
    let (code, groups) = get(api.addr(), "/apis").await;
    assert_eq!(code, 200);
    assert!(
        groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "multicluster.x-k8s.io"
                && g["preferredVersion"]["version"] == "v1alpha1"),
        "{groups}"
    );
    let (code, l) = get(api.addr(), "/apis/multicluster.x-k8s.io/v1alpha1").await;
    assert_eq!(code, 200);
    assert_eq!(l["groupVersion"], "multicluster.x-k8s.io/v1alpha1");
    assert_eq!(l["resources"][0]["name"], "serviceimports");
    assert_eq!(l["resources"][0]["kind"], "ServiceImport");
    assert_eq!(l["resources"][0]["namespaced"], true);

    // Lists, everywhere and in one namespace; items of a custom resource
    // keep their kind.
    let (code, list) = get(api.addr(), ALL).await;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "ServiceImportList");
    assert_eq!(list["apiVersion"], "multicluster.x-k8s.io/v1alpha1");
    assert_eq!(names(&list), ["cache", "db", "web"]);
    let web = &list["items"][2];
    assert_eq!(web["kind"], "ServiceImport");
    assert_eq!(web["apiVersion"], "multicluster.x-k8s.io/v1alpha1");
    assert_eq!(web["spec"]["type"], "ClusterSetIP");
    assert_eq!(web["spec"]["ips"][1], "fd00::7");
    assert_eq!(web["spec"]["ports"][0]["port"], 80);
    assert_eq!(web["status"]["clusters"][0]["cluster"], "west");
    assert_eq!(list["items"][1]["spec"]["type"], "Headless");
    let (code, list) = get(
        api.addr(),
        "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceimports",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(names(&list), ["db", "web"]);
    let (code, list) = get(api.addr(), &format!("{ALL}?labelSelector=tier%3Dfront")).await;
    assert_eq!(code, 200);
    assert_eq!(names(&list), ["web"]);
    let (code, one) = get(
        api.addr(),
        "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceimports/db",
    )
    .await;
    assert_eq!(
        (code, one["spec"]["ports"][0]["name"].as_str()),
        (200, Some("pg"))
    );

    // A watch from the list's version sees every change.
    let (_, list) = get(api.addr(), ALL).await;
    let list_rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut w = watch(
        api.addr(),
        &format!("{ALL}?watch=true&resourceVersion={list_rv}&allowWatchBookmarks=true"),
    )
    .await;
    let added = api.apply(ServiceImport::cluster_set_ip("shop", "api", &["10.42.0.8"]));
    let changed = api.apply(ServiceImport::cluster_set_ip("shop", "web", &["10.42.0.9"]));
    let deleted = api
        .delete(Resource::ServiceImports, "other", "cache")
        .unwrap();
    let (t, o) = w.event().await;
    assert_eq!((t.as_str(), name(&o), rv(&o)), ("ADDED", "api", added));
    assert_eq!(o["kind"], "ServiceImport");
    let (t, o) = w.event().await;
    assert_eq!((t.as_str(), name(&o), rv(&o)), ("MODIFIED", "web", changed));
    assert_eq!(o["spec"]["ips"][0], "10.42.0.9");
    let (t, o) = w.event().await;
    assert_eq!(
        (t.as_str(), name(&o), rv(&o)),
        ("DELETED", "cache", deleted)
    );
    // Other resources' changes are not its.
    api.apply(Service::headless("shop", "web"));
    assert!(matches!(
        w.next_within(Duration::from_millis(200)).await,
        Next::Idle
    ));
    // Compacted: a watch from the old version is told 410.
    api.compact();
    let mut old = watch(
        api.addr(),
        &format!("{ALL}?watch=true&resourceVersion={list_rv}"),
    )
    .await;
    let (t, o) = old.event().await;
    assert_eq!((t.as_str(), o["code"].as_i64()), ("ERROR", Some(410)));
    assert_eq!(api.list_count(Resource::ServiceImports), 4);
    assert_eq!(api.watch_count(Resource::ServiceImports), 2);

    // Imported EndpointSlices carry the multicluster labels, and a
    // selector on them finds them alone.
    api.apply(
        EndpointSlice::imported("shop", "db", "west", "db-west-1")
            .endpoint(Endpoint::new("10.1.0.5").hostname("db-0"))
            .port("pg", "TCP", 5432),
    );
    api.apply(
        EndpointSlice::new("shop", "web", "web-abc")
            .endpoint(Endpoint::new("10.1.0.9"))
            .port("http", "TCP", 8080),
    );
    let (code, list) = get(
        api.addr(),
        "/apis/discovery.k8s.io/v1/endpointslices?labelSelector=multicluster.kubernetes.io%2Fservice-name",
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(names(&list), ["db-west-1"]);
    let labels = &list["items"][0]["metadata"]["labels"];
    assert_eq!(labels["multicluster.kubernetes.io/service-name"], "db");
    assert_eq!(labels["multicluster.kubernetes.io/source-cluster"], "west");
    assert!(labels.get("kubernetes.io/service-name").is_none());
}

#[tokio::test]
async fn kubeconfig_names_the_server_and_the_token() {
    let api = FakeKubeApi::builder().token("t0k").tls().start().await;
    let dir = std::env::temp_dir().join(format!("kubeapi-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = api.kubeconfig(&dir);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&format!("server: {}", api.endpoint_url())));
    assert!(api.endpoint_url().starts_with("https://127.0.0.1:"));
    assert!(text.contains("certificate-authority-data: "));
    assert!(text.contains("token: \"t0k\""));
    assert!(api.ca_pem().unwrap().contains("BEGIN CERTIFICATE"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// kube-rs's client and watcher against the fake: the best evidence
/// that it speaks the real protocol, since they were built against the
/// real API server.
mod kube_client {
    use super::*;
    use futures::{Stream, StreamExt};
    use k8s_openapi::api::core::v1::Service as KService;
    use k8s_openapi::api::discovery::v1::EndpointSlice as KSlice;
    use kube::Resource as _;
    use kube::api::Api;
    use kube::config::{KubeConfigOptions, Kubeconfig};
    use kube::runtime::WatchStreamExt;
    use kube::runtime::watcher::{self, Event};

    async fn client(api: &FakeKubeApi, tag: &str) -> kube::Client {
        let dir = std::env::temp_dir().join(format!("kubeapi-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kc = Kubeconfig::read_from(api.kubeconfig(&dir)).expect("a kubeconfig kube reads");
        let _ = std::fs::remove_dir_all(&dir);
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("a config");
        kube::Client::try_from(config).expect("a client")
    }

    /// The next event, skipping the errors a broken watch yields.
    async fn next<K, S>(s: &mut S) -> Event<K>
    where
        S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
    {
        for _ in 0..20 {
            match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
                Ok(Some(Ok(e))) => return e,
                Ok(Some(Err(_))) => continue,
                Ok(None) => panic!("the watcher ended"),
                Err(_) => panic!("no event within 10 s"),
            }
        }
        panic!("only errors");
    }

    fn label<K: kube::Resource>(e: &Event<K>) -> String {
        let n = |k: &K| k.meta().name.clone().unwrap_or_default();
        match e {
            Event::Init => "init".into(),
            Event::InitApply(k) => format!("init {}", n(k)),
            Event::InitDone => "done".into(),
            Event::Apply(k) => format!("apply {}", n(k)),
            Event::Delete(k) => format!("delete {}", n(k)),
        }
    }

    async fn expect<K: kube::Resource, S>(s: &mut S, want: &[&str])
    where
        S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
    {
        for w in want {
            assert_eq!(label(&next(s).await), *w);
        }
    }

    #[tokio::test]
    async fn kube_watcher_syncs_pages_and_recovers_from_drops_and_410() {
        let api = FakeKubeApi::builder()
            .tls()
            .token("kube-t0ken")
            .start()
            .await;
        api.apply(Service::cluster_ip("default", "a", "10.96.0.1").port("http", "TCP", 80));
        api.apply(Service::cluster_ips("ns", "b", &["10.96.0.2", "fd00::2"]));
        let c = client(&api, "recover").await;
        let config = watcher::Config::default().page_size(1);
        let mut s = watcher::watcher(Api::<KService>::all(c), config)
            .default_backoff()
            .boxed();

        expect(&mut s, &["init", "init a", "init b", "done"]).await;
        assert_eq!(api.list_count(Resource::Services), 2, "two pages of one");
        let first_list = &api.requests()[0];
        assert_eq!(first_list.param("limit"), Some("1"));

        // A change arrives on the watch, typed as kube expects.
        api.apply(Service::headless("ns", "c").port("dns", "UDP", 53));
        match next(&mut s).await {
            Event::Apply(svc) => {
                assert_eq!(svc.meta().name.as_deref(), Some("c"));
                let spec = svc.spec.unwrap();
                assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
                assert_eq!(spec.ports.unwrap()[0].protocol.as_deref(), Some("UDP"));
            }
            e => panic!("{}", label(&e)),
        }
        let w = api.requests().into_iter().find(|r| r.is_watch()).unwrap();
        assert_eq!(w.param("allowWatchBookmarks"), Some("true"));
        assert!(w.param("timeoutSeconds").is_some());
        assert!(w.param("resourceVersion").is_some());

        // A dropped connection: kube watches again from its version and
        // misses nothing written meanwhile, without a relist.
        api.drop_watches();
        api.apply(Service::headless("ns", "d"));
        expect(&mut s, &["apply d"]).await;
        assert_eq!(api.watch_count(Resource::Services), 2);
        assert_eq!(api.list_count(Resource::Services), 2);

        // A bookmark moves its version on, silently.
        api.bookmark();
        api.apply(Service::headless("ns", "e"));
        expect(&mut s, &["apply e"]).await;

        // 410 in the stream: kube relists.
        api.expire_watches();
        api.delete(Resource::Services, "ns", "b");
        expect(
            &mut s,
            &["init", "init a", "init c", "init d", "init e", "done"],
        )
        .await;
        assert_eq!(api.list_count(Resource::Services), 2 + 4);

        // A drop, then compaction past its version: the new watch gets
        // 410 and kube relists again.
        api.drop_watches();
        api.apply(Service::headless("ns", "f"));
        api.compact();
        expect(
            &mut s,
            &[
                "init", "init a", "init c", "init d", "init e", "init f", "done",
            ],
        )
        .await;
        assert_eq!(api.list_count(Resource::Services), 6 + 5);
        api.apply(Service::headless("ns", "g"));
        expect(&mut s, &["apply g"]).await;
        api.delete(Resource::Services, "ns", "g");
        expect(&mut s, &["delete g"]).await;
    }

    #[tokio::test]
    async fn kube_streaming_list_with_a_label_selector() {
        let api = FakeKubeApi::start().await;
        let slice = |name: &str, app: &str| {
            EndpointSlice::new("ns", "web", name)
                .label("app", app)
                .endpoint(
                    Endpoint::new("10.0.0.1")
                        .hostname("web-0")
                        .pod("web-0")
                        .node("n1"),
                )
                .port("http", "TCP", 8080)
        };
        api.apply(Service::cluster_ip("ns", "web", "10.96.0.9"));
        api.apply(slice("web-1", "web"));
        api.apply(slice("db-1", "db"));
        let c = client(&api, "stream").await;
        let config = watcher::Config::default()
            .streaming_lists()
            .labels("app=web");
        let mut s = watcher::watcher(Api::<KSlice>::namespaced(c, "ns"), config)
            .default_backoff()
            .boxed();
        match next(&mut s).await {
            Event::InitApply(es) => {
                assert_eq!(es.meta().name.as_deref(), Some("web-1"));
                assert_eq!(es.address_type, "IPv4");
                let ep = &es.endpoints[0];
                assert_eq!(ep.hostname.as_deref(), Some("web-0"));
                assert_eq!(ep.conditions.as_ref().unwrap().ready, Some(true));
                assert_eq!(
                    ep.target_ref.as_ref().unwrap().namespace.as_deref(),
                    Some("ns")
                );
                let owner = &es.meta().owner_references.as_ref().unwrap()[0];
                let svc = api.get(Resource::Services, "ns", "web").unwrap();
                assert_eq!(owner.uid, svc["metadata"]["uid"].as_str().unwrap());
            }
            e => panic!("{}", label(&e)),
        }
        expect(&mut s, &["done"]).await;
        assert_eq!(
            api.list_count(Resource::EndpointSlices),
            0,
            "no list at all"
        );
        let w = api.requests().pop().unwrap();
        assert_eq!(w.param("sendInitialEvents"), Some("true"));
        assert_eq!(w.param("resourceVersionMatch"), Some("NotOlderThan"));
        assert_eq!(w.param("labelSelector"), Some("app=web"));
        assert_eq!(w.path, KSlice::url_path(&(), Some("ns")));

        api.apply(slice("db-2", "db"));
        api.apply(slice("db-1", "web"));
        expect(&mut s, &["apply db-1"]).await;
        api.apply(slice("web-1", "none"));
        expect(&mut s, &["delete web-1"]).await;
    }
}

// === The kubernetes plugin's metrics, against this fake ===

mod plugin_metrics {
    use std::sync::Arc;
    use std::time::Duration;

    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use nodedns_plugins::Dispenser;
    use nodedns_plugins::lexer::lex;
    use nodedns_plugins::pkg::metrics::registry;
    use nodedns_plugins::setup::{BlockInfo, BlockSetup, Controller, Services};
    use nodedns_tests::kubeapi::{
        Endpoint, EndpointSlice, FakeKubeApi, Namespace, Resource, Service,
    };
    use nodedns_tests::wait_until;
    use prometheus::proto::{Metric, MetricFamily};

    const TRIGGER: &str = "endpoints.kubernetes.io/last-change-trigger-time";
    const PROGRAMMING: &str = "coredns_kubernetes_dns_programming_duration_seconds";
    const REQUESTS: &str = "coredns_kubernetes_rest_client_requests_total";
    const DURATION: &str = "coredns_kubernetes_rest_client_request_duration_seconds";
    const LIMITER: &str = "coredns_kubernetes_rest_client_rate_limiter_duration_seconds";

    /// The series of `family` with exactly these labels.
    fn series(family: &str, labels: &[(&str, &str)]) -> Option<Metric> {
        let families: Vec<MetricFamily> = registry().gather();
        let f = families.into_iter().find(|f| f.name() == family)?;
        f.get_metric()
            .iter()
            .find(|m| {
                m.get_label().len() == labels.len()
                    && labels.iter().all(|(k, v)| {
                        m.get_label()
                            .iter()
                            .any(|l| l.name() == *k && l.value() == *v)
                    })
            })
            .cloned()
    }

    fn counter(family: &str, labels: &[(&str, &str)]) -> u64 {
        series(family, labels).map_or(0, |m| m.get_counter().get_value() as u64)
    }

    /// A histogram's sample count and sum.
    fn histogram(family: &str, labels: &[(&str, &str)]) -> (u64, f64) {
        series(family, labels).map_or((0, 0.0), |m| {
            let h = m.get_histogram();
            (h.get_sample_count(), h.get_sample_sum())
        })
    }

    /// The plugin for `url`, its watch started; the watch runs while the
    /// returned setup (whose plugin holds it) lives.
    fn start(
        url: &str,
    ) -> (
        Arc<dyn nodedns_plugins::pkg::lifecycle::Readiness>,
        (BlockSetup, Services),
    ) {
        let file: Arc<str> = Arc::from("Corefile");
        let text = format!("kubernetes cluster.local {{\n endpoint {url}\n}}");
        let tokens = lex(&file, &text).unwrap();
        let block = BlockInfo {
            zones: vec!["cluster.local.".into()],
            port: 53,
            server_name: Arc::from("dns://:53"),
            bound: Arc::default(),
        };
        let mut out = BlockSetup::default();
        let mut services = Services::default();
        let mut c = Controller {
            d: Dispenser::new("kubernetes", &tokens),
            block: &block,
            out: &mut out,
            services: &mut services,
        };
        nodedns_plugins::kubernetes::setup(&mut c).unwrap();
        // The watch starts as the agent starts it, before serving; it runs
        // while the plugin (in `out`) holds it.
        for w in services.startup.drain(..) {
            (w.start)();
        }
        (services.readiness.remove(0), (out, services))
    }

    fn ago(secs: i64) -> String {
        (Timestamp::now() - SignedDuration::from_secs(secs)).to_string()
    }

    /// Lists and watches the fake received in all.
    fn received(api: &FakeKubeApi) -> (usize, usize) {
        let all = [
            Resource::Services,
            Resource::EndpointSlices,
            Resource::Namespaces,
        ];
        (
            all.iter().map(|r| api.list_count(*r)).sum(),
            all.iter().map(|r| api.watch_count(*r)).sum(),
        )
    }

    /// Every request is counted by code, method and host; requests but
    /// watches are timed and paced; a slice with a trigger time of a known
    /// service gives a programming latency by the service's kind, on
    /// change and on delete, and one without does not.
    #[tokio::test]
    async fn kubernetes_metrics_move_with_exact_labels() {
        let api = FakeKubeApi::start().await;
        let host = api.addr().to_string();
        let get = |code: &'static str| [("code", code), ("method", "GET"), ("host", host.as_str())];
        let timed = [("verb", "GET"), ("host", host.as_str())];
        api.apply(Namespace::new("shop"));
        api.apply(Service::cluster_ip("shop", "web", "10.96.0.7").port("http", "TCP", 80));
        api.apply(Service::headless("shop", "db"));
        let cluster_ip = [("service_kind", "cluster_ip")];
        let headless = [("service_kind", "headless_with_selector")];
        let (ip0, ip_sum0) = histogram(PROGRAMMING, &cluster_ip);
        let (hl0, hl_sum0) = histogram(PROGRAMMING, &headless);

        let (ready, tasks) = start(&api.endpoint_url());
        let limit = Duration::from_secs(10);
        assert!(
            wait_until(limit, || async { ready.ready() }).await,
            "synced"
        );

        // Each request the fake received is counted once it answered.
        assert!(
            wait_until(limit, || async {
                let (lists, watches) = received(&api);
                watches == 3 && counter(REQUESTS, &get("200")) == (lists + watches) as u64
            })
            .await,
            "{:?} {}",
            received(&api),
            counter(REQUESTS, &get("200"))
        );
        let (lists, _) = received(&api);
        assert_eq!(lists, 3);
        assert_eq!(
            histogram(DURATION, &timed).0,
            lists as u64,
            "lists are timed, watches not"
        );
        assert_eq!(
            histogram(LIMITER, &timed).0,
            lists as u64,
            "lists are paced, watches not"
        );
        assert!(
            histogram(LIMITER, &timed).1 < 1.0,
            "the burst covers three lists"
        );

        // Slices that record nothing come first: no trigger time, one that
        // does not parse, a service the store does not know.
        api.apply(
            EndpointSlice::new("shop", "web", "web-plain")
                .port("http", "TCP", 8080)
                .endpoint(Endpoint::new("10.1.0.2")),
        );
        api.apply(
            EndpointSlice::new("shop", "web", "web-bad")
                .endpoint(Endpoint::new("10.1.0.3"))
                .annotation(TRIGGER, "not a time"),
        );
        api.apply(
            EndpointSlice::new("shop", "nosvc", "nosvc-1")
                .endpoint(Endpoint::new("10.1.0.4"))
                .annotation(TRIGGER, &ago(2)),
        );
        api.apply(
            EndpointSlice::new("shop", "web", "web-1")
                .port("http", "TCP", 8080)
                .endpoint(Endpoint::new("10.1.0.1"))
                .annotation(TRIGGER, &ago(2)),
        );
        api.apply(
            EndpointSlice::new("shop", "db", "db-1")
                .port("pg", "TCP", 5432)
                .endpoint(Endpoint::new("10.1.1.1").hostname("db-0"))
                .annotation(TRIGGER, &ago(2)),
        );
        assert!(
            wait_until(limit, || async {
                histogram(PROGRAMMING, &cluster_ip).0 == ip0 + 1
                    && histogram(PROGRAMMING, &headless).0 == hl0 + 1
            })
            .await,
            "{:?} {:?}",
            histogram(PROGRAMMING, &cluster_ip),
            histogram(PROGRAMMING, &headless)
        );
        let (_, ip_sum) = histogram(PROGRAMMING, &cluster_ip);
        let (_, hl_sum) = histogram(PROGRAMMING, &headless);
        assert!(
            (2.0..12.0).contains(&(ip_sum - ip_sum0)),
            "{}",
            ip_sum - ip_sum0
        );
        assert!(
            (2.0..12.0).contains(&(hl_sum - hl_sum0)),
            "{}",
            hl_sum - hl_sum0
        );
        // A delete records too (CoreDNS's Deleted delta).
        api.delete(Resource::EndpointSlices, "shop", "web-1");
        assert!(
            wait_until(limit, || async {
                histogram(PROGRAMMING, &cluster_ip).0 == ip0 + 2
            })
            .await
        );
        assert_eq!(histogram(PROGRAMMING, &headless).0, hl0 + 1);

        // A watch the server refuses: counted under its code.
        api.fail_next(1, 500);
        api.drop_watches();
        assert!(
            wait_until(limit, || async {
                let (lists, watches) = received(&api);
                counter(REQUESTS, &get("500")) == 1
                    && counter(REQUESTS, &get("200")) == (lists + watches - 1) as u64
            })
            .await,
            "{:?} {} {}",
            received(&api),
            counter(REQUESTS, &get("200")),
            counter(REQUESTS, &get("500"))
        );
        let (lists, _) = received(&api);
        assert_eq!(histogram(DURATION, &timed).0, lists as u64);
        assert_eq!(histogram(LIMITER, &timed).0, lists as u64);
        drop(tasks);

        // No answer at all: `<error>`.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap().to_string();
        drop(closed);
        // (The readiness holds the store: the watch runs while it lives.)
        let (_store, tasks) = start(&format!("http://{gone}"));
        let error = [
            ("code", "<error>"),
            ("method", "GET"),
            ("host", gone.as_str()),
        ];
        assert!(
            wait_until(limit, || async { counter(REQUESTS, &error) >= 1 }).await,
            "a refused connection is counted"
        );
        assert_eq!(
            counter(
                REQUESTS,
                &[("code", "200"), ("method", "GET"), ("host", gone.as_str())]
            ),
            0
        );
        drop(tasks);
    }
}
