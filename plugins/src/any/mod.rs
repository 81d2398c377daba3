//! *any* answers queries of type ANY with one short HINFO record instead of
//! everything the name has (RFC 8482), as CoreDNS's *any* does. Queries of
//! any other type pass on to the next plugin.

mod setup;
#[cfg(test)]
mod tests;

pub use setup::setup;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::HINFO;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

use crate::pkg::response::{question, reply_for};
use crate::plugin::{Context, Flow, Plugin};

/// TTL of the HINFO answer (CoreDNS's `any`: the RFC's number).
pub const HINFO_TTL: u32 = 8482;
/// The HINFO CPU string, as CoreDNS's `any` writes it.
pub const HINFO_CPU: &str = "ANY obsoleted";
/// The HINFO OS string, as CoreDNS's `any` writes it.
pub const HINFO_OS: &str = "See RFC 8482";

/// The any handler.
#[derive(Debug, Default)]
pub struct Any;

impl Plugin for Any {
    fn name(&self) -> &'static str {
        "any"
    }

    fn query(&self, cx: &mut Context<'_>) -> Flow {
        if cx.req.qtype() != u16::from(RecordType::ANY) {
            return Flow::Next;
        }
        let Some(q) = question(cx.req) else {
            return Flow::Fail(ResponseCode::FormErr, None);
        };
        let mut m = reply_for(cx.req);
        let mut hinfo = Record::from_rdata(
            q.name().clone(),
            HINFO_TTL,
            RData::HINFO(HINFO::new(HINFO_CPU.to_string(), HINFO_OS.to_string())),
        );
        hinfo.dns_class = DNSClass::IN;
        m.add_answer(hinfo);
        cx.answer(m)
    }
}
