//! The harness's own checks: the fake upstream does what each fault mode says.

use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use nodedns_tests::client::query;
use nodedns_tests::{Client, FakeUpstream, Fault};

#[tokio::test]
async fn fake_upstream_fault_modes_and_counters() {
    let up = FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .a("www.example.org.", "192.0.2.2")
        .start()
        .await;
    let c = Client::new(up.addr);

    // Normal: records, NXDOMAIN with SOA for unknown names, over UDP and TCP.
    let m = c.udp("WWW.example.org.", RecordType::A).await;
    assert_eq!(m.answers.len(), 2);
    let m = c.tcp("www.example.org.", RecordType::A).await;
    assert_eq!(m.answers.len(), 2);
    let m = c.udp("nope.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.authorities.len(), 1);
    let m = c.udp("www.example.org.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "NODATA");
    assert!(m.answers.is_empty());
    assert_eq!(up.count("www.example.org", RecordType::A), 2);
    assert_eq!(up.count("www.example.org", RecordType::AAAA), 1);
    assert_eq!(
        (up.udp_queries(), up.tcp_queries(), up.tcp_connections()),
        (3, 1, 1)
    );

    up.set_fault(Fault::ServFail);
    assert_eq!(
        c.udp("www.example.org.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::ServFail
    );

    up.set_fault(Fault::Truncate);
    let m = c.udp("www.example.org.", RecordType::A).await;
    assert!(m.metadata.truncation && m.answers.is_empty());
    let m = c.tcp("www.example.org.", RecordType::A).await;
    assert!(!m.metadata.truncation && m.answers.len() == 2);

    let raw = query("www.example.org.", RecordType::A);
    up.set_fault(Fault::WrongId);
    let reply = c.udp_raw(&raw.to_vec().unwrap()).await.unwrap();
    assert_eq!(
        Message::from_vec(&reply).unwrap().metadata.id,
        raw.metadata.id.wrapping_add(1)
    );

    up.set_fault(Fault::Garbage);
    let reply = c.udp_raw(&raw.to_vec().unwrap()).await.unwrap();
    assert_eq!(reply.len(), 40);

    up.set_fault(Fault::Drop);
    assert!(
        c.udp_raw_within(&raw.to_vec().unwrap(), Duration::from_millis(200))
            .await
            .is_none()
    );

    up.set_fault(Fault::Delay(Duration::from_millis(150)));
    let t = Instant::now();
    let m = c.udp("www.example.org.", RecordType::A).await;
    assert!(t.elapsed() >= Duration::from_millis(150));
    let RData::A(a) = &m.answers[0].data else {
        panic!()
    };
    assert_eq!(a.0.to_string(), "192.0.2.1");
}

#[tokio::test]
async fn fake_upstream_wildcard() {
    let up = FakeUpstream::builder()
        .wildcard_a("192.0.2.53")
        .start()
        .await;
    let m = Client::new(up.addr)
        .udp("anything.example.", RecordType::A)
        .await;
    let RData::A(a) = &m.answers[0].data else {
        panic!()
    };
    assert_eq!(a.0.to_string(), "192.0.2.53");
}
