//! Writes the plugin's replies straight into the reply buffer in wire
//! form: the header, the question as the client sent it, records, and an
//! OPT record when the query had one. No message is built and nothing is
//! allocated once the buffer has grown to its working size, which is what
//! keeps a cluster answer within a small multiple of a cache hit.
//!
//! Owner names point at the question (the whole name, or the zone at its
//! end, so answers keep the client's spelling of the zone as CoreDNS's
//! do). SRV targets are written out in full (RFC 2782: no compression);
//! other names in RDATA may point at the question too. A record that
//! would make a name longer than 255 bytes or the message longer than
//! 65,535 is left out (the latter sets TC).

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::request::Request;

/// Record types and class.
pub(crate) mod rtype {
    pub(crate) const A: u16 = 1;
    pub(crate) const NS: u16 = 2;
    pub(crate) const CNAME: u16 = 5;
    pub(crate) const SOA: u16 = 6;
    pub(crate) const PTR: u16 = 12;
    pub(crate) const MX: u16 = 15;
    pub(crate) const TXT: u16 = 16;
    pub(crate) const AAAA: u16 = 28;
    pub(crate) const SRV: u16 = 33;
    pub(crate) const AXFR: u16 = 252;
    pub(crate) const IXFR: u16 = 251;
    pub(crate) const IN: u16 = 1;
}

const HEADER: usize = 12;
const MAX_MESSAGE: usize = 65535;
/// Room kept for the OPT record [`Wire::finish`] may add.
const OPT_LEN: usize = 11;
const MAX_NAME: usize = 255;
/// An SRV record before its target: a pointer owner, type, class, TTL,
/// RDLENGTH, priority, weight, port.
pub(crate) const SRV_FIXED: usize = 18;
const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_CD: u16 = 0x0010;

/// A label of a name being written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Label<'a> {
    /// Bytes as they are.
    Text(&'a [u8]),
    /// An address in CoreDNS's dashed form: `10-0-0-1`, `2001-db8--1`
    /// (a trailing `-` gets a `0`).
    Dashed(IpAddr),
}

/// What follows the labels of a name.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tail<'a> {
    /// The zone the question matched, as the client spelled it.
    Zone,
    /// A name in wire form (the primary zone of a PTR target).
    Wire(&'a [u8]),
}

/// A name to write.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Name<'a> {
    /// The question's name.
    Qname,
    /// Labels, then a tail.
    Under(&'a [Label<'a>], Tail<'a>),
    /// A whole name in wire form (an ExternalName target).
    Wire(&'a [u8]),
    /// The name written at this offset of the message, as a pointer: only
    /// where compression is allowed (owner names).
    At(u16),
}

/// Sections, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Section {
    Answer = 0,
    Authority = 1,
    Additional = 2,
}

/// A reply being written into a buffer.
pub(crate) struct Wire<'b> {
    buf: &'b mut Vec<u8>,
    /// The question's name as sent.
    qname: &'b [u8],
    /// Where the zone starts within `qname`.
    zone_at: usize,
    counts: [u16; 3],
    section: Section,
    truncated: bool,
}

impl<'b> Wire<'b> {
    /// Starts a reply to `req` in `buf` (cleared): header, then the
    /// question as asked. `zone_len` is the wire length of the matched
    /// zone at the end of the name.
    pub(crate) fn start(buf: &'b mut Vec<u8>, req: &'b Request<'_>, zone_len: usize) -> Self {
        buf.clear();
        buf.extend_from_slice(&req.id().to_be_bytes());
        buf.extend_from_slice(&[0; 10]);
        buf[5] = 1; // QDCOUNT
        let question = req
            .raw()
            .get(HEADER..req.question_end())
            .unwrap_or_default();
        buf.extend_from_slice(question);
        let qname = req.qname_wire();
        Self {
            buf,
            qname,
            zone_at: qname.len().saturating_sub(zone_len),
            counts: [0; 3],
            section: Section::Answer,
            truncated: false,
        }
    }

    /// A mark to roll back to with [`Wire::rollback`].
    pub(crate) fn mark(&self) -> (usize, [u16; 3]) {
        (self.buf.len(), self.counts)
    }

