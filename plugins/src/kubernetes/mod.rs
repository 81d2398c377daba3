//! *kubernetes* answers cluster names from the Kubernetes API, per the
//! Kubernetes DNS-Based Service Discovery specification (schema 1.1.0),
//! exactly as CoreDNS 1.14.7's kubernetes plugin does.
//!
//! - `setup.rs`: the Corefile syntax, every CoreDNS option;
//! - `labels.rs`: label selectors (`labels`, `namespace_labels`);
//! - `store.rs`: the DNS-shaped view of the cluster, read without a lock,
//!   fed by the watch side through [`Batch`];
//! - `answer.rs`: what is answered, record by record;
//! - `reply.rs`: replies written in wire form straight into the buffer;
//! - `watch.rs`: kube-rs watchers that keep the store current;
//! - `multicluster/`: `multicluster ZONES...`, ServiceImports and their
//!   EndpointSlices (store, answers, watches).
//!
//! The `query` step is synchronous and, for every name the store can
//! answer, allocation-free. One case needs the network: an ExternalName
//! service whose target is outside the plugin's zones. As CoreDNS resolves
//! that target through itself, the plugin returns [`Flow::Upstream`] and
//! its network step asks the whole server for the target (CoreDNS's
//! `upstream.Lookup`: the block the target routes to, from its first plugin), then answers the CNAME and what came back.

mod answer;
mod labels;
mod metrics;
mod multicluster;
mod reply;
mod setup;
mod store;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_zonal;
mod watch;
mod watched;

pub use labels::{Expression, Selector, SetOp};
pub use multicluster::{
    ImportKind, ImportRecord, McBatch, McKind, McSliceRecord, McStats, McStore,
};
pub use setup::{
    Connection, DEFAULT_STARTUP_TIMEOUT, DEFAULT_TTL, KubeconfigFile, KubernetesConfig,
    MAX_STARTUP_TIMEOUT, MAX_TTL, TlsFiles, parse, setup,
};
pub use store::{
    Batch, EndpointRecord, Kind, PodRecord, PortRecord, ServiceKind, ServiceRecord, SliceRecord,
    Store, StoreOptions, StoreStats, parse_ip,
};
pub(crate) use watch::inferred_client;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};

use crate::pkg::fall::Fall;
use crate::pkg::lifecycle::Readiness;
use crate::pkg::zones;
use crate::plugin::{Context, Flow, Plugin, Rerun, Upstream, UpstreamFuture};
use crate::request::Request;
use crate::setup::BoundAddrs;

use answer::{Chase, Outcome, QName};
use reply::{Section, Wire};

/// How long the network step waits for the rest of the chain to resolve
/// an ExternalName target (forward's own overall deadline).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// `pods`: how `1-2-3-4.ns.pod.ZONE` is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodMode {
    /// NXDOMAIN (the default).
    #[default]
    Disabled,
    /// The address in the name, without asking the cluster.
    Insecure,
    /// The address in the name, when a pod in that namespace has it.
    Verified,
}

/// The kubernetes handler.
pub struct Kubernetes {
    /// Zones served, lower-cased wire form.
    zones: Vec<Vec<u8>>,
    /// The first forward zone, wire form: PTR targets are under it.
    primary_zone: Vec<u8>,
    /// `namespaces` (empty: all).
    namespaces: Vec<Box<[u8]>>,
    pods: PodMode,
    ttl: u32,
    fall: Fall,
    ignore_empty_service: bool,
    /// `zonal`.
    zonal: bool,
    store: Arc<Store>,
    /// The store with its watch, held so the watch runs while this
    /// configuration does (`None` when built without one, in tests).
    watched: Option<Arc<watched::Watched>>,
    /// `multicluster`: its zones and ServiceImports.
    multicluster: Option<multicluster::Multicluster>,
    local: LocalIps,
    config: Arc<KubernetesConfig>,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("zones", &self.config.zones)
            .field("pods", &self.pods)
            .field("ttl", &self.ttl)
            .field("store", &self.store)
            .field("watched", &self.watched.is_some())
            .finish()
    }
}

/// What the store keeps, from the settings.
fn store_options(cfg: &KubernetesConfig) -> StoreOptions {
    StoreOptions {
        endpoints: cfg.endpoints,
        pods: cfg.pods == PodMode::Verified,
        endpoint_pod_names: cfg.endpoint_pod_names,
        zones: cfg.zonal,
    }
}

/// What the plugin reports to `ready`: the cluster store and, with
/// `multicluster`, the ServiceImports.
#[derive(Debug)]
struct Synced(Arc<Store>, Option<Arc<McStore>>);

impl Readiness for Synced {
    fn name(&self) -> &'static str {
        "kubernetes"
    }
    fn ready(&self) -> bool {
        self.0.synced() && self.1.as_ref().is_none_or(|m| m.synced())
    }
}

