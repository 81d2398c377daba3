//! Counters that every query touches, kept per thread.
//!
//! One shared atomic per counter would put every serving thread on one
//! cache line: each add is a locked read-modify-write that moves the line
//! between cores. Here a group of counters ([`Striped`]) has one shard per
//! thread. A thread owns its shard alone (a slot number, given out once
//! per thread and taken back when it exits), so an add is a plain load and
//! store, with no lock prefix and no line shared with another writer;
//! reading sums the shards. Threads past [`MAX_SLOTS`] share one more
//! shard, with atomic adds. A shard is allocated the first time its thread
//! adds to the group: a warm thread allocates nothing. A group's size is
//! fixed at compile time, so an index known to be in range costs no check.
//!
//! Groups with labels are interned for the life of the process
//! ([`CounterFamily::with_label_values`]), so a reload that builds a new
//! plugin finds the same counters and keeps counting from their values.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};

/// Threads that get a shard of their own; more share one.
pub const MAX_SLOTS: usize = 256;

// === thread slots ===

const UNSET: usize = usize::MAX;
const SHARED: usize = usize::MAX - 1;

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
static FREE_SLOTS: Mutex<Vec<usize>> = Mutex::new(Vec::new());

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(UNSET) };
    static OWNER: RefCell<Option<SlotOwner>> = const { RefCell::new(None) };
}

/// Gives a thread's slot back when the thread exits: the next thread that
/// takes it continues its counts (the mutex orders the two).
struct SlotOwner(usize);

impl Drop for SlotOwner {
    fn drop(&mut self) {
        // Anything this thread still counts goes to the shared shard.
        let _ = SLOT.try_with(|s| s.set(SHARED));
        FREE_SLOTS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self.0);
    }
}

/// This thread's slot: below [`MAX_SLOTS`], or [`SHARED`].
#[inline]
fn slot() -> usize {
    SLOT.try_with(|s| match s.get() {
        UNSET => assign(s),
        v => v,
    })
    .unwrap_or(SHARED)
}

#[cold]
fn assign(cell: &Cell<usize>) -> usize {
    let reused = FREE_SLOTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    let taken = reused.or_else(|| {
        let n = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
        (n < MAX_SLOTS).then_some(n)
    });
    let slot = match taken {
        Some(i)
            if OWNER
                .try_with(|o| *o.borrow_mut() = Some(SlotOwner(i)))
                .is_ok() =>
        {
            i
        }
        Some(i) => {
            // The thread is exiting: give the slot straight back.
            FREE_SLOTS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(i);
            SHARED
        }
        None => SHARED,
    };
    cell.set(slot);
    slot
}

// === impl Striped ===

/// `N` counters, aligned to a cache line (as the shard of one thread).
#[repr(align(128))]
struct Cells<const N: usize>([AtomicU64; N]);

impl<const N: usize> Cells<N> {
    fn boxed() -> Box<Self> {
        Box::new(Self(std::array::from_fn(|_| AtomicU64::new(0))))
    }
}

/// A group of `N` counters, one shard per thread.
pub struct Striped<const N: usize> {
    shards: Box<[OnceLock<Box<Cells<N>>>]>,
    shared: Box<Cells<N>>,
}

impl<const N: usize> std::fmt::Debug for Striped<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Striped")
            .field("width", &N)
            .finish_non_exhaustive()
    }
}

impl<const N: usize> Default for Striped<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Striped<N> {
    /// `N` counters, all 0.
    pub fn new() -> Self {
        Self {
            shards: (0..MAX_SLOTS).map(|_| OnceLock::new()).collect(),
            shared: Cells::boxed(),
        }
    }

