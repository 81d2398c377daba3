//! The chain driver: from a packet to a reply.
//!
//! Parses the header and question, picks the server block by longest zone,
//! runs the plugins' `query` steps in order until one decides, runs the
//! `response` steps of those that passed the query on in reverse, writes
//! the reply for a failure, and truncates to the client's UDP size.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use nodedns_plugins::pkg::response::{ADVERTISED_UDP_SIZE, error_for};
use nodedns_plugins::pkg::wire;
use nodedns_plugins::plugin::{RefreshDone, Rerun};
use nodedns_plugins::request::{Header, ParseError};
use nodedns_plugins::{Chain, Context, Flow, Next, PluginError, Reply, Request, Transport};
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
}

impl Pending {
    /// Whether the query is past its deadline ([`QUERY_DEADLINE`] from its arrival).
    pub fn expired(&self) -> bool {
        self.start.elapsed() >= QUERY_DEADLINE
    }
}

/// Answers one packet as far as it can without waiting: the reply, a
/// drop, or the plugin that must go to the network.
pub fn handle(
    router: &Router,
    raw: &[u8],
    client: SocketAddr,
    transport: Transport,
    reply: &mut Reply,
    limits: &Limits,
) -> Handled {
    reply.clear();
    let start = Instant::now();
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
    if req.qclass() != CLASS_IN && !router.any_class() {
        reply.set_message(error_for(&req, ResponseCode::Refused));
        return finish(reply, &req);
    }
    let Some((block, zone)) = router.route(req.qname_lower(), req.qtype()) else {
        reply.set_message(error_for(&req, ResponseCode::Refused));
        return finish(reply, &req);
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
    let (flow, reached) = walk(&block.chain, &mut cx, 0);
    if let Flow::Upstream = flow {
        return Handled::Upstream(Pending {
            block: Arc::clone(block),
            zone_at: req.qname_lower().len() - zone.len(),
            at: reached,
            start,
            ticket: cx.reply.take_ticket(),
        });
    }
    complete(&block.chain, &mut cx, flow, reached)
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
    let mut cx = Context {
        req: &req,
        server: &block.info,
        zone,
        reply: &mut reply,
        start,
        next: Next { chain: &*block, at },
    };
    let (flow, at) = drive(chain, &mut cx, Flow::Upstream, at).await;
    match complete(chain, &mut cx, flow, at) {
        // The reply's own buffer, not a copy.
        Handled::Reply => Some(std::mem::take(reply.wire_buf())),
        Handled::Drop | Handled::Upstream(_) => None,
    }
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
    } = pending;
    // The query is given up, not answered by its upstream: whoever waits on
    // what a plugin held for it (a cache flight) asks for itself rather
    // than take this query's local failure.
    drop(ticket);
    let zone = req.qname_lower().get(zone_at..).unwrap_or(&[0]);
    let chain = &block.chain;
    let mut reply = Reply::default();
    let mut cx = Context {
        req: &req,
        server: &block.info,
        zone,
        reply: &mut reply,
        start,
        next: Next { chain: &*block, at },
    };
    match complete(chain, &mut cx, Flow::Fail(rcode, None), at) {
        Handled::Reply => Some(std::mem::take(reply.wire_buf())),
        Handled::Drop | Handled::Upstream(_) => None,
    }
}

/// Runs network steps while the chain asks for them; `flow` is what the
/// plugin at `at` decided. Returns the final decision and who made it.
/// Bounded: each round moves `at` forward through the chain.
async fn drive(
    chain: &[Box<dyn nodedns_plugins::Plugin>],
    cx: &mut Context<'_>,
    mut flow: Flow,
    mut at: usize,
) -> (Flow, usize) {
    while matches!(flow, Flow::Upstream) {
        let Some(up) = chain.get(at).and_then(|p| p.upstream()) else {
            return (Flow::Fail(ResponseCode::ServFail, None), at);
        };
        cx.next.at = at;
        flow = match up.exchange(cx).await {
            Flow::Next => {
                let (next, reached) = walk(chain, cx, at + 1);
                at = reached;
                next
            }
            // Only `query` may ask for the network.
            Flow::Upstream => Flow::Fail(ResponseCode::ServFail, None),
            other => other,
        };
    }
    (flow, at)
}

