//! The DNS-shaped view of the ServiceImports and their EndpointSlices
//! (those labelled `multicluster.kubernetes.io/service-name`), as CoreDNS
//! 1.14.7 keeps them (`object/serviceimport.go`,
//! `object/multicluster_endpoint.go`): an import's type, its `ips` and
//! `ports`; a slice's source cluster, ports and ready addresses with
//! their hostnames. Nothing else.
//!
//! Read and written as the cluster store is (`super::super::store`): one
//! map of shards, each an `ArcSwap` of an immutable map, read without a
//! lock; one writer at a time through a [`McBatch`] that publishes the
//! shards it touched when dropped, and relists that delete what they did
//! not see.
//!
//! # SOA serials
//!
//! As CoreDNS: a multicluster zone's SOA serial is the time of the last
//! *update* of an import (its type or ports; not its `ips`) or of a slice
//! (anything kept); an import or a slice *added or deleted* moves the
//! cluster zone's serial instead (CoreDNS's informer `Add`/`Delete`
//! handlers bump the one serial they know), and so does a slice update
//! that changes its addresses or ports (the cluster's EndpointSlice
//! watch sees those slices too).
//!
//! What it refuses, silently: names and namespaces that are not DNS
//! labels, slices without the service-name label, addresses that are not
//! IP addresses. A source cluster that is not a DNS label (a dot, more
//! than 63 bytes) keeps its endpoints in the import's answers, but no
//! per-endpoint name can reach them.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use smallvec::SmallVec;

use super::super::store::{
    Endpoint, EndpointRecord, Hasher, Port, PortRecord, Sharded, Staged, Store, label_bytes,
    read_ports, service_key,
};

/// During a relist, staged shards are published after this many changes.
const PUBLISH_EVERY: usize = super::super::store::PUBLISH_EVERY;

// === Input: what the watch side hands over ===

/// The kinds of object this store is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum McKind {
    /// multicluster.x-k8s.io/v1alpha1 ServiceImport.
    ServiceImports,
    /// discovery.k8s.io/v1 EndpointSlices labelled
    /// `multicluster.kubernetes.io/service-name`.
    EndpointSlices,
}

impl McKind {
    fn index(self) -> usize {
        match self {
            Self::ServiceImports => 0,
            Self::EndpointSlices => 1,
        }
    }
}

/// How an import resolves (`spec.type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportKind {
    /// `ClusterSetIP` (or any type but `Headless`, as CoreDNS reads it):
    /// the ClusterSet IPs (`spec.ips`).
    ClusterSetIp(Vec<IpAddr>),
    /// `Headless`: the ready endpoints answer.
    Headless,
}

impl ImportKind {
    /// Reads `spec.type` and `spec.ips` as CoreDNS's `ToServiceImport`:
    /// `Headless` is headless, anything else answers its IPs. Addresses
    /// that do not parse are dropped.
    pub fn from_spec(import_type: Option<&str>, ips: &[String]) -> Self {
        if import_type == Some("Headless") {
            Self::Headless
        } else {
            Self::ClusterSetIp(
                ips.iter()
                    .filter_map(|s| super::super::store::parse_ip(s))
                    .collect(),
            )
        }
    }
}

/// A ServiceImport, reduced to what DNS answers from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRecord {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.type` and `spec.ips`.
    pub kind: ImportKind,
    /// `spec.ports` (an import without ports has none: CoreDNS adds no
    /// sentinel, so a ClusterSetIP import without ports has no address).
    pub ports: Vec<PortRecord>,
}

/// A multicluster EndpointSlice, reduced to what DNS answers from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McSliceRecord {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The `multicluster.kubernetes.io/service-name` label: its import.
    pub service: Option<String>,
    /// The `multicluster.kubernetes.io/source-cluster` label.
    pub cluster: Option<String>,
    /// `ports`.
    pub ports: Vec<PortRecord>,
    /// `endpoints`.
    pub endpoints: Vec<EndpointRecord>,
}

/// How much the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct McStats {
    /// ServiceImports.
    pub imports: usize,
    /// Multicluster EndpointSlices.
    pub slices: usize,
    /// Ready endpoint addresses across them.
    pub endpoints: usize,
}

// === What queries read ===

/// An import's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Import {
    pub(crate) kind: Resolves,
    /// `spec.ports`, lower-cased; may be empty.
    pub(crate) ports: Box<[Port]>,
}

