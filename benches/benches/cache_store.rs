//! The cache's store (`pkg::store`, SIEVE) against the policies it was
//! chosen over, on a Zipf(s = 1.0) trace over 1M keys with capacities of 1%
//! and 10% of the key space:
//!
//! - hit ratio (printed with `eprintln!` before the timed runs), and
//! - throughput of the trace (get, insert on a miss), one thread and several,
//!
//! for SIEVE (this store), random eviction (CoreDNS's `plugin/pkg/cache`),
//! CLOCK, and LRU (the `lru` crate behind a `Mutex`). The competitors live
//! only here, each behind one lock (RwLock with an atomic bit for random and
//! CLOCK, so a hit takes a read lock as in the store); the store has 16
//! shards, which matters only in the runs with several threads. Then the store alone: `get` hit latency, lookup throughput with
//! 1, 2 and 4 threads, the dead-entry sweep, and memory per entry (printed).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nodedns_plugins::pkg::store::{Store, Weigh};

/// Distinct keys in the workload.
const KEYS: usize = 1_000_000;
/// Requests in the trace; hit ratios count those after `WARM_UP`.
const TRACE: usize = 6_000_000;
const WARM_UP: usize = 1_000_000;
/// Requests per timed iteration of the trace benches.
const BATCH: usize = 10_000;
/// Shards of the store in the throughput runs (as the cache plugin uses).
const SHARDS: usize = 16;

// === workload ===

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The 64-bit hash of key `rank` (a bijection, so no two keys collide).
fn hash_of(rank: u64) -> u64 {
    let mut s = rank;
    splitmix(&mut s)
}

/// `n` requests drawn from Zipf(1.0) over `KEYS` keys, as hashes.
fn zipf_trace(n: usize, seed: u64) -> Vec<u64> {
    let mut cdf = Vec::with_capacity(KEYS);
    let mut sum = 0.0;
    for k in 1..=KEYS {
        sum += 1.0 / k as f64;
        cdf.push(sum);
    }
    let mut rng = seed;
    (0..n)
        .map(|_| {
            let u = (splitmix(&mut rng) >> 11) as f64 / (1u64 << 53) as f64 * sum;
            hash_of(cdf.partition_point(|&c| c < u) as u64)
        })
        .collect()
}

/// A small value: the policy is measured, not the allocator.
#[derive(Clone)]
struct Val {
    hash: u64,
    dead_at: u32,
}

impl Weigh for Val {
    fn bytes(&self) -> usize {
        size_of::<Self>()
    }
    fn dead_at(&self) -> u32 {
        self.dead_at
    }
}

fn val(hash: u64) -> Val {
    Val {
        hash,
        dead_at: u32::MAX,
    }
}

/// For std and `lru` maps keyed by already-random hashes: one multiply.
#[derive(Clone, Copy, Default)]
struct MixHash;

struct MixHasher(u64);

impl BuildHasher for MixHash {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher(0)
    }
}

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        let p = u128::from(self.0) * 0x9E37_79B9_7F4A_7C15;
        p as u64 ^ (p >> 64) as u64
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

// === the policies ===

/// What the trace runs against: a shared cache, `&self` everywhere.
trait Policy: Sync {
    fn get(&self, hash: u64) -> bool;
    fn insert(&self, hash: u64);
}

/// Runs requests: a get, and an insert on a miss. Returns the hits.
fn run(p: &dyn Policy, trace: &[u64]) -> usize {
    let mut hits = 0;
    for &h in trace {
        if p.get(h) {
            hits += 1;
        } else {
            p.insert(h);
        }
    }
    hits
}

struct Sieve(Store<Val>);

impl Policy for Sieve {
    fn get(&self, hash: u64) -> bool {
        self.0
            .get(hash, |v| (v.hash == hash).then_some(()))
            .is_some()
    }
    fn insert(&self, hash: u64) {
        self.0.insert(hash, val(hash), 0);
    }
}

/// CoreDNS's `plugin/pkg/cache`: when full, drop a random entry (Go's map
/// iteration order). A dense vector makes the random pick O(1).
struct Random(RwLock<RandomInner>);

struct RandomInner {
    cap: usize,
    index: HashMap<u64, u32, MixHash>,
    items: Vec<Val>,
    rng: u64,
}

