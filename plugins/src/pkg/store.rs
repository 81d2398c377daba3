//! A sharded, bounded, concurrent store for the cache: values keyed by a
//! 64-bit hash, at most `capacity` entries and `max_bytes` bytes, evicting
//! dead entries first and then by SIEVE (Zhang et al., "SIEVE is Simpler
//! than LRU", NSDI'24).
//!
//! Layout of one shard (the shard is picked by the hash's top bits):
//!
//! - a dense slab `Vec<Slot<V>>`: the hash, the SIEVE queue's two links (slab
//!   indices), the cached `dead_at`, the value's weight with the visited bit
//!   in its top bit, and the value itself. An insert that evicts takes the
//!   victim's slot; any other removal moves the last slot into the hole, so
//!   the slab never has holes and never exceeds the capacity;
//! - an open-addressing index (linear probing, backward-shift deletion, no
//!   tombstones) of 8-byte words: 32 bits of the mixed hash (which also pick
//!   the home bucket) and the slot number. It grows by doubling up to
//!   `capacity * 4/3` buckets and no further, so its load stays at or below 3/4.
//!
//! The store's own overhead is 24 bytes of slot header plus about 11 bytes of
//! index per entry once full (the `store_overhead` test measures it; while
//! the index is still growing it is 3/8 to 3/4 full, so up to 21 bytes). A
//! load of 1/2 made the Zipf trace of `benches/cache_store.rs` (a third of
//! it misses) about 30% faster, for 5 more bytes per entry; hits barely
//! change.
//!
//! A hit takes the shard's read lock and sets the visited bit with a relaxed
//! atomic (only when it is not set yet, so a hot entry is read-only); it does
//! not allocate. Inserts, removals and evictions take the write lock.
//!
//! Eviction: when an insert needs room and an entry may have died
//! (`dead_at <= now`), the shard is swept once for every dead entry (at most
//! once per shard per `now` second, so already-dead inserts cannot make every
//! insert sweep); then the SIEVE hand walks from the oldest entry toward the
//! newest, clearing visited bits, and evicts the first entry that is
//! unvisited (or dead). Survivors keep their place in the queue, which is
//! what makes SIEVE resist scans of one-hit keys.
//!
//! What it refuses: a value whose weight exceeds a shard's byte budget (or
//! 2 GiB) is not stored, and a zero capacity stores nothing.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// What the store needs to know about a value.
pub trait Weigh {
    /// Heap + inline bytes the value holds (for the max_bytes bound). It must
    /// not change while the value is stored.
    fn bytes(&self) -> usize;
    /// When it stops being useful at all (coarse seconds, same clock as `now`
    /// in [`Store::insert`]): entries past this are evicted before live ones.
    fn dead_at(&self) -> u32;
}

/// Counters of a [`Store`], kept up to date as it changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Entries stored.
    pub entries: usize,
    /// Sum of the stored values' [`Weigh::bytes`].
    pub bytes: usize,
    /// Entries evicted to make room (dead or by SIEVE) since the store was made.
    pub evictions: u64,
}

/// Most shards a store will make (more are pointless and cost memory).
const MAX_SHARDS: usize = 1 << 12;
/// Most entries one shard holds: slot numbers are `u32`, with `NIL` reserved.
const MAX_SHARD_CAPACITY: usize = 1 << 31;
/// "No slot" in the queue links and the hand.
const NIL: u32 = u32::MAX;
/// The visited bit, kept in the top bit of a slot's weight.
const VISITED: u32 = 1 << 31;
/// Most entries per index bucket, as a fraction.
const LOAD_NUM: usize = 3;
const LOAD_DEN: usize = 4;
/// Heaviest value a slot can record.
const MAX_WEIGHT: usize = (VISITED - 1) as usize;

/// A sharded, bounded map from 64-bit hashes to values, evicting by SIEVE.
///
/// The callbacks given to its methods run under a shard's lock: they must not
/// call back into the same store.
pub struct Store<V> {
    cells: Box<[Cell<V>]>,
    /// log2 of the number of shards.
    shard_bits: u32,
}

/// One shard and the counters published from it (read without the lock).
/// Aligned so that two shards' locks never share a cache line.
#[repr(align(128))]
struct Cell<V> {
    shard: RwLock<Shard<V>>,
    entries: AtomicUsize,
    bytes: AtomicUsize,
    evictions: AtomicU64,
}

// === impl Store ===

