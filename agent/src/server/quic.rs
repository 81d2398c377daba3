//! The QUIC listeners: DNS over QUIC (RFC 9250, `quic://`) here, and the
//! QUIC endpoint that DNS over HTTP/3 ([`super::h3`], `https3://`) shares
//! with it: one quinn endpoint on one UDP socket per listening address.
//!
//! DoQ: one query per client-initiated bidirectional stream, a 2-byte
//! length prefix, message ID 0 (the reply's too), the stream finished by
//! the client after its query and by us after the reply. RFC 9250 §4.3's
//! error codes: a message ID that is not 0, a stream that ends inside its
//! message or carries more than it, or a message too short to hold a DNS
//! header closes the connection with DOQ_PROTOCOL_ERROR (§4.2.1, as
//! CoreDNS); a query whose stream stalls past the idle timeout is reset
//! with DOQ_REQUEST_CANCELLED; a query that gets no answer (a plugin
//! dropped it, the upstream path failed) resets its stream with
//! DOQ_INTERNAL_ERROR; a connection closed at shutdown says DOQ_NO_ERROR
//! (one idle past QUIC's idle timeout just ends, as QUIC has it).
//!
//! Limits: connections per listener (past it a new one is refused at the
//! QUIC layer, CONNECTION_REFUSED, before any handshake work), streams at
//! once per connection (QUIC's own stream credit: the client cannot open
//! more), no unidirectional streams for DoQ, the TLS handshake under
//! `handshake_timeout`, QUIC's idle timeout `idle_timeout`, a message at
//! most 65535 bytes (the prefix cannot say more).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::ResponseCode;
use nodedns_plugins::{Reply, Transport};
use quinn::VarInt;
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use super::UpstreamCtx;
use super::chain::{Handled, Limits, abandon, handle, resume};
use super::tcp::TcpOptions;
use crate::config::Router;

/// RFC 9250 §4.3 error codes.
pub(super) const DOQ_NO_ERROR: u32 = 0x0;
const DOQ_INTERNAL_ERROR: u32 = 0x1;
const DOQ_PROTOCOL_ERROR: u32 = 0x2;
const DOQ_REQUEST_CANCELLED: u32 = 0x3;
/// Unidirectional streams an HTTP/3 client may open: control and the two
/// QPACK streams, and room for grease.
const H3_UNI_STREAMS: u32 = 8;
/// Connections waiting for their first packets to be looked at; past it
/// quinn refuses new ones itself.
const MAX_INCOMING: usize = 256;

/// Builds the quinn endpoint of a `quic://` or `https3://` listener on
/// `socket`, with `tls` (the block's, offering the transport's ALPN).
pub(super) fn endpoint(
    socket: std::net::UdpSocket,
    tls: Option<Arc<rustls::ServerConfig>>,
    transport: Transport,
    opts: &TcpOptions,
) -> std::io::Result<quinn::Endpoint> {
    let server = tls.map(|t| server_config(t, transport, opts)).transpose()?;
    socket.set_nonblocking(true)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// quinn's server configuration for a rustls one, with the listener's
/// limits.
fn server_config(
    tls: Arc<rustls::ServerConfig>,
    transport: Transport,
    opts: &TcpOptions,
) -> std::io::Result<quinn::ServerConfig> {
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("QUIC needs TLS 1.3: {e}"),
        )
    })?;
    let mut t = quinn::TransportConfig::default();
    let uni = if transport == Transport::Https3 {
        H3_UNI_STREAMS
    } else {
        0
    };
    t.max_concurrent_bidi_streams(VarInt::from_u32(opts.max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(uni))
        // A zero idle timeout would mean none at all to QUIC.
        .max_idle_timeout(
            quinn::IdleTimeout::try_from(opts.idle_timeout.max(Duration::from_millis(10))).ok(),
        );
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    sc.transport_config(Arc::new(t));
    sc.max_incoming(MAX_INCOMING);
    Ok(sc)
}

/// What a connection of a QUIC listener needs.
pub(super) struct Ctx {
    pub(super) router: Arc<ArcSwap<Router>>,
    pub(super) limits: Limits,
    pub(super) opts: TcpOptions,
    pub(super) up: Arc<UpstreamCtx>,
    pub(super) transport: Transport,
}

