//! The DNS-shaped view of the cluster that queries read: services (kind,
//! cluster IPs or external name, ports) with their EndpointSlices (ready
//! addresses, hostnames, ports), indexes from IPs back to services and
//! slices (PTR, `ns.dns`), pods' IPs by namespace (`pods verified`) and
//! the namespaces that exist. Nothing else of the API objects is kept.
//!
//! # Reading
//!
//! Every map is split into [`SHARDS`] shards, each an `ArcSwap` of an
//! immutable hash map. A query picks the shard by the key's hash and reads
//! it through an `arc_swap` guard: no lock, no reference count touched, no
//! allocation. Reads of different maps are not one snapshot (CoreDNS's
//! informer caches are not either): each object is seen whole, before or
//! after a change.
//!
//! # Writing
//!
//! One writer at a time (the watch task) takes a [`Batch`], applies events
//! to it, and drops it. A batch stages copies of the shards it touches and
//! publishes them when dropped, so a burst of events costs one shard copy
//! per touched shard, not one per event. While a relist is running
//! ([`Batch::begin_resync`] .. [`Batch::finish_resync`]) staged shards are
//! published only every [`PUBLISH_EVERY`] changes and at the end: an
//! initial list of 50,000 objects copies each shard a handful of times.
//! A relist ends by deleting what it did not mention (objects deleted while
//! the watch was down), so no update is lost across a `410 Gone`.
//!
//! The store is ready ([`Store::synced`]) once every kind it needs has
//! finished its first list: services always, EndpointSlices unless
//! `noendpoints`, pods only for `pods verified`, namespaces always (CoreDNS
//! answers NXDOMAIN for a namespace that does not exist).
//!
//! What it refuses, silently (such objects cannot be named in DNS):
//! names that are not 1 to 63 bytes, addresses that are not IP addresses
//! (FQDN EndpointSlices), slices without the `kubernetes.io/service-name`
//! label, and ExternalName targets that are not valid domain names. IPv4
//! addresses written as IPv6 (`::ffff:a.b.c.d`) count as IPv4, as Go's
//! `net.IP` treats them.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use smallvec::SmallVec;

use crate::request::name_to_wire;

/// Shards per map: a change copies one shard, about 1/64 of the map.
pub(crate) const SHARDS: usize = 64;
/// During a relist, staged shards are published after this many changes.
pub(crate) const PUBLISH_EVERY: usize = 4096;
/// The longest DNS label.
const MAX_LABEL: usize = 63;

pub(crate) type Hasher = foldhash::fast::RandomState;
pub(crate) type Map<K, V> = HashMap<K, V, Hasher>;

// === Input: what the watch side hands over ===

/// The kinds of object the store is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// core/v1 Service.
    Services,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlices,
    /// core/v1 Pod.
    Pods,
    /// core/v1 Namespace.
    Namespaces,
}

impl Kind {
    const ALL: [Self; 4] = [
        Self::Services,
        Self::EndpointSlices,
        Self::Pods,
        Self::Namespaces,
    ];
    fn bit(self) -> u8 {
        match self {
            Self::Services => 1,
            Self::EndpointSlices => 2,
            Self::Pods => 4,
            Self::Namespaces => 8,
        }
    }
    fn index(self) -> usize {
        match self {
            Self::Services => 0,
            Self::EndpointSlices => 1,
            Self::Pods => 2,
            Self::Namespaces => 3,
        }
    }
}

/// A Service, reduced to what DNS answers from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecord {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// How it resolves.
    pub kind: ServiceKind,
    /// `spec.ports`.
    pub ports: Vec<PortRecord>,
}

/// How a service resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceKind {
    /// A virtual IP per family (`spec.clusterIPs`).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the ready endpoints answer.
    Headless,
    /// `type: ExternalName`: a CNAME to `spec.externalName`.
    ExternalName(String),
}

impl ServiceKind {
    /// Reads a Service spec as CoreDNS's `object.ToService` does: the type
    /// `ExternalName` wins; otherwise `clusterIPs` (or `clusterIP` when
    /// that list is empty) decide, headless when the first is `None`.
    /// Addresses that do not parse are dropped.
    pub fn from_spec(
        service_type: Option<&str>,
        cluster_ips: &[String],
        cluster_ip: Option<&str>,
        external_name: Option<&str>,
    ) -> Self {
        if service_type == Some("ExternalName") {
            return Self::ExternalName(external_name.unwrap_or_default().to_string());
        }
        let first = cluster_ips
            .first()
            .map(String::as_str)
            .or(cluster_ip)
            .unwrap_or_default();
        if first == "None" {
            return Self::Headless;
        }
        let ips = if cluster_ips.is_empty() {
            cluster_ip.into_iter().filter_map(parse_ip).collect()
        } else {
            cluster_ips.iter().filter_map(|s| parse_ip(s)).collect()
        };
        Self::ClusterIp(ips)
    }
}

/// An IP address as Go's `net.ParseIP` reads it (an IPv4-mapped IPv6
/// address is IPv4).
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// A service or EndpointSlice port.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortRecord {
    /// `name` (empty when unnamed).
    pub name: Option<String>,
    /// `protocol`: `TCP`, `UDP`, `SCTP`.
    pub protocol: Option<String>,
    /// `port`; `None` for an EndpointSlice port without a number.
    pub port: Option<i32>,
}

