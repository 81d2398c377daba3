//! The chain driver: from a packet to a reply.
//!
//! Parses the header and question, picks the server block by longest zone,
//! runs the plugins' `query` steps in order until one decides, runs the
//! `response` steps of those that passed the query on in reverse, writes
//! the reply for a failure, truncates to the client's UDP size, and tells
//! the block's *prometheus* (if it has one) how the query ended.
//!
//! A panic in a plugin's step is caught here (as CoreDNS's server
//! `recover`s): counted in `coredns_panics_total`, logged, and answered
//! SERVFAIL; the listener goes on serving. Catching costs nothing until a
//! panic happens.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use nodedns_plugins::pkg::metrics::{self, queries};
use nodedns_plugins::pkg::response::{ADVERTISED_UDP_SIZE, error_for};
use nodedns_plugins::pkg::wire;
use nodedns_plugins::plugin::{RefreshDone, Rerun};
use nodedns_plugins::prometheus::report_dropped;
use nodedns_plugins::request::{Header, ParseError};
use nodedns_plugins::{
    Chain, Context, End, Flow, Next, Plugin, PluginError, Reply, Request, Transport,
};
use tokio::time::Instant;

use crate::config::{Block, Router};

/// Largest DNS message (the TCP length prefix is 16 bits).
pub const MAX_MESSAGE: usize = 65535;

/// Per-listener limits on replies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest UDP reply, whatever the client advertises.
    pub max_udp_size: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_udp_size: ADVERTISED_UDP_SIZE,
        }
    }
}

/// What the server must do with a packet.
#[must_use]
pub enum Handled {
    /// Send `reply.wire()`.
    Reply,
    /// Send nothing (not a query, too short, or a plugin dropped it).
    Drop,
    /// A plugin needs the network: copy the query and [`resume`] it on a task.
    Upstream(Pending),
}

/// How long a query may wait for its answer, counted from its arrival:
/// forward's overall deadline (CoreDNS's `defaultTimeout`), which forward
/// also counts from the arrival ([`Context::start`]). A query still
/// waiting for a worker past it is answered SERVFAIL without going to the
/// network: its client has given up, and it must not hold a worker or an
/// in-flight permit any longer.
pub const QUERY_DEADLINE: Duration = Duration::from_secs(5);

/// DNS class IN.
const CLASS_IN: u16 = 1;

/// Where a query that needs the network stopped.
pub struct Pending {
    block: Arc<Block>,
    /// Where the matched zone starts in the lower-cased name (it is a suffix).
    zone_at: usize,
    at: usize,
    /// When the query arrived: its duration counts the wait upstream.
    start: Instant,
    /// What a plugin holds open for this query (a cache flight): released
    /// if the query is dropped before it resumes.
    ticket: Option<nodedns_plugins::plugin::Ticket>,
    /// The plugin to tell how the query ends (the block's *prometheus*).
    report_to: Option<usize>,
}

impl Pending {
    /// Whether the query is past its deadline ([`QUERY_DEADLINE`] from its arrival).
    pub fn expired(&self) -> bool {
        self.start.elapsed() >= QUERY_DEADLINE
    }
}

/// Answers one packet as far as it can without waiting: the reply, a
/// drop, or the plugin that must go to the network. A reply's duration is
/// recorded (for *prometheus*) before this returns; see [`handle_batched`]
/// to record it when the reply is sent.
pub fn handle(
    router: &Router,
    raw: &[u8],
    client: SocketAddr,
    transport: Transport,
    reply: &mut Reply,
    limits: &Limits,
) -> Handled {
    let handled = handle_batched(
        router,
        raw,
        client,
        transport,
        reply,
        limits,
        Instant::now(),
    );
    if reply.has_timing() {
        reply.end_timing(Instant::now());
    }
    handled
}

/// [`handle`] for a listener that reads and sends queries in batches: the
/// query arrived at `received` (when its batch was read: one clock read
/// for the batch), and the duration of its reply (only in blocks with
/// *prometheus*) waits in the reply until [`end_batch`] records it when
/// the batch is sent, one more clock read for the whole batch.
pub fn handle_batched(
    router: &Router,
    raw: &[u8],
    client: SocketAddr,
    transport: Transport,
    reply: &mut Reply,
    limits: &Limits,
    received: Instant,
) -> Handled {
    reply.clear();
    let start = received;
    let mut req = match Request::parse(raw, client, transport) {
        Ok(r) => r,
        Err(ParseError::TooShort | ParseError::IsResponse) => return Handled::Drop,
        Err(ParseError::FormErr(h)) => {
            header_only(reply, &h, ResponseCode::FormErr);
            return Handled::Reply;
        }
        Err(ParseError::NotImp(h)) => {
            header_only(reply, &h, ResponseCode::NotImp);
            return Handled::Reply;
        }
        Err(ParseError::BadVers(h)) => {
            bad_version(reply, &h);
            return Handled::Reply;
        }
    };
    req.set_max_udp_size(limits.max_udp_size);
    // CoreDNS refuses every class but IN before any block sees it, unless
    // a block on the address runs chaos or forward.
    if req.qclass() != CLASS_IN {
        if super::probe::is_probe(&req) {
            super::probe::answer(reply, &req);
            return Handled::Reply;
        }
        if !router.any_class() {
            return refuse(router, reply, &req, start);
        }
    }
    let Some((block, zone)) = router.route(req.qname_lower(), req.qtype()) else {
        return refuse(router, reply, &req, start);
    };
    let mut cx = Context {
        req: &req,
        server: &block.info,
        zone,
        reply,
        start,
        next: Next {
            chain: &**block,
            at: 0,
        },
    };
    // The closure returns a small value (a pending query goes out through
    // `pending`): nothing large is copied through the unwind guard.
    let mut pending = None;
    let run = catch_unwind(AssertUnwindSafe(|| {
        let (decided, reached) = walk(&block.chain, &mut cx, 0);
        if decided == Decided::Upstream {
            pending = Some(Pending {
                block: Arc::clone(block),
                zone_at: req.qname_lower().len() - zone.len(),
                at: reached,
                start,
                ticket: cx.reply.take_ticket(),
                report_to: cx.reply.reporter(),
            });
            return false;
        }
        complete(&block.chain, &mut cx, decided, reached)
    }));
    match (run, pending) {
        (Ok(_), Some(p)) => Handled::Upstream(p),
        (Ok(true), None) => Handled::Reply,
        (Ok(false), None) => Handled::Drop,
        (Err(panic), _) => {
            panicked(reply, &req, &block.info.name, start, &*panic);
            Handled::Reply
        }
    }
}