/// Accepts connections until shutdown, then lets those open finish
/// (each closes at shutdown once its streams are answered).
pub(super) async fn serve(
    endpoint: quinn::Endpoint,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(ctx.opts.max_conns.max(1)));
    // The rustls configuration the endpoint's quinn one was built from;
    // a reload that changes the block's `tls` brings a new one.
    let mut built: Option<(Arc<rustls::ServerConfig>, Arc<quinn::ServerConfig>)> = None;
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = shutdown.changed() => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(peer = %incoming.remote_address(), transport = %ctx.transport,
                "connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        let Some(tls) = ctx.router.load().tls.clone() else {
            incoming.refuse();
            continue;
        };
        let config = match &built {
            Some((t, c)) if Arc::ptr_eq(t, &tls) => Arc::clone(c),
            _ => match server_config(Arc::clone(&tls), ctx.transport, &ctx.opts) {
                Ok(c) => {
                    let c = Arc::new(c);
                    built = Some((tls, Arc::clone(&c)));
                    c
                }
                Err(e) => {
                    tracing::warn!(error = %e, "quic: refusing a connection");
                    incoming.refuse();
                    continue;
                }
            },
        };
        let peer = incoming.remote_address();
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let connecting = match incoming.accept_with(config) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "quic: accept failed");
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        let shutdown = shutdown.clone();
        let guard = ctx.up.tracker.enter();
        tokio::spawn(async move {
            match tokio::time::timeout(ctx.opts.handshake_timeout, connecting).await {
                Ok(Ok(conn)) => {
                    if ctx.transport == Transport::Https3 {
                        super::h3::connection(conn, peer, &ctx, shutdown).await;
                    } else {
                        connection(conn, peer, &ctx, shutdown).await;
                    }
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "quic handshake failed"),
                // Dropping the handshake closes it.
                Err(_) => tracing::debug!(%peer, "quic handshake timed out"),
            }
            drop(permit);
            drop(guard);
        });
    }
    // New connections are refused from here on; those open close at
    // shutdown themselves.
    endpoint.set_server_config(None);
    let _ = tokio::time::timeout(
        ctx.opts.idle_timeout + Duration::from_secs(1),
        endpoint.wait_idle(),
    )
    .await;
}

/// A query's buffers, reused across the streams of a connection so that a
/// cache hit allocates nothing of ours.
struct Slot {
    buf: Vec<u8>,
    reply: Reply,
}

/// Streams being answered on a connection, so shutdown can wait for them.
#[derive(Default)]
pub(super) struct Streams {
    open: AtomicUsize,
    done: Notify,
}

/// Held by a stream's task.
pub(super) struct StreamGuard(Arc<Streams>);

impl Streams {
    pub(super) fn enter(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(Arc::clone(self))
    }
    /// Waits (at most `within`) until no stream is being answered.
    pub(super) async fn drain(&self, within: Duration) {
        let _ = tokio::time::timeout(within, async {
            loop {
                let n = self.done.notified();
                if self.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                n.await;
            }
        })
        .await;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

/// Serves the DoQ streams of one connection until it closes or the server
/// stops.
async fn connection(
    conn: quinn::Connection,
    peer: SocketAddr,
    ctx: &Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let streams = Arc::new(Streams::default());
    let pool: Arc<Mutex<Vec<Slot>>> = Arc::new(Mutex::new(Vec::new()));
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (send, recv) = tokio::select! {
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, reason = %e, "doq connection ended");
                    return;
                }
            },
            _ = shutdown.changed() => break,
        };
        let guard = streams.enter();
        let conn = conn.clone();
        let ctx = Arc::clone(ctx);
        let pool = Arc::clone(&pool);
        tokio::spawn(async move {
            let slot = pool.lock().ok().and_then(|mut p| p.pop());
            let mut slot = slot.unwrap_or_else(|| Slot {
                buf: Vec::new(),
                reply: Reply::new(),
            });
            stream(&conn, peer, &ctx, send, recv, &mut slot).await;
            if let Ok(mut p) = pool.lock()
                && p.len() < ctx.opts.max_streams as usize
            {
                p.push(slot);
            }
            drop(guard);
        });
    }
    // Shutdown: the streams begun get their answers, then the connection
    // closes with no error.
    streams.drain(ctx.opts.idle_timeout).await;
    conn.close(VarInt::from_u32(DOQ_NO_ERROR), b"");
}

/// Why a query could not be read.
enum ReadFail {
    /// The client broke RFC 9250: close the connection.
    Protocol,
    /// The stream or connection went away: nothing to say.
    Gone,
}

