//! The UDP pool: a few connected sockets, each with many queries in flight
//! and one task that reads its replies.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::socket::sockopt;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};

use super::wire::{Failure, Question, Waiters};
use super::{Counters, MAX_MESSAGE, ProxyError, Shared, lock};

/// Receive buffer asked for each socket: one socket carries the replies of
/// many queries, and a burst of them must not overflow it.
const RECV_BUFFER: usize = 1 << 20;

/// Sockets opened on demand, used in turn.
pub(super) struct UdpPool {
    slots: Box<[Mutex<Option<Arc<Socket>>>]>,
    next: AtomicUsize,
}

/// One connected socket and the queries waiting on it.
struct Socket {
    socket: UdpSocket,
    waiters: Mutex<Waiters>,
    /// Its reader task ended: the slot opens a new socket.
    dead: AtomicBool,
}

impl UdpPool {
    pub(super) fn new(sockets: usize) -> Self {
        Self {
            slots: (0..sockets).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Sends `query` under a fresh ID on the next socket and waits for the
    /// matching reply. Returns the reply (with the wire ID) and whether the
    /// socket was already open. The caller bounds the wait; dropping the
    /// future removes the query from the socket's table.
    pub(super) async fn exchange(
        &self,
        shared: &Shared,
        query: &[u8],
        question: &Question,
    ) -> Result<(Vec<u8>, bool), ProxyError> {
        let (sock, reused) = self.socket(shared)?;
        let (tx, rx) = oneshot::channel();
        let (id, token) = lock(&sock.waiters)
            .insert(*question, tx)
            .ok_or(ProxyError::Busy)?;
        let _registered = Registered {
            sock: &sock,
            id,
            token,
        };
        let mut wire = query.to_vec();
        wire[..2].copy_from_slice(&id.to_be_bytes());
        sock.socket.send(&wire).await?;
        match rx.await {
            Ok(Ok(reply)) => Ok((reply, reused)),
            Ok(Err(why)) => Err(why.into()),
            Err(_) => Err(ProxyError::Closed),
        }
    }

    /// The next socket in turn, opened (with its reader task) if it is not
    /// open or its reader ended.
    fn socket(&self, shared: &Shared) -> io::Result<(Arc<Socket>, bool)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut slot = lock(&self.slots[i]);
        if let Some(s) = slot.as_ref()
            && !s.dead.load(Ordering::Acquire)
        {
            return Ok((Arc::clone(s), true));
        }
        let s = Arc::new(Socket {
            socket: open(shared)?,
            waiters: Mutex::default(),
            dead: AtomicBool::new(false),
        });
        tokio::spawn(read_replies(
            Arc::clone(&s),
            Arc::clone(&shared.counters),
            shared.shutdown.clone(),
        ));
        *slot = Some(Arc::clone(&s));
        Ok((s, false))
    }

    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.slots
            .iter()
            .filter_map(|s| lock(s).as_ref().map(|s| lock(&s.waiters).len()))
            .sum()
    }
}

/// A socket bound to a random port (of the source address, if set) and
/// connected to the upstream, so the kernel drops datagrams from anyone
/// else.
fn open(shared: &Shared) -> io::Result<UdpSocket> {
    let ip = shared.source_address.unwrap_or(if shared.addr.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    });
    let std = std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?;
    // Best effort: the kernel caps it at net.core.rmem_max (the default
    // buffer is half that); a failure leaves the default, which still works.
    if let Err(e) = nix::sys::socket::setsockopt(&std, sockopt::RcvBuf, &RECV_BUFFER) {
        tracing::debug!(error = %e, "proxy: could not enlarge the UDP receive buffer");
    }
    std.set_nonblocking(true)?;
    std.connect(shared.addr)?;
    UdpSocket::from_std(std)
}

/// A query in a socket's table; removes itself when the exchange ends,
/// however it ends (reply, error, timeout, cancellation).
struct Registered<'a> {
    sock: &'a Socket,
    id: u16,
    token: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.sock.waiters).remove(self.id, self.token);
    }
}

/// Errors a connected UDP socket reports for an ICMP message: the socket
/// still works, but the queries in flight will get no reply.
fn is_icmp(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Reads replies until the proxy is dropped (or the socket fails) and hands
/// each to its query.
async fn read_replies(
    sock: Arc<Socket>,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<()>,
) {
    let sock = EndGuard(sock);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let read = tokio::select! {
            _ = shutdown.changed() => return,
            r = sock.0.socket.recv(&mut buf) => r,
        };
        match read {
            Ok(n) => {
                let reply = &buf[..n];
                if !lock(&sock.0.waiters).deliver(reply) {
                    counters.mismatched.fetch_add(1, Ordering::Relaxed);
                    tracing::trace!(len = n, "proxy: dropped a UDP reply that matches no query");
                }
            }
            Err(e) if is_icmp(e.kind()) => {
                tracing::debug!(error = %e, "proxy: UDP upstream unreachable");
                lock(&sock.0.waiters).fail_all(&Failure::from(&e));
            }
            Err(e) => {
                tracing::warn!(error = %e, "proxy: UDP socket failed; opening another");
                lock(&sock.0.waiters).fail_all(&Failure::from(&e));
                return;
            }
        }
    }
}

/// Marks the socket dead and fails its queries when the reader ends, even
/// when the runtime drops the task.
struct EndGuard(Arc<Socket>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.dead.store(true, Ordering::Release);
        lock(&self.0.waiters).fail_all(&Failure::Closed);
    }
}