/// Records the durations of a batch of replies just sent (those whose
/// blocks have *prometheus*), with one clock read.
pub fn end_batch(replies: &mut [Reply]) {
    if replies.iter().any(Reply::has_timing) {
        Reply::end_timings(replies, Instant::now());
    }
}

/// REFUSED for a query no block takes (its zone or its class), reported
/// as CoreDNS's server does: zone `dropped`.
fn refuse(router: &Router, reply: &mut Reply, req: &Request<'_>, start: Instant) -> Handled {
    reply.set_message(error_for(req, ResponseCode::Refused));
    finish(reply, req);
    queries::answered(ResponseCode::Refused.low(), req.qtype());
    if let Some(b) = router.blocks().first() {
        report_dropped(
            &b.info.name,
            req,
            ResponseCode::Refused,
            reply.wire().len(),
            start.elapsed(),
        );
    }
    Handled::Reply
}

/// After a plugin panicked: counts and logs the panic and writes a
/// SERVFAIL reply to send, reported as CoreDNS's server does (zone `dropped`). What the
/// query held (a cache flight) is given back.
#[cold]
fn panicked(
    reply: &mut Reply,
    req: &Request<'_>,
    server: &str,
    start: Instant,
    panic: &(dyn Any + Send),
) {
    metrics::panics().inc();
    tracing::error!(
        server,
        name = %req.qname_display(),
        panic = panic_message(panic),
        "Recovered from panic in server"
    );
    reply.clear();
    reply.set_message(error_for(req, ResponseCode::ServFail));
    finish(reply, req);
    queries::answered(ResponseCode::ServFail.low(), req.qtype());
    report_dropped(
        server,
        req,
        ResponseCode::ServFail,
        reply.wire().len(),
        start.elapsed(),
    );
}

/// What a panic said, if it said it with a string.
fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

/// A future that turns a panic while it is polled into an error.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Continues a query after its plugin's network step, through the rest of
/// the chain, and returns the reply to send (`None`: send nothing). A
/// query already past its deadline is [`abandon`]ed with SERVFAIL instead.
pub async fn resume(
    pending: Pending,
    raw: &[u8],
    client: SocketAddr,
    transport: Transport,
    limits: Limits,
) -> Option<Vec<u8>> {
    if pending.expired() {
        tracing::debug!(%client, "query past its deadline before reaching the network");
        return abandon(
            pending,
            raw,
            client,
            transport,
            limits,
            ResponseCode::ServFail,
        );
    }
    let mut req = Request::parse(raw, client, transport).ok()?;
    req.set_max_udp_size(limits.max_udp_size);
    let Pending {
        block,
        zone_at,
        at,
        start,
        ticket,
        report_to,
    } = pending;
    let zone = req.qname_lower().get(zone_at..).unwrap_or(&[0]);
    let chain = &block.chain;
    // Sized by the reply itself: these live as long as an upstream takes.
    let mut reply = Reply::default();
    // Back with the query: its plugin's response step redeems it; if this
    // future is dropped first (shutdown), the reply drops it and its owner
    // hears the query was abandoned.
    if let Some(t) = ticket {
        reply.hold(t);
    }
    if let Some(p) = report_to {
        reply.report_to(p);
    }
    let mut cx = Context {
        req: &req,
        server: &block.info,
        zone,
        reply: &mut reply,
        start,
        next: Next { chain: &*block, at },
    };
    let driven = {
        let driving = pin!(drive(chain, &mut cx, Decided::Upstream, at));
        CatchUnwind(driving).await
    };
    let run = driven.and_then(|(decided, at)| {
        catch_unwind(AssertUnwindSafe(|| complete(chain, &mut cx, decided, at)))
    });
    let sent = match run {
        Ok(sent) => sent,
        Err(panic) => {
            panicked(&mut reply, &req, &block.info.name, start, &*panic);
            true
        }
    };
    reply.end_timing(Instant::now());
    // The reply's own buffer, not a copy.
    sent.then(|| std::mem::take(reply.wire_buf()))
}

