//! What the plugin answers, record by record, as CoreDNS 1.14.7's
//! kubernetes plugin does (`handler.go`, `kubernetes.go`, `parse.go`,
//! `reverse.go`, `ns.go` and the shared `plugin/backend_lookup.go`).
//!
//! A name under a zone reads, right to left, `svc|pod`, namespace,
//! service (or pod), then an endpoint, or a `_port._protocol` pair (the
//! underscores optional). Longer names, and names whose last label before
//! the zone is neither `svc` nor `pod`, do not exist. `*` is an ordinary
//! label: wildcard queries were removed in CoreDNS 1.9.0, so they find
//! nothing.
//!
//! "Does not exist" (CoreDNS's `IsNameError`: no such item, namespace not
//! exposed, invalid name) is NXDOMAIN with the SOA, or the next plugin when
//! `fallthrough` covers the name, or SERVFAIL (with the SOA) before the
//! first sync. An existing name without records of the asked type is
//! NODATA with the SOA. The SOA is `ns.dns.ZONE. hostmaster.ZONE.` with the
//! store's serial, 7200 1800 86400 and the TTL as minimum; its own TTL is
//! the TTL capped at 300.

use std::hash::Hash;
use std::net::IpAddr;

use smallvec::SmallVec;

use super::reply::{Label, Name, SRV_FIXED, Section, Tail, Wire, rtype};
use super::store::{Port, Resolves, SvcEntry, Target, key_into};
use super::{Kubernetes, PodMode};
use crate::request::is_subdomain;

/// CoreDNS's `DNSSchemaVersion`, answered at `dns-version.ZONE` TXT.
pub(crate) const DNS_SCHEMA_VERSION: &[u8] = b"1.1.0";
/// TTL of the `dns-version` record.
const SCHEMA_TTL: u32 = 28800;
/// CoreDNS's `maxCnameChainLength`.
const MAX_CNAME_CHAIN: usize = 10;
/// Largest SOA TTL (CoreDNS's `plugin.SOA`).
const MAX_SOA_TTL: u32 = 300;
/// Records found for one name at most: twice what a 64 KiB message holds
/// (4,094 A records), so a service with more endpoints costs no more.
pub(crate) const MAX_HITS: usize = 8192;

/// The name does not exist (CoreDNS's `errNoItems`, `errNsNotExposed`,
/// `errInvalidRequest`: all are name errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NameError;

/// How a query came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Records were written (or none: NODATA).
    Written,
    /// The name does not exist.
    NameError,
    /// REFUSED, nothing written (zone transfers).
    Refused,
}

/// How many labels before the zone a name keeps track of: more make a
/// name CoreDNS does not answer anyway.
const TAIL: usize = 6;
/// The ring [`QName::new`] keeps label starts in: at least [`TAIL`].
const RING: usize = 8;

/// The question's name relative to the zone it matched, its labels found
/// once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QName<'a> {
    /// Lower-cased wire form.
    pub(crate) lower: &'a [u8],
    /// Wire length of the zone at its end.
    pub(crate) zone_len: usize,
    /// Where the last (up to) [`TAIL`] labels before the zone start,
    /// leftmost first.
    tail: [u8; TAIL],
    /// How many of `tail` are set.
    kept: usize,
    /// Labels before the zone in all.
    count: usize,
}

impl<'a> QName<'a> {
    /// `lower` (lower-cased wire form) under a zone `zone_len` long.
    pub(crate) fn new(lower: &'a [u8], zone_len: usize) -> Self {
        let mut q = Self {
            lower,
            zone_len,
            tail: [0; TAIL],
            kept: 0,
            count: 0,
        };
        let end = lower.len().saturating_sub(zone_len);
        // The last label starts, in a ring a power of two long (a mask,
        // not a division, per label).
        let mut ring = [0u8; RING];
        let mut pos = 0;
        while pos < end {
            ring[q.count & (RING - 1)] = pos as u8;
            q.count += 1;
            pos += 1 + usize::from(lower[pos]);
        }
        q.kept = q.count.min(TAIL);
        for i in 0..q.kept {
            q.tail[i] = ring[(q.count - q.kept + i) & (RING - 1)];
        }
        q
    }
    pub(crate) fn zone(&self) -> &'a [u8] {
        &self.lower[self.lower.len() - self.zone_len..]
    }
    fn is_apex(&self) -> bool {
        self.lower.len() == self.zone_len
    }
    /// The `i`th of the kept labels (0: the leftmost kept).
    fn kept(&self, i: usize) -> &'a [u8] {
        let at = usize::from(self.tail[i]);
        let len = usize::from(self.lower[at]);
        self.lower.get(at + 1..at + 1 + len).unwrap_or_default()
    }
    /// Labels before the zone.
    pub(crate) fn labels(&self) -> usize {
        self.count
    }
    /// The `i`th label counted from the zone (0: the one just before it).
    pub(crate) fn right(&self, i: usize) -> &'a [u8] {
        self.kept(self.kept - 1 - i)
    }
    /// Where the `i`th label counted from the zone starts in `lower`.
    fn right_at(&self, i: usize) -> usize {
        usize::from(self.tail[self.kept - 1 - i])
    }
}

/// `svc` or `pod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    Svc,
    Pod,
}

/// CoreDNS's `recordRequest`: a name taken apart.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parsed<'a> {
    pub(crate) port: &'a [u8],
    pub(crate) protocol: &'a [u8],
    pub(crate) endpoint: &'a [u8],
    pub(crate) service: &'a [u8],
    pub(crate) namespace: &'a [u8],
    pub(crate) space: Option<Space>,
    /// A zonal name's topology zone: its labels left of the directive, in
    /// wire form without the root label (empty: not a zonal name).
    pub(crate) zone: &'a [u8],
    /// A zonal name's directive is `prefer` (else `pin`).
    pub(crate) prefer: bool,
}

/// CoreDNS's `parseRequest` without `multicluster` (in a multicluster
/// zone, `multicluster::cluster_endpoint` reads the `endpoint.cluster`
/// shape). `zonal` says whether zonal names are read here (the option is
/// on and the zone is not a multicluster one); it is asked only for a name
/// long enough to be one.
pub(crate) fn parse_request<'a>(
    q: &QName<'a>,
    zonal: impl FnOnce() -> bool,
) -> Result<Parsed<'a>, NameError> {
    let mut r = Parsed::default();
    let count = q.count;
    // The apex, `svc.ZONE` and `pod.ZONE` exist and are empty.
    if count == 0 || (count == 1 && matches!(q.right(0), b"svc" | b"pod")) {
        return Ok(r);
    }
    if count > 5 {
        return zonal_request(q, zonal);
    }
    r.space = Some(match q.right(0) {
        b"svc" => Space::Svc,
        b"pod" => Space::Pod,
        _ => return Err(NameError),
    });
    if count == 1 {
        return Ok(r);
    }
    r.namespace = q.right(1);
    if count == 2 {
        return Ok(r);
    }
    r.service = q.right(2);
    match count {
        3 => {}
        4 => r.endpoint = q.right(3),
        _ => {
            r.protocol = strip_underscore(q.right(3));
            r.port = strip_underscore(q.right(4));
        }
    }
    Ok(r)
}

