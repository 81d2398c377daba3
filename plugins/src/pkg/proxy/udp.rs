//! The UDP pool: a few connected sockets, each with many queries in flight
//! and one task that reads its replies.

use std::cell::RefCell;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{MsgFlags, MultiHeaders, recvmmsg, sendmsg, sockopt};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use super::wire::{Failure, Question, Waiters};
use super::{Counters, ProxyError, Shared, lock};
use crate::request::{HEADER_LEN, MAX_NAME, read_question};

/// Receive buffer asked for each socket: one socket carries the replies of
/// many queries, and a burst of them must not overflow it.
const RECV_BUFFER: usize = 1 << 20;

/// Sockets opened on demand. A thread keeps to one of them, so that on a
/// server thread (which has a runtime of its own) a query, its socket's
/// reader and the reply stay on that thread, and the replies of many
/// queries come back on one socket, read in batches.
pub(super) struct UdpPool {
    slots: Box<[Mutex<Option<Arc<Socket>>>]>,
}

/// This thread's place among the threads that use UDP pools: thread `i`
/// uses socket `i mod sockets` of every pool.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|s| *s)
}

/// One connected socket and the queries waiting on it.
struct Socket {
    socket: UdpSocket,
    waiters: Mutex<Waiters>,
    /// Its reader task ended: the slot opens a new socket.
    dead: AtomicBool,
    /// When it was opened: it takes new queries for [`rotate_after`].
    born: Instant,
    /// Replaced in its slot by a socket on a fresh port: it takes no new
    /// query, and its reader ends once the queries on it are done.
    retired: AtomicBool,
    /// Poked when a retired socket's last query leaves.
    drained: Notify,
}

impl Socket {
    /// Retires the socket; wakes its reader if no query is left on it.
    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        if lock(&self.waiters).is_empty() {
            self.drained.notify_one();
        }
    }
}

/// How long a UDP socket takes new queries before a socket on a fresh
/// random port replaces it: `expire`, or `max_age` if shorter, at least a
/// second. So the source port an off-path attacker must guess changes over
/// the life of the process, as a pooled connection does in CoreDNS.
fn rotate_after(shared: &Shared) -> Duration {
    shared
        .max_age
        .map_or(shared.expire, |age| age.min(shared.expire))
        .max(MIN_ROTATE)
}

/// The shortest life of a UDP socket, whatever `expire` says.
const MIN_ROTATE: Duration = Duration::from_secs(1);

