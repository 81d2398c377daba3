//! *cache* answers repeated queries from memory: a packet cache of whole
//! replies in wire form, with separate positive and negative tiers,
//! prefetch of popular names, serve-stale, and coalescing of concurrent
//! misses into one upstream query.
//!
//! A hit copies the stored bytes into the reply buffer and patches the ID,
//! the question's letter case, the header flags and the TTLs (at offsets
//! recorded when the entry was stored). It takes one shard read lock and
//! does not allocate. A miss passes the query on and the `response` step
//! stores the reply; a concurrent miss for the same key waits for the
//! first one (the plugin's network step) instead of asking again.

mod entry;
mod inspect;
mod metrics;
mod setup;
mod snapshot;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;

pub use setup::{CacheConfig, Prefetch, Stale, StaleMode, Tier};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::watch;

use self::entry::{CD, DO, Entry};
use crate::dispenser::SetupError;
use crate::pkg::metrics::striped::StripedCounter;
use crate::pkg::response::ADVERTISED_UDP_SIZE;
use crate::pkg::store::Store;
use crate::pkg::wire::{self, Kind};
use crate::pkg::zones;
use crate::plugin::{Abandon, Context, Flow, Plugin, Rerun, Ticket, Upstream, UpstreamFuture};
use crate::request::{Request, Transport, is_subdomain};
use crate::setup::{BlockInfo, Controller};

/// Shards per tier.
const SHARDS: usize = 64;
/// Most misses being coalesced at once (each a key with waiters).
const MAX_FLIGHTS: usize = 65_536;
/// How long a coalesced query waits for the first one; and how old a
/// flight may be before a new query takes over (its leader was lost).
const FLIGHT_WAIT: Duration = Duration::from_secs(5);
/// The smallest size a hit is cut to (UDP without EDNS): entries within it
/// are never cut.
const MIN_REPLY_LIMIT: usize = 512;
/// What a never-expiring empty reply is cached for (CoreDNS's failSafeTTL).
const FAILSAFE_TTL: u32 = 5;
const AXFR: u16 = 252;
const IXFR: u16 = 251;

/// Coarse seconds since the process started (1-based, so 0 means never).
fn now_secs() -> u32 {
    crate::pkg::clock::uptime_secs()
}

/// Parses `cache` and adds the handler.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let cfg = setup::parse(&mut c.d, &c.block.zones)?;
    // A reload that leaves the block and the settings unchanged keeps the
    // entries. `bind` runs before `cache`, so the addresses are known.
    let key = carry_key(&cfg, c.block, c.out.bind.as_deref());
    let cache = match c.services.carry_in.take::<Inner>(&key) {
        Some(inner) => Cache { inner },
        None => {
            let id = snapshot::identity(&cfg, c.block, c.out.bind.as_deref());
            Cache::build(cfg, &c.block.server_name, id).map_err(|e| c.d.err(e))?
        }
    };
    c.services.carry_out.keep(key, Arc::clone(&cache.inner));
    c.services.caches.push(Arc::clone(&cache.inner) as _);
    c.add_plugin(Box::new(cache));
    Ok(())
}

/// The key a cache is carried over a reload under: the block it belongs to
/// (its server name, which holds the port; its listen addresses, `None`
/// for every address; its zones) and its settings. Within one
/// configuration no two blocks share a port, an address and a zone (the
/// Corefile is refused), so two blocks on one port split by `bind`, with
/// the same zones and the same `cache` line, get keys of their own and
/// each finds its own entries again after a reload.
fn carry_key(cfg: &CacheConfig, block: &BlockInfo, bind: Option<&[IpAddr]>) -> String {
    let addrs = bind.map(|list| {
        let mut v = list.to_vec();
        v.sort_unstable();
        v.dedup();
        v
    });
    let mut zones = block.zones.clone();
    zones.sort_unstable();
    format!("cache|{}|{addrs:?}|{zones:?}|{cfg:?}", block.server_name)
}

/// What a finished miss or refresh left for those waiting on it.
#[derive(Clone)]
enum Outcome {
    /// The reply's bytes (the first asker's ID and spelling).
    Reply(Arc<[u8]>),
    /// The chain failed with this rcode.
    Failed(ResponseCode),
    /// The query that was asking was dropped (a limit, shutdown): those
    /// waiting ask for themselves.
    Abandoned,
}

