//! Building replies and classifying them (CoreDNS's `plugin/pkg/response`).

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::RecordType;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use crate::plugin::Context;
use crate::request::{HEADER_LEN, Request};

/// The UDP payload size nodedns advertises in its own OPT records
/// (DNS flag day 2020; CoreDNS's `bufsize` default).
pub const ADVERTISED_UDP_SIZE: u16 = 1232;

/// The question of a query as hickory's `Query` (allocates: not for hot paths).
pub fn question(req: &Request<'_>) -> Option<Query> {
    let raw = req.raw().get(HEADER_LEN..req.question_end())?;
    Query::read(&mut BinDecoder::new(raw)).ok()
}

/// A reply skeleton for `req`: same ID, opcode, RD and CD, the question as
/// asked, and an OPT record when the query had one (RFC 6891 7).
pub fn reply_for(req: &Request<'_>) -> Message {
    let h = req.header();
    let mut m = Message::new(h.id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = h.recursion_desired();
    m.metadata.checking_disabled = h.checking_disabled();
    if let Some(q) = question(req) {
        m.add_query(q);
    }
    if let Some(e) = req.edns() {
        let mut edns = Edns::new();
        edns.set_max_payload(ADVERTISED_UDP_SIZE);
        edns.set_dnssec_ok(e.dnssec_ok);
        m.set_edns(edns);
    }
    m
}

/// An error reply for `req` with `rcode` (FORMERR, SERVFAIL, …).
pub fn error_for(req: &Request<'_>, rcode: ResponseCode) -> Message {
    let mut m = reply_for(req);
    m.metadata.response_code = rcode;
    m
}

/// The reply as a message to edit, when it is a written NOERROR reply to
/// a query that is not a zone transfer: what response-phase editors
/// (`minimal`, `loadbalance`) may touch. Cheap checks come before parsing.
pub fn editable_noerror<'a>(cx: &'a mut Context<'_>) -> Option<&'a mut Message> {
    let qtype = cx.req.qtype();
    if qtype == u16::from(RecordType::AXFR) || qtype == u16::from(RecordType::IXFR) {
        return None;
    }
    if !cx.reply.is_written() || cx.reply.rcode() != ResponseCode::NoError {
        return None;
    }
    cx.reply.message_mut()
}

/// What kind of reply a message is (CoreDNS's `response.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// A positive answer.
    NoError,
    /// NXDOMAIN with an SOA.
    NameError,
    /// NOERROR, no answer, an SOA.
    NoData,
    /// A referral.
    Delegation,
    /// Transfers and notifies.
    Meta,
    /// Dynamic update.
    Update,
    /// Anything else (SERVFAIL, REFUSED, NXDOMAIN without SOA…).
    OtherError,
}

/// The coarse class that `log` and `errors` filter on (CoreDNS's `response.Class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// NOERROR answers and referrals.
    Success,
    /// NXDOMAIN and NODATA.
    Denial,
    /// Everything else.
    Error,
}

/// Classifies a reply as CoreDNS's `response.Typify` does.
pub fn typify(m: &Message) -> Type {
    if let Some(q) = m.queries.first()
        && matches!(q.query_type(), RecordType::AXFR | RecordType::IXFR)
    {
        return Type::Meta;
    }
    match m.metadata.op_code {
        OpCode::Update => return Type::Update,
        OpCode::Notify => return Type::Meta,
        _ => {}
    }
    let rcode = m.metadata.response_code;
    if rcode == ResponseCode::NoError && !m.answers.is_empty() {
        return Type::NoError;
    }
    let soa = m
        .authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA);
    let ns = m
        .authorities
        .iter()
        .any(|r| r.record_type() == RecordType::NS);
    match rcode {
        ResponseCode::NoError if soa => Type::NoData,
        ResponseCode::NXDomain if soa => Type::NameError,
        ResponseCode::NoError if ns => Type::Delegation,
        ResponseCode::NoError => Type::NoError,
        _ => Type::OtherError,
    }
}

/// The class of a reply type.
pub fn classify(t: Type) -> Class {
    match t {
        Type::NoError | Type::Delegation => Class::Success,
        Type::NameError | Type::NoData => Class::Denial,
        Type::Meta | Type::Update | Type::OtherError => Class::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, RData, Record};

    fn soa() -> Record {
        let n = Name::from_ascii("example.org.").unwrap();
        Record::from_rdata(
            n.clone(),
            60,
            RData::SOA(SOA::new(n.clone(), n, 1, 60, 60, 60, 60)),
        )
    }

    #[test]
    fn typifies_as_coredns() {
        let name = Name::from_ascii("a.example.org.").unwrap();
        let mut m = Message::response(1, OpCode::Query);
        m.add_answer(Record::from_rdata(name, 5, RData::A(A::new(192, 0, 2, 1))));
        assert_eq!(typify(&m), Type::NoError);

        let mut m = Message::response(1, OpCode::Query);
        m.add_authority(soa());
        assert_eq!(typify(&m), Type::NoData);
        m.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(typify(&m), Type::NameError);
        assert_eq!(classify(typify(&m)), Class::Denial);

        let mut m = Message::response(1, OpCode::Query);
        m.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(typify(&m), Type::OtherError);
        m.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(classify(typify(&m)), Class::Error);
    }
}