    /// This thread's shard, to add several counters through one look-up.
    #[inline]
    pub fn shard(&self) -> Shard<'_, N> {
        self.shard_for(slot())
    }

    #[inline]
    fn shard_for(&self, slot: usize) -> Shard<'_, N> {
        match self.shards.get(slot) {
            Some(s) => Shard {
                cells: &s.get_or_init(Cells::boxed).0,
                own: true,
            },
            None => Shard {
                cells: &self.shared.0,
                own: false,
            },
        }
    }

    /// Adds `v` to counter `i` (ignored if `i` is not below `N`).
    #[inline]
    pub fn add(&self, i: usize, v: u64) {
        self.shard().add(i, v);
    }

    /// Counter `i`, summed over every thread.
    pub fn get(&self, i: usize) -> u64 {
        self.all()
            .filter_map(|cells| cells.get(i))
            .fold(0u64, |sum, c| sum.wrapping_add(c.load(Ordering::Relaxed)))
    }

    /// Every counter, summed over every thread.
    pub fn snapshot(&self) -> Vec<u64> {
        let mut out = vec![0u64; N];
        for cells in self.all() {
            for (v, c) in out.iter_mut().zip(cells) {
                *v = v.wrapping_add(c.load(Ordering::Relaxed));
            }
        }
        out
    }

    fn all(&self) -> impl Iterator<Item = &[AtomicU64; N]> {
        self.shards
            .iter()
            .filter_map(|s| s.get().map(|b| &b.0))
            .chain(std::iter::once(&self.shared.0))
    }
}

/// One thread's shard of a [`Striped`] group.
#[derive(Clone, Copy)]
pub struct Shard<'a, const N: usize> {
    cells: &'a [AtomicU64; N],
    /// Owned by this thread alone: plain adds; else atomic ones.
    own: bool,
}

impl<const N: usize> Shard<'_, N> {
    /// Adds `v` to counter `i` (ignored if `i` is not below `N`).
    #[inline(always)]
    pub fn add(self, i: usize, v: u64) {
        let Some(c) = self.cells.get(i) else {
            return;
        };
        if self.own {
            // Only this thread writes this shard: no read-modify-write
            // needed; readers see whole values (64-bit atomics).
            c.store(c.load(Ordering::Relaxed).wrapping_add(v), Ordering::Relaxed);
        } else {
            c.fetch_add(v, Ordering::Relaxed);
        }
    }
}

// === impl StripedCounter ===

/// One counter, striped: for a counter every query adds to.
#[derive(Debug, Clone, Copy)]
pub struct StripedCounter(&'static Striped<1>);

impl StripedCounter {
    /// A counter that belongs to no family (tests, or counts only read in-process).
    pub fn unregistered() -> Self {
        Self(Box::leak(Box::new(Striped::new())))
    }
    /// Adds 1.
    #[inline]
    pub fn inc(self) {
        self.0.add(0, 1);
    }
    /// Adds `v`.
    #[inline]
    pub fn inc_by(self, v: u64) {
        self.0.add(0, v);
    }
    /// The value, summed over every thread.
    pub fn get(self) -> u64 {
        self.0.get(0)
    }
}

// === impl CounterFamily ===

/// A counter family with labels whose series are [`StripedCounter`]s,
/// exported as a Prometheus counter. Series live as long as the process
/// (a reload finds them again) and are exported from their creation on,
/// at 0 until counted.
pub struct CounterFamily {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    desc: Desc,
    series: Mutex<HashMap<Box<[String]>, StripedCounter>>,
}

impl std::fmt::Debug for CounterFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterFamily")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Registers a family: it and its collector live as long as the process.
pub fn counter_family(
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
) -> &'static CounterFamily {
    let desc = Desc::new(
        name.to_string(),
        help.to_string(),
        labels.iter().map(|l| (*l).to_string()).collect(),
        HashMap::new(),
    )
    .unwrap_or_else(|e| super::unreachable_metric(name, &e));
    let family: &'static CounterFamily = Box::leak(Box::new(CounterFamily {
        name,
        help,
        labels,
        desc,
        series: Mutex::new(HashMap::new()),
    }));
    super::register_collector(Box::new(FamilyCollector(family)));
    family
}

impl CounterFamily {
    /// The series with these label values (as many as the family's
    /// labels), created at 0 the first time. Takes a lock: resolve series
    /// once, when a plugin is built, not per query.
    pub fn with_label_values(&self, values: &[&str]) -> StripedCounter {
        let key: Box<[String]> = values.iter().map(|v| (*v).to_string()).collect();
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        *series
            .entry(key)
            .or_insert_with(|| StripedCounter(Box::leak(Box::new(Striped::new()))))
    }

