//! The plugin contract: how the chain asks a plugin about a query.
//!
//! A plugin has a synchronous `query` step, run in chain order, that
//! returns a [`Flow`]; and an optional `response` step, run in reverse order
//! for every plugin that passed the query on, whoever produced the reply.
//! This replaces CoreDNS's recursive `ServeDNS(next)`: recursion through
//! async code would box a future per plugin per query.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use tokio::time::Instant;

use crate::request::{Request, Transport};

/// What a plugin decided about a query.
#[must_use]
#[derive(Debug)]
pub enum Flow {
    /// The reply is in `cx.reply` (CoreDNS: an rcode that means "written").
    Answered,
    /// Not mine, or fall through: ask the next plugin.
    Next,
    /// Nothing written: the server writes a reply with this rcode
    /// (SERVFAIL, REFUSED, FORMERR, NOTIMP, as CoreDNS's `ClientWrite`).
    /// The error, if any, is what the `errors` plugin logs.
    Fail(ResponseCode, Option<PluginError>),
    /// Send nothing at all.
    Drop,
    /// The answer needs the network: the server copies the query and calls
    /// this plugin's [`Plugin::upstream`] exchange off the receive path.
    /// Returned only by plugins whose `upstream()` is `Some`.
    Upstream,
}

/// Errors a plugin reports with [`Flow::Fail`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The chain ran out: the last plugin passed the query on.
    #[error("plugin/{plugin}: no next plugin found")]
    NoNextPlugin {
        /// The plugin that passed the query on (or `server`).
        plugin: &'static str,
    },
    /// Every upstream is marked down and `failfast_all_unhealthy_upstreams` is set,
    /// or no upstream could be tried before the deadline.
    #[error("plugin/{plugin}: no healthy upstreams")]
    NoHealthy {
        /// The plugin.
        plugin: &'static str,
    },
    /// `max_concurrent` queries are already waiting on upstreams.
    #[error("plugin/{plugin}: concurrent queries exceeded maximum {max}")]
    MaxConcurrent {
        /// The plugin.
        plugin: &'static str,
        /// The configured maximum.
        max: usize,
    },
    /// The last upstream tried failed (timeout, connection, TLS).
    #[error("plugin/{plugin}: {to}: {source}")]
    Upstream {
        /// The plugin.
        plugin: &'static str,
        /// The upstream's address.
        to: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A reply could not be built or encoded.
    #[error("plugin/{plugin}: encoding the reply: {source}")]
    Encode {
        /// The plugin that failed.
        plugin: &'static str,
        /// What hickory said.
        #[source]
        source: hickory_proto::ProtoError,
    },
}

/// The plugin contract. See the module docs.
pub trait Plugin: Send + Sync + 'static {
    /// The directive name, as in the Corefile.
    fn name(&self) -> &'static str;
    /// Request phase, in chain order. Synchronous: no blocking, and no
    /// allocation on the hot path.
    fn query(&self, cx: &mut Context<'_>) -> Flow;
    /// Response phase, in reverse order, for every plugin that returned
    /// [`Flow::Next`]. The reply (or the failure) is in `cx.reply`.
    fn response(&self, _cx: &mut Context<'_>) {}
    /// The network step of a plugin that returns [`Flow::Upstream`]
    /// (forward, grpc). Others have none.
    fn upstream(&self) -> Option<&dyn Upstream> {
        None
    }
    /// How the query ended, once its reply is final (encoded, cut to the
    /// client's size) or it is dropped: for the plugin that asked with
    /// [`Reply::report_to`] in its `query` step (the block's
    /// *prometheus*), and no other. Called exactly once per such query,
    /// whatever path it took.
    fn finished(&self, _cx: &mut Context<'_>, _end: &End<'_>) {}
}

/// How a query ended, for [`Plugin::finished`].
#[derive(Clone, Copy)]
pub struct End<'a> {
    /// The block's chain.
    pub chain: &'a [Box<dyn Plugin>],
    /// The plugin (an index into `chain`) that wrote the reply; `None` when
    /// the server wrote it (a failure's rcode) or nothing was sent.
    pub by: Option<usize>,
    /// The rcode sent (with EDNS's extended bits when the reply was built
    /// as a message); 0 when nothing was sent (as CoreDNS's recorder).
    pub rcode: u16,
    /// The bytes sent; `None` when nothing was.
    pub size: Option<usize>,
}

impl fmt::Debug for End<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("End")
            .field("by", &self.by)
            .field("rcode", &self.rcode)
            .field("size", &self.size)
            .finish()
    }
}

/// The boxed future an [`Upstream`] exchange returns.
pub type UpstreamFuture<'a> = Pin<Box<dyn Future<Output = Flow> + Send + 'a>>;

