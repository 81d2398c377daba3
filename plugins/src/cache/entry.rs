//! A cached reply: its wire bytes (without OPT) and the offsets of every
//! TTL in them, in one allocation, plus what a hit needs to decide.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::pkg::store::Weigh;

/// Key bits beyond the question.
pub(super) const DO: u8 = 1;
pub(super) const CD: u8 = 2;

/// One cached reply.
pub(super) struct Entry {
    /// The reply without OPT, then the TTL offsets as little-endian u16s.
    data: Box<[u8]>,
    wire_len: u16,
    /// DO and CD bits of the queries it answers.
    pub(super) key_bits: u8,
    /// Whether it sits in the denial tier.
    pub(super) negative: bool,
    /// When its TTL runs out (coarse seconds).
    pub(super) expires: u32,
    /// Its whole TTL in seconds, clamped (prefetch takes a share of it).
    pub(super) ttl: u32,
    /// Past this it is not served even stale (coarse seconds).
    pub(super) dead_at: u32,
    /// prefetch: when the last hit came (low 20 bits of its second) and
    /// the hits in the current run (12 bits), in one word to keep the
    /// entry small.
    popularity: AtomicU32,
    /// When a refresh last failed (0: never), for FAILURE_RECHECK.
    pub(super) last_fail: AtomicU32,
}

impl Weigh for Entry {
    fn bytes(&self) -> usize {
        size_of::<Self>() + self.data.len()
    }
    fn dead_at(&self) -> u32 {
        self.dead_at
    }
}

impl Entry {
    /// Packs a reply (already without OPT) and its TTL offsets.
    #[cfg(test)]
    pub(super) fn new(
        wire: &[u8],
        offsets: &[u16],
        key_bits: u8,
        negative: bool,
        stored: u32,
        ttl: u32,
        dead_at: u32,
    ) -> Option<Self> {
        let wire_len = u16::try_from(wire.len()).ok()?;
        let mut data = Vec::with_capacity(wire.len() + offsets.len() * 2);
        data.extend_from_slice(wire);
        for o in offsets {
            data.extend_from_slice(&o.to_le_bytes());
        }
        Some(Self {
            data: data.into_boxed_slice(),
            wire_len,
            key_bits,
            negative,
            expires: stored.saturating_add(ttl),
            ttl,
            dead_at,
            popularity: AtomicU32::new(0),
            last_fail: AtomicU32::new(0),
        })
    }

    /// Packs a reply straight from the upstream's bytes: its OPT left out,
    /// in one allocation. It is fresh until `expires`, of a whole TTL of
    /// `ttl` (an entry from a snapshot may have less of it left).
    pub(super) fn from_reply(
        reply: &[u8],
        a: &crate::pkg::wire::Analysis,
        key_bits: u8,
        negative: bool,
        expires: u32,
        ttl: u32,
        dead_at: u32,
    ) -> Option<Self> {
        let mut data = Vec::with_capacity(a.stored_len() + a.ttl_offsets.len() * 2);
        crate::pkg::wire::strip_opt(reply, a, &mut data);
        let wire_len = u16::try_from(data.len()).ok()?;
        for o in &a.ttl_offsets {
            data.extend_from_slice(&o.to_le_bytes());
        }
        Some(Self {
            data: data.into_boxed_slice(),
            wire_len,
            key_bits,
            negative,
            expires,
            ttl,
            dead_at,
            popularity: AtomicU32::new(0),
            last_fail: AtomicU32::new(0),
        })
    }

    /// The stored reply.
    pub(super) fn wire(&self) -> &[u8] {
        &self.data[..usize::from(self.wire_len)]
    }

    /// The TTL offsets, without allocating.
    pub(super) fn offsets(&self) -> impl Iterator<Item = u16> + '_ {
        self.data[usize::from(self.wire_len)..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    }

    /// Whether it answers this question (name compared without case).
    pub(super) fn answers(
        &self,
        qname_lower: &[u8],
        qtype: u16,
        qclass: u16,
        key_bits: u8,
    ) -> bool {
        if self.key_bits != key_bits {
            return false;
        }
        let w = self.wire();
        let end = 12 + qname_lower.len();
        let Some(name) = w.get(12..end) else {
            return false;
        };
        let Some(tc) = w.get(end..end + 4) else {
            return false;
        };
        name.eq_ignore_ascii_case(qname_lower)
            && u16::from_be_bytes([tc[0], tc[1]]) == qtype
            && u16::from_be_bytes([tc[2], tc[3]]) == qclass
    }

    /// When its TTL runs out (coarse seconds). Saturated when made:
    /// however large the TTL, the entry never wraps around into expired.
    pub(super) fn expires_at(&self) -> u32 {
        self.expires
    }

    /// Seconds of TTL left at `now` (0 once expired).
    pub(super) fn remaining(&self, now: u32) -> u32 {
        self.expires_at().saturating_sub(now)
    }

    /// Whether it is past its TTL.
    pub(super) fn expired(&self, now: u32) -> bool {
        now >= self.expires_at()
    }

    /// The prefetch hit count and last-hit stamp, as one word.
    pub(super) fn popularity(&self) -> u32 {
        self.popularity.load(Ordering::Relaxed)
    }

    /// Takes over a replaced entry's hit count (what [`Self::popularity`]
    /// returned), as CoreDNS does for a prefetched item: a popular name
    /// stays popular across its refreshes.
    pub(super) fn inherit_popularity(&self, word: u32) {
        self.popularity.store(word, Ordering::Relaxed);
    }

    /// Counts a hit for prefetch and says whether the entry is now popular:
    /// `amount` hits with no gap of `window` or more between them. Gaps are
    /// measured modulo 2^20 s (12 days), far beyond any prefetch window.
    pub(super) fn popular(&self, now: u32, amount: u32, window: u32) -> bool {
        const HIT_BITS: u32 = 12;
        const HIT_MAX: u32 = (1 << HIT_BITS) - 1;
        const TIME_MASK: u32 = (1 << (32 - HIT_BITS)) - 1;
        let stamp = now & TIME_MASK;
        let old = self.popularity.load(Ordering::Relaxed);
        let (last, hits) = (old >> HIT_BITS, old & HIT_MAX);
        let gap = stamp.wrapping_sub(last) & TIME_MASK;
        let n = if old != 0 && gap < window {
            (hits + 1).min(HIT_MAX)
        } else {
            1
        };
        // A lost race only miscounts one hit of a heuristic.
        self.popularity
            .store((stamp << HIT_BITS) | n, Ordering::Relaxed);
        n >= amount.min(HIT_MAX)
    }
}