/// Ends a query that will not take its network step — past its deadline,
/// or over the in-flight limit — as a failure with `rcode`, at once: the
/// response steps of the plugins that passed it on run as for any failure
/// (a cache may still answer stale), and the reply to send is returned.
/// Every path that gives up on a [`Pending`] without resuming it comes
/// through here.
pub fn abandon(
    pending: Pending,
    raw: &[u8],
    client: SocketAddr,
    transport: Transport,
    limits: Limits,
    rcode: ResponseCode,
) -> Option<Vec<u8>> {
    let mut req = Request::parse(raw, client, transport).ok()?;
    req.set_max_udp_size(limits.max_udp_size);
    let Pending {
        block,
        zone_at,
        at,
        start,
        ticket,
        report_to,
    } = pending;
    // The query is given up, not answered by its upstream: whoever waits on
    // what a plugin held for it (a cache flight) asks for itself rather
    // than take this query's local failure.
    drop(ticket);
    let zone = req.qname_lower().get(zone_at..).unwrap_or(&[0]);
    let chain = &block.chain;
    let mut reply = Reply::default();
    if let Some(p) = report_to {
        reply.report_to(p);
    }
    let mut cx = Context {
        req: &req,
        server: &block.info,
        zone,
        reply: &mut reply,
        start,
        next: Next { chain: &*block, at },
    };
    let run = catch_unwind(AssertUnwindSafe(|| {
        cx.reply.set_failed(rcode, None);
        complete(chain, &mut cx, Decided::Failed, at)
    }));
    let sent = match run {
        Ok(sent) => sent,
        Err(panic) => {
            panicked(&mut reply, &req, &block.info.name, start, &*panic);
            true
        }
    };
    reply.end_timing(Instant::now());
    sent.then(|| std::mem::take(reply.wire_buf()))
}

/// Ends a query that needed the network but is dropped unanswered (over
/// the in-flight bound, on UDP): what a plugin held for it is given back,
/// and it is reported as a query that sent nothing.
pub fn discard(pending: Pending, raw: &[u8], client: SocketAddr, transport: Transport) {
    let Pending {
        block,
        zone_at,
        at,
        start,
        ticket,
        report_to,
    } = pending;
    drop(ticket);
    let Ok(req) = Request::parse(raw, client, transport) else {
        return;
    };
    queries::dropped(req.qtype());
    let Some(p) = report_to else { return };
    let zone = req.qname_lower().get(zone_at..).unwrap_or(&[0]);
    let mut reply = Reply::default();
    reply.report_to(p);
    let mut cx = Context {
        req: &req,
        server: &block.info,
        zone,
        reply: &mut reply,
        start,
        next: Next { chain: &*block, at },
    };
    if catch_unwind(AssertUnwindSafe(|| {
        report(&block.chain, &mut cx, None, None)
    }))
    .is_err()
    {
        metrics::panics().inc();
    }
    reply.end_timing(Instant::now());
}

/// What the chain decided, once a plugin's [`Flow`] is taken in: a
/// failure's rcode and error are already in the reply (so the hot path
/// moves a byte, not a `Flow`, between the steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    /// The reply is written.
    Answered,
    /// Nothing written; the failure is recorded in the reply.
    Failed,
    /// Send nothing.
    Drop,
    /// The plugin needs the network.
    Upstream,
}

/// Takes in a plugin's decision (`Next` is not one).
fn decide(flow: Flow, cx: &mut Context<'_>) -> Decided {
    match flow {
        Flow::Answered => Decided::Answered,
        Flow::Fail(rc, err) => {
            cx.reply.set_failed(rc, err);
            Decided::Failed
        }
        Flow::Drop => Decided::Drop,
        Flow::Upstream => Decided::Upstream,
        Flow::Next => {
            cx.reply.set_failed(ResponseCode::ServFail, None);
            Decided::Failed
        }
    }
}

/// Runs network steps while the chain asks for them; `decided` is what
/// the plugin at `at` decided. Returns the final decision and who made it.
/// Bounded: each round moves `at` forward through the chain.
async fn drive(
    chain: &[Box<dyn Plugin>],
    cx: &mut Context<'_>,
    mut decided: Decided,
    mut at: usize,
) -> (Decided, usize) {
    while decided == Decided::Upstream {
        let Some(up) = chain.get(at).and_then(|p| p.upstream()) else {
            cx.reply.set_failed(ResponseCode::ServFail, None);
            return (Decided::Failed, at);
        };
        cx.next.at = at;
        decided = match up.exchange(cx).await {
            Flow::Next => {
                let (next, reached) = walk(chain, cx, at + 1);
                at = reached;
                next
            }
            // Only `query` may ask for the network.
            Flow::Upstream => {
                cx.reply.set_failed(ResponseCode::ServFail, None);
                Decided::Failed
            }
            other => decide(other, cx),
        };
    }
    (decided, at)
}

/// Runs the `query` steps from `from` until a plugin decides. Returns the
/// decision and the index of the plugin that made it (the chain's length
/// when the chain ran out).
fn walk(chain: &[Box<dyn Plugin>], cx: &mut Context<'_>, from: usize) -> (Decided, usize) {
    let mut at = from;
    loop {
        let Some(p) = chain.get(at) else {
            let plugin = chain.last().map_or("server", |p| p.name());
            cx.reply.set_failed(
                ResponseCode::ServFail,
                Some(PluginError::NoNextPlugin { plugin }),
            );
            return (Decided::Failed, at);
        };
        cx.next.at = at;
        match p.query(cx) {
            Flow::Next => at += 1,
            Flow::Answered => return (Decided::Answered, at),
            Flow::Upstream if p.upstream().is_none() => {
                cx.reply.set_failed(ResponseCode::ServFail, None);
                return (Decided::Failed, at);
            }
            other => return (decide(other, cx), at),
        }
    }
}

/// Runs the `response` steps of plugins `from..to` in reverse.
fn run_hooks(chain: &[Box<dyn Plugin>], cx: &mut Context<'_>, from: usize, to: usize) {
    let to = to.min(chain.len());
    for (i, p) in chain.iter().enumerate().take(to).skip(from).rev() {
        cx.next.at = i;
        p.response(cx);
    }
}

