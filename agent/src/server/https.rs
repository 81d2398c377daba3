//! DNS over HTTPS (RFC 8484) on HTTP/1.1 and h2: `GET /dns-query?dns=`
//! (base64url, no padding) and `POST /dns-query` with an
//! `application/dns-message` body, through the same chain as every
//! listener. h2 when the client's ALPN chose it, HTTP/1.1 otherwise.
//!
//! What a client gets for a broken request (RFC 8484 §4.2.1, CoreDNS's
//! `ServeHTTP`): 404 for another path, 405 for another method, 415 for a
//! POST of another media type, 413 for a body over 65535 bytes, 408 for a
//! body that does not arrive within the idle timeout, 400 for a
//! missing or undecodable `dns` parameter or a body that is not a DNS
//! query, 500 when no answer came. A 200 carries `Cache-Control: max-age`
//! from the smallest TTL of the answer (RFC 8484 §5.1, CoreDNS's
//! `MinimalTTL`).
//!
//! Limits: connections per listener, h2 streams per connection, the TLS
//! handshake and (HTTP/1.1) each request header under
//! `handshake_timeout`, connections idle for `idle_timeout` closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::Engine as _;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nodedns_plugins::{Reply, Transport};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::UpstreamCtx;
use super::chain::{Handled, Limits, handle, resume};
use super::tcp::TcpOptions;
use crate::config::Router;

/// The path queries are served on (RFC 8484's example, CoreDNS's only one).
const PATH: &str = "/dns-query";
/// RFC 8484's media type.
const MIME: &str = "application/dns-message";
/// The largest DNS message, and so the largest body taken.
pub(super) const MAX_BODY: usize = 65535;
/// The longest `dns` parameter: base64 of [`MAX_BODY`] bytes.
const MAX_B64: usize = MAX_BODY.div_ceil(3) * 4;
/// A body declared longer than [`MAX_BODY`] but at most this is read
/// (and dropped) before the 413, so that closing the connection does not
/// reset it under the reply; a longer one is not read at all.
const DRAIN: u64 = 4 * MAX_BODY as u64;
/// CoreDNS's `MinimalDefaultTTL` and `MaximumDefaultTTL` (plugin/pkg/dnsutil).
const MIN_AGE: u32 = 5;
const MAX_AGE: u32 = 3600;

/// Accepts connections until shutdown.
pub(super) async fn serve(
    listener: TcpListener,
    router: Arc<ArcSwap<Router>>,
    limits: Limits,
    opts: TcpOptions,
    shutdown: watch::Receiver<bool>,
    up: Arc<UpstreamCtx>,
) {
    let each = shutdown.clone();
    accept_loop(listener, "https", &opts, shutdown, &up, |stream, peer| {
        let svc = Svc {
            router: Arc::clone(&router),
            limits,
            up: Arc::clone(&up),
            peer,
            body_timeout: opts.idle_timeout,
        };
        let tls = router.load().tls.clone();
        let shutdown = each.clone();
        async move {
            match tls {
                None => connection(stream, false, svc, opts, shutdown).await,
                Some(config) => {
                    if let Some(tls) = super::tls::accept(config, stream, peer, &opts).await {
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        connection(tls, h2, svc, opts, shutdown).await;
                    }
                }
            }
        }
    })
    .await;
}

/// The accept loop of an HTTP listener (DoH, gRPC): until shutdown, at
/// most `--max-tcp-conns` connections at once (one more is closed at
/// once), each served by `conn` on a task of its own that shutdown waits
/// for. `conn` gets the stream and the client's address.
pub(super) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    opts: &TcpOptions,
    mut shutdown: watch::Receiver<bool>,
    up: &UpstreamCtx,
    mut conn: F,
) where
    F: FnMut(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(opts.max_conns));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "{what} accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%peer, "{what} connection limit reached; closing");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let served = conn(stream, peer);
        let guard = up.tracker.enter();
        tokio::spawn(async move {
            served.await;
            drop(permit);
            drop(guard);
        });
    }
}

