//! Helpers for plugin unit tests: build queries, run a plugin in front of
//! a stub (CoreDNS's `test.NextHandler`), and parse setup from text.

use std::net::SocketAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use tokio::time::Instant;

use crate::dispenser::{Dispenser, SetupError};
use crate::lexer::lex;
use crate::pkg::response::reply_for;
use crate::plugin::{Context, Flow, Plugin, Reply, ServerInfo};
use crate::request::{Request, Transport};
use crate::setup::{BlockInfo, BlockSetup, Controller, Services, SetupFn};

/// A query in wire form, RD set.
pub(crate) fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    query_class(name, qtype, DNSClass::IN)
}

/// A query of a given class.
pub(crate) fn query_class(name: &str, qtype: RecordType, class: DNSClass) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    let mut q = Query::query(Name::from_ascii(name).expect("test name"), qtype);
    q.set_query_class(class);
    m.add_query(q);
    m.to_vec().expect("test query encodes")
}

/// What the next plugin does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stub {
    /// Answers with an empty reply of this rcode.
    Rcode(ResponseCode),
}

impl Plugin for Stub {
    fn name(&self) -> &'static str {
        "stub"
    }
    fn query(&self, cx: &mut Context<'_>) -> Flow {
        let Self::Rcode(rc) = *self;
        let mut m = reply_for(cx.req);
        m.metadata.response_code = rc;
        cx.answer(m)
    }
}

/// What running a plugin gave.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The plugin's own decision.
    pub(crate) flow: Flow,
    /// The reply, decoded, when one was written.
    pub(crate) msg: Option<Message>,
    /// The rcode of a failure.
    pub(crate) failed: Option<ResponseCode>,
}

/// The client address tests use.
pub(crate) fn client() -> SocketAddr {
    "127.0.0.1:40212".parse().expect("addr")
}

/// Runs `plugin` then `next` on `raw`, as the server's chain would.
pub(crate) fn run(plugin: &dyn Plugin, raw: &[u8], transport: Transport, next: Stub) -> Outcome {
    run_next(plugin, raw, transport, &next, Instant::now())
}

/// Runs a setup function on a one-block Corefile fragment such as
/// `"hosts {\n  ttl 30\n}"` (just the directive's lines).
pub(crate) fn setup(
    directive: &'static str,
    f: SetupFn,
    text: &str,
) -> Result<(BlockSetup, Services), SetupError> {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text)?;
    let block = BlockInfo {
        zones: vec![".".into()],
        port: 53,
        server_name: Arc::from("dns://:53"),
        bound: Arc::default(),
    };
    let mut out = BlockSetup::default();
    let mut services = Services::default();
    let mut c = Controller {
        d: Dispenser::new(directive, &tokens),
        block: &block,
        out: &mut out,
        services: &mut services,
    };
    f(&mut c)?;
    Ok((out, services))
}

// === Replies with several records (minimal, loadbalance) ===

/// A query with an OPT record advertising `size` and the DO bit.
pub(crate) fn query_edns(name: &str, qtype: RecordType, size: u16, dnssec_ok: bool) -> Vec<u8> {
    let mut m = Message::from_vec(&query(name, qtype)).expect("test query decodes");
    let mut e = hickory_proto::op::Edns::new();
    e.set_max_payload(size);
    e.set_dnssec_ok(dnssec_ok);
    m.set_edns(e);
    m.to_vec().expect("test query encodes")
}

/// A next plugin that answers with a copy of a built message (its flags,
/// rcode, sections and OPT), given the query's ID and question: CoreDNS's
/// handler funcs that write a prepared `dns.Msg`.
#[derive(Debug, Clone)]
pub(crate) struct Canned(pub(crate) Message);

impl Plugin for Canned {
    fn name(&self) -> &'static str {
        "canned"
    }
    fn query(&self, cx: &mut Context<'_>) -> Flow {
        let mut m = self.0.clone();
        let skeleton = reply_for(cx.req);
        m.metadata.id = skeleton.metadata.id;
        m.queries = skeleton.queries;
        cx.answer(m)
    }
}

/// Runs `plugin` then `next` (any plugin) on `raw`, as [`run`] does.
pub(crate) fn run_with(
    plugin: &dyn Plugin,
    raw: &[u8],
    transport: Transport,
    next: &dyn Plugin,
) -> Outcome {
    run_next(plugin, raw, transport, next, Instant::now())
}

// === Next plugins and a runner for response-phase plugins (log, errors) ===

/// A next plugin that fails: writes nothing and returns `Flow::Fail` with
/// this rcode and a `no next plugin found` error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailStub(pub(crate) ResponseCode);

impl Plugin for FailStub {
    fn name(&self) -> &'static str {
        "stub"
    }
    fn query(&self, _cx: &mut Context<'_>) -> Flow {
        Flow::Fail(
            self.0,
            Some(crate::plugin::PluginError::NoNextPlugin { plugin: "stub" }),
        )
    }
}

