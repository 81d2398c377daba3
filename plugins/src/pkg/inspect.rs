//! What the admin plane reads from running plugins, through small traits
//! (the agent's `Control` collects them from [`crate::setup::Services`]):
//! a cache's entries, a forward's upstreams. Plugins never depend on the
//! admin crate.

use std::time::Duration;

/// One cached RRset (or denial), as the admin plane lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedEntry {
    /// Owner name, lower case, fully qualified.
    pub name: String,
    /// Query type (numeric).
    pub qtype: u16,
    /// Seconds left before it expires (0 when stale).
    pub ttl: u32,
    /// Expired, kept for serve_stale.
    pub stale: bool,
}

/// Which entries a list or a purge is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector<'a> {
    /// Owner name in wire form, lower case; `None`: all.
    pub name: Option<&'a [u8]>,
    /// Query type; `None`: all types (of `name`).
    pub qtype: Option<u16>,
}

/// A cache the admin plane can list and purge.
pub trait CacheInspect: Send + Sync {
    /// Entries matching `sel`, at most `limit`.
    fn entries(&self, sel: Selector<'_>, limit: usize) -> Vec<CachedEntry>;
    /// Removes entries matching `sel`; returns how many.
    fn purge(&self, sel: Selector<'_>) -> u64;
    /// Entries held now.
    fn len(&self) -> u64;
    /// Whether it holds nothing.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One upstream's state now.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamState {
    /// `IP:port`, `tls://IP:port` for DNS over TLS.
    pub address: String,
    /// Taking queries (not marked down).
    pub healthy: bool,
    /// Consecutive failures.
    pub fails: u32,
    /// Smoothed round-trip time (zero before any reply).
    pub rtt: Duration,
    /// Pooled connections and sockets open now.
    pub pooled: u32,
}

/// A plugin that forwards (the admin plane's `upstreams`).
pub trait UpstreamInspect: Send + Sync {
    /// Every upstream it forwards to, in its configured order.
    fn upstreams(&self) -> Vec<UpstreamState>;
}