/// The asynchronous half of a plugin that waits on the network. Called
/// only on a miss, on a task of its own, with the query copied out of the
/// receive buffer. It writes the reply into `cx.reply` and returns
/// [`Flow::Answered`], or returns [`Flow::Next`] (hand on, as forward's
/// `next RCODE`) or [`Flow::Fail`].
pub trait Upstream: Send + Sync {
    /// Does the exchange.
    fn exchange<'a>(&'a self, cx: &'a mut Context<'_>) -> UpstreamFuture<'a>;
}

impl fmt::Debug for dyn Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Facts about the server block that is serving a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// CoreDNS's `server` metric label: `dns://:53`, `dns://127.0.0.1:1053`.
    pub name: Arc<str>,
    /// The block's zones, normalised (`example.org.`).
    pub zones: Vec<String>,
    /// The block's port.
    pub port: u16,
}

/// The rest of a block's chain, for plugins that must run it again in the
/// background: cache prefetch and stale refresh.
pub trait Chain: Send + Sync {
    /// Runs the plugins after index `after` for `query` (a whole query in
    /// wire form, as it came over `transport`) on a background task, and
    /// tells `done` how it went, exactly once, whatever happens to the task.
    fn spawn_after(
        &self,
        after: usize,
        query: Vec<u8>,
        client: std::net::SocketAddr,
        transport: Transport,
        done: RefreshDone,
    );

    /// Asks the whole server the block is part of `query` on a background
    /// task, from the first plugin of the block its name routes to, as
    /// CoreDNS's `upstream.Lookup` does (the *kubernetes* plugin's
    /// ExternalName targets), and tells `done` how it went, exactly once.
    /// Asks nested this way stop at a fixed depth ([`Rerun::NotRun`]), so
    /// names that send each other around blocks cannot loop. The default:
    /// no server, [`Rerun::NotRun`] at once.
    fn spawn_server(
        &self,
        _query: Vec<u8>,
        _client: std::net::SocketAddr,
        _transport: Transport,
        done: RefreshDone,
    ) {
        done(Rerun::NotRun);
    }
}

/// What a background re-run does with its outcome.
pub type RefreshDone = Box<dyn FnOnce(Rerun) + Send>;

/// How a background re-run ended.
#[derive(Debug)]
pub enum Rerun {
    /// The chain's reply, in wire form.
    Reply(Vec<u8>),
    /// The chain failed or dropped the query: nothing to store.
    Failed,
    /// It never ran or was cut off: no room under the server's in-flight
    /// bound, no runtime, or shutdown. Not the upstream's doing.
    NotRun,
}

/// Where a plugin stands in its chain: lets it re-run what follows it.
#[derive(Clone, Copy)]
pub struct Next<'a> {
    /// The chain.
    pub chain: &'a dyn Chain,
    /// The index of the plugin being asked.
    pub at: usize,
}

impl Next<'_> {
    /// Runs the plugins after this one for `query` in the background, as
    /// if it had come over `transport`.
    pub fn spawn(
        &self,
        query: Vec<u8>,
        client: std::net::SocketAddr,
        transport: Transport,
        done: RefreshDone,
    ) {
        self.chain
            .spawn_after(self.at, query, client, transport, done);
    }

    /// Asks the whole server `query` in the background (see
    /// [`Chain::spawn_server`]).
    pub fn spawn_server(
        &self,
        query: Vec<u8>,
        client: std::net::SocketAddr,
        transport: Transport,
        done: RefreshDone,
    ) {
        self.chain.spawn_server(query, client, transport, done);
    }
}

impl fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next").field("at", &self.at).finish()
    }
}

/// A chain with nothing after anyone: `spawn` reports `None` at once.
/// For tests and for plugins run outside a server.
#[derive(Debug, Default)]
pub struct NoChain;

impl Chain for NoChain {
    fn spawn_after(
        &self,
        _after: usize,
        _query: Vec<u8>,
        _client: std::net::SocketAddr,
        _transport: Transport,
        done: RefreshDone,
    ) {
        done(Rerun::NotRun);
    }
}

/// A plugin that holds something open for a query while it waits on the
/// network (the cache's coalescing flight) and must hear when that query
/// is given up without reaching the plugin's `response` step.
pub trait Abandon: Send + Sync {
    /// The query holding `ticket` was dropped (a limit, a plugin, shutdown,
    /// a cancelled task) before its `response` step ran.
    fn abandoned(&self, key: u64, id: u64);
}

/// What a plugin holds open for one query: handed from the `query` step
/// through the server (in the reply, then the pending query) to the
/// `response` step, which takes it back with [`Reply::take_ticket`]. Dropped
/// anywhere else, it tells its owner the query was abandoned, so what it
/// holds is given back on every path.
pub struct Ticket {
    owner: Option<Arc<dyn Abandon>>,
    key: u64,
    id: u64,
}

