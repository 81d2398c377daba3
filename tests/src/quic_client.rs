//! Clients of the agent's QUIC listeners: DNS over QUIC (RFC 9250) and
//! DNS over HTTP/3, on quinn and h3, trusting a [`TestCa`]. Every wait has
//! a deadline.
//!
//! [`TestCa`]: crate::secure_client::TestCa

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use hickory_proto::op::Message;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::ClientConfig;
use tokio::time::timeout;

use crate::secure_client::SERVER_NAME;

/// How long one exchange may take.
const WAIT: Duration = Duration::from_secs(5);

/// A QUIC connection and the endpoint (UDP socket) it runs on.
pub struct QuicConn {
    /// The connection.
    pub conn: quinn::Connection,
    /// Kept open with the connection.
    pub endpoint: quinn::Endpoint,
}

impl Drop for QuicConn {
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"");
    }
}

/// Opens a QUIC connection to `addr` for [`SERVER_NAME`] with `config`
/// (its ALPN says `doq` or `h3`).
pub async fn connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> Result<QuicConn, quinn::ConnectionError> {
    let crypto = QuicClientConfig::try_from(Arc::clone(config)).expect("TLS 1.3 client");
    let mut transport = quinn::TransportConfig::default();
    // Kept alive, so a server's idle timeout shorter than a test's
    // waits does not close the connection under it.
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30)).expect("idle"),
        ))
        .keep_alive_interval(Some(Duration::from_millis(200)));
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    let connecting = endpoint
        .connect_with(client, addr, SERVER_NAME)
        .expect("connect");
    let conn = match timeout(WAIT, connecting).await {
        Ok(c) => c?,
        Err(_) => return Err(quinn::ConnectionError::TimedOut),
    };
    Ok(QuicConn { conn, endpoint })
}

/// What the server did with one DoQ stream.
#[derive(Debug)]
pub enum DoqOutcome {
    /// The stream's bytes (prefix included), up to its end.
    Data(Vec<u8>),
    /// The stream was reset with this code.
    Reset(u64),
    /// The connection was closed with this application code.
    Closed(u64),
    /// Something else went wrong (or nothing came in time).
    Other(String),
}

/// Sends `bytes` on a new stream of `conn`, finishes it, and reads the
/// whole reply stream.
pub async fn doq_stream(conn: &quinn::Connection, bytes: &[u8]) -> DoqOutcome {
    let run = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(bytes).await?;
        let _ = send.finish();
        let data = recv.read_to_end(70_000).await?;
        Ok::<_, stream_error::Error>(data)
    };
    match timeout(WAIT, run).await {
        Err(_) => DoqOutcome::Other("timed out".into()),
        Ok(Ok(d)) => DoqOutcome::Data(d),
        Ok(Err(e)) => outcome(e, conn),
    }
}

fn outcome(e: stream_error::Error, conn: &quinn::Connection) -> DoqOutcome {
    if let Some(quinn::ConnectionError::ApplicationClosed(c)) = conn.close_reason() {
        return DoqOutcome::Closed(c.error_code.into_inner());
    }
    match e {
        stream_error::Error::Read(quinn::ReadToEndError::Read(quinn::ReadError::Reset(c))) => {
            DoqOutcome::Reset(c.into_inner())
        }
        stream_error::Error::Read(e) => DoqOutcome::Other(e.to_string()),
        stream_error::Error::Write(e) => DoqOutcome::Other(e.to_string()),
        stream_error::Error::Conn(e) => DoqOutcome::Other(e.to_string()),
    }
}

