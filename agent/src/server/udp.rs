//! UDP: one socket per core with SO_REUSEPORT, each served by its own
//! thread that reads a batch with `recvmmsg`, answers each query through
//! the chain with reused buffers, and sends the batch with `sendmmsg`.
//! Each thread runs a single-threaded runtime of its own: a hit never
//! leaves the receive loop, and a miss waits on its upstream on the same
//! thread, its reply joining a later batch, with no hand-off between
//! threads.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use nix::errno::Errno;
use nix::sys::socket::{
    MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg, setsockopt, sockopt,
};
use nodedns_plugins::pkg::local::in_local_set;
use nodedns_plugins::{Reply, Transport};
use socket2::{Domain, Protocol, Socket, Type};

use hickory_proto::op::ResponseCode;
use nodedns_plugins::request::Header;

use super::UpstreamCtx;
use super::chain::{
    Handled, Limits, Pending, discard, end_batch, handle_batched, header_only, resume,
};
use crate::config::Router;

/// Datagrams read per `recvmmsg`.
const BATCH: usize = 32;
/// Largest query read; a longer one is truncated by the kernel and gets FORMERR.
const RECV_SIZE: usize = 4096;
/// How often an idle socket thread looks for a stop signal.
const POLL: Duration = Duration::from_millis(100);

/// Opens a UDP socket with SO_REUSEPORT and a large receive buffer.
pub(super) fn bind(addr: SocketAddr, rcvbuf: usize) -> io::Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        sock.set_only_v6(false)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    super::freebind(&sock, addr)?;
    // SO_RCVBUFFORCE passes rmem_max when we may (CAP_NET_ADMIN); else
    // ask for what the kernel allows.
    if rcvbuf > 0 && setsockopt(&sock, sockopt::RcvBufForce, &rcvbuf).is_err() {
        sock.set_recv_buffer_size(rcvbuf)?;
    }
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Tells a listener's socket threads to stop.
#[derive(Debug, Default)]
pub(super) struct Stop {
    /// Stop reading; finish the queries waiting on upstreams (bounded by
    /// [`STOP_GRACE`]), then close the socket.
    stop: AtomicBool,
    /// Close the socket now, dropping what is still waiting (the address
    /// is about to be bound again, and an open socket would take its share
    /// of the new one's datagrams).
    abort: AtomicBool,
    /// Wakes the threads to look at the flags.
    wake: tokio::sync::Notify,
}

impl Stop {
    /// Stops reading; the socket closes once what waits is answered.
    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_waiters();
    }
    /// Closes the socket at once.
    pub(super) fn abort(&self) {
        self.abort.store(true, Ordering::Relaxed);
        self.stop();
    }
}

/// Serves one socket until `stop` is set. Runs on its own thread, with a
/// single-threaded runtime of its own: a query that needs the network
/// continues on this thread (no hand-off to another), and its reply joins
/// the next `sendmmsg` batch.
pub(super) fn serve(
    sock: UdpSocket,
    router: Arc<ArcSwap<Router>>,
    limits: Limits,
    stop: Arc<Stop>,
    up: Arc<UpstreamCtx>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "udp: starting the socket's runtime failed");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    // Plugins' tasks started from the loop or a worker join `local`.
    local.block_on(&rt, in_local_set(run(sock, router, limits, stop, up)));
}

/// Replies that tasks on this thread finished, waiting for the next batch.
#[derive(Default)]
struct Outbox {
    replies: RefCell<Vec<(Vec<u8>, SockaddrStorage)>>,
    ready: tokio::sync::Notify,
    /// Misses taken or waiting (for a clean stop).
    running: Cell<usize>,
    /// Misses waiting for a worker.
    jobs: RefCell<std::collections::VecDeque<Job>>,
    work: tokio::sync::Notify,
    /// Workers waiting for a job: only then is `work` worth notifying.
    idle_workers: Cell<usize>,
    /// The receive loop is waiting: only then is `ready` worth notifying.
    loop_waiting: Cell<bool>,
    /// Query buffers of finished jobs, for the next ones.
    spare: RefCell<Vec<Vec<u8>>>,
}

/// Spare query buffers kept per thread, and the largest kept: enough for
/// every worker's typical query, never much memory.
const MAX_SPARE: usize = WORKERS;
const MAX_SPARE_CAPACITY: usize = 512;

/// A miss handed to this thread's workers.
struct Job {
    pending: Pending,
    raw: Vec<u8>,
    client: SocketAddr,
    addr: SockaddrStorage,
    _permit: tokio::sync::OwnedSemaphorePermit,
    _guard: super::TrackerGuard,
}

/// Misses each socket thread works on at once. The workers are started
/// once and reused, so a miss allocates no task: short-lived task memory
/// would otherwise share the thread's malloc arena with the long-lived
/// cache entries and fragment it.
const WORKERS: usize = 256;