/// An EndpointSlice, reduced to what DNS answers from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRecord {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service: Option<String>,
    /// `ports`.
    pub ports: Vec<PortRecord>,
    /// `endpoints`.
    pub endpoints: Vec<EndpointRecord>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointRecord {
    /// `addresses` (parsed; entries that are not IPs are left out by the caller
    /// or ignored here).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`; `None` (unknown) counts as ready, per the API docs.
    pub ready: Option<bool>,
    /// `hostname`.
    pub hostname: Option<String>,
    /// `targetRef.name` (the pod's name), for `endpoint_pod_names`.
    pub target_name: Option<String>,
    /// `zone` (the topology zone), for `zonal`.
    pub zone: Option<String>,
}

/// A pod, reduced to its IP (for `pods verified`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `status.podIP`.
    pub ip: Option<IpAddr>,
    /// `metadata.deletionTimestamp` is set: CoreDNS ignores the update and
    /// keeps what it had until the delete.
    pub terminating: bool,
}

/// What the store keeps, set from the plugin's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// EndpointSlices are watched (not `noendpoints`).
    pub endpoints: bool,
    /// Pods are watched (`pods verified`).
    pub pods: bool,
    /// Endpoints without a hostname are named after their pod
    /// (`endpoint_pod_names`).
    pub endpoint_pod_names: bool,
    /// Endpoints keep their topology zone (`zonal`).
    pub zones: bool,
}

/// How much the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Services.
    pub services: usize,
    /// EndpointSlices.
    pub slices: usize,
    /// Ready endpoint addresses across slices.
    pub endpoints: usize,
    /// Pods with an IP.
    pub pods: usize,
    /// Namespaces.
    pub namespaces: usize,
}

// === What queries read ===

/// A port, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Port {
    pub(crate) name: Box<[u8]>,
    pub(crate) protocol: Proto,
    /// -1: CoreDNS's sentinel for "no port" (counted in SRV weights, never answered).
    pub(crate) port: i32,
}

/// A port's protocol, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Proto {
    None,
    Tcp,
    Udp,
    Sctp,
    Other(Box<[u8]>),
}

impl Proto {
    fn read(s: Option<&str>) -> Self {
        let Some(s) = s else { return Self::None };
        match s.to_ascii_lowercase().as_str() {
            "" => Self::None,
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "sctp" => Self::Sctp,
            other => Self::Other(other.as_bytes().into()),
        }
    }
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Self::None => b"",
            Self::Tcp => b"tcp",
            Self::Udp => b"udp",
            Self::Sctp => b"sctp",
            Self::Other(b) => b,
        }
    }
}

pub(crate) fn read_ports(ports: &[PortRecord]) -> Box<[Port]> {
    if ports.is_empty() {
        // CoreDNS's sentinel: a service or slice without ports still answers A.
        return Box::new([Port {
            name: Box::default(),
            protocol: Proto::None,
            port: -1,
        }]);
    }
    ports
        .iter()
        .map(|p| Port {
            name: p
                .name
                .as_deref()
                .unwrap_or_default()
                .to_ascii_lowercase()
                .into_bytes()
                .into(),
            protocol: Proto::read(p.protocol.as_deref()),
            port: p.port.unwrap_or(-1),
        })
        .collect()
}

/// A service's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Service {
    pub(crate) kind: Resolves,
    pub(crate) ports: Box<[Port]>,
}

/// How a stored service resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolves {
    ClusterIp(Box<[IpAddr]>),
    Headless,
    /// An ExternalName whose target is a domain name.
    External(Target),
    /// An ExternalName whose target is empty, an IP address or not a
    /// name: CoreDNS never answers it.
    Unanswerable,
}

/// An ExternalName target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Wire form, as written in the spec (case kept).
    pub(crate) wire: Box<[u8]>,
    /// Wire form, lower-cased.
    pub(crate) lower: Box<[u8]>,
}

impl Target {
    fn read(name: &str) -> Option<Self> {
        if name.is_empty() || parse_ip(name.trim_end_matches('.')).is_some() {
            return None;
        }
        let lower = name_to_wire(name)?;
        let wire = spelled_wire(name)?;
        (wire.len() == lower.len()).then(|| Self {
            wire: wire.into(),
            lower: lower.into(),
        })
    }
}

/// A name in wire form, keeping its letter case.
fn spelled_wire(name: &str) -> Option<Vec<u8>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut out = Vec::with_capacity(name.len() + 2);
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > MAX_LABEL {
                return None;
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

/// One ready address of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) ip: IpAddr,
    /// Its DNS label: the hostname, else (with `endpoint_pod_names`) the
    /// pod's name; `None`: the dashed IP.
    pub(crate) name: Option<Box<[u8]>>,
    /// Where its label is in its slice's `labels` (see [`Slice::label`]).
    label_at: u32,
    /// Its topology zone: 0 none, else `zones[zone - 1]` of its slice (see
    /// [`Slice::zone`]). Fits in the padding after `label_at`.
    zone: u16,
}

impl Endpoint {
    /// An endpoint of a slice that keeps no labels in wire form (a
    /// multicluster import's).
    pub(crate) fn unlabelled(ip: IpAddr, name: Option<Box<[u8]>>) -> Self {
        Self {
            ip,
            name,
            label_at: 0,
            zone: 0,
        }
    }
}

