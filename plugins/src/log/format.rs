//! Log formats: placeholders such as `{type}` and `{>rflags}`, parsed once at
//! setup and filled per query (CoreDNS's `plugin/pkg/replacer`).
//!
//! Parsing follows CoreDNS exactly: find a `}`, step back to the nearest `{`;
//! a known label becomes a placeholder, `{/LABEL}` a metadata placeholder,
//! and anything else (`{host}`, `{ A }`, a lone brace) stays literal text.
//! Labels are case-sensitive.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use crate::request::{Request, write_name};

use crate::pkg::names;

/// CoreDNS's value for something unknown (`replacer.EmptyValue`).
pub(crate) const EMPTY: &str = "-";

/// `{common}`: CoreDNS's `CommonLogFormat`.
pub(crate) const COMMON: &str = "{remote}:{port} - {>id} \"{type} {class} {name} {proto} {size} {>do} {>bufsize}\" {rcode} {>rflags} {rsize} {duration}";

/// `{combined}`: the common format plus the query's opcode.
pub(crate) const COMBINED: &str = "{remote}:{port} - {>id} \"{type} {class} {name} {proto} {size} {>do} {>bufsize}\" {rcode} {>rflags} {rsize} {duration} \"{>opcode}\"";

/// The largest message over TCP, which `{>bufsize}` shows for TCP queries
/// (CoreDNS's `edns.Size`).
const TCP_BUFSIZE: u16 = 65535;

/// A placeholder CoreDNS knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    Type,
    Name,
    Class,
    Proto,
    Size,
    Remote,
    Port,
    Local,
    Id,
    Opcode,
    Do,
    Bufsize,
    Rcode,
    Rsize,
    Duration,
    Rflags,
}

impl Label {
    fn from_placeholder(s: &str) -> Option<Self> {
        Some(match s {
            "{type}" => Self::Type,
            "{name}" => Self::Name,
            "{class}" => Self::Class,
            "{proto}" => Self::Proto,
            "{size}" => Self::Size,
            "{remote}" => Self::Remote,
            "{port}" => Self::Port,
            "{local}" => Self::Local,
            "{>id}" => Self::Id,
            "{>opcode}" => Self::Opcode,
            "{>do}" => Self::Do,
            "{>bufsize}" => Self::Bufsize,
            "{rcode}" => Self::Rcode,
            "{rsize}" => Self::Rsize,
            "{duration}" => Self::Duration,
            "{>rflags}" => Self::Rflags,
            _ => return None,
        })
    }

    /// Whether the label needs the reply's bytes.
    fn needs_reply(self) -> bool {
        matches!(self, Self::Rcode | Self::Rsize | Self::Rflags)
    }
}

/// A piece of a format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Literal(String),
    Label(Label),
    /// `{/LABEL}`: metadata. nodedns has no *metadata* plugin, so this is
    /// always `-`, as in a CoreDNS without *metadata*.
    Metadata(String),
}

/// A parsed format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Format {
    nodes: Vec<Node>,
    needs_reply: bool,
}

/// What the reply looked like, when one was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReplyFacts {
    /// The full rcode (header bits plus EDNS extended bits).
    pub(crate) rcode: u16,
    /// Header bytes 2 and 3 (flags and low rcode).
    pub(crate) flags: u16,
    /// Encoded size.
    pub(crate) len: usize,
}

impl Format {
    /// Parses a format as CoreDNS's `parseFormat` does. Never fails: what is
    /// not a placeholder is text.
    pub(crate) fn parse(format: &str) -> Self {
        let mut nodes = Vec::new();
        let mut s = format;
        while let Some(j) = s.find('}') {
            let Some(i) = s[..j].rfind('{') else {
                push_literal(&mut nodes, &s[..=j]);
                s = &s[j + 1..];
                continue;
            };
            let val = &s[i..=j];
            if let Some(label) = Label::from_placeholder(val) {
                push_literal(&mut nodes, &s[..i]);
                nodes.push(Node::Label(label));
            } else if let Some(meta) = val.strip_prefix("{/") {
                push_literal(&mut nodes, &s[..i]);
                nodes.push(Node::Metadata(meta[..meta.len() - 1].to_string()));
            } else {
                push_literal(&mut nodes, &s[..=j]);
            }
            s = &s[j + 1..];
        }
        push_literal(&mut nodes, s);
        let needs_reply = nodes
            .iter()
            .any(|n| matches!(n, Node::Label(l) if l.needs_reply()));
        Self { nodes, needs_reply }
    }

