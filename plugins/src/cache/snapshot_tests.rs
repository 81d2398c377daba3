//! Snapshots of caches: written by one cache, loaded by another (as a new
//! process would), through the format of `pkg::snapshot`.
//!
//! The caches' clock is tokio's, paused, so a test's cache time stands
//! still; the wall time a snapshot has aged is given to the decode.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::setup::parse;
use super::{Cache, CacheConfig};
use crate::dispenser::Dispenser;
use crate::lexer::lex;
use crate::pkg::inspect::{CacheInspect, ImportStats, SnapshotEntry};
use crate::pkg::snapshot::{
    self, HEADER_LEN, Limits, Loaded, SnapshotError, decode_at, decode_slice_at, encode_to_vec,
};
use crate::pkg::test::{AnswerStub, FailStub, SoaStub, run_with};
use crate::plugin::{Flow, Plugin};
use crate::request::Transport;

fn cfg(text: &str) -> CacheConfig {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).unwrap();
    let mut d = Dispenser::new("cache", &tokens);
    parse(&mut d, &[".".to_string()]).unwrap()
}

fn cache_on(server: &str, text: &str) -> Cache {
    Cache::new(cfg(text), server).unwrap()
}

fn cache(text: &str) -> Cache {
    cache_on("dns://:53", text)
}

fn dyns(caches: &[&Cache]) -> Vec<Arc<dyn CacheInspect>> {
    caches
        .iter()
        .map(|c| Arc::clone(&c.inner) as Arc<dyn CacheInspect>)
        .collect()
}

