//! The nodedns admin plane: axum REST and tonic gRPC on one port, against
//! the [`Control`] trait that the agent implements. The admin crate knows
//! nothing of the agent but this trait.
//!
//! What the agent calls:
//!
//! - at start, [`auth::listen_addr`] turns `--admin` into an address (or
//!   `None` for `off`) and refuses a non-loopback one without a token;
//!   [`Token::from_file`] reads `--admin-token-file`;
//! - then [`serve`] (or [`serve_with`] for other [`Limits`]) on a bound
//!   listener until its shutdown future completes;
//! - for `nodedns ctl …`, [`ctl::main`] with the arguments after `ctl`.
//!
//! The endpoints, limits and auth rules are in the crate's README.md.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use utoipa::ToSchema;

pub mod auth;
pub mod ctl;
pub mod grpc;
pub mod rest;
mod serve;

pub use auth::Token;
pub use serve::{Limits, serve, serve_with};

/// A boxed future, so [`Control`] stays object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The running configuration as the admin plane shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigView {
    /// The Corefile text.
    pub corefile: String,
    /// Increases on every applied change (`ETag`).
    pub version: u64,
}

/// What an applied (or validated, with `dry_run`) configuration gave
/// (`PUT /v1/config`'s answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Applied {
    /// The version now running (with `dry_run`: the running one, unchanged).
    pub version: u64,
    /// The new Corefile was written back to the `-conf` file (temp file and
    /// rename). `false` with `dry_run`, with no `-conf` file, or when it is
    /// not writable (the change still runs, it is just not kept).
    pub persisted: bool,
}

/// Why a new configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The Corefile is invalid (`Corefile:LINE: message`), or could not be
    /// put into service (an address it cannot bind). HTTP 400.
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// The line it is on, when known.
        line: Option<u32>,
    },
    /// `If-Match` named a version that is no longer running. HTTP 412.
    #[error("config version {expected} is not the running version {running}")]
    VersionMismatch {
        /// What the client expected.
        expected: u64,
        /// What runs.
        running: u64,
    },
    /// The agent is shutting down or could not take the request. HTTP 503.
    #[error("{0}")]
    Unavailable(String),
}

/// A request the admin plane cannot serve as asked (HTTP 400,
/// gRPC `INVALID_ARGUMENT`): an unknown record type, a bad name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// Query counters since start (they survive reloads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct QueryStats {
    /// Queries answered or dropped, all blocks.
    pub total: u64,
    /// Responses by rcode name (`NOERROR`, `NXDOMAIN`, …).
    pub by_rcode: BTreeMap<String, u64>,
    /// Requests by query type name (`A`, `AAAA`, …; `other` beyond the
    /// common ones).
    pub by_type: BTreeMap<String, u64>,
}

/// Cache counters over every cache in the running config (counters since
/// start, `entries` now).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct CacheStats {
    /// Answered from the cache (fresh or stale).
    pub hits: u64,
    /// Not in the cache.
    pub misses: u64,
    /// Refreshed before expiry.
    pub prefetches: u64,
    /// Answered with an expired entry (serve_stale).
    pub stale: u64,
    /// Entries held now.
    pub entries: u64,
}

/// One forward target.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Upstream {
    /// `IP:port` (with `tls://` for DNS over TLS).
    pub address: String,
    /// Taking queries (not marked down by health checks).
    pub healthy: bool,
    /// Consecutive failed health checks or exchanges.
    pub fails: u32,
    /// Smoothed round-trip time in milliseconds (0 before any reply).
    pub rtt_ms: f64,
    /// Pooled connections and sockets open now.
    pub pooled: u32,
}

/// `GET /v1/stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Stats {
    /// Queries.
    pub queries: QueryStats,
    /// Caches.
    pub cache: CacheStats,
    /// Forward targets.
    pub upstreams: Vec<Upstream>,
}

/// One cached RRset (or denial) as `GET /v1/cache` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CacheEntry {
    /// Owner name, lower case, fully qualified (`www.example.org.`).
    pub name: String,
    /// Query type name (`A`, `AAAA`, `TYPE65534`).
    #[serde(rename = "type")]
    pub rtype: String,
    /// Seconds left before it expires (0 when stale).
    pub ttl: u32,
    /// Expired, kept for serve_stale.
    pub stale: bool,
}

/// What the admin plane may do to a running agent.
pub trait Control: Send + Sync + 'static {
    /// The running configuration.
    fn config(&self) -> ConfigView;
    /// Validates and (unless `dry_run`) applies a new Corefile, through the
    /// same path as the `reload` plugin and SIGUSR1; `if_match` guards
    /// against lost updates.
    fn apply(
        &self,
        corefile: String,
        dry_run: bool,
        if_match: Option<u64>,
    ) -> BoxFuture<'_, Result<Applied, ApplyError>>;
    /// Counters for queries, caches and upstreams.
    fn stats(&self) -> Stats;
    /// Cached entries, all or those of `name` (and `rtype`, a type name
    /// such as `A`). `BadRequest` for a name or type that cannot be parsed.
    fn cache_entries(
        &self,
        name: Option<&str>,
        rtype: Option<&str>,
    ) -> Result<Vec<CacheEntry>, BadRequest>;
    /// Purges every cache (no `name`), one name (all types), or one RRset;
    /// returns how many entries were removed.
    fn cache_purge(&self, name: Option<&str>, rtype: Option<&str>) -> Result<u64, BadRequest>;
    /// Forward targets of the running config.
    fn upstreams(&self) -> Vec<Upstream>;
    /// Plugins of the running chain, in chain order.
    fn plugins(&self) -> Vec<String>;
    /// The agent is alive: serving, not shutting down.
    fn healthy(&self) -> bool;
    /// Names of what is not ready; empty means ready.
    fn not_ready(&self) -> Vec<String>;
}
