//! The self-check CoreDNS's *health* runs (`overloaded.go`): once a second
//! it asks its own `/health` and records how long the answer took; a
//! request that fails (no connection, no HTTP answer, past the timeout)
//! is counted. A slow answer says the process is overloaded. It runs as
//! long as its endpoint serves.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Histogram, IntCounter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::pkg::metrics::{counter, histogram};

/// Time between checks (CoreDNS's).
pub(super) const INTERVAL: Duration = Duration::from_secs(1);
/// How long one check may take (CoreDNS's client timeout).
pub(super) const TIMEOUT: Duration = Duration::from_secs(3);
/// An answer slower than this is logged (CoreDNS's).
const SLOW: Duration = Duration::from_secs(1);
/// The most of the answer read: its status line.
const MAX_READ: usize = 256;

/// `coredns_health_request_duration_seconds`, with CoreDNS's
/// `plugin.SlimTimeBuckets` (0.25 ms times 10, five buckets).
pub(super) static DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "coredns_health_request_duration_seconds",
        "Histogram of the time (in seconds) each request took.",
        prometheus::exponential_buckets(0.00025, 10.0, 5).unwrap_or_default(),
    )
});

/// `coredns_health_request_failures_total`.
pub(super) static FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "coredns_health_request_failures_total",
        "The number of times the health check failed.",
    )
});

/// Where to ask an endpoint bound to `addr`: a wildcard address becomes
/// loopback (CoreDNS asks `localhost`).
pub(super) fn target(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

/// Checks `addr`'s `/health` every [`INTERVAL`], forever: the endpoint's
/// server drops this future when it stops.
pub(super) async fn run(addr: SocketAddr) {
    LazyLock::force(&DURATION);
    LazyLock::force(&FAILURES);
    let mut tick = tokio::time::interval_at(Instant::now() + INTERVAL, INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check_once(addr).await;
    }
}

/// One check: records its duration, and counts it if it failed.
pub(super) async fn check_once(addr: SocketAddr) {
    let start = Instant::now();
    let result = tokio::time::timeout(TIMEOUT, get_health(addr)).await;
    let took = start.elapsed();
    DURATION.observe(took.as_secs_f64());
    match result {
        Ok(Ok(())) if took > SLOW => {
            tracing::warn!(%addr, ?took, "Local health request took more than 1s");
        }
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            FAILURES.inc();
            tracing::warn!(%addr, %error, "Local health request failed");
        }
        Err(_) => {
            FAILURES.inc();
            tracing::warn!(%addr, ?TIMEOUT, "Local health request timed out");
        }
    }
}

/// `GET /health` on a connection of its own, up to the answer's status
/// line. Any HTTP answer will do, as for CoreDNS's client.
async fn get_health(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
        super::PATH
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = [0u8; MAX_READ];
    let mut n = 0;
    while n < buf.len() && !buf[..n].contains(&b'\n') {
        let k = stream.read(&mut buf[n..]).await?;
        if k == 0 {
            break;
        }
        n += k;
    }
    if buf[..n].starts_with(b"HTTP/1.") {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no HTTP answer",
        ))
    }
}
