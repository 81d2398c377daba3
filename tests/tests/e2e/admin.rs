//! The admin plane against a running agent: every REST endpoint, its
//! errors, auth, and a change applied live while the old config keeps
//! serving when the new one is refused.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nodedns_tests::{Agent, Client, FakeUpstream, HttpReply, http_request, wait_until};

async fn get(agent: &Agent, path: &str) -> HttpReply {
    http_request(agent.admin(), "GET", path, &[], b"")
        .await
        .unwrap_or_else(|| panic!("GET {path}: no reply"))
}

async fn put(agent: &Agent, path: &str, headers: &[&str], body: &str) -> HttpReply {
    http_request(agent.admin(), "PUT", path, headers, body.as_bytes())
        .await
        .unwrap_or_else(|| panic!("PUT {path}: no reply"))
}

async fn delete(agent: &Agent, path: &str) -> HttpReply {
    http_request(agent.admin(), "DELETE", path, &[], b"")
        .await
        .unwrap_or_else(|| panic!("DELETE {path}: no reply"))
}

fn json(r: &HttpReply) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

fn corefile(up: &FakeUpstream, extra: &str) -> String {
    format!(".:0 {{\n    bind 127.0.0.1\n    cache 60\n    forward . {up}\n}}\n{extra}")
}

async fn upstream() -> FakeUpstream {
    FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .a("mail.example.org.", "192.0.2.2")
        .ttl(300)
        .start()
        .await
}

