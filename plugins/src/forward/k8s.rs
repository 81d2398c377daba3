//! `k8s://NAMESPACE/SERVICE[:PORT]` upstreams: the ready endpoints of a
//! service's EndpointSlices, followed live.
//!
//! A [`K8sWatch`] watches the slices labelled
//! `kubernetes.io/service-name=SERVICE` in NAMESPACE (a kube-rs watcher:
//! a list, then a watch with bookmarks, a relist after `410 Gone`) and
//! keeps them as [`SliceView`]s. It is carried over a reload that keeps
//! the target (and the kubeconfig), like kubernetes' `Watched`, so a
//! reload does not relist; two forwards of one configuration that name
//! one target share it.
//!
//! Each forward with `k8s://` upstreams has a [`Follow`]: its written
//! upstreams in order, each `k8s://` one standing for its endpoints. The
//! watch calls every follow when the slices change, which rebuilds its
//! forward's list (no reload): an endpoint that stays keeps its [`Up`]
//! (pool, health, RTT), one that goes is dropped from the list (its
//! sockets close once the queries in flight on it finish, as they hold
//! the old list), a new one gets a fresh [`Up`]. The `Up`s of a target
//! are kept by [`PoolKey`] in the watch, so a reload that builds a new
//! forward finds them too.
//!
//! Bounds: a forward has at most [`MAX_UPSTREAMS`] upstreams in all. The
//! `k8s://` targets share what the written addresses leave; when a target
//! has more ready endpoints than its share, the agent takes those that
//! rank first by rendezvous hashing on a seed drawn once per process: a
//! stable choice that differs from node to node (so the nodes together
//! spread over every endpoint) and moves as little as possible when
//! endpoints come and go. At most [`MAX_SLICES`] slices per target and
//! [`MAX_ENDPOINTS_PER_SLICE`] endpoints per slice are read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use super::setup::{K8sPort, K8sTarget, MAX_UPSTREAMS};
use super::{Builder, PoolKey, Scheme, Up};
use crate::pkg::lifecycle::Readiness;
use crate::setup::{Carry, StartupWait};

/// Slices read per target at most (more are logged and left out).
pub(crate) const MAX_SLICES: usize = 1024;
/// Endpoints read per slice at most (the API server's own limit).
pub(crate) const MAX_ENDPOINTS_PER_SLICE: usize = 1000;
/// Distinct endpoint addresses considered per target at most.
const MAX_CANDIDATES: usize = 4096;
/// How long a start or a reload waits for a new watch's first list.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Events applied in one batch at most.
const MAX_BATCH: usize = 256;
/// Waits between attempts to build a client: doubling up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// The label that ties an EndpointSlice to its service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The rendezvous seed: drawn once per process.
static SEED: LazyLock<u64> = LazyLock::new(rand::random);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === Slices ===

/// One EndpointSlice as forward reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SliceView {
    /// Its ports: name, protocol, number (the API's, unchecked).
    ports: Vec<(Option<String>, Option<String>, Option<i32>)>,
    /// The addresses of its endpoints that take traffic: `ready` not
    /// false (unset counts as ready, as kube-proxy reads it) and not
    /// terminating; addresses that are not IPs (FQDN slices) left out.
    addrs: Vec<IpAddr>,
}

impl SliceView {
    /// Reads a slice (bounded; never fails).
    pub(crate) fn new(s: &EndpointSlice) -> Self {
        let ports = s
            .ports
            .iter()
            .flatten()
            .take(64)
            .map(|p| (p.name.clone(), p.protocol.clone(), p.port))
            .collect();
        let mut addrs = Vec::new();
        for e in s.endpoints.iter().take(MAX_ENDPOINTS_PER_SLICE) {
            let c = e.conditions.as_ref();
            if c.and_then(|c| c.ready) == Some(false) || c.and_then(|c| c.terminating) == Some(true)
            {
                continue;
            }
            // Kubernetes uses the first address only (the others are
            // reserved); so do we.
            if let Some(ip) = e
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .map(|ip| ip.to_canonical())
                .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
            {
                addrs.push(ip);
            }
        }
        Self { ports, addrs }
    }