/// A miss or refresh in progress for one key. Its channel is made only
/// when a second query comes to wait, so a lone miss allocates none. Its
/// `id` tells it from a later flight for the same key, so a late landing
/// (or a dropped query's ticket) ends only its own flight.
struct Flight {
    started: u32,
    id: u64,
    tx: Option<watch::Sender<Option<Outcome>>>,
}

impl Flight {
    fn new(now: u32, id: u64) -> Self {
        Self {
            started: now,
            id,
            tx: None,
        }
    }
}

/// Waits, at most `limit`, for a flight's outcome.
async fn wait(mut rx: watch::Receiver<Option<Outcome>>, limit: Duration) -> Option<Outcome> {
    let r = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
    r.ok()?.ok()?.clone()
}

/// Metric handles, resolved once. Those every lookup touches are striped.
struct Handles {
    requests: StripedCounter,
    misses: StripedCounter,
    prefetch: IntCounter,
    drops: IntCounter,
    stale: IntCounter,
    hits: [StripedCounter; 2],
    evictions: [IntCounter; 2],
    entries: [IntGauge; 2],
}

/// What a lookup found.
enum Hit {
    /// Served fresh; with whether to prefetch.
    Fresh { negative: bool, prefetch: bool },
    /// Served stale; with whether a refresh is due.
    Stale { refresh: bool },
    /// Stale, and the mode is verify: not served yet.
    StaleVerify,
}

struct Inner {
    cfg: CacheConfig,
    /// What a snapshot names it by ([`snapshot::identity`]).
    snapshot_id: String,
    zones: Vec<Vec<u8>>,
    success_off: Vec<Vec<u8>>,
    denial_off: Vec<Vec<u8>>,
    positive: Store<Entry>,
    negative: Store<Entry>,
    flights: Mutex<HashMap<u64, Flight>>,
    /// The next flight's id.
    flight_ids: AtomicU64,
    m: Handles,
}

/// The cache handler.
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

/// Statistics for the admin plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Positive entries.
    pub success_entries: usize,
    /// Negative entries.
    pub denial_entries: usize,
    /// Bytes held by entries.
    pub bytes: usize,
    /// Entries evicted so far.
    pub evictions: u64,
    /// Hits so far (fresh, both tiers).
    pub hits: u64,
    /// Misses so far.
    pub misses: u64,
    /// Stale answers so far.
    pub served_stale: u64,
    /// Prefetches started so far.
    pub prefetches: u64,
}

