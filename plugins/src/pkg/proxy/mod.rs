//! Pooled connections to one upstream DNS server (CoreDNS's
//! `plugin/pkg/proxy`), used by the `forward` plugin.
//!
//! A [`Proxy`] owns everything that talks to one upstream address:
//!
//! - **UDP**: a few sockets ([`ProxyConfig::udp_sockets`]), each bound to a
//!   random source port and `connect()`ed to the upstream, each carrying
//!   many queries in flight. A socket takes new queries for
//!   [`ProxyConfig::expire`] (or `max_age`, if shorter; at least a second),
//!   then a socket on a fresh port takes its place and the old one closes
//!   once its queries are done. Every query goes out with a fresh random ID
//!   (never one in flight on that socket) and a reply is accepted only when
//!   its ID *and* question (name compared without case, type, class) match
//!   a waiting query (a reply without a question matches none). Anything else is dropped and counted in
//!   [`ProxyStats::mismatched`]: this is what makes spoofing a reply hard.
//!   An ICMP error reported on a socket (ECONNREFUSED and the like, on the
//!   next receive or send) fails no query: it names none, and anyone who
//!   guesses the port can send one. It is counted in
//!   [`ProxyStats::unreachable`]; the queries time out if no reply comes.
//! - **TCP and TLS (DoT)**: persistent connections with pipelined queries
//!   (many in flight per connection, replies matched by ID and question, in
//!   any order), reused across exchanges and closed after
//!   [`ProxyConfig::expire`] idle. A connection that breaks before the
//!   reply (write error, EOF, reset) is retried once on a fresh connection,
//!   within the same timeout. A query that times out on a connection that
//!   has read nothing since the query was sent retires that connection: it
//!   stopped answering (a broken upstream, a NAT that dropped the flow),
//!   so it takes no more queries, closes at once, and the queries still
//!   on it are retried on a fresh one ([`ProxyStats::streams_retired`]).
//!   A query dropped before its deadline does not count.
//!
//! - **DoH, DoQ and DoH3** (`https://`, `quic://`, `h3://`; see
//!   [`Secure`]): multiplexed connections (HTTP/2 streams, QUIC streams),
//!   at most [`MUX_CONNS`] per proxy, each carrying up to
//!   [`MUX_STREAMS`] queries at once, one query per stream. A query goes
//!   to the oldest connection with a free stream; a new connection opens
//!   only when every open one is full, and past [`MUX_CONNS`] full ones
//!   the exchange is `Busy`. Queries go out with message ID 0 (RFC 8484
//!   §4.1, RFC 9250 §4.2.1) and a reply must carry ID 0 and the query's
//!   question. A connection that breaks before the reply is replaced and
//!   the query sent again once, as for TCP; a malformed reply (bad length,
//!   wrong ID or question, an HTTP status other than 200, a content type
//!   other than `application/dns-message`, a body over 65535 bytes, a
//!   stream reset) fails that exchange ([`ProxyError::BadReply`]). Idle
//!   connections close after [`ProxyConfig::expire`]; a connection that
//!   read nothing while a query timed out on it is retired, as for TCP.
//!   A query's stream is given back on every path (reply, error, timeout,
//!   cancellation); on DoQ an abandoned stream is reset with
//!   `DOQ_REQUEST_CANCELLED`, and a malformed DoQ reply closes its
//!   connection with `DOQ_PROTOCOL_ERROR` (RFC 9250 §4.3).
//!
//! Limits (all per proxy):
//!
//! - [`ProxyConfig::max_in_flight`] exchanges at a time; past it
//!   [`Proxy::exchange`] returns [`ProxyError::Busy`] at once.
//! - At most [`MAX_STREAMS`] open stream connections (TCP or TLS, busy or
//!   idle, counting those being opened). A query goes to the first
//!   connection with fewer than [`STREAM_PIPELINE_SOFT`] queries in flight;
//!   when there is none, a new connection is opened (so an upstream that
//!   answers a connection's queries one by one, as CoreDNS does, is not
//!   made to queue them); at [`MAX_STREAMS`], queries pipeline on the least
//!   loaded connection, up to [`STREAM_PIPELINE_MAX`] each, and past that
//!   the exchange is `Busy`.
//! - Idle connections beyond [`ProxyConfig::max_idle_conns`] (when not 0)
//!   are closed as soon as they become idle.
//! - A UDP reply is read into a 65535-byte buffer; a stream frame is at most
//!   65535 bytes by its length prefix. Queues are bounded: a connection's
//!   outgoing queue holds at most [`STREAM_PIPELINE_MAX`] frames.
//!
//! Nothing happens until the first exchange: [`Proxy::new`] does no I/O and
//! spawns nothing (it also runs when a Corefile is only validated, without a
//! runtime). The first exchange opens sockets and spawns one reader task
//! per UDP socket and one task per stream connection. When the `Proxy` is
//! dropped, those tasks end (they watch a channel the proxy holds) and
//! their sockets close.
//!
//! A task runs where the exchange that opened its socket runs: a UDP
//! reader on a server thread joins that thread's `LocalSet`
//! ([`crate::pkg::local`]), so the queries it wakes run in the same turn;
//! a stream task joins that thread's runtime. A proxy may outlive that
//! thread (a reload keeps the proxy and removes the thread's listener).
//! Then the task is dropped with the runtime, and its socket or connection
//! is out of the pool at once: it takes no new query, and each query
//! waiting on it is sent again, once, on a fresh one opened by the asking
//! thread, within its deadline. No query waits for a reader that is gone.
//!
//! Replies are not parsed: the 12-byte header and the question are read in
//! place. The client's ID is put back into the reply before it is returned.