/// `TOPOLOGY-ZONE.pin|prefer._zone.SERVICE.NS.svc`: the zone is every
/// label left of the directive, since a zone may hold dots. Any other name
/// this long, and every one without `zonal`, is too long: NXDOMAIN.
fn zonal_request<'a>(q: &QName<'a>, zonal: impl FnOnce() -> bool) -> Result<Parsed<'a>, NameError> {
    if q.right(0) != b"svc" || q.right(3) != b"_zone" {
        return Err(NameError);
    }
    let prefer = match q.right(4) {
        b"pin" => false,
        b"prefer" => true,
        _ => return Err(NameError),
    };
    if !zonal() {
        return Err(NameError);
    }
    Ok(Parsed {
        service: q.right(2),
        namespace: q.right(1),
        space: Some(Space::Svc),
        zone: &q.lower[..q.right_at(4)],
        prefer,
        ..Parsed::default()
    })
}

fn strip_underscore(s: &[u8]) -> &[u8] {
    s.strip_prefix(b"_").unwrap_or(s)
}

/// What a found record resolves to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Host<'s> {
    Ip(IpAddr),
    Name(&'s Target),
}

/// The name CoreDNS gives a found record (its `msg.Domain(key)`): an SRV
/// target and the owner of its address record. Keys are equal when the
/// names are.
#[derive(Debug, Clone, Copy, Eq, Hash)]
pub(crate) enum Key<'s> {
    /// `name.ns.svc.ZONE`.
    Service { name: &'s [u8], ns: &'s [u8] },
    /// `label.name.ns.svc.ZONE`.
    Endpoint {
        label: EpLabel<'s>,
        name: &'s [u8],
        ns: &'s [u8],
    },
    /// `label.cluster.name.ns.svc.ZONE`: an endpoint of a ServiceImport
    /// in a `multicluster` zone (`cluster` empty: `label.name.ns.svc.ZONE`).
    ClusterEndpoint {
        label: EpLabel<'s>,
        cluster: &'s [u8],
        name: &'s [u8],
        ns: &'s [u8],
    },
    /// `pod.ns.pod.ZONE`.
    Pod { pod: &'s [u8], ns: &'s [u8] },
    /// `ns.dns.ZONE`.
    NsDns,
}

/// An endpoint's label: its name, or its dashed address.
#[derive(Debug, Clone, Copy, Eq, Hash)]
pub(crate) enum EpLabel<'s> {
    Name(&'s [u8]),
    Ip(IpAddr),
}

/// Byte strings equal; most keys compared come from one store entry, so
/// the same bytes are checked first by address.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (std::ptr::eq(a.as_ptr(), b.as_ptr()) || a == b)
}

impl PartialEq for EpLabel<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Name(a), Self::Name(b)) => same(a, b),
            (Self::Ip(a), Self::Ip(b)) => a == b,
            _ => false,
        }
    }
}

impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Service { name: a, ns: x }, Self::Service { name: b, ns: y }) => {
                same(a, b) && same(x, y)
            }
            (
                Self::Endpoint {
                    label: l,
                    name: a,
                    ns: x,
                },
                Self::Endpoint {
                    label: m,
                    name: b,
                    ns: y,
                },
            ) => l == m && same(a, b) && same(x, y),
            (
                Self::ClusterEndpoint {
                    label: l,
                    cluster: c,
                    name: a,
                    ns: x,
                },
                Self::ClusterEndpoint {
                    label: m,
                    cluster: d,
                    name: b,
                    ns: y,
                },
            ) => l == m && same(c, d) && same(a, b) && same(x, y),
            (Self::Pod { pod: a, ns: x }, Self::Pod { pod: b, ns: y }) => same(a, b) && same(x, y),
            (Self::NsDns, Self::NsDns) => true,
            _ => false,
        }
    }
}

impl<'s> EpLabel<'s> {
    pub(crate) fn of(ep: &'s super::store::Endpoint) -> Self {
        ep.name.as_deref().map_or(Self::Ip(ep.ip), Self::Name)
    }
    fn label(self) -> Label<'s> {
        match self {
            Self::Name(n) => Label::Text(n),
            Self::Ip(ip) => Label::Dashed(ip),
        }
    }
}

/// The endpoint label of a query, read once: a name, or the address its
/// dashed form spells (in the canonical spelling only, as CoreDNS compares
/// the strings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct EndpointQuery<'a> {
    label: &'a [u8],
    ip: Option<IpAddr>,
}

impl<'a> EndpointQuery<'a> {
    pub(crate) fn new(label: &'a [u8]) -> Self {
        let ip = undash(label).filter(|ip| {
            let mut d = super::reply::Dashed::default();
            d.write(*ip);
            d.as_bytes() == label
        });
        Self { label, ip }
    }
    /// Whether it names `ep` (CoreDNS's `match` on `endpointHostname`).
    pub(crate) fn names(&self, ep: EpLabel<'_>) -> bool {
        match ep {
            EpLabel::Name(n) => n == self.label,
            EpLabel::Ip(ip) => self.ip == Some(ip),
        }
    }
}

/// Reads a dashed address: `10-0-0-1` (three dashes, none doubled) is
/// IPv4, anything else is tried as IPv6 with `-` for `:`.
fn undash(label: &[u8]) -> Option<IpAddr> {
    if label.is_empty()
        || label.len() > 45
        || !label.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-')
    {
        return None;
    }
    let dashes = label.iter().filter(|b| **b == b'-').count();
    let v4 = dashes == 3 && !label.windows(2).any(|w| w == b"--");
    let mut text = [0u8; 45];
    let text = &mut text[..label.len()];
    for (d, s) in text.iter_mut().zip(label) {
        *d = match (*s, v4) {
            (b'-', true) => b'.',
            (b'-', false) => b':',
            (c, _) => c,
        };
    }
    let text = std::str::from_utf8(text).ok()?;
    if v4 {
        text.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
    } else {
        text.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
    }
}