    /// Forgets what was written since `mark`.
    pub(crate) fn rollback(&mut self, mark: (usize, [u16; 3])) {
        self.buf.truncate(mark.0);
        self.counts = mark.1;
    }

    /// Drops every record: back to the header and question.
    pub(crate) fn clear_records(&mut self) {
        let end = HEADER + self.qname.len() + 4;
        self.buf.truncate(end);
        self.counts = [0; 3];
        self.section = Section::Answer;
        self.truncated = false;
    }

    /// The zone the question matched, in wire form as the client spelled it.
    pub(crate) fn zone_wire(&self) -> &'b [u8] {
        &self.qname[self.zone_at..]
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Records in the answer section so far.
    pub(crate) fn answers(&self) -> u16 {
        self.counts[0]
    }

    /// Records are written to `section` from now on (sections only move
    /// forward).
    pub(crate) fn section(&mut self, section: Section) {
        if section > self.section {
            self.section = section;
        }
    }

    /// Writes the header (QR, AA, the query's RD and CD, `rcode`, the
    /// counts) and an OPT record when the query had EDNS. The buffer then
    /// holds the reply.
    pub(crate) fn finish(self, req: &Request<'_>, rcode: u8) {
        let h = req.header();
        let mut flags =
            FLAG_QR | FLAG_AA | (h.flags & (FLAG_RD | FLAG_CD)) | u16::from(rcode & 0x0f);
        if self.truncated {
            flags |= FLAG_TC;
        }
        self.buf[2..4].copy_from_slice(&flags.to_be_bytes());
        self.buf[6..8].copy_from_slice(&self.counts[0].to_be_bytes());
        self.buf[8..10].copy_from_slice(&self.counts[1].to_be_bytes());
        self.buf[10..12].copy_from_slice(&self.counts[2].to_be_bytes());
        if let Some(e) = req.edns() {
            crate::pkg::wire::push_opt(
                self.buf,
                crate::pkg::response::ADVERTISED_UDP_SIZE,
                e.dnssec_ok,
            );
        }
    }

    /// Writes one record; `rdata` writes its data (returning false to
    /// give up on the record). A record that does not fit is left out.
    pub(crate) fn record(
        &mut self,
        owner: Name<'_>,
        rtype: u16,
        ttl: u32,
        rdata: impl FnOnce(&mut Self) -> bool,
    ) -> bool {
        let mark = self.mark();
        if !self.name(owner, true) {
            self.rollback(mark);
            return false;
        }
        self.buf.extend_from_slice(&rtype.to_be_bytes());
        self.buf.extend_from_slice(&rtype::IN.to_be_bytes());
        self.buf.extend_from_slice(&ttl.to_be_bytes());
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        if !rdata(self) {
            self.rollback(mark);
            return false;
        }
        let rdlen = self.buf.len() - len_at - 2;
        let i = self.section as usize;
        if self.buf.len() > MAX_MESSAGE - OPT_LEN
            || rdlen > usize::from(u16::MAX)
            || self.counts[i] == u16::MAX
        {
            self.rollback(mark);
            self.truncated = true;
            return false;
        }
        self.buf[len_at..len_at + 2].copy_from_slice(&(rdlen as u16).to_be_bytes());
        self.counts[i] += 1;
        true
    }