/// Reads one length-prefixed query and the stream's end into `buf`.
async fn read_query(recv: &mut quinn::RecvStream, buf: &mut Vec<u8>) -> Result<(), ReadFail> {
    use quinn::ReadExactError;
    let fail = |e: ReadExactError| match e {
        ReadExactError::FinishedEarly(_) => ReadFail::Protocol,
        ReadExactError::ReadError(_) => ReadFail::Gone,
    };
    let mut prefix = [0u8; 2];
    recv.read_exact(&mut prefix).await.map_err(fail)?;
    let len = usize::from(u16::from_be_bytes(prefix));
    if len < 12 {
        return Err(ReadFail::Protocol);
    }
    buf.clear();
    buf.resize(len, 0);
    recv.read_exact(buf).await.map_err(fail)?;
    // The client finishes the stream after its query (§4.2): anything
    // more is not DoQ.
    let mut more = [0u8; 1];
    match recv.read(&mut more).await {
        Ok(None) => Ok(()),
        Ok(Some(_)) => Err(ReadFail::Protocol),
        Err(_) => Err(ReadFail::Gone),
    }
}

/// Answers the query on one stream.
async fn stream(
    conn: &quinn::Connection,
    peer: SocketAddr,
    ctx: &Ctx,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    slot: &mut Slot,
) {
    let cancel = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream, code: u32| {
        let _ = recv.stop(VarInt::from_u32(code));
        let _ = send.reset(VarInt::from_u32(code));
    };
    let within = ctx.opts.idle_timeout.max(Duration::from_millis(10));
    match tokio::time::timeout(within, read_query(&mut recv, &mut slot.buf)).await {
        Ok(Ok(())) => {}
        Ok(Err(ReadFail::Protocol)) => {
            tracing::debug!(%peer, "doq: malformed stream; closing the connection");
            conn.close(VarInt::from_u32(DOQ_PROTOCOL_ERROR), b"malformed stream");
            return;
        }
        Ok(Err(ReadFail::Gone)) => return,
        Err(_) => {
            tracing::debug!(%peer, "doq: query not received in time; cancelling the stream");
            cancel(&mut send, &mut recv, DOQ_REQUEST_CANCELLED);
            return;
        }
    }
    let raw = &slot.buf;
    // §4.2.1: the message ID must be 0.
    if raw[0] != 0 || raw[1] != 0 {
        tracing::debug!(%peer, "doq: message ID not 0; closing the connection");
        conn.close(VarInt::from_u32(DOQ_PROTOCOL_ERROR), b"message ID not 0");
        return;
    }
    let handled = {
        let current = ctx.router.load();
        handle(
            &current,
            raw,
            peer,
            Transport::Quic,
            &mut slot.reply,
            &ctx.limits,
        )
    };
    let owned;
    let wire: &[u8] = match handled {
        Handled::Reply => slot.reply.wire(),
        Handled::Drop => {
            cancel(&mut send, &mut recv, DOQ_INTERNAL_ERROR);
            return;
        }
        Handled::Upstream(p) => {
            owned = upstream(ctx, p, raw, peer).await;
            match &owned {
                Some(w) => w,
                None => {
                    cancel(&mut send, &mut recv, DOQ_INTERNAL_ERROR);
                    return;
                }
            }
        }
    };
    let Ok(len) = u16::try_from(wire.len()) else {
        cancel(&mut send, &mut recv, DOQ_INTERNAL_ERROR);
        return;
    };
    let written = tokio::time::timeout(within, async {
        send.write_all(&len.to_be_bytes()).await?;
        send.write_all(wire).await?;
        send.finish().map_err(|_| quinn::WriteError::ClosedStream)
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        let _ = send.reset(VarInt::from_u32(DOQ_INTERNAL_ERROR));
    }
}

/// The upstream path of a query: REFUSED when too many already wait.
async fn upstream(
    ctx: &Ctx,
    p: super::chain::Pending,
    raw: &[u8],
    peer: SocketAddr,
) -> Option<Vec<u8>> {
    let permit: Option<OwnedSemaphorePermit> = Arc::clone(&ctx.up.permits).try_acquire_owned().ok();
    let Some(permit) = permit else {
        tracing::debug!(%peer, "too many queries waiting on upstreams; refusing one");
        return abandon(
            p,
            raw,
            peer,
            Transport::Quic,
            ctx.limits,
            ResponseCode::Refused,
        );
    };
    let guard = ctx.up.tracker.enter();
    let out = resume(p, raw, peer, Transport::Quic, ctx.limits).await;
    drop((permit, guard));
    out
}
