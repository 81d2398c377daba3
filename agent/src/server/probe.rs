//! DNS-level health: the agent asks each of its own UDP and TCP listeners
//! a probe query, and *health* answers 200 only when every one replied in
//! time. The probe (`probe.nodedns.invalid.`, class CH) is answered by the
//! listener itself, before any server block: it shows that the socket is
//! open, read and written, whatever the upstreams do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nodedns_plugins::Request;
use nodedns_plugins::pkg::lifecycle::DnsCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use nodedns_plugins::Reply;

/// The probe's name, lower-case wire form.
pub const NAME: &[u8] = b"\x05probe\x07nodedns\x07invalid\x00";
/// Its class: CHAOS, which ordinary traffic hardly uses, so the check
/// costs IN queries one comparison they already make.
pub const CLASS: u16 = 3;
/// How long a listener has to answer.
pub const DEADLINE: Duration = Duration::from_secs(1);
/// How long a result is reused (probes from several sources at once share
/// one round).
const FRESH: Duration = Duration::from_millis(500);

/// Whether `req` is the probe.
pub(super) fn is_probe(req: &Request<'_>) -> bool {
    req.qclass() == CLASS && req.qname_lower() == NAME
}

/// Answers the probe: NOERROR, the question, no records.
pub(super) fn answer(reply: &mut Reply, req: &Request<'_>) {
    super::chain::header_only(
        reply,
        req.header(),
        hickory_proto::op::ResponseCode::NoError,
    );
    let buf = reply.wire_buf();
    buf[5] = 1; // QDCOUNT
    buf.extend_from_slice(&req.raw()[12..req.question_end()]);
    reply.mark_wire();
}

/// The probe query with `id`.
fn query(id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(12 + NAME.len() + 4);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(NAME);
    q.extend_from_slice(&16u16.to_be_bytes()); // TXT
    q.extend_from_slice(&CLASS.to_be_bytes());
    q
}

fn is_answer(reply: &[u8], id: u16) -> bool {
    reply.len() >= 12
        && reply[..2] == id.to_be_bytes()
        && reply[2] & 0x80 != 0
        && reply[3] & 0x0f == 0
}

/// The listeners to probe and the last result.
#[derive(Default)]
pub struct SelfCheck {
    targets: ArcSwap<Vec<SocketAddr>>,
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl SelfCheck {
    /// Sets the `dns://` listeners to probe (their addresses as bound; a
    /// wildcard is probed on loopback).
    pub fn set_targets(&self, addrs: Vec<SocketAddr>) {
        self.targets.store(Arc::new(addrs));
    }

    /// Probes every target over UDP and TCP, at once.
    pub async fn probe_all(&self) -> Result<(), String> {
        let targets = self.targets.load_full();
        let mut rounds = tokio::task::JoinSet::new();
        for (i, addr) in targets.iter().copied().enumerate() {
            let id = (std::process::id() as u16) ^ (i as u16).wrapping_mul(0x9e37);
            rounds.spawn(async move { ("udp", addr, probe_udp(addr, id).await) });
            rounds.spawn(async move { ("tcp", addr, probe_tcp(addr, id.wrapping_add(1)).await) });
        }
        let mut failed = Vec::new();
        while let Some(done) = rounds.join_next().await {
            match done {
                Ok((_, _, Ok(()))) => {}
                Ok((proto, addr, Err(e))) => failed.push(format!("{proto} {addr}: {e}")),
                Err(e) => failed.push(format!("probe: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            failed.sort();
            Err(format!(
                "DNS listeners not answering: {}",
                failed.join("; ")
            ))
        }
    }
}

impl DnsCheck for SelfCheck {
    fn check(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            // One round at a time; callers that waited share its result.
            let mut last = self.last.lock().await;
            if let Some((at, result)) = &*last
                && at.elapsed() < FRESH
            {
                return result.clone();
            }
            let result = self.probe_all().await;
            *last = Some((Instant::now(), result.clone()));
            result
        })
    }
}

async fn probe_udp(addr: SocketAddr, id: u16) -> Result<(), String> {
    let local: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().map_err(|_| "address")?
    } else {
        "0.0.0.0:0".parse().map_err(|_| "address")?
    };
    let sock = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(|e| e.to_string())?;
    sock.connect(addr).await.map_err(|e| e.to_string())?;
    let work = async {
        sock.send(&query(id)).await?;
        let mut buf = [0u8; 512];
        loop {
            let n = sock.recv(&mut buf).await?;
            if is_answer(&buf[..n], id) {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    match tokio::time::timeout(DEADLINE, work).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {DEADLINE:?}")),
    }
}

async fn probe_tcp(addr: SocketAddr, id: u16) -> Result<(), String> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let q = query(id);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).await?;
        let len = s.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        s.read_exact(&mut buf).await?;
        Ok::<bool, std::io::Error>(is_answer(&buf, id))
    };
    match tokio::time::timeout(DEADLINE, work).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err("a reply that is not the probe's".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {DEADLINE:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_or_closed_listener_fails_with_its_reason() {
        // A UDP socket that never answers and a TCP port nobody listens on.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let check = SelfCheck::default();
        check.set_targets(vec![addr]);
        let e = check.check().await.unwrap_err();
        assert!(
            e.contains(&format!("udp {addr}: no answer within 1s")),
            "{e}"
        );
        assert!(e.contains(&format!("tcp {addr}: ")), "{e}");
        // No targets: nothing to fail.
        check.set_targets(Vec::new());
        tokio::time::sleep(FRESH).await;
        assert!(check.check().await.is_ok());
    }

    #[test]
    fn the_probe_parses_as_a_query() {
        let q = query(7);
        let req = Request::parse(
            &q,
            "127.0.0.1:1".parse().unwrap(),
            nodedns_plugins::Transport::Udp,
        )
        .unwrap();
        assert!(is_probe(&req));
    }
}