    /// Whether any placeholder needs the reply's bytes.
    pub(crate) fn needs_reply(&self) -> bool {
        self.needs_reply
    }

    /// Whether the format uses `label`.
    pub(crate) fn uses(&self, label: Label) -> bool {
        self.nodes.contains(&Node::Label(label))
    }

    /// Fills the format for one query into `out`.
    pub(crate) fn render(
        &self,
        out: &mut String,
        req: &Request<'_>,
        reply: Option<ReplyFacts>,
        elapsed: Duration,
    ) {
        for node in &self.nodes {
            match node {
                Node::Literal(s) => out.push_str(s),
                Node::Metadata(_) => out.push_str(EMPTY),
                Node::Label(l) => render_label(out, *l, req, reply, elapsed),
            }
        }
    }
}

fn push_literal(nodes: &mut Vec<Node>, s: &str) {
    if s.is_empty() {
        return;
    }
    if let Some(Node::Literal(prev)) = nodes.last_mut() {
        prev.push_str(s);
    } else {
        nodes.push(Node::Literal(s.to_string()));
    }
}

fn render_label(
    out: &mut String,
    label: Label,
    req: &Request<'_>,
    reply: Option<ReplyFacts>,
    elapsed: Duration,
) {
    match label {
        Label::Type => names::write_type(out, req.qtype()),
        Label::Name => write_name(out, req.qname_lower()),
        Label::Class => names::write_class(out, req.qclass()),
        Label::Proto => out.push_str(req.transport().proto()),
        Label::Size => {
            let _ = write!(out, "{}", req.raw().len());
        }
        Label::Remote => write_ip(out, req.client().ip()),
        Label::Port => {
            let _ = write!(out, "{}", req.client().port());
        }
        // Refused at setup; never reached.
        Label::Local => out.push_str(EMPTY),
        Label::Id => {
            let _ = write!(out, "{}", req.id());
        }
        Label::Opcode => {
            let _ = write!(out, "{}", req.header().opcode());
        }
        Label::Do => out.push_str(if req.dnssec_ok() { "true" } else { "false" }),
        Label::Bufsize => {
            // CoreDNS's `state.Size()`: the EDNS size for a `udp` client.
            let size = if req.transport().is_udp() {
                req.udp_size()
            } else {
                TCP_BUFSIZE
            };
            let _ = write!(out, "{size}");
        }
        Label::Rcode => match reply {
            Some(r) => names::write_rcode(out, r.rcode),
            None => out.push_str(EMPTY),
        },
        Label::Rsize => {
            let _ = write!(out, "{}", reply.map_or(0, |r| r.len));
        }
        Label::Duration => {
            // Go's strconv.FormatFloat(secs, 'f', -1, 64): the shortest
            // digits that read back, never an exponent. Rust's `Display`
            // for f64 is the same.
            let _ = write!(out, "{}s", elapsed.as_secs_f64());
        }
        Label::Rflags => match reply {
            Some(r) => write_flags(out, r.flags),
            None => out.push_str(EMPTY),
        },
    }
}

/// Writes an address as CoreDNS's `{remote}` does: IPv6 in brackets,
/// IPv4-mapped IPv6 as plain IPv4 (as Go reports such peers).
fn write_ip(out: &mut String, ip: IpAddr) {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let _ = match ip {
        IpAddr::V4(v4) => write!(out, "{v4}"),
        IpAddr::V6(v6) => write!(out, "[{v6}]"),
    };
}

/// Writes the set header flags, comma-separated, in CoreDNS's order
/// (`qr,aa,tc,rd,ra,z,ad,cd`); nothing when none is set.
fn write_flags(out: &mut String, flags: u16) {
    const BITS: [(u16, &str); 8] = [
        (0x8000, "qr"),
        (0x0400, "aa"),
        (0x0200, "tc"),
        (0x0100, "rd"),
        (0x0080, "ra"),
        (0x0040, "z"),
        (0x0020, "ad"),
        (0x0010, "cd"),
    ];
    let mut first = true;
    for (bit, name) in BITS {
        if flags & bit != 0 {
            if !first {
                out.push(',');
            }
            out.push_str(name);
            first = false;
        }
    }
}

/// Reads what `{rcode}`, `{>rflags}` and `{rsize}` need from an encoded
/// reply. The rcode includes the EDNS extended bits when the reply has an
/// OPT record; a reply too short for a header reads as rcode 0, no flags.
pub(crate) fn reply_facts(wire: &[u8]) -> ReplyFacts {
    let flags = match wire.get(2..4) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 0,
    };
    let low = flags & 0x000f;
    let high = opt_rcode_high(wire).map_or(0, u16::from);
    ReplyFacts {
        rcode: (high << 4) | low,
        flags,
        len: wire.len(),
    }
}

