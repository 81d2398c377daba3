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

/// One cache entry as a snapshot carries it (see [`crate::pkg::snapshot`]):
/// the reply's wire bytes (without OPT, the question in it is the key's
/// name, type and class), the key's DO/CD bits, and its times in whole
/// seconds from the moment it was exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotEntry<'a> {
    /// The query bits it answers: 1 = DO, 2 = CD.
    pub key_bits: u8,
    /// Seconds of TTL left (0: expired, kept for serve_stale).
    pub fresh_for: u32,
    /// Seconds until it may not be served at all, stale or not (at least
    /// `fresh_for`; equal to it without serve_stale). Never 0 in an export.
    pub dead_in: u32,
    /// The stored reply (at most 65535 bytes).
    pub wire: &'a [u8],
}

/// What an import did with the entries it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Stored (they may still be evicted by later ones, as any insert).
    pub imported: u64,
    /// Past their TTL (and serve_stale window) once the elapsed time is
    /// taken off.
    pub expired: u64,
    /// Not something this cache would store: a reply that does not parse,
    /// outside its zones, of a kind or in a zone its settings do not cache.
    pub refused: u64,
    /// The cache already held a fresher entry for the key.
    pub superseded: u64,
    /// Entries evicted to make room (the cache's capacity and `max_bytes`).
    pub evicted: u64,
}

impl ImportStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Self) {
        self.imported += other.imported;
        self.expired += other.expired;
        self.refused += other.refused;
        self.superseded += other.superseded;
        self.evicted += other.evicted;
    }
}

/// A cache the admin plane can list and purge, and a snapshot can save and
/// restore.
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
    /// What a snapshot names this cache by: the same in two processes
    /// running the same Corefile, different for every cache of one
    /// configuration (its server block's server name, `bind` addresses
    /// and zones, and the cache's zones; not its other settings).
    fn snapshot_id(&self) -> &str;
    /// Calls `f` for every entry that may still be served (fresh, or stale
    /// within serve_stale's window). Shard by shard, under each shard's
    /// read lock: hits go on meanwhile; `f` must not call into the cache.
    fn export(&self, f: &mut dyn FnMut(SnapshotEntry<'_>));
    /// Stores `entries`, exported `elapsed_secs` ago, as if they had been
    /// answered here: TTLs and stale windows less the elapsed time, fitted
    /// to this cache's settings (TTL caps, disabled zones, serve_stale),
    /// within its capacity and `max_bytes`; an entry already held with
    /// more TTL left is kept.
    fn import(&self, entries: &[SnapshotEntry<'_>], elapsed_secs: u64) -> ImportStats;
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
