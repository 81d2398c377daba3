//! What a multicluster zone answers for `SERVICE.NS.svc.ZONE` and the
//! names below it: CoreDNS 1.14.7's `findMultiClusterServices` and the
//! `endpoint.cluster` shape of its `parseRequest`. Everything else (the
//! zone apex, `svc`, namespaces, pods, TXT, NS, SRV weights, NXDOMAIN and
//! NODATA with the SOA) is the cluster zone's code, which calls in here
//! through [`Kubernetes::multicluster_zone`] and [`Kubernetes::serial`].
//!
//! Like the rest of the query path: no lock, no allocation.

use smallvec::SmallVec;

use super::super::Kubernetes;
use super::super::answer::{
    EndpointQuery, EpLabel, Hit, Host, Key, MAX_HITS, NameError, Parsed, QName,
};
use super::super::store::{Port, key_into};
use super::Multicluster;
use super::store::{ImportEntry, Resolves};

/// The cluster label of the endpoints of a slice whose source cluster is
/// not a DNS label: too long to spell, so SRV leaves their targets out
/// (CoreDNS writes a name that cannot be packed, or that does not resolve).
const UNNAMEABLE: &[u8] = &[b'-'; 64];

/// A name under `svc` in a multicluster zone, taken apart.
#[derive(Debug, Clone, Copy)]
struct Request<'a> {
    port: &'a [u8],
    protocol: &'a [u8],
    endpoint: &'a [u8],
    cluster: &'a [u8],
}

impl<'a> Request<'a> {
    /// CoreDNS's `parseRequest` with `multicluster` set: two labels before
    /// the service are `endpoint.cluster` unless either starts with `_`
    /// (then `_port._protocol`, as in the cluster zone).
    fn new(q: &QName<'a>, r: &Parsed<'a>) -> Self {
        let mut req = Self {
            port: r.port,
            protocol: r.protocol,
            endpoint: r.endpoint,
            cluster: b"",
        };
        if q.labels() == 5 {
            let (cluster, endpoint) = (q.right(3), q.right(4));
            if !cluster.starts_with(b"_") && !endpoint.starts_with(b"_") {
                req = Self {
                    port: b"",
                    protocol: b"",
                    endpoint,
                    cluster,
                };
            }
        }
        req
    }

    fn matches_port(&self, p: &Port) -> bool {
        (self.port.is_empty() || self.port == &*p.name)
            && (self.protocol.is_empty() || self.protocol == p.protocol.as_bytes())
    }
}

type Hits<'s> = SmallVec<[Hit<'s>; 8]>;

impl Kubernetes {
    /// The multicluster part, when `q`'s zone is a multicluster zone.
    pub(crate) fn multicluster_zone(&self, q: &QName<'_>) -> Option<&Multicluster> {
        let mc = self.multicluster.as_ref()?;
        mc.serves(q.zone()).then_some(mc)
    }

    /// The SOA serial of `zone` (wire form, any letter case): the
    /// multicluster one in a multicluster zone (CoreDNS's `Serial`).
    pub(crate) fn serial(&self, zone: &[u8]) -> u32 {
        match &self.multicluster {
            Some(mc) if mc.serves(zone) => mc.store.serial(),
            _ => self.store.serial(),
        }
    }

    /// CoreDNS's `findMultiClusterServices` for `SERVICE.NS.svc.ZONE` and
    /// below, `r` parsed as in the cluster zone (the namespace is exposed,
    /// the service label is not empty).
    pub(crate) fn find_imports<'a, R>(
        &self,
        mc: &Multicluster,
        q: &QName<'a>,
        r: &Parsed<'a>,
        f: impl for<'s> FnOnce(Result<&[Hit<'s>], NameError>) -> R,
    ) -> R {
        let req = Request::new(q, r);
        let mut buf = [0u8; 128];
        let key = key_into(&mut buf, r.service, r.namespace);
        mc.store.with_import(key, |entry| {
            let mut hits = Hits::new();
            let res = self.import_hits(&req, entry, &mut hits);
            f(res.map(|()| &hits[..]))
        })
    }

    fn import_hits<'s>(
        &self,
        req: &Request<'s>,
        entry: Option<&'s ImportEntry>,
        out: &mut Hits<'s>,
    ) -> Result<(), NameError> {
        let Some(e) = entry else {
            return Err(NameError);
        };
        let Some(import) = &e.import else {
            return Err(NameError);
        };
        let (name, ns) = (e.name(), e.namespace());
        let headless = import.kind == Resolves::Headless;
        if self.ignore_empty_service && !headless && e.slices.iter().all(|s| s.endpoints.is_empty())
        {
            return Err(NameError);
        }
        let mut found = false;
        if headless || !req.endpoint.is_empty() {
            let wanted = (!req.endpoint.is_empty()).then(|| EndpointQuery::new(req.endpoint));
            for slice in &e.slices {
                let cluster = slice.cluster.as_deref().unwrap_or(UNNAMEABLE);
                // An endpoint is named with its cluster (an empty one
                // with none, as CoreDNS compares the strings).
                if wanted.is_some() && (slice.cluster.is_none() || cluster != req.cluster) {
                    continue;
                }
                for ep in slice.endpoints.iter() {
                    let label = EpLabel::of(ep);
                    if wanted.is_some_and(|w| !w.names(label)) {
                        continue;
                    }
                    for p in slice.ports.iter().filter(|p| req.matches_port(p)) {
                        found = true;
                        if out.len() == MAX_HITS {
                            return Ok(());
                        }
                        out.push(Hit {
                            host: Host::Ip(ep.ip),
                            port: p.port,
                            key: Key::ClusterEndpoint {
                                label,
                                cluster,
                                name,
                                ns,
                            },
                        });
                    }
                }
            }
        } else if let Resolves::ClusterSetIp(ips) = &import.kind {
            for p in import.ports.iter().filter(|p| req.matches_port(p)) {
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
}