/// How a stored import resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolves {
    ClusterSetIp(Box<[IpAddr]>),
    Headless,
}

/// A multicluster EndpointSlice's data.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct McSlice {
    pub(crate) name: Box<str>,
    /// The source cluster, lower-cased: empty when the slice has none;
    /// `None` when it is not a DNS label (no per-endpoint name reaches it).
    pub(crate) cluster: Option<Box<[u8]>>,
    pub(crate) ports: Box<[Port]>,
    pub(crate) endpoints: Box<[Endpoint]>,
}

/// An import and its slices (either may be missing: a slice can come
/// before its import).
#[derive(Debug, Clone)]
pub(crate) struct ImportEntry {
    /// `"name.namespace"`.
    key: Arc<[u8]>,
    name_len: usize,
    pub(crate) import: Option<Import>,
    /// Sorted by slice name.
    pub(crate) slices: SmallVec<[Arc<McSlice>; 1]>,
}

impl ImportEntry {
    pub(crate) fn name(&self) -> &[u8] {
        &self.key[..self.name_len]
    }
    pub(crate) fn namespace(&self) -> &[u8] {
        self.key.get(self.name_len + 1..).unwrap_or_default()
    }
}

// === The store ===

/// ServiceImports and their EndpointSlices. See the module docs.
pub struct McStore {
    /// The cluster store, whose serial some changes here move.
    cluster: Arc<Store>,
    endpoint_pod_names: bool,
    imports: Sharded<Arc<[u8]>, Arc<ImportEntry>>,
    /// The multicluster zones' SOA serial (CoreDNS's `multiClusterModified`).
    serial: AtomicU32,
    synced: AtomicBool,
    writer: Mutex<Writer>,
}

impl std::fmt::Debug for McStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McStore")
            .field("synced", &self.synced())
            .field("serial", &self.serial())
            .finish()
    }
}

/// A slice and the key of the import it is linked under.
type Linked = (Arc<[u8]>, Arc<McSlice>);

/// The writer's own state.
#[derive(Default)]
struct Writer {
    imports: Staged<Arc<[u8]>, Arc<ImportEntry>>,
    /// Slices by `"namespace/name"`, with their import's key.
    slices: HashMap<Box<str>, Linked, Hasher>,
    /// Keys seen since each kind's relist began (`None`: not relisting).
    resync: [Option<HashSet<Box<[u8]>, Hasher>>; 2],
    /// Kinds whose first list finished (bits by index).
    listed: u8,
    unpublished: usize,
    /// Bump this store's serial at the next publish.
    updated: bool,
    /// Bump the cluster store's serial at the next publish.
    added_or_deleted: bool,
}

impl McStore {
    /// An empty store, not synced, beside `cluster` (whose options say
    /// how endpoints are named).
    pub fn new(cluster: Arc<Store>) -> Arc<Self> {
        Arc::new(Self {
            endpoint_pod_names: cluster.options().endpoint_pod_names,
            cluster,
            imports: Sharded::new(),
            serial: AtomicU32::new(0),
            synced: AtomicBool::new(false),
            writer: Mutex::new(Writer::default()),
        })
    }

    /// Starts a batch of changes; they are published when it is dropped.
    /// Do not hold it across an `.await`.
    pub fn batch(&self) -> McBatch<'_> {
        McBatch {
            store: self,
            w: self.writer.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Whether ServiceImports and their EndpointSlices have been listed once.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The multicluster zones' SOA serial (see the module docs), 0 before
    /// any update.
    pub fn serial(&self) -> u32 {
        self.serial.load(Ordering::Relaxed)
    }

    /// Counts of what it holds (walks every shard: not for the query path).
    pub fn stats(&self) -> McStats {
        let mut s = McStats::default();
        for shard in self.imports.shards.iter() {
            for e in shard.load().values() {
                s.imports += usize::from(e.import.is_some());
                s.slices += e.slices.len();
                s.endpoints += e.slices.iter().map(|x| x.endpoints.len()).sum::<usize>();
            }
        }
        s
    }

    /// The import keyed `"name.namespace"` (lower-cased), read without a
    /// lock or an allocation.
    pub(crate) fn with_import<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&ImportEntry>) -> R,
    ) -> R {
        self.imports.with(key, |v| f(v.map(|e| &**e)))
    }
}