/// An EndpointSlice's data.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Slice {
    pub(crate) name: Box<str>,
    /// `"service.namespace"`, the key of its service.
    pub(crate) service_key: Arc<[u8]>,
    pub(crate) ports: Box<[Port]>,
    pub(crate) endpoints: Box<[Endpoint]>,
    /// Each endpoint's label in wire form (length, then the name or the
    /// dashed address), made once here so an SRV answer copies it.
    labels: Box<[u8]>,
    /// The distinct topology zones of its endpoints (kept with `zonal`
    /// only), each lower-cased in wire form without the root label:
    /// `us-west-2a` is `\x0aus-west-2a`, so a zonal name's zone labels
    /// compare as they are.
    zones: Box<[Box<[u8]>]>,
}

impl Slice {
    /// The label of `ep` (one of this slice's endpoints) in wire form.
    pub(crate) fn label(&self, ep: &Endpoint) -> &[u8] {
        let at = ep.label_at as usize;
        let len = self.labels.get(at).map_or(0, |l| usize::from(*l));
        self.labels.get(at..at + 1 + len).unwrap_or_default()
    }

    /// The topology zone of `ep` (one of this slice's endpoints): lower
    /// case, wire form without the root label; `None` when it has none
    /// (or the store keeps none).
    pub(crate) fn zone(&self, ep: &Endpoint) -> Option<&[u8]> {
        let i = usize::from(ep.zone).checked_sub(1)?;
        self.zones.get(i).map(|z| &**z)
    }
}

/// An endpoint's `zone` as [`Slice::zones`] keeps it: lower-cased wire
/// form. `None` for a zone no query name can select, as in CoreDNS, which
/// compares the zone with the name as text: an empty one, one with an
/// empty label or a label over 63 bytes, or one with a byte the name's
/// text form would escape.
fn zone_wire(zone: &str) -> Option<Box<[u8]>> {
    let mut out = Vec::with_capacity(zone.len() + 1);
    for label in zone.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"'@;()\"\\".contains(&b));
        if !ok {
            return None;
        }
        out.push(label.len() as u8);
        out.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    Some(out.into())
}

/// A service and its slices (either may be missing: a slice can come
/// before its service).
#[derive(Debug, Clone)]
pub(crate) struct SvcEntry {
    /// `"name.namespace"`.
    key: Arc<[u8]>,
    name_len: usize,
    pub(crate) service: Option<Service>,
    /// Sorted by slice name.
    pub(crate) slices: SmallVec<[Arc<Slice>; 1]>,
    /// No two endpoints across `slices` have the same label (name, or
    /// address when unnamed): each is its own SRV target, so an answer
    /// needs no check for repeated targets.
    pub(crate) distinct: bool,
    /// Whether its namespace exists, shared by every entry of the
    /// namespace and set by the namespace watch: a query that found the
    /// entry needs no second lookup for the namespace.
    ns_exists: Arc<AtomicBool>,
}

impl SvcEntry {
    /// Sets `distinct` from the slices.
    fn check_distinct(&mut self) {
        let labels = || {
            self.slices
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .map(|ep| ep.name.as_deref().ok_or(ep.ip))
        };
        let n: usize = self.slices.iter().map(|s| s.endpoints.len()).sum();
        self.distinct = if n <= 16 {
            let mut seen: SmallVec<[Result<&[u8], IpAddr>; 16]> = SmallVec::new();
            labels().all(|l| {
                let new = !seen.contains(&l);
                seen.push(l);
                new
            })
        } else {
            let mut seen = HashSet::with_capacity_and_hasher(n, Hasher::default());
            labels().all(|l| seen.insert(l))
        };
    }

    pub(crate) fn name(&self) -> &[u8] {
        &self.key[..self.name_len]
    }
    /// Whether its namespace exists (as [`Store::namespace_exists`]).
    pub(crate) fn namespace_exists(&self) -> bool {
        self.ns_exists.load(Ordering::Acquire)
    }
    pub(crate) fn namespace(&self) -> &[u8] {
        self.key.get(self.name_len + 1..).unwrap_or_default()
    }
}

/// The key of a service: `"name.namespace"`, lower-cased, or `None` when
/// either is not a DNS label.
pub(crate) fn service_key(name: &str, namespace: &str) -> Option<(Arc<[u8]>, usize)> {
    if !is_label(name) || !is_label(namespace) {
        return None;
    }
    let mut k = Vec::with_capacity(name.len() + 1 + namespace.len());
    k.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
    k.push(b'.');
    k.extend(namespace.bytes().map(|b| b.to_ascii_lowercase()));
    Some((k.into(), name.len()))
}

/// Writes the key of `name` in `namespace` (both lower-cased labels) into
/// `buf`, for a lookup without allocating.
pub(crate) fn key_into<'b>(buf: &'b mut [u8; 128], name: &[u8], namespace: &[u8]) -> &'b [u8] {
    let n = name.len().min(MAX_LABEL);
    let s = namespace.len().min(MAX_LABEL);
    buf[..n].copy_from_slice(&name[..n]);
    buf[n] = b'.';
    buf[n + 1..n + 1 + s].copy_from_slice(&namespace[..s]);
    &buf[..n + 1 + s]
}

fn is_label(s: &str) -> bool {
    (1..=MAX_LABEL).contains(&s.len()) && !s.contains('.')
}