impl<'s> Key<'s> {
    /// The labels before the zone.
    fn labels(self) -> ([Label<'s>; 5], usize) {
        let t = Label::Text;
        let e = t(b"");
        match self {
            Self::Service { name, ns } => ([t(name), t(ns), t(b"svc"), e, e], 3),
            Self::Endpoint { label, name, ns } => {
                ([label.label(), t(name), t(ns), t(b"svc"), e], 4)
            }
            Self::ClusterEndpoint {
                label,
                cluster: b"",
                name,
                ns,
            } => ([label.label(), t(name), t(ns), t(b"svc"), e], 4),
            Self::ClusterEndpoint {
                label,
                cluster,
                name,
                ns,
            } => ([label.label(), t(cluster), t(name), t(ns), t(b"svc")], 5),
            Self::Pod { pod, ns } => ([t(pod), t(ns), t(b"pod"), e, e], 3),
            Self::NsDns => ([t(b"ns"), t(b"dns"), e, e, e], 2),
        }
    }
}

/// A record found for a name (CoreDNS's `msg.Service`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hit<'s> {
    pub(crate) host: Host<'s>,
    pub(crate) port: i32,
    pub(crate) key: Key<'s>,
}

type Hits<'s> = SmallVec<[Hit<'s>; 8]>;

/// A set that stays a small vector until it grows (dedup of answers).
struct Dedup<T> {
    small: SmallVec<[T; 8]>,
    big: Option<std::collections::HashSet<T>>,
}

impl<T: Hash + Eq + Copy> Dedup<T> {
    fn new() -> Self {
        Self {
            small: SmallVec::new(),
            big: None,
        }
    }
    /// Adds `v`; false when it was there.
    fn insert(&mut self, v: T) -> bool {
        if let Some(big) = &mut self.big {
            return big.insert(v);
        }
        if self.small.contains(&v) {
            return false;
        }
        if self.small.len() == self.small.inline_size() {
            let mut big: std::collections::HashSet<T> = self.small.drain(..).collect();
            big.insert(v);
            self.big = Some(big);
        } else {
            self.small.push(v);
        }
        true
    }
}

/// The longest name in wire form.
const MAX_NAME: usize = 255;

/// CoreDNS's SRV weight for `n` records: all priorities are 0 and weights
/// 100, so each gets 100/n (1 once n passes 100, so a capped list changes
/// nothing).
fn srv_weight(n: usize) -> u16 {
    let weight = ((100.0 / (100.0 * n as f64)) * 100.0).floor();
    if weight < 1.0 { 1 } else { weight as u16 }
}

/// Where a name was written, as an owner may point at it: 0 (write the
/// name out) when a pointer cannot reach it.
fn pointer_to(pos: usize) -> u16 {
    u16::try_from(pos).ok().filter(|p| *p < 0x4000).unwrap_or(0)
}

/// Port numbers answered, each once, in order (no `-1`).
#[derive(Default)]
struct Numbers(SmallVec<[u16; 8]>);

