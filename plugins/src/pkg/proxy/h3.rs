//! DNS over HTTPS on HTTP/3 (RFC 8484 over RFC 9114): one query per
//! request stream on a QUIC connection (ALPN `h3`).

use bytes::{Buf, Bytes};
use quinn::VarInt;

use super::https::{append, check_head, request};
use super::mux::{Driver, MuxError};
use super::quic::connect as connect_quic;
use super::{DohMethod, ProxyError, Shared};

/// HTTP/3's H3_NO_ERROR, to close a connection we are done with.
const H3_NO_ERROR: u32 = 0x100;

/// An open HTTP/3 connection.
pub(super) struct H3Conn {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    conn: quinn::Connection,
    method: DohMethod,
    _endpoint: quinn::Endpoint,
}

/// Opens a QUIC connection (ALPN `h3`) and HTTP/3 on it; the driver
/// polls h3's connection (its control streams) until it closes.
pub(super) async fn connect(
    shared: &Shared,
    method: DohMethod,
) -> Result<(H3Conn, Driver), ProxyError> {
    let (conn, endpoint) = connect_quic(shared, b"h3").await?;
    let (mut h3conn, send) = h3::client::builder()
        .max_field_section_size(16 * 1024)
        .build(h3_quinn::Connection::new(conn.clone()))
        .await
        .map_err(|e| ProxyError::Io(std::io::Error::other(format!("HTTP/3 setup: {e}"))))?;
    let closer = conn.clone();
    let driver = Driver {
        run: Box::pin(async move {
            let why = h3conn.wait_idle().await;
            tracing::debug!(reason = %why, "proxy: HTTP/3 connection closed");
        }),
        close: Box::new(move || closer.close(VarInt::from_u32(H3_NO_ERROR), b"")),
    };
    Ok((
        H3Conn {
            send,
            conn,
            method,
            _endpoint: endpoint,
        },
        driver,
    ))
}

impl H3Conn {
    /// One query on its own request stream.
    pub(super) async fn exchange(&self, shared: &Shared, wire: &[u8]) -> Result<Vec<u8>, MuxError> {
        let (req, body) = request(shared, self.method, wire).map_err(MuxError::Stream)?;
        let mut send = self.send.clone();
        let err = |e: &dyn std::fmt::Display| {
            if self.conn.close_reason().is_some() {
                MuxError::Conn(ProxyError::Io(std::io::Error::other(format!(
                    "HTTP/3: {e}"
                ))))
            } else {
                MuxError::Stream(ProxyError::BadReply(format!("HTTP/3 stream: {e}")))
            }
        };
        let mut stream = send.send_request(req).await.map_err(|e| err(&e))?;
        if !body.is_empty() {
            stream.send_data(body).await.map_err(|e| err(&e))?;
        }
        stream.finish().await.map_err(|e| err(&e))?;
        let resp = stream.recv_response().await.map_err(|e| err(&e))?;
        check_head(resp.status(), resp.headers())?;
        let mut out = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| err(&e))? {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                let n = part.len();
                append(&mut out, part)?;
                chunk.advance(n);
            }
        }
        Ok(out)
    }
}
