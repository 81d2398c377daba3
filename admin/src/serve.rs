//! One port for REST and gRPC: each connection speaks HTTP/1.1 or
//! cleartext HTTP/2 (hyper-util's auto builder tells them apart), and one
//! axum router sends `/nodedns.admin.v1.Admin/…` and the reflection
//! services to tonic, everything else to the REST handlers.
//!
//! No client can hold the port: at most [`Limits::max_connections`]
//! connections are served (more wait in the kernel's listen backlog until
//! one closes); a connection must finish a request head within
//! [`Limits::header_read_timeout`] of opening, and is closed after
//! [`Limits::idle_timeout`] with no request in flight (which also ends a
//! slow trickle of HTTP/2 frames that never completes a request); a request
//! must be answered within [`Limits::request_timeout`] (a `WatchStats`
//! stream excepted: its headers are its answer); bodies and gRPC messages
//! are capped at [`Limits::max_body`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::middleware::from_fn_with_state;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt as _;
use tracing::{debug, warn};

use crate::{Control, Token, auth, grpc, rest};

/// Largest request head (HTTP/1.1 buffer, HTTP/2 header list).
const MAX_HEAD: usize = 64 * 1024;
/// Concurrent HTTP/2 streams on one connection.
const MAX_STREAMS: u32 = 32;
/// HTTP/2 pings find a dead peer behind a long `WatchStats` interval.
const KEEPALIVE: Duration = Duration::from_secs(20);
/// After a failed `accept` (out of descriptors, say), wait before the
/// next, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The admin plane's bounds. [`Limits::default`] is what [`serve`] uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (default 64). Past it, new connections
    /// are not accepted until one closes; they wait in the listen backlog.
    pub max_connections: usize,
    /// A new connection must send a whole request head within this
    /// (default 5 s), as must every HTTP/1.1 request after it.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this
    /// (default 30 s).
    pub idle_timeout: Duration,
    /// A request must be answered within this (default 30 s): body read
    /// and handler. A `WatchStats` stream is not cut by it.
    pub request_timeout: Duration,
    /// Request bodies and gRPC messages (default 1 MiB): 413 JSON or
    /// gRPC `OUT_OF_RANGE` beyond.
    pub max_body: usize,
    /// `WatchStats` streams open at once (default 16).
    pub max_watchers: usize,
    /// At shutdown, open connections get this long to finish (default
    /// 5 s); then they are closed.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            max_body: 1024 * 1024,
            max_watchers: 16,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves the admin plane (REST and gRPC) on `listener` with the default
/// [`Limits`] until `shutdown` completes.
///
/// With `token`, every request needs `Authorization: Bearer <token>`.
/// Check the address with [`auth::listen_addr`] before binding.
///
/// At shutdown it stops accepting at once, asks open connections to
/// finish (HTTP/2 `GOAWAY`, `WatchStats` streams end), and returns within
/// [`Limits::shutdown_grace`] and a little more, closing what is left.
pub async fn serve(
    listener: TcpListener,
    control: Arc<dyn Control>,
    token: Option<Token>,
    shutdown: impl Future<Output = ()> + Send,
) {
    serve_with(listener, control, token, Limits::default(), shutdown).await;
}

/// [`serve`] with other [`Limits`].
pub async fn serve_with(
    listener: TcpListener,
    control: Arc<dyn Control>,
    token: Option<Token>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let (stop_tx, stop) = watch::channel(false);
    let app = app(control, token, &limits, stop.clone());
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first, then accept: at the cap, connections wait in the
        // backlog, not in memory here.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => p.expect("invariant: the slot semaphore is never closed"),
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                debug!(%peer, "admin connection");
                connections.spawn(connection(
                    stream,
                    app.clone(),
                    limits.clone(),
                    stop.clone(),
                    permit,
                ));
            }
            Err(e) => {
                warn!(error = %e, "admin: accept failed");
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    stop_tx.send_replace(true);
    // Each connection closes itself within the grace; the margin covers
    // the scheduling of that many tasks. What is left is aborted on drop.
    let all_done = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.shutdown_grace + Duration::from_secs(1), all_done)
        .await
        .is_err()
    {
        warn!("admin: connections still open after the shutdown grace; closing them");
    }
}

/// The whole router: gRPC and REST routes, JSON fallbacks, the request
/// deadline, and (outermost, so nothing runs unauthenticated) the token.
fn app(
    control: Arc<dyn Control>,
    token: Option<Token>,
    limits: &Limits,
    stop: watch::Receiver<bool>,
) -> Router {
    let app = grpc::routes(control.clone(), limits.max_body, limits.max_watchers, stop)
        .merge(rest::router(control, limits.max_body))
        // Replaces tonic's own fallback: JSON 404, or UNIMPLEMENTED for gRPC.
        .fallback(rest::not_found)
        .method_not_allowed_fallback(rest::method_not_allowed)
        .layer(from_fn_with_state(limits.request_timeout, rest::deadline));
    match token {
        Some(token) => app.layer(from_fn_with_state(token, auth::require_token)),
        None => app,
    }
}

/// Serves one connection until it ends, idles out, or the plane stops.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: Arc<Limits>,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    // How many requests are in flight on this connection, from the
    // request head until the response body is done or dropped.
    let (busy_tx, mut busy) = watch::channel(0_usize);
    let busy_tx = Arc::new(busy_tx);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let guard = InFlight::enter(&busy_tx);
        let app = app.clone();
        async move {
            let response = match app.oneshot(request.map(Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(response.map(|body| Guarded {
                body,
                _guard: guard,
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(KEEPALIVE))
        .keep_alive_timeout(KEEPALIVE)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEAD as u32);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // The first request must come quickly; later ones may idle longer.
    let mut idle_deadline = Instant::now() + limits.header_read_timeout;
    let mut watching = true;
    loop {
        let idle = *busy.borrow_and_update() == 0;
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    debug!(error = %e, "admin connection ended");
                }
                return;
            }
            () = tokio::time::sleep_until(idle_deadline), if idle => {
                debug!("admin: closing a connection with no request in flight");
                return;
            }
            changed = busy.changed(), if watching => {
                // A request began or ended (perhaps both, on another
                // thread, since the last look): the idle clock restarts.
                // While one is in flight the clock is not looked at.
                watching = changed.is_ok();
                idle_deadline = Instant::now() + limits.idle_timeout;
            }
            () = stopped(&mut stop) => {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.shutdown_grace, conn.as_mut()).await;
                return;
            }
        }
    }
}

/// Completes when the admin plane stops (or its stop signal is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, before any await.
    let _ = stop.wait_for(|s| *s).await;
}

/// Counts one request in flight while it lives.
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn enter(busy: &Arc<watch::Sender<usize>>) -> Self {
        busy.send_modify(|n| *n += 1);
        Self(busy.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that keeps its request counted in flight until it is
/// sent or dropped, so a long `WatchStats` stream is not idle.
struct Guarded {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