/// Takes misses from the queue, one at a time, until the thread stops.
async fn worker(outbox: Rc<Outbox>, limits: Limits) {
    loop {
        let job = loop {
            if let Some(j) = outbox.jobs.borrow_mut().pop_front() {
                break j;
            }
            // One thread: nothing runs between the check and the wait, and a
            // notify without a waiter is kept for the next one.
            outbox.idle_workers.set(outbox.idle_workers.get() + 1);
            outbox.work.notified().await;
            outbox
                .idle_workers
                .set(outbox.idle_workers.get().saturating_sub(1));
        };
        let Job {
            pending,
            raw,
            client,
            addr,
            _permit,
            _guard,
        } = job;
        if let Some(bytes) = resume(pending, &raw, client, Transport::Udp, limits).await {
            outbox.replies.borrow_mut().push((bytes, addr));
            // A busy receive loop flushes on its next turn anyway.
            if outbox.loop_waiting.get() {
                outbox.ready.notify_one();
            }
        }
        let mut spare = outbox.spare.borrow_mut();
        if spare.len() < MAX_SPARE && raw.capacity() <= MAX_SPARE_CAPACITY {
            spare.push(raw);
        }
        drop(spare);
        outbox.running.set(outbox.running.get().saturating_sub(1));
    }
}

async fn run(
    sock: UdpSocket,
    router: Arc<ArcSwap<Router>>,
    limits: Limits,
    stop: Arc<Stop>,
    up: Arc<UpstreamCtx>,
) {
    if let Err(e) = sock.set_nonblocking(true) {
        tracing::error!(error = %e, "udp: socket setup failed");
        return;
    }
    let sock = match tokio::net::UdpSocket::from_std(sock) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "udp: socket setup failed");
            return;
        }
    };
    let fd = sock.as_raw_fd();
    let outbox = Rc::new(Outbox::default());
    for _ in 0..WORKERS {
        tokio::task::spawn_local(in_local_set(worker(Rc::clone(&outbox), limits)));
    }
    let mut recv_buf = vec![0u8; BATCH * RECV_SIZE];
    let mut recv_headers: MultiHeaders<SockaddrStorage> = MultiHeaders::preallocate(BATCH, None);
    let mut send_headers: MultiHeaders<SockaddrStorage> = MultiHeaders::preallocate(BATCH, None);
    let mut replies: Vec<Reply> = (0..BATCH).map(|_| Reply::new()).collect();
    let mut got: [(usize, Option<SockaddrStorage>, bool); BATCH] = [(0, None, false); BATCH];
    let mut to: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping_since: Option<tokio::time::Instant> = None;
    loop {
        flush_outbox(fd, &mut send_headers, &outbox);
        if stop.stop.load(Ordering::Relaxed) {
            // Stop reading; let queries waiting on upstreams finish (bounded),
            // unless told to close now.
            let since = *stopping_since.get_or_insert_with(tokio::time::Instant::now);
            if outbox.running.get() == 0
                || since.elapsed() > STOP_GRACE
                || stop.abort.load(Ordering::Relaxed)
            {
                flush_outbox(fd, &mut send_headers, &outbox);
                return;
            }
            outbox.loop_waiting.set(true);
            tokio::select! {
                () = outbox.ready.notified() => {}
                () = stop.wake.notified() => {}
                _ = tick.tick() => {}
            }
            outbox.loop_waiting.set(false);
            continue;
        }
        outbox.loop_waiting.set(true);
        let woke = tokio::select! {
            r = sock.readable() => r.map(|()| true),
            () = outbox.ready.notified() => Ok(false),
            () = stop.wake.notified() => Ok(false),
            _ = tick.tick() => Ok(false),
        };
        outbox.loop_waiting.set(false);
        match woke {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "udp receive failed");
                return;
            }
        }
        // Read a batch (try_io clears readiness when the socket is drained).
        // A short batch is not taken to mean drained: under load more
        // datagrams have come by the time this one is answered, and a read
        // that finds them is cheaper than a trip through the poller.
        let mut n = 0usize;
        let read = sock.try_io(tokio::io::Interest::READABLE, || {
            let mut chunks = recv_buf.chunks_exact_mut(RECV_SIZE);
            let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
                std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
            let results = recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            for (slot, r) in got.iter_mut().zip(results) {
                *slot = (r.bytes, r.address, r.flags.contains(MsgFlags::MSG_TRUNC));
                n += 1;
            }
            Ok(())
        });
        match read {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "udp receive failed");
                continue;
            }
        }
        // Answer each. They arrived by now: one clock read for the batch.
        let received = tokio::time::Instant::now();
        let current = router.load();
        let mut out = 0usize;
        for i in 0..n {
            let (len, addr, truncated) = got[i];
            let Some(addr) = addr else { continue };
            let Some(client) = to_std(&addr) else {
                continue;
            };
            let raw = &recv_buf[i * RECV_SIZE..i * RECV_SIZE + len.min(RECV_SIZE)];
            let raw = if truncated {
                &raw[..raw.len().min(12)]
            } else {
                raw
            };
            let reply = &mut replies[out];
            let handled = if truncated {
                // The kernel cut it: answer FORMERR from the header alone.
                match Header::read(raw) {
                    Some(h) => {
                        header_only(reply, &h, ResponseCode::FormErr);
                        Handled::Reply
                    }
                    None => Handled::Drop,
                }
            } else {
                handle_batched(
                    &current,
                    raw,
                    client,
                    Transport::Udp,
                    reply,
                    &limits,
                    received,
                )
            };
            match handled {
                Handled::Reply => {
                    to[out] = Some(addr);
                    out += 1;
                }
                Handled::Drop => {}
                Handled::Upstream(pending) => {
                    spawn_upstream(&up, &outbox, pending, raw, client, addr);
                }
            }
        }
        drop(current);
        send_batch(
            fd,
            &mut send_headers,
            replies[..out].iter().map(Reply::wire),
            &to[..out],
        );
        // Sent: the replies' durations end now (one clock read per batch).
        end_batch(&mut replies[..out]);
    }
}