/// Runs the plugins from index `from` for `raw` as a background re-run
/// (prefetch, stale refresh: the rest of the chain; a whole-server ask:
/// all of it), network steps included, and their response steps; the
/// reply untruncated. The query keeps the transport it came over, so
/// forward asks upstream the way it would for the client (UDP first for a
/// UDP query), as CoreDNS does.
async fn run_from(
    block: Arc<Block>,
    from: usize,
    raw: Vec<u8>,
    client: SocketAddr,
    transport: Transport,
) -> Option<Vec<u8>> {
    let start = Instant::now();
    let req = Request::parse(&raw, client, transport).ok()?;
    let zone = nodedns_plugins::pkg::zones::matches_owned(&block.info.zones, req.qname_lower());
    let chain = &block.chain;
    let mut reply = Reply::default();
    let mut cx = Context {
        req: &req,
        server: &block.info,
        zone: &zone,
        reply: &mut reply,
        start,
        next: Next {
            chain: &*block,
            at: from,
        },
    };
    let walked = catch_unwind(AssertUnwindSafe(|| walk(chain, &mut cx, from)));
    let driven = match walked {
        Ok((decided, at)) => {
            let driving = pin!(drive(chain, &mut cx, decided, at));
            CatchUnwind(driving).await
        }
        Err(panic) => Err(panic),
    };
    let hooked = driven.and_then(|(decided, at)| {
        catch_unwind(AssertUnwindSafe(|| {
            if matches!(decided, Decided::Drop | Decided::Upstream) {
                return false;
            }
            run_hooks(chain, &mut cx, from, at);
            cx.reply.is_written()
        }))
    });
    match hooked {
        Ok(true) => {}
        Ok(false) => return None,
        Err(panic) => {
            metrics::panics().inc();
            tracing::error!(
                server = %block.info.name,
                panic = panic_message(&*panic),
                "Recovered from panic in a background refresh"
            );
            return None;
        }
    }
    reply.finish().ok().map(<[u8]>::to_vec)
}

/// Where background re-runs go (set when the server starts): the runtime,
/// and the server's in-flight bound and shutdown tracker, which they share
/// with client queries.
static BACKGROUND: std::sync::OnceLock<(tokio::runtime::Handle, Arc<super::UpstreamCtx>)> =
    std::sync::OnceLock::new();

/// Records where background re-runs started from any thread go.
pub(crate) fn set_background(handle: tokio::runtime::Handle, up: Arc<super::UpstreamCtx>) {
    let _ = BACKGROUND.set((handle, up));
}

/// Calls a re-run's `done` exactly once: with how it ended, or with
/// [`Rerun::NotRun`] when it is refused or its task is dropped (shutdown).
struct DoneOnce(Option<RefreshDone>);

impl DoneOnce {
    fn call(mut self, reply: Option<Vec<u8>>) {
        if let Some(done) = self.0.take() {
            done(reply.map_or(Rerun::Failed, Rerun::Reply));
        }
    }
}

impl Drop for DoneOnce {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done(Rerun::NotRun);
        }
    }
}

tokio::task_local! {
    /// How many whole-server asks the running task is nested in.
    static SERVER_DEPTH: u8;
}

/// The deepest a whole-server ask may nest (an ExternalName whose target
/// is another block's ExternalName, and so on).
const MAX_SERVER_DEPTH: u8 = 8;

/// A background re-run's slot: the runtime, and an in-flight permit and
/// shutdown guard (when the server runs).
type Slot = (
    tokio::runtime::Handle,
    Option<(tokio::sync::OwnedSemaphorePermit, super::TrackerGuard)>,
);

/// Takes a slot for a background re-run: an in-flight permit like a
/// client's miss, tracked for shutdown. `None` over the bound.
fn background_slot() -> Option<Slot> {
    match BACKGROUND.get() {
        Some((rt, up)) => {
            let Ok(permit) = Arc::clone(&up.permits).try_acquire_owned() else {
                tracing::debug!("too many queries waiting on upstreams; skipping a re-run");
                return None;
            };
            Some((rt.clone(), Some((permit, up.tracker.enter()))))
        }
        None => tokio::runtime::Handle::try_current()
            .ok()
            .map(|rt| (rt, None)),
    }
}

impl Chain for Block {
    fn spawn_after(
        &self,
        after: usize,
        query: Vec<u8>,
        client: SocketAddr,
        transport: Transport,
        done: RefreshDone,
    ) {
        let done = DoneOnce(Some(done));
        let Some(block) = self.me.upgrade() else {
            return;
        };
        let Some((rt, slot)) = background_slot() else {
            return;
        };
        let depth = SERVER_DEPTH.try_with(|d| *d).unwrap_or(0);
        rt.spawn(SERVER_DEPTH.scope(depth, async move {
            let reply = run_from(block, after + 1, query, client, transport).await;
            done.call(reply);
            drop(slot);
        }));
    }

    fn spawn_server(
        &self,
        query: Vec<u8>,
        client: SocketAddr,
        transport: Transport,
        done: RefreshDone,
    ) {
        let done = DoneOnce(Some(done));
        let depth = SERVER_DEPTH.try_with(|d| *d).unwrap_or(0);
        if depth >= MAX_SERVER_DEPTH {
            tracing::debug!(depth, "whole-server asks nested too deep; not asking");
            return;
        }
        let Some(router) = self.server.get().and_then(Weak::upgrade) else {
            return;
        };
        let Ok(req) = Request::parse(&query, client, transport) else {
            return;
        };
        let Some((block, _)) = router.route(req.qname_lower(), req.qtype()) else {
            return;
        };
        let block = Arc::clone(block);
        let Some((rt, slot)) = background_slot() else {
            return;
        };
        rt.spawn(SERVER_DEPTH.scope(depth + 1, async move {
            let reply = run_from(block, 0, query, client, transport).await;
            done.call(reply);
            drop(slot);
        }));
    }
}