/// The error kinds of one DoQ exchange.
mod stream_error {
    pub(super) enum Error {
        Conn(quinn::ConnectionError),
        Write(quinn::WriteError),
        Read(quinn::ReadToEndError),
    }
    impl From<quinn::ConnectionError> for Error {
        fn from(e: quinn::ConnectionError) -> Self {
            Self::Conn(e)
        }
    }
    impl From<quinn::WriteError> for Error {
        fn from(e: quinn::WriteError) -> Self {
            Self::Write(e)
        }
    }
    impl From<quinn::ReadToEndError> for Error {
        fn from(e: quinn::ReadToEndError) -> Self {
            Self::Read(e)
        }
    }
}

/// A query framed for DoQ: its ID set to 0, a 2-byte length prefix.
pub fn doq_frame(m: &Message) -> Vec<u8> {
    let mut m = m.clone();
    m.metadata.id = 0;
    let wire = m.to_vec().expect("encode");
    let mut out = u16::try_from(wire.len())
        .expect("len")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(&wire);
    out
}

/// One DoQ query on its own stream of `conn`: the reply, unframed.
pub async fn doq_query(conn: &quinn::Connection, m: &Message) -> Option<Message> {
    match doq_stream(conn, &doq_frame(m)).await {
        DoqOutcome::Data(d) => {
            let len = usize::from(u16::from_be_bytes([*d.first()?, *d.get(1)?]));
            if d.len() != len + 2 {
                return None;
            }
            Message::from_vec(&d[2..]).ok()
        }
        _ => None,
    }
}

/// A DoH3 response.
#[derive(Debug)]
pub struct H3Reply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl H3Reply {
    /// The body as a DNS message.
    pub fn message(&self) -> Option<Message> {
        Message::from_vec(&self.body).ok()
    }
}

/// An HTTP/3 connection.
pub struct H3Conn {
    /// The QUIC connection under it.
    pub quic: QuicConn,
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for H3Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl H3Conn {
    /// Connects (ALPN `h3`) and sets up HTTP/3.
    pub async fn connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> Option<Self> {
        let quic = connect(addr, config).await.ok()?;
        let (mut conn, send) = timeout(
            WAIT,
            h3::client::new(h3_quinn::Connection::new(quic.conn.clone())),
        )
        .await
        .ok()?
        .ok()?;
        let driver = tokio::spawn(async move {
            let _ = conn.wait_idle().await;
        });
        Some(Self { quic, send, driver })
    }

    /// One request; `None` if no complete response came in time.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Option<H3Reply> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("https://{SERVER_NAME}{path}"));
        if let Some(ct) = content_type {
            b = b.header("content-type", ct);
        }
        if !body.is_empty() {
            b = b.header("content-length", body.len());
        }
        let req = b.body(()).ok()?;
        let mut send = self.send.clone();
        let run = async move {
            let mut stream = send.send_request(req).await.ok()?;
            if !body.is_empty() {
                // A server may refuse before reading it all.
                let _ = stream.send_data(Bytes::from(body)).await;
            }
            let _ = stream.finish().await;
            let resp = stream.recv_response().await.ok()?;
            let header = |n: &str| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let mut out = H3Reply {
                status: resp.status().as_u16(),
                content_type: header("content-type"),
                cache_control: header("cache-control"),
                body: Vec::new(),
            };
            while let Ok(Some(mut chunk)) = stream.recv_data().await {
                while chunk.has_remaining() {
                    let part = chunk.chunk();
                    let n = part.len();
                    out.body.extend_from_slice(part);
                    chunk.advance(n);
                }
            }
            Some(out)
        };
        timeout(WAIT, run).await.ok()?
    }

    /// A GET of `m` (RFC 8484 §4.1: base64url, no padding).
    pub async fn get(&self, m: &Message) -> Option<H3Reply> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.to_vec().ok()?);
        self.request("GET", &format!("/dns-query?dns={b64}"), None, Vec::new())
            .await
    }

    /// A POST of `m`.
    pub async fn post(&self, m: &Message) -> Option<H3Reply> {
        self.request(
            "POST",
            "/dns-query",
            Some("application/dns-message"),
            m.to_vec().ok()?,
        )
        .await
    }
}
