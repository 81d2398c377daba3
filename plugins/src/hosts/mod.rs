//! *hosts* answers A, AAAA and PTR queries from a hosts(5) file and from
//! hosts lines written inline in the Corefile, as CoreDNS's `hosts` plugin.
//!
//! The table sits behind an `ArcSwap`: a query reads it without a lock and
//! a background task swaps in a new one when the file changes. The rules
//! are CoreDNS's `ServeDNS` (plugin/hosts/hosts.go):
//!
//! - a name outside the plugin's zones goes to the next plugin, except a
//!   PTR query, which is answered for any reverse name;
//! - a PTR query with no entry goes to the next plugin, fallthrough or not;
//! - a name with an entry but no record of the asked type gets an empty
//!   authoritative NOERROR (NODATA);
//! - a name with no entry falls through when `fallthrough` covers it, and
//!   otherwise gets SERVFAIL: there is no SOA to write an NXDOMAIN with.

mod metrics;
mod setup;
mod table;
#[cfg(test)]
mod tests;

pub use setup::setup;

use std::sync::Arc;

use arc_swap::ArcSwap;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::pkg::fall::Fall;
use crate::pkg::response::{question, reply_for};
use crate::pkg::zones;
use crate::plugin::{Context, Flow, Plugin};

use table::{Table, reverse_addr};

/// At most this many records go in one answer: a name or an address with
/// more entries (ad-blocking lists map thousands of names to 0.0.0.0) is
/// answered with the first ones. 64 KiB, the largest DNS message, holds
/// fewer A records than this anyway.
const MAX_ANSWER_RECORDS: usize = 4096;

/// The hosts handler.
pub struct Hosts {
    /// Zones served, lower-cased wire form.
    origins: Vec<Vec<u8>>,
    /// Where a name with no entry falls through.
    fall: Fall,
    /// TTL of every record.
    ttl: u32,
    /// The table; the reload task holds only a weak reference.
    table: Arc<ArcSwap<Table>>,
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts")
            .field("zones", &self.origins.len())
            .field("fall", &self.fall)
            .field("ttl", &self.ttl)
            .field("entries", &self.table.load().len())
            .finish()
    }
}

/// What the table holds for the question.
enum Found<'t> {
    A(&'t [std::net::Ipv4Addr]),
    Aaaa(&'t [std::net::Ipv6Addr]),
    Ptr(&'t [Arc<[u8]>]),
    Nothing,
}

impl Found<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Self::A(v) => v.is_empty(),
            Self::Aaaa(v) => v.is_empty(),
            Self::Ptr(v) => v.is_empty(),
            Self::Nothing => true,
        }
    }
}

impl Plugin for Hosts {
    fn name(&self) -> &'static str {
        "hosts"
    }

    fn query(&self, cx: &mut Context<'_>) -> Flow {
        let qname = cx.req.qname_lower();
        let qtype = RecordType::from(cx.req.qtype());
        // PTR zones need not be among the plugin's zones.
        if qtype != RecordType::PTR && zones::matches(&self.origins, qname).is_none() {
            return Flow::Next;
        }
        let table = self.table.load();
        let entry = table.lookup(qname);
        let found = match qtype {
            RecordType::PTR => {
                let names = reverse_addr(qname).map_or(&[][..], |ip| table.names_for(ip));
                if names.is_empty() {
                    // Not ours, whatever fallthrough says (CoreDNS).
                    return Flow::Next;
                }
                Found::Ptr(names)
            }
            RecordType::A => entry.map_or(Found::Nothing, |e| Found::A(&e.v4)),
            RecordType::AAAA => entry.map_or(Found::Nothing, |e| Found::Aaaa(&e.v6)),
            _ => Found::Nothing,
        };
        // CoreDNS's otherRecordsExist: a name with an entry of either family
        // exists, so an empty answer is NODATA, never a fallthrough.
        if found.is_empty() && entry.is_none() {
            if self.fall.through(qname) {
                return Flow::Next;
            }
            return Flow::Fail(ResponseCode::ServFail, None);
        }

        let Some(q) = question(cx.req) else {
            return Flow::Fail(ResponseCode::FormErr, None);
        };
        let owner = q.name().clone();
        let mut m = reply_for(cx.req);
        m.metadata.authoritative = true;
        let record = |data| Record::from_rdata(owner.clone(), self.ttl, data);
        match found {
            Found::A(ips) => {
                for ip in ips.iter().take(MAX_ANSWER_RECORDS) {
                    m.add_answer(record(RData::A(A(*ip))));
                }
            }
            Found::Aaaa(ips) => {
                for ip in ips.iter().take(MAX_ANSWER_RECORDS) {
                    m.add_answer(record(RData::AAAA(AAAA(*ip))));
                }
            }
            Found::Ptr(names) => {
                for target in names
                    .iter()
                    .take(MAX_ANSWER_RECORDS)
                    .filter_map(|n| wire_to_name(n))
                {
                    m.add_answer(record(RData::PTR(PTR(target))));
                }
            }
            Found::Nothing => {}
        }
        cx.answer(m)
    }
}

/// A lower-cased wire-form name (as the table stores it) as a hickory name.
fn wire_to_name(wire: &[u8]) -> Option<Name> {
    let mut labels: Vec<&[u8]> = Vec::with_capacity(8);
    let mut pos = 0usize;
    loop {
        let len = *wire.get(pos)? as usize;
        if len == 0 {
            break;
        }
        labels.push(wire.get(pos + 1..pos + 1 + len)?);
        pos += 1 + len;
    }
    Name::from_labels(labels).ok()
}