#[tokio::test]
async fn config_get_put_with_etag_dry_run_and_write_back() {
    let up = upstream().await;
    let agent = Agent::corefile(corefile(&up, "")).start().await;
    let c = Client::new(agent.udp());
    let running = get(&agent, "/v1/config").await;
    assert_eq!(running.status, 200);
    assert!(
        running
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(running.header("etag"), Some("\"1\""));
    assert!(running.body.contains("forward ."), "{}", running.body);

    // A second block, added live.
    let next = corefile(&up, "who.test:0 {\n    bind 127.0.0.1\n    whoami\n}\n");
    // Validation only: nothing changes.
    let dry = put(&agent, "/v1/config?dry_run=true", &[], &next).await;
    assert_eq!(dry.status, 200, "{dry:?}");
    assert_eq!(json(&dry)["version"], 1);
    assert_eq!(json(&dry)["persisted"], false);
    assert_eq!(
        get(&agent, "/v1/config").await.header("etag"),
        Some("\"1\"")
    );
    // who.test still goes upstream (which does not know it).
    assert_eq!(
        c.udp("who.test.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );

    // A stale If-Match is refused.
    let stale = put(&agent, "/v1/config", &["If-Match: \"7\""], &next).await;
    assert_eq!(stale.status, 412, "{stale:?}");
    assert!(json(&stale)["error"].as_str().unwrap().contains('7'));

    let applied = put(&agent, "/v1/config", &["If-Match: \"1\""], &next).await;
    assert_eq!(applied.status, 200, "{applied:?}");
    assert_eq!(json(&applied)["version"], 2);
    assert_eq!(json(&applied)["persisted"], true);
    assert_eq!(
        std::fs::read_to_string(agent.path("Corefile")).unwrap(),
        next,
        "written back to -conf"
    );
    let now = get(&agent, "/v1/config").await;
    assert_eq!(now.header("etag"), Some("\"2\""));
    assert_eq!(now.body, next);
    let who = c.udp("who.test.", RecordType::A).await;
    assert_eq!(
        (who.metadata.response_code, who.additionals.len()),
        (ResponseCode::NoError, 2),
        "whoami answers: the new block serves"
    );
    // No temporary file is left beside the Corefile.
    let leftovers: Vec<_> = std::fs::read_dir(agent.path("."))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_refused_config_names_its_line_and_the_old_one_keeps_serving() {
    let up = upstream().await;
    let agent = Agent::corefile(corefile(&up, "")).start().await;
    let c = Client::new(agent.udp());
    let bad = ".:0 {\n    cache 60\n    nosuchplugin\n}\n";
    let r = put(&agent, "/v1/config", &[], bad).await;
    assert_eq!(r.status, 400, "{r:?}");
    let body = json(&r);
    assert_eq!(body["line"], 3, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("Corefile:3:"),
        "{body}"
    );
    // Counted and logged; the old config answers; the version stays.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            agent
                .stderr()
                .iter()
                .any(|l| l.contains("reload refused") && l.contains("Corefile:3"))
        })
        .await,
        "{:?}",
        agent.stderr()
    );
    assert_eq!(
        get(&agent, "/v1/config").await.header("etag"),
        Some("\"1\"")
    );
    let m = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(m.answers.len(), 1);
    // A dry run of a bad config is 400 too, and is not a failed reload.
    let r = put(&agent, "/v1/config?dry_run=true", &[], bad).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn stats_cache_upstreams_and_plugins() {
    let up = upstream().await;
    let agent = Agent::corefile(format!(
        ".:0 {{\n    bind 127.0.0.1\n    errors\n    cache 60\n    forward . {up}\n}}\n"
    ))
    .start()
    .await;
    let c = Client::new(agent.udp());
    for _ in 0..3 {
        assert_eq!(
            c.udp("www.example.org.", RecordType::A).await.answers.len(),
            1
        );
    }
    assert_eq!(
        c.udp("mail.example.org.", RecordType::A)
            .await
            .answers
            .len(),
        1
    );
    let _ = c.udp("www.example.org.", RecordType::AAAA).await;

    let stats = json(&get(&agent, "/v1/stats").await);
    assert_eq!(stats["queries"]["total"], 5, "{stats}");
    assert_eq!(stats["queries"]["by_type"]["A"], 4, "{stats}");
    assert_eq!(stats["queries"]["by_rcode"]["NOERROR"], 5, "{stats}");
    assert_eq!(stats["cache"]["hits"], 2, "{stats}");
    assert_eq!(stats["cache"]["misses"], 3, "{stats}");
    assert_eq!(stats["cache"]["entries"], 3, "{stats}");
    assert_eq!(stats["upstreams"][0]["address"], up.to_string(), "{stats}");

    let listed = json(&get(&agent, "/v1/cache?name=www.example.org").await);
    let entries = listed["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{listed}");
    let a = entries.iter().find(|e| e["type"] == "A").unwrap();
    assert_eq!(a["name"], "www.example.org.");
    assert!(
        a["ttl"].as_u64().unwrap() > 0 && a["ttl"].as_u64().unwrap() <= 60,
        "{a}"
    );
    assert_eq!(a["stale"], false);
    let all = json(&get(&agent, "/v1/cache").await);
    assert_eq!(all["entries"].as_array().unwrap().len(), 3, "{all}");
    assert_eq!(get(&agent, "/v1/cache?type=NOPE").await.status, 400);

    // One RRset goes; the next query asks upstream again.
    let asked = up.count("www.example.org.", RecordType::A);
    let r = delete(&agent, "/v1/cache?name=www.example.org&type=A").await;
    assert_eq!(
        (r.status, json(&r)["removed"].as_u64()),
        (200, Some(1)),
        "{r:?}"
    );
    let _ = c.udp("www.example.org.", RecordType::A).await;
    assert_eq!(up.count("www.example.org.", RecordType::A), asked + 1);
    assert_eq!(
        delete(&agent, "/v1/cache?type=A").await.status,
        400,
        "type needs a name"
    );
    let r = delete(&agent, "/v1/cache").await;
    assert_eq!(json(&r)["removed"], 3, "{r:?}");
    assert_eq!(json(&get(&agent, "/v1/stats").await)["cache"]["entries"], 0);

    let ups = json(&get(&agent, "/v1/upstreams").await);
    let u = &ups["upstreams"][0];
    assert_eq!(u["address"], up.to_string(), "{ups}");
    assert_eq!(u["healthy"], true);
    assert_eq!(u["fails"], 0);
    assert!(u["rtt_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        u["pooled"].as_u64().unwrap() >= 1,
        "a socket is open: {ups}"
    );

    let plugins = json(&get(&agent, "/v1/plugins").await);
    assert_eq!(
        plugins["plugins"],
        serde_json::json!(["bind", "errors", "cache", "forward"])
    );

    assert_eq!(get(&agent, "/healthz").await.status, 200);
    assert_eq!(get(&agent, "/readyz").await.status, 200);
    let missing = get(&agent, "/v1/nope").await;
    assert_eq!(missing.status, 404);
    assert!(json(&missing)["error"].is_string());
    let openapi = json(&get(&agent, "/v1/openapi.json").await);
    assert!(openapi["paths"]["/v1/config"].is_object(), "{openapi}");
}

#[tokio::test]
async fn a_body_over_a_mebibyte_is_413() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .start()
        .await;
    let huge = format!("# {}\n.:0 {{\n    whoami\n}}\n", "x".repeat(1 << 20));
    let r = put(&agent, "/v1/config", &[], &huge).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert!(json(&r)["error"].is_string());
    assert_eq!(
        get(&agent, "/v1/config").await.header("etag"),
        Some("\"1\"")
    );
}

#[tokio::test]
async fn a_token_guards_every_call() {
    let dir = std::env::temp_dir().join(format!("nodedns-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .arg("--admin-token-file")
        .arg(token.display().to_string())
        .start()
        .await;
    let a = agent.admin();
    for path in ["/v1/config", "/v1/stats", "/v1/plugins", "/healthz"] {
        let none = http_request(a, "GET", path, &[], b"").await.unwrap();
        assert_eq!(none.status, 401, "{path}: {none:?}");
        assert!(json(&none)["error"].is_string());
        let wrong = http_request(a, "GET", path, &["Authorization: Bearer s3cret-tokeX"], b"")
            .await
            .unwrap();
        assert_eq!(wrong.status, 401, "{path}");
        let right = http_request(a, "GET", path, &["Authorization: Bearer s3cret-token"], b"")
            .await
            .unwrap();
        assert_eq!(right.status, 200, "{path}: {right:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_non_loopback_admin_address_without_a_token_is_refused_at_start() {
    let (status, stderr) = Agent::corefile(".:0 {\n    whoami\n}\n")
        .arg("--admin")
        .arg("0.0.0.0:0")
        .start_fails()
        .await;
    assert!(!status.success());
    assert!(stderr.contains("--admin-token-file"), "{stderr}");
}

#[tokio::test]
async fn admin_off_serves_nothing() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .arg("--admin")
        .arg("off")
        .start()
        .await;
    assert!(
        !agent.listening.iter().any(|(t, _)| t == "http/admin"),
        "{:?}",
        agent.listening
    );
}

/// Queries one worker sent, and what came back.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    answered: u64,
    wrong: Vec<String>,
}

/// Asks `n{k}.example.org.` in a loop at about `per_sec` queries a second
/// until `stop`, over UDP (a fresh socket a query, retried as dig does) or
/// over one TCP connection (reconnecting only if the agent closed it).
async fn steady(
    server: std::net::SocketAddr,
    tcp: bool,
    per_sec: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    use nodedns_tests::client::{query, read_frame, write_frame};
    let c = Client::new(server);
    let mut t = Tally::default();
    let mut conn = None;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded: at most 60 s of ticks whatever happens.
    for k in 0..per_sec * 60 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        tick.tick().await;
        let mut m = query(&format!("n{}.example.org.", k % 400), RecordType::A);
        m.metadata.id = (k % 65_536) as u16;
        let raw = m.to_vec().unwrap();
        t.sent += 1;
        let reply = if tcp {
            if conn.is_none() {
                conn = Some(c.connect().await);
            }
            let s = conn.as_mut().unwrap();
            write_frame(s, &raw).await;
            let r = tokio::time::timeout(Duration::from_secs(3), read_frame(s)).await;
            match r {
                Ok(Some(r)) => Some(r),
                _ => {
                    conn = None;
                    None
                }
            }
        } else {
            c.udp_raw(&raw).await
        };
        match reply.map(|r| hickory_proto::op::Message::from_vec(&r)) {
            Some(Ok(r))
                if r.metadata.id == m.metadata.id
                    && r.metadata.response_code == ResponseCode::NoError
                    && r.answers.len() == 1 =>
            {
                t.answered += 1;
            }
            other => t.wrong.push(format!("{k}: {other:?}")),
        }
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_changes_under_steady_load_lose_no_query() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let up = FakeUpstream::builder()
        .wildcard_a("192.0.2.9")
        .ttl(300)
        .start()
        .await;
    // TCP to the upstream, so its pooled connections can be counted.
    let config = |i: u32| {
        format!(
            ".:0 {{\n    bind 127.0.0.1\n    cache 300\n    forward . {up} {{\n        force_tcp\n    }}\n}}\nv{i}.test:0 {{\n    bind 127.0.0.1\n    whoami\n}}\n"
        )
    };
    let agent = Agent::corefile(config(0)).start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for tcp in [false, false, true, true] {
        workers.push(tokio::spawn(steady(
            if tcp { agent.tcp() } else { agent.udp() },
            tcp,
            800,
            Arc::clone(&stop),
        )));
    }
    let hits = || async {
        json(&get(&agent, "/v1/stats").await)["cache"]["hits"]
            .as_u64()
            .unwrap()
    };
    // Warm: every name asked once, and hits coming.
    assert!(
        wait_until(Duration::from_secs(10), || async { hits().await > 1000 }).await,
        "no hits under load: {}",
        get(&agent, "/v1/stats").await.body
    );
    let warm_conns = up.tcp_connections();
    let mut last_hits = hits().await;
    for i in 1..=20u32 {
        // About a second of load between changes.
        let t0 = tokio::time::Instant::now();
        let r = put(
            &agent,
            "/v1/config",
            &[&format!("If-Match: \"{i}\"")],
            &config(i),
        )
        .await;
        assert_eq!(r.status, 200, "change {i}: {r:?}");
        assert_eq!(json(&r)["version"], u64::from(i) + 1);
        tokio::time::sleep_until(t0 + Duration::from_secs(1)).await;
        let now = hits().await;
        assert!(now > last_hits, "change {i}: hits stalled at {now}");
        last_hits = now;
    }
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    let mut answered = 0;
    for w in workers {
        let t = w.await.unwrap();
        assert!(
            t.wrong.is_empty(),
            "{} of {} went wrong: {:?}",
            t.wrong.len(),
            t.sent,
            &t.wrong[..t.wrong.len().min(5)]
        );
        sent += t.sent;
        answered += t.answered;
    }
    assert_eq!(sent, answered);
    assert!(sent > 20 * 2000, "a few thousand queries a second: {sent}");
    // The forward pool went through twenty swaps: its connections were reused.
    let conns = up.tcp_connections();
    assert!(
        conns <= warm_conns + 2,
        "the pool was rebuilt: {warm_conns} connections when warm, {conns} after 20 changes"
    );
    assert_eq!(
        get(&agent, "/v1/config").await.header("etag"),
        Some("\"21\"")
    );
}

#[tokio::test]
async fn an_invalid_corefile_is_refused_the_same_way_by_put_the_reload_plugin_and_sigusr1() {
    use nix::sys::signal::Signal;
    let good = ".:0 {\n    bind 127.0.0.1\n    reload 2s 1s\n    prometheus 127.0.0.1:0\n    hosts {\n        192.0.2.1 www.example.org\n    }\n}\n";
    // Line 4 names a plugin nodedns does not have.
    let bad = ".:0 {\n    bind 127.0.0.1\n    reload 2s 1s\n    nosuchplugin\n}\n";
    let agent = Agent::corefile(good).start().await;
    let c = Client::new(agent.udp());
    let serves = || async {
        c.udp("www.example.org.", RecordType::A).await.answers[0]
            .data
            .to_string()
            == "192.0.2.1"
    };
    // The log line of each refusal, by what triggered it.
    let refusals = |trigger: &str| {
        let tag = format!("trigger=\"{trigger}\"");
        agent
            .stderr()
            .iter()
            .filter(|l| l.contains("reload refused") && l.contains(":4: ") && l.contains(&tag))
            .count()
    };
    let failed = || async {
        let (_, text) = nodedns_tests::http_get(agent.http("prometheus"), "/metrics")
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("coredns_reload_failed_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap()
    };
    assert_eq!(failed().await, 0);
    // 1. PUT: 400 naming the line, counted.
    let r = put(&agent, "/v1/config", &[], bad).await;
    assert_eq!(r.status, 400);
    assert_eq!(json(&r)["line"], 4, "{r:?}");
    assert!(wait_until(Duration::from_secs(5), || async { refusals("admin") == 1 }).await);
    assert!(serves().await);
    assert_eq!(failed().await, 1);
    // 2. The reload plugin sees the file change.
    std::fs::write(agent.path("Corefile"), bad).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            refusals("reload") >= 1
        })
        .await,
        "{:?}",
        agent.stderr()
    );
    assert!(serves().await);
    // 3. SIGUSR1.
    let before = refusals("SIGUSR1");
    agent.signal(Signal::SIGUSR1);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            refusals("SIGUSR1") > before
        })
        .await,
        "{:?}",
        agent.stderr()
    );
    assert!(serves().await);
    let n = failed().await;
    assert!(n >= 3, "each refusal counted: {n}, {:?}", agent.stderr());
    assert_eq!(
        get(&agent, "/v1/config").await.header("etag"),
        Some("\"1\"")
    );
    assert_eq!(
        get(&agent, "/v1/config").await.body,
        good,
        "the old config runs"
    );
}
