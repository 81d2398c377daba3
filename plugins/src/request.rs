//! The query as received: raw bytes plus the header, the question and the
//! EDNS0 options, read without building a full message.
//!
//! Reading refuses what a server must not answer (a response, a packet with
//! no header) and classifies what it must answer with an error (FORMERR,
//! NOTIMP, BADVERS). Nothing here allocates; the full `hickory_proto`
//! message is parsed only when a plugin asks for it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;

use hickory_proto::op::Message;

/// Longest name on the wire (RFC 1035 2.3.4).
pub const MAX_NAME: usize = 255;
/// Size of the DNS header.
pub const HEADER_LEN: usize = 12;
/// The DNS message size every client accepts over UDP (RFC 1035).
pub const MIN_UDP_SIZE: u16 = 512;

/// Record type of the EDNS0 pseudo-record (RFC 6891).
const TYPE_OPT: u16 = 41;

/// The listener a query came in on.
///
/// Plugins that follow CoreDNS's `state.Proto()` (forward's choice of UDP
/// first, the prometheus `proto` label, the log plugin's `{proto}`,
/// whoami's `_udp`/`_tcp`) ask [`Transport::proto`]: CoreDNS sees DoT,
/// DoH and gRPC clients as `tcp` (a TCP remote address) and DoQ and DoH3
/// clients as `udp` (a UDP one). [`Transport::as_str`] names the listener
/// itself, for the agent's own logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain DNS over UDP.
    Udp,
    /// Plain DNS over TCP.
    Tcp,
    /// DNS over TLS (RFC 7858).
    Tls,
    /// DNS over HTTPS (RFC 8484) on HTTP/1.1 or h2.
    Https,
    /// DNS over HTTPS on HTTP/3.
    Https3,
    /// DNS over QUIC (RFC 9250).
    Quic,
    /// CoreDNS's gRPC `DnsService`.
    Grpc,
}

impl Transport {
    /// The listener's name (`udp`, `tcp`, `tls`, `https`, `https3`,
    /// `quic`, `grpc`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Https => "https",
            Self::Https3 => "https3",
            Self::Quic => "quic",
            Self::Grpc => "grpc",
        }
    }

    /// CoreDNS's `state.Proto()`: `udp` for a client with a UDP address
    /// (plain UDP, DoQ, DoH3), `tcp` for the others.
    pub fn proto(self) -> &'static str {
        if self.is_udp() { "udp" } else { "tcp" }
    }

    /// Whether CoreDNS's `state.Proto()` says `udp`.
    pub fn is_udp(self) -> bool {
        matches!(self, Self::Udp | Self::Quic | Self::Https3)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fixed 12-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Query ID.
    pub id: u16,
    /// Flags word: QR, opcode, AA, TC, RD, RA, Z, AD, CD, rcode.
    pub flags: u16,
    /// Record counts of the four sections.
    pub qdcount: u16,
    /// Answer count.
    pub ancount: u16,
    /// Authority count.
    pub nscount: u16,
    /// Additional count.
    pub arcount: u16,
}

impl Header {
    /// Reads the header, or `None` when fewer than 12 bytes are there.
    pub fn read(raw: &[u8]) -> Option<Self> {
        let h = raw.get(..HEADER_LEN)?;
        let word = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Some(Self {
            id: word(0),
            flags: word(2),
            qdcount: word(4),
            ancount: word(6),
            nscount: word(8),
            arcount: word(10),
        })
    }
    /// QR: this is a response.
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }
    /// The opcode (0 = QUERY).
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0x0f) as u8
    }
    /// RD: recursion desired.
    pub fn recursion_desired(&self) -> bool {
        self.flags & 0x0100 != 0
    }
    /// CD: checking disabled.
    pub fn checking_disabled(&self) -> bool {
        self.flags & 0x0010 != 0
    }
    /// AD: authentic data.
    pub fn authentic_data(&self) -> bool {
        self.flags & 0x0020 != 0
    }
}