/// What a request needs.
#[derive(Clone)]
struct Svc {
    router: Arc<ArcSwap<Router>>,
    limits: Limits,
    up: Arc<UpstreamCtx>,
    peer: SocketAddr,
    /// The longest a request body may take to arrive.
    body_timeout: Duration,
}

/// Activity of one connection, for the idle timeout.
#[derive(Default)]
pub(super) struct Activity {
    /// Requests being answered.
    pub(super) busy: AtomicUsize,
    /// Requests begun so far.
    pub(super) seen: AtomicU64,
}

/// Serves one connection over HTTP/1.1 or h2 until it ends, idles out,
/// or the server stops.
async fn connection<S>(
    io: S,
    h2: bool,
    svc: Svc,
    opts: TcpOptions,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let act = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let svc = svc.clone();
        let act = Arc::clone(&act);
        async move {
            act.busy.fetch_add(1, Ordering::AcqRel);
            act.seen.fetch_add(1, Ordering::AcqRel);
            let resp = svc.answer(req).await;
            act.busy.fetch_sub(1, Ordering::AcqRel);
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(io);
    let idle = opts.idle_timeout;
    if h2 {
        let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(opts.max_streams)
            .max_header_list_size(16 * 1024)
            .keep_alive_interval(None);
        let conn = b.serve_connection(io, service);
        drive(conn, &activity, idle, &mut shutdown).await;
    } else {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(TokioTimer::new())
            .header_read_timeout(opts.handshake_timeout)
            .max_buf_size(MAX_BODY + 16 * 1024);
        let conn = b.serve_connection(io, service);
        drive(conn, &activity, idle, &mut shutdown).await;
    }
}

/// A hyper connection that can be told to finish its requests and close.
pub(super) trait Graceful: Future {
    fn graceful(self: std::pin::Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: hyper::body::Body + Send + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Runs `conn`, closing it gracefully once no request has begun or been
/// in flight for `idle`, or at shutdown; then gives it `idle` to finish.
pub(super) async fn drive<C>(
    conn: C,
    activity: &Activity,
    idle: Duration,
    shutdown: &mut watch::Receiver<bool>,
) where
    C: Graceful,
{
    let mut conn = std::pin::pin!(conn);
    let mut last = activity.seen.load(Ordering::Acquire);
    // `interval` panics on zero: `--tcp-idle-timeout 0s` checks often instead.
    let mut tick = tokio::time::interval(idle.max(Duration::from_millis(10)));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tick.tick() => {
                let seen = activity.seen.load(Ordering::Acquire);
                if seen == last && activity.busy.load(Ordering::Acquire) == 0 {
                    break;
                }
                last = seen;
            }
            _ = shutdown.changed() => break,
        }
    }
    conn.as_mut().graceful();
    let _ = tokio::time::timeout(idle, conn).await;
}

impl Svc {
    /// Answers one HTTP request.
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let raw = match ask(req.method(), req.uri(), req.headers()) {
            Ok(Ask::Query(raw)) => raw,
            Ok(Ask::Body) => match body(req, self.body_timeout).await {
                Ok(raw) => raw,
                Err(code) => return response(code, Bytes::new()),
            },
            Err(StatusCode::PAYLOAD_TOO_LARGE) => {
                // Read (and drop) a body not much over the limit, so that
                // closing the connection does not reset it under the reply.
                if declared(req.headers()).is_some_and(|n| n <= DRAIN) {
                    let mut body = req.into_body();
                    let _ = tokio::time::timeout(self.body_timeout, async {
                        while let Some(Ok(_)) = body.frame().await {}
                    })
                    .await;
                }
                return response(StatusCode::PAYLOAD_TOO_LARGE, Bytes::new());
            }
            Err(code) => return response(code, Bytes::new()),
        };
        match self.dns(&raw, Transport::Https).await {
            Ok(wire) => response(StatusCode::OK, Bytes::from(wire)),
            Err(code) => response(code, Bytes::new()),
        }
    }
}

