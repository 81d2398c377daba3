//! Cache snapshots (`pkg::snapshot`) of 100k entries: how long an encode
//! (every entry exported shard by shard, written into one buffer with its
//! checksum) and a decode (read, verified, parsed, every entry analysed
//! and stored into an empty cache) take, and the snapshot's size (printed).
//!
//! The entries are A answers of about 60 bytes, as a node's cache mostly
//! holds. They are put in through a snapshot made by a stand-in exporter
//! (the public trait), since a cache fills only through queries.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use nodedns::config::{Config, load_str};
use nodedns_plugins::pkg::inspect::{
    CacheInspect, CachedEntry, ImportStats, Selector, SnapshotEntry,
};
use nodedns_plugins::pkg::snapshot::{Limits, decode_slice, encode_to_vec};

const N: usize = 100_000;
const COREFILE: &str = ". {\n cache 300 {\n  success 120000\n }\n whoami\n}\n";

/// Exports prepared replies under a given identity.
struct Exporter {
    id: String,
    replies: Vec<Vec<u8>>,
}

impl CacheInspect for Exporter {
    fn entries(&self, _: Selector<'_>, _: usize) -> Vec<CachedEntry> {
        Vec::new()
    }
    fn purge(&self, _: Selector<'_>) -> u64 {
        0
    }
    fn len(&self) -> u64 {
        self.replies.len() as u64
    }
    fn snapshot_id(&self) -> &str {
        &self.id
    }
    fn export(&self, f: &mut dyn FnMut(SnapshotEntry<'_>)) {
        for wire in &self.replies {
            f(SnapshotEntry {
                key_bits: 0,
                fresh_for: 300,
                dead_in: 300,
                wire,
            });
        }
    }
    fn import(&self, _: &[SnapshotEntry<'_>], _: u64) -> ImportStats {
        ImportStats::default()
    }
}

fn reply(i: usize) -> Vec<u8> {
    let name = Name::from_ascii(format!("host-{i}.example.org.")).unwrap();
    let mut m = Message::query();
    m.metadata.message_type = hickory_proto::op::MessageType::Response;
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_query(Query::query(name.clone(), RecordType::A));
    let ip = u32::try_from(i).unwrap().to_be_bytes();
    m.add_answer(Record::from_rdata(
        name,
        300,
        RData::A(A::new(10, ip[1], ip[2], ip[3])),
    ));
    m.to_vec().unwrap()
}

fn caches(config: &Config) -> &[Arc<dyn CacheInspect>] {
    &config.services.caches
}

fn bench(c: &mut Criterion) {
    let full = load_str(COREFILE).unwrap();
    let exporter = Exporter {
        id: caches(&full)[0].snapshot_id().to_string(),
        replies: (0..N).map(reply).collect(),
    };
    let (seed, _) = encode_to_vec(&[Arc::new(exporter) as Arc<dyn CacheInspect>]);
    let loaded = decode_slice(&seed, caches(&full), &Limits::default()).unwrap();
    assert_eq!(loaded.import.imported, N as u64, "{loaded:?}");
    let (bytes, saved) = encode_to_vec(caches(&full));
    assert_eq!(saved.entries, N as u64);
    eprintln!(
        "snapshot of {N} entries: {} bytes ({} per entry)",
        bytes.len(),
        bytes.len() / N
    );

    let mut g = c.benchmark_group("cache snapshot");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("encode 100k entries", |b| {
        b.iter(|| black_box(encode_to_vec(caches(&full)).0.len()))
    });
    g.bench_function("decode and import 100k entries", |b| {
        b.iter_batched(
            || load_str(COREFILE).unwrap(),
            |empty| {
                let l = decode_slice(&bytes, caches(&empty), &Limits::default()).unwrap();
                assert_eq!(l.import.imported, N as u64);
                empty
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