/// EDNS0 facts of a query (RFC 6891).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// Advertised UDP payload size (values below 512 read as 512).
    pub udp_size: u16,
    /// DO: DNSSEC OK.
    pub dnssec_ok: bool,
    /// EDNS version.
    pub version: u8,
}

/// Why a packet cannot be served as a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than a header: nothing to reply to, drop it.
    #[error("packet shorter than a DNS header")]
    TooShort,
    /// QR is set: never answer a response (that is how loops start).
    #[error("packet is a response, not a query")]
    IsResponse,
    /// The header reads but the rest is malformed: answer FORMERR.
    #[error("malformed query")]
    FormErr(Header),
    /// An opcode other than QUERY: answer NOTIMP.
    #[error("opcode not implemented")]
    NotImp(Header),
    /// EDNS version other than 0: answer BADVERS (RFC 6891 6.1.3).
    #[error("unsupported EDNS version")]
    BadVers(Header),
}

/// A query as received, with its header, question and EDNS read.
pub struct Request<'a> {
    raw: &'a [u8],
    header: Header,
    /// End of the question's name in `raw` (the name starts at 12).
    name_end: usize,
    /// The question's name in wire form, lower-cased.
    lower: [u8; MAX_NAME],
    qtype: u16,
    qclass: u16,
    edns: Option<Edns>,
    client: SocketAddr,
    transport: Transport,
    /// The server's cap on a UDP reply (`--max-udp-size`).
    max_udp: u16,
    message: OnceLock<Option<Message>>,
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.header.id)
            .field("qname", &self.qname_display())
            .field("qtype", &self.qtype)
            .field("qclass", &self.qclass)
            .field("edns", &self.edns)
            .field("client", &self.client)
            .field("transport", &self.transport)
            .finish()
    }
}

impl<'a> Request<'a> {
    /// Reads a query. Never panics, whatever the bytes.
    pub fn parse(
        raw: &'a [u8],
        client: SocketAddr,
        transport: Transport,
    ) -> Result<Self, ParseError> {
        let header = Header::read(raw).ok_or(ParseError::TooShort)?;
        if header.is_response() {
            return Err(ParseError::IsResponse);
        }
        if header.opcode() != 0 {
            return Err(ParseError::NotImp(header));
        }
        // The same bounds as miekg/dns's DefaultMsgAcceptFunc, which CoreDNS uses.
        if header.qdcount != 1 || header.ancount > 1 || header.nscount > 1 || header.arcount > 2 {
            return Err(ParseError::FormErr(header));
        }
        let mut lower = [0u8; MAX_NAME];
        let name_end = read_question_name(raw, &mut lower).ok_or(ParseError::FormErr(header))?;
        let fixed = raw
            .get(name_end..name_end + 4)
            .ok_or(ParseError::FormErr(header))?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
        let edns = read_edns(raw, name_end + 4, &header).ok_or(ParseError::FormErr(header))?;
        if let Some(e) = edns
            && e.version != 0
        {
            return Err(ParseError::BadVers(header));
        }
        Ok(Self {
            raw,
            header,
            name_end,
            lower,
            qtype,
            qclass,
            edns,
            client,
            transport,
            max_udp: u16::MAX,
            message: OnceLock::new(),
        })
    }