/// The server's own addresses (CoreDNS's `localIPs`), for `ns.dns.ZONE`
/// and the apex NS answer: the addresses the block is bound to, or every
/// interface address when it is bound to the wildcard; loopback never.
#[derive(Debug, Default)]
struct LocalIps {
    bound: Option<Arc<BoundAddrs>>,
    known: OnceLock<Box<[IpAddr]>>,
}

impl LocalIps {
    fn get(&self) -> std::borrow::Cow<'_, [IpAddr]> {
        if let Some(ips) = self.known.get() {
            return std::borrow::Cow::Borrowed(ips);
        }
        let bound = self.bound.as_ref().map(|b| b.get()).unwrap_or_default();
        let ips = local_ips(&bound);
        if bound.is_empty() {
            // Not listening yet: ask again next time.
            return std::borrow::Cow::Owned(ips);
        }
        std::borrow::Cow::Borrowed(self.known.get_or_init(|| ips.into()))
    }
}

fn local_ips(bound: &[SocketAddr]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let wildcard = bound.is_empty() || bound.iter().any(|a| a.ip().is_unspecified());
    if wildcard {
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for a in addrs {
                let Some(addr) = a.address else { continue };
                let ip = if let Some(v4) = addr.as_sockaddr_in() {
                    IpAddr::V4(v4.ip())
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    IpAddr::V6(v6.ip())
                } else {
                    continue;
                };
                out.push(ip.to_canonical());
            }
        }
    } else {
        out.extend(bound.iter().map(|a| a.ip().to_canonical()));
    }
    out.retain(|ip| !ip.is_loopback() && !ip.is_unspecified());
    out.dedup();
    out
}

impl Kubernetes {
    /// Builds the handler and its empty store (no I/O, no task). `bound`
    /// is where the block listens, for `ns.dns.ZONE`.
    pub fn new(cfg: &KubernetesConfig, bound: Option<Arc<BoundAddrs>>) -> Self {
        Self::with_store(cfg, bound, Store::new(store_options(cfg)), None)
    }

    fn with_store(
        cfg: &KubernetesConfig,
        bound: Option<Arc<BoundAddrs>>,
        store: Arc<Store>,
        watched: Option<Arc<watched::Watched>>,
    ) -> Self {
        Self {
            zones: cfg.zones.iter().filter_map(|z| zones::to_wire(z)).collect(),
            primary_zone: zones::to_wire(&cfg.primary_zone).unwrap_or_else(|| vec![0]),
            namespaces: cfg.namespaces.iter().map(|n| n.as_bytes().into()).collect(),
            pods: cfg.pods,
            ttl: cfg.ttl,
            fall: cfg.fall.clone(),
            ignore_empty_service: cfg.ignore_empty_service,
            zonal: cfg.zonal,
            multicluster: multicluster::Multicluster::new(
                &cfg.multicluster,
                watched.as_ref().and_then(|w| w.multicluster().cloned()),
                &store,
            ),
            store,
            watched,
            local: LocalIps {
                bound,
                known: OnceLock::new(),
            },
            config: Arc::new(cfg.clone()),
        }
    }

    /// The store the watch side feeds.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The configuration it was built from (what the watch side connects with).
    pub fn config(&self) -> &Arc<KubernetesConfig> {
        &self.config
    }

    /// The multicluster store (with `multicluster`), which its watches feed.
    pub fn multicluster_store(&self) -> Option<&Arc<McStore>> {
        self.multicluster.as_ref().map(|m| &m.store)
    }

    /// What reports this plugin's readiness to `ready` and `/readyz`: not
    /// ready until the store's first full sync.
    pub fn readiness(&self) -> Arc<dyn Readiness> {
        Arc::new(Synced(
            Arc::clone(&self.store),
            self.multicluster_store().cloned(),
        ))
    }

    /// Whether every watch finished its first list (CoreDNS's `HasSynced`).
    fn synced(&self) -> bool {
        self.store.synced() && self.multicluster_store().is_none_or(|m| m.synced())
    }

    /// Fixes the server's own addresses (tests; otherwise they come from
    /// where the block is bound).
    #[cfg(test)]
    fn set_local_ips(&self, ips: &[IpAddr]) {
        let _ = self.local.known.set(ips.into());
    }