/// A next plugin that answers with this rcode and the SOA of example.org in
/// the authority section (NXDOMAIN: a name error; NOERROR: NODATA).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SoaStub(pub(crate) ResponseCode);

impl Plugin for SoaStub {
    fn name(&self) -> &'static str {
        "stub"
    }
    fn query(&self, cx: &mut Context<'_>) -> Flow {
        use hickory_proto::rr::rdata::SOA;
        use hickory_proto::rr::{RData, Record};
        let mut m = reply_for(cx.req);
        m.metadata.response_code = self.0;
        m.metadata.authoritative = true;
        let zone = Name::from_ascii("example.org.").expect("test name");
        m.add_authority(Record::from_rdata(
            zone.clone(),
            60,
            RData::SOA(SOA::new(zone.clone(), zone, 1, 60, 60, 60, 60)),
        ));
        cx.answer(m)
    }
}

/// A next plugin that answers authoritatively with `<qname> 300 IN A 192.0.2.1`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnswerStub;

impl Plugin for AnswerStub {
    fn name(&self) -> &'static str {
        "stub"
    }
    fn query(&self, cx: &mut Context<'_>) -> Flow {
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{RData, Record};
        let mut m = reply_for(cx.req);
        m.metadata.authoritative = true;
        if let Some(q) = crate::pkg::response::question(cx.req) {
            m.add_answer(Record::from_rdata(
                q.name().clone(),
                300,
                RData::A(A::new(192, 0, 2, 1)),
            ));
        }
        cx.answer(m)
    }
}

/// Runs `plugin` then any `next` plugin on `raw`, as the server's chain
/// would, with the query received at `start`: a `Flow::Fail` from `next` is
/// recorded in the reply (rcode and error) before `plugin`'s response step.
pub(crate) fn run_next(
    plugin: &dyn Plugin,
    raw: &[u8],
    transport: Transport,
    next: &dyn Plugin,
    start: Instant,
) -> Outcome {
    with_context_at(raw, transport, start, |cx| {
        let flow = plugin.query(cx);
        match &flow {
            Flow::Next => {
                cx.next.at = 1;
                if let Flow::Fail(rc, err) = next.query(cx) {
                    cx.reply.set_failed(rc, err);
                }
                cx.next.at = 0;
                plugin.response(cx);
            }
            Flow::Fail(rc, _) => cx.reply.set_failed(*rc, None),
            Flow::Answered | Flow::Drop | Flow::Upstream => {}
        }
        let failed = cx.reply.failed();
        let msg = cx
            .reply
            .is_written()
            .then(|| Message::from_vec(cx.reply.finish().expect("encodes")).expect("decodes"));
        Outcome { flow, msg, failed }
    })
}

/// Runs `f` with the context a server block for `.` gives `raw` (received
/// over `transport` now), with an empty reply and nothing after it.
pub(crate) fn with_context<R>(
    raw: &[u8],
    transport: Transport,
    f: impl FnOnce(&mut Context<'_>) -> R,
) -> R {
    with_context_at(raw, transport, Instant::now(), f)
}

/// [`with_context`] for a query received at `start`.
fn with_context_at<R>(
    raw: &[u8],
    transport: Transport,
    start: Instant,
    f: impl FnOnce(&mut Context<'_>) -> R,
) -> R {
    let req = Request::parse(raw, client(), transport).expect("test query parses");
    let server = ServerInfo {
        name: Arc::from("dns://:53"),
        zones: vec![".".into()],
        port: 53,
    };
    let mut reply = Reply::new();
    let mut cx = Context {
        req: &req,
        server: &server,
        zone: &[0],
        reply: &mut reply,
        start,
        next: crate::plugin::Next {
            chain: &crate::plugin::NoChain,
            at: 0,
        },
    };
    f(&mut cx)
}

// === HTTP endpoints (health, ready) ===

/// Sends `GET path` over a fresh HTTP/1.1 connection and returns the
/// status code and the body. Every step is bounded by a timeout.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let limit = std::time::Duration::from_secs(10);
    let timed_out =
        || std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP test request timed out");
    let mut conn = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out())??;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tokio::time::timeout(limit, conn.write_all(req.as_bytes()))
        .await
        .map_err(|_| timed_out())??;
    let mut buf = Vec::new();
    tokio::time::timeout(limit, conn.read_to_end(&mut buf))
        .await
        .map_err(|_| timed_out())??;
    let text = String::from_utf8_lossy(&buf);
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP reply: {text:?}"),
        )
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

/// Waits for `cond`, checking every 5 ms; fails the test naming `what`
/// after `limit`.
pub(crate) async fn wait_until(
    what: &str,
    limit: std::time::Duration,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
