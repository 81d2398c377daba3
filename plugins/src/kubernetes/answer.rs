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

use super::reply::{Label, Name, Section, Tail, Wire, rtype};
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

/// The question's name relative to the zone it matched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QName<'a> {
    /// Lower-cased wire form.
    pub(crate) lower: &'a [u8],
    /// Wire length of the zone at its end.
    pub(crate) zone_len: usize,
}

impl<'a> QName<'a> {
    fn zone(&self) -> &'a [u8] {
        &self.lower[self.lower.len() - self.zone_len..]
    }
    fn is_apex(&self) -> bool {
        self.lower.len() == self.zone_len
    }
    /// Up to `N` labels before the zone, rightmost last, and how many
    /// there are in all.
    fn labels<const N: usize>(&self) -> (SmallVec<[&'a [u8]; N]>, usize) {
        let mut out = SmallVec::new();
        let end = self.lower.len() - self.zone_len;
        let mut pos = 0;
        let mut count = 0;
        while pos < end {
            let len = usize::from(self.lower[pos]);
            let Some(label) = self.lower.get(pos + 1..pos + 1 + len) else {
                break;
            };
            if out.len() == N {
                out.remove(0);
            }
            out.push(label);
            count += 1;
            pos += 1 + len;
        }
        (out, count)
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
}

/// CoreDNS's `parseRequest` without `zonal` and `multicluster`.
pub(crate) fn parse_request<'a>(q: &QName<'a>) -> Result<Parsed<'a>, NameError> {
    let (segs, count) = q.labels::<6>();
    let mut r = Parsed::default();
    // The apex, `svc.ZONE` and `pod.ZONE` exist and are empty.
    if count == 0 || (count == 1 && matches!(segs[0], b"svc" | b"pod")) {
        return Ok(r);
    }
    if count > 5 {
        return Err(NameError);
    }
    let mut last = segs.len() - 1;
    r.space = Some(match segs[last] {
        b"svc" => Space::Svc,
        b"pod" => Space::Pod,
        _ => return Err(NameError),
    });
    if last == 0 {
        return Ok(r);
    }
    last -= 1;
    r.namespace = segs[last];
    if last == 0 {
        return Ok(r);
    }
    last -= 1;
    r.service = segs[last];
    match last {
        0 => {}
        1 => r.endpoint = segs[0],
        _ => {
            r.protocol = strip_underscore(segs[1]);
            r.port = strip_underscore(segs[0]);
        }
    }
    Ok(r)
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
/// target and the owner of its address record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Key<'s> {
    /// `name.ns.svc.ZONE`.
    Service { name: &'s [u8], ns: &'s [u8] },
    /// `label.name.ns.svc.ZONE`.
    Endpoint {
        label: EpLabel<'s>,
        name: &'s [u8],
        ns: &'s [u8],
    },
    /// `pod.ns.pod.ZONE`.
    Pod { pod: &'s [u8], ns: &'s [u8] },
    /// `ns.dns.ZONE`.
    NsDns,
}

/// An endpoint's label: its name, or its dashed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum EpLabel<'s> {
    Name(&'s [u8]),
    Ip(IpAddr),
}

impl<'s> EpLabel<'s> {
    fn of(ep: &'s super::store::Endpoint) -> Self {
        ep.name.as_deref().map_or(Self::Ip(ep.ip), Self::Name)
    }
    fn label(self) -> Label<'s> {
        match self {
            Self::Name(n) => Label::Text(n),
            Self::Ip(ip) => Label::Dashed(ip),
        }
    }
    /// Whether a query label names this endpoint (CoreDNS's `match`).
    fn is(self, query: &[u8]) -> bool {
        match self {
            Self::Name(n) => n == query,
            Self::Ip(ip) => {
                let mut d = super::reply::Dashed::default();
                d.write(ip);
                d.as_bytes() == query
            }
        }
    }
}

