//! Bad input: garbage packets get FORMERR or nothing, never a crash, and
//! the server keeps answering.

use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use nodedns_tests::client::{query, read_frame, write_frame};
use nodedns_tests::{Agent, Client};

/// A deterministic xorshift generator: the flood is the same every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Packets that exercise the parser's edges.
fn nasty_packets() -> Vec<Vec<u8>> {
    let good = query("example.org.", RecordType::A).to_vec().unwrap();
    let mut out = vec![
        vec![],
        vec![0],
        good[..5].to_vec(),
        good[..12].to_vec(),
        good[..good.len() - 1].to_vec(),
    ];
    // Question name that is a compression pointer to itself.
    let mut p = good[..12].to_vec();
    p.extend([0xc0, 12, 0, 1, 0, 1]);
    out.push(p);
    // A two-pointer loop in the additional section.
    let mut p = good.clone();
    p[11] = 1;
    p.extend([
        0xc0,
        (p.len() + 2) as u8,
        0xc0,
        p.len() as u8,
        0,
        41,
        16,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    out.push(p);
    // Label longer than 63, name longer than 255.
    let mut p = good[..12].to_vec();
    p.push(64);
    p.extend([b'a'; 64]);
    p.extend([0, 0, 1, 0, 1]);
    out.push(p);
    let mut p = good[..12].to_vec();
    for _ in 0..5 {
        p.push(63);
        p.extend([b'a'; 63]);
    }
    p.extend([0, 0, 1, 0, 1]);
    out.push(p);
    // Counts that lie.
    let mut p = good.clone();
    p[7] = 200;
    out.push(p);
    out
}

#[tokio::test]
async fn garbage_gets_formerr_then_normal_answers() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .start()
        .await;
    let c = Client::new(agent.udp());
    let good = query("example.org.", RecordType::A).to_vec().unwrap();
    let mut short = good[..good.len() - 2].to_vec();
    short[0] = 0xab;
    short[1] = 0xcd;
    let raw = c.udp_raw(&short).await.expect("FORMERR reply");
    let m = Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(m.metadata.id, 0xabcd);
    // Too short for a header: nothing.
    assert!(
        c.udp_raw_within(&[1, 2, 3], Duration::from_millis(300))
            .await
            .is_none()
    );
    // And then a normal query works.
    assert_eq!(
        c.udp("example.org.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NoError
    );
}

#[tokio::test]
async fn garbage_flood_leaves_the_server_answering() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .start()
        .await;
    let udp = agent.udp();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let nasty = nasty_packets();
    // 5,000 packets: the crafted ones, random bytes, and random bytes with a query-like header.
    for i in 0..5_000usize {
        let p = match i % 3 {
            0 => nasty[i / 3 % nasty.len()].clone(),
            1 => {
                let n = (rng.next() % 600) as usize;
                rng.bytes(n)
            }
            _ => {
                let n = 12 + (rng.next() % 200) as usize;
                let mut p = rng.bytes(n);
                p[2] &= 0x79; // QR clear, opcode QUERY-ish
                p[4] = 0;
                p[5] = 1;
                p
            }
        };
        let _ = sock.send_to(&p, udp).await;
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Garbage over TCP too, on several connections.
    let c = Client::new(agent.tcp());
    for p in nasty.iter().filter(|p| !p.is_empty()) {
        let mut s = c.connect().await;
        write_frame(&mut s, p).await;
        let _ = read_frame(&mut s).await;
    }
    let mut s = c.connect().await;
    use tokio::io::AsyncWriteExt;
    let _ = s.write_all(&[0xff, 0xff, 1, 2, 3]).await; // a frame that never completes
    drop(s);
    // Still serving, over both transports.
    let c = Client::new(udp);
    for _ in 0..10 {
        assert_eq!(
            c.udp("example.org.", RecordType::A)
                .await
                .metadata
                .response_code,
            ResponseCode::NoError
        );
    }
    assert_eq!(
        c.tcp("example.org.", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::NoError
    );
    assert!(
        agent.stderr().iter().all(|l| !l.contains("panicked")),
        "{:?}",
        agent.stderr()
    );
}

#[tokio::test]
async fn unknown_opcode_gets_notimp() {
    let agent = Agent::corefile(".:0 {\n    bind 127.0.0.1\n    whoami\n}\n")
        .start()
        .await;
    let c = Client::new(agent.udp());
    let mut raw = query("example.org.", RecordType::A).to_vec().unwrap();
    raw[2] = (raw[2] & 0x87) | (2 << 3); // opcode STATUS
    let m = Message::from_vec(&c.udp_raw(&raw).await.expect("reply")).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
}