fn q(name: &str, qtype: RecordType, dnssec: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 7;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if dnssec {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        e.set_dnssec_ok(true);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// Asks `c`, going on to `next` on a miss.
fn ask(c: &Cache, name: &str, qtype: RecordType, dnssec: bool, next: &dyn Plugin) {
    let _ = run_with(c, &q(name, qtype, dnssec), Transport::Udp, next);
}

/// The hit `c` answers with, or `None` on a miss (nothing is asked on).
fn hit(c: &Cache, name: &str, qtype: RecordType, dnssec: bool) -> Option<Message> {
    let out = run_with(
        c,
        &q(name, qtype, dnssec),
        Transport::Udp,
        &FailStub(ResponseCode::ServFail),
    );
    matches!(out.flow, Flow::Answered).then(|| out.msg.unwrap())
}

/// The wall-clock time a snapshot says it was written.
fn written(bytes: &[u8]) -> SystemTime {
    let ms = u64::from_be_bytes(bytes[12..20].try_into().unwrap());
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Decodes `bytes` into `caches` as if `after` had passed since it was written.
fn load_after(bytes: &[u8], caches: &[&Cache], after: Duration) -> Result<Loaded, SnapshotError> {
    decode_slice_at(
        bytes,
        &dyns(caches),
        &Limits::default(),
        written(bytes) + after,
    )
}

/// A cache holding one A answer (TTL 30) for `name`.
fn one_entry(name: &str) -> (Cache, Vec<u8>) {
    let c = cache("cache 30");
    ask(&c, name, RecordType::A, false, &AnswerStub);
    let (bytes, saved) = encode_to_vec(&dyns(&[&c]));
    assert_eq!(saved.entries, 1);
    (c, bytes)
}

#[tokio::test(start_paused = true)]
async fn snapshot_round_trip_success_denial_do_bit_and_two_caches() {
    let a = cache("cache 30");
    ask(&a, "www.example.org.", RecordType::A, false, &AnswerStub);
    ask(&a, "www.example.org.", RecordType::A, true, &AnswerStub);
    let nx = SoaStub(ResponseCode::NXDomain);
    ask(&a, "nx.example.org.", RecordType::A, false, &nx);
    let nodata = SoaStub(ResponseCode::NoError);
    ask(&a, "www.example.org.", RecordType::AAAA, false, &nodata);
    let b = cache_on("dns://:1053", "cache 30");
    ask(&b, "other.example.net.", RecordType::A, false, &AnswerStub);
    assert_eq!(a.stats().success_entries + a.stats().denial_entries, 4);

    let (bytes, saved) = encode_to_vec(&dyns(&[&a, &b]));
    assert_eq!((saved.caches, saved.entries), (2, 5));
    assert_eq!(saved.bytes, bytes.len() as u64);

    // A new process: the same caches, empty, loaded 10 s later.
    let a2 = cache("cache 30");
    let b2 = cache_on("dns://:1053", "cache 30");
    let hits_before = a2.stats().hits;
    let loaded = load_after(&bytes, &[&b2, &a2], Duration::from_secs(10)).unwrap();
    assert_eq!(loaded.entries, 5);
    assert_eq!(loaded.unknown_cache, 0);
    assert_eq!(loaded.age, Duration::from_secs(10));
    assert_eq!(
        loaded.import,
        ImportStats {
            imported: 5,
            ..ImportStats::default()
        }
    );
    assert_eq!(
        (a2.stats().success_entries, a2.stats().denial_entries),
        (2, 2)
    );

    let m = hit(&a2, "WWW.example.org.", RecordType::A, false).expect("a hit");
    assert_eq!(m.answers[0].ttl, 20, "30 s less the 10 s elapsed");
    assert_eq!(m.queries[0].name().to_ascii(), "WWW.example.org.");
    assert!(m.edns.is_none());
    let m = hit(&a2, "www.example.org.", RecordType::A, true).expect("the DO entry");
    assert!(m.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok));
    let m = hit(&a2, "nx.example.org.", RecordType::A, false).expect("NXDOMAIN");
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities[0].ttl, 20);
    let m = hit(&a2, "www.example.org.", RecordType::AAAA, false).expect("NODATA");
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    assert!(hit(&a2, "other.example.net.", RecordType::A, false).is_none());
    let m = hit(&b2, "other.example.net.", RecordType::A, false).expect("cache b's");
    assert_eq!(m.answers[0].ttl, 20);
    assert_eq!(a2.stats().hits - hits_before, 4, "counted as hits");
}

#[tokio::test(start_paused = true)]
async fn snapshot_entries_past_their_ttl_are_dropped() {
    let (_, bytes) = one_entry("www.example.org.");
    let c = cache("cache 30");
    let loaded = load_after(&bytes, &[&c], Duration::from_secs(30)).unwrap();
    assert_eq!((loaded.import.expired, loaded.import.imported), (1, 0));
    assert!(c.inner.is_empty());
    // A second short of it, one second is left (elapsed rounds up).
    let loaded = load_after(&bytes, &[&c], Duration::from_millis(28_500)).unwrap();
    assert_eq!(loaded.import.imported, 1);
    let m = hit(&c, "www.example.org.", RecordType::A, false).unwrap();
    assert_eq!(m.answers[0].ttl, 1);
}

#[tokio::test(start_paused = true)]
async fn snapshot_a_clock_gone_back_counts_as_no_time() {
    let (_, bytes) = one_entry("www.example.org.");
    let c = cache("cache 30");
    let before = written(&bytes) - Duration::from_secs(3600);
    let loaded = decode_slice_at(&bytes, &dyns(&[&c]), &Limits::default(), before).unwrap();
    assert_eq!((loaded.age, loaded.import.imported), (Duration::ZERO, 1));
    let m = hit(&c, "www.example.org.", RecordType::A, false).unwrap();
    assert_eq!(m.answers[0].ttl, 30);
}

#[tokio::test(start_paused = true)]
async fn snapshot_keeps_stale_entries_within_the_serve_stale_window() {
    let text = "cache 30 {\n serve_stale 1h immediate 7s\n}";
    let a = cache(text);
    ask(&a, "www.example.org.", RecordType::A, false, &AnswerStub);
    // Already stale when exported: still in the snapshot.
    tokio::time::advance(Duration::from_secs(40)).await;
    let (bytes, saved) = encode_to_vec(&dyns(&[&a]));
    assert_eq!(saved.entries, 1);

    let b = cache(text);
    let loaded = load_after(&bytes, &[&b], Duration::from_secs(100)).unwrap();
    assert_eq!(loaded.import.imported, 1);
    let m = hit(&b, "www.example.org.", RecordType::A, false).expect("served stale");
    assert_eq!(m.answers[0].ttl, 7, "RESPONSE_TTL");
    assert_eq!(b.stats().served_stale, 1);
    // Past the window (1 h after expiry): dropped.
    let c = cache(text);
    let loaded = load_after(&bytes, &[&c], Duration::from_secs(3600)).unwrap();
    assert_eq!((loaded.import.imported, loaded.import.expired), (0, 1));
    // A cache without serve_stale does not take stale entries.
    let d = cache("cache 30");
    let loaded = load_after(&bytes, &[&d], Duration::ZERO).unwrap();
    assert_eq!(loaded.import.expired, 1);
    assert!(d.inner.is_empty());
}

#[tokio::test(start_paused = true)]
async fn snapshot_entries_of_a_cache_no_longer_configured_are_dropped_and_counted() {
    let (_, bytes) = one_entry("www.example.org.");
    // Another port, other zones: another identity.
    let other = cache_on("dns://:1053", "cache 30");
    let zones = Cache::new(
        parse(
            &mut Dispenser::new(
                "cache",
                &lex(&Arc::from("Corefile"), "cache 30 example.org").unwrap(),
            ),
            &[".".to_string()],
        )
        .unwrap(),
        "dns://:53",
    )
    .unwrap();
    let loaded = load_after(&bytes, &[&other, &zones], Duration::ZERO).unwrap();
    assert_eq!(loaded.unknown_cache, 1);
    assert_eq!(loaded.import, ImportStats::default());
    assert!(other.inner.is_empty() && zones.inner.is_empty());
    // Two caches with one identity: neither takes the entries.
    let (x, y) = (cache("cache 30"), cache("cache 30"));
    let loaded = load_after(&bytes, &[&x, &y], Duration::ZERO).unwrap();
    assert_eq!(loaded.unknown_cache, 1);
    // An encode leaves the second of two such caches out.
    let (_, saved) = encode_to_vec(&dyns(&[&x, &y]));
    assert_eq!((saved.caches, saved.skipped_caches), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn snapshot_identity_ignores_settings_and_import_fits_them() {
    // Exported with a 300 s cap; imported where the cap is 30 s.
    let a = cache("cache 300");
    ask(&a, "www.example.org.", RecordType::A, false, &AnswerStub);
    ask(
        &a,
        "in.internal.example.org.",
        RecordType::A,
        false,
        &AnswerStub,
    );
    let (bytes, _) = encode_to_vec(&dyns(&[&a]));
    let b = cache("cache 30 {\n disable success internal.example.org\n}");
    let loaded = load_after(&bytes, &[&b], Duration::from_secs(5)).unwrap();
    assert_eq!((loaded.import.imported, loaded.import.refused), (1, 1));
    let m = hit(&b, "www.example.org.", RecordType::A, false).unwrap();
    assert_eq!(m.answers[0].ttl, 30, "capped by this cache's TTL");
    assert!(hit(&b, "in.internal.example.org.", RecordType::A, false).is_none());
}

#[tokio::test(start_paused = true)]
async fn snapshot_import_keeps_the_entry_with_more_ttl_left() {
    let (_, bytes) = one_entry("www.example.org.");
    // The new cache already answered the name itself: 30 s left, more
    // than the snapshot's 20.
    let c = cache("cache 30");
    ask(&c, "www.example.org.", RecordType::A, false, &AnswerStub);
    let loaded = load_after(&bytes, &[&c], Duration::from_secs(10)).unwrap();
    assert_eq!((loaded.import.superseded, loaded.import.imported), (1, 0));
    assert_eq!(
        hit(&c, "www.example.org.", RecordType::A, false)
            .unwrap()
            .answers[0]
            .ttl,
        30
    );
    // Its own entry has 5 s left: the snapshot's 20 s one replaces it.
    tokio::time::advance(Duration::from_secs(25)).await;
    let loaded = load_after(&bytes, &[&c], Duration::from_secs(10)).unwrap();
    assert_eq!(loaded.import.imported, 1);
    assert_eq!(
        hit(&c, "www.example.org.", RecordType::A, false)
            .unwrap()
            .answers[0]
            .ttl,
        20
    );
    assert_eq!(c.stats().success_entries, 1);
}

#[tokio::test(start_paused = true)]
async fn snapshot_truncated_at_any_byte_imports_nothing() {
    let (_, bytes) = one_entry("www.example.org.");
    let c = cache("cache 30");
    let caches = dyns(&[&c]);
    let now = written(&bytes);
    for len in 0..bytes.len() {
        let cut = &bytes[..len];
        let e = decode_slice_at(cut, &caches, &Limits::default(), now).unwrap_err();
        assert!(matches!(e, SnapshotError::Truncated { .. }), "{len}: {e}");
        let e = decode_at(&mut &cut[..], &caches, &Limits::default(), now).unwrap_err();
        assert!(matches!(e, SnapshotError::Truncated { .. }), "{len}: {e}");
        assert!(c.inner.is_empty(), "nothing imported at {len}");
    }
    // One snapshot and more: a slice must be exactly one; a stream reads
    // just its own bytes.
    let mut more = bytes.clone();
    more.push(0);
    let e = decode_slice_at(&more, &caches, &Limits::default(), now).unwrap_err();
    assert!(matches!(e, SnapshotError::Malformed(_)), "{e}");
    assert!(c.inner.is_empty());
    let mut r = &more[..];
    decode_at(&mut r, &caches, &Limits::default(), now).unwrap();
    assert_eq!(r, &[0]);
    assert_eq!(c.inner.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn snapshot_a_corrupt_byte_anywhere_imports_nothing() {
    let (_, bytes) = one_entry("www.example.org.");
    let c = cache("cache 30");
    let caches = dyns(&[&c]);
    let now = written(&bytes);
    for i in 0..bytes.len() {
        for flip in [0x01, 0x80] {
            let mut bad = bytes.clone();
            bad[i] ^= flip;
            let e = decode_slice_at(&bad, &caches, &Limits::default(), now).unwrap_err();
            let want = match i {
                0..8 => matches!(e, SnapshotError::Magic),
                8..10 => matches!(e, SnapshotError::Version(_)),
                // A changed length: too large, or short of its bytes.
                20..28 => matches!(
                    e,
                    SnapshotError::TooLarge { .. }
                        | SnapshotError::Truncated { .. }
                        | SnapshotError::Malformed(_)
                ),
                10..12 => matches!(e, SnapshotError::Malformed(_)),
                _ => matches!(e, SnapshotError::Checksum),
            };
            assert!(want, "byte {i} ^ {flip:#x}: {e}");
            assert!(c.inner.is_empty());
        }
    }
    assert!(
        SnapshotError::Checksum.to_string().contains("corrupt"),
        "says why"
    );
}

#[tokio::test(start_paused = true)]
async fn snapshot_over_the_size_limit_is_refused_before_reading_it() {
    let (_, bytes) = one_entry("www.example.org.");
    let c = cache("cache 30");
    let caches = dyns(&[&c]);
    let tight = Limits {
        max_bytes: bytes.len() as u64 - 1,
    };
    let e = decode_slice_at(&bytes, &caches, &tight, written(&bytes)).unwrap_err();
    assert!(matches!(e, SnapshotError::TooLarge { .. }), "{e}");
    let exact = Limits {
        max_bytes: bytes.len() as u64,
    };
    decode_slice_at(&bytes, &caches, &exact, written(&bytes)).unwrap();
    // A header that claims an enormous body is refused from the header
    // alone (nothing is allocated for it, the reader is not drained).
    let mut huge = bytes[..HEADER_LEN].to_vec();
    huge[20..28].copy_from_slice(&(u64::MAX - 8).to_be_bytes());
    let mut r = std::io::Read::chain(&huge[..], std::io::repeat(0));
    let e = decode_at(&mut r, &caches, &Limits::default(), SystemTime::now()).unwrap_err();
    assert!(matches!(e, SnapshotError::TooLarge { .. }), "{e}");
}

/// A cache that exports what it is given: for snapshots no cache would write.
struct Forged(Vec<(u8, u32, u32, Vec<u8>)>);

impl CacheInspect for Forged {
    fn entries(
        &self,
        _: crate::pkg::inspect::Selector<'_>,
        _: usize,
    ) -> Vec<crate::pkg::inspect::CachedEntry> {
        Vec::new()
    }
    fn purge(&self, _: crate::pkg::inspect::Selector<'_>) -> u64 {
        0
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn snapshot_id(&self) -> &str {
        "cache|dns://:53|bind=*|zones=.|cache=."
    }
    fn export(&self, f: &mut dyn FnMut(SnapshotEntry<'_>)) {
        for (key_bits, fresh_for, dead_in, wire) in &self.0 {
            f(SnapshotEntry {
                key_bits: *key_bits,
                fresh_for: *fresh_for,
                dead_in: *dead_in,
                wire,
            });
        }
    }
    fn import(&self, _: &[SnapshotEntry<'_>], _: u64) -> ImportStats {
        ImportStats::default()
    }
}

#[tokio::test(start_paused = true)]
async fn snapshot_entries_no_cache_would_hold_are_refused() {
    let (src, _) = one_entry("www.example.org.");
    let mut good = Vec::new();
    src.inner.export(&mut |e| good = e.wire.to_vec());
    assert_eq!(src.inner.snapshot_id(), Forged(vec![]).snapshot_id());
    let mut junk = good.clone();
    junk.truncate(good.len() - 3);
    let mut axfr = good.clone();
    let qtype_at = 12 + "www.example.org.".len() + 1;
    axfr[qtype_at..qtype_at + 2].copy_from_slice(&252u16.to_be_bytes());
    let mut tc = good.clone();
    tc[2] |= 0x02;
    let forged = Forged(vec![
        (0, 30, 30, junk),
        (0, 30, 30, axfr),
        (0, 30, 30, tc),
        (0x80, 30, 30, good.clone()),
        (0, 30, 30, vec![0xff; 64]),
        // Dead already: not written.
        (0, 0, 0, good.clone()),
        // dead_in below fresh_for counts as fresh_for; a huge TTL is capped.
        (0, u32::MAX, 0, good),
    ]);
    let (bytes, saved) = encode_to_vec(&[Arc::new(forged) as Arc<dyn CacheInspect>]);
    assert_eq!(
        saved.entries, 6,
        "an entry with nothing left is not written"
    );
    let c = cache("cache 30");
    let loaded = load_after(&bytes, &[&c], Duration::ZERO).unwrap();
    assert_eq!((loaded.import.refused, loaded.import.imported), (5, 1));
    let m = hit(&c, "www.example.org.", RecordType::A, false).unwrap();
    assert_eq!(m.answers[0].ttl, 30);
}

#[tokio::test(start_paused = true)]
async fn snapshot_import_stays_within_capacity_and_max_bytes() {
    let src = cache("cache 30 {\n success 5000\n}");
    for i in 0..1000 {
        ask(
            &src,
            &format!("n{i}.example.org."),
            RecordType::A,
            false,
            &AnswerStub,
        );
    }
    let (bytes, saved) = encode_to_vec(&dyns(&[&src]));
    assert_eq!(saved.entries, 1000);
    let small = cache("cache 30 {\n success 100\n}");
    let loaded = load_after(&bytes, &[&small], Duration::ZERO).unwrap();
    assert!(small.stats().success_entries <= 100);
    assert!(loaded.import.evicted >= 900, "{:?}", loaded.import);
    let tight = cache("cache 30 {\n max_bytes 16k\n}");
    let loaded = load_after(&bytes, &[&tight], Duration::ZERO).unwrap();
    assert!(tight.stats().bytes <= 16 << 10, "{}", tight.stats().bytes);
    assert!(loaded.import.evicted > 0);
}

#[tokio::test(start_paused = true)]
async fn snapshot_imported_entries_are_prefetched_as_native_ones() {
    // A server label of its own: the prefetch counter is the metric's.
    let server = "dns://:prefetch-snapshot";
    let text = "cache 30 {\n prefetch 1 1m 50%\n}";
    let src = cache_on(server, "cache 30");
    ask(&src, "www.example.org.", RecordType::A, false, &AnswerStub);
    let (bytes, _) = encode_to_vec(&dyns(&[&src]));
    let c = cache_on(server, text);
    load_after(&bytes, &[&c], Duration::from_secs(10)).unwrap();
    // 20 of 30 s left: over half, no prefetch yet.
    assert!(hit(&c, "www.example.org.", RecordType::A, false).is_some());
    assert_eq!(c.stats().prefetches, 0);
    tokio::time::advance(Duration::from_secs(6)).await;
    // 14 s left, under half of the entry's whole TTL (30 s, not the 20 s
    // it came with): prefetched.
    assert!(hit(&c, "www.example.org.", RecordType::A, false).is_some());
    assert_eq!(c.stats().prefetches, 1);
}

#[tokio::test(start_paused = true)]
async fn snapshot_saved_to_a_file_and_loaded_back() {
    use std::os::unix::fs::PermissionsExt;
    let (src, _) = one_entry("www.example.org.");
    let dir = std::env::temp_dir().join(format!(
        "nodedns-snapshot-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cache.snap");
    let saved = snapshot::save(&path, &dyns(&[&src])).unwrap();
    assert_eq!(saved.entries, 1);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), saved.bytes);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Saved again over it: replaced whole, no temporary file left.
    snapshot::save(&path, &dyns(&[&src])).unwrap();
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let c = cache("cache 30");
    let loaded = snapshot::load(&path, &dyns(&[&c]), &Limits::default()).unwrap();
    assert_eq!(loaded.import.imported, 1);
    assert!(hit(&c, "www.example.org.", RecordType::A, false).is_some());
    let e = snapshot::load(
        &path,
        &dyns(&[&c]),
        &Limits {
            max_bytes: saved.bytes - 1,
        },
    )
    .unwrap_err();
    assert!(matches!(e, SnapshotError::TooLarge { .. }));
    let e = snapshot::load(&dir.join("missing"), &dyns(&[&c]), &Limits::default()).unwrap_err();
    assert!(matches!(e, SnapshotError::Io(ref io) if io.kind() == std::io::ErrorKind::NotFound));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// 100k entries: how long an encode and a decode (with import) take, and
/// the snapshot's size. Printed; run with `--nocapture` (and `--release`
/// for numbers that mean anything).
#[tokio::test(start_paused = true)]
async fn snapshot_of_100k_entries_timing() {
    const N: usize = 100_000;
    let text = "cache 30 {\n success 120000\n}";
    let src = cache(text);
    for i in 0..N {
        ask(
            &src,
            &format!("host-{i}.example.org."),
            RecordType::A,
            false,
            &AnswerStub,
        );
    }
    assert_eq!(src.stats().success_entries, N);
    let t = std::time::Instant::now();
    let (bytes, saved) = encode_to_vec(&dyns(&[&src]));
    let encode = t.elapsed();
    assert_eq!(saved.entries, N as u64);
    let dst = cache(text);
    let t = std::time::Instant::now();
    let loaded = load_after(&bytes, &[&dst], Duration::ZERO).unwrap();
    let decode = t.elapsed();
    assert_eq!(loaded.import.imported, N as u64);
    println!(
        "snapshot of {N} entries: {} bytes, encode {encode:?}, decode+import {decode:?}",
        bytes.len()
    );
}