mod h3;
mod https;
mod mux;
mod quic;
mod stream;
#[cfg(test)]
mod tests;
mod tls;
mod udp;
mod wire;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

pub use tls::{TlsConfigError, TlsSettings, tls_client_config};

use self::mux::MuxPool;
use self::stream::StreamPool;
use self::udp::UdpPool;
use crate::request::Header;

/// CoreDNS's default for closing idle pooled connections (`expire`).
pub const DEFAULT_EXPIRE: Duration = Duration::from_secs(10);
/// Sockets in a proxy's UDP pool unless configured otherwise.
pub const DEFAULT_UDP_SOCKETS: usize = 4;
/// Exchanges in flight per proxy unless configured otherwise.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4096;
/// Most open stream (TCP or TLS) connections per proxy, busy or idle.
pub const MAX_STREAMS: usize = 16;
/// A stream connection with fewer queries in flight than this is preferred
/// to opening a new one.
pub const STREAM_PIPELINE_SOFT: usize = 8;
/// Most queries in flight on one stream connection.
pub const STREAM_PIPELINE_MAX: usize = 256;
/// Largest DNS message: TCP's two-byte length prefix.
pub const MAX_MESSAGE: usize = 65535;
/// Most multiplexed (DoH, DoQ, DoH3) connections per proxy.
pub const MUX_CONNS: usize = 4;
/// Most queries (streams) at once on one multiplexed connection: QUIC's
/// and most HTTP/2 servers' default stream limit.
pub const MUX_STREAMS: usize = 100;
/// The path DoH and DoH3 queries are sent to (RFC 8484's example, and
/// CoreDNS's only one).
pub const DOH_PATH: &str = "/dns-query";

/// How a DoH or DoH3 query is sent (RFC 8484 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DohMethod {
    /// The query is the body (`application/dns-message`), CoreDNS's default.
    #[default]
    Post,
    /// The query is the `dns` parameter of the URL, base64url without
    /// padding.
    Get,
}

/// An encrypted, multiplexed transport (set with [`ProxyConfig::secure`],
/// always with [`ProxyConfig::tls`] for the certificate checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secure {
    /// DNS over HTTPS (RFC 8484) on HTTP/2 over TLS (ALPN `h2`).
    Https(DohMethod),
    /// DNS over QUIC (RFC 9250, ALPN `doq`).
    Quic,
    /// DNS over HTTPS on HTTP/3 (ALPN `h3`).
    H3(DohMethod),
}