pub(crate) fn label_bytes(s: &str) -> Option<Box<[u8]>> {
    is_label(s).then(|| s.to_ascii_lowercase().into_bytes().into())
}

// === Sharded maps ===

pub(crate) struct Sharded<K, V> {
    pub(crate) shards: Box<[ArcSwap<Map<K, V>>]>,
    pick: Hasher,
}

impl<K: Hash + Eq + Clone, V: Clone> Sharded<K, V> {
    pub(crate) fn new() -> Self {
        let map_hasher = Hasher::default();
        Self {
            shards: (0..SHARDS)
                .map(|_| ArcSwap::from_pointee(Map::with_hasher(map_hasher.clone())))
                .collect(),
            pick: Hasher::default(),
        }
    }

    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        // The top bits: the map inside uses the low ones.
        (self.pick.hash_one(key) >> 58) as usize % SHARDS
    }

    /// Reads `key` under a guard (no lock, no allocation).
    pub(crate) fn with<Q, R>(&self, key: &Q, f: impl FnOnce(Option<&V>) -> R) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shards[self.shard_of(key)].load();
        f(shard.get(key))
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.load().len()).sum()
    }
}

/// A sharded map's copies being edited by the writer.
pub(crate) struct Staged<K, V> {
    maps: Vec<Option<Map<K, V>>>,
}

impl<K, V> Default for Staged<K, V> {
    fn default() -> Self {
        Self {
            maps: (0..SHARDS).map(|_| None).collect(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Staged<K, V> {
    /// The writer's copy of the shard holding `key` (made on first use).
    pub(crate) fn shard<'a, Q: Hash + ?Sized>(
        &'a mut self,
        m: &Sharded<K, V>,
        key: &Q,
    ) -> &'a mut Map<K, V> {
        let i = m.shard_of(key);
        self.maps[i].get_or_insert_with(|| (**m.shards[i].load()).clone())
    }

    /// What the writer sees for `key`: its copy if it made one, else the
    /// published shard.
    pub(crate) fn get<Q, R>(&self, m: &Sharded<K, V>, key: &Q, f: impl FnOnce(Option<&V>) -> R) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = m.shard_of(key);
        match &self.maps[i] {
            Some(map) => f(map.get(key)),
            None => f(m.shards[i].load().get(key)),
        }
    }

    /// Every key, as the writer sees them.
    pub(crate) fn keys(&self, m: &Sharded<K, V>) -> Vec<K> {
        let mut out = Vec::new();
        for (i, staged) in self.maps.iter().enumerate() {
            match staged {
                Some(map) => out.extend(map.keys().cloned()),
                None => out.extend(m.shards[i].load().keys().cloned()),
            }
        }
        out
    }

    pub(crate) fn publish(&mut self, m: &Sharded<K, V>) {
        for (i, staged) in self.maps.iter_mut().enumerate() {
            if let Some(map) = staged.take() {
                m.shards[i].store(Arc::new(map));
            }
        }
    }
}

// === The store ===

/// The DNS-shaped view of the cluster. See the module docs.
pub struct Store {
    opts: StoreOptions,
    services: Sharded<Arc<[u8]>, Arc<SvcEntry>>,
    cluster_ips: Sharded<IpAddr, SmallVec<[Arc<[u8]>; 1]>>,
    endpoint_ips: Sharded<IpAddr, SmallVec<[Arc<Slice>; 1]>>,
    pods: Sharded<IpAddr, SmallVec<[Arc<[u8]>; 1]>>,
    namespaces: Sharded<Arc<[u8]>, ()>,
    /// The SOA serial: Unix seconds of the last change (0 before any).
    serial: AtomicU32,
    synced: AtomicBool,
    writer: Mutex<Writer>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("opts", &self.opts)
            .field("synced", &self.synced())
            .field("serial", &self.serial())
            .finish()
    }
}

/// The writer's own state: what it needs to undo an object's old version.
#[derive(Default)]
struct Writer {
    services: Staged<Arc<[u8]>, Arc<SvcEntry>>,
    cluster_ips: Staged<IpAddr, SmallVec<[Arc<[u8]>; 1]>>,
    endpoint_ips: Staged<IpAddr, SmallVec<[Arc<Slice>; 1]>>,
    pods: Staged<IpAddr, SmallVec<[Arc<[u8]>; 1]>>,
    namespaces: Staged<Arc<[u8]>, ()>,
    /// Slices by `"namespace/name"`.
    slices: HashMap<Box<str>, Arc<Slice>, Hasher>,
    /// The existence flag of each namespace that has service entries or
    /// exists (see [`SvcEntry::namespace_exists`]).
    ns_flags: HashMap<Box<[u8]>, Arc<AtomicBool>, Hasher>,
    /// Pod IPs by `"namespace/name"`, with the interned namespace.
    pod_ips: HashMap<Box<str>, (IpAddr, Arc<[u8]>), Hasher>,
    /// Keys seen since each kind's relist began (`None`: not relisting).
    resync: [Option<HashSet<Box<[u8]>, Hasher>>; 4],
    /// Kinds whose first list finished.
    listed: u8,
    /// Changes staged since the last publish.
    unpublished: usize,
    /// Whether the staged changes change any answer (bump the serial).
    changed: bool,
}