    /// An address record for `ip` (A or AAAA by its family). Inlined:
    /// a few stores for the common owner, called once per address.
    #[inline(always)]
    pub(crate) fn addr(&mut self, owner: Name<'_>, ttl: u32, ip: IpAddr) -> bool {
        let owner = match owner {
            Name::Qname => HEADER as u16,
            Name::At(at) if usize::from(at) < self.buf.len() && at < 0x4000 => at,
            _ => return self.addr_slow(owner, ttl, ip),
        };
        // The common case in one write of a fixed size (no call to copy
        // it): a pointer owner, the fixed fields and the address.
        let i = self.section as usize;
        let len = if ip.is_ipv4() { 16 } else { 28 };
        if self.buf.len() + len > MAX_MESSAGE - OPT_LEN || self.counts[i] == u16::MAX {
            self.truncated = true;
            return false;
        }
        let head = |rtype: u16, rdlen: u16| {
            let mut h = [0u8; 12];
            h[0..2].copy_from_slice(&(0xc000 | owner).to_be_bytes());
            h[2..4].copy_from_slice(&rtype.to_be_bytes());
            h[4..6].copy_from_slice(&rtype::IN.to_be_bytes());
            h[6..10].copy_from_slice(&ttl.to_be_bytes());
            h[10..12].copy_from_slice(&rdlen.to_be_bytes());
            h
        };
        match ip {
            IpAddr::V4(v4) => {
                let mut rec = [0u8; 16];
                rec[..12].copy_from_slice(&head(rtype::A, 4));
                rec[12..].copy_from_slice(&v4.octets());
                self.buf.extend_from_slice(&rec);
            }
            IpAddr::V6(v6) => {
                let mut rec = [0u8; 28];
                rec[..12].copy_from_slice(&head(rtype::AAAA, 16));
                rec[12..].copy_from_slice(&v6.octets());
                self.buf.extend_from_slice(&rec);
            }
        }
        self.counts[i] += 1;
        true
    }

    /// An SRV record owned by the question's name, its target a whole
    /// name in wire form (RFC 2782: never compressed), given as a first
    /// label (or nothing) and the rest. Returns where the target was
    /// written, or `None` when the record does not fit.
    #[inline(always)]
    pub(crate) fn srv(
        &mut self,
        ttl: u32,
        weight: u16,
        port: u16,
        label: &[u8],
        rest: &[u8],
    ) -> Option<usize> {
        let i = self.section as usize;
        let target_len = label.len() + rest.len();
        if self.buf.len() + 18 + target_len > MAX_MESSAGE - OPT_LEN || self.counts[i] == u16::MAX {
            self.truncated = true;
            return None;
        }
        self.buf.reserve(18 + target_len);
        let mut rec = [0u8; 18];
        rec[0..2].copy_from_slice(&(0xc000 | HEADER as u16).to_be_bytes());
        rec[2..4].copy_from_slice(&rtype::SRV.to_be_bytes());
        rec[4..6].copy_from_slice(&rtype::IN.to_be_bytes());
        rec[6..10].copy_from_slice(&ttl.to_be_bytes());
        rec[10..12].copy_from_slice(&((6 + target_len) as u16).to_be_bytes());
        rec[14..16].copy_from_slice(&weight.to_be_bytes());
        rec[16..18].copy_from_slice(&port.to_be_bytes());
        self.buf.extend_from_slice(&rec);
        let at = self.buf.len();
        self.buf.extend_from_slice(label);
        self.buf.extend_from_slice(rest);
        self.counts[i] += 1;
        Some(at)
    }

