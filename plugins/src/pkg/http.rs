//! Serving the process-wide HTTP endpoints (`health`, `ready`) with
//! bounds: at most [`MAX_CONNS`] connections at once (past that, new ones
//! wait in the kernel's backlog and take no descriptor), and a connection
//! that has not sent a request's headers within [`HEADER_TIMEOUT`] —
//! whether new or idle between keep-alive requests — is closed. A stop
//! closes every connection, keep-alive ones included, before it returns.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How long a connection may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections served at once per endpoint.
pub const MAX_CONNS: usize = 64;
/// Pause after a failed accept (out of descriptors, say), so the loop does
/// not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `stop` resolves (or its sender is
/// dropped); then stops accepting, closes every connection and returns.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: axum::Router,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNS));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = accept(&listener, &permits) => accepted,
        };
        let Some((permit, stream)) = accepted else {
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
            }
        };
        let service = TowerToHyperService::new(app.clone());
        conns.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(endpoint = name, %error, "http connection ended");
            }
        });
    }
    drop(listener);
    conns.shutdown().await;
}

/// Waits for a free connection slot, then accepts. `None` when accept
/// failed (logged).
async fn accept(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> Option<(tokio::sync::OwnedSemaphorePermit, tokio::net::TcpStream)> {
    let permit = Arc::clone(permits).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, _)) => Some((permit, stream)),
        Err(error) => {
            tracing::warn!(%error, "http endpoint: accept failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start() -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/x", axum::routing::get(|| async { "OK" }));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve("test", listener, app, rx));
        (addr, tx, task)
    }

    /// Reads until EOF or error; `true` if the peer closed.
    async fn closed(s: &mut tokio::net::TcpStream) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    }

    #[tokio::test]
    async fn a_partial_request_is_closed_after_the_header_timeout() {
        let (addr, _stop, _task) = start().await;
        // Taken before connecting: the server's timer starts after.
        let sent = std::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /x HTT").await.unwrap();
        assert!(
            tokio::time::timeout(HEADER_TIMEOUT * 6, closed(&mut s))
                .await
                .is_ok(),
            "still open after {:?}",
            HEADER_TIMEOUT * 6
        );
        assert!(sent.elapsed() >= HEADER_TIMEOUT);
    }

    #[tokio::test]
    async fn stop_closes_keep_alive_connections() {
        let (addr, stop, task) = start().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        // Stopped means the connection is closed, not left serving.
        assert!(
            tokio::time::timeout(Duration::from_secs(10), closed(&mut s))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_unaccepted() {
        let (addr, _stop, _task) = start().await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNS {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"G").await.unwrap();
            held.push(s);
        }
        // One more connects (the kernel's backlog) but is not served
        // while every slot is held.
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        extra
            .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), extra.read(&mut buf))
                .await
                .is_err(),
            "served past the cap"
        );
        // Freeing one slot lets it in.
        drop(held.pop());
        let n = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
}
