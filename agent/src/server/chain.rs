//! The chain driver: from a packet to a reply.
//!
//! Parses the header and question, picks the server block by longest zone,
//! runs the plugins' `query` steps in order until one decides, runs the
//! `response` steps of those that passed the query on in reverse, writes
//! the reply for a failure, and truncates to the client's UDP size.

use std::net::SocketAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::serialize::binary::BinEncodable;
use nodedns_plugins::pkg::response::{ADVERTISED_UDP_SIZE, error_for};
use nodedns_plugins::request::{Header, ParseError};
use nodedns_plugins::{Context, Flow, PluginError, Reply, Request, Transport};
use tokio::time::Instant;

use crate::config::Router;

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

/// Answers one packet. Returns false when nothing must be sent (not a
/// query, too short, or a plugin dropped it); otherwise the reply is in
/// `reply.wire()`.
pub fn handle(
    router: &Router,
    raw: &[u8],
    client: SocketAddr,
    transport: Transport,
    reply: &mut Reply,
    limits: &Limits,
) -> bool {
    reply.clear();
    let start = Instant::now();
    let req = match Request::parse(raw, client, transport) {
        Ok(r) => r,
        Err(ParseError::TooShort | ParseError::IsResponse) => return false,
        Err(ParseError::FormErr(h)) => {
            header_only(reply, &h, ResponseCode::FormErr);
            return true;
        }
        Err(ParseError::NotImp(h)) => {
            header_only(reply, &h, ResponseCode::NotImp);
            return true;
        }
        Err(ParseError::BadVers(h)) => {
            bad_version(reply, &h);
            return true;
        }
    };
    let Some((block, zone)) = router.route(req.qname_lower()) else {
        reply.set_message(error_for(&req, ResponseCode::Refused));
        return finish(reply, &req, limits);
    };
    let mut cx = Context {
        req: &req,
        server: &block.info,
        zone,
        reply,
        start,
    };
    let chain = &block.chain;
    let mut reached = 0usize;
    let flow = loop {
        let Some(p) = chain.get(reached) else {
            let plugin = chain.last().map_or("server", |p| p.name());
            break Flow::Fail(
                ResponseCode::ServFail,
                Some(PluginError::NoNextPlugin { plugin }),
            );
        };
        match p.query(&mut cx) {
            Flow::Next => reached += 1,
            other => break other,
        }
    };
    match flow {
        Flow::Drop => return false,
        Flow::Fail(rc, err) => cx.reply.set_failed(rc, err),
        Flow::Answered | Flow::Next => {}
    }
    for p in chain[..reached.min(chain.len())].iter().rev() {
        p.response(&mut cx);
    }
    if !reply.is_written() {
        let rc = reply.failed().unwrap_or(ResponseCode::ServFail);
        reply.set_message(error_for(&req, rc));
    }
    finish(reply, &req, limits)
}

/// Encodes the reply and fits it to the transport's size.
fn finish(reply: &mut Reply, req: &Request<'_>, limits: &Limits) -> bool {
    let len = match reply.finish() {
        Ok(w) => w.len(),
        Err(e) => {
            tracing::debug!(error = %e, "encoding reply failed");
            header_only(reply, req.header(), ResponseCode::ServFail);
            return true;
        }
    };
    let limit = match req.transport() {
        Transport::Udp => usize::from(req.udp_size().min(limits.max_udp_size.max(512))),
        Transport::Tcp => MAX_MESSAGE,
    };
    if len > limit {
        truncate(reply, req, limit);
    }
    true
}

/// Keeps as many records as fit in `limit` (answer, then authority, then
/// additional, in order) and sets TC when any was left out, as miekg/dns's
/// `Truncate` does for CoreDNS.
fn truncate(reply: &mut Reply, req: &Request<'_>, limit: usize) {
    let Some(msg) = reply.message_mut() else {
        header_only(reply, req.header(), ResponseCode::ServFail);
        return;
    };
    let mut full = std::mem::replace(
        msg,
        Message::new(0, msg.metadata.message_type, msg.metadata.op_code),
    );
    let records: Vec<(u8, hickory_proto::rr::Record)> = std::mem::take(&mut full.answers)
        .into_iter()
        .map(|r| (0, r))
        .chain(
            std::mem::take(&mut full.authorities)
                .into_iter()
                .map(|r| (1, r)),
        )
        .chain(
            std::mem::take(&mut full.additionals)
                .into_iter()
                .map(|r| (2, r)),
        )
        .collect();
    let build = |base: &Message, k: usize| {
        let mut m = base.clone();
        for (section, r) in records.iter().take(k) {
            match section {
                0 => m.answers.push(r.clone()),
                1 => m.authorities.push(r.clone()),
                _ => m.additionals.push(r.clone()),
            }
        }
        m
    };
    let fits = |base: &Message, k: usize| build(base, k).to_bytes().is_ok_and(|b| b.len() <= limit);
    if !fits(&full, 0) {
        full.edns = None;
    }
    let (mut lo, mut hi) = (0usize, records.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(&full, mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let mut m = build(&full, lo);
    if lo < records.len() {
        m.metadata.truncation = true;
    }
    reply.set_message(m);
    if reply.finish().map_or(true, |w| w.len() > limit) {
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
    use hickory_proto::op::{Edns, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn router(corefile: &str) -> std::sync::Arc<Router> {
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
        handle(
            r,
            raw,
            "127.0.0.1:9".parse().unwrap(),
            t,
            &mut reply,
            &Limits::default(),
        )
        .then(|| Message::from_vec(reply.wire()).unwrap())
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
        assert!(handle(
            &r,
            &raw,
            "127.0.0.1:9".parse().unwrap(),
            Transport::Udp,
            &mut reply,
            &Limits::default()
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
        assert!(handle(
            &r,
            &raw,
            "127.0.0.1:9".parse().unwrap(),
            Transport::Udp,
            &mut reply,
            &Limits::default()
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
