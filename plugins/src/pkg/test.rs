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
        start: Instant::now(),
    };
    let flow = plugin.query(&mut cx);
    match &flow {
        Flow::Next => {
            let _ = next.query(&mut cx);
            plugin.response(&mut cx);
        }
        Flow::Fail(rc, _) => cx.reply.set_failed(*rc, None),
        Flow::Answered | Flow::Drop => {}
    }
    let failed = reply.failed();
    let msg = reply
        .is_written()
        .then(|| Message::from_vec(reply.finish().expect("encodes")).expect("decodes"));
    Outcome { flow, msg, failed }
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
