use std::sync::Mutex;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::*;
use crate::pkg::test::{Stub, run, setup as run_setup};
use crate::request::{Transport, name_to_wire};

#[test]
fn setup_table() {
    assert!(run_setup("loop", setup, "loop").is_ok());
    assert_eq!(
        run_setup("loop", setup, "loop x").unwrap_err().to_string(),
        "Corefile:1: loop: wrong argument count or unexpected line ending after 'x'"
    );
    assert_eq!(
        run_setup("loop", setup, "loop\nloop")
            .unwrap_err()
            .to_string(),
        "Corefile:2: loop: plugin can only be used once per server block"
    );
    let (out, _) = run_setup("loop", setup, "loop").unwrap();
    assert_eq!(out.tasks.len(), 1, "the probe runs once the server is up");
}

#[test]
fn three_sightings_of_the_probe_is_a_loop() {
    let fired = Arc::new(Mutex::new(Vec::<String>::new()));
    let f = Arc::clone(&fired);
    let l = Loop::new(
        name_to_wire(".").unwrap(),
        Arc::new(move |m| f.lock().unwrap().push(m.to_string())),
    );
    let mut probe_name = String::new();
    write_name(&mut probe_name, &l.state.qname);
    let probe = crate::pkg::test::query(&probe_name, RecordType::HINFO);
    // Other queries, even HINFO ones, pass untouched.
    for _ in 0..5 {
        let out = run(
            &l,
            &crate::pkg::test::query("other.example.", RecordType::HINFO),
            Transport::Udp,
            Stub::Rcode(ResponseCode::NoError),
        );
        assert!(matches!(out.flow, Flow::Next));
    }
    for i in 1..=3 {
        let out = run(
            &l,
            &probe,
            Transport::Udp,
            Stub::Rcode(ResponseCode::NXDomain),
        );
        assert!(matches!(out.flow, Flow::Next));
        assert_eq!(
            fired.lock().unwrap().len(),
            usize::from(i == 3),
            "after {i}"
        );
    }
    let msg = fired.lock().unwrap()[0].clone();
    assert!(
        msg.starts_with("Loop (127.0.0.1:40212 -> dns://:53) detected for zone \".\""),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("Query: \"HINFO {probe_name}\"")),
        "{msg}"
    );
}

#[test]
fn disabled_after_the_probe_is_answered() {
    let fired = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&fired);
    let l = Loop::new(
        name_to_wire(".").unwrap(),
        Arc::new(move |_| {
            f.fetch_add(1, Ordering::Relaxed);
        }),
    );
    l.state.off.store(true, Ordering::Relaxed);
    let mut probe_name = String::new();
    write_name(&mut probe_name, &l.state.qname);
    for _ in 0..5 {
        let _ = run(
            &l,
            &crate::pkg::test::query(&probe_name, RecordType::HINFO),
            Transport::Udp,
            Stub::Rcode(ResponseCode::NXDomain),
        );
    }
    assert_eq!(fired.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn probe_stops_once_answered() {
    // A tiny server that answers anything with its own ID.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        for _ in 0..10 {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            buf[2] |= 0x80;
            let _ = sock.send_to(&buf[..n], peer).await;
        }
    });
    let l = Loop::new(name_to_wire(".").unwrap(), Arc::new(|_| {}));
    let bound = Arc::new(BoundAddrs::default());
    bound.add(addr);
    let task = tokio::spawn(probe(Arc::clone(&l.state), l.probe(), bound));
    let done = tokio::time::timeout(Duration::from_secs(60), task).await;
    assert!(done.is_ok(), "probe ends");
    assert!(l.state.off.load(Ordering::Relaxed));
    server.abort();
}