    fn addr_slow(&mut self, owner: Name<'_>, ttl: u32, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.record(owner, rtype::A, ttl, |w| {
                w.buf.extend_from_slice(&v4.octets());
                true
            }),
            IpAddr::V6(v6) => self.record(owner, rtype::AAAA, ttl, |w| {
                w.buf.extend_from_slice(&v6.octets());
                true
            }),
        }
    }

    /// Appends a 32-bit value (in RDATA).
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }

    /// Appends a character-string (in RDATA); at most 255 bytes.
    pub(crate) fn text(&mut self, s: &[u8]) {
        let s = &s[..s.len().min(255)];
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s);
    }

    /// Writes a name; `compress` lets it point at the question. False
    /// (nothing written that matters: the caller rolls back) when a label
    /// is empty or too long or the name is longer than 255 bytes.
    pub(crate) fn name(&mut self, name: Name<'_>, compress: bool) -> bool {
        match name {
            Name::Qname => {
                if compress {
                    self.pointer(HEADER);
                } else {
                    self.buf.extend_from_slice(self.qname);
                }
                true
            }
            Name::Wire(w) => {
                self.buf.extend_from_slice(w);
                true
            }
            Name::At(at) => {
                if !compress || usize::from(at) >= self.buf.len() || at >= 0x4000 {
                    return false;
                }
                self.pointer(usize::from(at));
                true
            }
            Name::Under(labels, tail) => {
                let tail_len = match tail {
                    Tail::Zone => self.qname.len() - self.zone_at,
                    Tail::Wire(w) => w.len(),
                };
                let start = self.buf.len();
                for l in labels {
                    if !self.label(*l) {
                        return false;
                    }
                }
                if self.buf.len() - start + tail_len > MAX_NAME {
                    return false;
                }
                match tail {
                    // The root zone: nothing to point at but the final 0.
                    Tail::Zone if compress && tail_len > 1 => self.pointer(HEADER + self.zone_at),
                    Tail::Zone => {
                        let zone = &self.qname[self.zone_at..];
                        self.buf.extend_from_slice(zone);
                    }
                    Tail::Wire(w) => self.buf.extend_from_slice(w),
                }
                true
            }
        }
    }

    fn pointer(&mut self, at: usize) {
        self.buf
            .extend_from_slice(&(0xc000 | (at as u16 & 0x3fff)).to_be_bytes());
    }

    fn label(&mut self, l: Label<'_>) -> bool {
        match l {
            Label::Text(t) => {
                if t.is_empty() || t.len() > 63 {
                    return false;
                }
                self.buf.push(t.len() as u8);
                self.buf.extend_from_slice(t);
                true
            }
            Label::Dashed(ip) => {
                let mut s = Dashed::default();
                s.write(ip);
                let t = s.as_bytes();
                self.buf.push(t.len() as u8);
                self.buf.extend_from_slice(t);
                true
            }
        }
    }
}

/// Each byte in decimal, padded to four bytes, and how many are digits.
static DECIMAL: [([u8; 4], u8); 256] = {
    let mut t = [([0u8; 4], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let v = i as u8;
        t[i] = if v >= 100 {
            ([b'0' + v / 100, b'0' + v / 10 % 10, b'0' + v % 10, 0], 3)
        } else if v >= 10 {
            ([b'0' + v / 10, b'0' + v % 10, 0, 0], 2)
        } else {
            ([b'0' + v, 0, 0, 0], 1)
        };
        i += 1;
    }
    t
};

/// An address in dashed form, on the stack.
pub(crate) struct Dashed {
    buf: [u8; 48],
    len: usize,
}

impl Default for Dashed {
    fn default() -> Self {
        Self {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl Dashed {
    /// `ip` as CoreDNS's `endpointHostname` spells it.
    pub(crate) fn write(&mut self, ip: IpAddr) {
        self.len = 0;
        match ip {
            IpAddr::V4(v4) => {
                let mut at = 0;
                for (i, o) in v4.octets().into_iter().enumerate() {
                    let (digits, n) = DECIMAL[usize::from(o)];
                    self.buf[at..at + 4].copy_from_slice(&digits);
                    at += usize::from(n);
                    if i < 3 {
                        self.buf[at] = b'-';
                        at += 1;
                    }
                }
                self.len = at;
                return;
            }
            IpAddr::V6(v6) => {
                let _ = write!(self, "{v6}");
            }
        }
        for b in &mut self.buf[..self.len] {
            if *b == b'.' || *b == b':' {
                *b = b'-';
            }
        }
        if self.len > 0 && self.buf[self.len - 1] == b'-' && self.len < self.buf.len() {
            self.buf[self.len] = b'0';
            self.len += 1;
        }
    }
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for Dashed {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashed_forms() {
        for (ip, want) in [
            ("10.11.12.13", "10-11-12-13"),
            (
                "2001:db8:3333:4444:5555:6666:7777:8888",
                "2001-db8-3333-4444-5555-6666-7777-8888",
            ),
            (
                "2001:db8:3333:4444:5555:6666::",
                "2001-db8-3333-4444-5555-6666--0",
            ),
            ("5678:abcd::1", "5678-abcd--1"),
            ("::", "--0"),
        ] {
            let mut d = Dashed::default();
            d.write(ip.parse().unwrap());
            assert_eq!(std::str::from_utf8(d.as_bytes()).unwrap(), want, "{ip}");
        }
    }
}