/// Runs the `query` steps from `from` until a plugin decides. Returns the
/// decision and the index of the plugin that made it (the chain's length
/// when the chain ran out).
fn walk(
    chain: &[Box<dyn nodedns_plugins::Plugin>],
    cx: &mut Context<'_>,
    from: usize,
) -> (Flow, usize) {
    let mut at = from;
    loop {
        let Some(p) = chain.get(at) else {
            let plugin = chain.last().map_or("server", |p| p.name());
            return (
                Flow::Fail(
                    ResponseCode::ServFail,
                    Some(PluginError::NoNextPlugin { plugin }),
                ),
                at,
            );
        };
        cx.next.at = at;
        match p.query(cx) {
            Flow::Next => at += 1,
            Flow::Upstream if p.upstream().is_none() => {
                return (Flow::Fail(ResponseCode::ServFail, None), at);
            }
            other => return (other, at),
        }
    }
}

/// Runs the `response` steps of plugins `from..to` in reverse.
fn run_hooks(
    chain: &[Box<dyn nodedns_plugins::Plugin>],
    cx: &mut Context<'_>,
    from: usize,
    to: usize,
) {
    let to = to.min(chain.len());
    for (i, p) in chain.iter().enumerate().take(to).skip(from).rev() {
        cx.next.at = i;
        p.response(cx);
    }
}

/// Runs the plugins after `after` for `raw` as a background re-run
/// (prefetch, stale refresh): the rest of the chain, network steps
/// included, and their response steps; the reply untruncated. The query
/// keeps the transport it came over, so forward asks upstream the way it
/// would for the client (UDP first for a UDP query), as CoreDNS does.
async fn run_after(
    block: Arc<Block>,
    after: usize,
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
            at: after + 1,
        },
    };
    let (flow, at) = walk(chain, &mut cx, after + 1);
    let (flow, at) = drive(chain, &mut cx, flow, at).await;
    match flow {
        Flow::Drop | Flow::Upstream => return None,
        Flow::Fail(rc, err) => cx.reply.set_failed(rc, err),
        Flow::Answered | Flow::Next => {}
    }
    run_hooks(chain, &mut cx, after + 1, at);
    if !cx.reply.is_written() {
        return None;
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
        // A re-run takes an in-flight permit like a client's miss, and is
        // tracked for shutdown: over the bound it is not started.
        let (rt, slot) = match BACKGROUND.get() {
            Some((rt, up)) => {
                let Ok(permit) = Arc::clone(&up.permits).try_acquire_owned() else {
                    tracing::debug!("too many queries waiting on upstreams; skipping a refresh");
                    return;
                };
                (rt.clone(), Some((permit, up.tracker.enter())))
            }
            None => match tokio::runtime::Handle::try_current() {
                Ok(rt) => (rt, None),
                Err(_) => return,
            },
        };
        rt.spawn(async move {
            let reply = run_after(block, after, query, client, transport).await;
            done.call(reply);
            drop(slot);
        });
    }
}

/// After the chain decided: records a failure, runs the `response` steps
/// of the plugins before `reached` in reverse, writes the reply for a
/// failure, and encodes.
fn complete(
    chain: &[Box<dyn nodedns_plugins::Plugin>],
    cx: &mut Context<'_>,
    flow: Flow,
    reached: usize,
) -> Handled {
    match flow {
        Flow::Drop => {
            // Nothing is sent: what a plugin held for the query goes back.
            drop(cx.reply.take_ticket());
            return Handled::Drop;
        }
        Flow::Fail(rc, err) => cx.reply.set_failed(rc, err),
        Flow::Answered | Flow::Next | Flow::Upstream => {}
    }
    run_hooks(chain, cx, 0, reached);
    if !cx.reply.is_written() {
        let rc = cx.reply.failed().unwrap_or(ResponseCode::ServFail);
        cx.reply.set_message(error_for(cx.req, rc));
    }
    finish(cx.reply, cx.req)
}

/// Encodes the reply and fits it to the transport's size.
fn finish(reply: &mut Reply, req: &Request<'_>) -> Handled {
    let len = match reply.finish() {
        Ok(w) => w.len(),
        Err(e) => {
            tracing::debug!(error = %e, "encoding reply failed");
            header_only(reply, req.header(), ResponseCode::ServFail);
            return Handled::Reply;
        }
    };
    let limit = req.reply_limit();
    if len > limit {
        truncate(reply, req, limit);
    }
    Handled::Reply
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
    impl nodedns_plugins::Plugin for Slow {
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
    impl nodedns_plugins::Plugin for Hook {
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
        impl nodedns_plugins::Plugin for Counting {
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
            impl nodedns_plugins::Plugin for Shared {
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
            let mut chain: Vec<Box<dyn nodedns_plugins::Plugin>> = vec![
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
}