impl<V: Weigh> Store<V> {
    /// A store of at most `capacity` entries and `max_bytes` bytes (0 = no
    /// byte bound), both split evenly over `shards` shards.
    ///
    /// `shards` should be a power of two; another number is rounded down to
    /// one (0 counts as 1). The number is also lowered until every shard
    /// holds at least one entry (and one byte), so the total bounds hold
    /// exactly; at most 4096 shards are made.
    pub fn new(capacity: usize, max_bytes: usize, shards: usize) -> Self {
        let mut n = shards.clamp(1, MAX_SHARDS);
        n = 1 << n.ilog2();
        while n > 1 && (n > capacity || (max_bytes != 0 && n > max_bytes)) {
            n /= 2;
        }
        let share = |total: usize, i: usize| total / n + usize::from(i < total % n);
        let cells = (0..n)
            .map(|i| {
                let cap = share(capacity, i).min(MAX_SHARD_CAPACITY);
                let bytes = if max_bytes == 0 {
                    usize::MAX
                } else {
                    share(max_bytes, i)
                };
                Cell {
                    shard: RwLock::new(Shard::new(cap, bytes)),
                    entries: AtomicUsize::new(0),
                    bytes: AtomicUsize::new(0),
                    evictions: AtomicU64::new(0),
                }
            })
            .collect();
        Self {
            cells,
            shard_bits: n.ilog2(),
        }
    }

    /// Looks up `hash`; `f` sees the value and returns `Some(result)` if it
    /// is the wanted one (the caller verifies the full key inside `f`, since
    /// different keys can share a 64-bit hash). A `Some` marks the entry as
    /// recently used for eviction. Does not allocate and takes no write lock.
    pub fn get<R>(&self, hash: u64, f: impl FnOnce(&V) -> Option<R>) -> Option<R> {
        let cell = self.cell(hash);
        let shard = read(&cell.shard);
        shard.get(hash, f)
    }

    /// Inserts or replaces the value for `hash`; evicts to stay within both
    /// bounds (dead entries — `dead_at <= now` — first, then by SIEVE) and
    /// returns how many were evicted. A replaced value is not counted.
    ///
    /// A value heavier than a shard's byte budget is not stored (an older
    /// value for `hash` is still removed, so it cannot be served instead).
    pub fn insert(&self, hash: u64, value: V, now: u32) -> usize {
        let weight = value.bytes();
        let dead_at = value.dead_at();
        let cell = self.cell(hash);
        let mut shard = write(&cell.shard);
        let evicted = shard.insert(hash, value, weight, dead_at, now);
        cell.publish(&shard, evicted);
        evicted
    }

    /// Removes `hash` if `f(&value)` says so; returns whether it did.
    pub fn remove_if(&self, hash: u64, f: impl FnOnce(&V) -> bool) -> bool {
        let cell = self.cell(hash);
        let removed = {
            let mut shard = write(&cell.shard);
            let Some(i) = shard.find(hash) else {
                return false;
            };
            if !f(&shard.slots[i].value) {
                return false;
            }
            let value = shard.remove_at(i);
            cell.publish(&shard, 0);
            value
        };
        drop(removed);
        true
    }

    /// Keeps only the values for which `f` is true (admin purge by name);
    /// returns how many were removed. Locks one shard at a time.
    pub fn retain(&self, mut f: impl FnMut(&V) -> bool) -> usize {
        let mut removed = 0;
        for cell in &*self.cells {
            let mut shard = write(&cell.shard);
            removed += shard.retain(&mut f);
            cell.publish(&shard, 0);
        }
        removed
    }

    /// Visits every value with its hash (admin listing), shard by shard,
    /// under each shard's read lock.
    pub fn for_each(&self, mut f: impl FnMut(u64, &V)) {
        for cell in &*self.cells {
            let shard = read(&cell.shard);
            for slot in &shard.slots {
                f(slot.hash, &slot.value);
            }
        }
    }

    /// Removes every entry and releases the memory the store held for them.
    /// Not counted as evictions.
    pub fn clear(&self) {
        for cell in &*self.cells {
            let old = {
                let mut shard = write(&cell.shard);
                let fresh = Shard::new(shard.cap, shard.max_bytes);
                let old = std::mem::replace(&mut *shard, fresh);
                cell.publish(&shard, 0);
                old
            };
            // The values are dropped outside the lock.
            drop(old);
        }
    }

    /// The counters, summed over the shards without locking any.
    pub fn stats(&self) -> StoreStats {
        let mut s = StoreStats::default();
        for cell in &*self.cells {
            s.entries += cell.entries.load(Relaxed);
            s.bytes += cell.bytes.load(Relaxed);
            s.evictions += cell.evictions.load(Relaxed);
        }
        s
    }

    /// Entries stored.
    pub fn len(&self) -> usize {
        self.cells.iter().map(|c| c.entries.load(Relaxed)).sum()
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.cells.iter().all(|c| c.entries.load(Relaxed) == 0)
    }

    /// Bytes the store's own structures have allocated (slab slots, with the
    /// values' inline part, and index buckets), not counting the values'
    /// heap. Locks each shard for reading in turn; for memory reports.
    pub fn table_bytes(&self) -> usize {
        let shards = self.cells.len() * size_of::<Cell<V>>();
        self.cells.iter().fold(shards, |sum, cell| {
            let shard = read(&cell.shard);
            sum + shard.slots.capacity() * size_of::<Slot<V>>() + shard.index.bytes()
        })
    }