/// Runs a DoH query through the chain: the reply's wire, or the status
/// to answer instead.
pub(super) async fn exchange(
    router: &ArcSwap<Router>,
    limits: &Limits,
    up: &UpstreamCtx,
    peer: SocketAddr,
    raw: &[u8],
    transport: Transport,
) -> Result<Vec<u8>, StatusCode> {
    // A body that is not a DNS query is the client's error (CoreDNS
    // answers 400 when it cannot unpack the request).
    if nodedns_plugins::Request::parse(raw, peer, transport).is_err() {
        return Err(StatusCode::BAD_REQUEST);
    }
    let mut reply = Reply::new();
    let handled = {
        let current = router.load();
        handle(&current, raw, peer, transport, &mut reply, limits)
    };
    match handled {
        Handled::Reply => Ok(reply.wire().to_vec()),
        Handled::Drop => Err(StatusCode::INTERNAL_SERVER_ERROR),
        Handled::Upstream(p) => {
            let Ok(permit) = Arc::clone(&up.permits).try_acquire_owned() else {
                return Err(StatusCode::SERVICE_UNAVAILABLE);
            };
            let guard = up.tracker.enter();
            let out = resume(p, raw, peer, transport, *limits).await;
            drop((permit, guard));
            out.ok_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

impl Svc {
    async fn dns(&self, raw: &[u8], transport: Transport) -> Result<Vec<u8>, StatusCode> {
        exchange(
            &self.router,
            &self.limits,
            &self.up,
            self.peer,
            raw,
            transport,
        )
        .await
    }
}

/// What a request's head asks for.
pub(super) enum Ask {
    /// A GET's query, decoded.
    Query(Vec<u8>),
    /// A POST of the right media type and size: the query is its body.
    Body,
}

/// Checks a request's path, method, media type and declared length
/// (RFC 8484 §4.1, CoreDNS's `ServeHTTP`): what it asks, or the status
/// that refuses it.
pub(super) fn ask(
    method: &Method,
    uri: &hyper::Uri,
    headers: &hyper::HeaderMap,
) -> Result<Ask, StatusCode> {
    if uri.path() != PATH {
        return Err(StatusCode::NOT_FOUND);
    }
    match *method {
        Method::GET => query_param(uri.query().unwrap_or("")).map(Ask::Query),
        Method::POST => {
            let mime = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(';').next().unwrap_or("").trim());
            if !mime.is_some_and(|m| m.eq_ignore_ascii_case(MIME)) {
                return Err(StatusCode::UNSUPPORTED_MEDIA_TYPE);
            }
            if declared(headers).is_some_and(|n| n > MAX_BODY as u64) {
                return Err(StatusCode::PAYLOAD_TOO_LARGE);
            }
            Ok(Ask::Body)
        }
        _ => Err(StatusCode::METHOD_NOT_ALLOWED),
    }
}

/// The body length a request declares.
fn declared(headers: &hyper::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// A response with `code`: for 200, `wire` with the media type and
/// `Cache-Control: max-age` (RFC 8484 §5.1); for 405, `Allow`.
pub(super) fn response<B: From<Bytes>>(code: StatusCode, wire: Bytes) -> Response<B> {
    let mut h = hyper::HeaderMap::new();
    if code == StatusCode::OK {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(MIME));
        if let Ok(v) = HeaderValue::from_str(&format!("max-age={}", max_age(&wire))) {
            h.insert(header::CACHE_CONTROL, v);
        }
    } else if code == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
    }
    let body = if code == StatusCode::OK {
        wire
    } else {
        Bytes::new()
    };
    let mut r = Response::new(B::from(body));
    *r.status_mut() = code;
    *r.headers_mut() = h;
    r
}

/// The query in a GET's `dns` parameter.
fn query_param(query: &str) -> Result<Vec<u8>, StatusCode> {
    let mut found = None;
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("dns=") {
            if found.is_some() {
                return Err(StatusCode::BAD_REQUEST);
            }
            found = Some(v);
        }
    }
    let b64 = found.ok_or(StatusCode::BAD_REQUEST)?;
    if b64.len() > MAX_B64 {
        return Err(StatusCode::URI_TOO_LONG);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| StatusCode::BAD_REQUEST)
}

