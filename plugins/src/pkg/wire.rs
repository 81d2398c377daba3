//! DNS wire-format helpers for the packet cache: pure functions over raw
//! messages, no `hickory_proto` parsing.
//!
//! The cache stores an upstream reply as bytes, without its OPT record (EDNS
//! is hop-by-hop), together with the offset of every TTL in those bytes. A
//! hit copies the bytes into the reply buffer and patches them in place: the
//! ID ([`set_id`]), the question's letter case ([`set_qname`]), the header
//! flags ([`set_hit_flags`]) and the TTLs ([`set_ttls`]); then it appends the
//! client's own OPT ([`push_opt`]). None of these allocate.
//!
//! [`analyze`] is the miss path. It walks a reply once, checks every count,
//! label and compression pointer against the bytes (pointer chains are
//! bounded, so a loop is an error, never a hang), records where the TTLs and
//! the OPT record are, and classifies the reply exactly as CoreDNS's
//! `response.Typify` does ([`Kind`]). [`strip_opt`] then produces the form
//! the cache stores. Nothing here panics, whatever the bytes.

use std::ops::Range;

use crate::request::{HEADER_LEN, MAX_NAME, read_question};

// Record types.
const TYPE_NS: u16 = 2;
const TYPE_MD: u16 = 3;
const TYPE_MF: u16 = 4;
const TYPE_CNAME: u16 = 5;
const TYPE_SOA: u16 = 6;
const TYPE_MB: u16 = 7;
const TYPE_MG: u16 = 8;
const TYPE_MR: u16 = 9;
const TYPE_PTR: u16 = 12;
const TYPE_MINFO: u16 = 14;
const TYPE_MX: u16 = 15;
const TYPE_RP: u16 = 17;
const TYPE_AFSDB: u16 = 18;
const TYPE_RT: u16 = 21;
const TYPE_PX: u16 = 26;
const TYPE_SRV: u16 = 33;
const TYPE_NAPTR: u16 = 35;
const TYPE_KX: u16 = 36;
const TYPE_DNAME: u16 = 39;
const TYPE_OPT: u16 = 41;
const TYPE_RRSIG: u16 = 46;
const TYPE_NSEC: u16 = 47;
const TYPE_IXFR: u16 = 251;
const TYPE_AXFR: u16 = 252;

// Opcodes and rcodes that typify looks at.
const OPCODE_NOTIFY: u16 = 4;
const OPCODE_UPDATE: u16 = 5;
const RCODE_NOERROR: u16 = 0;
const RCODE_SERVFAIL: u16 = 2;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_NOTIMP: u16 = 4;

// Header flag bits (second 16-bit word of the header).
const FLAG_QR: u16 = 0x8000;
const MASK_OPCODE: u16 = 0x7800;
const FLAG_AA: u16 = 0x0400;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_AD: u16 = 0x0020;
const FLAG_CD: u16 = 0x0010;
const MASK_RCODE: u16 = 0x000f;

/// Most compression pointers one name may follow: miekg/dns's
/// `maxCompressionPointers`, `(255 + 1) / 2 - 2`.
const MAX_POINTERS: usize = 126;

/// Size of an OPT record with no options (root owner, type, class, TTL, RDLEN).
pub const OPT_LEN: usize = 11;

/// Why a reply cannot be analyzed. The cache does not store such a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer than 12 bytes.
    #[error("reply shorter than a DNS header")]
    TooShort,
    /// More than 65535 bytes: no DNS message is that long.
    #[error("reply longer than 65535 bytes")]
    TooLong,
    /// The header's counts or a length run past the end of the bytes.
    #[error("reply truncated: data missing at offset {at}")]
    Truncated {
        /// Where the missing data should have been.
        at: usize,
    },
    /// A label length byte uses the reserved 0x40 or 0x80 forms.
    #[error("unsupported label type at offset {at}")]
    BadLabel {
        /// Offset of the length byte.
        at: usize,
    },
    /// A compression pointer points into the header, past the end, or into
    /// the OPT record.
    #[error("compression pointer at offset {at} points outside the message")]
    BadPointer {
        /// Offset of the pointer.
        at: usize,
    },
    /// A name follows more compression pointers than any name can need.
    #[error("compression pointer loop in the name at offset {at}")]
    PointerLoop {
        /// Offset where the name starts.
        at: usize,
    },
    /// A name longer than 255 bytes in wire form.
    #[error("name at offset {at} longer than 255 bytes")]
    NameTooLong {
        /// Offset where the name starts.
        at: usize,
    },
    /// The record data of a type with names in it does not read, or does not
    /// fill its RDLENGTH exactly.
    #[error("malformed {rtype} record data at offset {at}")]
    BadRdata {
        /// Offset of the record data.
        at: usize,
        /// The record's type.
        rtype: u16,
    },
    /// An OPT record outside the additional section, not owned by the root,
    /// or a second one (RFC 6891 6.1.1).
    #[error("misplaced or duplicate OPT record at offset {at}")]
    BadOpt {
        /// Offset of the OPT record.
        at: usize,
    },
}

/// What kind of reply this is: CoreDNS's `response.Type`, as its cache sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// NOERROR with answers, or NOERROR with nothing that makes it anything else.
    NoError,
    /// NXDOMAIN with an SOA in the authority section.
    NameError,
    /// NOERROR, no answers, an SOA in the authority section.
    NoData,
    /// NOERROR, no answers, no SOA, NS records in the authority section.
    Delegation,
    /// SERVFAIL or NOTIMP (CoreDNS's `ServerError`, cached for `servfail`).
    ServerError,
    /// A NOTIFY, or a reply to AXFR or IXFR: never cached.
    Meta,
    /// A dynamic update: never cached.
    Update,
    /// Anything else (NXDOMAIN without SOA, REFUSED, FORMERR, an expired
    /// signature when DO is set…): never cached.
    OtherError,
}

impl Kind {
    /// CoreDNS's spelling (`response.Type.String()`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoError => "NOERROR",
            Self::NameError => "NXDOMAIN",
            Self::ServerError => "SERVERERROR",
            Self::NoData => "NODATA",
            Self::Delegation => "DELEGATION",
            Self::Meta => "META",
            Self::Update => "UPDATE",
            Self::OtherError => "OTHERERROR",
        }
    }
}

/// Records whose TTL offsets [`Analysis`] holds without allocating.
pub const INLINE_TTLS: usize = 16;

/// The TTL offsets of a message.
pub type TtlOffsets = smallvec::SmallVec<[u16; INLINE_TTLS]>;

/// What the cache needs to know about an upstream reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    /// The rcode, with the OPT record's extended bits folded in:
    /// `(ext << 4) | header_rcode`.
    pub rcode: u16,
    /// TC: the reply was truncated (CoreDNS never caches those).
    pub truncated: bool,
    /// The reply's class, as CoreDNS's `response.Typify`.
    pub kind: Kind,
    /// Offset of the 4-byte TTL of every record in the answer, authority and
    /// additional sections except the OPT pseudo-record, **in the message
    /// [`strip_opt`] produces** (the form the cache stores). Without an OPT
    /// record these are also the offsets in the reply itself. Held inline up
    /// to [`INLINE_TTLS`] records, so a typical answer is analysed without
    /// allocating.
    pub ttl_offsets: TtlOffsets,
    /// The smallest TTL over those records (a TTL with the top bit set counts
    /// as 0, RFC 2181 8); `None` when there are none.
    pub min_ttl: Option<u32>,
    /// For [`Kind::NameError`] and [`Kind::NoData`]: min(SOA TTL, SOA
    /// MINIMUM) over the SOA records in the authority section (RFC 2308 5).
    /// `None` for every other kind.
    pub negative_ttl: Option<u32>,
    /// Where the OPT record sits in the reply.
    pub opt: Option<Range<usize>>,
    /// The DO bit of the reply's OPT record.
    pub dnssec_ok: bool,
    /// Offset just past the question section (12 with no question).
    pub question_end: usize,
    /// Number of records in the answer section.
    pub ancount: u16,
    /// Offset just past the last record; bytes after it are not part of the
    /// message and [`strip_opt`] drops them.
    pub end: usize,
    /// Compression pointers (their offsets in the reply) whose target lies
    /// after the OPT record: [`strip_opt`] moves their targets back. Almost
    /// always empty (it is only filled when the OPT record is not last and
    /// later names point past it).
    fixups: Vec<u16>,
}

impl Analysis {
    /// Whether CoreDNS's cache would store this reply (its `key()`): not
    /// truncated, and not an error, meta or update reply.
    pub fn cacheable(&self) -> bool {
        !self.truncated && !matches!(self.kind, Kind::OtherError | Kind::Meta | Kind::Update)
    }

    /// Length of the message [`strip_opt`] produces.
    pub fn stored_len(&self) -> usize {
        self.end - self.opt.as_ref().map_or(0, |r| r.end - r.start)
    }
}

/// Analyzes an upstream reply. Compression pointers are allowed anywhere
/// (chains are bounded); counts are checked against the bytes; never panics.
///
/// RRSIG validity is not checked: CoreDNS's `Typify` calls a reply with an
/// expired signature `OtherError` when its OPT has DO set, which needs the
/// time — use [`analyze_at`] for that.
pub fn analyze(reply: &[u8]) -> Result<Analysis, WireError> {
    analyze_inner(reply, None)
}