impl Random {
    fn new(cap: usize) -> Self {
        Self(RwLock::new(RandomInner {
            cap,
            index: HashMap::with_capacity_and_hasher(cap, MixHash),
            items: Vec::with_capacity(cap),
            rng: 1,
        }))
    }
}

impl Policy for Random {
    fn get(&self, hash: u64) -> bool {
        let c = self.0.read().unwrap_or_else(PoisonError::into_inner);
        c.index
            .get(&hash)
            .is_some_and(|&i| c.items[i as usize].hash == hash)
    }
    fn insert(&self, hash: u64) {
        let mut c = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(&i) = c.index.get(&hash) {
            c.items[i as usize] = val(hash);
            return;
        }
        if c.items.len() >= c.cap {
            let victim = (splitmix(&mut c.rng) % c.items.len() as u64) as usize;
            let gone = c.items.swap_remove(victim);
            c.index.remove(&gone.hash);
            if let Some(moved) = c.items.get(victim).map(|v| v.hash) {
                c.index.insert(moved, victim as u32);
            }
        }
        let i = c.items.len() as u32;
        c.items.push(val(hash));
        c.index.insert(hash, i);
    }
}

/// CLOCK: a ring of slots with a reference bit (atomic, so a hit needs only
/// the read lock, as in the store) and a hand that clears bits until it finds
/// one unset, and replaces that slot.
struct Clock(RwLock<ClockInner>);

struct ClockInner {
    cap: usize,
    index: HashMap<u64, u32, MixHash>,
    ring: Vec<(Val, AtomicBool)>,
    hand: usize,
}

impl Clock {
    fn new(cap: usize) -> Self {
        Self(RwLock::new(ClockInner {
            cap,
            index: HashMap::with_capacity_and_hasher(cap, MixHash),
            ring: Vec::with_capacity(cap),
            hand: 0,
        }))
    }
}

impl Policy for Clock {
    fn get(&self, hash: u64) -> bool {
        let c = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let Some(&i) = c.index.get(&hash) else {
            return false;
        };
        let (v, referenced) = &c.ring[i as usize];
        if v.hash != hash {
            return false;
        }
        if !referenced.load(Relaxed) {
            referenced.store(true, Relaxed);
        }
        true
    }
    fn insert(&self, hash: u64) {
        let mut c = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(&i) = c.index.get(&hash) {
            c.ring[i as usize].0 = val(hash);
            return;
        }
        if c.ring.len() < c.cap {
            let i = c.ring.len() as u32;
            c.ring.push((val(hash), AtomicBool::new(false)));
            c.index.insert(hash, i);
            return;
        }
        // Two laps at most: the first clears every bit.
        for _ in 0..2 * c.cap {
            let hand = c.hand;
            if !c.ring[hand].1.swap(false, Relaxed) {
                break;
            }
            c.hand = (hand + 1) % c.cap;
        }
        let hand = c.hand;
        let old = std::mem::replace(&mut c.ring[hand], (val(hash), AtomicBool::new(false)));
        c.index.remove(&old.0.hash);
        c.index.insert(hash, hand as u32);
        c.hand = (hand + 1) % c.cap;
    }
}

/// LRU: the `lru` crate behind a `Mutex` (a hit reorders the list).
struct Lru(Mutex<lru::LruCache<u64, Val, MixHash>>);

impl Lru {
    fn new(cap: usize) -> Self {
        let cap = NonZeroUsize::new(cap).unwrap_or(NonZeroUsize::MIN);
        Self(Mutex::new(lru::LruCache::with_hasher(cap, MixHash)))
    }
}

impl Policy for Lru {
    fn get(&self, hash: u64) -> bool {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        c.get(&hash).is_some_and(|v| v.hash == hash)
    }
    fn insert(&self, hash: u64) {
        let mut c = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        c.put(hash, val(hash));
    }
}

/// The policies, fresh, for a capacity.
fn policies(cap: usize, shards: usize) -> Vec<(&'static str, Box<dyn Policy>)> {
    vec![
        ("sieve", Box::new(Sieve(Store::new(cap, 0, shards)))),
        ("random", Box::new(Random::new(cap))),
        ("clock", Box::new(Clock::new(cap))),
        ("lru", Box::new(Lru::new(cap))),
    ]
}

// === the benches ===