    /// Number of shards (after the rounding described at [`Store::new`]).
    pub fn shards(&self) -> usize {
        self.cells.len()
    }

    fn cell(&self, hash: u64) -> &Cell<V> {
        // The top `shard_bits` bits choose the shard; the index mixes all 64.
        let i = (hash.rotate_left(self.shard_bits) as usize) & (self.cells.len() - 1);
        &self.cells[i]
    }
}

impl<V> fmt::Debug for Store<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: usize = self.cells.iter().map(|c| c.entries.load(Relaxed)).sum();
        f.debug_struct("Store")
            .field("shards", &self.cells.len())
            .field("entries", &entries)
            .finish_non_exhaustive()
    }
}

impl<V> Cell<V> {
    /// Copies the shard's counters where `stats` reads them without a lock.
    fn publish(&self, shard: &Shard<V>, evicted: usize) {
        self.entries.store(shard.slots.len(), Relaxed);
        self.bytes.store(shard.bytes, Relaxed);
        if evicted > 0 {
            self.evictions.fetch_add(evicted as u64, Relaxed);
        }
    }
}

/// A poisoned lock only means a callback panicked; every shard method leaves
/// the shard consistent before it calls out, so the data is still good.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

// === impl Shard ===

/// One entry. The queue runs from `head` (newest) to `tail` (oldest):
/// `prev` points toward the head, `next` toward the tail.
struct Slot<V> {
    hash: u64,
    prev: u32,
    next: u32,
    /// Cached `dead_at`, so the dead sweep never touches the value.
    dead_at: u32,
    /// The value's weight in bytes, with `VISITED` in the top bit.
    weight: AtomicU32,
    value: V,
}

impl<V> Slot<V> {
    fn bytes(&self) -> usize {
        (self.weight.load(Relaxed) & !VISITED) as usize
    }
}

struct Shard<V> {
    slots: Vec<Slot<V>>,
    index: Index,
    head: u32,
    tail: u32,
    /// SIEVE's hand: the next candidate for eviction; `NIL` means the tail.
    hand: u32,
    cap: usize,
    /// `usize::MAX` when there is no byte bound.
    max_bytes: usize,
    bytes: usize,
    /// At most the smallest `dead_at` stored (exact right after a sweep).
    min_dead: u32,
    /// The `now` of the last dead sweep.
    swept_at: Option<u32>,
}

impl<V: Weigh> Shard<V> {
    fn new(cap: usize, max_bytes: usize) -> Self {
        Self {
            slots: Vec::new(),
            index: Index::new(cap),
            head: NIL,
            tail: NIL,
            hand: NIL,
            cap,
            max_bytes,
            bytes: 0,
            min_dead: u32::MAX,
            swept_at: None,
        }
    }

    fn find(&self, hash: u64) -> Option<usize> {
        self.index
            .find(tag(hash), |s| {
                self.slots.get(s).is_some_and(|x| x.hash == hash)
            })
            .map(|(_, s)| s)
    }

    fn get<R>(&self, hash: u64, f: impl FnOnce(&V) -> Option<R>) -> Option<R> {
        let slot = &self.slots[self.find(hash)?];
        let r = f(&slot.value)?;
        // Test first: a hot entry's bit is already set, and a plain load
        // keeps its cache line shared between cores.
        if slot.weight.load(Relaxed) & VISITED == 0 {
            slot.weight.fetch_or(VISITED, Relaxed);
        }
        Some(r)
    }

    fn full(&self, weight: usize) -> bool {
        self.slots.len() >= self.cap || self.bytes.saturating_add(weight) > self.max_bytes
    }

    fn insert(&mut self, hash: u64, value: V, weight: usize, dead_at: u32, now: u32) -> usize {
        let mut visited = 0;
        if let Some(i) = self.find(hash) {
            visited = self.slots[i].weight.load(Relaxed) & VISITED;
            drop(self.remove_at(i));
        }
        if self.cap == 0 || weight > self.max_bytes || weight > MAX_WEIGHT {
            return 0;
        }
        let slot = Slot {
            hash,
            prev: NIL,
            next: NIL,
            dead_at,
            weight: AtomicU32::new(weight as u32 | visited),
            value,
        };
        let mut evicted = 0;
        if self.full(weight) && self.min_dead <= now && self.swept_at != Some(now) {
            evicted += self.sweep_dead(now);
        }
        // Each round removes an entry, so this ends within `cap` rounds.
        let i = loop {
            if !self.full(weight) {
                let len = self.slots.len();
                if len == self.slots.capacity() {
                    // Grow by doubling, but never past the capacity.
                    self.slots.reserve_exact(len.max(4).min(self.cap - len));
                }
                self.slots.push(slot);
                break len;
            }
            let Some(o) = self.victim(now) else {
                return evicted;
            };
            evicted += 1;
            let left = self.bytes.saturating_sub(self.slots[o].bytes());
            if left.saturating_add(weight) <= self.max_bytes {
                // The last eviction: the new entry takes the victim's slot,
                // so no other slot moves.
                self.detach(o);
                drop(std::mem::replace(&mut self.slots[o], slot));
                break o;
            }
            drop(self.remove_at(o));
        };
        self.attach(i);
        evicted
    }