impl CacheStats {
    /// Hits over lookups (0 before the first lookup).
    pub fn hit_ratio(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

fn wires(list: &[String]) -> Result<Vec<Vec<u8>>, String> {
    list.iter()
        .map(|z| zones::to_wire(z).ok_or_else(|| format!("invalid zone '{z}'")))
        .collect()
}

/// The cache key's hash: FNV-1a over the lower-cased name, type, class and
/// the DO/CD bits.
fn key_hash(qname_lower: &[u8], qtype: u16, qclass: u16, bits: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    qname_lower.iter().for_each(|b| eat(*b));
    qtype.to_be_bytes().iter().for_each(|b| eat(*b));
    qclass.to_be_bytes().iter().for_each(|b| eat(*b));
    eat(bits);
    // Final mix, so shard bits and table bits are both well spread.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

fn key_bits(req: &Request<'_>) -> u8 {
    let mut b = 0;
    if req.dnssec_ok() {
        b |= DO;
    }
    if req.header().checking_disabled() {
        b |= CD;
    }
    b
}

impl Cache {
    /// Builds the cache (no I/O, no task). Its snapshot identity is the
    /// server name's and the cache's zones (setup adds the block's).
    pub fn new(cfg: CacheConfig, server: &str) -> Result<Self, String> {
        let id = snapshot::identity_of(server, None, &cfg.zones, &cfg.zones);
        Self::build(cfg, server, id)
    }

    fn build(cfg: CacheConfig, server: &str, snapshot_id: String) -> Result<Self, String> {
        let zones_label = cfg.zones.join(",");
        let l = |t: &'static str| [server, t, zones_label.as_str(), ""];
        let s = [server, zones_label.as_str(), ""];
        let m = Handles {
            requests: metrics::REQUESTS.with_label_values(&s),
            misses: metrics::MISSES.with_label_values(&s),
            prefetch: metrics::PREFETCH.with_label_values(&s),
            drops: metrics::DROPS.with_label_values(&s),
            stale: metrics::SERVED_STALE.with_label_values(&s),
            hits: [
                metrics::HITS.with_label_values(&l("success")),
                metrics::HITS.with_label_values(&l("denial")),
            ],
            evictions: [
                metrics::EVICTIONS.with_label_values(&l("success")),
                metrics::EVICTIONS.with_label_values(&l("denial")),
            ],
            entries: [
                metrics::ENTRIES.with_label_values(&l("success")),
                metrics::ENTRIES.with_label_values(&l("denial")),
            ],
        };
        let bytes = |share: usize| {
            if cfg.max_bytes == 0 {
                0
            } else {
                (cfg.max_bytes / share).max(1)
            }
        };
        let inner = Inner {
            zones: wires(&cfg.zones)?,
            success_off: wires(&cfg.success.disabled)?,
            denial_off: wires(&cfg.denial.disabled)?,
            positive: Store::new(cfg.success.capacity, bytes(2), SHARDS),
            negative: Store::new(cfg.denial.capacity, bytes(2), SHARDS),
            flights: Mutex::new(HashMap::new()),
            flight_ids: AtomicU64::new(1),
            m,
            cfg,
            snapshot_id,
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Entry counts and bytes.
    pub fn stats(&self) -> CacheStats {
        let p = self.inner.positive.stats();
        let n = self.inner.negative.stats();
        let m = &self.inner.m;
        CacheStats {
            success_entries: p.entries,
            denial_entries: n.entries,
            bytes: p.bytes + n.bytes,
            evictions: p.evictions + n.evictions,
            hits: m.hits[0].get() + m.hits[1].get(),
            misses: m.misses.get(),
            served_stale: m.stale.get(),
            prefetches: m.prefetch.get(),
        }
    }

    /// Drops every entry.
    pub fn flush(&self) {
        self.inner.positive.clear();
        self.inner.negative.clear();
        self.inner.update_gauges();
    }
}

// === impl Inner ===

impl Inner {
    fn covers(&self, req: &Request<'_>) -> bool {
        let t = req.qtype();
        t != AXFR
            && t != IXFR
            && self
                .zones
                .iter()
                .any(|z| is_subdomain(req.qname_lower(), z))
    }

    fn update_gauges(&self) {
        self.m.entries[0].set(i64::try_from(self.positive.len()).unwrap_or(i64::MAX));
        self.m.entries[1].set(i64::try_from(self.negative.len()).unwrap_or(i64::MAX));
    }

    /// Looks the query up in both tiers; serves a fresh (or immediate
    /// stale) entry into the reply. Allocation-free.
    fn lookup(&self, cx: &mut Context<'_>, h: u64, bits: u8, now: u32) -> Option<Hit> {
        self.lookup_with(cx, h, bits, now, true)
    }

    /// [`Inner::lookup`] for fresh entries only: what a query that waited
    /// takes, so nothing stale is written into a reply it may not send.
    fn lookup_fresh(&self, cx: &mut Context<'_>, h: u64, bits: u8, now: u32) -> Option<Hit> {
        self.lookup_with(cx, h, bits, now, false)
    }

    fn lookup_with(
        &self,
        cx: &mut Context<'_>,
        h: u64,
        bits: u8,
        now: u32,
        stale_too: bool,
    ) -> Option<Hit> {
        let req = cx.req;
        let (qn, qt, qc) = (req.qname_lower(), req.qtype(), req.qclass());
        for store in [&self.positive, &self.negative] {
            let hit = store.get(h, |e| {
                if !e.answers(qn, qt, qc, bits) {
                    return None;
                }
                if !e.expired(now) {
                    self.serve(cx, e, e.remaining(now), false);
                    let prefetch = self.cfg.prefetch.is_some_and(|p| {
                        let window = u32::try_from(p.window.as_secs()).unwrap_or(u32::MAX).max(1);
                        let left = e.remaining(now);
                        // CoreDNS takes the ceiling: TTL 15 at 10% is 2 s.
                        let threshold = (u64::from(e.ttl) * u64::from(p.percent))
                            .div_ceil(100)
                            .max(1);
                        e.popular(now, p.amount, window) && u64::from(left) <= threshold
                    });
                    return Some(Hit::Fresh {
                        negative: e.negative,
                        prefetch,
                    });
                }
                let stale = self.cfg.stale.filter(|_| stale_too)?;
                if now >= e.dead_at {
                    return None;
                }
                let recheck = u32::try_from(stale.failure_recheck.as_secs()).unwrap_or(u32::MAX);
                let last_fail = e.last_fail.load(Ordering::Relaxed);
                let refresh = last_fail == 0 || now.saturating_sub(last_fail) >= recheck;
                // verify asks first, unless a refresh failed within the
                // recheck spacing: then it serves stale at once, as immediate.
                if let StaleMode::Verify(_) = stale.mode
                    && refresh
                {
                    return Some(Hit::StaleVerify);
                }
                let ttl = u32::try_from(stale.response_ttl.as_secs()).unwrap_or(u32::MAX);
                self.serve(cx, e, ttl, true);
                Some(Hit::Stale { refresh })
            });
            if hit.is_some() {
                return hit;
            }
        }
        None
    }

    /// Writes an entry as the reply: ID, spelling, flags, TTLs, OPT.
    fn serve(&self, cx: &mut Context<'_>, e: &Entry, ttl: u32, stale: bool) {
        let req = cx.req;
        let buf = cx.reply.wire_buf();
        // Only what the client can take: a large entry asked over UDP is
        // cut here (as the server would cut it), not copied and patched whole.
        let opt_len = if req.edns().is_some() {
            wire::OPT_LEN
        } else {
            0
        };
        let cut = wire::copy_fitting(e.wire(), req.reply_limit().saturating_sub(opt_len), buf);
        wire::set_id(buf, req.id());
        wire::set_qname(buf, req.qname_wire());
        wire::set_hit_flags(buf, req.header().flags, req.dnssec_ok());
        if cut {
            wire::set_truncated(buf);
        }
        if stale || !self.cfg.keepttl {
            let bytes = ttl.to_be_bytes();
            let kept = buf.len();
            // Offsets rise through the message: stop at the cut.
            for o in e.offsets().take_while(|&o| usize::from(o) < kept) {
                if let Some(slot) = buf.get_mut(usize::from(o)..usize::from(o) + 4) {
                    slot.copy_from_slice(&bytes);
                }
            }
        }
        if let Some(edns) = req.edns() {
            wire::push_opt(buf, ADVERTISED_UDP_SIZE, edns.dnssec_ok);
        }
        cx.reply.mark_wire();
    }

    /// Writes another query's reply (a coalesced miss) as this one's.
    /// Refuses (the waiter then asks for itself) a reply that does not
    /// parse or does not carry the waiter's question: the name's spelling
    /// is written over that question.
    fn serve_bytes(&self, cx: &mut Context<'_>, bytes: &[u8]) -> bool {
        let Ok(a) = wire::analyze(bytes) else {
            return false;
        };
        let req = cx.req;
        if !wire::question_matches(bytes, req.qname_lower(), req.qtype(), req.qclass()) {
            return false;
        }
        let buf = cx.reply.wire_buf();
        wire::strip_opt(bytes, &a, buf);
        wire::set_id(buf, req.id());
        wire::set_qname(buf, req.qname_wire());
        if let Some(edns) = req.edns() {
            wire::push_opt(buf, ADVERTISED_UDP_SIZE, edns.dnssec_ok);
        }
        cx.reply.mark_wire();
        true
    }

    /// Stores a reply to `req` if it is cacheable. `refresh` replies keep a
    /// stale entry in place of a failure (RFC 8767) and, with
    /// `prefer_positive`, a positive one in place of a denial.
    #[cfg(test)]
    fn store(&self, req: &Request<'_>, bytes: &[u8], h: u64, bits: u8, now: u32, refresh: bool) {
        let unix = crate::pkg::clock::unix_secs();
        let Ok(a) = wire::analyze_at(bytes, unix) else {
            self.m.drops.inc();
            return;
        };
        self.store_analyzed(req, bytes, &a, h, bits, now, refresh);
    }

    /// The tier (`true`: denial) and the TTL the cache gives a reply of
    /// this analysis, as CoreDNS computes them; `None` for what it never
    /// caches. The TTL is the smallest over every record of every section
    /// (OPT aside; for a denial the SOA's MINIMUM too, RFC 2308 5), raised
    /// to the tier's MINTTL and capped by its TTL.
    fn lifetime(&self, a: &wire::Analysis) -> Option<(bool, u32)> {
        match a.kind {
            Kind::NoError | Kind::Delegation => {
                let t = a.min_ttl.unwrap_or(FAILSAFE_TTL);
                Some((false, clamp(t, &self.cfg.success)))
            }
            Kind::NameError | Kind::NoData => {
                let t = a.min_ttl.into_iter().chain(a.negative_ttl).min();
                Some((true, clamp(t.unwrap_or(FAILSAFE_TTL), &self.cfg.denial)))
            }
            Kind::ServerError if !self.cfg.servfail.is_zero() => Some((
                true,
                u32::try_from(self.cfg.servfail.as_secs())
                    .unwrap_or(u32::MAX)
                    .max(1),
            )),
            Kind::ServerError | Kind::OtherError | Kind::Meta | Kind::Update => None,
        }
    }

    /// [`Self::store`] with the reply already analyzed.
    #[expect(
        clippy::too_many_arguments,
        reason = "store's arguments plus its analysis"
    )]
    fn store_analyzed(
        &self,
        req: &Request<'_>,
        bytes: &[u8],
        a: &wire::Analysis,
        h: u64,
        bits: u8,
        now: u32,
        refresh: bool,
    ) {
        if !wire::question_matches(bytes, req.qname_lower(), req.qtype(), req.qclass()) {
            self.m.drops.inc();
            return;
        }
        if a.truncated {
            return;
        }
        // A hit may be cut to a client's size straight from the stored
        // bytes (wire::copy_fitting), which takes names compressed
        // backwards; a crafted reply that is not is passed on, not kept.
        if bytes.len() > MIN_REPLY_LIMIT && !wire::compression_is_backward(bytes) {
            self.m.drops.inc();
            return;
        }
        let qn = req.qname_lower();
        let Some((negative, ttl)) = self.lifetime(a) else {
            return;
        };
        let off = if negative {
            &self.denial_off
        } else {
            &self.success_off
        };
        if off.iter().any(|z| is_subdomain(qn, z)) {
            return;
        }
        let (qt, qc) = (req.qtype(), req.qclass());
        if let Some(stale) = self.cfg.stale {
            let held = |store: &Store<Entry>| {
                store
                    .get(h, |e| e.answers(qn, qt, qc, bits).then_some(()))
                    .is_some()
            };
            let has_positive = held(&self.positive);
            // A refresh that failed keeps the stale entry; with prefer_positive,
            // so does one that came back negative while a positive is kept.
            let keep_positive = stale.prefer_positive && negative && has_positive;
            let keep_any =
                refresh && a.kind == Kind::ServerError && (has_positive || held(&self.negative));
            if keep_positive || keep_any {
                return;
            }
        }
        let stale_secs = self.cfg.stale.map_or(0, |s| {
            u32::try_from(s.duration.as_secs()).unwrap_or(u32::MAX)
        });
        let dead_at = now.saturating_add(ttl).saturating_add(stale_secs);
        let Some(e) = Entry::from_reply(
            bytes,
            a,
            bits,
            negative,
            now.saturating_add(ttl),
            ttl,
            dead_at,
        ) else {
            return;
        };
        let (tier, other, i) = if negative {
            (&self.negative, &self.positive, 1)
        } else {
            (&self.positive, &self.negative, 0)
        };
        if refresh {
            // A prefetch or stale refresh keeps the hits gathered so far
            // (CoreDNS's Freq.Reset): a popular name is prefetched again
            // without first needing AMOUNT fresh hits.
            let word = [tier, other].into_iter().find_map(|s| {
                s.get(h, |old| {
                    old.answers(qn, qt, qc, bits).then(|| old.popularity())
                })
            });
            if let Some(word) = word {
                e.inherit_popularity(word);
            }
        }
        let moved = other.remove_if(h, |e| e.answers(qn, qt, qc, bits));
        let evicted = tier.insert(h, e, now);
        self.m.evictions[i].inc_by(evicted as u64);
        // Only the tiers that changed: each count is a sum over shards.
        self.m.entries[i].set(i64::try_from(tier.len()).unwrap_or(i64::MAX));
        if moved {
            self.m.entries[1 - i].set(i64::try_from(other.len()).unwrap_or(i64::MAX));
        }
    }

    /// Starts a flight for `h` unless one younger than [`FLIGHT_WAIT`] is
    /// running (or the table is full). Returns the new flight's id.
    fn take_off(&self, h: u64, now: u32) -> Option<u64> {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = flights.get(&h)
            && now.saturating_sub(f.started) < FLIGHT_WAIT.as_secs() as u32
        {
            return None;
        }
        if flights.len() >= MAX_FLIGHTS && !flights.contains_key(&h) {
            return None;
        }
        let id = self.flight_ids.fetch_add(1, Ordering::Relaxed);
        flights.insert(h, Flight::new(now, id));
        Some(id)
    }

    /// Ends flight `id` for `h` (if it is still the one running) with an
    /// outcome for those waiting on it.
    fn land(&self, h: u64, id: u64, outcome: impl FnOnce() -> Outcome) {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get(&h) {
                Some(f) if f.id == id => flights.remove(&h),
                _ => None,
            }
        };
        // Only coalesced queries need the outcome: none waiting, no copy.
        if let Some(tx) = flight.and_then(|f| f.tx)
            && tx.receiver_count() > 0
        {
            tx.send_replace(Some(outcome()));
        }
    }

    /// Whether a flight younger than [`FLIGHT_WAIT`] is running for `h`.
    fn flying(&self, h: u64) -> bool {
        let now = now_secs();
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&h)
            .is_some_and(|f| now.saturating_sub(f.started) < FLIGHT_WAIT.as_secs() as u32)
    }

    /// A receiver for the outcome of the flight in progress for `h`, if any.
    fn subscribe(&self, h: u64) -> Option<watch::Receiver<Option<Outcome>>> {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        let f = flights.get_mut(&h)?;
        Some(
            f.tx.get_or_insert_with(|| watch::channel(None).0)
                .subscribe(),
        )
    }

    /// Starts a background refresh of `req`'s key unless one is running
    /// (or the flight table is full: refreshes are bounded by it). The
    /// refresh asks over the transport the query came in on.
    fn refresh(self: &Arc<Self>, cx: &Context<'_>, h: u64, bits: u8, now: u32) {
        let Some(id) = self.take_off(h, now) else {
            return;
        };
        let inner = Arc::clone(self);
        let raw = cx.req.raw().to_vec();
        let client = cx.req.client();
        cx.next.spawn(
            raw.clone(),
            client,
            cx.req.transport(),
            Box::new(move |reply| inner.refreshed(&raw, client, h, id, bits, reply)),
        );
    }

    /// A background refresh finished.
    fn refreshed(
        &self,
        raw: &[u8],
        client: std::net::SocketAddr,
        h: u64,
        id: u64,
        bits: u8,
        rerun: Rerun,
    ) {
        let now = now_secs();
        let reply = match rerun {
            Rerun::Reply(bytes) => Some(bytes),
            Rerun::Failed => None,
            // Not run (no room, shutdown): not a failed refresh, so no
            // recheck spacing; the next stale hit may try again.
            Rerun::NotRun => {
                self.land(h, id, || Outcome::Abandoned);
                return;
            }
        };
        let Ok(req) = Request::parse(raw, client, Transport::Udp) else {
            self.land(h, id, || Outcome::Failed(ResponseCode::ServFail));
            return;
        };
        let failed = reply
            .as_deref()
            .is_none_or(|r| r.get(3).is_none_or(|b| b & 0x0f == 2));
        if failed {
            self.mark_failed(&req, h, bits, now);
        }
        match reply {
            Some(mut bytes) => {
                let unix = crate::pkg::clock::unix_secs();
                let Ok(a) = wire::analyze_at(&bytes, unix) else {
                    self.m.drops.inc();
                    self.land(h, id, || Outcome::Failed(ResponseCode::ServFail));
                    return;
                };
                // Those waiting on the refresh (verify) get the TTL the
                // entry gets, as a miss's askers do.
                if !self.cfg.keepttl
                    && let Some((_, ttl)) = self.lifetime(&a)
                {
                    wire::set_reply_ttls(&mut bytes, &a, ttl);
                }
                self.store_analyzed(&req, &bytes, &a, h, bits, now, true);
                self.land(h, id, || Outcome::Reply(Arc::from(bytes)));
            }
            None => self.land(h, id, || Outcome::Failed(ResponseCode::ServFail)),
        }
    }

    fn mark_failed(&self, req: &Request<'_>, h: u64, bits: u8, now: u32) {
        let (qn, qt, qc) = (req.qname_lower(), req.qtype(), req.qclass());
        for store in [&self.positive, &self.negative] {
            store.get(h, |e| {
                e.answers(qn, qt, qc, bits)
                    .then(|| e.last_fail.store(now, Ordering::Relaxed))
            });
        }
    }
}

impl Abandon for Inner {
    fn abandoned(&self, key: u64, id: u64) {
        self.land(key, id, || Outcome::Abandoned);
    }
}

fn clamp(ttl: u32, tier: &Tier) -> u32 {
    let min = u32::try_from(tier.min_ttl.as_secs()).unwrap_or(u32::MAX);
    let max = u32::try_from(tier.max_ttl.as_secs()).unwrap_or(u32::MAX);
    ttl.max(min).min(max).max(1)
}

impl Plugin for Cache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn query(&self, cx: &mut Context<'_>) -> Flow {
        let inner = &self.inner;
        if !inner.covers(cx.req) {
            return Flow::Next;
        }
        inner.m.requests.inc();
        let bits = key_bits(cx.req);
        let h = key_hash(cx.req.qname_lower(), cx.req.qtype(), cx.req.qclass(), bits);
        let now = now_secs();
        match inner.lookup(cx, h, bits, now) {
            Some(Hit::Fresh { negative, prefetch }) => {
                inner.m.hits[usize::from(negative)].inc();
                if prefetch {
                    inner.m.prefetch.inc();
                    inner.refresh(cx, h, bits, now);
                }
                return Flow::Answered;
            }
            Some(Hit::Stale { refresh }) => {
                inner.m.stale.inc();
                if refresh {
                    inner.refresh(cx, h, bits, now);
                }
                return Flow::Answered;
            }
            Some(Hit::StaleVerify) => return Flow::Upstream,
            None => {}
        }
        inner.m.misses.inc();
        match inner.take_off(h, now) {
            // This query asks; the ticket ends its flight however it ends.
            Some(id) => {
                let owner: Arc<dyn Abandon> = Arc::clone(&self.inner) as Arc<dyn Abandon>;
                cx.reply.hold(Ticket::new(owner, h, id));
                Flow::Next
            }
            // Someone is already asking: wait for that answer.
            None if inner.flying(h) => Flow::Upstream,
            // The flight table is full: ask without coalescing.
            None => Flow::Next,
        }
    }