/// After the chain decided: runs the `response` steps
/// of the plugins before `reached` in reverse, writes the reply for a
/// failure, encodes, and reports how the query ended. `true`: send
/// `cx.reply`; `false`: send nothing. (A small result: the hit path does
/// not move a large one around.)
fn complete(
    chain: &[Box<dyn Plugin>],
    cx: &mut Context<'_>,
    decided: Decided,
    reached: usize,
) -> bool {
    let mut by = None;
    match decided {
        Decided::Drop => {
            // Nothing is sent: what a plugin held for the query goes back.
            drop(cx.reply.take_ticket());
            queries::dropped(cx.req.qtype());
            report(chain, cx, None, None);
            return false;
        }
        Decided::Answered => by = Some(reached),
        Decided::Failed | Decided::Upstream => {}
    }
    run_hooks(chain, cx, 0, reached);
    if !cx.reply.is_written() {
        let rc = cx.reply.failed().unwrap_or(ResponseCode::ServFail);
        cx.reply.set_message(error_for(cx.req, rc));
        // The server wrote it.
        by = None;
    }
    let reporting = cx.reply.reporter().is_some();
    let built = reporting
        .then(|| cx.reply.message_rcode())
        .flatten()
        .map(u16::from);
    finish(cx.reply, cx.req);
    let header_rcode = cx.reply.wire().get(3).map_or(2, |b| b & 0x0f);
    queries::answered(header_rcode, cx.req.qtype());
    if reporting {
        // The header's rcode, unless encoding or cutting failed into a
        // SERVFAIL of our own; with EDNS's bits when the reply was built.
        let low = u16::from(header_rcode);
        let rcode = built.filter(|rc| rc & 0x0f == low).unwrap_or(low);
        let size = cx.reply.wire().len();
        report(chain, cx, by, Some((rcode, size)));
    }
    true
}

/// Tells the plugin that asked (the block's *prometheus*) how the query
/// ended: written by plugin `by` (else by the server), `sent` its rcode
/// and size, or nothing sent. Blocks without one pay a branch.
#[inline]
fn report(
    chain: &[Box<dyn Plugin>],
    cx: &mut Context<'_>,
    by: Option<usize>,
    sent: Option<(u16, usize)>,
) {
    let Some(p) = cx.reply.reporter().and_then(|at| chain.get(at)) else {
        return;
    };
    let end = End {
        chain,
        by,
        rcode: sent.map_or(0, |(rc, _)| rc),
        size: sent.map(|(_, n)| n),
    };
    p.finished(cx, &end);
}

/// Encodes the reply and fits it to the transport's size.
fn finish(reply: &mut Reply, req: &Request<'_>) {
    let len = match reply.finish() {
        Ok(w) => w.len(),
        Err(e) => {
            tracing::debug!(error = %e, "encoding reply failed");
            header_only(reply, req.header(), ResponseCode::ServFail);
            return;
        }
    };
    let limit = req.reply_limit();
    if len > limit {
        truncate(reply, req, limit);
    }
}

/// Keeps as many records as fit in `limit` (answer, then authority, then
/// additional, in order), keeps the OPT record, and sets TC when any was
/// left out, as miekg/dns's `Truncate` does for CoreDNS: on the wire bytes,
/// in one walk. Bytes that cannot be cut as they are (a compression
/// pointer forward, past the cut) are parsed and encoded once (hickory
/// compresses backwards) and cut again.
fn truncate(reply: &mut Reply, req: &Request<'_>, limit: usize) {
    if wire::truncate(reply.wire_buf(), limit).is_ok() {
        return;
    }
    let reencoded = reply.message_mut().is_some() && reply.finish().is_ok();
    if !reencoded || wire::truncate(reply.wire_buf(), limit).is_err() {
        header_only(reply, req.header(), ResponseCode::ServFail);
    }
}

/// A 12-byte reply: the query's ID, opcode and RD, QR set, `rcode`, no records.
pub(super) fn header_only(reply: &mut Reply, h: &Header, rcode: ResponseCode) {
    let flags = 0x8000 | (h.flags & 0x7900) | u16::from(rcode.low());
    let buf = reply.wire_buf();
    buf.clear();
    buf.extend_from_slice(&h.id.to_be_bytes());
    buf.extend_from_slice(&flags.to_be_bytes());
    buf.extend_from_slice(&[0; 8]);
    reply.mark_wire();
}

