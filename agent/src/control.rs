//! The admin plane's view of the running agent: [`AgentControl`] implements
//! `nodedns_admin::Control`.
//!
//! Reads (config, stats, cache, upstreams, plugins) come from a snapshot of
//! the running configuration, swapped whole on every applied change
//! ([`Running`]). Changes go to the one task that owns the server, over a
//! bounded channel ([`Change`]): `PUT /v1/config`, the `reload` plugin and
//! SIGUSR1 all end in the same `apply` there, one at a time.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use nodedns_admin::{
    Applied, ApplyError, BadRequest, BoxFuture, CacheEntry, CacheStats, ConfigView, Control,
    QueryStats, Stats, Upstream,
};
use nodedns_plugins::pkg::inspect::{CacheInspect, Selector, UpstreamInspect};
use nodedns_plugins::pkg::lifecycle::Lifecycle;
use nodedns_plugins::pkg::metrics::{self, queries};
use tokio::sync::{mpsc, oneshot};

/// Most changes waiting for the server task; more are refused (503).
pub const CHANGE_QUEUE: usize = 16;
/// Most cache rows one listing returns.
pub const MAX_LISTED: usize = 10_000;
/// How long an admin change waits for the server task (a reload binds
/// sockets and stops HTTP endpoints, bounded each).
const APPLY_WAIT: Duration = Duration::from_secs(30);

/// What the admin plane reads: the running configuration's text, version,
/// plugins, caches and upstreams.
pub struct Running {
    /// The Corefile text.
    pub corefile: String,
    /// Increases on every applied change.
    pub version: u64,
    /// Plugins of the running chain, in chain order.
    pub plugins: Vec<String>,
    /// Its caches.
    pub caches: Vec<Arc<dyn CacheInspect>>,
    /// Its forwarding plugins.
    pub upstreams: Vec<Arc<dyn UpstreamInspect>>,
}

/// A change asked of the server task.
pub struct Change {
    /// The new Corefile.
    pub corefile: String,
    /// Validate only.
    pub dry_run: bool,
    /// Apply only if this version runs.
    pub if_match: Option<u64>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<Applied, ApplyError>>,
}

/// The agent as the admin plane drives it.
pub struct AgentControl {
    running: ArcSwap<Running>,
    changes: mpsc::Sender<Change>,
    life: Arc<Lifecycle>,
}

impl AgentControl {
    /// A control over `running`; changes are sent to the returned receiver.
    pub fn new(running: Running, life: Arc<Lifecycle>) -> (Arc<Self>, mpsc::Receiver<Change>) {
        let (tx, rx) = mpsc::channel(CHANGE_QUEUE);
        let me = Arc::new(Self {
            running: ArcSwap::from_pointee(running),
            changes: tx,
            life,
        });
        (me, rx)
    }

    /// Publishes a newly applied configuration.
    pub fn publish(&self, running: Running) {
        self.running.store(Arc::new(running));
    }

    /// The running snapshot.
    pub fn running(&self) -> Arc<Running> {
        self.running.load_full()
    }
}

impl Control for AgentControl {
    fn config(&self) -> ConfigView {
        let r = self.running.load();
        ConfigView {
            corefile: r.corefile.clone(),
            version: r.version,
        }
    }

    fn apply(
        &self,
        corefile: String,
        dry_run: bool,
        if_match: Option<u64>,
    ) -> BoxFuture<'_, Result<Applied, ApplyError>> {
        Box::pin(async move {
            let (reply, outcome) = oneshot::channel();
            let change = Change {
                corefile,
                dry_run,
                if_match,
                reply,
            };
            self.changes.try_send(change).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ApplyError::Unavailable(format!(
                    "{CHANGE_QUEUE} config changes are already waiting; try again"
                )),
                mpsc::error::TrySendError::Closed(_) => {
                    ApplyError::Unavailable("the agent is shutting down".into())
                }
            })?;
            match tokio::time::timeout(APPLY_WAIT, outcome).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(ApplyError::Unavailable("the agent is shutting down".into())),
                Err(_) => Err(ApplyError::Unavailable(format!(
                    "the change did not complete within {APPLY_WAIT:?}; GET /v1/config tells whether it was applied"
                ))),
            }
        })
    }

    fn stats(&self) -> Stats {
        let r = self.running.load();
        let mut s = stats_from(&metrics::registry().gather());
        s.cache.entries = r.caches.iter().map(|c| c.len()).sum();
        s.upstreams = upstreams_of(&r.upstreams);
        s
    }

    fn cache_entries(
        &self,
        name: Option<&str>,
        rtype: Option<&str>,
    ) -> Result<Vec<CacheEntry>, BadRequest> {
        let (name, qtype) = selector(name, rtype)?;
        let sel = Selector {
            name: name.as_deref(),
            qtype,
        };
        let r = self.running.load();
        let mut out = Vec::new();
        for c in &r.caches {
            let left = MAX_LISTED.saturating_sub(out.len());
            if left == 0 {
                break;
            }
            out.extend(c.entries(sel, left).into_iter().map(|e| CacheEntry {
                name: e.name,
                rtype: type_name(e.qtype),
                ttl: e.ttl,
                stale: e.stale,
            }));
        }
        Ok(out)
    }

    fn cache_purge(&self, name: Option<&str>, rtype: Option<&str>) -> Result<u64, BadRequest> {
        if name.is_none() && rtype.is_some() {
            return Err(BadRequest("type needs a name".into()));
        }
        let (wire, qtype) = selector(name, rtype)?;
        let sel = Selector {
            name: wire.as_deref(),
            qtype,
        };
        let r = self.running.load();
        let removed = r.caches.iter().map(|c| c.purge(sel)).sum();
        tracing::info!(
            name = name.unwrap_or("(all)"),
            rtype = rtype.unwrap_or("(all)"),
            removed,
            "admin: cache purged"
        );
        Ok(removed)
    }

    fn upstreams(&self) -> Vec<Upstream> {
        upstreams_of(&self.running.load().upstreams)
    }

    fn plugins(&self) -> Vec<String> {
        self.running.load().plugins.clone()
    }

    fn healthy(&self) -> bool {
        !self.life.is_stopping()
    }

    fn not_ready(&self) -> Vec<String> {
        self.life
            .not_ready()
            .into_iter()
            .map(str::to_string)
            .collect()
    }
}