    fn response(&self, cx: &mut Context<'_>) {
        let inner = &self.inner;
        if !inner.covers(cx.req) {
            return;
        }
        let bits = key_bits(cx.req);
        let h = key_hash(cx.req.qname_lower(), cx.req.qtype(), cx.req.qclass(), bits);
        // The flight this query started, if it started one.
        let flight = cx.reply.take_ticket().map(Ticket::redeem);
        let land = |outcome: &dyn Fn() -> Outcome| {
            if let Some((key, id)) = flight {
                inner.land(key, id, outcome);
            }
        };
        if !cx.reply.is_written() {
            let rc = cx.reply.failed().unwrap_or(ResponseCode::ServFail);
            land(&|| Outcome::Failed(rc));
            return;
        }
        if cx.reply.finish().is_err() {
            land(&|| Outcome::Failed(ResponseCode::ServFail));
            return;
        }
        let unix = crate::pkg::clock::unix_secs();
        let Ok(a) = wire::analyze_at(cx.reply.wire(), unix) else {
            inner.m.drops.inc();
            let bytes = cx.reply.wire();
            land(&|| Outcome::Reply(Arc::from(bytes)));
            return;
        };
        // The reply carries the TTL the entry gets, in every record (as
        // CoreDNS), so the first answer and the hits after it agree.
        if !inner.cfg.keepttl
            && let Some((_, ttl)) = inner.lifetime(&a)
        {
            wire::set_reply_ttls(cx.reply.wire_buf(), &a, ttl);
        }
        let bytes = cx.reply.wire();
        inner.store_analyzed(cx.req, bytes, &a, h, bits, now_secs(), false);
        land(&|| Outcome::Reply(Arc::from(bytes)));
    }

