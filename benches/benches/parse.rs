//! Header + question + EDNS read of a typical query (no full message).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use nodedns_plugins::{Request, Transport};

fn query() -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii("www.Example.org.").unwrap(),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    m.to_vec().unwrap()
}

fn bench(c: &mut Criterion) {
    let raw = query();
    let client = "127.0.0.1:5353".parse().unwrap();
    c.bench_function("parse header+question+edns", |b| {
        b.iter(|| {
            let r = Request::parse(black_box(&raw), client, Transport::Udp).unwrap();
            black_box(r.qtype());
        })
    });
    c.bench_function("parse full message (hickory, for comparison)", |b| {
        b.iter(|| black_box(Message::from_vec(black_box(&raw)).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