/// Which wire an exchange uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// Plain DNS over UDP.
    Udp,
    /// DNS over TCP (pipelined on pooled connections).
    Tcp,
}

/// How to reach one upstream, and the pool's limits.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The upstream's address.
    pub addr: SocketAddr,
    /// `Some`: every exchange is DNS over TLS on TCP, whatever `Proto` says
    /// (or, with [`ProxyConfig::secure`], the TLS settings of that
    /// transport).
    pub tls: Option<TlsSettings>,
    /// `Some`: every exchange is DoH, DoQ or DoH3, whatever `Proto` says;
    /// needs [`ProxyConfig::tls`] (without it, connecting fails with an
    /// [`ProxyError::Io`] error of kind `InvalidInput`).
    pub secure: Option<Secure>,
    /// Close pooled TCP/TLS connections idle this long; move each UDP
    /// socket to a fresh source port this often (at least every second).
    pub expire: Duration,
    /// Stop using a TCP/TLS connection this old (it closes once its
    /// queries are answered); `None`: no age limit.
    pub max_age: Option<Duration>,
    /// Most idle pooled stream connections kept (0 = no limit but
    /// [`MAX_STREAMS`], CoreDNS's default).
    pub max_idle_conns: usize,
    /// Bind outgoing sockets to this address (port chosen by the system).
    pub source_address: Option<IpAddr>,
    /// Sockets in the UDP pool (0 reads as 1). Each carries many queries.
    pub udp_sockets: usize,
    /// Most exchanges in flight; past it [`Proxy::exchange`] returns
    /// [`ProxyError::Busy`] (0 = no limit but the pools' own).
    pub max_in_flight: usize,
}

impl ProxyConfig {
    /// Settings for `addr` with the defaults: plain DNS, CoreDNS's expire,
    /// no idle limit, [`DEFAULT_UDP_SOCKETS`], [`DEFAULT_MAX_IN_FLIGHT`].
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            secure: None,
            expire: DEFAULT_EXPIRE,
            max_age: None,
            max_idle_conns: 0,
            source_address: None,
            udp_sockets: DEFAULT_UDP_SOCKETS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// A reply and how it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanged {
    /// The reply in wire form, with the client's ID.
    pub reply: Vec<u8>,
    /// An already-open connection carried it: a pooled TCP/TLS connection
    /// or a UDP socket opened by an earlier exchange. For
    /// `coredns_proxy_conn_cache_hits_total` / `_misses_total`.
    pub reused_conn: bool,
    /// Time from the call to the reply, connection setup and a retry
    /// included.
    pub rtt: Duration,
}

