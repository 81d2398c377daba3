//! DNS over HTTPS on HTTP/3 (`https3://`): RFC 8484's `GET` and `POST` on
//! `/dns-query` over h3 on a QUIC connection ([`super::quic`] accepts it,
//! ALPN `h3`). The request and response rules are the DoH listener's
//! ([`super::https`]): the same statuses (404, 405, 415, 413, 400, 408,
//! 500, 503), media type, `Cache-Control` and body limit.
//!
//! Limits: those of the QUIC endpoint (connections, request streams at
//! once, handshake and idle timeouts), request headers at most 16 KiB, a
//! body that must arrive within the idle timeout.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use hyper::StatusCode;
use nodedns_plugins::Transport;
use tokio::sync::watch;

use super::https::{Ask, MAX_BODY, ask, exchange, response};
use super::quic::{Ctx, Streams};

/// HTTP/3's error codes (RFC 9114 §8.1).
const H3_NO_ERROR: u32 = 0x100;
/// The largest request header section taken (CoreDNS's
/// `DefaultHTTPS3MaxHeaderBytes`).
const MAX_HEADERS: u64 = 16 * 1024;

type Server = h3::server::Connection<h3_quinn::Connection, Bytes>;
type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Serves the requests of one connection until it closes or the server
/// stops (then a GOAWAY, the requests begun answered, and a close).
pub(super) async fn connection(
    conn: quinn::Connection,
    peer: SocketAddr,
    ctx: &Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = h3::server::builder();
    builder.max_field_section_size(MAX_HEADERS);
    let built = builder.build(h3_quinn::Connection::new(conn.clone()));
    let mut h3conn: Server = match tokio::time::timeout(ctx.opts.handshake_timeout, built).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "h3 setup failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "h3 setup timed out");
            return;
        }
    };
    let streams = Arc::new(Streams::default());
    loop {
        if *shutdown.borrow() {
            break;
        }
        let resolver = tokio::select! {
            r = h3conn.accept() => match r {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(%peer, reason = %e, "h3 connection ended");
                    return;
                }
            },
            _ = shutdown.changed() => break,
        };
        let guard = streams.enter();
        let ctx = Arc::clone(ctx);
        tokio::spawn(async move {
            let within = ctx.opts.idle_timeout;
            match tokio::time::timeout(within, resolver.resolve_request()).await {
                Ok(Ok((req, stream))) => request(&ctx, peer, req, stream).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "h3 request refused"),
                Err(_) => tracing::debug!(%peer, "h3 request headers not received in time"),
            }
            drop(guard);
        });
    }
    let _ = tokio::time::timeout(ctx.opts.idle_timeout, h3conn.shutdown(0)).await;
    streams.drain(ctx.opts.idle_timeout).await;
    conn.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"");
}

/// Answers one request.
async fn request(ctx: &Ctx, peer: SocketAddr, req: http::Request<()>, mut stream: Stream) {
    let within = ctx.opts.idle_timeout;
    let answer = match ask(req.method(), req.uri(), req.headers()) {
        Ok(Ask::Query(raw)) => Ok(raw),
        Ok(Ask::Body) => body(&mut stream, within).await,
        Err(code) => Err(code),
    };
    let answer = match answer {
        Ok(raw) => {
            exchange(
                &ctx.router,
                &ctx.limits,
                &ctx.up,
                peer,
                &raw,
                Transport::Https3,
            )
            .await
        }
        Err(code) => Err(code),
    };
    let (code, wire) = match answer {
        Ok(wire) => (StatusCode::OK, Bytes::from(wire)),
        Err(code) => (code, Bytes::new()),
    };
    let resp: http::Response<Bytes> = response(code, wire);
    let (parts, data) = resp.into_parts();
    let sent = tokio::time::timeout(within, async {
        stream
            .send_response(http::Response::from_parts(parts, ()))
            .await?;
        if !data.is_empty() {
            stream.send_data(data).await?;
        }
        stream.finish().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::debug!(%peer, "h3 response not sent");
    }
    if code != StatusCode::OK {
        // A body we did not read (a refused POST): no more of it is wanted.
        stream.stop_sending(h3::error::Code::H3_NO_ERROR);
    }
}

/// A POST's body, at most [`MAX_BODY`] bytes, within `within`.
async fn body(stream: &mut Stream, within: std::time::Duration) -> Result<Vec<u8>, StatusCode> {
    let read = async {
        let mut out = Vec::new();
        loop {
            match stream.recv_data().await {
                Ok(Some(mut chunk)) => {
                    if out.len() + chunk.remaining() > MAX_BODY {
                        return Err(StatusCode::PAYLOAD_TOO_LARGE);
                    }
                    while chunk.has_remaining() {
                        let part = chunk.chunk();
                        let n = part.len();
                        out.extend_from_slice(part);
                        chunk.advance(n);
                    }
                }
                Ok(None) => return Ok(out),
                Err(_) => return Err(StatusCode::BAD_REQUEST),
            }
        }
    };
    match tokio::time::timeout(within, read).await {
        Ok(r) => r,
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
    }
}
