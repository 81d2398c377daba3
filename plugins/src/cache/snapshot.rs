//! A cache's side of a snapshot ([`crate::pkg::snapshot`]): its identity,
//! the export of every entry still servable and the import of entries
//! exported by another process (or this one, earlier).
//!
//! An import trusts nothing in an entry but its times and key bits: the
//! reply is analysed again as if it had just come from upstream, so its
//! tier, TTL offsets and lifetime are this cache's own (its settings may
//! differ from the exporter's), and a reply it would not have stored is
//! refused.

use std::net::IpAddr;

use super::entry::{CD, DO, Entry};
use super::{AXFR, IXFR, Inner, MIN_REPLY_LIMIT, key_hash};
use crate::pkg::inspect::{ImportStats, SnapshotEntry};
use crate::pkg::store::Store;
use crate::pkg::wire;
use crate::request::{MAX_NAME, is_subdomain, read_question};
use crate::setup::BlockInfo;

use super::CacheConfig;

/// The identity of the cache `cfg` configures in `block`.
pub(super) fn identity(cfg: &CacheConfig, block: &BlockInfo, bind: Option<&[IpAddr]>) -> String {
    identity_of(&block.server_name, bind, &block.zones, &cfg.zones)
}

/// `cache|SERVER|bind=ADDRS|zones=ZONES|cache=ZONES`, every list sorted,
/// `*` for no `bind`. Spelled out field by field (not `Debug`), so it stays
/// the same from one build of the agent to the next. Within one
/// configuration no two blocks share a port, an address and a zone, and a
/// block has at most one cache, so no two caches share one.
pub(super) fn identity_of(
    server: &str,
    bind: Option<&[IpAddr]>,
    block_zones: &[String],
    cache_zones: &[String],
) -> String {
    let sorted = |list: &[String]| {
        let mut v = list.to_vec();
        v.sort_unstable();
        v.dedup();
        v.join(",")
    };
    let addrs = bind.map_or_else(
        || "*".to_string(),
        |list| {
            let mut v = list.to_vec();
            v.sort_unstable();
            v.dedup();
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
    );
    format!(
        "cache|{server}|bind={addrs}|zones={}|cache={}",
        sorted(block_zones),
        sorted(cache_zones)
    )
}

/// What became of one imported entry.
enum Outcome {
    Imported { evicted: usize },
    Expired,
    Refused,
    Superseded,
}

impl Inner {
    /// Every entry of both tiers still servable at `now`, with its times
    /// from `now`.
    pub(super) fn export_entries(&self, now: u32, f: &mut dyn FnMut(SnapshotEntry<'_>)) {
        for store in [&self.positive, &self.negative] {
            store.for_each(|_, e| {
                if now >= e.dead_at {
                    return;
                }
                f(SnapshotEntry {
                    key_bits: e.key_bits,
                    fresh_for: e.remaining(now),
                    dead_in: e.dead_at - now,
                    wire: e.wire(),
                });
            });
        }
    }

    /// Imports `entries`, exported `elapsed` seconds before `now`; `unix`
    /// is the wall clock's seconds (for RRSIG validity, as on a miss).
    pub(super) fn import_entries(
        &self,
        entries: &[SnapshotEntry<'_>],
        elapsed: u64,
        now: u32,
        unix: u64,
    ) -> ImportStats {
        let mut stats = ImportStats::default();
        let mut lower = [0u8; MAX_NAME];
        for e in entries {
            match self.import_entry(e, elapsed, now, unix, &mut lower) {
                Outcome::Imported { evicted } => {
                    stats.imported += 1;
                    stats.evicted += evicted as u64;
                }
                Outcome::Expired => stats.expired += 1,
                Outcome::Refused => stats.refused += 1,
                Outcome::Superseded => stats.superseded += 1,
            }
        }
        self.update_gauges();
        stats
    }

    fn import_entry(
        &self,
        e: &SnapshotEntry<'_>,
        elapsed: u64,
        now: u32,
        unix: u64,
        lower: &mut [u8; MAX_NAME],
    ) -> Outcome {
        let left = |secs: u32| u32::try_from(u64::from(secs).saturating_sub(elapsed)).unwrap_or(0);
        let (fresh, dead) = (left(e.fresh_for), left(e.dead_in.max(e.fresh_for)));
        if dead == 0 || (fresh == 0 && self.cfg.stale.is_none()) {
            return Outcome::Expired;
        }
        let bits = e.key_bits;
        if bits & !(DO | CD) != 0 {
            return Outcome::Refused;
        }
        let Some((len, qt, qc, _)) = read_question(e.wire, lower) else {
            return Outcome::Refused;
        };
        let qn = &lower[..len];
        if qt == AXFR || qt == IXFR || !self.zones.iter().any(|z| is_subdomain(qn, z)) {
            return Outcome::Refused;
        }
        // As a reply from upstream is checked before it is stored.
        let Ok(a) = wire::analyze_at(e.wire, unix) else {
            return Outcome::Refused;
        };
        if a.truncated
            || a.opt.is_some()
            || (e.wire.len() > MIN_REPLY_LIMIT && !wire::compression_is_backward(e.wire))
        {
            return Outcome::Refused;
        }
        let Some((negative, ttl)) = self.lifetime(&a) else {
            return Outcome::Refused;
        };
        let off = if negative {
            &self.denial_off
        } else {
            &self.success_off
        };
        if off.iter().any(|z| is_subdomain(qn, z)) {
            return Outcome::Refused;
        }
        // Never longer than this cache's cap; the stale window is this
        // cache's too, but never past the exporter's.
        let fresh = fresh.min(ttl);
        let expires = now.saturating_add(fresh);
        let stale_secs = self.cfg.stale.map_or(0, |s| {
            u32::try_from(s.duration.as_secs()).unwrap_or(u32::MAX)
        });
        let dead_at = now
            .saturating_add(dead)
            .min(expires.saturating_add(stale_secs));
        if dead_at <= now {
            return Outcome::Expired;
        }
        let h = key_hash(qn, qt, qc, bits);
        let held_until = |store: &Store<Entry>| {
            store.get(h, |old| {
                old.answers(qn, qt, qc, bits).then(|| old.expires_at())
            })
        };
        let (tier, other, i) = if negative {
            (&self.negative, &self.positive, 1)
        } else {
            (&self.positive, &self.negative, 0)
        };
        if [tier, other]
            .into_iter()
            .filter_map(held_until)
            .any(|held| held >= expires)
        {
            return Outcome::Superseded;
        }
        // Its whole TTL is this cache's, as if it had just been answered
        // here: prefetch counts its share of that.
        let Some(entry) = Entry::from_reply(e.wire, &a, bits, negative, expires, ttl, dead_at)
        else {
            return Outcome::Refused;
        };
        other.remove_if(h, |old| old.answers(qn, qt, qc, bits));
        let evicted = tier.insert(h, entry, now);
        self.m.evictions[i].inc_by(evicted as u64);
        Outcome::Imported { evicted }
    }
}
