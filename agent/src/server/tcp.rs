//! TCP and DNS over TLS: length-prefixed queries, several per connection
//! and pipelined, with an idle timeout and a bound on open connections.
//! A `tls://` listener runs the same loop over the TLS stream
//! ([`super::tls`] does the handshake).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::ResponseCode;
use nodedns_plugins::{Reply, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::timeout;

use super::UpstreamCtx;
use super::chain::{Handled, Limits, abandon, handle, resume};
use crate::config::Router;

/// Settings of the stream listeners (TCP, DoT, DoH, gRPC).
#[derive(Debug, Clone, Copy)]
pub struct TcpOptions {
    /// Close a connection idle this long (no query begun).
    pub idle_timeout: Duration,
    /// Most connections open at once, per listener; more are closed at
    /// accept.
    pub max_conns: usize,
    /// Close a connection whose TLS handshake (or, on DoH, first request
    /// header) takes longer.
    pub handshake_timeout: Duration,
    /// Most HTTP/2 streams open at once on one DoH connection.
    pub max_streams: u32,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(10),
            max_conns: 1024,
            handshake_timeout: Duration::from_secs(5),
            max_streams: 100,
        }
    }
}

/// Replies a connection may have waiting on upstreams at once; past it,
/// the connection stops reading until one completes.
const PENDING_PER_CONN: usize = 128;
/// Replies queued for the writer.
const WRITE_QUEUE: usize = 64;

/// Accepts connections until shutdown; `transport` is [`Transport::Tcp`]
/// or [`Transport::Tls`] (a TLS handshake first, when the block has `tls`).
pub(super) async fn serve(
    listener: TcpListener,
    router: Arc<ArcSwap<Router>>,
    limits: Limits,
    opts: TcpOptions,
    mut shutdown: watch::Receiver<bool>,
    up: Arc<UpstreamCtx>,
    transport: Transport,
) {
    let permits = Arc::new(Semaphore::new(opts.max_conns));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%peer, %transport, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let router = Arc::clone(&router);
        let shutdown = shutdown.clone();
        let guard = up.tracker.enter();
        let up = Arc::clone(&up);
        let tls = match transport {
            Transport::Tls => router.load().tls.clone(),
            _ => None,
        };
        tokio::spawn(async move {
            let conn = Conn {
                peer,
                transport,
                router,
                limits,
                opts,
                up,
            };
            match tls {
                None => {
                    let (rd, wr) = stream.into_split();
                    conn.run(rd, wr, shutdown).await;
                }
                Some(config) => {
                    if let Some(tls) = super::tls::accept(config, stream, peer, &opts).await {
                        let (rd, wr) = tokio::io::split(tls);
                        conn.run(rd, wr, shutdown).await;
                    }
                }
            }
            drop(permit);
            drop(guard);
        });
    }
}

/// One connection's facts.
struct Conn {
    peer: SocketAddr,
    transport: Transport,
    router: Arc<ArcSwap<Router>>,
    limits: Limits,
    opts: TcpOptions,
    up: Arc<UpstreamCtx>,
}

impl Conn {
    /// Serves one connection: reads queries and answers each as it completes
    /// (out of order when some wait on an upstream), through a writer task.
    async fn run<R, W>(self, rd: R, wr: W, mut shutdown: watch::Receiver<bool>)
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            transport,
            router,
            limits,
            opts,
            up,
        } = self;
        let mut rd = BufReader::with_capacity(8 * 1024, rd);
        let (tx, rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
        let writer = tokio::spawn(write_replies(wr, rx, opts.idle_timeout));
        let pending = Arc::new(Semaphore::new(PENDING_PER_CONN));
        let mut buf = Vec::new();
        let mut reply = Reply::new();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let len = tokio::select! {
                r = timeout(opts.idle_timeout, rd.read_u16()) => match r {
                    Ok(Ok(len)) => usize::from(len),
                    _ => break,
                },
                _ = shutdown.changed() => break,
            };
            buf.resize(len, 0);
            match timeout(opts.idle_timeout, rd.read_exact(&mut buf)).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
            let handled = {
                let current = router.load();
                handle(&current, &buf, peer, transport, &mut reply, &limits)
            };
            match handled {
                Handled::Reply => {
                    if tx.send(reply.wire().to_vec()).await.is_err() {
                        break;
                    }
                }
                Handled::Drop => {}
                Handled::Upstream(p) => {
                    let Ok(slot) = Arc::clone(&pending).acquire_owned().await else {
                        break;
                    };
                    let Ok(permit) = Arc::clone(&up.permits).try_acquire_owned() else {
                        // A stream client has no retry timer to fall back on:
                        // tell it now rather than let it wait out the idle timeout.
                        tracing::debug!(%peer, "too many queries waiting on upstreams; refusing one");
                        drop(slot);
                        if let Some(bytes) =
                            abandon(p, &buf, peer, transport, limits, ResponseCode::Refused)
                            && tx.send(bytes).await.is_err()
                        {
                            break;
                        }
                        continue;
                    };
                    let guard = up.tracker.enter();
                    let tx = tx.clone();
                    let raw = buf.clone();
                    tokio::spawn(async move {
                        if let Some(bytes) = resume(p, &raw, peer, transport, limits).await {
                            let _ = tx.send(bytes).await;
                        }
                        drop((slot, permit, guard));
                    });
                }
            }
        }
        // The writer ends once the last pending reply is sent.
        drop(tx);
        let _ = writer.await;
    }
}

/// Writes length-prefixed replies as they arrive, flushing when none is queued.
async fn write_replies<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    limit: Duration,
) {
    let mut out = BufWriter::with_capacity(8 * 1024, wr);
    while let Some(mut bytes) = rx.recv().await {
        loop {
            let Ok(len) = u16::try_from(bytes.len()) else {
                return;
            };
            let written = timeout(limit, async {
                out.write_all(&len.to_be_bytes()).await?;
                out.write_all(&bytes).await
            })
            .await;
            if !matches!(written, Ok(Ok(()))) {
                return;
            }
            match rx.try_recv() {
                Ok(next) => bytes = next,
                Err(_) => break,
            }
        }
        if !matches!(timeout(limit, out.flush()).await, Ok(Ok(()))) {
            return;
        }
    }
    let _ = timeout(Duration::from_secs(1), async {
        let _ = out.shutdown().await;
    })
    .await;
}
