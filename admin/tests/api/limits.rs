//! No client can hold the port: half requests, silence, idling and slow
//! bodies are cut off in bounded time; connections past the cap wait and
//! are served once others go; stopping is bounded.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use nodedns_admin::Limits;
use nodedns_admin::grpc::pb;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::support::*;

/// Reads until the server closes the connection; what it sent and when
/// it closed.
async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    within(async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (got, started.elapsed())
}

/// Reads one HTTP/1.1 response with a `Content-Length` body.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0_u8; 4096];
    within(async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert_ne!(
                n,
                0,
                "closed before a whole response: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    return;
                }
            }
        }
    })
    .await;
    String::from_utf8(got).unwrap()
}

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: admin.test\r\n\r\n";

fn quick(header_read: u64, idle: u64) -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(header_read),
        idle_timeout: Duration::from_millis(idle),
        ..Limits::default()
    }
}

#[tokio::test]
async fn half_a_request_is_cut_off() {
    let admin = Admin::start_with(None, quick(500, 30_000)).await;
    let mut s = TcpStream::connect(admin.addr).await.unwrap();
    s.write_all(b"GET /v1/stats HTTP/1.1\r\nHost: admin.test\r\n")
        .await
        .unwrap();
    let (_, took) = read_until_closed(&mut s).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let admin = Admin::start().await;
    let mut s = TcpStream::connect(admin.addr).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: admin.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    // The server may stop reading and close before all of it is written.
    let _ = s.write_all(head.as_bytes()).await;
    let (got, _) = read_until_closed(&mut s).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 431"), "{got}");
}

#[tokio::test]
async fn a_silent_connection_is_cut_off() {
    let admin = Admin::start_with(None, quick(500, 30_000)).await;
    let mut s = TcpStream::connect(admin.addr).await.unwrap();
    let (got, took) = read_until_closed(&mut s).await;
    assert!(got.is_empty());
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn an_http2_connection_that_never_finishes_a_request_is_cut_off() {
    let admin = Admin::start_with(None, quick(500, 30_000)).await;
    let mut s = TcpStream::connect(admin.addr).await.unwrap();
    // The preface and an empty SETTINGS frame, then nothing: h2 itself
    // would wait forever.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let (_, took) = read_until_closed(&mut s).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    // The head timeout is long, so only the idle timeout can close it.
    let admin = Admin::start_with(None, quick(30_000, 500)).await;
    let mut s = TcpStream::connect(admin.addr).await.unwrap();
    s.write_all(GET_HEALTHZ).await.unwrap();
    let response = read_response(&mut s).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, took) = read_until_closed(&mut s).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_slow_body_is_answered_503_after_the_request_timeout() {
    let limits = Limits {
        request_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let admin = Admin::start_with(None, limits).await;
    let mut s = TcpStream::connect(admin.addr).await.unwrap();
    s.write_all(b"PUT /v1/config HTTP/1.1\r\nHost: admin.test\r\nContent-Length: 100\r\n\r\n. {\n")
        .await
        .unwrap();
    let started = Instant::now();
    let response = read_response(&mut s).await;
    assert!(response.starts_with("HTTP/1.1 503"), "{response}");
    assert!(
        response.contains("\"error\":\"admin: request not answered within"),
        "{response}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(admin.fake.version(), 1);
}

/// Two connections that made a request and keep the connection open.
async fn hogs(addr: SocketAddr) -> Vec<TcpStream> {
    let mut hogs = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(GET_HEALTHZ).await.unwrap();
        let r = read_response(&mut s).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        hogs.push(s);
    }
    hogs
}

#[tokio::test]
async fn past_the_cap_a_client_waits_until_others_go() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let admin = Admin::start_with(None, limits).await;
    let hogs = hogs(admin.addr).await;
    let mut waiting = TcpStream::connect(admin.addr).await.unwrap();
    waiting.write_all(GET_HEALTHZ).await.unwrap();
    // Not served while both slots are held (a short look: the absence of
    // an answer is what is checked).
    let mut buf = [0_u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut buf)).await;
    assert!(early.is_err(), "served past the cap: {early:?}");
    drop(hogs);
    let r = read_response(&mut waiting).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[tokio::test]
async fn idle_hogs_are_shed_so_a_waiting_client_is_served() {
    let limits = Limits {
        max_connections: 2,
        idle_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let admin = Admin::start_with(None, limits).await;
    // The hogs stay open on their side; the server closes them.
    let _hogs = hogs(admin.addr).await;
    let started = Instant::now();
    let r = http1(
        admin.addr,
        req(Method::GET, "/v1/plugins").body(Bytes::new()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn stopping_is_bounded_and_closes_the_port() {
    let limits = Limits {
        shutdown_grace: Duration::from_millis(500),
        ..Limits::default()
    };
    let admin = Admin::start_with(None, limits).await;
    let addr = admin.addr;
    // An idle keep-alive connection, a half request and a watch stream.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(GET_HEALTHZ).await.unwrap();
    read_response(&mut idle).await;
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /v1/stats HTTP/1.1\r\n").await.unwrap();
    let mut c = admin.grpc(None).await;
    let mut stream = c
        .watch_stats(pb::WatchStatsRequest {
            interval_ms: 3_600_000,
        })
        .await
        .unwrap()
        .into_inner();
    within(stream.message()).await.unwrap().unwrap();

    let took = admin.stop().await;
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
    read_until_closed(&mut idle).await;
    read_until_closed(&mut half).await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after stop"
    );
}