/// A snapshot of a proxy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Exchanges under way.
    pub in_flight: usize,
    /// Open stream (TCP or TLS) and multiplexed (DoH, DoQ, DoH3)
    /// connections.
    pub open_streams: usize,
    /// Streams in use on multiplexed connections (one per query).
    pub mux_streams: usize,
    /// Replies dropped because their ID or question matched no query.
    pub mismatched: u64,
    /// Stream connections opened since the proxy was made.
    pub streams_opened: u64,
    /// Stream connections retired because a query timed out on them
    /// while they read nothing.
    pub streams_retired: u64,
    /// ICMP errors (port or host unreachable) reported on UDP sockets.
    /// They fail no query: see the module docs.
    pub unreachable: u64,
    /// Open UDP sockets (those retired but still serving queries too).
    pub udp_sockets: usize,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// No matching reply within the timeout.
    #[error("no reply within the timeout")]
    Timeout,
    /// The proxy's in-flight limit (or its pools' limits) was reached; the
    /// query was not sent.
    #[error("too many queries in flight to this upstream")]
    Busy,
    /// Sending, receiving or connecting failed.
    #[error("network error: {0}")]
    Io(#[from] io::Error),
    /// The TLS handshake failed (certificate not trusted, name mismatch…).
    #[error("TLS: {0}")]
    Tls(#[source] rustls::Error),
    /// The query cannot be sent: no header, not exactly one readable
    /// question, or longer than 65535 bytes.
    #[error("malformed query: it cannot be sent upstream")]
    Malformed,
    /// The upstream closed the connection before replying (after one
    /// retry on a fresh connection).
    #[error("connection closed by the upstream before the reply")]
    Closed,
    /// The upstream's reply broke the protocol: a bad length, a wrong ID
    /// or question, an HTTP status other than 200, a wrong content type, a
    /// body too big, a stream reset. Counts against the upstream.
    #[error("bad reply: {0}")]
    BadReply(String),
    /// The socket's reader stopped before the reply: the thread that ran
    /// it ended (a reload removed its listener, or the server is
    /// stopping), and so did the reader of the fresh socket the query was
    /// sent again on. Local: another attempt opens a new socket.
    #[error("the socket's reader stopped before the reply")]
    Stopped,
}

impl ProxyError {
    /// The upstream, or the path to it, failed: counts against its health.
    /// `false` for [`Busy`](Self::Busy), [`Malformed`](Self::Malformed) and
    /// [`Stopped`](Self::Stopped), which are local and say nothing about
    /// the upstream, and for an [`Io`](Self::Io) error that says this host
    /// ran out of a resource ([`is_local_exhaustion`]).
    pub fn is_network(&self) -> bool {
        match self {
            Self::Timeout | Self::Tls(_) | Self::Closed | Self::BadReply(_) => true,
            Self::Io(e) => !is_local_exhaustion(e),
            Self::Busy | Self::Malformed | Self::Stopped => false,
        }
    }
    /// No reply came in time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }
    /// The query was refused locally because of a limit; another upstream
    /// may take it.
    pub fn is_busy(&self) -> bool {
        matches!(self, Self::Busy)
    }
}

/// This host ran out of something a socket needs: file descriptors
/// (EMFILE for the process, ENFILE for the system), buffer space or memory
/// (ENOBUFS, ENOMEM). Local, like [`ProxyError::Busy`]: another upstream
/// would fail the same way, so it does not count against this one.
pub fn is_local_exhaustion(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.kind() == io::ErrorKind::OutOfMemory
        || e.raw_os_error().is_some_and(|n| {
            [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
                .iter()
                .any(|&x| x as i32 == n)
        })
}

/// Counters shared with the proxy's tasks.
#[derive(Debug, Default)]
struct Counters {
    mismatched: AtomicU64,
    streams_opened: AtomicU64,
    streams_retired: AtomicU64,
    unreachable: AtomicU64,
    /// Multiplexed (DoH, DoQ, DoH3) connections opened.
    mux_opened: AtomicU64,
    udp_sockets: AtomicUsize,
}

/// What the pools need to reach the upstream and to report.
struct Shared {
    addr: SocketAddr,
    source_address: Option<IpAddr>,
    tls: Option<TlsSettings>,
    secure: Option<Secure>,
    expire: Duration,
    max_age: Option<Duration>,
    max_idle_conns: usize,
    counters: Arc<Counters>,
    /// Ends (returns `Err`) when the proxy is dropped: tasks stop then.
    shutdown: watch::Receiver<()>,
}

/// A connection pool to one upstream. See the module docs.
pub struct Proxy {
    shared: Shared,
    max_in_flight: usize,
    in_flight: AtomicUsize,
    udp: UdpPool,
    streams: StreamPool,
    mux: MuxPool,
    /// Dropped with the proxy, which tells every task to end.
    _alive: watch::Sender<()>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.shared.addr)
            .field("tls", &self.shared.tls.is_some())
            .field("stats", &self.stats())
            .finish()
    }
}

// === impl Proxy ===

