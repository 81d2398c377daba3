//! *whoami* answers every query with the client's address and port, in the
//! additional section: an A or AAAA record for the address and an SRV
//! record `_udp.<qname>` / `_tcp.<qname>` whose port is the client's port.
//! The answer section stays empty. Used for testing and debugging.

mod setup;
#[cfg(test)]
mod tests;

pub use setup::setup;

use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record};

use crate::pkg::response::{question, reply_for};
use crate::plugin::{Context, Flow, Plugin, PluginError};

/// The whoami handler.
#[derive(Debug, Default)]
pub struct Whoami;

impl Plugin for Whoami {
    fn name(&self) -> &'static str {
        "whoami"
    }

    fn query(&self, cx: &mut Context<'_>) -> Flow {
        let Some(q) = question(cx.req) else {
            return Flow::Fail(hickory_proto::op::ResponseCode::FormErr, None);
        };
        let qname = q.name().clone();
        let class = DNSClass::from(cx.req.qclass());
        let client = cx.req.client();
        let ip = match client.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let mut m = reply_for(cx.req);
        m.metadata.authoritative = true;
        let rdata = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        let mut addr = Record::from_rdata(qname.clone(), 0, rdata);
        addr.dns_class = class;
        // CoreDNS's `state.Proto()`: `_tcp` for DoT, DoH and gRPC.
        let label = if cx.req.transport().is_udp() {
            "_udp"
        } else {
            "_tcp"
        };
        let srv_name = match Name::from_ascii(label).and_then(|l| l.append_domain(&qname)) {
            Ok(n) => n,
            Err(source) => {
                return Flow::Fail(
                    hickory_proto::op::ResponseCode::ServFail,
                    Some(PluginError::Encode {
                        plugin: "whoami",
                        source,
                    }),
                );
            }
        };
        let mut srv = Record::from_rdata(
            srv_name,
            0,
            RData::SRV(SRV::new(0, 0, client.port(), Name::root())),
        );
        srv.dns_class = class;
        m.add_additional(addr);
        m.add_additional(srv);
        cx.answer(m)
    }
}