/// Changes to the store, published when dropped.
pub struct McBatch<'s> {
    store: &'s McStore,
    w: MutexGuard<'s, Writer>,
}

impl std::fmt::Debug for McBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McBatch")
            .field("unpublished", &self.w.unpublished)
            .finish()
    }
}

impl Drop for McBatch<'_> {
    fn drop(&mut self) {
        let relisting = self.w.resync.iter().any(Option::is_some);
        if !relisting || self.w.unpublished >= PUBLISH_EVERY {
            self.publish();
        }
    }
}

impl McBatch<'_> {
    fn publish(&mut self) {
        let s = self.store;
        let w = &mut *self.w;
        w.imports.publish(&s.imports);
        w.unpublished = 0;
        if std::mem::take(&mut w.updated) {
            let now = u32::try_from(crate::pkg::clock::unix_secs()).unwrap_or(u32::MAX);
            s.serial.store(now.max(1), Ordering::Relaxed);
        }
        if std::mem::take(&mut w.added_or_deleted) {
            s.cluster.touch_serial();
        }
    }

    fn seen(&mut self, kind: McKind, key: &[u8]) {
        if let Some(set) = &mut self.w.resync[kind.index()] {
            set.insert(key.into());
        }
    }

    // === Relists ===

    /// A list of every object of `kind` begins: what
    /// [`McBatch::finish_resync`] has not seen applied by then is deleted.
    pub fn begin_resync(&mut self, kind: McKind) {
        self.w.resync[kind.index()] = Some(HashSet::with_hasher(Hasher::default()));
    }

    /// The list of `kind` is complete: deletes what it did not mention,
    /// publishes, and marks `kind` listed (the store is synced when both
    /// are). Without a matching begin, only marks.
    pub fn finish_resync(&mut self, kind: McKind) {
        if let Some(seen) = self.w.resync[kind.index()].take() {
            match kind {
                McKind::ServiceImports => {
                    let s = self.store;
                    for key in self.w.imports.keys(&s.imports) {
                        let has = self
                            .w
                            .imports
                            .get(&s.imports, &key, |e| e.is_some_and(|e| e.import.is_some()));
                        if has && !seen.contains(&*key) {
                            self.remove_import(&key);
                        }
                    }
                }
                McKind::EndpointSlices => {
                    let gone: Vec<Box<str>> = self
                        .w
                        .slices
                        .keys()
                        .filter(|k| !seen.contains(k.as_bytes()))
                        .cloned()
                        .collect();
                    for id in gone {
                        self.remove_slice(&id);
                    }
                }
            }
        }
        self.w.listed |= 1 << kind.index();
        let all = self.w.listed == 0b11;
        // Publish before flipping: readiness says the answers are there.
        self.publish();
        if all {
            self.store.synced.store(true, Ordering::Release);
        }
    }

    // === ServiceImports ===

    /// Adds or replaces an import.
    pub fn apply_import(&mut self, rec: ImportRecord) {
        let Some((key, name_len)) = service_key(&rec.name, &rec.namespace) else {
            return;
        };
        self.seen(McKind::ServiceImports, &key);
        let kind = match rec.kind {
            ImportKind::ClusterSetIp(ips) => {
                let mut v: Vec<IpAddr> = ips.iter().map(|ip| ip.to_canonical()).collect();
                v.dedup();
                Resolves::ClusterSetIp(v.into())
            }
            ImportKind::Headless => Resolves::Headless,
        };
        let ports = if rec.ports.is_empty() {
            Box::default()
        } else {
            read_ports(&rec.ports)
        };
        let new = Import { kind, ports };
        let s = self.store;
        let old = self.w.imports.get(&s.imports, &*key, |e| e.cloned());
        let old_import = old.as_ref().and_then(|e| e.import.as_ref());
        match old_import {
            Some(o) if *o == new => return,
            // CoreDNS's serviceImportEquivalent: the type and the ports.
            Some(o) => {
                let same = std::mem::discriminant(&o.kind) == std::mem::discriminant(&new.kind)
                    && o.ports == new.ports;
                self.w.updated |= !same;
            }
            None => self.w.added_or_deleted = true,
        }
        let entry = ImportEntry {
            key: Arc::clone(&key),
            name_len,
            import: Some(new),
            slices: old.map(|e| e.slices.clone()).unwrap_or_default(),
        };
        self.w
            .imports
            .shard(&s.imports, &*key)
            .insert(key, Arc::new(entry));
        self.w.unpublished += 1;
    }

    /// Removes an import (its slices stay until they are deleted).
    pub fn delete_import(&mut self, namespace: &str, name: &str) {
        if let Some((key, _)) = service_key(name, namespace) {
            self.remove_import(&key);
        }
    }

    fn remove_import(&mut self, key: &Arc<[u8]>) {
        let s = self.store;
        let Some(old) = self.w.imports.get(&s.imports, &**key, |e| e.cloned()) else {
            return;
        };
        if old.import.is_none() {
            return;
        }
        let shard = self.w.imports.shard(&s.imports, &**key);
        if old.slices.is_empty() {
            shard.remove(&**key);
        } else {
            let mut e = (*old).clone();
            e.import = None;
            shard.insert(Arc::clone(key), Arc::new(e));
        }
        self.w.added_or_deleted = true;
        self.w.unpublished += 1;
    }

    // === EndpointSlices ===

    /// Adds or replaces a multicluster EndpointSlice.
    pub fn apply_slice(&mut self, rec: McSliceRecord) {
        let id: Box<str> = format!("{}/{}", rec.namespace, rec.name).into();
        self.seen(McKind::EndpointSlices, id.as_bytes());
        let Some((key, name_len)) = rec
            .service
            .as_deref()
            .and_then(|svc| service_key(svc, &rec.namespace))
        else {
            // Not nameable in DNS: drop what an earlier version had.
            self.remove_slice(&id);
            return;
        };
        let cluster = match rec.cluster.as_deref().unwrap_or_default() {
            "" => Some(Box::default()),
            c => label_bytes(c),
        };
        let pod_names = self.store.endpoint_pod_names;
        let mut endpoints = Vec::new();
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
            for ip in &ep.addresses {
                endpoints.push(Endpoint::unlabelled(ip.to_canonical(), name.clone()));
            }
        }
        let slice = Arc::new(McSlice {
            name: rec.name.as_str().into(),
            cluster,
            ports: read_ports(&rec.ports),
            endpoints: endpoints.into(),
        });
        let old = self.w.slices.get(&id).cloned();
        if let Some((old_key, old)) = &old {
            if *old_key == key && **old == *slice {
                return;
            }
            // An update: CoreDNS's multicluster watch bumps its serial;
            // its cluster watch sees the slice too, and bumps the cluster
            // serial when addresses, hostnames or ports changed.
            let cluster_sees = old.ports != slice.ports || old.endpoints != slice.endpoints;
            self.unlink_slice(&id);
            self.w.updated = true;
            self.w.added_or_deleted |= cluster_sees;
        } else {
            self.w.added_or_deleted = true;
        }
        // Into its import's entry, in name order.
        let s = self.store;
        let shard = self.w.imports.shard(&s.imports, &*key);
        let mut entry = shard.get(&*key).map_or_else(
            || ImportEntry {
                key: Arc::clone(&key),
                name_len,
                import: None,
                slices: SmallVec::new(),
            },
            |e| (**e).clone(),
        );
        let at = entry
            .slices
            .partition_point(|x| x.name.as_ref() < slice.name.as_ref());
        entry.slices.insert(at, Arc::clone(&slice));
        shard.insert(Arc::clone(&key), Arc::new(entry));
        self.w.slices.insert(id, (key, slice));
        self.w.unpublished += 1;
    }

    /// Removes a multicluster EndpointSlice.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        let id = format!("{namespace}/{name}");
        self.remove_slice(&id);
    }

    fn remove_slice(&mut self, id: &str) {
        if self.unlink_slice(id) {
            self.w.added_or_deleted = true;
        }
    }

    /// Takes a slice out of its import's entry; false when it was not there.
    fn unlink_slice(&mut self, id: &str) -> bool {
        let Some((key, old)) = self.w.slices.remove(id) else {
            return false;
        };
        let s = self.store;
        let shard = self.w.imports.shard(&s.imports, &*key);
        if let Some(e) = shard.get(&*key) {
            let mut e = (**e).clone();
            e.slices.retain(|x| !Arc::ptr_eq(x, &old));
            if e.slices.is_empty() && e.import.is_none() {
                shard.remove(&*key);
            } else {
                shard.insert(Arc::clone(&key), Arc::new(e));
            }
        }
        self.w.unpublished += 1;
        true
    }
}