    /// The raw query bytes.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }
    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// Query ID.
    pub fn id(&self) -> u16 {
        self.header.id
    }
    /// The question's name in wire form, lower-cased.
    pub fn qname_lower(&self) -> &[u8] {
        &self.lower[..self.name_end - HEADER_LEN]
    }
    /// The question's name in wire form, as the client spelled it.
    pub fn qname_wire(&self) -> &'a [u8] {
        &self.raw[HEADER_LEN..self.name_end]
    }
    /// The question's type.
    pub fn qtype(&self) -> u16 {
        self.qtype
    }
    /// The question's class.
    pub fn qclass(&self) -> u16 {
        self.qclass
    }
    /// Offset just past the question section in `raw`.
    pub fn question_end(&self) -> usize {
        self.name_end + 4
    }
    /// EDNS0, when the query has an OPT record.
    pub fn edns(&self) -> Option<Edns> {
        self.edns
    }
    /// DO bit.
    pub fn dnssec_ok(&self) -> bool {
        self.edns.is_some_and(|e| e.dnssec_ok)
    }
    /// The largest reply the client accepts over UDP: 512 without EDNS0,
    /// else what it advertised.
    pub fn udp_size(&self) -> u16 {
        self.edns
            .map_or(MIN_UDP_SIZE, |e| e.udp_size.max(MIN_UDP_SIZE))
    }
    /// Caps UDP replies at `max` bytes (never below 512), whatever the
    /// client advertises: the server's `--max-udp-size`.
    pub fn set_max_udp_size(&mut self, max: u16) {
        self.max_udp = max.max(MIN_UDP_SIZE);
    }
    /// The largest reply that can be sent: over UDP the client's size
    /// ([`Request::udp_size`]) within the server's cap, over any other
    /// transport 65535 (DoQ and DoH3 carry whole messages: RFC 9250 §4.2
    /// has no truncation, though CoreDNS sees those clients as UDP). The
    /// server truncates a longer reply to it; a plugin that answers from
    /// stored bytes may cut to it itself and save the copy.
    pub fn reply_limit(&self) -> usize {
        match self.transport {
            Transport::Udp => usize::from(self.udp_size().min(self.max_udp)),
            _ => usize::from(u16::MAX),
        }
    }
    /// The client's address.
    pub fn client(&self) -> SocketAddr {
        self.client
    }
    /// The transport the query came in on.
    pub fn transport(&self) -> Transport {
        self.transport
    }
    /// The question's name in presentation form, as the client spelled it
    /// (`Example.org.`). Allocates: for logs and errors, not the hot path.
    pub fn qname_display(&self) -> String {
        let mut s = String::with_capacity(self.name_end - HEADER_LEN);
        write_name(&mut s, self.qname_wire());
        s
    }
    /// The question's name in presentation form, lower-cased.
    pub fn qname_lower_display(&self) -> String {
        let mut s = String::with_capacity(self.name_end - HEADER_LEN);
        write_name(&mut s, self.qname_lower());
        s
    }
    /// The full message, parsed on first use. `None` when hickory cannot
    /// parse it (the header and question still can be used).
    pub fn message(&self) -> Option<&Message> {
        self.message
            .get_or_init(|| Message::from_vec(self.raw).ok())
            .as_ref()
    }
}

/// Reads the question name at offset 12 into `lower` (lower-cased) and
/// returns the offset just past it. Compression is refused: the first name
/// of a message has nothing before it to point at.
fn read_question_name(raw: &[u8], lower: &mut [u8; MAX_NAME]) -> Option<usize> {
    let mut pos = HEADER_LEN;
    let mut out = 0usize;
    loop {
        let len = *raw.get(pos)? as usize;
        if len & 0xc0 != 0 {
            return None;
        }
        if out + 1 + len > MAX_NAME {
            return None;
        }
        let label = raw.get(pos..pos + 1 + len)?;
        for (i, b) in label.iter().enumerate() {
            lower[out + i] = if i == 0 { *b } else { b.to_ascii_lowercase() };
        }
        out += 1 + len;
        pos += 1 + len;
        if len == 0 {
            return Some(pos);
        }
    }
}

