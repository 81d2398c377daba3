//! The admin plane's gRPC service against a running agent, through the
//! generated client: every method, its errors, the token, and reflection.

use std::time::Duration;

use hickory_proto::rr::RecordType;
use nodedns_admin::Token;
use nodedns_admin::ctl::Channel;
use nodedns_admin::grpc::pb;
use nodedns_admin::grpc::pb::admin_client::AdminClient;
use nodedns_admin::grpc::{SERVICE_NAME, status_line};
use nodedns_tests::{Agent, Client, FakeUpstream};
use tonic::Code;
use tonic::codegen::tokio_stream::{self, StreamExt as _};

async fn client(agent: &Agent, token: Option<&str>) -> AdminClient<Channel> {
    let token = token.map(|t| Token::new(t).unwrap());
    let addr = agent.admin();
    let channel = Channel::connect(&addr.to_string(), token.as_ref())
        .await
        .unwrap();
    AdminClient::with_origin(channel, format!("http://{addr}").parse().unwrap())
}

fn corefile(up: &FakeUpstream, extra: &str) -> String {
    format!(".:0 {{\n    bind 127.0.0.1\n    errors\n    cache 60\n    forward . {up}\n}}\n{extra}")
}

#[tokio::test]
async fn every_method_against_a_running_agent() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = Agent::corefile(corefile(&up, "")).start().await;
    let dns = Client::new(agent.udp());
    for _ in 0..2 {
        let _ = dns.udp("www.example.org.", RecordType::A).await;
    }
    let mut c = client(&agent, None).await;

    let cfg = c
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((cfg.corefile, cfg.version), (corefile(&up, ""), 1));

    let stats = c
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    let q = stats.queries.unwrap();
    assert_eq!(q.total, 2);
    assert_eq!(q.by_type.get("A"), Some(&2));
    assert_eq!(q.by_rcode.get("NOERROR"), Some(&2));
    let cache = stats.cache.unwrap();
    assert_eq!((cache.hits, cache.misses, cache.entries), (1, 1, 1));
    assert_eq!(stats.upstreams[0].address, up.to_string());

    let mut watch = c
        .watch_stats(pb::WatchStatsRequest { interval_ms: 100 })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        let s = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("a message within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(s.queries.unwrap().total, 2);
    }
    drop(watch);

    let listed = c
        .list_cache(pb::ListCacheRequest {
            name: Some("www.example.org".into()),
            r#type: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(
        (
            listed.entries[0].name.as_str(),
            listed.entries[0].r#type.as_str()
        ),
        ("www.example.org.", "A")
    );
    let s = c
        .list_cache(pb::ListCacheRequest {
            name: Some("www.example.org".into()),
            r#type: Some("NOPE".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);

    let ups = c
        .list_upstreams(pb::ListUpstreamsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(ups.upstreams[0].healthy);
    let plugins = c
        .list_plugins(pb::ListPluginsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plugins.plugins, ["bind", "errors", "cache", "forward"]);
    let status = c
        .get_status(pb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.healthy && status.ready, "{status:?}");

    // A bad Corefile: INVALID_ARGUMENT naming the line; the old one runs.
    let s = c
        .apply_config(pb::ApplyConfigRequest {
            corefile: ".:0 {\n    nosuchplugin\n}\n".into(),
            dry_run: false,
            if_match: None,
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(status_line(&s), Some(2), "{s:?}");
    // A stale version: FAILED_PRECONDITION.
    let next = corefile(&up, "who.test:0 {\n    bind 127.0.0.1\n    whoami\n}\n");
    let s = c
        .apply_config(pb::ApplyConfigRequest {
            corefile: next.clone(),
            dry_run: false,
            if_match: Some(9),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition);
    let applied = c
        .apply_config(pb::ApplyConfigRequest {
            corefile: next.clone(),
            dry_run: false,
            if_match: Some(1),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((applied.version, applied.persisted), (2, true));
    let who = dns.udp("who.test.", RecordType::A).await;
    assert_eq!(who.additionals.len(), 2, "the new block serves: {who:?}");

    let purged = c
        .purge_cache(pb::PurgeCacheRequest {
            name: None,
            r#type: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purged.removed, 1, "the cache was carried over the change");
}

#[tokio::test]
async fn reflection_lists_the_service_and_the_token_guards_grpc() {
    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let dir = std::env::temp_dir().join(format!("nodedns-grpc-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "grpc-token\n").unwrap();
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .arg("--admin-token-file")
        .arg(dir.join("token").display().to_string())
        .start()
        .await;
    let s = client(&agent, None)
        .await
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = client(&agent, Some("wrong"))
        .await
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let ok = client(&agent, Some("grpc-token"))
        .await
        .get_config(pb::GetConfigRequest {})
        .await;
    assert!(ok.is_ok(), "{ok:?}");

    // v1alpha: what grpcurl 1.8 asks.
    let addr = agent.admin();
    let token = Token::new("grpc-token").unwrap();
    let channel = Channel::connect(&addr.to_string(), Some(&token))
        .await
        .unwrap();
    let mut r =
        ServerReflectionClient::with_origin(channel, format!("http://{addr}").parse().unwrap());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = r
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    assert!(
        list.service.iter().any(|s| s.name == SERVICE_NAME),
        "{list:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