    /// The value of the series with these label values (0 if it does not exist).
    pub fn value(&self, values: &[&str]) -> u64 {
        let key: Box<[String]> = values.iter().map(|v| (*v).to_string()).collect();
        self.series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .map_or(0, |c| c.get())
    }

    fn collect(&self) -> MetricFamily {
        let series: Vec<(Box<[String]>, StripedCounter)> = self
            .series
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let metrics = series
            .into_iter()
            .map(|(values, c)| {
                let pairs = self
                    .labels
                    .iter()
                    .zip(values.iter())
                    .map(|(n, v)| (*n, v.as_str()));
                let mut m = Metric::from_label(label_pairs(pairs));
                let mut counter = Counter::default();
                counter.set_value(c.get() as f64);
                m.set_counter(counter);
                m
            })
            .collect();
        family(self.name, self.help, MetricType::COUNTER, metrics)
    }
}

/// Label pairs sorted by name, as Prometheus's clients write them.
pub fn label_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<LabelPair> {
    let mut v: Vec<LabelPair> = pairs
        .into_iter()
        .map(|(n, val)| {
            let mut p = LabelPair::default();
            p.set_name(n.to_string());
            p.set_value(val.to_string());
            p
        })
        .collect();
    v.sort_by(|a, b| a.name().cmp(b.name()));
    v
}

/// A metric family with these metrics.
pub fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

struct FamilyCollector(&'static CounterFamily);

impl Collector for FamilyCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }
    fn collect(&self) -> Vec<MetricFamily> {
        vec![self.0.collect()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_add_to_shards_of_their_own_and_reads_sum_them() {
        let s: &'static Striped<40> = Box::leak(Box::new(Striped::new()));
        std::thread::scope(|scope| {
            for t in 0..4u64 {
                scope.spawn(move || {
                    for _ in 0..10_000 {
                        s.add(0, 1);
                        s.shard().add(33, t);
                    }
                });
            }
        });
        assert_eq!(s.get(0), 40_000);
        assert_eq!(s.get(33), 10_000 * (1 + 2 + 3));
        let snap = s.snapshot();
        assert_eq!((snap[0], snap[33], snap[1]), (40_000, 60_000, 0));
        // Out of range: ignored, not a panic.
        s.add(40, 1);
        s.add(usize::MAX, 1);
        assert_eq!(s.get(40), 0);
        assert_eq!(s.snapshot().iter().sum::<u64>(), 100_000);
    }

    #[test]
    fn a_slot_freed_by_an_exiting_thread_is_taken_again_without_losing_counts() {
        let s: &'static Striped<1> = Box::leak(Box::new(Striped::new()));
        for _ in 0..(MAX_SLOTS + 8) {
            std::thread::spawn(move || s.add(0, 1)).join().unwrap();
        }
        assert_eq!(s.get(0), (MAX_SLOTS + 8) as u64);
        // Threads come and go; slots are reused, so they never run out.
        assert!(NEXT_SLOT.load(Ordering::Relaxed) < MAX_SLOTS);
    }

    #[test]
    fn threads_past_the_slots_share_one_shard_and_lose_nothing() {
        let s: &'static Striped<1> = Box::leak(Box::new(Striped::new()));
        let shared = s.shard_for(SHARED);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(move || {
                    for _ in 0..10_000 {
                        shared.add(0, 1);
                    }
                });
            }
        });
        assert_eq!(s.get(0), 40_000);
    }

    #[test]
    fn a_family_exports_its_series_and_keeps_them() {
        let f = counter_family(
            "coredns_striped_test_total",
            "A test family.",
            &["server", "zones"],
        );
        let a = f.with_label_values(&["dns://:1", "."]);
        a.inc();
        a.inc_by(2);
        // The same labels: the same counter (what a reload relies on).
        f.with_label_values(&["dns://:1", "."]).inc();
        f.with_label_values(&["dns://:2", "."]);
        assert_eq!(f.value(&["dns://:1", "."]), 4);
        let mf = f.collect();
        assert_eq!(mf.name(), "coredns_striped_test_total");
        assert_eq!(mf.get_metric().len(), 2, "created series are exported at 0");
        let text = super::super::render();
        assert!(
            text.contains("coredns_striped_test_total{server=\"dns://:1\",zones=\".\"} 4"),
            "{text}"
        );
    }
}
