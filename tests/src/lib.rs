//! The nodedns test harness: the real binary under test ([`Agent`]), a
//! DNS client ([`Client`]), a fake upstream server with fault modes
//! ([`FakeUpstream`]), fake encrypted upstreams (DoH, DoQ, DoH3:
//! [`SecureUpstream`]), a fake Kubernetes API server ([`FakeKubeApi`]) and
//! [`wait_until`]. Everything stays on loopback,
//! every wait has a deadline, and everything started is stopped on drop.

pub mod agent;
pub mod client;
pub mod kubeapi;
pub mod load;
pub mod netns;
pub mod quic_client;
pub mod secure_client;
pub mod secure_upstream;
pub mod upstream;

pub use agent::Agent;
pub use client::Client;
pub use kubeapi::FakeKubeApi;
pub use secure_upstream::{SecureFault, SecureKind, SecureUpstream};
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

/// A reply to [`http_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: String,
}

impl HttpReply {
    /// The first header of this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request (`Connection: close`) with extra header lines
/// (`"If-Match: \"3\""`) and a body: the reply, or `None` if the
/// connection failed or nothing complete came within 30 s.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> Option<HttpReply> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.ok()?;
        // A server may answer (413) before taking the whole body.
        let _ = s.write_all(body).await;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&buf[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let raw = &buf[split + 4..];
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
        Some(HttpReply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .ok()
        .flatten()
}

/// Joins a chunked body.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&raw[..eol]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 right now (for Corefiles
/// that need two distinct ports; a single one should use port 0).
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` different ports free on 127.0.0.1 for both TCP and UDP: each is held
/// until all are chosen, so two calls in a row cannot hand out one port
/// twice.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let mut held = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    for port in &mut ports {
        let found = (0..50).find_map(|_| {
            let tcp = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
            let addr = tcp.local_addr().ok()?;
            let udp = std::net::UdpSocket::bind(addr).ok()?;
            Some((tcp, udp, addr.port()))
        });
        let Some((tcp, udp, p)) = found else {
            panic!("no free port");
        };
        held.push((tcp, udp));
        *port = p;
    }
    ports
}