impl Store {
    /// An empty store, not synced.
    pub fn new(opts: StoreOptions) -> Arc<Self> {
        Arc::new(Self {
            opts,
            services: Sharded::new(),
            cluster_ips: Sharded::new(),
            endpoint_ips: Sharded::new(),
            pods: Sharded::new(),
            namespaces: Sharded::new(),
            serial: AtomicU32::new(0),
            synced: AtomicBool::new(false),
            writer: Mutex::new(Writer::default()),
        })
    }

    /// What it keeps.
    pub fn options(&self) -> StoreOptions {
        self.opts
    }

    /// The kinds that must finish a first list before the store is synced.
    pub fn required(&self) -> Vec<Kind> {
        Kind::ALL.into_iter().filter(|k| self.needs(*k)).collect()
    }

    fn needs(&self, kind: Kind) -> bool {
        match kind {
            Kind::Services | Kind::Namespaces => true,
            Kind::EndpointSlices => self.opts.endpoints,
            Kind::Pods => self.opts.pods,
        }
    }

    /// Starts a batch of changes; they are published when it is dropped.
    /// Do not hold it across an `.await`.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            w: self.writer.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Whether every kind it needs has been listed once.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The SOA serial: Unix seconds of the last change that altered an
    /// answer (CoreDNS's `Modified`), 0 before any.
    pub fn serial(&self) -> u32 {
        self.serial.load(Ordering::Relaxed)
    }

    /// Bumps the SOA serial to now: a change made elsewhere that CoreDNS
    /// counts as one of this store's (a multicluster object added or
    /// deleted).
    pub(crate) fn touch_serial(&self) {
        let now = u32::try_from(crate::pkg::clock::unix_secs()).unwrap_or(u32::MAX);
        self.serial.store(now.max(1), Ordering::Relaxed);
    }

    /// Counts of what it holds (walks every shard: not for the query path).
    pub fn stats(&self) -> StoreStats {
        let mut slices = 0;
        let mut endpoints = 0;
        for shard in self.services.shards.iter() {
            for e in shard.load().values() {
                slices += e.slices.len();
                endpoints += e.slices.iter().map(|s| s.endpoints.len()).sum::<usize>();
            }
        }
        let services = self
            .services
            .shards
            .iter()
            .map(|s| s.load().values().filter(|e| e.service.is_some()).count())
            .sum();
        let pods = self
            .pods
            .shards
            .iter()
            .map(|s| s.load().values().map(SmallVec::len).sum::<usize>())
            .sum();
        StoreStats {
            services,
            slices,
            endpoints,
            pods,
            namespaces: self.namespaces.len(),
        }
    }

    /// How many namespace existence flags the writer keeps (tests).
    #[cfg(test)]
    pub(crate) fn namespace_flags(&self) -> usize {
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ns_flags
            .len()
    }

    // === Reads for the query path ===

    /// Whether `namespace` (lower-cased) exists.
    pub(crate) fn namespace_exists(&self, namespace: &[u8]) -> bool {
        self.namespaces.with(namespace, |v| v.is_some())
    }

    /// The service keyed `"name.namespace"`.
    pub(crate) fn with_service<R>(&self, key: &[u8], f: impl FnOnce(Option<&SvcEntry>) -> R) -> R {
        self.services.with(key, |v| f(v.map(|e| &**e)))
    }

    /// Keys of the services whose cluster IPs include `ip`.
    pub(crate) fn with_cluster_ip<R>(&self, ip: IpAddr, f: impl FnOnce(&[Arc<[u8]>]) -> R) -> R {
        self.cluster_ips
            .with(&ip, |v| f(v.map_or(&[][..], SmallVec::as_slice)))
    }

    /// Slices with a ready endpoint at `ip`.
    pub(crate) fn with_endpoint_ip<R>(&self, ip: IpAddr, f: impl FnOnce(&[Arc<Slice>]) -> R) -> R {
        self.endpoint_ips
            .with(&ip, |v| f(v.map_or(&[][..], SmallVec::as_slice)))
    }

    /// Whether a pod in `namespace` (lower-cased) has `ip`.
    pub(crate) fn pod_in_namespace(&self, ip: IpAddr, namespace: &[u8]) -> bool {
        self.pods.with(&ip, |v| {
            v.is_some_and(|list| list.iter().any(|ns| &**ns == namespace))
        })
    }
}

/// Changes to the store, published when dropped (see the module docs).
pub struct Batch<'s> {
    store: &'s Store,
    w: MutexGuard<'s, Writer>,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("unpublished", &self.w.unpublished)
            .finish()
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let relisting = self.w.resync.iter().any(Option::is_some);
        if !relisting || self.w.unpublished >= PUBLISH_EVERY {
            self.publish();
        }
    }
}

