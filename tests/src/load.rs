//! A paced stream of UDP queries, for tests that change something under
//! load (a rollout, a reload): every query has its own ID, and every
//! answer is matched to it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::rr::RecordType;

/// How a stream went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streamed {
    /// Queries sent.
    pub sent: usize,
    /// Queries answered (each ID once).
    pub answered: usize,
    /// Of those, answers with an error rcode.
    pub failed: usize,
}

/// How long the last replies may take once the stream stops.
const DRAIN: Duration = Duration::from_secs(3);

/// Sends A queries for `name(i)` to `server` at `rate` per second, from
/// inside the network namespace at `netns` if given, until `stop` (at most
/// 65536 queries: one per ID). Each reply gets up to 3 s.
pub fn udp_stream(
    server: SocketAddr,
    rate: u32,
    stop: Arc<AtomicBool>,
    netns: Option<PathBuf>,
    name: impl Fn(usize) -> String + Send + 'static,
) -> std::thread::JoinHandle<Streamed> {
    std::thread::spawn(move || {
        if let Some(ns) = netns {
            let f = std::fs::File::open(&ns).expect("netns");
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(run(server, rate, stop, name))
    })
}

async fn run(
    server: SocketAddr,
    rate: u32,
    stop: Arc<AtomicBool>,
    name: impl Fn(usize) -> String,
) -> Streamed {
    let local: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse().expect("addr")
    } else {
        "0.0.0.0:0".parse().expect("addr")
    };
    let std_sock = std::net::UdpSocket::bind(local).expect("bind");
    let _ = nix::sys::socket::setsockopt(&std_sock, nix::sys::socket::sockopt::RcvBuf, &(4 << 20));
    std_sock.set_nonblocking(true).expect("nonblocking");
    let sock = Arc::new(tokio::net::UdpSocket::from_std(std_sock).expect("tokio socket"));
    sock.connect(server).await.expect("connect");
    let answered = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (sock, answered, failed) = (sock.clone(), answered.clone(), failed.clone());
        tokio::spawn(async move {
            let mut seen = vec![false; 65536];
            let mut buf = [0u8; 1500];
            while let Ok(n) = sock.recv(&mut buf).await {
                if n < 12 {
                    continue;
                }
                let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                if !seen[id] {
                    seen[id] = true;
                    answered.fetch_add(1, Ordering::Relaxed);
                    if buf[3] & 0x0f != 0 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let start = tokio::time::Instant::now();
    let mut sent = 0usize;
    while !stop.load(Ordering::Relaxed) && sent < 65536 {
        tokio::time::sleep_until(start + Duration::from_secs_f64(sent as f64 / f64::from(rate)))
            .await;
        let mut m = crate::client::query(&name(sent), RecordType::A);
        m.metadata.id = sent as u16;
        if sock.send(&m.to_vec().expect("encode")).await.is_ok() {
            sent += 1;
        }
    }
    crate::wait_until(DRAIN, || {
        let done = answered.load(Ordering::Relaxed) >= sent;
        async move { done }
    })
    .await;
    reader.abort();
    Streamed {
        sent,
        answered: answered.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
    }
}