    /// The port `spec` picks in this slice, if any.
    fn port(&self, spec: &K8sPort) -> Option<u16> {
        let valid = |p: Option<i32>| p.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0);
        let named = |name: &str| {
            let mut ports = self
                .ports
                .iter()
                .filter(|(n, _, p)| n.as_deref() == Some(name) && valid(*p).is_some());
            let first = ports.clone().next();
            ports
                .find(|(_, proto, _)| proto.as_deref() == Some("UDP"))
                .or(first)
                .and_then(|(_, _, p)| valid(*p))
        };
        match spec {
            K8sPort::Number(n) => Some(*n),
            K8sPort::Name(name) => named(name),
            K8sPort::Default => named("dns").or_else(|| named("dns-tcp")).or(Some(53)),
        }
    }
}

/// What a target expands to now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expanded {
    /// Every distinct ready endpoint (at most [`MAX_CANDIDATES`]), best
    /// rendezvous rank first.
    pub(crate) ranked: Vec<SocketAddr>,
    /// Endpoints left out for [`MAX_CANDIDATES`].
    pub(crate) dropped: usize,
}

/// The ready endpoints of `slices` on the port `spec` picks in each, by
/// rendezvous rank for `seed`.
pub(crate) fn expand(slices: &BTreeMap<String, SliceView>, spec: &K8sPort, seed: u64) -> Expanded {
    let mut seen = HashSet::new();
    let mut dropped = 0usize;
    for s in slices.values() {
        let Some(port) = s.port(spec) else { continue };
        for ip in &s.addrs {
            let a = SocketAddr::new(*ip, port);
            if seen.len() >= MAX_CANDIDATES && !seen.contains(&a) {
                dropped += 1;
                continue;
            }
            seen.insert(a);
        }
    }
    let mut ranked: Vec<(u64, SocketAddr)> = seen.into_iter().map(|a| (rank(seed, a), a)).collect();
    ranked.sort_unstable_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    Expanded {
        ranked: ranked.into_iter().map(|(_, a)| a).collect(),
        dropped,
    }
}

/// An address's rendezvous weight for `seed`.
fn rank(seed: u64, a: SocketAddr) -> u64 {
    // SipHash with fixed keys: the same on every run for one seed.
    let mut h = std::hash::DefaultHasher::new();
    seed.hash(&mut h);
    a.hash(&mut h);
    h.finish()
}