    fn upstream(&self) -> Option<&dyn Upstream> {
        Some(self)
    }
}

impl Upstream for Cache {
    fn exchange<'a>(&'a self, cx: &'a mut Context<'_>) -> UpstreamFuture<'a> {
        Box::pin(async move {
            let inner = &self.inner;
            let bits = key_bits(cx.req);
            let h = key_hash(cx.req.qname_lower(), cx.req.qtype(), cx.req.qclass(), bits);
            let now = now_secs();
            // Answered meanwhile?
            if let Some(Hit::Fresh { negative, .. }) = inner.lookup_fresh(cx, h, bits, now) {
                inner.m.hits[usize::from(negative)].inc();
                return Flow::Answered;
            }
            let waiting = inner.subscribe(h);
            let verify = inner.cfg.stale.and_then(|s| match s.mode {
                StaleMode::Verify(t) => Some(t),
                StaleMode::Immediate => None,
            });
            // An asker with a stale entry to fall back on gets an answer by
            // the verify timeout (from its arrival), whether it started the
            // refresh or joined one; a plain miss waits for the flight.
            let verify_left = verify
                .filter(|_| inner.has_stale(cx.req, h, bits, now))
                .map(|t| t.saturating_sub(cx.start.elapsed()));
            let (rx, limit) = match (waiting, verify_left) {
                (Some(rx), Some(t)) => (Some(rx), t),
                (Some(rx), None) => (Some(rx), FLIGHT_WAIT),
                (None, Some(t)) => {
                    inner.refresh(cx, h, bits, now);
                    (inner.subscribe(h), t)
                }
                // Nothing to wait for: ask ourselves.
                (None, None) => return Flow::Next,
            };
            // A refresh that ended before we could wait has stored its answer.
            let outcome = match rx {
                Some(rx) => wait(rx, limit).await,
                None => {
                    if let Some(Hit::Fresh { negative, .. }) =
                        inner.lookup_fresh(cx, h, bits, now_secs())
                    {
                        inner.m.hits[usize::from(negative)].inc();
                        return Flow::Answered;
                    }
                    None
                }
            };
            match outcome {
                Some(Outcome::Reply(bytes))
                    if bytes.get(3).is_some_and(|b| b & 0x0f != 2) || verify.is_none() =>
                {
                    if inner.serve_bytes(cx, &bytes) {
                        return Flow::Answered;
                    }
                    Flow::Next
                }
                Some(Outcome::Failed(rc)) if verify.is_none() => Flow::Fail(rc, None),
                _ => {
                    // verify: the upstream failed or was slow; stale it is.
                    if verify.is_some() && inner.serve_stale(cx, h, bits, now_secs()) {
                        inner.m.stale.inc();
                        return Flow::Answered;
                    }
                    Flow::Next
                }
            }
        })
    }
}