impl Proxy {
    /// A proxy to `cfg.addr`. No I/O and no task: sockets open on the
    /// first exchange.
    pub fn new(cfg: ProxyConfig) -> Self {
        let (alive, shutdown) = watch::channel(());
        Self {
            udp: UdpPool::new(cfg.udp_sockets.max(1)),
            streams: StreamPool::new(),
            mux: MuxPool::new(),
            max_in_flight: cfg.max_in_flight,
            in_flight: AtomicUsize::new(0),
            shared: Shared {
                addr: cfg.addr,
                source_address: cfg.source_address,
                tls: cfg.tls,
                secure: cfg.secure,
                expire: cfg.expire,
                max_age: cfg.max_age,
                max_idle_conns: cfg.max_idle_conns,
                counters: Arc::default(),
                shutdown,
            },
            _alive: alive,
        }
    }

    /// The upstream's address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// Sends `query` (a full DNS query in wire form; its ID is replaced on
    /// the wire by a fresh random one and the client's ID is restored in
    /// the reply) and returns the matching reply, or an error after
    /// `timeout`. With TLS configured, `proto` is ignored: it is DoT (or
    /// the [`Secure`] transport configured).
    pub async fn exchange(
        &self,
        query: &[u8],
        proto: Proto,
        timeout: Duration,
    ) -> Result<Exchanged, ProxyError> {
        let now = Instant::now();
        self.exchange_until(query, proto, now, now + timeout).await
    }

    /// [`Proxy::exchange`] for a caller that has read the clock already:
    /// `start` is when the exchange began (the RTT is measured from it)
    /// and `deadline` when it gives up.
    pub async fn exchange_until(
        &self,
        query: &[u8],
        proto: Proto,
        start: Instant,
        deadline: Instant,
    ) -> Result<Exchanged, ProxyError> {
        if query.len() > MAX_MESSAGE {
            return Err(ProxyError::Malformed);
        }
        // The pools read the question where they need it; this only
        // refuses at once what they would refuse.
        let Some(header) = Header::read(query).filter(|h| h.qdcount == 1) else {
            return Err(ProxyError::Malformed);
        };
        let client_id = header.id.to_be_bytes();
        let _slot = InFlight::take(&self.in_flight, self.max_in_flight)?;
        let stream = proto == Proto::Tcp || self.shared.tls.is_some();
        let (mut reply, reused_conn) = if let Some(secure) = self.shared.secure {
            // Boxed for the same reason as the stream path.
            Box::pin(self.mux.exchange(&self.shared, secure, query, deadline)).await?
        } else if stream {
            // Boxed: connecting (TLS included) makes a large future, and
            // the UDP path's, which every miss allocates inside the forward
            // plugin's, must stay small. It keeps its own deadline, to
            // tell a timeout (which counts against the connection) from
            // a cancellation.
            Box::pin(self.streams.exchange(&self.shared, query, deadline)).await?
        } else {
            tokio::time::timeout_at(deadline, self.udp.exchange(&self.shared, query, start))
                .await
                .map_err(|_| ProxyError::Timeout)??
        };
        if let Some(id) = reply.get_mut(..2) {
            id.copy_from_slice(&client_id);
        }
        Ok(Exchanged {
            reply,
            reused_conn,
            rtt: start.elapsed(),
        })
    }

    /// A snapshot of the proxy's counters.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            open_streams: self.streams.open_count() + self.mux.open_count(),
            mux_streams: self.mux.streams_in_use(),
            mismatched: c.mismatched.load(Ordering::Relaxed),
            streams_opened: c.streams_opened.load(Ordering::Relaxed)
                + c.mux_opened.load(Ordering::Relaxed),
            streams_retired: c.streams_retired.load(Ordering::Relaxed),
            unreachable: c.unreachable.load(Ordering::Relaxed),
            udp_sockets: c.udp_sockets.load(Ordering::Relaxed),
        }
    }

    /// Queries registered and waiting for a reply, over all sockets and
    /// connections (tests check that none leak).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.udp.waiting() + self.streams.waiting() + self.mux.streams_in_use()
    }
}

/// One slot of the in-flight limit, given back on drop.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn take(count: &'a AtomicUsize, max: usize) -> Result<Self, ProxyError> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .map_err(|_| ProxyError::Busy)?;
        Ok(Self(count))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Locks a mutex; a panic elsewhere while it was held leaves plain data
/// that is still consistent, so poisoning is ignored.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