/// Skips a name anywhere in a message (compression allowed: a pointer ends
/// the name in place). Returns the offset just past it.
fn skip_name(raw: &[u8], mut pos: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *raw.get(pos)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => pos += 1 + len as usize,
            0xc0 => {
                raw.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
    None
}

/// Walks the answer, authority and additional sections looking for the OPT
/// record. `None` means malformed; `Some(None)` means no EDNS.
fn read_edns(raw: &[u8], mut pos: usize, h: &Header) -> Option<Option<Edns>> {
    let mut found = None;
    let total = h.ancount as usize + h.nscount as usize + h.arcount as usize;
    let additional_from = h.ancount as usize + h.nscount as usize;
    for i in 0..total {
        let name_start = pos;
        pos = skip_name(raw, pos)?;
        let fixed = raw.get(pos..pos + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let ttl = [fixed[4], fixed[5], fixed[6], fixed[7]];
        let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        pos += 10;
        raw.get(pos..pos + rdlen)?;
        pos += rdlen;
        if rtype == TYPE_OPT {
            // Only one OPT, only in the additional section, owned by the root.
            if i < additional_from || found.is_some() || raw.get(name_start) != Some(&0) {
                return None;
            }
            found = Some(Edns {
                udp_size: class,
                version: ttl[1],
                dnssec_ok: ttl[2] & 0x80 != 0,
            });
        }
    }
    Some(found)
}

/// Writes a wire-form name in presentation form, escaping as miekg/dns
/// (and so CoreDNS) does: `\.`, `\ ` and friends, `\DDD` for the rest.
pub fn write_name(out: &mut String, wire: &[u8]) {
    use std::fmt::Write as _;
    let mut pos = 0usize;
    while let Some(&len) = wire.get(pos) {
        let len = len as usize;
        if len == 0 || len & 0xc0 != 0 {
            break;
        }
        let Some(label) = wire.get(pos + 1..pos + 1 + len) else {
            break;
        };
        for &b in label {
            match b {
                // miekg/dns's special characters, so names print as CoreDNS prints them.
                b'.' | b' ' | b'\'' | b'@' | b';' | b'(' | b')' | b'"' | b'\\' => {
                    out.push('\\');
                    out.push(b as char);
                }
                0x21..=0x7e => out.push(b as char),
                _ => {
                    let _ = write!(out, "\\{b:03}");
                }
            }
        }
        out.push('.');
        pos += 1 + len;
    }
    if out.is_empty() {
        out.push('.');
    }
}

/// Converts a presentation-form name (`Example.org` or `example.org.`) to
/// lower-cased wire form. `None` for an empty label or a name too long.
pub fn name_to_wire(name: &str) -> Option<Vec<u8>> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            out.push(label.len() as u8);
            out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
    }
    out.push(0);
    (out.len() <= MAX_NAME).then_some(out)
}

/// Whether wire name `name` is `zone` or below it (both lower-cased wire form).
pub fn is_subdomain(name: &[u8], zone: &[u8]) -> bool {
    let mut pos = 0usize;
    loop {
        if &name[pos..] == zone {
            return true;
        }
        match name.get(pos) {
            Some(&0) | None => return false,
            Some(&len) => pos += 1 + len as usize,
        }
        if pos >= name.len() {
            return false;
        }
    }
}

