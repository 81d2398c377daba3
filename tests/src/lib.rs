//! The nodedns test harness: the real binary under test ([`Agent`]), a
//! DNS client ([`Client`]), a fake upstream server with fault modes
//! ([`FakeUpstream`]) and [`wait_until`]. Everything stays on loopback,
//! every wait has a deadline, and everything started is stopped on drop.

pub mod agent;
pub mod client;
pub mod upstream;

pub use agent::Agent;
pub use client::Client;
pub use upstream::{FakeUpstream, Fault};

use std::future::Future;
use std::time::Duration;

/// Polls `cond` every 10 ms until it holds or `within` passes. Returns
/// whether it held.
pub async fn wait_until<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET path` over plain HTTP/1.1: the status code, or `None` if the
/// connection failed (or nothing came within 5 s).
pub async fn http_status(addr: std::net::SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).await.map(|(status, _)| status)
}

/// `GET path` over plain HTTP/1.1: the status code and the body, or
/// `None` if the connection failed (or nothing came within 5 s).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Some((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// A port free for both UDP and TCP on 127.0.0.1 right now (for Corefiles
/// that need two distinct ports; a single one should use port 0).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let Ok(tcp) = std::net::TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else { continue };
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr.port();
        }
    }
    panic!("no free port");
}