fn hit_ratios(trace: &[u64]) {
    eprintln!(
        "\nhit ratio, Zipf(1.0) over {KEYS} keys, {} requests after {WARM_UP} warm-up:",
        trace.len() - WARM_UP
    );
    for pct in [1, 10] {
        let cap = KEYS * pct / 100;
        let mut line = format!("  cache = {pct:>2}% ({cap:>7} entries):");
        let mut runs = vec![(
            "sieve/1 shard",
            Box::new(Sieve(Store::new(cap, 0, 1))) as Box<dyn Policy>,
        )];
        runs.extend(policies(cap, SHARDS).into_iter().map(|(name, p)| {
            let name = if name == "sieve" {
                "sieve/16 shards"
            } else {
                name
            };
            (name, p)
        }));
        for (name, p) in runs {
            let start = Instant::now();
            run(&*p, &trace[..WARM_UP]);
            let hits = run(&*p, &trace[WARM_UP..]);
            let ratio = hits as f64 / (trace.len() - WARM_UP) as f64;
            let ns = start.elapsed().as_nanos() as f64 / trace.len() as f64;
            line += &format!("  {name} {:.2}% ({ns:.0} ns/req)", 100.0 * ratio);
        }
        eprintln!("{line}");
    }
    eprintln!();
}

fn policy_throughput(c: &mut Criterion, trace: &[u64]) {
    for pct in [1, 10] {
        let cap = KEYS * pct / 100;
        let mut g = c.benchmark_group(format!("zipf trace, cache {pct}%, 1 thread"));
        g.throughput(Throughput::Elements(BATCH as u64));
        for (name, p) in policies(cap, SHARDS) {
            run(&*p, &trace[..WARM_UP]);
            let mut at = WARM_UP;
            g.bench_function(name, |b| {
                b.iter(|| {
                    if at + BATCH > trace.len() {
                        at = WARM_UP;
                    }
                    let hits = run(&*p, &trace[at..at + BATCH]);
                    at += BATCH;
                    black_box(hits)
                })
            });
        }
        g.finish();
    }
    // The same trace split over threads (each its own part of it).
    let cap = KEYS / 10;
    let mut g = c.benchmark_group("zipf trace, cache 10%, threads");
    for (name, p) in policies(cap, SHARDS) {
        run(&*p, &trace[..WARM_UP]);
        for threads in [2, 4] {
            g.throughput(Throughput::Elements(threads as u64));
            g.bench_function(BenchmarkId::new(name, format!("{threads} threads")), |b| {
                b.iter_custom(|iters| {
                    parallel(threads, |t| {
                        let part = &trace[WARM_UP..];
                        let mut at = (t * part.len() / threads) % part.len();
                        let mut hits = 0usize;
                        for _ in 0..iters {
                            let h = part[at];
                            at = if at + 1 == part.len() { 0 } else { at + 1 };
                            if p.get(h) {
                                hits += 1;
                            } else {
                                p.insert(h);
                            }
                        }
                        black_box(hits);
                    })
                })
            });
        }
    }
    g.finish();
}

/// Runs `work(thread)` on `threads` threads at once; the wall time.
fn parallel(threads: usize, work: impl Fn(usize) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let work = &work;
            s.spawn(move || work(t));
        }
    });
    start.elapsed()
}