/// How long a stopping socket waits for queries still at an upstream.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Sends the replies tasks finished since the last batch.
fn flush_outbox(fd: i32, headers: &mut MultiHeaders<SockaddrStorage>, outbox: &Outbox) {
    let mut pending = outbox.replies.borrow_mut();
    if pending.is_empty() {
        return;
    }
    for chunk in pending.chunks(BATCH) {
        let to: [Option<SockaddrStorage>; BATCH] =
            std::array::from_fn(|i| chunk.get(i).map(|(_, a)| *a));
        send_batch(
            fd,
            headers,
            chunk.iter().map(|(b, _)| b.as_slice()),
            &to[..chunk.len()],
        );
    }
    pending.clear();
}

/// Sends datagrams with `sendmmsg`, skipping one that fails and going on
/// with the rest. Bounded: at most one call per datagram. Never blocks: a
/// full socket buffer drops the rest (the clients retry).
fn send_batch<'a>(
    fd: i32,
    headers: &mut MultiHeaders<SockaddrStorage>,
    wires: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
    to: &[Option<SockaddrStorage>],
) {
    let total = wires.len().min(to.len()).min(BATCH);
    let mut start = 0usize;
    for _ in 0..=total {
        if start >= total {
            return;
        }
        let mut rest = wires.clone().skip(start);
        let iovs: [[IoSlice<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSlice::new(rest.next().unwrap_or_default())]);
        match sendmmsg(
            fd,
            headers,
            iovs[..total - start].iter(),
            &to[start..total],
            [],
            MsgFlags::MSG_DONTWAIT,
        ) {
            // A short count means the next message failed: the next call
            // reports its error, and the message is skipped below.
            Ok(results) => start += results.count().max(1),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return,
            Err(e) => {
                tracing::debug!(error = %e, "udp send failed");
                start += 1;
            }
        }
    }
}

/// Hands a query that needs the network to this thread's workers; its
/// reply goes out with a later batch. Over the in-flight bound, the query
/// is dropped (the client retries), as a loaded server must.
fn spawn_upstream(
    up: &Arc<UpstreamCtx>,
    outbox: &Rc<Outbox>,
    pending: Pending,
    raw: &[u8],
    client: SocketAddr,
    addr: SockaddrStorage,
) {
    let Ok(permit) = Arc::clone(&up.permits).try_acquire_owned() else {
        tracing::debug!(%client, "too many queries waiting on upstreams; dropping one");
        discard(pending, raw, client, Transport::Udp);
        return;
    };
    let mut buf = outbox.spare.borrow_mut().pop().unwrap_or_default();
    buf.clear();
    buf.extend_from_slice(raw);
    let job = Job {
        pending,
        raw: buf,
        client,
        addr,
        _permit: permit,
        _guard: up.tracker.enter(),
    };
    outbox.running.set(outbox.running.get() + 1);
    outbox.jobs.borrow_mut().push_back(job);
    if outbox.idle_workers.get() > 0 {
        outbox.work.notify_one();
    }
}

/// The client's address as std sees it, IPv4-mapped IPv6 made plain IPv4.
fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    let sa: SocketAddr = if let Some(v4) = addr.as_sockaddr_in() {
        std::net::SocketAddrV4::from(*v4).into()
    } else {
        std::net::SocketAddrV6::from(*addr.as_sockaddr_in6()?).into()
    };
    Some(SocketAddr::new(sa.ip().to_canonical(), sa.port()))
}