impl Ticket {
    /// A ticket for `owner`'s `key`, generation `id`.
    pub fn new(owner: Arc<dyn Abandon>, key: u64, id: u64) -> Self {
        Self {
            owner: Some(owner),
            key,
            id,
        }
    }
    /// The key it was issued for.
    pub fn key(&self) -> u64 {
        self.key
    }
    /// The generation it was issued for.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Takes it back without telling the owner (the query was answered).
    pub fn redeem(mut self) -> (u64, u64) {
        self.owner = None;
        (self.key, self.id)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.take() {
            owner.abandoned(self.key, self.id);
        }
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("key", &self.key)
            .field("id", &self.id)
            .finish()
    }
}

/// One query in flight through the chain.
pub struct Context<'a> {
    /// The query.
    pub req: &'a Request<'a>,
    /// The server block.
    pub server: &'a ServerInfo,
    /// The zone (lower-cased wire form) that routed the query to this block.
    pub zone: &'a [u8],
    /// The reply being built.
    pub reply: &'a mut Reply,
    /// When the query was received.
    pub start: Instant,
    /// The rest of the chain (the driver keeps `at` current).
    pub next: Next<'a>,
}

impl Context<'_> {
    /// Writes `msg` as the reply and returns [`Flow::Answered`].
    pub fn answer(&mut self, msg: Message) -> Flow {
        self.reply.set_message(msg);
        Flow::Answered
    }
}

/// A reply: either wire bytes (as a cache or an upstream hands them over)
/// or a message that a plugin built or is editing. Converted lazily either way.
#[derive(Default)]
pub struct Reply {
    wire: Vec<u8>,
    message: Option<Message>,
    state: State,
    error: Option<PluginError>,
    failed: Option<ResponseCode>,
    ticket: Option<Ticket>,
    /// The plugin to tell how the query ended ([`Plugin::finished`]).
    report_to: Option<usize>,
    /// A duration to record once the reply is sent.
    timing: Option<Timing>,
}

/// A query's duration waiting for the moment its reply is sent.
#[derive(Clone, Copy)]
struct Timing {
    sink: &'static dyn crate::pkg::metrics::Durations,
    start: Instant,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Empty,
    Wire,
    Message,
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("state", &self.state)
            .field("rcode", &self.rcode())
            .field("error", &self.error)
            .finish()
    }
}