/// [`analyze`], plus CoreDNS's signature check: when the reply's OPT has DO
/// set and any RRSIG in it is outside its validity period at `now_unix`
/// (seconds since the epoch, RFC 1982 serial arithmetic as miekg/dns's
/// `ValidityPeriod`), the reply is [`Kind::OtherError`].
pub fn analyze_at(reply: &[u8], now_unix: u64) -> Result<Analysis, WireError> {
    analyze_inner(reply, Some(now_unix))
}

fn analyze_inner(msg: &[u8], now: Option<u64>) -> Result<Analysis, WireError> {
    let mut max_target = 0usize;
    let found = scan(msg, now, &mut |_, target| {
        max_target = max_target.max(target)
    })?;

    let mut fixups = Vec::new();
    if let Some(opt) = &found.opt
        && max_target >= opt.start
    {
        // Some pointer reaches the OPT record or beyond: walk again and list
        // the pointers strip_opt must move. Rare (the OPT record is last in
        // nearly every reply), so the common path walks once.
        let mut into_opt = None;
        scan(msg, None, &mut |at, target| {
            if target >= opt.end {
                fixups.push(at as u16);
            } else if target >= opt.start {
                into_opt.get_or_insert(at);
            }
        })?;
        if let Some(at) = into_opt {
            return Err(WireError::BadPointer { at });
        }
        fixups.sort_unstable();
        fixups.dedup();
    }

    let Scan {
        flags,
        ancount,
        question_end,
        first_qtype,
        mut ttl_offsets,
        min_ttl,
        soa_negative,
        authority_ns,
        opt,
        opt_ttl,
        expired_sig,
        end,
    } = found;

    if let Some(opt) = &opt {
        let cut = (opt.end - opt.start) as u16;
        for o in &mut ttl_offsets {
            if usize::from(*o) >= opt.end {
                *o -= cut;
            }
        }
    }

    let dnssec_ok = opt.is_some() && opt_ttl & 0x8000 != 0;
    let rcode = (((opt_ttl >> 24) as u16) << 4) | (flags & MASK_RCODE);
    let opcode = (flags & MASK_OPCODE) >> 11;
    let soa = soa_negative.is_some();

    // CoreDNS's response.Typify, in its order.
    let kind = if opcode == OPCODE_UPDATE {
        Kind::Update
    } else if opcode == OPCODE_NOTIFY || matches!(first_qtype, Some(TYPE_AXFR | TYPE_IXFR)) {
        Kind::Meta
    } else if dnssec_ok && expired_sig {
        Kind::OtherError
    } else if ancount > 0 && rcode == RCODE_NOERROR {
        Kind::NoError
    } else if soa && rcode == RCODE_NOERROR {
        Kind::NoData
    } else if soa && rcode == RCODE_NXDOMAIN {
        Kind::NameError
    } else if rcode == RCODE_SERVFAIL || rcode == RCODE_NOTIMP {
        Kind::ServerError
    } else if authority_ns && rcode == RCODE_NOERROR {
        Kind::Delegation
    } else if rcode == RCODE_NOERROR {
        Kind::NoError
    } else {
        Kind::OtherError
    };

    let negative_ttl = match kind {
        Kind::NameError | Kind::NoData => soa_negative,
        _ => None,
    };

    Ok(Analysis {
        rcode,
        truncated: flags & 0x0200 != 0,
        kind,
        ttl_offsets,
        min_ttl,
        negative_ttl,
        opt,
        dnssec_ok,
        question_end,
        ancount,
        end,
        fixups,
    })
}

/// What one walk over a message found.
struct Scan {
    flags: u16,
    ancount: u16,
    question_end: usize,
    first_qtype: Option<u16>,
    /// TTL offsets in the reply as received.
    ttl_offsets: TtlOffsets,
    min_ttl: Option<u32>,
    /// min(TTL, MINIMUM) over the authority section's SOA records.
    soa_negative: Option<u32>,
    authority_ns: bool,
    opt: Option<Range<usize>>,
    opt_ttl: u32,
    expired_sig: bool,
    end: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Answer,
    Authority,
    Additional,
}

/// Walks the whole message, calling `on_ptr(offset, target)` for every
/// compression pointer met (in place or while following a chain).
fn scan<F: FnMut(usize, usize)>(
    msg: &[u8],
    now: Option<u64>,
    on_ptr: &mut F,
) -> Result<Scan, WireError> {
    if msg.len() < HEADER_LEN {
        return Err(WireError::TooShort);
    }
    if msg.len() > usize::from(u16::MAX) {
        return Err(WireError::TooLong);
    }
    let flags = be16(msg, 2);
    let qdcount = usize::from(be16(msg, 4));
    let ancount = be16(msg, 6);
    let nscount = be16(msg, 8);
    let arcount = be16(msg, 10);
    let an = usize::from(ancount);
    let ns = usize::from(nscount);
    let total = an + ns + usize::from(arcount);
    // A question takes at least 5 bytes and a record at least 11: refuse
    // counts the bytes cannot hold before walking (and before allocating).
    if qdcount * 5 + total * 11 > msg.len() - HEADER_LEN {
        return Err(WireError::Truncated { at: msg.len() });
    }

    let mut pos = HEADER_LEN;
    let mut first_qtype = None;
    for _ in 0..qdcount {
        pos = walk_name(msg, pos, on_ptr)?;
        if pos + 4 > msg.len() {
            return Err(WireError::Truncated { at: pos });
        }
        first_qtype.get_or_insert(be16(msg, pos));
        pos += 4;
    }
    let question_end = pos;

    let mut ttl_offsets = TtlOffsets::with_capacity(total);
    let mut min_ttl: Option<u32> = None;
    let mut soa_negative: Option<u32> = None;
    let mut authority_ns = false;
    let mut opt = None;
    let mut opt_ttl = 0u32;
    let mut expired_sig = false;

    for i in 0..total {
        let section = if i < an {
            Section::Answer
        } else if i < an + ns {
            Section::Authority
        } else {
            Section::Additional
        };
        let owner = pos;
        pos = walk_name(msg, pos, on_ptr)?;
        if pos + 10 > msg.len() {
            return Err(WireError::Truncated { at: pos });
        }
        let rtype = be16(msg, pos);
        let ttl = be32(msg, pos + 4);
        let rdata = pos + 10;
        let rend = rdata + usize::from(be16(msg, pos + 8));
        if rend > msg.len() {
            return Err(WireError::Truncated { at: rdata });
        }

        if rtype == TYPE_OPT {
            if section != Section::Additional || opt.is_some() || msg[owner] != 0 {
                return Err(WireError::BadOpt { at: owner });
            }
            opt = Some(owner..rend);
            opt_ttl = ttl;
            pos = rend;
            continue;
        }

        ttl_offsets.push((pos + 4) as u16);
        // RFC 2181 8: a TTL with the top bit set is treated as zero.
        let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
        min_ttl = Some(min_ttl.map_or(ttl, |m| m.min(ttl)));

        let names_end = check_rdata(msg, rtype, rdata, rend, on_ptr)?;
        if section == Section::Authority {
            match rtype {
                TYPE_SOA => {
                    let minimum = be32(msg, names_end + 16);
                    let neg = ttl.min(minimum);
                    soa_negative = Some(soa_negative.map_or(neg, |n| n.min(neg)));
                }
                TYPE_NS => authority_ns = true,
                _ => {}
            }
        }
        if rtype == TYPE_RRSIG
            && let Some(now) = now
        {
            // Expiration at +8, inception at +12 (RFC 4034 3.1); the RDATA
            // is at least 18 bytes long, check_rdata saw to that.
            let expiration = be32(msg, rdata + 8);
            let inception = be32(msg, rdata + 12);
            if !signature_valid(inception, expiration, now) {
                expired_sig = true;
            }
        }
        pos = rend;
    }

    Ok(Scan {
        flags,
        ancount,
        question_end,
        first_qtype,
        ttl_offsets,
        min_ttl,
        soa_negative,
        authority_ns,
        opt,
        opt_ttl,
        expired_sig,
        end: pos,
    })
}