/// Shares `budget` among targets that have `wants[i]` endpoints: one each
/// in turn, skipping those that have all they want.
pub(crate) fn share(wants: &[usize], budget: usize) -> Vec<usize> {
    let mut got = vec![0; wants.len()];
    let mut left = budget;
    while left > 0 {
        let mut gave = false;
        for (g, w) in got.iter_mut().zip(wants) {
            if left > 0 && *g < *w {
                *g += 1;
                left -= 1;
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    got
}

// === The watch ===

/// The slices of one `k8s://` target and the watch that keeps them.
pub(crate) struct K8sWatch {
    namespace: String,
    service: String,
    slices: ArcSwap<BTreeMap<String, SliceView>>,
    synced: AtomicBool,
    followers: Mutex<Vec<Weak<Follow>>>,
    /// The target's upstreams by [`PoolKey`]: what a rebuilt list (or a
    /// reload's new forward) finds again.
    ups: Mutex<HashMap<String, Weak<Up>>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl std::fmt::Debug for K8sWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K8sWatch")
            .field("namespace", &self.namespace)
            .field("service", &self.service)
            .field("slices", &self.slices.load().len())
            .field("synced", &self.synced.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for K8sWatch {
    fn drop(&mut self) {
        let task = self.task.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = task.take() {
            t.abort();
        }
    }
}

impl K8sWatch {
    fn new(namespace: &str, service: &str) -> Arc<Self> {
        Arc::new(Self {
            namespace: namespace.to_string(),
            service: service.to_string(),
            slices: ArcSwap::from_pointee(BTreeMap::new()),
            synced: AtomicBool::new(false),
            followers: Mutex::new(Vec::new()),
            ups: Mutex::new(HashMap::new()),
            task: Mutex::new(None),
        })
    }

    /// The watch for `(namespace, service)` in a configuration being
    /// built: one this configuration has already (shared), else the
    /// running one's (carried), else a new one (not started).
    pub(crate) fn carried(
        namespace: &str,
        service: &str,
        carry_in: &mut Carry,
        kept: &mut Carry,
    ) -> Arc<Self> {
        let key = carry_key(namespace, service);
        if let Some(w) = kept.get::<Self>(&key) {
            return w;
        }
        let w = carry_in
            .take::<Self>(&key)
            .unwrap_or_else(|| Self::new(namespace, service));
        kept.keep(key, Arc::clone(&w));
        w
    }

    /// Starts the watch unless it runs already. Must be called on the
    /// runtime.
    pub(crate) fn ensure_running(self: &Arc<Self>) {
        let mut task = lock(&self.task);
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let run = run(Arc::downgrade(self));
        *task = Some(tokio::spawn(run).abort_handle());
    }

    /// Whether the first list is in.
    pub(crate) fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    fn label(&self) -> String {
        format!("k8s://{}/{}", self.namespace, self.service)
    }

    /// What the configuration waits for before it serves.
    pub(crate) fn startup(self: &Arc<Self>) -> StartupWait {
        let w = Arc::clone(self);
        StartupWait {
            ready: Arc::new(Synced(Arc::clone(self))),
            timeout: STARTUP_TIMEOUT,
            start: Box::new(move || w.ensure_running()),
            waiting: "plugin/forward: waiting for the Kubernetes API (k8s:// upstreams) before starting server",
            gave_up: "plugin/forward: starting server with k8s:// upstreams not synced",
        }
    }

    fn follow(&self, f: &Arc<Follow>) {
        let mut fs = lock(&self.followers);
        fs.retain(|w| w.strong_count() > 0);
        fs.push(Arc::downgrade(f));
    }

    /// Publishes the slices and rebuilds every follower's list.
    fn publish(&self, slices: BTreeMap<String, SliceView>) {
        self.slices.store(Arc::new(slices));
        let followers: Vec<Arc<Follow>> = {
            let mut fs = lock(&self.followers);
            fs.retain(|w| w.strong_count() > 0);
            fs.iter().filter_map(Weak::upgrade).collect()
        };
        for f in followers {
            f.apply();
        }
    }

    /// Publishes `slices` as the watch would (tests).
    #[cfg(test)]
    pub(crate) fn publish_for_test(&self, slices: BTreeMap<String, SliceView>) {
        self.synced.store(true, Ordering::Release);
        self.publish(slices);
    }

    /// The upstream for `addr` made by `b`: the one this target has under
    /// its pool key, else a new one.
    fn up(&self, b: &Builder, addr: SocketAddr) -> Option<Arc<Up>> {
        let key = PoolKey::new(b, addr, Scheme::Dns, None).0;
        let mut ups = lock(&self.ups);
        if let Some(u) = ups.get(&key).and_then(Weak::upgrade) {
            return Some(u);
        }
        ups.retain(|_, w| w.strong_count() > 0);
        match b.up(addr, Scheme::Dns, None) {
            Ok(u) => {
                u.forget_series.store(true, Ordering::Relaxed);
                ups.insert(key, Arc::downgrade(&u));
                Some(u)
            }
            Err(e) => {
                tracing::warn!(upstream = %addr, error = %e, "forward: cannot make upstream");
                None
            }
        }
    }
}

/// What a watch is carried under: the target, and how the client finds
/// the API server (`KUBECONFIG` and the contents of the files it names,
/// so a changed kubeconfig reconnects).
fn carry_key(namespace: &str, service: &str) -> String {
    let mut h = std::hash::DefaultHasher::new();
    let env = std::env::var_os("KUBECONFIG").unwrap_or_default();
    env.hash(&mut h);
    for p in std::env::split_paths(&env) {
        std::fs::read(p).ok().hash(&mut h);
    }
    format!(
        "forward|k8s://{namespace}/{service}|client={:016x}",
        h.finish()
    )
}

/// A watch's readiness: its first list is in.
struct Synced(Arc<K8sWatch>);

impl Readiness for Synced {
    fn name(&self) -> &'static str {
        "forward"
    }
    fn ready(&self) -> bool {
        self.0.synced()
    }
}

/// Connects (retrying with a backoff) and watches the target's slices
/// until the watch is dropped.
async fn run(watch: Weak<K8sWatch>) {
    let mut wait = RETRY_FIRST;
    let client = loop {
        match crate::kubernetes::inferred_client().await {
            Ok(c) => break c,
            Err(e) => {
                let Some(w) = watch.upgrade() else { return };
                tracing::warn!(k8s = %w.label(), error = %e, retry_in = ?wait, "forward: cannot connect to the Kubernetes API");
                drop(w);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    };
    let Some((namespace, service)) = watch
        .upgrade()
        .map(|w| (w.namespace.clone(), w.service.clone()))
    else {
        return;
    };
    let label = format!("k8s://{namespace}/{service}");
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut slices = match watch.upgrade() {
        Some(w) => w.slices.load().as_ref().clone(),
        None => return,
    };
    let mut relist: Option<BTreeMap<String, SliceView>> = None;
    while let Some(first) = events.next().await {
        let Some(w) = watch.upgrade() else { return };
        let mut changed = false;
        let mut listed = false;
        let mut ev = Some(first);
        for _ in 0..MAX_BATCH {
            let Some(e) = ev.take() else { break };
            match e {
                Ok(Event::Init) => relist = Some(BTreeMap::new()),
                Ok(Event::InitApply(s)) => {
                    if let Some(r) = relist.as_mut() {
                        insert(r, &s, &label);
                    }
                }
                Ok(Event::InitDone) => {
                    let new = relist.take().unwrap_or_default();
                    changed |= new != slices;
                    slices = new;
                    listed = true;
                }
                Ok(Event::Apply(s)) => changed |= insert(&mut slices, &s, &label),
                Ok(Event::Delete(s)) => {
                    changed |= s
                        .metadata
                        .name
                        .as_ref()
                        .is_some_and(|n| slices.remove(n).is_some());
                }
                Err(e) => {
                    tracing::warn!(k8s = %label, error = %e, "forward: EndpointSlice watch failed; retrying");
                }
            }
            match events.next().now_or_never() {
                Some(Some(e)) => ev = Some(e),
                Some(None) => return,
                None => break,
            }
        }
        if changed {
            w.publish(slices.clone());
        }
        if listed && !w.synced.swap(true, Ordering::AcqRel) {
            tracing::info!(k8s = %label, slices = slices.len(), "forward: synced with the Kubernetes API");
        }
    }
}

/// Adds or replaces a slice; whether anything changed.
fn insert(slices: &mut BTreeMap<String, SliceView>, s: &EndpointSlice, label: &str) -> bool {
    let Some(name) = s.metadata.name.clone() else {
        return false;
    };
    let view = SliceView::new(s);
    if let Some(old) = slices.get_mut(&name) {
        if *old == view {
            return false;
        }
        *old = view;
        return true;
    }
    if slices.len() >= MAX_SLICES {
        tracing::warn!(k8s = %label, slice = %name, max = MAX_SLICES, "forward: too many EndpointSlices; this one is left out");
        return false;
    }
    slices.insert(name, view);
    true
}

// === A forward that follows ===

/// One written upstream.
pub(crate) enum Slot {
    /// An address: always in the list.
    Static(Arc<Up>),
    /// A `k8s://` target: its endpoints.
    K8s(Arc<K8sWatch>, K8sTarget),
}

/// A forward's upstream list kept in step with its `k8s://` targets.
pub(crate) struct Follow {
    list: Arc<ArcSwap<Vec<Arc<Up>>>>,
    slots: Vec<Slot>,
    builder: Builder,
    /// What was last logged per slot (serialises rebuilds too).
    last: Mutex<Vec<Vec<SocketAddr>>>,
}

impl Follow {
    /// Follows the targets in `slots` into `list`, filling it now from
    /// what each watch has.
    pub(crate) fn start(
        list: Arc<ArcSwap<Vec<Arc<Up>>>>,
        slots: Vec<Slot>,
        builder: Builder,
    ) -> Arc<Self> {
        let f = Arc::new(Self {
            list,
            last: Mutex::new(vec![Vec::new(); slots.len()]),
            slots,
            builder,
        });
        for s in &f.slots {
            if let Slot::K8s(w, _) = s {
                w.follow(&f);
            }
        }
        f.apply();
        f
    }

    /// The distinct watches, for the startup waits.
    pub(crate) fn watches(&self) -> Vec<Arc<K8sWatch>> {
        let mut out: Vec<Arc<K8sWatch>> = Vec::new();
        for s in &self.slots {
            if let Slot::K8s(w, _) = s
                && !out.iter().any(|o| Arc::ptr_eq(o, w))
            {
                out.push(Arc::clone(w));
            }
        }
        out
    }

    /// Rebuilds the list from the watches' slices.
    fn apply(&self) {
        let mut last = lock(&self.last);
        let statics = self
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Static(_)))
            .count();
        let expanded: Vec<Option<Expanded>> = self
            .slots
            .iter()
            .map(|s| match s {
                Slot::Static(_) => None,
                Slot::K8s(w, t) => Some(expand(&w.slices.load(), &t.port, *SEED)),
            })
            .collect();
        let wants: Vec<usize> = expanded
            .iter()
            .map(|e| e.as_ref().map_or(0, |e| e.ranked.len()))
            .collect();
        let shares = share(&wants, MAX_UPSTREAMS.saturating_sub(statics));
        let mut out = Vec::with_capacity(MAX_UPSTREAMS);
        for (i, slot) in self.slots.iter().enumerate() {
            match (slot, &expanded[i]) {
                (Slot::Static(up), _) => out.push(Arc::clone(up)),
                (Slot::K8s(w, t), Some(e)) => {
                    let chosen = &e.ranked[..shares[i]];
                    if last[i] != chosen {
                        log_change(t, w.synced(), chosen, e);
                        last[i] = chosen.to_vec();
                    }
                    out.extend(chosen.iter().filter_map(|a| w.up(&self.builder, *a)));
                }
                (Slot::K8s(..), None) => {}
            }
        }
        let current = self.list.load();
        let same =
            current.len() == out.len() && current.iter().zip(&out).all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            self.list.store(Arc::new(out));
        }
    }
}

fn log_change(t: &K8sTarget, synced: bool, chosen: &[SocketAddr], e: &Expanded) {
    let total = e.ranked.len() + e.dropped;
    if chosen.is_empty() {
        if synced {
            tracing::warn!(k8s = %t, "forward: no ready endpoint; queries it would take answer SERVFAIL");
        }
        return;
    }
    let addrs: Vec<String> = chosen.iter().map(ToString::to_string).collect();
    if chosen.len() < total {
        tracing::warn!(
            k8s = %t,
            upstreams = ?addrs,
            ready = total,
            max = MAX_UPSTREAMS,
            "forward: more ready endpoints than upstreams allowed; using those that rank first"
        );
    } else {
        tracing::info!(k8s = %t, upstreams = ?addrs, "forward: endpoints changed");
    }
}