impl Reply {
    /// An empty reply with a buffer ready for a UDP-sized answer.
    pub fn new() -> Self {
        Self {
            wire: Vec::with_capacity(4096),
            ..Self::default()
        }
    }
    /// Forgets the previous reply but keeps the buffer.
    #[inline]
    pub fn clear(&mut self) {
        self.wire.clear();
        self.state = State::Empty;
        self.failed = None;
        self.report_to = None;
        // After a hit there is nothing else to drop: test before dropping,
        // so a hit does not call out to drop nothing.
        if self.message.is_some() || self.error.is_some() || self.ticket.is_some() {
            self.drop_parts();
        }
        if self.timing.is_some() {
            self.timing_left();
        }
    }
    #[inline(never)]
    fn drop_parts(&mut self) {
        self.message = None;
        self.error = None;
        self.ticket = None;
    }
    /// A duration its listener did not end: recorded now rather than lost.
    #[cold]
    #[inline(never)]
    fn timing_left(&mut self) {
        self.end_timing(Instant::now());
    }
    /// Asks the driver to tell the plugin at chain index `at` how the
    /// query ends ([`Plugin::finished`]). One plugin per query.
    pub fn report_to(&mut self, at: usize) {
        self.report_to = Some(at);
    }
    /// The plugin to tell how the query ends, if any.
    pub fn reporter(&self) -> Option<usize> {
        self.report_to
    }
    /// Records the query's duration, from `start`, in `sink` when its reply
    /// is sent: the listener calls [`Reply::end_timing`] then (once per
    /// batch of replies, with one clock read), or the driver does at once.
    pub fn defer_timing(
        &mut self,
        sink: &'static dyn crate::pkg::metrics::Durations,
        start: Instant,
    ) {
        self.timing = Some(Timing { sink, start });
    }
    /// Whether a duration waits for [`Reply::end_timing`].
    pub fn has_timing(&self) -> bool {
        self.timing.is_some()
    }
    /// Records the waiting duration, if any, as ending at `now`.
    pub fn end_timing(&mut self, now: Instant) {
        if let Some(t) = self.timing.take() {
            t.sink.observe(now.saturating_duration_since(t.start));
        }
    }
    /// [`Reply::end_timing`] for a batch of replies sent together: replies
    /// of one block that arrived together (the same start: a batch read at
    /// once) took the same time, recorded once for all of them.
    pub fn end_timings(replies: &mut [Self], now: Instant) {
        let mut run: Option<(Timing, u64)> = None;
        for t in replies.iter_mut().filter_map(|r| r.timing.take()) {
            match &mut run {
                Some((r, n)) if r.start == t.start && std::ptr::addr_eq(r.sink, t.sink) => {
                    *n += 1;
                }
                _ => {
                    if let Some((r, n)) = run.replace((t, 1)) {
                        r.sink.observe_n(now.saturating_duration_since(r.start), n);
                    }
                }
            }
        }
        if let Some((r, n)) = run {
            r.sink.observe_n(now.saturating_duration_since(r.start), n);
        }
    }
    /// Holds a plugin's [`Ticket`] for this query until that plugin's
    /// `response` step takes it back; one ticket per query (a second one
    /// replaces, and so releases, the first).
    pub fn hold(&mut self, ticket: Ticket) {
        self.ticket = Some(ticket);
    }
    /// Takes the held ticket (the `response` step, or the server moving a
    /// query that waits on the network).
    pub fn take_ticket(&mut self) -> Option<Ticket> {
        self.ticket.take()
    }
    /// Whether a plugin wrote a reply.
    pub fn is_written(&self) -> bool {
        self.state != State::Empty
    }
    /// Sets the reply to a built message.
    pub fn set_message(&mut self, msg: Message) {
        self.message = Some(msg);
        self.state = State::Message;
    }
    /// Sets the reply to wire bytes (copied into the reused buffer).
    pub fn set_wire(&mut self, bytes: &[u8]) {
        self.wire.clear();
        self.wire.extend_from_slice(bytes);
        self.message = None;
        self.state = State::Wire;
    }
    /// Sets the reply to `bytes`, taking them as the buffer unless the
    /// current (reused) buffer has room: no copy for a fresh reply, and a
    /// reused one keeps its capacity for later answers.
    pub fn set_wire_vec(&mut self, bytes: Vec<u8>) {
        if self.wire.capacity() >= bytes.len() {
            self.set_wire(&bytes);
            return;
        }
        self.wire = bytes;
        self.message = None;
        self.state = State::Wire;
    }
    /// The reused buffer, to fill with wire bytes in place; call
    /// [`Reply::mark_wire`] after.
    pub fn wire_buf(&mut self) -> &mut Vec<u8> {
        &mut self.wire
    }
    /// Declares that [`Reply::wire_buf`] now holds the reply.
    pub fn mark_wire(&mut self) {
        self.message = None;
        self.state = State::Wire;
    }
    /// The reply as a message to read or edit, parsing wire bytes if needed.
    /// `None` when nothing is written or the bytes do not parse.
    pub fn message_mut(&mut self) -> Option<&mut Message> {
        if self.state == State::Wire {
            let msg = Message::from_vec(&self.wire).ok()?;
            self.message = Some(msg);
            self.state = State::Message;
        }
        match self.state {
            State::Message => self.message.as_mut(),
            _ => None,
        }
    }
    /// The reply's rcode (the 4 header bits plus, for a message, EDNS's
    /// extended bits). For a failure, the rcode the server will write.
    pub fn rcode(&self) -> ResponseCode {
        match self.state {
            State::Message => self
                .message
                .as_ref()
                .map_or(ResponseCode::ServFail, |m| m.metadata.response_code),
            State::Wire => ResponseCode::from_low(self.wire.get(3).map_or(2, |b| b & 0x0f)),
            State::Empty => self.failed.unwrap_or(ResponseCode::ServFail),
        }
    }
    /// The rcode of a reply built as a message, with EDNS's extended bits;
    /// `None` for wire bytes (their header has the low 4 bits) or nothing.
    pub fn message_rcode(&self) -> Option<ResponseCode> {
        match self.state {
            State::Message => self.message.as_ref().map(|m| m.metadata.response_code),
            State::Wire | State::Empty => None,
        }
    }
    /// The error the chain ended with, if any.
    pub fn error(&self) -> Option<&PluginError> {
        self.error.as_ref()
    }
    /// The rcode of a [`Flow::Fail`], when the chain ended that way.
    pub fn failed(&self) -> Option<ResponseCode> {
        self.failed
    }
    /// Records a failure; the server writes the reply for it.
    pub fn set_failed(&mut self, rcode: ResponseCode, error: Option<PluginError>) {
        self.failed = Some(rcode);
        self.error = error;
    }
    /// Encodes the reply (if it is a message) and returns the wire bytes.
    pub fn finish(&mut self) -> Result<&[u8], hickory_proto::ProtoError> {
        if self.state == State::Message
            && let Some(msg) = &self.message
        {
            self.wire.clear();
            let mut enc = BinEncoder::new(&mut self.wire);
            msg.emit(&mut enc)?;
            self.state = State::Wire;
            self.message = None;
        }
        Ok(&self.wire)
    }
    /// The wire bytes, valid after [`Reply::finish`].
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }
}
