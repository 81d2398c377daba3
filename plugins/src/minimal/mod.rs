//! *minimal* trims positive answers to what the client asked for: a
//! NOERROR reply with an answer keeps its answer section and loses its
//! authority and additional sections. The OPT record (EDNS0) stays, as
//! it does in CoreDNS's *minimal*. Referrals, negative answers, errors and
//! zone transfers pass unchanged.

mod setup;
#[cfg(test)]
mod tests;

pub use setup::setup;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::pkg::response::{Type, typify};
use crate::plugin::{Context, Flow, Plugin};

/// The minimal handler.
#[derive(Debug, Default)]
pub struct Minimal;

impl Plugin for Minimal {
    fn name(&self) -> &'static str {
        "minimal"
    }

    fn query(&self, _cx: &mut Context<'_>) -> Flow {
        Flow::Next
    }

    fn response(&self, cx: &mut Context<'_>) {
        let qtype = cx.req.qtype();
        if qtype == u16::from(RecordType::AXFR) || qtype == u16::from(RecordType::IXFR) {
            return;
        }
        // Cheap checks first: only a written NOERROR reply can be trimmed.
        if !cx.reply.is_written() || cx.reply.rcode() != ResponseCode::NoError {
            return;
        }
        let Some(m) = cx.reply.message_mut() else {
            return;
        };
        if m.authorities.is_empty() && m.additionals.is_empty() {
            return;
        }
        if typify(m) == Type::NoError {
            m.authorities.clear();
            m.additionals.clear();
        }
    }
}