    fn local_ips(&self) -> std::borrow::Cow<'_, [IpAddr]> {
        self.local.get()
    }

    /// Answers `req` into `buf`: the whole decision of the `query` step.
    /// With `ask_upstream` false, an ExternalName target outside the zones
    /// counts as a failed lookup (CoreDNS drops the CNAME).
    fn answer(&self, buf: &mut Vec<u8>, req: &Request<'_>, ask_upstream: bool) -> Decision {
        let qname = req.qname_lower();
        let Some(zone) = zones::matches(&self.zones, qname) else {
            return Decision::Next;
        };
        let q = QName::new(qname, zone.len());
        let spelled = req.qname_wire();
        let mut chase = Chase {
            zone_spelled_lower: spelled.get(spelled.len() - zone.len()..) == Some(zone),
            no_upstream: !ask_upstream,
            ..Chase::default()
        };
        let mut w = Wire::start(buf, req, zone.len());
        let outcome = self.resolve(&mut w, &q, req.qtype(), &mut chase);
        match outcome {
            Outcome::Refused => {
                buf.clear();
                Decision::Refused
            }
            Outcome::NameError => {
                if self.fall.through(qname) {
                    buf.clear();
                    return Decision::Next;
                }
                w.clear_records();
                self.soa(&mut w, Section::Authority);
                // Before the first sync a missing name may just not be
                // known yet: SERVFAIL, as CoreDNS.
                let rcode = if self.synced() {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::ServFail
                };
                w.finish(req, rcode.low());
                Decision::Reply
            }
            Outcome::Written => {
                if w.answers() == 0 {
                    w.clear_records();
                    self.soa(&mut w, Section::Authority);
                }
                w.finish(req, 0);
                match chase.upstream {
                    Some(target) => Decision::Upstream(target),
                    None => Decision::Reply,
                }
            }
        }
    }

    /// The network step: the CNAME chain to a target outside the zones,
    /// then the whole server asked for the target.
    async fn exchange_cname(&self, cx: &mut Context<'_>) -> Flow {
        let req = cx.req;
        let mut buf = Vec::with_capacity(512);
        let target = match self.answer(&mut buf, req, true) {
            Decision::Upstream(t) => t,
            // The store changed since the query step: answer as it is now.
            other => return self.deliver(cx, other, buf),
        };
        let query = target_query(req, &target, req.qtype());
        let (tx, rx) = tokio::sync::oneshot::channel();
        cx.next.spawn_server(
            query,
            req.client(),
            req.transport(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let rerun = match tokio::time::timeout(UPSTREAM_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            _ => Rerun::NotRun,
        };
        match rerun {
            Rerun::Reply(bytes) => match (Message::from_vec(&buf), Message::from_vec(&bytes)) {
                (Ok(mut m), Ok(up)) => {
                    m.metadata.truncation |= up.metadata.truncation;
                    m.answers.extend(up.answers);
                    cx.answer(m)
                }
                // An upstream reply that does not parse: as a failed lookup
                // that still gave a message, the CNAMEs alone.
                _ => self.deliver(cx, Decision::Reply, buf),
            },
            // The chain failed (SERVFAIL): CoreDNS's lookup still returns a
            // message, so the CNAMEs stand alone.
            Rerun::Failed => self.deliver(cx, Decision::Reply, buf),
            // No lookup at all: CoreDNS drops the CNAME (NODATA).
            Rerun::NotRun => {
                let d = self.answer(&mut buf, req, false);
                self.deliver(cx, d, buf)
            }
        }
    }

    fn deliver(&self, cx: &mut Context<'_>, d: Decision, buf: Vec<u8>) -> Flow {
        match d {
            Decision::Next => Flow::Next,
            Decision::Refused => Flow::Fail(ResponseCode::Refused, None),
            Decision::Reply | Decision::Upstream(_) => {
                cx.reply.set_wire_vec(buf);
                Flow::Answered
            }
        }
    }
}

/// What the query step decided.
#[derive(Debug)]
enum Decision {
    /// Not ours (outside the zones, or fallthrough).
    Next,
    /// REFUSED (zone transfers).
    Refused,
    /// The reply is in the buffer.
    Reply,
    /// The buffer holds the CNAMEs; the target (wire form) needs the rest
    /// of the chain.
    Upstream(Vec<u8>),
}

/// A query for `target` as CoreDNS's `state.NewWithQuestion` makes it: the
/// client's flags and EDNS, another question.
fn target_query(req: &Request<'_>, target: &[u8], qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(12 + target.len() + 4 + 11);
    q.extend_from_slice(&req.id().to_be_bytes());
    q.extend_from_slice(&(req.header().flags & 0x0110).to_be_bytes());
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(target);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&reply::rtype::IN.to_be_bytes());
    if let Some(e) = req.edns() {
        crate::pkg::wire::push_opt(&mut q, e.udp_size, e.dnssec_ok);
    }
    q
}

impl Plugin for Kubernetes {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn query(&self, cx: &mut Context<'_>) -> Flow {
        let req = cx.req;
        match self.answer(cx.reply.wire_buf(), req, true) {
            Decision::Next => Flow::Next,
            Decision::Refused => Flow::Fail(ResponseCode::Refused, None),
            Decision::Reply => {
                cx.reply.mark_wire();
                Flow::Answered
            }
            Decision::Upstream(_) => {
                cx.reply.wire_buf().clear();
                Flow::Upstream
            }
        }
    }

    fn upstream(&self) -> Option<&dyn Upstream> {
        Some(self)
    }
}

impl Upstream for Kubernetes {
    fn exchange<'a>(&'a self, cx: &'a mut Context<'_>) -> UpstreamFuture<'a> {
        Box::pin(self.exchange_cname(cx))
    }
}