    /// Picks the entry SIEVE evicts (a dead one counts as unvisited) and
    /// leaves the hand on it; `None` when the shard is empty.
    fn victim(&mut self, now: u32) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut o = if self.hand == NIL {
            self.tail
        } else {
            self.hand
        };
        // One lap clears every bit, so two laps always find a victim.
        for _ in 0..2 * self.slots.len() {
            let slot = &self.slots[o as usize];
            let w = slot.weight.load(Relaxed);
            if w & VISITED == 0 || slot.dead_at <= now {
                break;
            }
            slot.weight.store(w & !VISITED, Relaxed);
            o = if slot.prev == NIL {
                self.tail
            } else {
                slot.prev
            };
        }
        // Removing it moves the hand on to its newer neighbour.
        self.hand = o;
        Some(o as usize)
    }

    /// Puts slot `i` (already in the slab) at the head of the queue and in
    /// the index, and counts it.
    fn attach(&mut self, i: usize) {
        let (hash, dead_at, bytes) = {
            let s = &mut self.slots[i];
            s.prev = NIL;
            s.next = self.head;
            (s.hash, s.dead_at, s.bytes())
        };
        self.set_prev(self.head, i as u32);
        self.head = i as u32;
        self.index.insert(tag(hash), i, self.slots.len());
        self.bytes += bytes;
        self.min_dead = self.min_dead.min(dead_at);
    }

    /// Takes slot `i` out of the queue and the index, and uncounts it; it
    /// stays in the slab.
    fn detach(&mut self, i: usize) {
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        self.set_next(prev, next);
        self.set_prev(next, prev);
        if self.hand as usize == i {
            self.hand = prev;
        }
        self.index.remove(tag(self.slots[i].hash), i);
        self.bytes = self.bytes.saturating_sub(self.slots[i].bytes());
    }

    /// Removes every dead entry; recomputes `min_dead` exactly.
    fn sweep_dead(&mut self, now: u32) -> usize {
        let mut removed = 0;
        let mut min = u32::MAX;
        // Backwards: `remove_at(i)` moves in the last slot, already seen.
        for i in (0..self.slots.len()).rev() {
            let d = self.slots[i].dead_at;
            if d <= now {
                drop(self.remove_at(i));
                removed += 1;
            } else {
                min = min.min(d);
            }
        }
        self.min_dead = min;
        self.swept_at = Some(now);
        removed
    }

    fn retain(&mut self, f: &mut impl FnMut(&V) -> bool) -> usize {
        let mut removed = 0;
        let mut min = u32::MAX;
        for i in (0..self.slots.len()).rev() {
            if f(&self.slots[i].value) {
                min = min.min(self.slots[i].dead_at);
            } else {
                drop(self.remove_at(i));
                removed += 1;
            }
        }
        self.min_dead = min;
        removed
    }

    /// Takes slot `i` out of the queue, the index and the slab; the last slot
    /// moves into its place.
    fn remove_at(&mut self, i: usize) -> V {
        self.detach(i);
        let last = self.slots.len() - 1;
        let slot = self.slots.swap_remove(i);
        if i != last {
            let moved = &self.slots[i];
            let (prev, next, hash) = (moved.prev, moved.next, moved.hash);
            self.set_next(prev, i as u32);
            self.set_prev(next, i as u32);
            if self.hand as usize == last {
                self.hand = i as u32;
            }
            self.index.renumber(tag(hash), last, i);
        }
        slot.value
    }

    /// Points `at`'s tail-ward link to `to` (or the head, if `at` is `NIL`).
    fn set_next(&mut self, at: u32, to: u32) {
        match at {
            NIL => self.head = to,
            at => self.slots[at as usize].next = to,
        }
    }

    /// Points `at`'s head-ward link to `to` (or the tail, if `at` is `NIL`).
    fn set_prev(&mut self, at: u32, to: u32) {
        match at {
            NIL => self.tail = to,
            at => self.slots[at as usize].prev = to,
        }
    }
}

// === impl Index ===

/// 32 bits of the mixed hash: they choose the home bucket and are kept in
/// the bucket, so most mismatches are settled without reading the slot.
fn tag(hash: u64) -> u32 {
    // Folded multiply: every output bit depends on every input bit, so the
    // shard bits (the hash's top bits, equal within a shard) do not matter.
    let p = u128::from(hash) * 0x9E37_79B9_7F4A_7C15;
    ((p as u64 ^ (p >> 64) as u64) >> 32) as u32
}

