//! The forward path: a query in, through the chain to an in-process UDP
//! upstream on loopback and back, the reply out (what a cache miss costs).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use nodedns::config::load_str;
use nodedns::server::Limits;
use nodedns::server::chain::{Handled, handle, resume};
use nodedns_plugins::{Reply, Transport};

fn query(name: &str) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

/// An upstream that echoes each query back as a response (QR set).
async fn echo_upstream() -> std::net::SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            buf[2] |= 0x80;
            let _ = sock.send_to(&buf[..n], peer).await;
        }
    });
    addr
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let up = rt.block_on(echo_upstream());
    let config = load_str(&format!(". {{\n forward . {up}\n}}\n")).unwrap();
    let router = config.listeners.values().next().unwrap().clone();
    let raw = query("www.example.org.");
    let client = "127.0.0.1:5353".parse().unwrap();
    let limits = Limits::default();
    let mut reply = Reply::new();
    c.bench_function("forward: query -> UDP upstream -> reply", |b| {
        b.iter(|| {
            let Handled::Upstream(p) = handle(
                &router,
                black_box(&raw),
                client,
                Transport::Udp,
                &mut reply,
                &limits,
            ) else {
                panic!("forward goes upstream");
            };
            let out = rt.block_on(resume(p, &raw, client, Transport::Udp, limits));
            black_box(out.expect("a reply"));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
