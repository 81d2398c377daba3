//! *loop* detects forwarding loops: at start it sends a random probe,
//! `<n>.<m>.<zone> HINFO`, to its own server; if the probe comes back
//! through the server more than twice, queries are going round in circles
//! (typically a node-local cache forwarding to a resolv.conf that points
//! at itself), and nodedns exits with a clear message rather than melt.

mod setup;
#[cfg(test)]
mod tests;

pub use setup::setup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::plugin::{Context, Flow, Plugin};
use crate::request::{is_subdomain, write_name};
use crate::setup::BoundAddrs;

/// HINFO's record type.
const HINFO: u16 = 13;
/// How long the probe keeps trying to reach the server (CoreDNS's 30 s).
const PROBE_DEADLINE: Duration = Duration::from_secs(30);
/// How long one probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// After a probe is answered, detection stays on this long for echoes.
const LINGER: Duration = Duration::from_secs(2);

/// Shared between the handler and the probe task.
#[derive(Debug)]
pub(crate) struct State {
    /// The probe name, lower-cased wire form.
    qname: Vec<u8>,
    /// The zone probed.
    zone: Vec<u8>,
    seen: AtomicUsize,
    off: AtomicBool,
}

/// What to do when a loop is found: exit the process (tests substitute).
pub(crate) type OnLoop = Arc<dyn Fn(&str) + Send + Sync>;

/// The loop handler.
pub struct Loop {
    state: Arc<State>,
    on_loop: OnLoop,
}

impl std::fmt::Debug for Loop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loop").field("state", &self.state).finish()
    }
}

/// Prints the fatal message and exits non-zero, as CoreDNS's `log.Fatalf`.
fn exit_on_loop(msg: &str) {
    tracing::error!("{msg}");
    // Through the bounded queue, and a bounded wait for it: a stalled
    // stderr must not keep the process from exiting.
    crate::pkg::output::stderr().line(&format!("[FATAL] plugin/loop: {msg}"));
    crate::pkg::output::flush_all(Duration::from_secs(2));
    std::process::exit(1);
}

impl Loop {
    pub(crate) fn new(zone: Vec<u8>, on_loop: OnLoop) -> Self {
        let mut qname = Vec::new();
        for label in [
            rand::random::<u64>().to_string(),
            rand::random::<u64>().to_string(),
        ] {
            qname.push(label.len() as u8);
            qname.extend_from_slice(label.as_bytes());
        }
        qname.extend_from_slice(&zone);
        Self {
            state: Arc::new(State {
                qname,
                zone,
                seen: AtomicUsize::new(0),
                off: AtomicBool::new(false),
            }),
            on_loop,
        }
    }

    /// The probe query in wire form.
    fn probe(&self) -> Vec<u8> {
        let id: u16 = rand::random();
        let mut q = Vec::with_capacity(12 + self.state.qname.len() + 4);
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&[0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(&self.state.qname);
        q.extend_from_slice(&HINFO.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        q
    }
}

impl Plugin for Loop {
    fn name(&self) -> &'static str {
        "loop"
    }

    fn query(&self, cx: &mut Context<'_>) -> Flow {
        let s = &self.state;
        if cx.req.qtype() != HINFO
            || s.off.load(Ordering::Relaxed)
            || !is_subdomain(cx.req.qname_lower(), &s.zone)
        {
            return Flow::Next;
        }
        if cx.req.qname_lower() == s.qname.as_slice() {
            let seen = s.seen.fetch_add(1, Ordering::AcqRel) + 1;
            if seen > 2 {
                let mut name = String::new();
                write_name(&mut name, &s.qname);
                let mut zone = String::new();
                write_name(&mut zone, &s.zone);
                (self.on_loop)(&format!(
                    "Loop ({} -> {}) detected for zone \"{zone}\", see https://coredns.io/plugins/loop#troubleshooting. Query: \"HINFO {name}\"",
                    cx.req.client(),
                    cx.server.name,
                ));
            }
        }
        Flow::Next
    }
}

/// Sends the probe to the server until one is answered (then keeps
/// watching for echoes a little longer) or the deadline passes.
async fn probe(state: Arc<State>, query: Vec<u8>, bound: Arc<BoundAddrs>) {
    let deadline = tokio::time::Instant::now() + PROBE_DEADLINE;
    while tokio::time::Instant::now() < deadline {
        let Some(addr) = bound.get().first().copied() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if exchange(addr, &query).await.is_some() {
            tokio::time::sleep(LINGER).await;
            state.off.store(true, Ordering::Relaxed);
            return;
        }
        state.seen.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    state.off.store(true, Ordering::Relaxed);
}

/// One UDP exchange with the server; `None` on timeout or error.
async fn exchange(addr: SocketAddr, query: &[u8]) -> Option<()> {
    let any: std::net::IpAddr = if addr.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let local = SocketAddr::new(any, 0);
    let sock = tokio::net::UdpSocket::bind(local).await.ok()?;
    sock.connect(addr).await.ok()?;
    sock.send(query).await.ok()?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(PROBE_TIMEOUT, sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    (n >= 2 && buf[..2] == query[..2]).then_some(())
}