impl<'s> Key<'s> {
    /// The labels before the zone.
    fn labels(self) -> ([Label<'s>; 4], usize) {
        let t = Label::Text;
        match self {
            Self::Service { name, ns } => ([t(name), t(ns), t(b"svc"), t(b"")], 3),
            Self::Endpoint { label, name, ns } => ([label.label(), t(name), t(ns), t(b"svc")], 4),
            Self::Pod { pod, ns } => ([t(pod), t(ns), t(b"pod"), t(b"")], 3),
            Self::NsDns => ([t(b"ns"), t(b"dns"), t(b""), t(b"")], 2),
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
    small: SmallVec<[T; 16]>,
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
        let serial = self.store.serial();
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
        let sub = QName {
            lower: &t.lower,
            zone_len: q.zone_len,
        };
        let r = self.addresses(w, &sub, Name::Wire(&t.wire), v6, chase);
        chase.targets.pop();
        if chase.upstream.is_none() && (r.is_err() || w.answers() == before) {
            w.rollback(mark);
        }
    }

    /// CoreDNS's `Kubernetes.Services` for every type but TXT and NS:
    /// `ns.dns.ZONE` gives the server's own addresses, SRV leaves
    /// ExternalName services out, anything else is [`Kubernetes::records`].
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
        self.records(q, |r| match r {
            Ok(hits) if qtype == rtype::SRV => {
                let ips: Hits<'_> = hits
                    .iter()
                    .filter(|h| matches!(h.host, Host::Ip(_)))
                    .copied()
                    .collect();
                f(Ok(&ips))
            }
            other => f(other),
        })
    }

    /// CoreDNS's `Kubernetes.Records`.
    pub(crate) fn records<R>(
        &self,
        q: &QName<'_>,
        f: impl for<'s> FnOnce(Result<&[Hit<'s>], NameError>) -> R,
    ) -> R {
        let r = match parse_request(q) {
            Ok(r) => r,
            Err(e) => return f(Err(e)),
        };
        let Some(space) = r.space else {
            return f(Ok(&[]));
        };
        if is_reverse(q.lower) || !self.namespace_exposed(r.namespace) {
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
                let mut buf = [0u8; 128];
                let key = key_into(&mut buf, r.service, r.namespace);
                self.store.with_service(key, |entry| {
                    let mut hits = Hits::new();
                    let res = self.find_services(&r, entry, &mut hits);
                    f(res.map(|()| &hits[..]))
                })
            }
        }
    }

    /// CoreDNS's `namespaceExposed`: listed by `namespaces` (when given)
    /// and existing (among those `namespace_labels` selects).
    pub(crate) fn namespace_exposed(&self, ns: &[u8]) -> bool {
        (self.namespaces.is_empty() || self.namespaces.iter().any(|n| **n == *ns))
            && self.store.namespace_exists(ns)
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
        if headless || !r.endpoint.is_empty() {
            for slice in &e.slices {
                for ep in slice.endpoints.iter() {
                    let label = EpLabel::of(ep);
                    if !r.endpoint.is_empty() && !label.is(r.endpoint) {
                        continue;
                    }
                    for p in slice.ports.iter().filter(|p| matches_port(r, p)) {
                        found = true;
                        out.push(Hit {
                            host: Host::Ip(ep.ip),
                            port: p.port,
                            key: Key::Endpoint { label, name, ns },
                        });
                    }
                }
            }
        } else if let Resolves::ClusterIp(ips) = &svc.kind {
            for p in svc.ports.iter().filter(|p| matches_port(r, p)) {
                found = true;
                for ip in ips.iter() {
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
        let (segs, count) = q.labels::<1>();
        if count == 1 && segs[0] == b"dns-version" {
            w.record(Name::Qname, rtype::TXT, SCHEMA_TTL, |w| {
                w.text(DNS_SCHEMA_VERSION);
                true
            });
            return Ok(());
        }
        self.records(q, |r| match r {
            Ok(hits) if !hits.is_empty() => Ok(()),
            _ => Err(NameError),
        })
    }

    /// CoreDNS's `plugin.SRV`: a record per (target, port), weights shared
    /// evenly, and the targets' addresses in the additional section.
    fn srv(
        &self,
        w: &mut Wire<'_>,
        q: &QName<'_>,
        zone_spelled_lower: bool,
    ) -> Result<(), NameError> {
        self.services(q, rtype::SRV, zone_spelled_lower, |hits| {
            let hits = hits?;
            if hits.is_empty() {
                return Ok(());
            }
            // All priorities are 0 and weights 100: each gets 100/n.
            let n = hits.len() as f64;
            let weight = ((100.0 / (100.0 * n)) * 100.0).floor();
            let weight = if weight < 1.0 { 1 } else { weight as u16 };
            let mut seen = Dedup::new();
            for h in hits.iter().filter(|h| h.port != -1) {
                let port = h.port as u16;
                if !seen.insert((h.key, port)) {
                    continue;
                }
                let (labels, n) = h.key.labels();
                w.record(Name::Qname, rtype::SRV, self.ttl, |w| {
                    w.u16(0);
                    w.u16(weight);
                    w.u16(port);
                    w.name(Name::Under(&labels[..n], Tail::Zone), false)
                });
            }
            w.section(Section::Additional);
            let mut seen = Dedup::new();
            for h in hits.iter().filter(|h| h.port != -1) {
                let Host::Ip(ip) = h.host else { continue };
                if !seen.insert((h.key, ip)) {
                    continue;
                }
                let (labels, n) = h.key.labels();
                w.addr(Name::Under(&labels[..n], Tail::Zone), self.ttl, ip);
            }
            Ok(())
        })
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
    let (segs, count) = q.labels::<2>();
    count == 2 && segs[0] == b"ns" && segs[1] == b"dns"
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