fn store_lookups(c: &mut Criterion) {
    const N: usize = 100_000;
    // Room to spare, so that every key fits whatever shard it falls in.
    let store = Store::new(2 * N, 0, SHARDS);
    let keys: Vec<u64> = (0..N as u64).map(hash_of).collect();
    for &h in &keys {
        store.insert(h, val(h), 0);
    }
    assert_eq!(store.len(), N);
    // Visit the keys in a scrambled order, not the insertion order.
    let mut order = keys.clone();
    let mut rng = 3;
    for i in (1..order.len()).rev() {
        order.swap(i, (splitmix(&mut rng) % (i as u64 + 1)) as usize);
    }
    let lookup = |h: u64| store.get(h, |v| (v.hash == h).then_some(v.dead_at));

    let mut g = c.benchmark_group("store get");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hit, one hot key", |b| {
        b.iter(|| black_box(lookup(black_box(keys[7]))))
    });
    let mut at = 0;
    g.bench_function("hit, random key of 100k", |b| {
        b.iter(|| {
            at = if at + 1 == order.len() { 0 } else { at + 1 };
            black_box(lookup(order[at]))
        })
    });
    let lock = RwLock::new(0u64);
    g.bench_function("baseline: RwLock read + unlock alone", |b| {
        b.iter(|| black_box(*lock.read().unwrap_or_else(PoisonError::into_inner)))
    });
    let mut miss = 0u64;
    g.bench_function("miss", |b| {
        b.iter(|| {
            miss += 1;
            black_box(lookup(hash_of(N as u64 + miss)))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("store get hits, threads");
    for threads in [1, 2, 4] {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_function(format!("{threads} threads"), |b| {
            b.iter_custom(|iters| {
                parallel(threads, |t| {
                    let mut at = t * order.len() / threads;
                    for _ in 0..iters {
                        at = if at + 1 == order.len() { 0 } else { at + 1 };
                        black_box(lookup(order[at]));
                    }
                })
            })
        });
    }
    g.finish();
}

/// The worst single insert: into a full store whose entries have all died,
/// so it sweeps its shard; timed once per shard (a criterion loop would
/// need a fresh full store per iteration), against an insert that evicts by
/// SIEVE.
fn sweep_cost() {
    const N: usize = 100_000;
    let store = Store::new(N, 0, SHARDS);
    // Twice as many keys as room, so that every shard is full.
    for h in (0..2 * N as u64).map(hash_of) {
        store.insert(
            h,
            Val {
                hash: h,
                dead_at: 10,
            },
            0,
        );
    }
    let shard_bits = SHARDS.ilog2();
    let time = |shard: u64, salt: u64, now: u32| {
        let h = shard << (64 - shard_bits) | (hash_of(salt) >> shard_bits);
        let start = Instant::now();
        let evicted = store.insert(h, val(h), now);
        (start.elapsed(), evicted)
    };
    let mut live: Vec<Duration> = (0..SHARDS as u64).map(|s| time(s, s, 0).0).collect();
    let mut dead: Vec<(Duration, usize)> =
        (0..SHARDS as u64).map(|s| time(s, 100 + s, 10)).collect();
    live.sort_unstable();
    dead.sort_unstable();
    let evicted: usize = dead.iter().map(|d| d.1).sum();
    eprintln!(
        "insert into a full {N}-entry store ({SHARDS} shards): SIEVE eviction median {:?}; \
         sweeping a shard of dead entries median {:?}, max {:?} ({evicted} swept in {SHARDS} inserts)\n",
        live[SHARDS / 2],
        dead[SHARDS / 2].0,
        dead[SHARDS - 1].0,
    );
}

/// A value shaped like the cache plugin's entry: ~48 bytes inline and one
/// 100-byte allocation (a typical A answer and its TTL offsets).
struct Answer {
    data: Box<[u8]>,
    _fields: [u32; 7],
    dead_at: u32,
}

impl Weigh for Answer {
    fn bytes(&self) -> usize {
        size_of::<Self>() + self.data.len()
    }
    fn dead_at(&self) -> u32 {
        self.dead_at
    }
}

/// Resident set size, from /proc/self/statm (Linux); 0 elsewhere.
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn memory() {
    const N: usize = 1_000_000;
    let before = rss();
    let store = Store::new(N, 0, SHARDS);
    for h in (0..N as u64).map(hash_of) {
        let a = Answer {
            data: vec![0x5a; 100].into_boxed_slice(),
            _fields: [0; 7],
            dead_at: u32::MAX,
        };
        store.insert(h, a, 0);
    }
    let after = rss();
    let table = store.table_bytes() as f64 / N as f64;
    eprintln!(
        "memory, {N} entries of a {}-byte value + 100-byte allocation: \
         RSS {:.1} B/entry; store structures {table:.1} B/entry, of which {:.1} is overhead \
         (slot header and index, beyond the value's inline bytes)\n",
        size_of::<Answer>(),
        (after.saturating_sub(before)) as f64 / N as f64,
        table - size_of::<Answer>() as f64,
    );
    drop(store);
}

fn bench(c: &mut Criterion) {
    memory();
    sweep_cost();
    let trace = zipf_trace(TRACE, 42);
    hit_ratios(&trace);
    policy_throughput(c, &trace);
    store_lookups(c);
}

criterion_group!(benches, bench);
criterion_main!(benches);