impl Batch<'_> {
    fn publish(&mut self) {
        let s = self.store;
        let w = &mut *self.w;
        w.services.publish(&s.services);
        w.cluster_ips.publish(&s.cluster_ips);
        w.endpoint_ips.publish(&s.endpoint_ips);
        w.pods.publish(&s.pods);
        w.namespaces.publish(&s.namespaces);
        w.unpublished = 0;
        if std::mem::take(&mut w.changed) {
            let now = u32::try_from(crate::pkg::clock::unix_secs()).unwrap_or(u32::MAX);
            s.serial.store(now.max(1), Ordering::Relaxed);
        }
    }

    /// The existence flag of `namespace` (lower-cased), made on first use
    /// from whether it exists now.
    fn ns_flag(&mut self, namespace: &[u8]) -> Arc<AtomicBool> {
        if let Some(f) = self.w.ns_flags.get(namespace) {
            return Arc::clone(f);
        }
        let s = self.store;
        let exists = self
            .w
            .namespaces
            .get(&s.namespaces, namespace, |v| v.is_some());
        let f = Arc::new(AtomicBool::new(exists));
        self.w.ns_flags.insert(namespace.into(), Arc::clone(&f));
        f
    }

    /// Clears the existence flag of a namespace that is gone, and forgets
    /// the flags of gone namespaces that no entry shares any more (so
    /// namespaces made and deleted by the thousand leave nothing behind).
    fn set_ns_flag(&mut self, namespace: &[u8], exists: bool) {
        if let Some(f) = self.w.ns_flags.get(namespace) {
            f.store(exists, Ordering::Release);
        }
        if !exists {
            self.w
                .ns_flags
                .retain(|_, f| f.load(Ordering::Relaxed) || Arc::strong_count(f) > 1);
        }
    }

    fn touched(&mut self, changed: bool) {
        self.w.unpublished += 1;
        self.w.changed |= changed;
    }

    fn seen(&mut self, kind: Kind, key: &[u8]) {
        if let Some(set) = &mut self.w.resync[kind.index()] {
            set.insert(key.into());
        }
    }

    /// Whether the service `name` in `namespace` is headless, as the
    /// writer sees it; `None` when the store has no such service.
    pub fn service_headless(&self, namespace: &str, name: &str) -> Option<bool> {
        let (key, _) = service_key(name, namespace)?;
        self.w.services.get(&self.store.services, &*key, |e| {
            e.and_then(|e| e.service.as_ref())
                .map(|s| s.kind == Resolves::Headless)
        })
    }

    // === Relists ===

    /// A list of every object of `kind` begins (the watch started or
    /// restarted, e.g. after `410 Gone`): what [`Batch::finish_resync`]
    /// has not seen applied by then is deleted.
    pub fn begin_resync(&mut self, kind: Kind) {
        self.w.resync[kind.index()] = Some(HashSet::with_hasher(Hasher::default()));
    }

    /// The list of `kind` is complete: deletes the objects it did not
    /// mention, publishes, and marks `kind` listed (the store is synced
    /// when every kind it needs is). Without a matching begin, only marks.
    pub fn finish_resync(&mut self, kind: Kind) {
        if let Some(seen) = self.w.resync[kind.index()].take() {
            match kind {
                Kind::Services => {
                    let keys = self.w.services.keys(&self.store.services);
                    for key in keys {
                        let has = self.w.services.get(&self.store.services, &key, |e| {
                            e.is_some_and(|e| e.service.is_some())
                        });
                        if has && !seen.contains(&*key) {
                            self.remove_service(&key);
                        }
                    }
                }
                Kind::EndpointSlices => {
                    let gone: Vec<Box<str>> = self
                        .w
                        .slices
                        .keys()
                        .filter(|k| !seen.contains(k.as_bytes()))
                        .cloned()
                        .collect();
                    for k in gone {
                        self.remove_slice(&k);
                    }
                }
                Kind::Pods => {
                    let gone: Vec<Box<str>> = self
                        .w
                        .pod_ips
                        .keys()
                        .filter(|k| !seen.contains(k.as_bytes()))
                        .cloned()
                        .collect();
                    for k in gone {
                        self.remove_pod(&k);
                    }
                }
                Kind::Namespaces => {
                    let keys = self.w.namespaces.keys(&self.store.namespaces);
                    for key in keys {
                        if !seen.contains(&*key) {
                            self.w
                                .namespaces
                                .shard(&self.store.namespaces, &*key)
                                .remove(&*key);
                            self.set_ns_flag(&key, false);
                            self.touched(false);
                        }
                    }
                }
            }
        }
        self.w.listed |= kind.bit();
        let s = self.store;
        let all = s.required().iter().all(|k| self.w.listed & k.bit() != 0);
        // Publish before flipping: readiness says the answers are there.
        self.publish();
        if all {
            s.synced.store(true, Ordering::Release);
        }
    }

    // === Services ===

    /// Adds or replaces a service.
    pub fn apply_service(&mut self, svc: ServiceRecord) {
        let Some((key, name_len)) = service_key(&svc.name, &svc.namespace) else {
            return;
        };
        self.seen(Kind::Services, &key);
        let kind = match &svc.kind {
            ServiceKind::ClusterIp(ips) => {
                let mut v: Vec<IpAddr> = ips.iter().map(|ip| ip.to_canonical()).collect();
                v.dedup();
                Resolves::ClusterIp(v.into())
            }
            ServiceKind::Headless => Resolves::Headless,
            ServiceKind::ExternalName(t) => {
                Target::read(t).map_or(Resolves::Unanswerable, Resolves::External)
            }
        };
        let new = Service {
            kind,
            ports: read_ports(&svc.ports),
        };
        let s = self.store;
        let old = self.w.services.get(&s.services, &*key, |e| e.cloned());
        if old.as_ref().and_then(|e| e.service.as_ref()) == Some(&new) {
            return;
        }
        let old_ips = old
            .as_ref()
            .and_then(|e| e.service.as_ref())
            .map(cluster_ips)
            .unwrap_or_default();
        let new_ips = cluster_ips(&new);
        let ns_exists = match &old {
            Some(e) => Arc::clone(&e.ns_exists),
            None => self.ns_flag(key.get(name_len + 1..).unwrap_or_default()),
        };
        let entry = SvcEntry {
            key: Arc::clone(&key),
            name_len,
            ns_exists,
            service: Some(new),
            distinct: old.as_ref().is_none_or(|e| e.distinct),
            slices: old.map(|e| e.slices.clone()).unwrap_or_default(),
        };
        self.w
            .services
            .shard(&s.services, &*key)
            .insert(Arc::clone(&key), Arc::new(entry));
        self.reindex_cluster_ips(&key, &old_ips, &new_ips);
        self.touched(true);
    }

    /// Removes a service (its slices stay until they are deleted).
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        if let Some((key, _)) = service_key(name, namespace) {
            self.remove_service(&key);
        }
    }

    fn remove_service(&mut self, key: &Arc<[u8]>) {
        let s = self.store;
        let Some(old) = self.w.services.get(&s.services, &**key, |e| e.cloned()) else {
            return;
        };
        let Some(service) = &old.service else { return };
        let old_ips = cluster_ips(service);
        let shard = self.w.services.shard(&s.services, &**key);
        if old.slices.is_empty() {
            shard.remove(&**key);
        } else {
            let mut e = (*old).clone();
            e.service = None;
            shard.insert(Arc::clone(key), Arc::new(e));
        }
        self.reindex_cluster_ips(key, &old_ips, &[]);
        self.touched(true);
    }

    fn reindex_cluster_ips(&mut self, key: &Arc<[u8]>, old: &[IpAddr], new: &[IpAddr]) {
        let s = self.store;
        for ip in old.iter().filter(|ip| !new.contains(ip)) {
            let shard = self.w.cluster_ips.shard(&s.cluster_ips, ip);
            if let Some(list) = shard.get_mut(ip) {
                list.retain(|k| k != key);
                if list.is_empty() {
                    shard.remove(ip);
                }
            }
        }
        for ip in new.iter().filter(|ip| !old.contains(ip)) {
            self.w
                .cluster_ips
                .shard(&s.cluster_ips, ip)
                .entry(*ip)
                .or_default()
                .push(Arc::clone(key));
        }
    }

    // === EndpointSlices ===

    /// Adds or replaces an EndpointSlice (ignored with `noendpoints`).
    pub fn apply_slice(&mut self, rec: SliceRecord) {
        if !self.store.opts.endpoints {
            return;
        }
        let id: Box<str> = format!("{}/{}", rec.namespace, rec.name).into();
        self.seen(Kind::EndpointSlices, id.as_bytes());
        let Some((service_key, name_len)) = rec
            .service
            .as_deref()
            .and_then(|svc| service_key(svc, &rec.namespace))
        else {
            // Not nameable in DNS: drop what an earlier version had.
            self.remove_slice(&id);
            return;
        };
        let pod_names = self.store.opts.endpoint_pod_names;
        let keep_zones = self.store.opts.zones;
        let mut endpoints = Vec::new();
        let mut labels = Vec::new();
        let mut zones: Vec<Box<[u8]>> = Vec::new();
        for ep in &rec.endpoints {
            if ep.ready == Some(false) {
                continue;
            }
            let hostname = ep
                .hostname
                .as_deref()
                .filter(|h| !h.is_empty())
                .and_then(label_bytes);
            let name = hostname.or_else(|| {
                pod_names
                    .then_some(ep.target_name.as_deref())
                    .flatten()
                    .and_then(label_bytes)
            });
            // Its zone's place in `zones` (plus one; 0: none).
            let zone = match ep
                .zone
                .as_deref()
                .filter(|_| keep_zones)
                .and_then(zone_wire)
            {
                None => 0,
                Some(z) => match zones.iter().position(|x| *x == z) {
                    Some(i) => i + 1,
                    None if zones.len() < usize::from(u16::MAX) => {
                        zones.push(z);
                        zones.len()
                    }
                    None => 0,
                },
            } as u16;
            for ip in &ep.addresses {
                let ip = ip.to_canonical();
                let Ok(label_at) = u32::try_from(labels.len()) else {
                    continue;
                };
                match &name {
                    Some(n) => {
                        labels.push(n.len() as u8);
                        labels.extend_from_slice(n);
                    }
                    None => {
                        let mut d = super::reply::Dashed::default();
                        d.write(ip);
                        labels.push(d.as_bytes().len() as u8);
                        labels.extend_from_slice(d.as_bytes());
                    }
                }
                endpoints.push(Endpoint {
                    ip,
                    name: name.clone(),
                    label_at,
                    zone,
                });
            }
        }
        let slice = Arc::new(Slice {
            name: rec.name.as_str().into(),
            service_key: Arc::clone(&service_key),
            ports: read_ports(&rec.ports),
            endpoints: endpoints.into(),
            labels: labels.into(),
            zones: zones.into(),
        });
        if let Some(old) = self.w.slices.get(&id)
            && **old == *slice
        {
            return;
        }
        self.remove_slice(&id);
        // Into its service's entry, in name order.
        let s = self.store;
        let existing = self
            .w
            .services
            .get(&s.services, &*service_key, |e| e.map(|e| (**e).clone()));
        let mut entry = match existing {
            Some(e) => e,
            None => SvcEntry {
                key: Arc::clone(&service_key),
                name_len,
                service: None,
                slices: SmallVec::new(),
                distinct: true,
                ns_exists: self.ns_flag(service_key.get(name_len + 1..).unwrap_or_default()),
            },
        };
        let shard = self.w.services.shard(&s.services, &*service_key);
        let at = entry
            .slices
            .partition_point(|x| x.name.as_ref() < slice.name.as_ref());
        entry.slices.insert(at, Arc::clone(&slice));
        entry.check_distinct();
        shard.insert(Arc::clone(&service_key), Arc::new(entry));
        // Into the reverse index.
        let mut ips: SmallVec<[IpAddr; 8]> = slice.endpoints.iter().map(|e| e.ip).collect();
        ips.sort_unstable();
        ips.dedup();
        for ip in ips {
            self.w
                .endpoint_ips
                .shard(&s.endpoint_ips, &ip)
                .entry(ip)
                .or_default()
                .push(Arc::clone(&slice));
        }
        self.w.slices.insert(id, slice);
        self.touched(true);
    }

    /// Removes an EndpointSlice.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        let id = format!("{namespace}/{name}");
        self.remove_slice(&id);
    }

    fn remove_slice(&mut self, id: &str) {
        let Some(old) = self.w.slices.remove(id) else {
            return;
        };
        let s = self.store;
        let key = &old.service_key;
        let shard = self.w.services.shard(&s.services, &**key);
        if let Some(e) = shard.get(&**key) {
            let mut e = (**e).clone();
            e.slices.retain(|x| !Arc::ptr_eq(x, &old));
            e.check_distinct();
            if e.slices.is_empty() && e.service.is_none() {
                shard.remove(&**key);
            } else {
                shard.insert(Arc::clone(key), Arc::new(e));
            }
        }
        for ep in old.endpoints.iter() {
            let shard = self.w.endpoint_ips.shard(&s.endpoint_ips, &ep.ip);
            if let Some(list) = shard.get_mut(&ep.ip) {
                list.retain(|x| !Arc::ptr_eq(x, &old));
                if list.is_empty() {
                    shard.remove(&ep.ip);
                }
            }
        }
        self.touched(true);
    }

    // === Pods ===

    /// Adds or replaces a pod (ignored unless `pods verified`). A
    /// terminating pod's update is ignored, as CoreDNS does: what was
    /// stored stays until the delete.
    pub fn apply_pod(&mut self, pod: PodRecord) {
        if !self.store.opts.pods {
            return;
        }
        let id: Box<str> = format!("{}/{}", pod.namespace, pod.name).into();
        self.seen(Kind::Pods, id.as_bytes());
        if pod.terminating {
            return;
        }
        let Some(ns) = label_bytes(&pod.namespace) else {
            return;
        };
        let ip = pod.ip.map(|ip| ip.to_canonical());
        if let (Some((old_ip, _)), Some(ip)) = (self.w.pod_ips.get(&id), ip)
            && *old_ip == ip
        {
            return;
        }
        self.remove_pod(&id);
        let Some(ip) = ip else { return };
        let ns: Arc<[u8]> = Arc::from(ns);
        let s = self.store;
        self.w
            .pods
            .shard(&s.pods, &ip)
            .entry(ip)
            .or_default()
            .push(Arc::clone(&ns));
        self.w.pod_ips.insert(id, (ip, ns));
        self.touched(true);
    }

    /// Removes a pod.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) {
        let id = format!("{namespace}/{name}");
        self.remove_pod(&id);
    }

    fn remove_pod(&mut self, id: &str) {
        let Some((ip, ns)) = self.w.pod_ips.remove(id) else {
            return;
        };
        let s = self.store;
        let shard = self.w.pods.shard(&s.pods, &ip);
        if let Some(list) = shard.get_mut(&ip) {
            if let Some(i) = list.iter().position(|x| *x == ns) {
                list.remove(i);
            }
            if list.is_empty() {
                shard.remove(&ip);
            }
        }
        self.touched(true);
    }

    // === Namespaces ===

    /// Adds a namespace.
    pub fn apply_namespace(&mut self, name: &str) {
        let Some(key) = label_bytes(name) else { return };
        self.seen(Kind::Namespaces, &key);
        let key: Arc<[u8]> = Arc::from(key);
        let s = self.store;
        let shard = self.w.namespaces.shard(&s.namespaces, &*key);
        if shard.insert(Arc::clone(&key), ()).is_none() {
            // CoreDNS's namespace informer has no handlers: no serial bump.
            self.touched(false);
        }
        if let Some(f) = self.w.ns_flags.get(&*key) {
            f.store(true, Ordering::Release);
        }
    }

    /// Removes a namespace.
    pub fn delete_namespace(&mut self, name: &str) {
        let Some(key) = label_bytes(name) else { return };
        let s = self.store;
        if self
            .w
            .namespaces
            .shard(&s.namespaces, &*key)
            .remove(&*key)
            .is_some()
        {
            self.set_ns_flag(&key, false);
            self.touched(false);
        }
    }
}

fn cluster_ips(s: &Service) -> Vec<IpAddr> {
    match &s.kind {
        Resolves::ClusterIp(ips) => ips.to_vec(),
        _ => Vec::new(),
    }
}
