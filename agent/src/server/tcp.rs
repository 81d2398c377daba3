//! TCP: length-prefixed queries, several per connection and pipelined,
//! with an idle timeout and a bound on open connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use nodedns_plugins::{Reply, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::timeout;

use super::Tracker;
use super::chain::{Limits, handle};
use crate::config::Router;

/// TCP settings.
#[derive(Debug, Clone, Copy)]
pub struct TcpOptions {
    /// Close a connection idle this long (no query begun).
    pub idle_timeout: Duration,
    /// Most connections open at once; more are closed at accept.
    pub max_conns: usize,
}

impl Default for TcpOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(10),
            max_conns: 1024,
        }
    }
}

/// Accepts connections until shutdown.
pub(super) async fn serve(
    listener: TcpListener,
    router: Arc<ArcSwap<Router>>,
    limits: Limits,
    opts: TcpOptions,
    mut shutdown: watch::Receiver<bool>,
    tracker: Arc<Tracker>,
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
            tracing::debug!(%peer, "tcp connection limit reached; closing");
            drop(stream);
            continue;
        };
        let router = Arc::clone(&router);
        let shutdown = shutdown.clone();
        let guard = tracker.enter();
        tokio::spawn(async move {
            connection(stream, peer, router, limits, opts, shutdown).await;
            drop(permit);
            drop(guard);
        });
    }
}

/// Serves one connection: reads queries, answers each, and flushes when
/// no further query is already buffered (so pipelined answers batch).
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Arc<ArcSwap<Router>>,
    limits: Limits,
    opts: TcpOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(8 * 1024, rd);
    let mut wr = BufWriter::with_capacity(8 * 1024, wr);
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
        let answered = {
            let current = router.load();
            handle(&current, &buf, peer, Transport::Tcp, &mut reply, &limits)
        };
        if answered {
            let wire = reply.wire();
            let Ok(len) = u16::try_from(wire.len()) else {
                break;
            };
            if wr.write_all(&len.to_be_bytes()).await.is_err() || wr.write_all(wire).await.is_err()
            {
                break;
            }
        }
        if rd.buffer().is_empty()
            && timeout(opts.idle_timeout, wr.flush())
                .await
                .map_or(true, |r| r.is_err())
        {
            break;
        }
    }
    let _ = timeout(Duration::from_secs(1), async {
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    })
    .await;
}