/// Reads the question of a message: its name lower-cased into `lower`
/// (uncompressed, as the first name of a message must be), type and class.
/// Returns the name's length in wire form, the type, the class and the
/// offset just past the question. `None` when it does not read.
pub(crate) fn read_question(
    raw: &[u8],
    lower: &mut [u8; MAX_NAME],
) -> Option<(usize, u16, u16, usize)> {
    let name_end = read_question_name(raw, lower)?;
    let fixed = raw.get(name_end..name_end + 4)?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    Some((name_end - HEADER_LEN, qtype, qclass, name_end + 4))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns as HEdns, Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn client() -> SocketAddr {
        "127.0.0.1:5353".parse().unwrap()
    }

    fn query(name: &str, edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x1234;
        m.add_query(Query::query(
            Name::from_ascii(name).unwrap(),
            RecordType::AAAA,
        ));
        if let Some((size, dnssec)) = edns {
            let mut e = HEdns::new();
            e.set_max_payload(size);
            e.set_dnssec_ok(dnssec);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn reads_header_question_and_edns() {
        let raw = query("WWW.Example.ORG.", Some((1232, true)));
        let r = Request::parse(&raw, client(), Transport::Udp).unwrap();
        assert_eq!(r.id(), 0x1234);
        assert_eq!(r.qtype(), 28);
        assert_eq!(r.qclass(), 1);
        assert_eq!(r.qname_display(), "WWW.Example.ORG.");
        assert_eq!(r.qname_lower_display(), "www.example.org.");
        assert_eq!(
            r.qname_lower(),
            &name_to_wire("www.example.org.").unwrap()[..]
        );
        assert_eq!(r.udp_size(), 1232);
        assert!(r.dnssec_ok());
        assert!(r.message().is_some());
    }

    #[test]
    fn no_edns_means_512() {
        let raw = query("example.org.", None);
        let r = Request::parse(&raw, client(), Transport::Tcp).unwrap();
        assert_eq!(r.edns(), None);
        assert_eq!(r.udp_size(), 512);
        assert!(!r.dnssec_ok());
    }

    #[test]
    fn refuses_what_it_must() {
        assert_eq!(
            Request::parse(&[0; 5], client(), Transport::Udp).unwrap_err(),
            ParseError::TooShort
        );
        let mut raw = query("example.org.", None);
        raw[2] |= 0x80;
        assert_eq!(
            Request::parse(&raw, client(), Transport::Udp).unwrap_err(),
            ParseError::IsResponse
        );
        let mut raw = query("example.org.", None);
        raw[2] |= 2 << 3; // STATUS
        assert!(matches!(
            Request::parse(&raw, client(), Transport::Udp),
            Err(ParseError::NotImp(_))
        ));
        let mut raw = query("example.org.", None);
        raw[5] = 2; // two questions
        assert!(matches!(
            Request::parse(&raw, client(), Transport::Udp),
            Err(ParseError::FormErr(_))
        ));
        let raw = query("example.org.", None);
        assert!(matches!(
            Request::parse(&raw[..raw.len() - 1], client(), Transport::Udp),
            Err(ParseError::FormErr(_))
        ));
        // A compression pointer in the question (here pointing at itself).
        let mut raw = raw[..12].to_vec();
        raw.extend([0xc0, 12, 0, 1, 0, 1]);
        assert!(matches!(
            Request::parse(&raw, client(), Transport::Udp),
            Err(ParseError::FormErr(_))
        ));
    }

    #[test]
    fn bad_edns_version_is_badvers() {
        let mut raw = query("example.org.", Some((4096, false)));
        let n = raw.len();
        raw[n - 5] = 1; // version byte of the OPT TTL
        assert!(matches!(
            Request::parse(&raw, client(), Transport::Udp),
            Err(ParseError::BadVers(_))
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..600usize {
            let mut buf = vec![0u8; len % 300];
            for b in buf.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            if buf.len() > 2 {
                buf[2] &= 0x07; // mostly queries, so parsing goes deep
            }
            let _ = Request::parse(&buf, client(), Transport::Udp);
        }
    }

    #[test]
    fn names_escape_as_coredns() {
        let mut s = String::new();
        write_name(&mut s, b"\x04a b.\x02x@\x01\x07\x00");
        assert_eq!(s, "a\\ b\\..x\\@.\\007.");
    }

    #[test]
    fn subdomain() {
        let n = name_to_wire("a.b.example.org").unwrap();
        assert!(is_subdomain(&n, &name_to_wire("example.org.").unwrap()));
        assert!(is_subdomain(&n, &name_to_wire(".").unwrap()));
        assert!(is_subdomain(&n, &n));
        assert!(!is_subdomain(&n, &name_to_wire("ample.org.").unwrap()));
        assert!(!is_subdomain(&name_to_wire("org.").unwrap(), &n));
    }
}