/// Follows the name at `start` to its end (through compression pointers,
/// bounded) and returns the offset just past it in place.
fn walk_name<F: FnMut(usize, usize)>(
    msg: &[u8],
    start: usize,
    on_ptr: &mut F,
) -> Result<usize, WireError> {
    let mut pos = start;
    let mut end = None;
    let mut hops = 0usize;
    let mut wire_len = 0usize;
    loop {
        let Some(&len) = msg.get(pos) else {
            return Err(WireError::Truncated { at: pos });
        };
        match len & 0xc0 {
            0x00 => {
                wire_len += 1 + usize::from(len);
                if wire_len > MAX_NAME {
                    return Err(WireError::NameTooLong { at: start });
                }
                if len == 0 {
                    return Ok(end.unwrap_or(pos + 1));
                }
                pos += 1 + usize::from(len);
            }
            0xc0 => {
                let Some(&low) = msg.get(pos + 1) else {
                    return Err(WireError::Truncated { at: pos + 1 });
                };
                let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                hops += 1;
                if hops > MAX_POINTERS {
                    return Err(WireError::PointerLoop { at: start });
                }
                if !(HEADER_LEN..msg.len()).contains(&target) {
                    return Err(WireError::BadPointer { at: pos });
                }
                on_ptr(pos, target);
                end.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(WireError::BadLabel { at: pos }),
        }
    }
}

/// Checks the names inside the record data of the types that carry names
/// (RFC 1035 and successors, the ones a server may compress or a resolver
/// may find compressed), reporting their pointers. Returns the offset just
/// past the names (for SOA: where SERIAL starts); `start` for other types.
fn check_rdata<F: FnMut(usize, usize)>(
    msg: &[u8],
    rtype: u16,
    start: usize,
    end: usize,
    on_ptr: &mut F,
) -> Result<usize, WireError> {
    let bad = WireError::BadRdata { at: start, rtype };
    // (bytes before the first name, how many names, bytes after them or
    // None when anything may follow)
    let (prefix, count, suffix) = match rtype {
        TYPE_NS | TYPE_MD | TYPE_MF | TYPE_CNAME | TYPE_MB | TYPE_MG | TYPE_MR | TYPE_PTR
        | TYPE_DNAME => (0, 1, Some(0)),
        TYPE_SOA => (0, 2, Some(20)),
        TYPE_MINFO | TYPE_RP => (0, 2, Some(0)),
        TYPE_MX | TYPE_AFSDB | TYPE_RT | TYPE_KX => (2, 1, Some(0)),
        TYPE_PX => (2, 2, Some(0)),
        TYPE_SRV => (6, 1, Some(0)),
        TYPE_NSEC => (0, 1, None),
        TYPE_RRSIG => (18, 1, None),
        TYPE_NAPTR => {
            // ORDER, PREFERENCE, then FLAGS, SERVICES, REGEXP as
            // character-strings, then REPLACEMENT.
            let mut p = start + 4;
            for _ in 0..3 {
                let Some(&len) = msg.get(p).filter(|_| p < end) else {
                    return Err(bad);
                };
                p += 1 + usize::from(len);
            }
            (p - start, 1, Some(0))
        }
        _ => return Ok(start),
    };
    let mut p = start + prefix;
    if p >= end {
        return Err(bad);
    }
    for _ in 0..count {
        p = walk_name(msg, p, on_ptr)?;
        if p > end {
            return Err(bad);
        }
    }
    match suffix {
        Some(s) if p + s != end => Err(bad),
        _ => Ok(p),
    }
}

/// Whether `now` lies within a signature's validity period: miekg/dns's
/// `RRSIG.ValidityPeriod` (RFC 1982 serial arithmetic).
fn signature_valid(inception: u32, expiration: u32, now: u64) -> bool {
    const YEAR68: i128 = 1 << 31;
    let now = i128::from(now);
    let modi = (i128::from(inception) - now) / YEAR68;
    let mode = (i128::from(expiration) - now) / YEAR68;
    let ti = i128::from(inception) + modi * YEAR68;
    let te = i128::from(expiration) + mode * YEAR68;
    ti <= now && now <= te
}

/// Copies `reply` into `out` (cleared first) in the form the cache stores:
/// without its OPT record (ARCOUNT decremented, compression pointers past it
/// moved back) and without bytes after the last record. `a` must be
/// [`analyze`]'s answer for `reply`; [`Analysis::ttl_offsets`] are offsets
/// in `out`.
pub fn strip_opt(reply: &[u8], a: &Analysis, out: &mut Vec<u8>) {
    out.clear();
    let end = a.end.min(reply.len());
    let Some(opt) = a
        .opt
        .clone()
        .filter(|r| HEADER_LEN <= r.start && r.start <= r.end && r.end <= end)
    else {
        out.extend_from_slice(&reply[..end]);
        return;
    };
    let cut = opt.end - opt.start;
    out.reserve(end - cut);
    out.extend_from_slice(&reply[..opt.start]);
    out.extend_from_slice(&reply[opt.end..end]);
    let arcount = be16(out, 10).saturating_sub(1);
    out[10..12].copy_from_slice(&arcount.to_be_bytes());
    for &at in &a.fixups {
        let at = usize::from(at);
        let at = if at >= opt.end { at - cut } else { at };
        if let Some(p) = out.get_mut(at..at + 2) {
            let target = (usize::from(p[0] & 0x3f) << 8) | usize::from(p[1]);
            let moved = 0xc000 | (target.saturating_sub(cut) as u16 & 0x3fff);
            p.copy_from_slice(&moved.to_be_bytes());
        }
    }
}

/// Sets the message ID.
pub fn set_id(msg: &mut [u8], id: u16) {
    if let Some(h) = msg.get_mut(0..2) {
        h.copy_from_slice(&id.to_be_bytes());
    }
}

/// Writes `ttl` into the 4-byte TTL field at each offset (offsets that do
/// not fit are skipped).
pub fn set_ttls(msg: &mut [u8], offsets: &[u16], ttl: u32) {
    let ttl = ttl.to_be_bytes();
    for &o in offsets {
        let o = usize::from(o);
        if let Some(field) = msg.get_mut(o..o + 4) {
            field.copy_from_slice(&ttl);
        }
    }
}

/// Writes `ttl` into the TTL field of every record of `reply` itself (the
/// message [`analyze`] was given, not the stored form) except the OPT
/// record, whose TTL field holds EDNS flags. [`Analysis::ttl_offsets`] are
/// offsets in the stored form: records after the OPT record sit its length
/// further on in the reply. `a` must be [`analyze`]'s answer for `reply`;
/// offsets that do not fit are skipped. Does not allocate.
pub fn set_reply_ttls(reply: &mut [u8], a: &Analysis, ttl: u32) {
    let ttl = ttl.to_be_bytes();
    let (opt_start, cut) = a.opt.as_ref().map_or((usize::MAX, 0), |r| {
        (r.start, r.end.saturating_sub(r.start))
    });
    for &o in &a.ttl_offsets {
        let mut o = usize::from(o);
        if o >= opt_start {
            o += cut;
        }
        if let Some(field) = reply.get_mut(o..o + 4) {
            field.copy_from_slice(&ttl);
        }
    }
}

/// Copies the client's spelling of the question name over the stored one at
/// offset 12. Both are the same lower-cased name, so the same length; names
/// in the records that point at the question follow the new spelling too.
/// Does nothing if the name does not fit.
pub fn set_qname(msg: &mut [u8], qname_wire: &[u8]) {
    if let Some(name) = msg.get_mut(HEADER_LEN..HEADER_LEN + qname_wire.len()) {
        name.copy_from_slice(qname_wire);
    }
}

/// Appends an OPT record (root owner, CLASS = `udp_size`, extended rcode and
/// version 0, DO as given, no options) and increments ARCOUNT. Does not
/// allocate when `buf` has 11 bytes of spare capacity. Does nothing when
/// `buf` has no header or ARCOUNT is at its maximum.
pub fn push_opt(buf: &mut Vec<u8>, udp_size: u16, dnssec_ok: bool) {
    if buf.len() < HEADER_LEN {
        return;
    }
    let Some(arcount) = be16(buf, 10).checked_add(1) else {
        return;
    };
    buf[10..12].copy_from_slice(&arcount.to_be_bytes());
    let [s0, s1] = udp_size.to_be_bytes();
    let [t0, t1] = TYPE_OPT.to_be_bytes();
    let flags = if dnssec_ok { 0x80 } else { 0 };
    buf.extend_from_slice(&[0, t0, t1, s0, s1, 0, 0, flags, 0, 0, 0]);
}

/// Sets the header flags of a stored reply for a hit, as CoreDNS 1.14's
/// `item.toMsg` builds one (`SetReply` on the query, then the stored bits):
///
/// - QR set; opcode, RD and CD copied from the query (`query_flags`);
/// - AA set: CoreDNS 1.14's cache always answers `Authoritative = true`
///   (later CoreDNS, coredns/coredns#8419, replays the stored AA instead;
///   to follow it, keep `stored & 0x0400` here);
/// - TC and Z cleared;
/// - RA and the rcode kept as stored;
/// - AD kept as stored, but cleared when the query set neither DO
///   (`dnssec_ok`) nor AD (RFC 6840 5.7–5.8).
pub fn set_hit_flags(msg: &mut [u8], query_flags: u16, dnssec_ok: bool) {
    if msg.len() < HEADER_LEN {
        return;
    }
    let stored = be16(msg, 2);
    let mut flags = FLAG_QR
        | FLAG_AA
        | (query_flags & (MASK_OPCODE | FLAG_RD | FLAG_CD))
        | (stored & (FLAG_RA | MASK_RCODE));
    if stored & FLAG_AD != 0 && (dnssec_ok || query_flags & FLAG_AD != 0) {
        flags |= FLAG_AD;
    }
    msg[2..4].copy_from_slice(&flags.to_be_bytes());
}

/// Whether `reply` is a response with exactly one question equal to the
/// query's: lower-cased name (wire form), type and class. CoreDNS's cache
/// refuses to store a mismatch (`coredns_cache_drops_total`).
pub fn question_matches(reply: &[u8], qname_lower: &[u8], qtype: u16, qclass: u16) -> bool {
    if reply.len() < HEADER_LEN || be16(reply, 2) & FLAG_QR == 0 || be16(reply, 4) != 1 {
        return false;
    }
    let mut lower = [0u8; MAX_NAME];
    let Some((len, t, c, _)) = read_question(reply, &mut lower) else {
        return false;
    };
    t == qtype && c == qclass && lower[..len] == *qname_lower
}

/// Truncates `msg` in place to at most `limit` bytes as miekg/dns's
/// `Msg.Truncate` does for CoreDNS's server: the header and the question
/// stay; then the longest run of records, in order (answer, then
/// authority, then additional), that fits in `limit` less the OPT record;
/// the OPT record stays (moved after the kept records when it lay past
/// them) unless not even the header and question fit beside it; TC is set
/// when a record was left out. Nothing changes when `msg` already fits.
///
/// The records are kept as they are on the wire, so it costs a walk over
/// the records, never a parse or an encode, and it does not allocate.
/// Fails, leaving `msg` as it was, when the message does not read, when a
/// kept name points past the kept bytes (a forward compression pointer),
/// or when not even the header and question fit.
pub fn truncate(msg: &mut Vec<u8>, limit: usize) -> Result<(), WireError> {
    if msg.len() <= limit {
        return Ok(());
    }
    // A pointer's target is checked against the cut, but not the labels
    // read after it: only a message compressed backwards is cut as it is.
    let opt = backward_walk(msg)?;
    let p = prefix(msg, limit, opt.clone(), false)?;
    let mut arcount = p.kept[2];
    let end = match opt {
        Some(r) if p.keep_opt && r.start >= p.end => {
            let len = r.end - r.start;
            msg.copy_within(r, p.end);
            arcount += 1;
            p.end + len
        }
        Some(r) if p.keep_opt && r.end <= p.end => {
            arcount += 1;
            p.end
        }
        _ => p.end,
    };
    msg.truncate(end);
    set_counts(msg, p.kept[0], p.kept[1], arcount, p.left_out);
    Ok(())
}

/// Whether every compression pointer in `msg` points back, before itself,
/// at labels that end (in the root label or another pointer) before that
/// pointer too. Then every name reads only bytes before its own end, so a
/// cut at any record boundary leaves every kept name whole: what
/// [`truncate`] and [`copy_fitting`] rely on. What a compressor writes
/// always passes; only a crafted message fails. `false` when `msg` does not
/// read at all.
pub fn compression_is_backward(msg: &[u8]) -> bool {
    backward_walk(msg).is_ok()
}

/// Walks every name of `msg` (allocating nothing), checking that it is
/// compressed backwards ([`compression_is_backward`]), and returns where
/// the OPT record is (the first record of type OPT in the additional
/// section).
fn backward_walk(msg: &[u8]) -> Result<Option<Range<usize>>, WireError> {
    let (qd, an, ns, total) = counts(msg)?;
    let mut backward = true;
    let mut check = |at: usize, target: usize| {
        backward = backward && target < at && labels_end_before(msg, target, at);
    };
    let mut pos = HEADER_LEN;
    for _ in 0..qd {
        pos = walk_name(msg, pos, &mut check)? + 4;
    }
    let mut opt = None;
    for i in 0..total {
        let (rtype, end) = record(msg, pos, &mut check)?;
        if rtype == TYPE_OPT && i >= an + ns && opt.is_none() {
            opt = Some(pos..end);
        }
        pos = end;
    }
    if !backward {
        return Err(WireError::BadPointer { at: HEADER_LEN });
    }
    Ok(opt)
}

/// Whether the labels from `p` end, in a root label or a pointer (both of
/// its bytes), before `limit`.
fn labels_end_before(msg: &[u8], mut p: usize, limit: usize) -> bool {
    // Bounded: each step moves forward, and `limit` is within the message.
    while p < limit {
        let Some(&len) = msg.get(p) else {
            return false;
        };
        match len & 0xc0 {
            0x00 if len == 0 => return true,
            0x00 => p += 1 + usize::from(len),
            0xc0 => return p + 1 < limit,
            _ => return false,
        }
    }
    false
}

/// Copies `msg` — a message without an OPT record, as the cache stores
/// one, compressed backwards ([`compression_is_backward`]: the cache does
/// not keep a reply it might cut otherwise) — into `out` (cleared first), cut as [`truncate`] cuts to fit in
/// `limit` bytes: whole when it fits, else the header, the question and the
/// longest run of records that fits. Returns whether a record was left
/// out; the caller sets TC ([`set_truncated`]) once it has set the flags.
///
/// Reads only the records it keeps, so a hit on a large entry for a small
/// UDP client costs about what a hit on a small entry does. When the kept
/// part cannot be walked (see [`truncate`]), copies `msg` whole.
pub fn copy_fitting(msg: &[u8], limit: usize, out: &mut Vec<u8>) -> bool {
    out.clear();
    if msg.len() <= limit {
        out.extend_from_slice(msg);
        return false;
    }
    let Ok(p) = prefix(msg, limit, None, true) else {
        out.extend_from_slice(msg);
        return false;
    };
    out.extend_from_slice(&msg[..p.end]);
    set_counts(out, p.kept[0], p.kept[1], p.kept[2], false);
    p.left_out
}

/// Sets TC in a message's header.
pub fn set_truncated(msg: &mut [u8]) {
    if let Some(b) = msg.get_mut(2) {
        *b |= 0x02;
    }
}

/// Writes the three record counts and, when `tc`, sets TC.
fn set_counts(msg: &mut [u8], an: u16, ns: u16, ar: u16, tc: bool) {
    if msg.len() < HEADER_LEN {
        return;
    }
    msg[6..8].copy_from_slice(&an.to_be_bytes());
    msg[8..10].copy_from_slice(&ns.to_be_bytes());
    msg[10..12].copy_from_slice(&ar.to_be_bytes());
    if tc {
        set_truncated(msg);
    }
}

/// The kept part of a message, as [`prefix`] found it.
struct Prefix {
    /// Offset just past the kept records (the OPT record included when it
    /// lies among them).
    end: usize,
    /// Records kept per section, the OPT record not counted.
    kept: [u16; 3],
    /// A record other than the OPT was left out.
    left_out: bool,
    /// The OPT record stays.
    keep_opt: bool,
}

/// Walks the question and then the records, in order, while they fit in
/// `limit` bytes with the OPT record at `opt` (its bytes reserved, and not
/// walked); stops at the first record that does not fit. Every compression
/// pointer met in the kept names must point inside the kept bytes. For a
/// `stored` message (one [`analyze`] accepted, as the cache keeps it) an
/// owner name that ends in a pointer is not followed: the pointer must
/// point back, before itself, which keeps the hit's walk short.
fn prefix(
    msg: &[u8],
    limit: usize,
    opt: Option<Range<usize>>,
    stored: bool,
) -> Result<Prefix, WireError> {
    let (qd, an, ns, total) = counts(msg)?;
    let mut max_target = 0usize;
    let mut pos = HEADER_LEN;
    for _ in 0..qd {
        pos = walk_name(msg, pos, &mut |_, t| max_target = max_target.max(t))?;
        if pos + 4 > msg.len() {
            return Err(WireError::Truncated { at: pos });
        }
        pos += 4;
    }
    let opt_len = opt.as_ref().map_or(0, |r| r.end - r.start);
    let keep_opt = opt.is_some() && pos + opt_len <= limit;
    let budget = if keep_opt { limit - opt_len } else { limit };
    if pos > budget {
        return Err(WireError::TooLong);
    }
    let mut used = pos;
    let mut kept = [0u16; 3];
    let mut left_out = false;
    for i in 0..total {
        if let Some(r) = opt.as_ref().filter(|r| r.start == pos) {
            if !keep_opt {
                left_out = i + 1 < total;
                break;
            }
            pos = r.end;
            continue;
        }
        let mut furthest = 0usize;
        let (_, end) = if stored {
            stored_record(msg, pos, &mut |_, t| furthest = furthest.max(t))?
        } else {
            record(msg, pos, &mut |_, t| furthest = furthest.max(t))?
        };
        used += end - pos;
        if used > budget {
            left_out = true;
            break;
        }
        max_target = max_target.max(furthest);
        let section = if i < an {
            0
        } else if i < an + ns {
            1
        } else {
            2
        };
        kept[section] += 1;
        pos = end;
    }
    if max_target >= pos {
        return Err(WireError::BadPointer { at: max_target });
    }
    Ok(Prefix {
        end: pos,
        kept,
        left_out,
        keep_opt,
    })
}

/// [`record`] for a message [`analyze`] already accepted: the owner name is
/// skipped in place, and a pointer that ends it must point before itself
/// (reported to `on_ptr`, not followed); the names in the record data are
/// walked as [`record`] walks them.
fn stored_record<F: FnMut(usize, usize)>(
    msg: &[u8],
    pos: usize,
    on_ptr: &mut F,
) -> Result<(u16, usize), WireError> {
    let mut p = pos;
    for _ in 0..MAX_NAME {
        let Some(&len) = msg.get(p) else {
            return Err(WireError::Truncated { at: p });
        };
        match len & 0xc0 {
            0x00 if len == 0 => {
                p += 1;
                break;
            }
            0x00 => p += 1 + usize::from(len),
            0xc0 => {
                let Some(&low) = msg.get(p + 1) else {
                    return Err(WireError::Truncated { at: p + 1 });
                };
                let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                if !(HEADER_LEN..p).contains(&target) {
                    return Err(WireError::BadPointer { at: p });
                }
                on_ptr(p, target);
                p += 2;
                break;
            }
            _ => return Err(WireError::BadLabel { at: p }),
        }
    }
    if p + 10 > msg.len() {
        return Err(WireError::Truncated { at: p });
    }
    let rtype = be16(msg, p);
    let rdata = p + 10;
    let end = rdata + usize::from(be16(msg, p + 8));
    if end > msg.len() {
        return Err(WireError::Truncated { at: rdata });
    }
    check_rdata(msg, rtype, rdata, end, on_ptr)?;
    Ok((rtype, end))
}

/// The question count, the answer and authority counts, and the number of
/// records, checked against the bytes as [`analyze`] checks them.
fn counts(msg: &[u8]) -> Result<(usize, usize, usize, usize), WireError> {
    if msg.len() < HEADER_LEN {
        return Err(WireError::TooShort);
    }
    if msg.len() > usize::from(u16::MAX) {
        return Err(WireError::TooLong);
    }
    let qd = usize::from(be16(msg, 4));
    let an = usize::from(be16(msg, 6));
    let ns = usize::from(be16(msg, 8));
    let total = an + ns + usize::from(be16(msg, 10));
    if qd * 5 + total * 11 > msg.len() - HEADER_LEN {
        return Err(WireError::Truncated { at: msg.len() });
    }
    Ok((qd, an, ns, total))
}

/// Walks the record at `pos`: its owner, and the names in its data.
/// Returns its type and the offset just past it.
fn record<F: FnMut(usize, usize)>(
    msg: &[u8],
    pos: usize,
    on_ptr: &mut F,
) -> Result<(u16, usize), WireError> {
    let p = walk_name(msg, pos, on_ptr)?;
    if p + 10 > msg.len() {
        return Err(WireError::Truncated { at: p });
    }
    let rtype = be16(msg, p);
    let rdata = p + 10;
    let end = rdata + usize::from(be16(msg, p + 8));
    if end > msg.len() {
        return Err(WireError::Truncated { at: rdata });
    }
    if rtype != TYPE_OPT {
        check_rdata(msg, rtype, rdata, end, on_ptr)?;
    }
    Ok((rtype, end))
}

/// Big-endian u16 at `i`; callers have checked the bounds.
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// Big-endian u32 at `i`; callers have checked the bounds.
fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::name_to_wire;
    use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn reply(qname: &str, qtype: RecordType) -> Message {
        let mut m = Message::response(0x4242, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.metadata.recursion_available = true;
        m.add_query(Query::query(name(qname), qtype));
        m
    }

    fn a(owner: &str, ttl: u32, last: u8) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A::new(192, 0, 2, last)))
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        let zone = name("example.org.");
        Record::from_rdata(
            zone.clone(),
            ttl,
            RData::SOA(SOA::new(
                name("ns.example.org."),
                name("hostmaster.example.org."),
                1,
                7200,
                3600,
                1_209_600,
                minimum,
            )),
        )
    }

    /// Analyzes, stores (strip_opt), patches every TTL to 7 and decodes:
    /// every record must read back with TTL 7.
    fn store_and_patch(raw: &[u8]) -> (Analysis, Vec<u8>, Message) {
        let a = analyze(raw).unwrap();
        let mut stored = Vec::new();
        strip_opt(raw, &a, &mut stored);
        assert_eq!(stored.len(), a.stored_len());
        set_ttls(&mut stored, &a.ttl_offsets, 7);
        let m = Message::from_vec(&stored).unwrap();
        let records: Vec<_> = m.all_sections().collect();
        assert_eq!(records.len(), a.ttl_offsets.len());
        for r in records {
            assert_eq!(r.ttl, 7, "{r}");
        }
        (a, stored, m)
    }

    #[test]
    fn a_answers_with_compression() {
        let mut m = reply("www.example.org.", RecordType::A);
        m.add_answer(a("www.example.org.", 300, 1));
        m.add_answer(a("www.example.org.", 200, 2));
        let raw = m.to_vec().unwrap();
        // hickory compresses the owners to pointers at the question.
        assert!(raw.windows(2).any(|w| w == [0xc0, 12]));
        let an = analyze(&raw).unwrap();
        assert_eq!(an.kind, Kind::NoError);
        assert_eq!(an.rcode, 0);
        assert!(!an.truncated);
        assert_eq!(an.ancount, 2);
        assert_eq!(an.ttl_offsets.len(), 2);
        assert_eq!(an.min_ttl, Some(200));
        assert_eq!(an.negative_ttl, None);
        assert_eq!(an.opt, None);
        assert_eq!(an.end, raw.len());
        assert_eq!(an.question_end, 12 + 17 + 4);
        let o = usize::from(an.ttl_offsets[0]);
        assert_eq!(be32(&raw, o), 300);
        assert!(an.cacheable());
        let (_, _, m) = store_and_patch(&raw);
        assert_eq!(m.answers.len(), 2);
    }

    #[test]
    fn cname_chain() {
        let mut m = reply("www.example.org.", RecordType::A);
        m.add_answer(Record::from_rdata(
            name("www.example.org."),
            600,
            RData::CNAME(CNAME(name("a.example.net."))),
        ));
        m.add_answer(Record::from_rdata(
            name("a.example.net."),
            120,
            RData::CNAME(CNAME(name("b.example.net."))),
        ));
        m.add_answer(a("b.example.net.", 30, 9));
        let raw = m.to_vec().unwrap();
        let (an, _, m) = store_and_patch(&raw);
        assert_eq!(an.kind, Kind::NoError);
        assert_eq!(an.min_ttl, Some(30));
        assert_eq!(
            m.answers[1].data,
            RData::CNAME(CNAME(name("b.example.net.")))
        );
    }

    #[test]
    fn nxdomain_with_soa() {
        let mut m = reply("nope.example.org.", RecordType::A);
        m.metadata.response_code = ResponseCode::NXDomain;
        m.add_authority(soa(900, 300));
        let raw = m.to_vec().unwrap();
        let (an, _, _) = store_and_patch(&raw);
        assert_eq!(an.kind, Kind::NameError);
        assert_eq!(an.rcode, 3);
        assert_eq!(an.negative_ttl, Some(300));
        assert_eq!(an.min_ttl, Some(900));

        let mut m = reply("nope.example.org.", RecordType::A);
        m.metadata.response_code = ResponseCode::NXDomain;
        m.add_authority(soa(60, 300));
        let an = analyze(&m.to_vec().unwrap()).unwrap();
        assert_eq!(an.negative_ttl, Some(60));
    }

    #[test]
    fn nodata() {
        let mut m = reply("www.example.org.", RecordType::AAAA);
        m.add_authority(soa(3600, 900));
        let raw = m.to_vec().unwrap();
        let (an, _, _) = store_and_patch(&raw);
        assert_eq!(an.kind, Kind::NoData);
        assert_eq!(an.negative_ttl, Some(900));
        assert_eq!(an.ancount, 0);
    }

    #[test]
    fn delegation() {
        let mut m = reply("www.sub.example.org.", RecordType::A);
        for ns in ["ns1.sub.example.org.", "ns2.sub.example.org."] {
            m.add_authority(Record::from_rdata(
                name("sub.example.org."),
                86400,
                RData::NS(NS(name(ns))),
            ));
        }
        m.add_additional(a("ns1.sub.example.org.", 3600, 53));
        m.add_additional(Record::from_rdata(
            name("ns1.sub.example.org."),
            1800,
            RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 53)),
        ));
        let raw = m.to_vec().unwrap();
        let (an, _, _) = store_and_patch(&raw);
        assert_eq!(an.kind, Kind::Delegation);
        assert_eq!(an.ttl_offsets.len(), 4);
        assert_eq!(an.min_ttl, Some(1800));
        assert_eq!(an.negative_ttl, None);
    }

    #[test]
    fn errors_typify_as_coredns() {
        let kind = |rcode: ResponseCode, with_soa: bool| {
            let mut m = reply("www.example.org.", RecordType::A);
            m.metadata.response_code = rcode;
            if with_soa {
                m.add_authority(soa(60, 60));
            }
            analyze(&m.to_vec().unwrap()).unwrap().kind
        };
        assert_eq!(kind(ResponseCode::ServFail, false), Kind::ServerError);
        assert_eq!(kind(ResponseCode::NotImp, false), Kind::ServerError);
        assert_eq!(kind(ResponseCode::ServFail, true), Kind::ServerError);
        assert_eq!(kind(ResponseCode::NXDomain, false), Kind::OtherError);
        assert_eq!(kind(ResponseCode::Refused, false), Kind::OtherError);
        assert_eq!(kind(ResponseCode::FormErr, true), Kind::OtherError);
        // NOERROR with nothing at all is NoError in CoreDNS.
        assert_eq!(kind(ResponseCode::NoError, false), Kind::NoError);

        // Answers with a non-NOERROR rcode fall through to the rcode checks.
        let mut m = reply("www.example.org.", RecordType::A);
        m.metadata.response_code = ResponseCode::NXDomain;
        m.add_answer(Record::from_rdata(
            name("www.example.org."),
            60,
            RData::CNAME(CNAME(name("gone.example.net."))),
        ));
        assert_eq!(
            analyze(&m.to_vec().unwrap()).unwrap().kind,
            Kind::OtherError
        );
        m.add_authority(soa(60, 30));
        assert_eq!(analyze(&m.to_vec().unwrap()).unwrap().kind, Kind::NameError);

        let mut m = reply("example.org.", RecordType::AXFR);
        m.add_answer(soa(60, 60));
        let an = analyze(&m.to_vec().unwrap()).unwrap();
        assert_eq!(an.kind, Kind::Meta);
        assert!(!an.cacheable());
        let mut m = reply("example.org.", RecordType::SOA);
        m.metadata.op_code = OpCode::Notify;
        assert_eq!(analyze(&m.to_vec().unwrap()).unwrap().kind, Kind::Meta);
        m.metadata.op_code = OpCode::Update;
        assert_eq!(analyze(&m.to_vec().unwrap()).unwrap().kind, Kind::Update);
        assert_eq!(Kind::NameError.as_str(), "NXDOMAIN");
    }

    #[test]
    fn truncated_is_not_cacheable() {
        let mut m = reply("www.example.org.", RecordType::A);
        m.metadata.truncation = true;
        let an = analyze(&m.to_vec().unwrap()).unwrap();
        assert!(an.truncated);
        assert_eq!(an.kind, Kind::NoError);
        assert!(!an.cacheable());
    }

    #[test]
    fn opt_is_stripped() {
        let mut m = reply("www.example.org.", RecordType::A);
        m.add_answer(a("www.example.org.", 300, 1));
        m.add_additional(a("extra.example.org.", 100, 2));
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.set_dnssec_ok(true);
        m.set_edns(e);
        let raw = m.to_vec().unwrap();
        assert_eq!(be16(&raw, 10), 2);
        let an = analyze(&raw).unwrap();
        let opt = an.opt.clone().unwrap();
        assert_eq!(opt.len(), OPT_LEN);
        assert_eq!(raw[opt.start + 2], 41);
        assert!(an.dnssec_ok);
        assert_eq!(an.ttl_offsets.len(), 2);
        let (_, stored, m) = store_and_patch(&raw);
        assert_eq!(stored.len(), raw.len() - OPT_LEN);
        assert_eq!(be16(&stored, 10), 1);
        assert!(m.edns.is_none());
        assert_eq!(m.additionals.len(), 1);
        assert_eq!(m.additionals[0].name, name("extra.example.org."));
    }

    #[test]
    fn extended_rcode_is_folded_in() {
        let mut m = reply("www.example.org.", RecordType::A);
        m.metadata.response_code = ResponseCode::BADVERS;
        m.set_edns(Edns::new());
        let raw = m.to_vec().unwrap();
        let an = analyze(&raw).unwrap();
        assert_eq!(an.rcode, 16);
        assert_eq!(an.kind, Kind::OtherError);
    }

    /// A record in wire form.
    fn rr(owner: &[u8], rtype: u16, ttl: u32, rdata: &[u8]) -> Vec<u8> {
        let mut v = owner.to_vec();
        v.extend(rtype.to_be_bytes());
        v.extend(1u16.to_be_bytes());
        v.extend(ttl.to_be_bytes());
        v.extend((rdata.len() as u16).to_be_bytes());
        v.extend(rdata);
        v
    }

    fn header(flags: u16, counts: [u16; 4]) -> Vec<u8> {
        let mut v = vec![0x12, 0x34];
        v.extend(flags.to_be_bytes());
        for c in counts {
            v.extend(c.to_be_bytes());
        }
        v
    }

    const OPT_RR: [u8; 11] = [0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0];

    /// OPT first in the additional section, then records whose names point
    /// past it: strip_opt must move those pointers.
    #[test]
    fn opt_in_the_middle_moves_pointers() {
        let mut raw = header(0x8180, [1, 1, 0, 3]);
        raw.extend(name_to_wire("www.example.org.").unwrap());
        raw.extend([0, 1, 0, 1]);
        raw.extend(rr(&[0xc0, 12], 1, 300, &[192, 0, 2, 1]));
        raw.extend(OPT_RR);
        let ns1 = raw.len();
        // ns1 + pointer to "example.org" in the question (offset 16).
        raw.extend(rr(
            &[3, b'n', b's', b'1', 0xc0, 16],
            1,
            100,
            &[192, 0, 2, 53],
        ));
        // Same owner: a pointer past the OPT record.
        let ptr = 0xc000 | ns1 as u16;
        raw.extend(rr(&ptr.to_be_bytes(), 28, 50, &[0x20; 16]));

        let an = analyze(&raw).unwrap();
        assert_eq!(an.fixups.len(), 1);
        assert!(an.dnssec_ok);
        assert_eq!(an.min_ttl, Some(50));
        let (_, stored, m) = store_and_patch(&raw);
        assert_eq!(stored.len(), raw.len() - OPT_LEN);
        assert_eq!(m.additionals.len(), 2);
        assert_eq!(m.additionals[1].name, name("ns1.example.org."));
        assert_eq!(m.additionals[1].record_type(), RecordType::AAAA);

        // A pointer into the OPT record itself cannot survive stripping.
        let mut raw = header(0x8180, [1, 0, 0, 2]);
        raw.extend(name_to_wire("example.org.").unwrap());
        raw.extend([0, 1, 0, 1]);
        let opt_at = raw.len() as u16;
        raw.extend(OPT_RR);
        raw.extend(rr(&(0xc000 | opt_at).to_be_bytes(), 1, 1, &[0; 4]));
        assert!(matches!(analyze(&raw), Err(WireError::BadPointer { .. })));
    }

    /// A miss reply is capped in place: every record's TTL, on either side
    /// of an OPT record that is not last, and never the OPT's own TTL.
    #[test]
    fn reply_ttls_are_patched_in_place_around_the_opt() {
        let mut raw = header(0x8180, [1, 1, 0, 3]);
        raw.extend(name_to_wire("www.example.org.").unwrap());
        raw.extend([0, 1, 0, 1]);
        raw.extend(rr(&[0xc0, 12], 1, 300, &[192, 0, 2, 1]));
        let opt_at = raw.len();
        raw.extend(OPT_RR);
        raw.extend(rr(&[0xc0, 12], 1, 100, &[192, 0, 2, 53]));
        raw.extend(rr(&[0xc0, 12], 28, 50, &[0x20; 16]));
        let a = analyze(&raw).unwrap();
        set_reply_ttls(&mut raw, &a, 7);
        assert_eq!(raw[opt_at..opt_at + OPT_LEN], OPT_RR, "OPT untouched");
        let m = Message::from_vec(&raw).unwrap();
        assert_eq!(m.answers[0].ttl, 7);
        assert!(m.additionals.iter().all(|r| r.ttl == 7), "{m:?}");
        assert_eq!(m.additionals.len(), 2);
        assert!(m.edns.is_some());
        // And what the cache stores from it says the same.
        let again = analyze(&raw).unwrap();
        assert_eq!(again.min_ttl, Some(7));
    }

    #[test]
    fn bad_opt_is_refused() {
        // OPT in the answer section.
        let mut raw = header(0x8180, [1, 1, 0, 0]);
        raw.extend(name_to_wire("example.org.").unwrap());
        raw.extend([0, 1, 0, 1]);
        raw.extend(OPT_RR);
        assert!(matches!(analyze(&raw), Err(WireError::BadOpt { .. })));
        // Two OPT records.
        let mut raw = header(0x8180, [1, 0, 0, 2]);
        raw.extend(name_to_wire("example.org.").unwrap());
        raw.extend([0, 1, 0, 1]);
        raw.extend(OPT_RR);
        raw.extend(OPT_RR);
        assert!(matches!(analyze(&raw), Err(WireError::BadOpt { .. })));
    }

    #[test]
    fn expired_signature_with_do_is_other_error() {
        let now: u64 = 1_750_000_000;
        let mut sig = vec![0, 1, 13, 3, 0, 0, 1, 0x2c];
        sig.extend((now as u32 - 10).to_be_bytes()); // expiration: passed
        sig.extend((now as u32 - 100_000).to_be_bytes()); // inception
        sig.extend([0x12, 0x34]);
        sig.extend(name_to_wire("example.org.").unwrap());
        sig.extend([0xab; 64]);
        let build = |dnssec_ok: bool| {
            let mut raw = header(0x8180, [1, 2, 0, 1]);
            raw.extend(name_to_wire("www.example.org.").unwrap());
            raw.extend([0, 1, 0, 1]);
            raw.extend(rr(&[0xc0, 12], 1, 300, &[192, 0, 2, 1]));
            raw.extend(rr(&[0xc0, 12], 46, 300, &sig));
            let mut opt = OPT_RR;
            opt[7] = if dnssec_ok { 0x80 } else { 0 };
            raw.extend(opt);
            raw
        };
        assert_eq!(
            analyze_at(&build(true), now).unwrap().kind,
            Kind::OtherError
        );
        assert_eq!(analyze_at(&build(false), now).unwrap().kind, Kind::NoError);
        assert_eq!(analyze(&build(true)).unwrap().kind, Kind::NoError);
        assert_eq!(
            analyze_at(&build(true), now - 20).unwrap().kind,
            Kind::NoError
        );
        assert!(signature_valid(10, 20, 15));
        assert!(!signature_valid(10, 20, 21));
        assert!(!signature_valid(10, 20, 9));
    }

    #[test]
    fn top_bit_ttl_counts_as_zero() {
        let mut raw = header(0x8180, [1, 1, 0, 0]);
        raw.extend(name_to_wire("example.org.").unwrap());
        raw.extend([0, 1, 0, 1]);
        raw.extend(rr(&[0xc0, 12], 1, 0x8000_0000, &[192, 0, 2, 1]));
        assert_eq!(analyze(&raw).unwrap().min_ttl, Some(0));
    }

    #[test]
    fn trailing_bytes_are_dropped() {
        let mut m = reply("www.example.org.", RecordType::A);
        m.add_answer(a("www.example.org.", 300, 1));
        let mut raw = m.to_vec().unwrap();
        let len = raw.len();
        raw.extend([0xde, 0xad]);
        let an = analyze(&raw).unwrap();
        assert_eq!(an.end, len);
        let mut out = Vec::new();
        strip_opt(&raw, &an, &mut out);
        assert_eq!(out, raw[..len]);
    }

    #[test]
    fn hit_patches() {
        let mut m = reply("www.example.org.", RecordType::A);
        m.add_answer(a("www.example.org.", 300, 1));
        let raw = m.to_vec().unwrap();
        let an = analyze(&raw).unwrap();
        let mut stored = Vec::new();
        strip_opt(&raw, &an, &mut stored);
        assert!(question_matches(
            &stored,
            &name_to_wire("www.example.org.").unwrap(),
            1,
            1
        ));

        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(&stored);
        let (ptr, cap) = (buf.as_ptr(), buf.capacity());
        let wire = b"\x03WwW\x07ExAmPlE\x03OrG\x00";
        set_id(&mut buf, 0xbeef);
        set_qname(&mut buf, wire);
        set_ttls(&mut buf, &an.ttl_offsets, 42);
        push_opt(&mut buf, 1232, true);
        assert_eq!((buf.as_ptr(), buf.capacity()), (ptr, cap));

        let m = Message::from_vec(&buf).unwrap();
        assert_eq!(m.metadata.id, 0xbeef);
        let asked = name("WwW.ExAmPlE.OrG.");
        assert!(m.queries[0].name().eq_case(&asked));
        // The answer's owner points at the question: it follows the case.
        assert!(m.answers[0].name.eq_case(&asked));
        assert_eq!(m.answers[0].ttl, 42);
        let e = m.edns.as_ref().unwrap();
        assert_eq!(e.max_payload(), 1232);
        assert!(e.flags().dnssec_ok);
        assert_eq!(e.version(), 0);
        assert_eq!(be16(&buf, 10), 1);
        // Still matches the lower-cased question.
        assert!(question_matches(
            &buf,
            &name_to_wire("www.example.org.").unwrap(),
            1,
            1
        ));

        let mut buf = stored.clone();
        push_opt(&mut buf, 4096, false);
        let m = Message::from_vec(&buf).unwrap();
        let e = m.edns.as_ref().unwrap();
        assert_eq!(e.max_payload(), 4096);
        assert!(!e.flags().dnssec_ok);
    }

    #[test]
    fn hit_flags_follow_coredns() {
        // Stored: QR RA AD, AA clear, TC and Z set, rcode NXDOMAIN.
        let stored = FLAG_QR | FLAG_RA | FLAG_AD | 0x0200 | 0x0040 | 3;
        let hit = |query: u16, dnssec_ok: bool| {
            let mut msg = header(stored, [1, 0, 0, 0]);
            set_hit_flags(&mut msg, query, dnssec_ok);
            be16(&msg, 2)
        };
        // Query RD CD, no DO, no AD: AD cleared.
        let f = hit(FLAG_RD | FLAG_CD, false);
        assert_eq!(f, FLAG_QR | FLAG_AA | FLAG_RD | FLAG_RA | FLAG_CD | 3);
        // DO set: AD kept.
        assert_eq!(hit(0, true), FLAG_QR | FLAG_AA | FLAG_RA | FLAG_AD | 3);
        // AD in the query keeps it too (RFC 6840 5.7).
        assert_eq!(
            hit(FLAG_AD, false),
            FLAG_QR | FLAG_AA | FLAG_RA | FLAG_AD | 3
        );
        // AD is never synthesized.
        let mut msg = header(FLAG_QR, [1, 0, 0, 0]);
        set_hit_flags(&mut msg, FLAG_AD | FLAG_RD, true);
        assert_eq!(be16(&msg, 2), FLAG_QR | FLAG_AA | FLAG_RD);
    }

    #[test]
    fn question_matching() {
        let mut m = reply("WWW.Example.org.", RecordType::A);
        m.add_answer(a("www.example.org.", 300, 1));
        let raw = m.to_vec().unwrap();
        let lower = name_to_wire("www.example.org.").unwrap();
        assert!(question_matches(&raw, &lower, 1, 1));
        assert!(!question_matches(&raw, &lower, 28, 1));
        assert!(!question_matches(&raw, &lower, 1, 3));
        assert!(!question_matches(
            &raw,
            &name_to_wire("ww.example.org.").unwrap(),
            1,
            1
        ));
        assert!(!question_matches(
            &raw,
            &name_to_wire("www.example.com.").unwrap(),
            1,
            1
        ));
        // Not a response.
        let mut q = raw.clone();
        q[2] &= 0x7f;
        assert!(!question_matches(&q, &lower, 1, 1));
        // No question.
        let mut e = header(0x8180, [0, 0, 0, 0]);
        assert!(!question_matches(&e, &lower, 1, 1));
        e.truncate(5);
        assert!(!question_matches(&e, &lower, 1, 1));
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert_eq!(analyze(&[0; 11]), Err(WireError::TooShort));
        assert!(matches!(analyze(&vec![0; 70_000]), Err(WireError::TooLong)));

        // Every prefix of a valid reply is an error (the counts promise more).
        let mut m = reply("www.example.org.", RecordType::A);
        m.add_answer(a("www.example.org.", 300, 1));
        m.add_authority(soa(60, 60));
        m.set_edns(Edns::new());
        let raw = m.to_vec().unwrap();
        for n in 0..raw.len() {
            assert!(analyze(&raw[..n]).is_err(), "prefix of {n} bytes");
        }

        // A question name that points at itself.
        let mut raw = header(0x8180, [1, 0, 0, 0]);
        raw.extend([0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(analyze(&raw), Err(WireError::PointerLoop { at: 12 }));
        // Two names pointing at each other: the question ("a" then a
        // pointer to the answer's owner at 20) and the answer ("b" then a
        // pointer back to 12).
        let mut raw = header(0x8180, [1, 1, 0, 0]);
        raw.extend([1, b'a', 0xc0, 20, 0, 1, 0, 1]);
        raw.extend(rr(&[1, b'b', 0xc0, 12], 1, 1, &[0; 4]));
        assert!(matches!(
            analyze(&raw),
            Err(WireError::PointerLoop { .. } | WireError::NameTooLong { .. })
        ));
        // Pointers past the end and into the header.
        let mut raw = header(0x8180, [1, 1, 0, 0]);
        raw.extend(name_to_wire("example.org.").unwrap());
        raw.extend([0, 1, 0, 1]);
        let mut bad = raw.clone();
        bad.extend(rr(&[0xc0, 0xff], 1, 1, &[0; 4]));
        assert!(matches!(analyze(&bad), Err(WireError::BadPointer { .. })));
        let mut bad = raw.clone();
        bad.extend(rr(&[0xc0, 2], 1, 1, &[0; 4]));
        assert!(matches!(analyze(&bad), Err(WireError::BadPointer { .. })));
        // Reserved label type.
        let mut bad = raw.clone();
        bad.extend(rr(&[0x41, 0], 1, 1, &[0; 4]));
        assert!(matches!(analyze(&bad), Err(WireError::BadLabel { .. })));
        // RDLENGTH past the end.
        let mut bad = raw.clone();
        let mut r = rr(&[0xc0, 12], 1, 1, &[0; 4]);
        r[11] = 40;
        bad.extend(r);
        assert!(matches!(analyze(&bad), Err(WireError::Truncated { .. })));
        // A CNAME whose name overruns its RDLENGTH.
        let mut bad = raw.clone();
        bad.extend(rr(&[0xc0, 12], 5, 1, &[3, b'a', b'b', b'c']));
        bad.extend([0]);
        assert!(matches!(
            analyze(&bad),
            Err(WireError::BadRdata { rtype: 5, .. })
        ));
        // An SOA with no room for its numbers.
        let mut bad = header(0x8183, [1, 0, 1, 0]);
        bad.extend(name_to_wire("example.org.").unwrap());
        bad.extend([0, 1, 0, 1]);
        bad.extend(rr(&[0xc0, 12], 6, 1, &[0, 0, 0, 0, 0, 1]));
        assert!(matches!(
            analyze(&bad),
            Err(WireError::BadRdata { rtype: 6, .. })
        ));
        // A name longer than 255 bytes, built from labels through pointers.
        let mut raw = header(0x8180, [1, 0, 0, 0]);
        for i in 0..5u16 {
            raw.push(63);
            raw.extend([b'a'; 63]);
            let next = 12 + (i + 1) * 66;
            raw.extend((0xc000 | next).to_be_bytes());
        }
        raw.extend([0, 0, 1, 0, 1]);
        assert!(matches!(analyze(&raw), Err(WireError::NameTooLong { .. })));
        // Counts the bytes cannot hold.
        let mut raw = header(0x8180, [1, 0xffff, 0xffff, 0xffff]);
        raw.extend([0, 0, 1, 0, 1]);
        assert!(matches!(analyze(&raw), Err(WireError::Truncated { .. })));
    }

    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    /// Exercises everything a successful analysis feeds, so a wrong offset
    /// would panic here.
    fn use_analysis(buf: &[u8]) {
        if let Ok(a) = analyze_at(buf, 1_750_000_000) {
            let mut out = Vec::new();
            strip_opt(buf, &a, &mut out);
            assert_eq!(out.len(), a.stored_len());
            set_ttls(&mut out, &a.ttl_offsets, 1);
            set_id(&mut out, 1);
            set_hit_flags(&mut out, 0x0100, true);
            push_opt(&mut out, 1232, false);
            let _ = question_matches(&out, b"\x00", 1, 1);
            let _ = analyze(&out);
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..2000usize {
            let mut buf = vec![0u8; len % 300];
            for b in buf.iter_mut() {
                *b = xorshift(&mut seed) as u8;
            }
            if buf.len() >= 12 {
                // Small counts, so the walk goes deep.
                buf[4] = 0;
                buf[5] &= 1;
                buf[6] = 0;
                buf[8] = 0;
                buf[10] = 0;
                buf[7] &= 3;
                buf[9] &= 3;
                buf[11] &= 3;
            }
            use_analysis(&buf);
        }
    }

    #[test]
    fn mutated_replies_never_panic() {
        let mut m = reply("www.example.org.", RecordType::A);
        m.add_answer(Record::from_rdata(
            name("www.example.org."),
            600,
            RData::CNAME(CNAME(name("a.example.org."))),
        ));
        m.add_answer(a("a.example.org.", 300, 1));
        m.add_authority(soa(60, 60));
        m.add_additional(a("ns.example.org.", 300, 2));
        m.set_edns(Edns::new());
        let raw = m.to_vec().unwrap();
        use_analysis(&raw);
        let mut seed = 0x0123_4567_89ab_cdefu64;
        for _ in 0..5000 {
            let mut buf = raw.clone();
            for _ in 0..1 + xorshift(&mut seed) % 4 {
                let i = (xorshift(&mut seed) as usize) % buf.len();
                buf[i] = xorshift(&mut seed) as u8;
            }
            use_analysis(&buf);
        }
    }

    /// A reply with `n` answers, two NS records, and `extra` additional A
    /// records, with an OPT record when `edns`.
    fn big(n: u8, extra: u8, edns: bool) -> Message {
        let mut m = reply("www.example.org.", RecordType::A);
        for i in 0..n {
            m.add_answer(a("www.example.org.", 300, i));
        }
        for ns in ["ns1.example.org.", "ns2.example.org."] {
            m.add_authority(Record::from_rdata(
                name("example.org."),
                300,
                RData::NS(NS(name(ns))),
            ));
        }
        for i in 0..extra {
            m.add_additional(a("ns1.example.org.", 300, i));
        }
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.set_edns(e);
        }
        m
    }

    /// `m` with only its first `k` records (in section order).
    fn first(m: &Message, k: usize) -> Message {
        let mut out = m.clone();
        out.answers.clear();
        out.authorities.clear();
        out.additionals.clear();
        let all: Vec<(usize, Record)> = m
            .answers
            .iter()
            .map(|r| (0, r.clone()))
            .chain(m.authorities.iter().map(|r| (1, r.clone())))
            .chain(m.additionals.iter().map(|r| (2, r.clone())))
            .collect();
        for (s, r) in all.into_iter().take(k) {
            match s {
                0 => out.answers.push(r),
                1 => out.authorities.push(r),
                _ => out.additionals.push(r),
            }
        }
        out
    }

    #[test]
    fn truncate_keeps_the_longest_run_that_fits_and_the_opt() {
        for (n, extra, edns) in [
            (100, 0, true),
            (100, 3, false),
            (20, 40, true),
            (30, 2, true),
        ] {
            let m = big(n, extra, edns);
            let raw = m.to_vec().unwrap();
            let total = usize::from(n) + 2 + usize::from(extra);
            for limit in [512, 600, 700, 1232, 1500] {
                let mut cut = raw.clone();
                truncate(&mut cut, limit).unwrap();
                let got = Message::from_vec(&cut).unwrap();
                assert!(cut.len() <= limit, "{} > {limit}", cut.len());
                assert_eq!(got.edns.is_some(), edns, "the OPT record stays");
                let k = got.answers.len() + got.authorities.len() + got.additionals.len();
                assert_eq!(got.metadata.truncation, k < total);
                if raw.len() <= limit {
                    assert_eq!(cut, raw, "a reply that fits is left alone");
                    continue;
                }
                // Exactly the first k records, and k is the most that fit
                // (hickory compresses a prefix as it does the whole).
                assert_eq!(got.answers, first(&m, k).answers);
                assert_eq!(got.authorities, first(&m, k).authorities);
                assert_eq!(got.additionals, first(&m, k).additionals);
                assert!(k < total);
                assert!(
                    first(&m, k + 1).to_vec().unwrap().len() > limit,
                    "k={k} limit={limit}"
                );
            }
        }
    }

    #[test]
    fn copy_fitting_cuts_a_stored_entry_as_truncate_does() {
        let raw = big(100, 3, false).to_vec().unwrap();
        for limit in [512, 1221, 4096] {
            let mut out = Vec::new();
            let left_out = copy_fitting(&raw, limit, &mut out);
            let mut cut = raw.clone();
            truncate(&mut cut, limit).unwrap();
            assert_eq!(left_out, cut.len() < raw.len());
            if left_out {
                set_truncated(&mut out);
            }
            assert_eq!(out, cut, "limit {limit}");
        }
    }

    #[test]
    fn only_messages_compressed_backwards_are_cut_as_they_are() {
        let mut m = reply("www.example.org.", RecordType::A);
        for i in 0..60 {
            m.add_answer(a("www.example.org.", 300, i));
        }
        let raw = m.to_vec().unwrap();
        assert!(compression_is_backward(&raw), "as a compressor writes it");
        // The first A record's data becomes the label "x" and a pointer
        // forward, to the last record's owner; the second record's owner
        // points back at it. Every pointer it starts from points back, yet
        // the name reads past any cut: refused.
        let mut crafted = raw.clone();
        let an = analyze(&crafted).unwrap();
        let rdata0 = an.question_end + 12;
        let last = crafted.len() - 16;
        let fwd = u16::try_from(last).unwrap() | 0xc000;
        crafted[rdata0..rdata0 + 2].copy_from_slice(&[1, b'x']);
        crafted[rdata0 + 2..rdata0 + 4].copy_from_slice(&fwd.to_be_bytes());
        let owner1 = rdata0 + 4;
        let back = u16::try_from(rdata0).unwrap() | 0xc000;
        crafted[owner1..owner1 + 2].copy_from_slice(&back.to_be_bytes());
        assert!(analyze(&crafted).is_ok(), "a message that reads");
        assert!(!compression_is_backward(&crafted));
        let before = crafted.clone();
        assert!(truncate(&mut crafted, 512).is_err());
        assert_eq!(crafted, before, "left as it was");
        // Labels that run on past the pointer that reached them.
        assert!(labels_end_before(&[1, b'a', 0, 0xc0, 0], 0, 3));
        assert!(!labels_end_before(&[1, b'a', 0, 0xc0, 0], 0, 2));
        assert!(labels_end_before(&[1, b'a', 0xc0, 0, 9], 0, 5));
        assert!(!labels_end_before(&[1, b'a', 0xc0, 0, 9], 0, 3));
        assert!(!labels_end_before(&[0x40], 0, 1), "a bad label");
        assert!(!labels_end_before(&[5, 1], 0, 9), "past the end");
    }

    #[test]
    fn truncate_refuses_a_forward_pointer_and_never_panics() {
        // An owner name that points forward, past the cut: refused, untouched.
        let mut m = reply("www.example.org.", RecordType::A);
        for i in 0..60 {
            m.add_answer(a("www.example.org.", 300, i));
        }
        let mut raw = m.to_vec().unwrap();
        let an = analyze(&raw).unwrap();
        let first_owner = an.question_end;
        assert_eq!(raw[first_owner], 0xc0);
        let last = raw.len() - 16; // the last A record's owner (a pointer)
        assert_eq!(raw[last], 0xc0);
        // The first answer's owner points at the last record's owner (a
        // pointer to the question): valid, but past any cut.
        let target = u16::try_from(last).unwrap() | 0xc000;
        raw[first_owner..first_owner + 2].copy_from_slice(&target.to_be_bytes());
        let before = raw.clone();
        assert!(matches!(
            truncate(&mut raw, 512),
            Err(WireError::BadPointer { .. })
        ));
        assert_eq!(raw, before);
        // Any prefix of a reply, any limit: an error or a fit, never a panic.
        let full = big(40, 5, true).to_vec().unwrap();
        for len in 0..full.len() {
            for limit in [0, 12, 100, 512] {
                let mut b = full[..len].to_vec();
                if truncate(&mut b, limit).is_ok() {
                    assert!(b.len() <= limit);
                }
                let mut out = Vec::new();
                let _ = copy_fitting(&full[..len], limit, &mut out);
            }
        }
    }
}
