//! *chaos* answers TXT queries in the CHAOS class for the names servers
//! traditionally use to say who they are: `version.bind` and
//! `version.server` (the version), `authors.bind` (one TXT record per
//! author, in random order), `hostname.bind` and `id.server` (the host
//! name). Anything else, another class or another type passes on, as in
//! CoreDNS's *chaos*.

mod setup;
#[cfg(test)]
mod tests;

pub use setup::{ChaosConfig, DEFAULT_AUTHORS, default_version, setup};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use rand::seq::SliceRandom;

use crate::pkg::response::{question, reply_for};
use crate::plugin::{Context, Flow, Plugin};

/// Longest `character-string` in a TXT record (RFC 1035 3.3).
const MAX_TXT: usize = 255;
/// Where Linux keeps the host name (what Go's `os.Hostname` reads).
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";
/// The host name when it cannot be read (CoreDNS's fallback).
const FALLBACK_HOSTNAME: &str = "localhost";

/// Lower-cased wire forms of the names chaos answers.
const VERSION_BIND: &[u8] = b"\x07version\x04bind\x00";
const VERSION_SERVER: &[u8] = b"\x07version\x06server\x00";
const AUTHORS_BIND: &[u8] = b"\x07authors\x04bind\x00";
const HOSTNAME_BIND: &[u8] = b"\x08hostname\x04bind\x00";
const ID_SERVER: &[u8] = b"\x02id\x06server\x00";

/// The chaos handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chaos {
    version: Vec<u8>,
    authors: Vec<Vec<u8>>,
    hostname: Vec<u8>,
}

impl Chaos {
    /// A handler for `config`, with `hostname` as the answer to
    /// `hostname.bind` (strings are cut to 255 bytes, as CoreDNS does).
    pub fn new(config: &ChaosConfig, hostname: &str) -> Self {
        Self {
            version: trim(&config.version),
            authors: config.authors.iter().map(|a| trim(a)).collect(),
            hostname: trim(hostname),
        }
    }
}

/// The host name, read when the configuration is built (CoreDNS reads it
/// per query; it does not change under a running server in practice).
pub fn hostname() -> String {
    std::fs::read_to_string(HOSTNAME_FILE)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| FALLBACK_HOSTNAME.to_string())
}

fn trim(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    b[..b.len().min(MAX_TXT)].to_vec()
}

fn txt(name: &Name, value: &[u8]) -> Record {
    let mut r = Record::from_rdata(name.clone(), 0, RData::TXT(TXT::from_bytes(vec![value])));
    r.dns_class = DNSClass::CH;
    r
}

impl Plugin for Chaos {
    fn name(&self) -> &'static str {
        "chaos"
    }

    fn query(&self, cx: &mut Context<'_>) -> Flow {
        if cx.req.qclass() != u16::from(DNSClass::CH)
            || cx.req.qtype() != u16::from(RecordType::TXT)
        {
            return Flow::Next;
        }
        let qname = cx.req.qname_lower();
        if ![
            VERSION_BIND,
            VERSION_SERVER,
            AUTHORS_BIND,
            HOSTNAME_BIND,
            ID_SERVER,
        ]
        .contains(&qname)
        {
            return Flow::Next;
        }
        let Some(q) = question(cx.req) else {
            return Flow::Fail(ResponseCode::FormErr, None);
        };
        let name = q.name();
        let mut m = reply_for(cx.req);
        if qname == AUTHORS_BIND {
            let mut order: Vec<&Vec<u8>> = self.authors.iter().collect();
            order.shuffle(&mut rand::rng());
            for a in order {
                m.add_answer(txt(name, a));
            }
        } else if qname == VERSION_BIND || qname == VERSION_SERVER {
            m.add_answer(txt(name, &self.version));
        } else {
            m.add_answer(txt(name, &self.hostname));
        }
        cx.answer(m)
    }
}