impl Inner {
    /// Whether a stale entry that may still be served is held for `req`.
    fn has_stale(&self, req: &Request<'_>, h: u64, bits: u8, now: u32) -> bool {
        let (qn, qt, qc) = (req.qname_lower(), req.qtype(), req.qclass());
        [&self.positive, &self.negative].iter().any(|store| {
            store
                .get(h, |e| {
                    (e.answers(qn, qt, qc, bits) && now < e.dead_at).then_some(())
                })
                .is_some()
        })
    }

    /// Serves a stale entry (verify mode, after the upstream failed).
    fn serve_stale(&self, cx: &mut Context<'_>, h: u64, bits: u8, now: u32) -> bool {
        let Some(stale) = self.cfg.stale else {
            return false;
        };
        let ttl = u32::try_from(stale.response_ttl.as_secs()).unwrap_or(u32::MAX);
        let req = cx.req;
        let (qn, qt, qc) = (req.qname_lower(), req.qtype(), req.qclass());
        for store in [&self.positive, &self.negative] {
            let served = store.get(h, |e| {
                (e.answers(qn, qt, qc, bits) && now < e.dead_at)
                    .then(|| self.serve(cx, e, ttl, true))
            });
            if served.is_some() {
                return true;
            }
        }
        false
    }
}