impl UdpPool {
    pub(super) fn new(sockets: usize) -> Self {
        Self {
            slots: (0..sockets).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Sends `query` under a fresh ID on this thread's socket and waits for the
    /// matching reply. Returns the reply (with the wire ID) and whether the
    /// socket was already open. The caller bounds the wait; dropping the
    /// future removes the query from the socket's table.
    ///
    /// A socket's reader runs where the socket was opened (see
    /// [`UdpPool::socket`]). When that thread ends first (a reload removed
    /// its listener) while the pool lives on, the socket is dead at once:
    /// it takes no new query, and the queries waiting on it are woken with
    /// [`ProxyError::Stopped`]; each is sent again, once, on a fresh
    /// socket whose reader runs on the asking thread, within the same
    /// deadline.
    pub(super) async fn exchange(
        &self,
        shared: &Shared,
        query: &[u8],
        now: Instant,
    ) -> Result<(Vec<u8>, bool), ProxyError> {
        match self.exchange_once(shared, query, now).await {
            // Boxed: rare, and the first attempt's future stays the only
            // large one.
            Err(ProxyError::Stopped) => {
                Box::pin(self.exchange_once(shared, query, Instant::now())).await
            }
            r => r,
        }
    }

    /// One attempt of [`UdpPool::exchange`].
    async fn exchange_once(
        &self,
        shared: &Shared,
        query: &[u8],
        now: Instant,
    ) -> Result<(Vec<u8>, bool), ProxyError> {
        // Read here and moved into the table at once: a question is 264
        // bytes, which the future would otherwise carry while it waits.
        let question = Question::of_query(query).ok_or(ProxyError::Malformed)?;
        let (sock, reused) = self.socket(shared, now)?;
        let (tx, rx) = oneshot::channel();
        let (id, token) = {
            let mut waiters = lock(&sock.waiters);
            // Its reader ended after this thread took it (another thread
            // on the same slot retired it): no reply would be read.
            if sock.dead.load(Ordering::Acquire) {
                return Err(ProxyError::Stopped);
            }
            waiters.insert(question, tx).ok_or(ProxyError::Busy)?
        };
        let _registered = Registered {
            sock: &sock,
            id,
            token,
        };
        // A UDP socket is nearly always writable: send at once, and only
        // when it is not, wait in a boxed future (the wait is 200-odd bytes
        // that every exchange's future would carry otherwise).
        let mut sent = sock
            .socket
            .try_io(Interest::WRITABLE, || send_now(&sock.socket, id, query));
        if let Err(e) = &sent
            && is_icmp(e.kind())
        {
            // An ICMP error for an earlier datagram, reported by this send
            // (and cleared by it): not this query's; send it again.
            shared.counters.unreachable.fetch_add(1, Ordering::Relaxed);
            sent = sock
                .socket
                .try_io(Interest::WRITABLE, || send_now(&sock.socket, id, query));
        }
        match sent {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Box::pin(
                    sock.socket
                        .async_io(Interest::WRITABLE, || send_now(&sock.socket, id, query)),
                )
                .await?;
            }
            Err(e) => return Err(e.into()),
        }
        match rx.await {
            Ok(Ok(reply)) => Ok((reply, reused)),
            Ok(Err(why)) => Err(why.into()),
            Err(_) => Err(ProxyError::Closed),
        }
    }

    /// This thread's socket, opened (with its reader task) if it is not
    /// open or its reader ended.
    fn socket(&self, shared: &Shared, now: Instant) -> io::Result<(Arc<Socket>, bool)> {
        let i = thread_slot() % self.slots.len();
        let mut slot = lock(&self.slots[i]);
        if let Some(s) = slot.as_ref()
            && !s.dead.load(Ordering::Acquire)
        {
            if now.saturating_duration_since(s.born) < rotate_after(shared) {
                return Ok((Arc::clone(s), true));
            }
            // Time for a fresh port; the old socket serves its queries out.
            s.retire();
        }
        let s = Arc::new(Socket {
            socket: open(shared)?,
            waiters: Mutex::default(),
            dead: AtomicBool::new(false),
            born: now,
            retired: AtomicBool::new(false),
            drained: Notify::new(),
        });
        shared.counters.udp_sockets.fetch_add(1, Ordering::Relaxed);
        // Made before the task, so that a task dropped before its first
        // poll (its runtime shutting down) still marks the socket dead.
        let guard = EndGuard(Arc::clone(&s), Arc::clone(&shared.counters));
        // On a server thread, the reader runs in its LocalSet: the queries
        // it wakes are polled in the same turn.
        crate::pkg::local::spawn(read_replies(guard, shared.shutdown.clone()));
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

/// Sends `query` under the wire ID `id`, without waiting: the ID and the
/// rest of the query go out as two slices of one datagram, so the query is
/// not copied.
fn send_now(socket: &UdpSocket, id: u16, query: &[u8]) -> io::Result<()> {
    let id = id.to_be_bytes();
    let rest = query.get(2..).unwrap_or_default();
    let parts = [IoSlice::new(&id), IoSlice::new(rest)];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &parts,
        &[],
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map(drop)
    .map_err(io::Error::from)
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
        let mut waiters = lock(&self.sock.waiters);
        waiters.remove(self.id, self.token);
        let empty = waiters.is_empty();
        drop(waiters);
        if empty && self.sock.retired.load(Ordering::Acquire) {
            self.sock.drained.notify_one();
        }
    }
}

/// Errors a connected UDP socket reports for an ICMP message (once, on the
/// next receive or send): the socket still works.
fn is_icmp(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Replies read per `recvmmsg`.
const RECV_BATCH: usize = 16;
/// Room for each reply of a batch. A longer reply is cut by the kernel; it
/// is handed on as a truncated answer (TC, the question only), which the
/// forward plugin asks again over TCP.
const RECV_SLOT: usize = 4096;

/// The buffers `recvmmsg` fills, one set per thread (not per socket): the
/// readers of a thread run one at a time, and a reply is copied out before
/// the next read.
struct Batch {
    headers: MultiHeaders<()>,
    bufs: Vec<u8>,
}

thread_local! {
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Reads replies until the proxy is dropped (or the socket fails) and hands
/// each to its query.
async fn read_replies(sock: EndGuard, mut shutdown: watch::Receiver<()>) {
    let counters = &sock.1;
    loop {
        if sock.0.retired.load(Ordering::Acquire) && lock(&sock.0.waiters).is_empty() {
            return;
        }
        let ready = tokio::select! {
            _ = shutdown.changed() => return,
            () = sock.0.drained.notified() => continue,
            // An ICMP error alone does not wake this: the next datagram
            // or the next send reports it.
            r = sock.0.socket.readable() => r,
        };
        if let Err(e) = ready {
            tracing::warn!(error = %e, "proxy: UDP socket failed; opening another");
            lock(&sock.0.waiters).fail_all(&Failure::from(&e));
            return;
        }
        // Drain it: a short batch means the socket is empty, and says so to
        // the runtime without another read (edge-triggered readiness comes
        // back with the next datagram).
        let mut drained = false;
        for _ in 0..MAX_BATCHES_PER_WAKE {
            let read = sock.0.socket.try_io(Interest::READABLE, || {
                let n = read_batch(&sock.0, counters)?;
                if n < RECV_BATCH {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match read {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Fails no query: anyone who can guess the source port can
                // send one, and it names no query. Those waiting time out
                // if no reply comes, and the health check decides.
                Err(e) if is_icmp(e.kind()) => {
                    counters.unreachable.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "proxy: ICMP error on a UDP socket; ignored");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "proxy: UDP socket failed; opening another");
                    lock(&sock.0.waiters).fail_all(&Failure::from(&e));
                    return;
                }
            }
        }
        // A socket still full after that many batches: let other tasks run
        // before reading on.
        if !drained {
            tokio::task::yield_now().await;
        }
    }
}

/// Batches read in a row before the reader lets other tasks run.
const MAX_BATCHES_PER_WAKE: usize = 8;

/// Reads one batch of replies with `recvmmsg` and delivers them. Returns
/// how many datagrams it read.
fn read_batch(sock: &Socket, counters: &Counters) -> io::Result<usize> {
    BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let b = b.get_or_insert_with(|| Batch {
            headers: MultiHeaders::preallocate(RECV_BATCH, None),
            bufs: vec![0u8; RECV_BATCH * RECV_SLOT],
        });
        let Batch { headers, bufs } = b;
        let mut got = [(0usize, false); RECV_BATCH];
        let n = {
            let mut chunks = bufs.chunks_exact_mut(RECV_SLOT);
            let mut slices: [[IoSliceMut<'_>; 1]; RECV_BATCH] =
                std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
            let results = recvmmsg(
                sock.socket.as_raw_fd(),
                headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            let mut n = 0;
            for (slot, r) in got.iter_mut().zip(results) {
                *slot = (r.bytes, r.flags.contains(MsgFlags::MSG_TRUNC));
                n += 1;
            }
            n
        };
        let mut waiters = lock(&sock.waiters);
        for (i, &(len, cut)) in got.iter().enumerate().take(n) {
            let Some(buf) = bufs.get_mut(i * RECV_SLOT..(i + 1) * RECV_SLOT) else {
                continue;
            };
            let len = if cut {
                truncate_to_question(buf)
            } else {
                len.min(RECV_SLOT)
            };
            if !waiters.deliver(&buf[..len]) {
                counters.mismatched.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(len, "proxy: dropped a UDP reply that matches no query");
            }
        }
        Ok(n)
    })
}

/// Turns the start of a reply the kernel cut into a truncated answer: the
/// header (TC set, no records) and the question. Returns its length, or 0
/// when not even the question is there (it then matches no query).
fn truncate_to_question(buf: &mut [u8]) -> usize {
    let mut name = [0u8; MAX_NAME];
    let Some((_, _, _, end)) = read_question(buf, &mut name) else {
        return 0;
    };
    buf[2] |= 0x02;
    buf[4..6].copy_from_slice(&1u16.to_be_bytes());
    buf[6..HEADER_LEN].fill(0);
    end
}

/// Marks the socket dead and fails its queries when the reader ends, even
/// when the runtime drops the task (its thread ended): the socket then
/// takes no new query, and those waiting are sent again on a fresh one.
struct EndGuard(Arc<Socket>, Arc<Counters>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.dead.store(true, Ordering::Release);
        lock(&self.0.waiters).fail_all(&Failure::Stopped);
        self.1.udp_sockets.fetch_sub(1, Ordering::Relaxed);
    }
}