/// The query in a POST's body (its head already checked by [`ask`]),
/// which must arrive within `within`.
async fn body(req: Request<Incoming>, within: Duration) -> Result<Vec<u8>, StatusCode> {
    let read = Limited::new(req.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(within, read).await {
        Err(_) => Err(StatusCode::REQUEST_TIMEOUT),
        Ok(Ok(b)) => Ok(b.to_bytes().to_vec()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(StatusCode::PAYLOAD_TOO_LARGE)
        }
        Ok(Err(_)) => Err(StatusCode::BAD_REQUEST),
    }
}

/// CoreDNS's `MinimalTTLWithMaximum`: the smallest TTL of the answer,
/// authority and additional records (the OPT's is no TTL), at most an
/// hour; 5 s for an error or an empty reply.
fn max_age(wire: &[u8]) -> u32 {
    ttls(wire).unwrap_or(MIN_AGE)
}

fn ttls(wire: &[u8]) -> Option<u32> {
    let rcode = wire.get(3)? & 0x0f;
    // NOERROR and NXDOMAIN (and NODATA) only.
    if rcode != 0 && rcode != 3 {
        return None;
    }
    let count = |i: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *wire.get(i)?,
            *wire.get(i + 1)?,
        ])))
    };
    let (qd, rrs) = (count(4)?, count(6)? + count(8)? + count(10)?);
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(wire, at)? + 4;
    }
    let mut min = MAX_AGE;
    let mut records = 0;
    for _ in 0..rrs {
        at = skip_name(wire, at)?;
        let rtype = u16::from_be_bytes([*wire.get(at)?, *wire.get(at + 1)?]);
        let ttl = u32::from_be_bytes(wire.get(at + 4..at + 8)?.try_into().ok()?);
        let rdlen = usize::from(u16::from_be_bytes([*wire.get(at + 8)?, *wire.get(at + 9)?]));
        at += 10 + rdlen;
        if rtype == 41 {
            continue;
        }
        records += 1;
        min = min.min(ttl);
    }
    (records > 0).then_some(min)
}

/// The offset after a (possibly compressed) name at `at`.
fn skip_name(wire: &[u8], mut at: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *wire.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l if l & 0xc0 == 0 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_parameter() {
        // RFC 8484 §4.1.1's example query for www.example.com A.
        let raw = query_param("dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB").unwrap();
        assert_eq!(raw.len(), 33);
        assert_eq!(query_param("ct&dns=AAAB").unwrap(), vec![0, 0, 1]);
        assert_eq!(query_param(""), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            query_param("dns=AAAB&dns=AAAB"),
            Err(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            query_param("dns=AA=="),
            Err(StatusCode::BAD_REQUEST),
            "padding"
        );
        assert_eq!(query_param("dns=***"), Err(StatusCode::BAD_REQUEST));
        let long = format!("dns={}", "A".repeat(MAX_B64 + 1));
        assert_eq!(query_param(&long), Err(StatusCode::URI_TOO_LONG));
    }

    #[test]
    fn max_age_is_the_smallest_ttl() {
        use hickory_proto::op::{Message, MessageType, ResponseCode};
        use hickory_proto::rr::{Name, RData, Record, rdata::A};
        let name = Name::from_ascii("www.example.org.").unwrap();
        let mut m = Message::new(1, MessageType::Response, hickory_proto::op::OpCode::Query);
        m.add_query(hickory_proto::op::Query::query(
            name.clone(),
            hickory_proto::rr::RecordType::A,
        ));
        assert_eq!(max_age(&m.to_vec().unwrap()), MIN_AGE, "no records");
        m.add_answer(Record::from_rdata(
            name.clone(),
            300,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        m.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::A(A::new(192, 0, 2, 2)),
        ));
        assert_eq!(max_age(&m.to_vec().unwrap()), 60);
        m.answers[1].ttl = 7200;
        assert_eq!(max_age(&m.to_vec().unwrap()), 300);
        m.answers[0].ttl = 7200;
        assert_eq!(max_age(&m.to_vec().unwrap()), MAX_AGE);
        m.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(max_age(&m.to_vec().unwrap()), MIN_AGE);
        assert_eq!(max_age(&[0; 5]), MIN_AGE, "garbage");
    }
}
