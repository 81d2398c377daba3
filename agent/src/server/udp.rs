//! UDP: one socket per core with SO_REUSEPORT, each served by its own
//! thread that reads a batch with `recvmmsg`, answers each query through
//! the chain with reused buffers, and sends the batch with `sendmmsg`.
//! A thread per socket keeps the hit path free of any scheduler.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use nix::errno::Errno;
use nix::sys::socket::{
    MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg, sendto, setsockopt, sockopt,
};
use nodedns_plugins::{Reply, Transport};
use socket2::{Domain, Protocol, Socket, Type};

use hickory_proto::op::ResponseCode;
use nodedns_plugins::request::Header;

use super::UpstreamCtx;
use super::chain::{Handled, Limits, Pending, handle, header_only, resume};
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
    // SO_RCVBUFFORCE passes rmem_max when we may (CAP_NET_ADMIN); else
    // ask for what the kernel allows.
    if rcvbuf > 0 && setsockopt(&sock, sockopt::RcvBufForce, &rcvbuf).is_err() {
        sock.set_recv_buffer_size(rcvbuf)?;
    }
    sock.set_read_timeout(Some(POLL))?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// Serves one socket until `stop` is set. Runs on its own thread.
pub(super) fn serve(
    sock: Arc<UdpSocket>,
    router: Arc<ArcSwap<Router>>,
    limits: Limits,
    stop: Arc<AtomicBool>,
    up: Arc<UpstreamCtx>,
) {
    let fd = sock.as_raw_fd();
    let mut recv_buf = vec![0u8; BATCH * RECV_SIZE];
    let mut recv_headers: MultiHeaders<SockaddrStorage> = MultiHeaders::preallocate(BATCH, None);
    let mut send_headers: MultiHeaders<SockaddrStorage> = MultiHeaders::preallocate(BATCH, None);
    let mut replies: Vec<Reply> = (0..BATCH).map(|_| Reply::new()).collect();
    let mut got: [(usize, Option<SockaddrStorage>, bool); BATCH] = [(0, None, false); BATCH];
    let mut to: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
    while !stop.load(Ordering::Relaxed) {
        // Read a batch.
        let n = {
            let mut chunks = recv_buf.chunks_exact_mut(RECV_SIZE);
            let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
                std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
            match recvmmsg(
                fd,
                &mut recv_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(results) => {
                    let mut n = 0;
                    for (slot, r) in got.iter_mut().zip(results) {
                        *slot = (r.bytes, r.address, r.flags.contains(MsgFlags::MSG_TRUNC));
                        n += 1;
                    }
                    n
                }
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "udp receive failed");
                    // Back off so a persistent error does not spin a core.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(POLL);
                    continue;
                }
            }
        };
        // Answer each.
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
                handle(&current, raw, client, Transport::Udp, reply, &limits)
            };
            match handled {
                Handled::Reply => {
                    to[out] = Some(addr);
                    out += 1;
                }
                Handled::Drop => {}
                Handled::Upstream(pending) => {
                    spawn_upstream(&up, &sock, pending, raw, client, addr, limits);
                }
            }
        }
        drop(current);
        send_batch(fd, &mut send_headers, &replies[..out], &to[..out]);
    }
}

/// Sends the replies with `sendmmsg`, skipping one that fails and going on
/// with the rest. Bounded: at most one call per reply.
fn send_batch(
    fd: i32,
    headers: &mut MultiHeaders<SockaddrStorage>,
    replies: &[Reply],
    to: &[Option<SockaddrStorage>],
) {
    let mut start = 0usize;
    for _ in 0..=replies.len() {
        if start >= replies.len() {
            return;
        }
        let rest = &replies[start..];
        let mut wires = rest.iter().map(Reply::wire);
        let iovs: [[IoSlice<'_>; 1]; BATCH] =
            std::array::from_fn(|_| [IoSlice::new(wires.next().unwrap_or_default())]);
        match sendmmsg(
            fd,
            headers,
            iovs[..rest.len()].iter(),
            &to[start..],
            [],
            MsgFlags::empty(),
        ) {
            // A short count means the next message failed: the next call
            // reports its error, and the message is skipped below.
            Ok(results) => start += results.count().max(1),
            Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::debug!(error = %e, "udp send failed");
                start += 1;
            }
        }
    }
}

/// Continues a query that needs the network on a task, then sends its
/// reply from there. Over the in-flight bound, the query is dropped (the
/// client retries), as a loaded server must.
fn spawn_upstream(
    up: &Arc<UpstreamCtx>,
    sock: &Arc<UdpSocket>,
    pending: Pending,
    raw: &[u8],
    client: SocketAddr,
    addr: SockaddrStorage,
    limits: Limits,
) {
    let Ok(permit) = Arc::clone(&up.permits).try_acquire_owned() else {
        tracing::debug!(%client, "too many queries waiting on upstreams; dropping one");
        return;
    };
    let guard = up.tracker.enter();
    let sock = Arc::clone(sock);
    let raw = raw.to_vec();
    up.runtime.spawn(async move {
        if let Some(bytes) = resume(pending, &raw, client, Transport::Udp, limits).await {
            send_one(&sock, &bytes, &addr).await;
        }
        drop(permit);
        drop(guard);
    });
}

/// Sends one datagram without blocking the runtime: a full socket buffer
/// is retried a few times, then the reply is dropped.
async fn send_one(sock: &UdpSocket, bytes: &[u8], to: &SockaddrStorage) {
    for _ in 0..4 {
        match sendto(sock.as_raw_fd(), bytes, to, MsgFlags::MSG_DONTWAIT) {
            Ok(_) => return,
            Err(Errno::EAGAIN | Errno::EINTR) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(e) => {
                tracing::debug!(error = %e, "udp send failed");
                return;
            }
        }
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