/// The extended-rcode byte of the OPT record, if the message has one.
fn opt_rcode_high(wire: &[u8]) -> Option<u8> {
    let count = |i: usize| -> Option<usize> {
        let b = wire.get(i..i + 2)?;
        Some(u16::from_be_bytes([b[0], b[1]]) as usize)
    };
    let (qd, an, ns, ar) = (count(4)?, count(6)?, count(8)?, count(10)?);
    let mut pos = 12usize;
    for _ in 0..qd {
        pos = skip_name(wire, pos)? + 4;
    }
    for i in 0..an + ns + ar {
        pos = skip_name(wire, pos)?;
        let fixed = wire.get(pos..pos + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        if rtype == 41 && i >= an + ns {
            return Some(fixed[4]);
        }
        pos += 10 + rdlen;
    }
    None
}

/// Skips a name (a compression pointer ends it). `None` if malformed.
fn skip_name(wire: &[u8], mut pos: usize) -> Option<usize> {
    for _ in 0..128 {
        let len = *wire.get(pos)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => pos += 1 + len as usize,
            0xc0 => return Some(pos + 2),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Node {
        Node::Literal(s.to_string())
    }

    #[test]
    fn parses_as_coredns() {
        let cases: &[(&str, Vec<Node>)] = &[
            ("", vec![]),
            ("A", vec![lit("A")]),
            ("A {A}", vec![lit("A {A}")]),
            (
                "{{remote}}",
                vec![lit("{"), Node::Label(Label::Remote), lit("}")],
            ),
            (
                "{ A {remote} A }",
                vec![lit("{ A "), Node::Label(Label::Remote), lit(" A }")],
            ),
            ("{remote}}", vec![Node::Label(Label::Remote), lit("}")]),
            ("{{remote}", vec![lit("{"), Node::Label(Label::Remote)]),
            (
                "Foo } {remote}",
                vec![lit("Foo } "), Node::Label(Label::Remote)],
            ),
            ("{ Foo", vec![lit("{ Foo")]),
            ("} Foo", vec![lit("} Foo")]),
            (
                "A { {remote} {type} {/meta1} } B",
                vec![
                    lit("A { "),
                    Node::Label(Label::Remote),
                    lit(" "),
                    Node::Label(Label::Type),
                    lit(" "),
                    Node::Metadata("meta1".into()),
                    lit(" } B"),
                ],
            ),
            ("{>ID}", vec![lit("{>ID}")]),
            ("{/}", vec![Node::Metadata(String::new())]),
        ];
        for (format, want) in cases {
            assert_eq!(&Format::parse(format).nodes, want, "{format:?}");
        }
        assert!(Format::parse(COMMON).needs_reply());
        assert!(!Format::parse("{type} {name}").needs_reply());
        assert!(Format::parse(COMBINED).uses(Label::Opcode));
    }

    #[test]
    fn flags_in_coredns_order() {
        let mut s = String::new();
        write_flags(&mut s, 0x8580 | 0x0030);
        assert_eq!(s, "qr,aa,rd,ra,ad,cd");
        let mut s = String::new();
        write_flags(&mut s, 0);
        assert_eq!(s, "");
    }

    #[test]
    fn durations_print_as_go() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(123_456), "0.000123456s"),
            (Duration::from_nanos(100), "0.0000001s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(2), "2s"),
        ] {
            assert_eq!(format!("{}s", d.as_secs_f64()), want);
        }
    }

    #[test]
    fn remote_addresses_as_coredns() {
        for (ip, want) in [
            ("192.0.2.1", "192.0.2.1"),
            ("::1", "[::1]"),
            ("2001:db8::53", "[2001:db8::53]"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
        ] {
            let mut s = String::new();
            write_ip(&mut s, ip.parse().unwrap());
            assert_eq!(s, want);
        }
    }

    #[test]
    fn extended_rcode_from_opt() {
        use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.metadata.response_code = ResponseCode::BADCOOKIE;
        m.set_edns(Edns::new());
        let wire = m.to_vec().unwrap();
        assert_eq!(reply_facts(&wire).rcode, 23);
        assert_eq!(reply_facts(&wire).len, wire.len());
        assert_eq!(reply_facts(&[0; 3]).rcode, 0);
    }
}