/// BADVERS (RFC 6891 7): rcode 16 is split between the header (0) and the
/// OPT record's extended rcode (1); the OPT says we speak version 0.
fn bad_version(reply: &mut Reply, h: &Header) {
    header_only(reply, h, ResponseCode::NoError);
    let buf = reply.wire_buf();
    buf[11] = 1; // ARCOUNT = 1
    buf.push(0); // root
    buf.extend_from_slice(&41u16.to_be_bytes());
    buf.extend_from_slice(&ADVERTISED_UDP_SIZE.to_be_bytes());
    buf.extend_from_slice(&[1, 0, 0, 0, 0, 0]); // ext rcode 1, version 0, flags, rdlen 0
    reply.mark_wire();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    use nodedns_plugins::pkg::metrics;

    fn router(corefile: &str) -> Arc<Router> {
        let c = load_str(corefile).unwrap();
        c.listeners.values().next().unwrap().clone()
    }

    fn query(name: &str, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn ask(r: &Router, raw: &[u8], t: Transport) -> Option<Message> {
        let mut reply = Reply::new();
        let handled = handle(
            r,
            raw,
            "127.0.0.1:9".parse().unwrap(),
            t,
            &mut reply,
            &Limits::default(),
        );
        matches!(handled, Handled::Reply).then(|| Message::from_vec(reply.wire()).unwrap())
    }

    /// A plugin that goes to the "network" (a timer) and answers, or hands on.
    struct Slow {
        hand_on: bool,
    }
    impl Plugin for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn query(&self, _cx: &mut Context<'_>) -> Flow {
            Flow::Upstream
        }
        fn upstream(&self) -> Option<&dyn nodedns_plugins::plugin::Upstream> {
            Some(self)
        }
    }
    impl nodedns_plugins::plugin::Upstream for Slow {
        fn exchange<'a>(
            &'a self,
            cx: &'a mut Context<'_>,
        ) -> nodedns_plugins::plugin::UpstreamFuture<'a> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if self.hand_on {
                    return Flow::Next;
                }
                let mut m = nodedns_plugins::pkg::response::reply_for(cx.req);
                m.metadata.authoritative = true;
                cx.answer(m)
            })
        }
    }

    /// Counts response hooks, to see they run after the network step.
    struct Hook(std::sync::atomic::AtomicUsize);
    impl Plugin for Hook {
        fn name(&self) -> &'static str {
            "hook"
        }
        fn query(&self, _cx: &mut Context<'_>) -> Flow {
            Flow::Next
        }
        fn response(&self, _cx: &mut Context<'_>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_plugin_can_rerun_the_rest_of_its_chain_in_the_background() {
        let hook = Arc::new(Hook(std::sync::atomic::AtomicUsize::new(0)));
        struct Counting(Arc<Hook>);
        impl Plugin for Counting {
            fn name(&self) -> &'static str {
                "hook"
            }
            fn query(&self, cx: &mut Context<'_>) -> Flow {
                self.0.query(cx)
            }
            fn response(&self, cx: &mut Context<'_>) {
                self.0.response(cx);
            }
        }
        // [counting hook, slow upstream that hands on, whoami]: a re-run
        // after plugin 0 skips the hook and reaches whoami through the network step.
        let r = Router::single(vec![
            Box::new(Counting(Arc::clone(&hook))),
            Box::new(Slow { hand_on: true }),
            Box::new(nodedns_plugins::whoami::Whoami),
        ]);
        let block = Arc::clone(&r.blocks()[0]);
        let (tx, rx) = tokio::sync::oneshot::channel();
        block.spawn_after(
            0,
            query("example.org.", None),
            "127.0.0.1:9".parse().unwrap(),
            Transport::Udp,
            Box::new(move |reply| {
                let _ = tx.send(reply);
            }),
        );
        let Rerun::Reply(reply) = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap()
        else {
            panic!("a reply");
        };
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.additionals.len(), 2, "whoami answered");
        assert_eq!(
            hook.0.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "plugins before the re-run are not involved"
        );
    }

    #[tokio::test]
    async fn upstream_flow_resumes_off_the_receive_path() {
        let raw = query("example.org.", None);
        let client = "127.0.0.1:9".parse().unwrap();
        for hand_on in [false, true] {
            let hook = Arc::new(Hook(std::sync::atomic::AtomicUsize::new(0)));
            struct Shared(Arc<Hook>);
            impl Plugin for Shared {
                fn name(&self) -> &'static str {
                    "hook"
                }
                fn query(&self, cx: &mut Context<'_>) -> Flow {
                    self.0.query(cx)
                }
                fn response(&self, cx: &mut Context<'_>) {
                    self.0.response(cx);
                }
            }
            let mut chain: Vec<Box<dyn Plugin>> = vec![
                Box::new(Shared(Arc::clone(&hook))),
                Box::new(Slow { hand_on }),
            ];
            if hand_on {
                chain.push(Box::new(nodedns_plugins::whoami::Whoami));
            }
            let r = Router::single(chain);
            let mut reply = Reply::new();
            let Handled::Upstream(p) = handle(
                &r,
                &raw,
                client,
                Transport::Udp,
                &mut reply,
                &Limits::default(),
            ) else {
                panic!("expected the upstream step");
            };
            assert_eq!(
                hook.0.load(std::sync::atomic::Ordering::Relaxed),
                0,
                "hooks wait for the reply"
            );
            let bytes = resume(p, &raw, client, Transport::Udp, Limits::default())
                .await
                .expect("a reply");
            let m = Message::from_vec(&bytes).unwrap();
            assert_eq!(m.metadata.id, 7);
            assert_eq!(hook.0.load(std::sync::atomic::Ordering::Relaxed), 1);
            // Handing on reaches whoami (additional records); answering does not.
            assert_eq!(m.additionals.len(), if hand_on { 2 } else { 0 });
        }
    }

    #[test]
    fn refused_outside_zones_servfail_without_next() {
        let r = router("example.org:1053 {\n whoami\n}\nexample.net:1053 {\n}\n");
        let m = ask(&r, &query("example.com.", None), Transport::Udp).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert_eq!(m.metadata.id, 7);
        let m = ask(&r, &query("a.example.org.", None), Transport::Udp).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        let m = ask(&r, &query("a.example.net.", None), Transport::Udp).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let r = router(".:1053 {\n whoami\n}\n");
        assert!(ask(&r, &[1, 2, 3], Transport::Udp).is_none());
        let mut raw = query("example.org.", None);
        raw.truncate(raw.len() - 2);
        let mut reply = Reply::new();
        assert!(matches!(
            handle(
                &r,
                &raw,
                "127.0.0.1:9".parse().unwrap(),
                Transport::Udp,
                &mut reply,
                &Limits::default()
            ),
            Handled::Reply
        ));
        assert_eq!(reply.wire().len(), 12);
        assert_eq!(reply.wire()[3] & 0x0f, 1);
        assert_eq!(reply.wire()[2] & 0x80, 0x80);
        let mut raw = query("example.org.", None);
        raw[2] |= 0x80; // a response
        assert!(ask(&r, &raw, Transport::Udp).is_none());
        let mut raw = query("example.org.", None);
        raw[2] |= 4 << 3; // NOTIFY
        let mut reply = Reply::new();
        assert!(matches!(
            handle(
                &r,
                &raw,
                "127.0.0.1:9".parse().unwrap(),
                Transport::Udp,
                &mut reply,
                &Limits::default()
            ),
            Handled::Reply
        ));
        assert_eq!(reply.wire()[3] & 0x0f, 4);
    }

    #[test]
    fn bad_edns_version_gets_badvers() {
        let r = router(".:1053 {\n whoami\n}\n");
        let mut raw = query("example.org.", Some(1232));
        let n = raw.len();
        raw[n - 5] = 3;
        let m = ask(&r, &raw, Transport::Udp).unwrap();
        // 16 is both BADVERS and BADSIG; hickory names it BADSIG.
        assert_eq!(u16::from(m.metadata.response_code), 16);
    }

    // === prometheus and panics ===

    /// The value of one series in a scrape (0 when absent).
    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    fn scrape() -> String {
        nodedns_plugins::prometheus::render()
    }

    fn msg(name: &str, qtype: RecordType, edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 9;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some((size, dnssec_ok)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            e.set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    /// Answers `raw` through the whole driver, network step included.
    async fn ask_all(r: &Router, raw: &[u8], t: Transport) -> Option<Message> {
        let client = "127.0.0.1:9".parse().unwrap();
        let mut reply = Reply::new();
        match handle(r, raw, client, t, &mut reply, &Limits::default()) {
            Handled::Reply => Some(Message::from_vec(reply.wire()).unwrap()),
            Handled::Drop => None,
            Handled::Upstream(p) => {
                let bytes = resume(p, raw, client, t, Limits::default()).await?;
                Some(Message::from_vec(&bytes).unwrap())
            }
        }
    }

    /// Every way a query of a block with *prometheus* ends is counted once,
    /// under CoreDNS's labels: a plugin's answer, a cache hit, an upstream's
    /// answer and NXDOMAIN, a reply cut for UDP, a DO query, TCP; queries
    /// no block takes under zone "dropped"; a block without *prometheus*
    /// counts nothing.
    #[tokio::test]
    async fn prometheus_counts_every_query_of_its_block() {
        let up = nodedns_tests::FakeUpstream::builder()
            .a("up.example.org.", "192.0.2.2")
            .start()
            .await;
        let mut big = String::new();
        for i in 0..100 {
            big.push_str(&format!("    10.0.0.{i} big.example.org\n"));
        }
        let r = router(&format!(
            "example.org:10931 {{\n prometheus 127.0.0.1:0\n cache 30\n hosts {{\n    192.0.2.1 www.example.org\n{big}    fallthrough\n }}\n forward . {up}\n}}\n\
             example.net:10931 {{\n whoami\n}}\n"
        ));
        let server = "server=\"dns://:10931\"";
        let zone = "view=\"\",zone=\"example.org.\"";
        let udp = |name: &str| msg(name, RecordType::A, None);
        // hosts answers, then the cache does.
        for _ in 0..2 {
            let m = ask_all(&r, &udp("www.example.org."), Transport::Udp)
                .await
                .unwrap();
            assert_eq!(m.answers.len(), 1);
        }
        // The upstream answers, and says NXDOMAIN.
        let m = ask_all(&r, &udp("up.example.org."), Transport::Udp)
            .await
            .unwrap();
        assert_eq!(m.answers.len(), 1);
        let m = ask_all(&r, &udp("nx.example.org."), Transport::Udp)
            .await
            .unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        // Cut to 512 bytes for UDP without EDNS.
        let m = ask_all(&r, &udp("big.example.org."), Transport::Udp)
            .await
            .unwrap();
        assert!(m.metadata.truncation);
        // DO set (a cache key of its own: hosts answers again).
        let m = ask_all(
            &r,
            &msg("www.example.org.", RecordType::A, Some((1232, true))),
            Transport::Udp,
        )
        .await
        .unwrap();
        assert_eq!(m.answers.len(), 1);
        // TCP, a type outside the monitored set.
        let m = ask_all(
            &r,
            &msg("www.example.org.", RecordType::HINFO, None),
            Transport::Tcp,
        )
        .await
        .unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        // No block for the zone, and a block without prometheus.
        let m = ask_all(&r, &udp("www.example.com."), Transport::Udp)
            .await
            .unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        let m = ask_all(&r, &udp("www.example.net."), Transport::Udp)
            .await
            .unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);

        let text = scrape();
        let requests = |family: &str, proto: &str, qtype: &str, zone: &str| {
            sample(
                &text,
                &format!(
                    "coredns_dns_requests_total{{family=\"{family}\",proto=\"{proto}\",{server},type=\"{qtype}\",{zone}}}"
                ),
            )
        };
        assert_eq!(requests("1", "udp", "A", zone), 6.0, "{text}");
        assert_eq!(requests("1", "tcp", "other", zone), 1.0, "{text}");
        let responses = |plugin: &str, rcode: &str| {
            sample(
                &text,
                &format!(
                    "coredns_dns_responses_total{{plugin=\"{plugin}\",rcode=\"{rcode}\",{server},{zone}}}"
                ),
            )
        };
        // www, big (cut), www with DO, and HINFO (NODATA) for www.
        assert_eq!(responses("hosts", "NOERROR"), 4.0, "{text}");
        assert_eq!(responses("cache", "NOERROR"), 1.0, "{text}");
        assert_eq!(responses("forward", "NOERROR"), 1.0, "{text}");
        assert_eq!(responses("forward", "NXDOMAIN"), 1.0, "{text}");
        assert_eq!(
            sample(
                &text,
                &format!("coredns_dns_do_requests_total{{{server},{zone}}}")
            ),
            1.0
        );
        assert_eq!(
            sample(
                &text,
                &format!("coredns_dns_request_duration_seconds_count{{{server},{zone}}}")
            ),
            7.0,
            "{text}"
        );
        let size = |what: &str, proto: &str, part: &str| {
            sample(
                &text,
                &format!(
                    "coredns_dns_{what}_size_bytes_{part}{{proto=\"{proto}\",{server},{zone}}}"
                ),
            )
        };
        assert_eq!(size("request", "udp", "count"), 6.0);
        assert_eq!(size("response", "udp", "count"), 6.0);
        assert_eq!(size("response", "tcp", "count"), 1.0);
        // The reply sent, cut: no UDP reply over 512 bytes.
        assert!(size("response", "udp", "sum") <= 6.0 * 512.0, "{text}");
        assert!(size("response", "udp", "sum") > 6.0 * 12.0, "{text}");
        // Refused before any block: zone "dropped", no plugin.
        assert_eq!(
            sample(
                &text,
                &format!(
                    "coredns_dns_responses_total{{plugin=\"\",rcode=\"REFUSED\",{server},view=\"\",zone=\"dropped\"}}"
                )
            ),
            1.0,
            "{text}"
        );
        assert!(!text.contains("zone=\"example.net.\""), "{text}");
    }

    /// The server writes a failure's reply: the plugin label is empty.
    #[test]
    fn a_failure_the_server_writes_has_no_plugin() {
        let r = router("example.org:10932 {\n prometheus 127.0.0.1:0\n}\n");
        let m = ask(&r, &query("www.example.org.", None), Transport::Udp).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        let text = scrape();
        assert_eq!(
            sample(
                &text,
                "coredns_dns_responses_total{plugin=\"\",rcode=\"SERVFAIL\",server=\"dns://:10932\",view=\"\",zone=\"example.org.\"}"
            ),
            1.0,
            "{text}"
        );
    }

    /// The panic tests read one process-wide counter: one at a time.
    static PANIC_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// A plugin that panics on one name.
    struct Panicky;
    impl Plugin for Panicky {
        fn name(&self) -> &'static str {
            "panicky"
        }
        fn query(&self, cx: &mut Context<'_>) -> Flow {
            if cx.req.qname_lower_display() == "panic.example.org." {
                panic!("panicky: asked for panic.example.org.");
            }
            Flow::Next
        }
    }

    /// A panic in a plugin's step is caught: counted, answered SERVFAIL
    /// (reported under zone "dropped"), and the next query is served.
    #[test]
    fn a_panicking_plugin_is_answered_servfail_and_the_server_goes_on() {
        let r = Router::single(vec![
            Box::new(nodedns_plugins::prometheus::Metrics::new(
                "dns://:53",
                &[".".into()],
            )),
            Box::new(Panicky),
            Box::new(nodedns_plugins::whoami::Whoami),
        ]);
        let _one = PANIC_TESTS.blocking_lock();
        let panics = metrics::panics().get();
        let dropped = "coredns_dns_responses_total{plugin=\"\",rcode=\"SERVFAIL\",server=\"dns://:53\",view=\"\",zone=\"dropped\"}";
        let before = sample(&scrape(), dropped);
        let m = ask(&r, &query("panic.example.org.", None), Transport::Udp).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(m.metadata.id, 7);
        assert_eq!(metrics::panics().get(), panics + 1);
        assert_eq!(sample(&scrape(), dropped), before + 1.0);
        let m = ask(&r, &query("www.example.org.", None), Transport::Udp).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.additionals.len(), 2, "whoami answered");
    }

    /// A panic in a network step is caught as well: the query gets
    /// SERVFAIL, the task lives on.
    #[tokio::test]
    async fn a_panic_in_a_network_step_is_answered_servfail() {
        struct Boom;
        impl Plugin for Boom {
            fn name(&self) -> &'static str {
                "boom"
            }
            fn query(&self, _cx: &mut Context<'_>) -> Flow {
                Flow::Upstream
            }
            fn upstream(&self) -> Option<&dyn nodedns_plugins::plugin::Upstream> {
                Some(self)
            }
        }
        impl nodedns_plugins::plugin::Upstream for Boom {
            fn exchange<'a>(
                &'a self,
                _cx: &'a mut Context<'_>,
            ) -> nodedns_plugins::plugin::UpstreamFuture<'a> {
                Box::pin(async move {
                    tokio::task::yield_now().await;
                    panic!("boom: the upstream step failed")
                })
            }
        }
        let r = Router::single(vec![Box::new(Boom)]);
        let _one = PANIC_TESTS.lock().await;
        let panics = metrics::panics().get();
        let m = ask_all(&r, &query("www.example.org.", None), Transport::Udp)
            .await
            .unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(metrics::panics().get(), panics + 1);
    }
}
