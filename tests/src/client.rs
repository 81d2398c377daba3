//! A small DNS client for tests: UDP and TCP, raw bytes or messages,
//! every call under a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// How long one exchange may take.
pub const TIMEOUT: Duration = Duration::from_secs(6);
/// UDP tries within [`TIMEOUT`].
const UDP_TRIES: u32 = 3;

/// Builds a query: RD set, random ID.
pub fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).expect("valid test name"),
        qtype,
    ));
    m
}

/// A query in class `class`.
pub fn query_class(name: &str, qtype: RecordType, class: DNSClass) -> Message {
    let mut m = query(name, qtype);
    m.queries[0].set_query_class(class);
    m
}

/// Adds EDNS0 with a UDP size.
pub fn with_edns(mut m: Message, udp_size: u16) -> Message {
    let mut e = Edns::new();
    e.set_max_payload(udp_size);
    m.set_edns(e);
    m
}

/// The addresses of the A records in a reply's answer section.
pub fn a_of(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// A client bound to one server address.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The server.
    pub server: SocketAddr,
}

impl Client {
    /// A client for `server`.
    pub fn new(server: SocketAddr) -> Self {
        Self { server }
    }

    /// Asks over UDP; panics on timeout or a reply that does not parse.
    pub async fn udp(&self, name: &str, qtype: RecordType) -> Message {
        self.udp_msg(&query(name, qtype)).await
    }

    /// Asks over TCP.
    pub async fn tcp(&self, name: &str, qtype: RecordType) -> Message {
        self.tcp_msg(&query(name, qtype)).await
    }

    /// Sends a message over UDP and returns the reply with the same ID.
    pub async fn udp_msg(&self, m: &Message) -> Message {
        let raw = self
            .udp_raw(&m.to_vec().expect("encode query"))
            .await
            .unwrap_or_else(|| panic!("no UDP reply from {} within {TIMEOUT:?}", self.server));
        let reply = Message::from_vec(&raw).expect("reply parses");
        assert_eq!(reply.metadata.id, m.metadata.id, "reply ID");
        reply
    }

    /// Sends a message over TCP (one connection) and returns the reply.
    pub async fn tcp_msg(&self, m: &Message) -> Message {
        let mut s = self.connect().await;
        write_frame(&mut s, &m.to_vec().expect("encode query")).await;
        let raw = read_frame(&mut s).await.expect("TCP reply");
        let reply = Message::from_vec(&raw).expect("reply parses");
        assert_eq!(reply.metadata.id, m.metadata.id, "reply ID");
        reply
    }

    /// Sends raw bytes over UDP; the reply bytes, or `None` if none came
    /// within the timeout. Like a real client (dig tries three times), it
    /// sends again when a try goes unanswered: loopback drops datagrams
    /// when a receive buffer fills under load.
    pub async fn udp_raw(&self, raw: &[u8]) -> Option<Vec<u8>> {
        for _ in 0..UDP_TRIES {
            if let Some(r) = self.udp_raw_within(raw, TIMEOUT / UDP_TRIES).await {
                return Some(r);
            }
        }
        None
    }

    /// Sends raw bytes over UDP once and waits at most `within` for a reply.
    pub async fn udp_raw_within(&self, raw: &[u8], within: Duration) -> Option<Vec<u8>> {
        let bind: SocketAddr = if self.server.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        }
        .parse()
        .expect("addr");
        let sock = UdpSocket::bind(bind).await.expect("bind client socket");
        sock.connect(self.server).await.expect("connect");
        sock.send(raw).await.expect("send");
        let mut buf = vec![0u8; 65535];
        match timeout(within, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                buf.truncate(n);
                Some(buf)
            }
            _ => None,
        }
    }

    /// Opens a TCP connection.
    pub async fn connect(&self) -> TcpStream {
        timeout(TIMEOUT, TcpStream::connect(self.server))
            .await
            .expect("connect timeout")
            .expect("connect")
    }
}

/// Writes a length-prefixed frame.
pub async fn write_frame(s: &mut TcpStream, raw: &[u8]) {
    let len = u16::try_from(raw.len()).expect("frame fits");
    let mut buf = Vec::with_capacity(raw.len() + 2);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(raw);
    timeout(TIMEOUT, s.write_all(&buf))
        .await
        .expect("write timeout")
        .expect("write");
}

/// Reads a length-prefixed frame; `None` at EOF or timeout.
pub async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let len = timeout(TIMEOUT, s.read_u16()).await.ok()?.ok()?;
    let mut buf = vec![0u8; usize::from(len)];
    timeout(TIMEOUT, s.read_exact(&mut buf)).await.ok()?.ok()?;
    Some(buf)
}