/// Open addressing with linear probing. A bucket is `tag << 32 | slot + 1`,
/// 0 when empty; the home bucket is `tag * buckets >> 32`, so any bucket
/// count works and growth needs no slot reads.
struct Index {
    buckets: Box<[u64]>,
    /// The size it grows to at most: room for `cap` entries at load 3/4.
    limit: usize,
}

impl Index {
    fn new(cap: usize) -> Self {
        Self {
            buckets: Box::default(),
            limit: cap.saturating_mul(LOAD_DEN) / LOAD_NUM + 2,
        }
    }

    fn bytes(&self) -> usize {
        self.buckets.len() * size_of::<u64>()
    }

    fn home(tag: u32, n: usize) -> usize {
        ((u64::from(tag) * n as u64) >> 32) as usize
    }

    /// The bucket and slot of the entry with `tag` for which `is(slot)`.
    fn find(&self, tag: u32, mut is: impl FnMut(usize) -> bool) -> Option<(usize, usize)> {
        let n = self.buckets.len();
        if n == 0 {
            return None;
        }
        let mut b = Self::home(tag, n);
        for _ in 0..n {
            let e = self.buckets[b];
            if e == 0 {
                return None;
            }
            let slot = (e as u32 as usize).wrapping_sub(1);
            if (e >> 32) as u32 == tag && is(slot) {
                return Some((b, slot));
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
        None
    }

    /// Adds `slot` under `tag`, to make `count` entries; it grows first if
    /// that passes the load bound.
    fn insert(&mut self, tag: u32, slot: usize, count: usize) {
        let n = self.buckets.len();
        if count.saturating_mul(LOAD_DEN) > n.saturating_mul(LOAD_NUM) && n < self.limit {
            self.grow(n.saturating_mul(2).max(8).min(self.limit));
        }
        self.place(entry(tag, slot));
    }

    fn grow(&mut self, size: usize) {
        let old = std::mem::replace(&mut self.buckets, vec![0; size].into_boxed_slice());
        for e in old.iter().copied().filter(|&e| e != 0) {
            self.place(e);
        }
    }

    /// Puts `e` in the first free bucket from its home. The load bound
    /// guarantees one; if none is found the entry is dropped rather than
    /// looping (never happens).
    fn place(&mut self, e: u64) {
        let n = self.buckets.len();
        if n == 0 {
            return;
        }
        let mut b = Self::home((e >> 32) as u32, n);
        for _ in 0..n {
            if self.buckets[b] == 0 {
                self.buckets[b] = e;
                return;
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
    }

    /// Removes the entry for `slot` (backward-shift deletion: the entries
    /// after it that may move closer to home do, so no tombstones).
    fn remove(&mut self, tag: u32, slot: usize) {
        let Some((mut hole, _)) = self.find(tag, |s| s == slot) else {
            return;
        };
        let n = self.buckets.len();
        let dist = |from: usize, to: usize| if to >= from { to - from } else { to + n - from };
        let mut b = hole;
        for _ in 0..n {
            b = if b + 1 == n { 0 } else { b + 1 };
            let e = self.buckets[b];
            if e == 0 {
                break;
            }
            let home = Self::home((e >> 32) as u32, n);
            if dist(home, b) >= dist(hole, b) {
                self.buckets[hole] = e;
                hole = b;
            }
        }
        self.buckets[hole] = 0;
    }

    /// The entry for slot `from` now points to slot `to`.
    fn renumber(&mut self, tag: u32, from: usize, to: usize) {
        if let Some((b, _)) = self.find(tag, |s| s == from) {
            self.buckets[b] = entry(tag, to);
        }
    }
}

fn entry(tag: u32, slot: usize) -> u64 {
    (u64::from(tag) << 32) | (slot as u64 + 1)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Val {
        key: u64,
        bytes: usize,
        dead_at: u32,
    }

    impl Weigh for Val {
        fn bytes(&self) -> usize {
            self.bytes
        }
        fn dead_at(&self) -> u32 {
            self.dead_at
        }
    }

    fn val(key: u64, bytes: usize, dead_at: u32) -> Val {
        Val {
            key,
            bytes,
            dead_at,
        }
    }

    /// A well-spread hash for a small key (keys themselves are poor hashes).
    fn h(key: u64) -> u64 {
        splitmix(&mut key.wrapping_mul(0x2545_F491_4F6C_DD1D))
    }

    fn splitmix(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Gets key `k` (verifying the full key, as the cache does).
    fn get(s: &Store<Val>, k: u64) -> Option<Val> {
        s.get(h(k), |v| (v.key == k).then(|| v.clone()))
    }

    /// Checks every structural invariant of every shard.
    fn check(store: &Store<Val>) {
        let mut seen = HashMap::new();
        for (ci, cell) in store.cells.iter().enumerate() {
            let s = read(&cell.shard);
            let len = s.slots.len();
            assert!(len <= s.cap, "shard {ci}: {len} entries > cap {}", s.cap);
            assert!(s.slots.capacity() <= s.cap.max(4), "slab past capacity");
            assert!(s.bytes <= s.max_bytes);
            let bytes: usize = s.slots.iter().map(Slot::bytes).sum();
            assert_eq!(bytes, s.bytes, "shard {ci}: byte count");
            assert_eq!(cell.entries.load(Relaxed), len);
            assert_eq!(cell.bytes.load(Relaxed), s.bytes);
            // The queue holds every slot once, with matching back links.
            let (mut at, mut prev, mut n) = (s.head, NIL, 0);
            while at != NIL {
                assert!(n < len, "shard {ci}: queue loops");
                let slot = &s.slots[at as usize];
                assert_eq!(slot.prev, prev, "shard {ci}: back link");
                prev = at;
                at = slot.next;
                n += 1;
            }
            assert_eq!(n, len, "shard {ci}: queue length");
            assert_eq!(s.tail, prev, "shard {ci}: tail");
            assert!(
                s.hand == NIL || (s.hand as usize) < len,
                "hand out of range"
            );
            // The index holds exactly the slots, each findable from its hash.
            let used = s.index.buckets.iter().filter(|&&e| e != 0).count();
            assert_eq!(used, len, "shard {ci}: index size");
            assert!(s.index.buckets.len() <= s.index.limit);
            assert!(used * LOAD_DEN <= s.index.buckets.len() * LOAD_NUM || len == 0);
            for (i, slot) in s.slots.iter().enumerate() {
                assert_eq!(s.find(slot.hash), Some(i), "shard {ci}: index");
                assert!(s.min_dead <= slot.dead_at);
                assert!(std::ptr::eq(store.cell(slot.hash), cell), "wrong shard");
                assert!(seen.insert(slot.hash, ()).is_none(), "duplicate hash");
            }
        }
        assert_eq!(store.len(), seen.len());
    }

    #[test]
    fn flood_of_unique_keys_stays_within_both_bounds() {
        let store = Store::new(1000, 50_000, 8);
        let mut rng = 7;
        let mut evicted = 0;
        for k in 0..20_000 {
            let bytes = 10 + (splitmix(&mut rng) % 190) as usize;
            evicted += store.insert(h(k), val(k, bytes, u32::MAX), 0);
            let st = store.stats();
            assert!(st.entries <= 1000, "{} entries", st.entries);
            assert!(st.bytes <= 50_000, "{} bytes", st.bytes);
            if k % 997 == 0 {
                check(&store);
            }
        }
        check(&store);
        let st = store.stats();
        assert_eq!(st.evictions, evicted as u64);
        assert_eq!(st.entries as u64 + st.evictions, 20_000);
        // Whichever bound binds, the store is nearly full.
        assert!(st.entries > 240, "{st:?}");
    }

    #[test]
    fn entry_bound_is_exact() {
        let store = Store::new(1000, 0, 16);
        for k in 0..5000 {
            store.insert(h(k), val(k, 1, u32::MAX), 0);
        }
        assert_eq!(store.len(), 1000);
        check(&store);
    }

    #[test]
    fn dead_entries_go_before_live_ones() {
        let store = Store::new(100, 0, 1);
        // Live entries first (oldest, never hit), then dead-to-be ones
        // (newer, all hit): SIEVE alone would evict the live ones.
        for k in 0..50 {
            store.insert(h(k), val(k, 1, 1000), 0);
        }
        for k in 50..100 {
            store.insert(h(k), val(k, 1, 10), 0);
            assert!(get(&store, k).is_some());
        }
        assert_eq!(store.len(), 100);
        // At now = 20 the first insert sweeps all 50 dead ones at once.
        assert_eq!(store.insert(h(100), val(100, 1, 1000), 20), 50);
        for k in 101..150 {
            assert_eq!(store.insert(h(k), val(k, 1, 1000), 20), 0);
        }
        for k in 0..50 {
            assert!(get(&store, k).is_some(), "live key {k} evicted");
        }
        for k in 50..100 {
            assert!(get(&store, k).is_none(), "dead key {k} kept");
        }
        assert_eq!(store.stats().evictions, 50);
        check(&store);
    }

    #[test]
    fn entries_dying_at_now_count_as_dead() {
        let store = Store::new(2, 0, 1);
        store.insert(h(1), val(1, 1, 1000), 0);
        store.insert(h(2), val(2, 1, 5), 0);
        assert!(get(&store, 2).is_some());
        assert_eq!(store.insert(h(3), val(3, 1, 1000), 5), 1);
        assert!(get(&store, 1).is_some());
        assert!(get(&store, 2).is_none());
    }

    #[test]
    fn sieve_keeps_a_hot_key_through_a_scan() {
        let store = Store::new(100, 0, 1);
        store.insert(h(u64::MAX), val(u64::MAX, 1, u32::MAX), 0);
        let mut hits = 0;
        for k in 0..10_000 {
            store.insert(h(k), val(k, 1, u32::MAX), 0);
            // Hit once every 50 one-hit keys: FIFO would drop it after 100
            // inserts; SIEVE's hand clears its bit at most once a lap (about
            // 100 evictions), so one hit a lap keeps it.
            if k % 50 == 0 {
                assert!(get(&store, u64::MAX).is_some(), "hot key lost at {k}");
                hits += 1;
            }
        }
        assert_eq!(hits, 200);
        assert!(get(&store, u64::MAX).is_some());
        check(&store);
    }

    #[test]
    fn sieve_evicts_in_the_papers_order() {
        let store = Store::new(3, 0, 1);
        for k in [1, 2, 3] {
            store.insert(h(k), val(k, 1, u32::MAX), 0);
        }
        assert!(get(&store, 1).is_some());
        // The hand starts at the tail (1): visited, cleared; 2 goes.
        store.insert(h(4), val(4, 1, u32::MAX), 0);
        assert!(get(&store, 2).is_none());
        // The hand stays where it was (at 3), it does not restart at 1.
        store.insert(h(5), val(5, 1, u32::MAX), 0);
        assert!(get(&store, 3).is_none());
        assert!(get(&store, 1).is_some());
        store.insert(h(6), val(6, 1, u32::MAX), 0);
        assert!(get(&store, 4).is_none());
        assert!(get(&store, 1).is_some() && get(&store, 5).is_some());
        check(&store);
    }

    #[test]
    fn a_rejected_lookup_does_not_mark_the_entry() {
        let store = Store::new(2, 0, 1);
        store.insert(h(1), val(1, 1, u32::MAX), 0);
        store.insert(h(2), val(2, 1, u32::MAX), 0);
        // Same hash, other key: `f` says no.
        assert_eq!(store.get(h(1), |v| (v.key == 99).then_some(())), None);
        store.insert(h(3), val(3, 1, u32::MAX), 0);
        assert!(get(&store, 1).is_none());
        assert!(get(&store, 2).is_some());
    }

    #[test]
    fn insert_replaces_the_value_for_the_same_hash() {
        let store = Store::new(10, 1000, 1);
        assert_eq!(store.insert(7, val(1, 100, 50), 0), 0);
        assert_eq!(store.insert(7, val(2, 30, 60), 0), 0);
        assert_eq!(store.len(), 1);
        assert_eq!(store.stats().bytes, 30);
        assert_eq!(store.get(7, |v| Some(v.key)), Some(2));
        // A value too heavy for the shard is refused, and the old one goes.
        assert_eq!(store.insert(7, val(3, 1001, 60), 0), 0);
        assert!(store.is_empty());
        assert_eq!(store.stats(), StoreStats::default());
        check(&store);
    }

    #[test]
    fn replacing_keeps_the_visited_bit() {
        let store = Store::new(2, 0, 1);
        store.insert(h(1), val(1, 1, u32::MAX), 0);
        store.insert(h(2), val(2, 1, u32::MAX), 0);
        assert!(get(&store, 1).is_some());
        store.insert(h(1), val(1, 2, u32::MAX), 0);
        // 1 is now newest and visited, 2 is oldest and not: 2 goes.
        store.insert(h(3), val(3, 1, u32::MAX), 0);
        assert!(get(&store, 1).is_some());
        assert!(get(&store, 2).is_none());
        check(&store);
    }

    #[test]
    fn remove_if_retain_clear_and_stats() {
        let store = Store::new(100, 0, 4);
        for k in 0..50 {
            store.insert(h(k), val(k, 10, u32::MAX), 0);
        }
        assert_eq!(
            store.stats(),
            StoreStats {
                entries: 50,
                bytes: 500,
                evictions: 0
            }
        );
        assert!(!store.remove_if(h(3), |v| v.key == 4));
        assert!(store.remove_if(h(3), |v| v.key == 3));
        assert!(!store.remove_if(h(3), |_| true));
        assert!(!store.remove_if(h(1000), |_| true));
        assert_eq!(store.len(), 49);
        assert_eq!(store.stats().bytes, 490);
        check(&store);

        assert_eq!(store.retain(|v| v.key % 2 == 0), 24);
        assert_eq!(store.len(), 25);
        let mut listed = Vec::new();
        store.for_each(|hash, v| {
            assert_eq!(hash, h(v.key));
            listed.push(v.key);
        });
        listed.sort_unstable();
        let even: Vec<u64> = (0..50).filter(|k| k % 2 == 0).collect();
        assert_eq!(listed, even);
        check(&store);

        store.clear();
        assert!(store.is_empty());
        assert_eq!(store.stats(), StoreStats::default());
        assert!(get(&store, 0).is_none());
        check(&store);
        // Usable again after a clear.
        store.insert(h(1), val(1, 10, u32::MAX), 0);
        assert!(get(&store, 1).is_some());
        check(&store);
    }

    #[test]
    fn odd_parameters_never_panic_and_keep_the_bounds() {
        let store = Store::new(0, 0, 0);
        assert_eq!(store.insert(1, val(1, 1, 1), 0), 0);
        assert!(store.is_empty() && get(&store, 1).is_none());

        let store = Store::new(10, 0, 16);
        assert_eq!(store.shards(), 8);
        for k in 0..1000 {
            store.insert(h(k), val(k, 1, u32::MAX), 0);
        }
        assert_eq!(store.len(), 10);
        check(&store);

        assert_eq!(Store::<Val>::new(100, 0, 6).shards(), 4);
        assert_eq!(Store::<Val>::new(100, 3, 8).shards(), 2);

        let store = Store::new(usize::MAX, usize::MAX, usize::MAX);
        assert_eq!(store.shards(), MAX_SHARDS);
        for k in 0..100 {
            store.insert(h(k), val(k, usize::MAX / 2, u32::MAX), 0);
            store.insert(h(k), val(k, 1, 0), u32::MAX);
        }
        assert_eq!(store.len(), 100);
        check(&store);
    }

    /// Random operations against a plain map; with no eviction they must
    /// agree exactly, and the structures must stay sound throughout.
    #[test]
    fn agrees_with_a_map_under_random_operations() {
        for (cap, shards) in [(10_000, 1), (10_000, 4), (37, 1), (300, 2)] {
            let store = Store::new(cap, 0, shards);
            let mut model: HashMap<u64, Val> = HashMap::new();
            let mut rng = cap as u64;
            for step in 0..30_000u32 {
                let r = splitmix(&mut rng);
                let k = r % 500;
                let now = step / 1000;
                match (r >> 32) % 8 {
                    0..=3 => {
                        let v = val(k, (r >> 40) as usize % 100, now + (r >> 50) as u32 % 20);
                        store.insert(h(k), v.clone(), now);
                        model.insert(k, v);
                    }
                    4 | 5 => {
                        let got = get(&store, k);
                        if cap >= 10_000 {
                            assert_eq!(got.as_ref(), model.get(&k));
                        } else if let Some(got) = got {
                            assert_eq!(Some(&got), model.get(&k));
                        }
                    }
                    6 => {
                        let removed = store.remove_if(h(k), |v| v.bytes % 2 == 0);
                        let want = model.get(&k).is_some_and(|v| v.bytes % 2 == 0);
                        if cap >= 10_000 {
                            assert_eq!(removed, want);
                        }
                        if removed || cap < 10_000 && want {
                            model.remove(&k);
                        }
                    }
                    _ => {
                        if r.is_multiple_of(97) {
                            let n = store.retain(|v| v.bytes > 10);
                            let before = model.len();
                            model.retain(|_, v| v.bytes > 10);
                            if cap >= 10_000 {
                                assert_eq!(n, before - model.len());
                            }
                        }
                    }
                }
                if step % 2000 == 0 {
                    check(&store);
                }
            }
            check(&store);
            if cap >= 10_000 {
                assert_eq!(store.len(), model.len());
            }
        }
    }

    #[test]
    fn four_threads_get_and_insert_without_deadlock() {
        let store = Store::new(1000, 64_000, 4);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let store = &store;
                s.spawn(move || {
                    let mut rng = t + 1;
                    for i in 0..20_000u32 {
                        let r = splitmix(&mut rng);
                        let k = r % 3000;
                        match r >> 61 {
                            0..=4 => {
                                let _ = get(store, k);
                            }
                            5 | 6 => {
                                store.insert(h(k), val(k, 64, i / 100 + 5), i / 100);
                            }
                            _ => {
                                store.remove_if(h(k), |v| v.key == k);
                            }
                        }
                    }
                });
            }
        });
        check(&store);
        let st = store.stats();
        assert!(st.entries <= 1000 && st.bytes <= 64_000, "{st:?}");
    }

    #[test]
    fn is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<Store<Val>>();
    }

    /// The store's own bytes per entry when full: slot header and index.
    #[test]
    fn store_overhead() {
        let cap = 100_000;
        let store = Store::new(cap, 0, 16);
        let mut k = 0;
        while store.len() < cap && k < 10 * cap as u64 {
            store.insert(h(k), val(k, 1, u32::MAX), 0);
            k += 1;
        }
        let per_entry = store.table_bytes() as f64 / store.len() as f64;
        let overhead = per_entry - size_of::<Val>() as f64;
        eprintln!(
            "store overhead: {overhead:.1} B/entry ({per_entry:.1} B/entry with a {} B value inline)",
            size_of::<Val>()
        );
        assert!(overhead < 40.0, "{overhead} B/entry");
    }
}