impl Numbers {
    /// Adds `port`; false when it is `-1` or already there.
    fn insert(&mut self, port: i32) -> bool {
        if port == -1 || self.0.contains(&(port as u16)) {
            return false;
        }
        self.0.push(port as u16);
        true
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
thread_local! {
    /// Tests set this to check that [`Kubernetes::srv_direct`] and
    /// [`Kubernetes::srv_hits`] write the same replies.
    pub(crate) static GENERAL_SRV: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn general_srv_forced() -> bool {
    #[cfg(test)]
    {
        GENERAL_SRV.with(std::cell::Cell::get)
    }
    #[cfg(not(test))]
    {
        false
    }
}

/// For each key, the index of the first equal one among those before it
/// (equal keys are one name).
fn key_ids<'s>(keys: impl Iterator<Item = Key<'s>>) -> SmallVec<[u16; 8]> {
    let mut ids = SmallVec::new();
    let mut firsts: SmallVec<[(Key<'s>, u16); 8]> = SmallVec::new();
    let mut big: Option<std::collections::HashMap<Key<'s>, u16>> = None;
    for (i, key) in keys.enumerate() {
        let i = u16::try_from(i).unwrap_or(u16::MAX);
        let id = if let Some(map) = &mut big {
            *map.entry(key).or_insert(i)
        } else if let Some((_, id)) = firsts.iter().find(|(k, _)| *k == key) {
            *id
        } else {
            firsts.push((key, i));
            if firsts.len() > 32 {
                big = Some(firsts.drain(..).collect());
            }
            i
        };
        ids.push(id);
    }
    ids
}

/// Spells keys as names in wire form on the stack, reusing the part after
/// the first label while the keys share it (they come from one service).
struct Spelling {
    buf: [u8; 255],
    /// Where the shared part starts (it ends at `len`).
    tail_at: usize,
    len: usize,
    /// What the shared part was made from.
    tail_of: Option<(u8, usize, usize, usize, usize)>,
}

impl Default for Spelling {
    fn default() -> Self {
        Self {
            buf: [0; 255],
            tail_at: 0,
            len: 0,
            tail_of: None,
        }
    }
}

impl Spelling {
    /// The name of `key` under `zone` (wire form), or `None` when it would
    /// be longer than 255 bytes.
    fn spell(&mut self, key: Key<'_>, zone: &[u8]) -> Option<&[u8]> {
        // Empty labels in `rest` are left out.
        let (first, rest, kind): (Option<Label<'_>>, [&[u8]; 4], u8) = match key {
            Key::Service { name, ns } => (None, [name, ns, b"svc", b""], 0),
            Key::Endpoint { label, name, ns } => (Some(label.label()), [name, ns, b"svc", b""], 1),
            Key::Pod { pod, ns } => (None, [pod, ns, b"pod", b""], 2),
            Key::NsDns => (None, [b"ns", b"dns", b"", b""], 3),
            Key::ClusterEndpoint {
                label,
                cluster,
                name,
                ns,
            } => (Some(label.label()), [cluster, name, ns, b"svc"], 4),
        };
        let id = (
            kind,
            rest[0].as_ptr() as usize,
            rest[0].len(),
            rest[1].as_ptr() as usize,
            rest[1].len(),
        );
        // The shared part, at the end of the buffer.
        if self.tail_of != Some(id) {
            let labels = rest.iter().filter(|l| !l.is_empty());
            let n = labels.clone().map(|l| 1 + l.len()).sum::<usize>() + zone.len();
            if n > self.buf.len() || labels.clone().any(|l| l.len() > 63) {
                return None;
            }
            let mut at = self.buf.len() - n;
            self.tail_at = at;
            for l in labels {
                self.buf[at] = l.len() as u8;
                self.buf[at + 1..at + 1 + l.len()].copy_from_slice(l);
                at += 1 + l.len();
            }
            self.buf[at..].copy_from_slice(zone);
            self.len = self.buf.len();
            self.tail_of = Some(id);
        }
        let mut start = self.tail_at;
        if let Some(first) = first {
            let mut d = super::reply::Dashed::default();
            let bytes: &[u8] = match first {
                Label::Text(t) => t,
                Label::Dashed(ip) => {
                    d.write(ip);
                    d.as_bytes()
                }
            };
            if bytes.is_empty() || bytes.len() > 63 || 1 + bytes.len() > start {
                return None;
            }
            start -= 1 + bytes.len();
            self.buf[start] = bytes.len() as u8;
            self.buf[start + 1..start + 1 + bytes.len()].copy_from_slice(bytes);
        }
        Some(&self.buf[start..self.len])
    }
}

/// The CNAMEs followed so far (CoreDNS's `previousRecords`), and the
/// target outside the zones that needs the rest of the chain.
#[derive(Debug, Default)]
pub(crate) struct Chase {
    /// Whether the client spelled the zone in lower case (see
    /// [`Kubernetes::resolve`]).
    pub(crate) zone_spelled_lower: bool,
    /// A target outside the zones counts as a failed lookup (its CNAME
    /// is dropped) instead of being asked for.
    pub(crate) no_upstream: bool,
    pub(crate) targets: SmallVec<[Vec<u8>; 2]>,
    /// Wire form (as spelled) of the target to look up upstream.
    pub(crate) upstream: Option<Vec<u8>>,
}

fn matches_port(r: &Parsed<'_>, p: &Port) -> bool {
    (r.port.is_empty() || r.port == &*p.name)
        && (r.protocol.is_empty() || r.protocol == p.protocol.as_bytes())
}

/// The endpoint hits of `e` for `r` (each endpoint per matching port), of
/// those in `zone` only when it is given (an endpoint without a zone is in
/// none). Whether any was found, kept or not (at most [`MAX_HITS`]).
fn endpoint_hits<'s>(
    r: &Parsed<'s>,
    e: &'s SvcEntry,
    zone: Option<&[u8]>,
    out: &mut Hits<'s>,
) -> bool {
    let (name, ns) = (e.name(), e.namespace());
    let wanted = (!r.endpoint.is_empty()).then(|| EndpointQuery::new(r.endpoint));
    let mut found = false;
    for slice in &e.slices {
        for ep in slice.endpoints.iter() {
            if zone.is_some_and(|z| slice.zone(ep) != Some(z)) {
                continue;
            }
            let label = EpLabel::of(ep);
            if wanted.is_some_and(|w| !w.names(label)) {
                continue;
            }
            for p in slice.ports.iter().filter(|p| matches_port(r, p)) {
                found = true;
                if out.len() == MAX_HITS {
                    return true;
                }
                out.push(Hit {
                    host: Host::Ip(ep.ip),
                    port: p.port,
                    key: Key::Endpoint { label, name, ns },
                });
            }
        }
    }
    found
}

impl Kubernetes {
    /// Answers `qtype` for `q` into `w`. `chase.zone_spelled_lower` says
    /// whether the client wrote the zone in lower case: CoreDNS compares
    /// the lower-cased name with the zone as asked in two places (the apex
    /// NS answer and `ns.dns.ZONE`), which then only exist for it.
    pub(crate) fn resolve(
        &self,
        w: &mut Wire<'_>,
        q: &QName<'_>,
        qtype: u16,
        chase: &mut Chase,
    ) -> Outcome {
        let zone_spelled_lower = chase.zone_spelled_lower;
        let r = match qtype {
            rtype::A | rtype::AAAA => {
                self.addresses(w, q, Name::Qname, qtype == rtype::AAAA, chase)
            }
            rtype::TXT => self.txt(w, q),
            rtype::CNAME => self.services(q, qtype, zone_spelled_lower, |hits| {
                let hits = hits?;
                if let Some(Hit {
                    host: Host::Name(t),
                    ..
                }) = hits.first()
                {
                    w.record(Name::Qname, rtype::CNAME, self.ttl, |w| {
                        w.name(Name::Wire(&t.wire), false)
                    });
                }
                Ok(())
            }),
            rtype::PTR => self.ptr(w, q),
            rtype::MX => self.services(q, qtype, zone_spelled_lower, |hits| hits.map(|_| ())),
            rtype::SRV => self.srv(w, q, zone_spelled_lower),
            rtype::SOA => {
                if q.is_apex() {
                    self.soa(w, Section::Answer);
                }
                Ok(())
            }
            rtype::AXFR | rtype::IXFR => return Outcome::Refused,
            // The apex NS answer only for the zone spelled in lower case:
            // CoreDNS compares the lower-cased name with the zone as asked.
            rtype::NS if q.is_apex() && zone_spelled_lower => {
                self.ns(w);
                Ok(())
            }
            // CoreDNS's fake A lookup: only whether the name exists.
            _ => self.services(q, rtype::A, zone_spelled_lower, |hits| hits.map(|_| ())),
        };
        match r {
            Ok(()) => Outcome::Written,
            Err(NameError) => Outcome::NameError,
        }
    }

    /// The SOA record of the zone.
    pub(crate) fn soa(&self, w: &mut Wire<'_>, section: Section) {
        w.section(section);
        let serial = self.serial(w.zone_wire());
        let ttl = self.ttl.min(MAX_SOA_TTL);
        let ns = [Label::Text(b"ns"), Label::Text(b"dns")];
        let hostmaster = [Label::Text(b"hostmaster")];
        w.record(Name::Under(&[], Tail::Zone), rtype::SOA, ttl, |w| {
            if !w.name(Name::Under(&ns, Tail::Zone), true)
                || !w.name(Name::Under(&hostmaster, Tail::Zone), true)
            {
                return false;
            }
            w.u32(serial);
            w.u32(7200);
            w.u32(1800);
            w.u32(86400);
            w.u32(self.ttl);
            true
        });
    }

    /// CoreDNS's `plugin.A` / `plugin.AAAA`: address records for `q`
    /// (owned by `owner`), following ExternalName CNAMEs.
    fn addresses(
        &self,
        w: &mut Wire<'_>,
        q: &QName<'_>,
        owner: Name<'_>,
        v6: bool,
        chase: &mut Chase,
    ) -> Result<(), NameError> {
        // checkForApex: `apex.dns.ZONE` never exists here, so the apex
        // itself is looked up, and it is empty.
        if q.is_apex() {
            return Ok(());
        }
        let qtype = if v6 { rtype::AAAA } else { rtype::A };
        // CNAME targets are looked up with the zone as the client spelled
        // it in the query (CoreDNS keeps `state.Zone`).
        let zl = chase.zone_spelled_lower;
        self.services(q, qtype, zl, |hits| {
            let hits = hits?;
            let mut seen = Dedup::new();
            for hit in hits {
                match hit.host {
                    Host::Ip(ip) => {
                        if ip.is_ipv6() == v6 && seen.insert(ip) {
                            w.addr(owner, self.ttl, ip);
                        }
                    }
                    Host::Name(t) => self.cname(w, q, owner, v6, t, chase),
                }
            }
            Ok(())
        })
    }

    /// One CNAME of `plugin.A`: kept when the target (inside the zone)
    /// has addresses, or when its lookup is left to the rest of the chain
    /// (outside the zone).
    fn cname(
        &self,
        w: &mut Wire<'_>,
        q: &QName<'_>,
        owner: Name<'_>,
        v6: bool,
        t: &Target,
        chase: &mut Chase,
    ) {
        // x CNAME x (or a name below x) is a loop.
        if is_subdomain(&t.lower, q.lower)
            || chase.targets.len() > MAX_CNAME_CHAIN
            || chase.targets.iter().any(|x| **x == *t.wire)
            || chase.upstream.is_some()
        {
            return;
        }
        let mark = w.mark();
        if !w.record(owner, rtype::CNAME, self.ttl, |w| {
            w.name(Name::Wire(&t.wire), false)
        }) {
            return;
        }
        if !is_subdomain(&t.lower, q.zone()) {
            if chase.no_upstream {
                w.rollback(mark);
            } else {
                chase.upstream = Some(t.wire.to_vec());
            }
            return;
        }
        let before = w.answers();
        chase.targets.push(t.wire.to_vec());
        let sub = QName::new(&t.lower, q.zone_len);
        let r = self.addresses(w, &sub, Name::Wire(&t.wire), v6, chase);
        chase.targets.pop();
        if chase.upstream.is_none() && (r.is_err() || w.answers() == before) {
            w.rollback(mark);
        }
    }

    /// CoreDNS's `Kubernetes.Services` for every type but TXT and NS:
    /// `ns.dns.ZONE` gives the server's own addresses, anything else is
    /// [`Kubernetes::records`]. (CoreDNS's SRV case, which leaves
    /// ExternalName services out, is in [`Kubernetes::srv`].)
    fn services<R>(
        &self,
        q: &QName<'_>,
        qtype: u16,
        zone_spelled_lower: bool,
        f: impl for<'s> FnOnce(Result<&[Hit<'s>], NameError>) -> R,
    ) -> R {
        if zone_spelled_lower && is_default_ns(q) {
            let hits: Hits<'_> = self
                .ns_addrs()
                .into_iter()
                .filter(|ip| match qtype {
                    rtype::A => ip.is_ipv4(),
                    rtype::AAAA => ip.is_ipv6(),
                    _ => false,
                })
                .map(|ip| Hit {
                    host: Host::Ip(ip),
                    port: 0,
                    key: Key::NsDns,
                })
                .collect();
            return f(Ok(&hits));
        }
        self.records(q, f)
    }

    /// CoreDNS's `Kubernetes.Records`.
    pub(crate) fn records<R>(
        &self,
        q: &QName<'_>,
        f: impl for<'s> FnOnce(Result<&[Hit<'s>], NameError>) -> R,
    ) -> R {
        let r = match parse_request(q, || self.zonal_here(q)) {
            Ok(r) => r,
            Err(e) => return f(Err(e)),
        };
        let Some(space) = r.space else {
            return f(Ok(&[]));
        };
        // A service's entry knows whether its namespace exists: only the
        // names without one look the namespace up.
        let looked_up = space == Space::Svc && !r.service.is_empty();
        if is_reverse(q.lower)
            || !self.namespace_listed(r.namespace)
            || (!looked_up && !self.store.namespace_exists(r.namespace))
        {
            return f(Err(NameError));
        }
        match space {
            Space::Pod => {
                let mut hits = Hits::new();
                let res = self.find_pods(&r, &mut hits);
                f(res.map(|()| &hits[..]))
            }
            Space::Svc => {
                if r.service.is_empty() {
                    return f(Ok(&[]));
                }
                if let Some(mc) = self.multicluster_zone(q) {
                    return self.find_imports(mc, q, &r, f);
                }
                let mut buf = [0u8; 128];
                let key = key_into(&mut buf, r.service, r.namespace);
                self.store.with_service(key, |entry| {
                    let entry = entry.filter(|e| e.namespace_exists());
                    let mut hits = Hits::new();
                    let res = self.find_services(&r, entry, &mut hits);
                    f(res.map(|()| &hits[..]))
                })
            }
        }
    }

    /// Whether zonal names are answered in `q`'s zone: with `zonal`,
    /// outside the multicluster zones.
    fn zonal_here(&self, q: &QName<'_>) -> bool {
        self.zonal && self.multicluster_zone(q).is_none()
    }

    /// CoreDNS's `namespaceExposed`: listed by `namespaces` (when given)
    /// and existing (among those `namespace_labels` selects).
    pub(crate) fn namespace_exposed(&self, ns: &[u8]) -> bool {
        self.namespace_listed(ns) && self.store.namespace_exists(ns)
    }

    /// Whether `namespaces` (when given) lists `ns`.
    fn namespace_listed(&self, ns: &[u8]) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| **n == *ns)
    }

    /// CoreDNS's `findServices`.
    fn find_services<'s>(
        &self,
        r: &Parsed<'s>,
        entry: Option<&'s SvcEntry>,
        out: &mut Hits<'s>,
    ) -> Result<(), NameError> {
        let Some(e) = entry else {
            return Err(NameError);
        };
        let Some(svc) = &e.service else {
            return Err(NameError);
        };
        let (name, ns) = (e.name(), e.namespace());
        let external = matches!(svc.kind, Resolves::External(_) | Resolves::Unanswerable);
        let headless = svc.kind == Resolves::Headless;
        let zonal = !r.zone.is_empty();
        // Zonal names are defined for headless services only: a cluster
        // IP has no zone.
        if zonal && !headless {
            return Err(NameError);
        }
        if self.ignore_empty_service
            && !external
            && !headless
            && e.slices.iter().all(|s| s.endpoints.is_empty())
        {
            return Err(NameError);
        }
        if external {
            // No endpoints, ports or protocols below an ExternalName.
            if !r.endpoint.is_empty() || !r.port.is_empty() || !r.protocol.is_empty() {
                return Err(NameError);
            }
            return match &svc.kind {
                Resolves::External(t) => {
                    out.push(Hit {
                        host: Host::Name(t),
                        port: 0,
                        key: Key::Service { name, ns },
                    });
                    Ok(())
                }
                _ => Err(NameError),
            };
        }
        let mut found = false;
        if zonal {
            // The name exists whatever the zone holds (NODATA when empty):
            // `pin` takes the zone's endpoints, `prefer` all of them when
            // the zone has none.
            if !endpoint_hits(r, e, Some(r.zone), out) && r.prefer {
                endpoint_hits(r, e, None, out);
            }
            return Ok(());
        }
        if headless || !r.endpoint.is_empty() {
            found = endpoint_hits(r, e, None, out);
        } else if let Resolves::ClusterIp(ips) = &svc.kind {
            for p in svc.ports.iter().filter(|p| matches_port(r, p)) {
                found = true;
                for ip in ips.iter() {
                    if out.len() == MAX_HITS {
                        return Ok(());
                    }
                    out.push(Hit {
                        host: Host::Ip(*ip),
                        port: p.port,
                        key: Key::Service { name, ns },
                    });
                }
            }
        }
        if found { Ok(()) } else { Err(NameError) }
    }

    /// CoreDNS's `findPods`: `1-2-3-4.ns.pod.ZONE` (and the IPv6 form with
    /// `-` for `:`).
    fn find_pods<'s>(&self, r: &Parsed<'s>, out: &mut Hits<'s>) -> Result<(), NameError> {
        if self.pods == PodMode::Disabled {
            return Err(NameError);
        }
        let pod = r.service;
        if pod.is_empty() {
            return Ok(());
        }
        let dashes = pod.iter().filter(|b| **b == b'-').count();
        let (sep, v4) = if dashes == 3 && !pod.windows(2).any(|w| w == b"--") {
            (b'.', true)
        } else {
            (b':', false)
        };
        let mut text = [0u8; 63];
        let text = &mut text[..pod.len().min(63)];
        for (d, s) in text.iter_mut().zip(pod) {
            *d = if *s == b'-' { sep } else { *s };
        }
        let parsed = std::str::from_utf8(text).ok().and_then(|s| {
            if v4 {
                s.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
            } else {
                s.parse::<IpAddr>().ok()
            }
        });
        let Some(ip) = parsed.map(|ip| ip.to_canonical()) else {
            return Err(NameError);
        };
        let hit = Hit {
            host: Host::Ip(ip),
            port: 0,
            key: Key::Pod {
                pod,
                ns: r.namespace,
            },
        };
        match self.pods {
            PodMode::Insecure => {
                out.push(hit);
                Ok(())
            }
            // Verified: a pod in that namespace has that IP, written the
            // way the API writes it (CoreDNS compares the strings).
            _ => {
                if spelled_canonically(ip, text) && self.store.pod_in_namespace(ip, r.namespace) {
                    out.push(hit);
                    Ok(())
                } else {
                    Err(NameError)
                }
            }
        }
    }

    /// CoreDNS's `plugin.TXT` with its TXT case of `Services`: only
    /// `dns-version.ZONE` has one; another existing name is NODATA.
    fn txt(&self, w: &mut Wire<'_>, q: &QName<'_>) -> Result<(), NameError> {
        if q.count == 1 && q.right(0) == b"dns-version" {
            w.record(Name::Qname, rtype::TXT, SCHEMA_TTL, |w| {
                w.text(DNS_SCHEMA_VERSION);
                true
            });
            return Ok(());
        }
        self.records(q, |r| match r {
            Ok(hits) if !hits.is_empty() => Ok(()),
            // A zonal name that exists is NODATA even without endpoints
            // (found only for a headless service).
            Ok(_) if parse_request(q, || true).is_ok_and(|r| !r.zone.is_empty()) => Ok(()),
            _ => Err(NameError),
        })
    }

    /// CoreDNS's `plugin.SRV`: a record per (target, port), weights shared
    /// evenly, and the targets' addresses in the additional section (their
    /// owners point at the targets).
    ///
    /// A service's own name, or endpoints whose labels are all different
    /// (the store knows), are written straight from the store
    /// ([`Kubernetes::srv_direct`]); anything else goes through the hits
    /// ([`Kubernetes::srv_hits`]). Both write the same reply.
    fn srv(
        &self,
        w: &mut Wire<'_>,
        q: &QName<'_>,
        zone_spelled_lower: bool,
    ) -> Result<(), NameError> {
        // `ns.dns.ZONE` is the server's own addresses, not the store's.
        let own = zone_spelled_lower && is_default_ns(q);
        // A multicluster zone answers from the imports (through the hits).
        let direct = !own && !general_srv_forced() && self.multicluster_zone(q).is_none();
        // Zonal names filter the endpoints: through the hits.
        let r = match parse_request(q, || false) {
            Ok(r) if direct && r.space == Some(Space::Svc) && !r.service.is_empty() => r,
            _ => {
                return self.services(q, rtype::SRV, zone_spelled_lower, |hits| {
                    self.srv_hits(w, hits)
                });
            }
        };
        if is_reverse(q.lower) || !self.namespace_listed(r.namespace) {
            return Err(NameError);
        }
        let mut buf = [0u8; 128];
        let key = key_into(&mut buf, r.service, r.namespace);
        self.store.with_service(key, |entry| {
            // The entry knows whether its namespace exists.
            let entry = entry.filter(|e| e.namespace_exists());
            if let Some(e) = entry
                && let Some(done) = self.srv_direct(w, &r, e)
            {
                return done;
            }
            let mut hits = Hits::new();
            let res = self.find_services(&r, entry, &mut hits);
            self.srv_hits(w, res.map(|()| &hits[..]))
        })
    }

    /// [`Kubernetes::srv`] from the hits [`Kubernetes::find_services`]
    /// found (or `ns.dns.ZONE`'s).
    fn srv_hits(
        &self,
        w: &mut Wire<'_>,
        hits: Result<&[Hit<'_>], NameError>,
    ) -> Result<(), NameError> {
        // ExternalName services are left out (CoreDNS's Services
        // drops them for SRV).
        let hits: SmallVec<[(Key<'_>, IpAddr, i32); 8]> = hits?
            .iter()
            .filter_map(|h| match h.host {
                Host::Ip(ip) => Some((h.key, ip, h.port)),
                Host::Name(_) => None,
            })
            .collect();
        if hits.is_empty() {
            return Ok(());
        }
        let weight = srv_weight(hits.len());
        // Equal keys are one target: number them once.
        let ids = key_ids(hits.iter().map(|h| h.0));
        let mut at: SmallVec<[u16; 8]> = SmallVec::from_elem(0, hits.len());
        let mut target = Spelling::default();
        let mut seen = Dedup::new();
        for (i, (key, _, port)) in hits.iter().enumerate() {
            let id = ids[i];
            if *port == -1 || !seen.insert((id, *port as u16)) {
                continue;
            }
            let Some(name) = target.spell(*key, w.zone_wire()) else {
                continue;
            };
            if let Some(pos) = w.srv(self.ttl, weight, *port as u16, b"", name)
                && at[usize::from(id)] == 0
            {
                at[usize::from(id)] = pointer_to(pos);
            }
        }
        w.section(Section::Additional);
        let mut seen = Dedup::new();
        for (i, (key, ip, port)) in hits.iter().enumerate() {
            let id = ids[i];
            if *port == -1 || !seen.insert((id, *ip)) {
                continue;
            }
            if at[usize::from(id)] != 0 {
                w.addr(Name::At(at[usize::from(id)]), self.ttl, *ip);
            } else if let Some(name) = target.spell(*key, w.zone_wire()) {
                w.addr(Name::Wire(name), self.ttl, *ip);
            }
        }
        Ok(())
    }

    /// [`Kubernetes::srv`] straight from a service's entry, without
    /// gathering hits: the same records in the same order as
    /// [`Kubernetes::srv_hits`] over what [`Kubernetes::find_services`]
    /// would find. `None` when it cannot (an ExternalName, endpoints that
    /// share a label, more than [`MAX_HITS`] hits): then the hits decide.
    fn srv_direct(
        &self,
        w: &mut Wire<'_>,
        r: &Parsed<'_>,
        e: &SvcEntry,
    ) -> Option<Result<(), NameError>> {
        let svc = e.service.as_ref()?;
        let headless = svc.kind == Resolves::Headless;
        let ips = match &svc.kind {
            Resolves::ClusterIp(ips) => ips,
            Resolves::Headless => &Box::default(),
            Resolves::External(_) | Resolves::Unanswerable => return None,
        };
        if self.ignore_empty_service && !headless && e.slices.iter().all(|s| s.endpoints.is_empty())
        {
            return Some(Err(NameError));
        }
        // The rest of every target: `name.ns.svc.ZONE`.
        let mut rest = [0u8; 255];
        let rest = {
            let zone = w.zone_wire();
            let (name, ns) = (e.name(), e.namespace());
            let len = 1 + name.len() + 1 + ns.len() + 4 + zone.len();
            let out = rest.get_mut(..len)?;
            out[0] = name.len() as u8;
            out[1..1 + name.len()].copy_from_slice(name);
            let at = 1 + name.len();
            out[at] = ns.len() as u8;
            out[at + 1..at + 1 + ns.len()].copy_from_slice(ns);
            let at = at + 1 + ns.len();
            out[at..at + 4].copy_from_slice(b"\x03svc");
            out[at + 4..].copy_from_slice(zone);
            &*out
        };
        if headless || !r.endpoint.is_empty() {
            return self.srv_endpoints(w, r, e, rest);
        }
        // The service's own name, a record per port, its cluster IPs.
        let ports = || svc.ports.iter().filter(|p| matches_port(r, p));
        let matching = ports().count();
        if matching == 0 {
            return Some(Err(NameError));
        }
        let n = matching * ips.len();
        if n == 0 {
            return Some(Ok(()));
        }
        if n > MAX_HITS {
            return None;
        }
        let weight = srv_weight(n);
        let mut at = 0;
        let mut numbers = Numbers::default();
        for p in ports() {
            if numbers.insert(p.port)
                && let Some(pos) = w.srv(self.ttl, weight, p.port as u16, b"", rest)
                && at == 0
            {
                at = pointer_to(pos);
            }
        }
        if numbers.is_empty() {
            return Some(Ok(()));
        }
        w.section(Section::Additional);
        for (i, ip) in ips.iter().enumerate() {
            if ips[..i].contains(ip) {
                continue;
            }
            let owner = if at != 0 {
                Name::At(at)
            } else {
                Name::Wire(rest)
            };
            w.addr(owner, self.ttl, *ip);
        }
        Some(Ok(()))
    }

    /// [`Kubernetes::srv_direct`] for endpoints: a record per endpoint and
    /// port of its slice, then each endpoint's address.
    fn srv_endpoints(
        &self,
        w: &mut Wire<'_>,
        r: &Parsed<'_>,
        e: &SvcEntry,
        rest: &[u8],
    ) -> Option<Result<(), NameError>> {
        if !e.distinct {
            return None;
        }
        let wanted = (!r.endpoint.is_empty()).then(|| EndpointQuery::new(r.endpoint));
        // Whether the query names `ep` (all when it names none).
        let named = |ep: &super::store::Endpoint| wanted.is_none_or(|w| w.names(EpLabel::of(ep)));
        // The ports matched once: per slice, how many port numbers it
        // answers, then those (each once, no -1).
        let mut numbers: SmallVec<[u16; 16]> = SmallVec::new();
        // Every (endpoint, port) counts for the weight, answered or not.
        let mut n = 0;
        for s in &e.slices {
            let len_at = numbers.len();
            numbers.push(0);
            let mut matching = 0;
            for p in s.ports.iter() {
                if !matches_port(r, p) {
                    continue;
                }
                matching += 1;
                if p.port != -1 && !numbers[len_at + 1..].contains(&(p.port as u16)) {
                    numbers.push(p.port as u16);
                }
            }
            numbers[len_at] = (numbers.len() - len_at - 1) as u16;
            if matching > 0 {
                n += matching
                    * match wanted {
                        None => s.endpoints.len(),
                        Some(_) => s.endpoints.iter().filter(|ep| named(ep)).count(),
                    };
            }
        }
        if n == 0 {
            return Some(Err(NameError));
        }
        if n > MAX_HITS {
            return None;
        }
        let weight = srv_weight(n);
        let slice_ports = |seg: &mut usize| {
            let k = usize::from(numbers[*seg]);
            let ports = &numbers[*seg + 1..*seg + 1 + k];
            *seg += 1 + k;
            ports
        };
        // Every record fits or the hits decide (they handle a message cut
        // short): then where each target went follows from the lengths.
        let mark = w.mark();
        let start = w.len();
        let mut seg = 0;
        for s in &e.slices {
            let ports = slice_ports(&mut seg);
            if ports.is_empty() {
                continue;
            }
            for ep in s.endpoints.iter() {
                if !named(ep) {
                    continue;
                }
                let label = s.label(ep);
                if label.len() + rest.len() > MAX_NAME {
                    continue;
                }
                for port in ports {
                    if w.srv(self.ttl, weight, *port, label, rest).is_none() {
                        w.rollback(mark);
                        return None;
                    }
                }
            }
        }
        w.section(Section::Additional);
        let mut at = start;
        let mut seg = 0;
        for s in &e.slices {
            let ports = slice_ports(&mut seg);
            if ports.is_empty() {
                continue;
            }
            for ep in s.endpoints.iter() {
                if !named(ep) {
                    continue;
                }
                let label = s.label(ep);
                let len = label.len() + rest.len();
                if len > MAX_NAME {
                    continue;
                }
                // The target of its first record, then past its records.
                let first = pointer_to(at + SRV_FIXED);
                at += ports.len() * (SRV_FIXED + len);
                if first != 0 {
                    w.addr(Name::At(first), self.ttl, ep.ip);
                    continue;
                }
                let mut name = [0u8; MAX_NAME];
                let out = &mut name[..len];
                out[..label.len()].copy_from_slice(label);
                out[label.len()..].copy_from_slice(rest);
                w.addr(Name::Wire(out), self.ttl, ep.ip);
            }
        }
        Some(Ok(()))
    }

    /// CoreDNS's `plugin.PTR` over `Kubernetes.Reverse`.
    fn ptr(&self, w: &mut Wire<'_>, q: &QName<'_>) -> Result<(), NameError> {
        let Some(ip) = address_from_reverse(q.lower) else {
            // Not an address: whether the name exists decides.
            return self.records(q, |r| r.map(|_| ()));
        };
        // A service's cluster IP first: one name, the first service whose
        // namespace is exposed (checked only when `namespaces` is given).
        let by_service = self.store.with_cluster_ip(ip, |keys| {
            keys.iter().any(|key| {
                self.store.with_service(key, |e| {
                    let Some(e) = e else { return false };
                    if !self.namespaces.is_empty() && !self.namespace_exposed(e.namespace()) {
                        return false;
                    }
                    let key = Key::Service {
                        name: e.name(),
                        ns: e.namespace(),
                    };
                    self.ptr_record(w, key);
                    true
                })
            })
        });
        if by_service {
            return Ok(());
        }
        // Else every endpoint with that address, each name once.
        let found = self.store.with_endpoint_ip(ip, |slices| {
            let mut seen = Dedup::new();
            let mut found = false;
            for slice in slices {
                let (name, ns) = split_key(&slice.service_key);
                if !self.namespaces.is_empty() && !self.namespace_exposed(ns) {
                    continue;
                }
                for ep in slice.endpoints.iter().filter(|ep| ep.ip == ip) {
                    found = true;
                    let key = Key::Endpoint {
                        label: EpLabel::of(ep),
                        name,
                        ns,
                    };
                    if seen.insert(key) {
                        self.ptr_record(w, key);
                    }
                }
            }
            found
        });
        if found { Ok(()) } else { Err(NameError) }
    }

    /// A PTR to `key` under the primary zone.
    fn ptr_record(&self, w: &mut Wire<'_>, key: Key<'_>) {
        let (labels, n) = key.labels();
        w.record(Name::Qname, rtype::PTR, self.ttl, |w| {
            w.name(
                Name::Under(&labels[..n], Tail::Wire(&self.primary_zone)),
                false,
            )
        });
    }

    /// CoreDNS's `plugin.NS` at the apex: `ns.dns.ZONE`, with the server's
    /// addresses in the additional section.
    fn ns(&self, w: &mut Wire<'_>) {
        let addrs = self.ns_addrs();
        if addrs.is_empty() {
            return;
        }
        let ns = [Label::Text(b"ns"), Label::Text(b"dns")];
        w.record(Name::Under(&[], Tail::Zone), rtype::NS, self.ttl, |w| {
            w.name(Name::Under(&ns, Tail::Zone), true)
        });
        w.section(Section::Additional);
        let mut seen = Dedup::new();
        for ip in addrs {
            if seen.insert(ip) {
                w.addr(Name::Under(&ns, Tail::Zone), self.ttl, ip);
            }
        }
    }

    /// CoreDNS's `nsAddrs`: the addresses of the services whose endpoints
    /// are this server (a headless one's endpoints in that slice, else its
    /// cluster IPs), or this server's own addresses when none is.
    pub(crate) fn ns_addrs(&self) -> Vec<IpAddr> {
        let local = self.local_ips();
        let mut found = false;
        let mut out = Vec::new();
        for lip in local.iter() {
            self.store.with_endpoint_ip(*lip, |slices| {
                for slice in slices {
                    found = true;
                    self.store.with_service(&slice.service_key, |e| {
                        let Some(svc) = e.and_then(|e| e.service.as_ref()) else {
                            return;
                        };
                        match &svc.kind {
                            Resolves::Headless => {
                                out.extend(slice.endpoints.iter().map(|ep| ep.ip));
                            }
                            Resolves::ClusterIp(ips) => out.extend(ips.iter().copied()),
                            Resolves::External(_) | Resolves::Unanswerable => {}
                        }
                    });
                }
            });
        }
        if found { out } else { local.to_vec() }
    }
}

/// Whether `q` is `ns.dns.ZONE`.
fn is_default_ns(q: &QName<'_>) -> bool {
    q.count == 2 && q.right(1) == b"ns" && q.right(0) == b"dns"
}

/// CoreDNS's `dnsutil.IsReverse`: a name below `in-addr.arpa.` or
/// `ip6.arpa.` (not the suffix itself).
pub(crate) fn is_reverse(lower: &[u8]) -> bool {
    const V4: &[u8] = b"\x07in-addr\x04arpa\x00";
    const V6: &[u8] = b"\x03ip6\x04arpa\x00";
    (lower.len() > V4.len() && lower.ends_with(V4))
        || (lower.len() > V6.len() && lower.ends_with(V6))
}

/// CoreDNS's `dnsutil.ExtractAddressFromReverse`: `4.3.2.1.in-addr.arpa.`
/// is 1.2.3.4; 32 nibbles under `ip6.arpa.` are an IPv6 address.
pub(crate) fn address_from_reverse(lower: &[u8]) -> Option<IpAddr> {
    const V4: &[u8] = b"\x07in-addr\x04arpa\x00";
    const V6: &[u8] = b"\x03ip6\x04arpa\x00";
    let (head, v6) = if lower.len() > V4.len() && lower.ends_with(V4) {
        (&lower[..lower.len() - V4.len()], false)
    } else if lower.len() > V6.len() && lower.ends_with(V6) {
        (&lower[..lower.len() - V6.len()], true)
    } else {
        return None;
    };
    let mut labels: SmallVec<[&[u8]; 32]> = SmallVec::new();
    let mut pos = 0;
    while pos < head.len() {
        let len = usize::from(head[pos]);
        labels.push(head.get(pos + 1..pos + 1 + len)?);
        pos += 1 + len;
    }
    labels.reverse();
    let mut text = String::with_capacity(64);
    if v6 {
        // Groups of four labels, joined by ':' (a remainder is dropped).
        for (i, group) in labels.chunks_exact(4).enumerate() {
            if i > 0 {
                text.push(':');
            }
            for l in group {
                text.push_str(std::str::from_utf8(l).ok()?);
            }
        }
        let ip: std::net::Ipv6Addr = text.parse().ok()?;
        Some(IpAddr::V6(ip).to_canonical())
    } else {
        for (i, l) in labels.iter().enumerate() {
            if i > 0 {
                text.push('.');
            }
            text.push_str(std::str::from_utf8(l).ok()?);
        }
        text.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

/// Whether `text` is how Go (and the API server) writes `ip`.
fn spelled_canonically(ip: IpAddr, text: &[u8]) -> bool {
    use std::fmt::Write as _;
    struct Buf([u8; 48], usize);
    impl std::fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let end = self.1 + s.len();
            self.0
                .get_mut(self.1..end)
                .ok_or(std::fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.1 = end;
            Ok(())
        }
    }
    let mut b = Buf([0; 48], 0);
    write!(b, "{ip}").is_ok() && &b.0[..b.1] == text
}

/// `"name.ns"` split.
fn split_key(key: &[u8]) -> (&[u8], &[u8]) {
    match key.iter().position(|b| *b == b'.') {
        Some(i) => (&key[..i], &key[i + 1..]),
        None => (key, b""),
    }
}