fn upstreams_of(list: &[Arc<dyn UpstreamInspect>]) -> Vec<Upstream> {
    list.iter()
        .flat_map(|u| u.upstreams())
        .map(|u| Upstream {
            address: u.address,
            healthy: u.healthy,
            fails: u.fails,
            rtt_ms: u.rtt.as_secs_f64() * 1000.0,
            pooled: u.pooled,
        })
        .collect()
}

/// A name and type from the admin API: the name to lower-case wire form
/// (relative names are taken as fully qualified), the type from its
/// mnemonic (`AAAA`, any case) or `TYPEn`.
fn selector(
    name: Option<&str>,
    rtype: Option<&str>,
) -> Result<(Option<Vec<u8>>, Option<u16>), BadRequest> {
    let wire = match name.map(str::trim) {
        None => None,
        Some("") => return Err(BadRequest("name is empty".into())),
        Some(n) => {
            let mut parsed = hickory_proto::rr::Name::from_ascii(n)
                .map_err(|e| BadRequest(format!("name {n:?}: {e}")))?;
            parsed.set_fqdn(true);
            let parsed = parsed.to_lowercase();
            let mut w = Vec::with_capacity(n.len() + 2);
            for label in parsed.iter() {
                // Each label is at most 63 bytes: hickory checked.
                w.push(u8::try_from(label.len()).unwrap_or(63));
                w.extend_from_slice(label);
            }
            w.push(0);
            Some(w)
        }
    };
    let qtype = match rtype.map(str::trim) {
        None => None,
        Some(t) => Some(type_code(t).ok_or_else(|| BadRequest(format!("unknown type {t:?}")))?),
    };
    Ok((wire, qtype))
}

/// A record type's number from its mnemonic or `TYPEn`.
fn type_code(t: &str) -> Option<u16> {
    let upper = t.to_ascii_uppercase();
    if let Some(n) = upper.strip_prefix("TYPE") {
        return n.parse().ok();
    }
    use std::str::FromStr as _;
    match hickory_proto::rr::RecordType::from_str(&upper) {
        Ok(rt) => Some(u16::from(rt)),
        Err(_) => None,
    }
}

/// A record type's mnemonic (`TYPEn` when it has none).
fn type_name(t: u16) -> String {
    match hickory_proto::rr::RecordType::from(t) {
        hickory_proto::rr::RecordType::Unknown(_) => format!("TYPE{t}"),
        rt => rt.to_string(),
    }
}

/// Sums the query and cache counters out of the registry.
fn stats_from(families: &[prometheus::proto::MetricFamily]) -> Stats {
    let (total, by_rcode, by_type) = queries::totals();
    let q = QueryStats {
        total,
        by_rcode,
        by_type,
    };
    let mut cache = CacheStats::default();
    for f in families {
        let sum = || {
            f.get_metric()
                .iter()
                .map(|m| m.get_counter().get_value() as u64)
                .sum::<u64>()
        };
        match f.name() {
            "coredns_cache_hits_total" => cache.hits = sum(),
            "coredns_cache_misses_total" => cache.misses = sum(),
            "coredns_cache_prefetch_total" => cache.prefetches = sum(),
            "coredns_cache_served_stale_total" => cache.stale = sum(),
            _ => {}
        }
    }
    Stats {
        queries: q,
        cache,
        upstreams: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_types_from_the_admin_api() {
        let (w, t) = selector(Some("WWW.Example.org"), Some("aaaa")).unwrap();
        assert_eq!(w.unwrap(), b"\x03www\x07example\x03org\0");
        assert_eq!(t, Some(28));
        assert_eq!(selector(Some("."), None).unwrap().0.unwrap(), b"\0");
        assert_eq!(selector(None, Some("TYPE65534")).unwrap().1, Some(65534));
        assert!(selector(None, Some("NOPE")).is_err());
        assert!(selector(Some(""), None).is_err());
        assert!(selector(Some("a..b"), None).is_err());
        assert!(
            selector(Some(&"a".repeat(64)), None).is_err(),
            "label too long"
        );
        assert_eq!(type_name(1), "A");
        assert_eq!(type_name(65534), "TYPE65534");
    }
}
