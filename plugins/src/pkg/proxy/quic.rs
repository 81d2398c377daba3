//! DNS over QUIC (RFC 9250): one query per bidirectional stream, each
//! message with a 2-byte length prefix and ID 0; and the QUIC connection
//! that DoH3 uses too.
//!
//! Each connection has its own endpoint (its own UDP socket, from the
//! source address if one is set): the endpoint's driver runs on the
//! runtime that opened it, so a connection depends on nothing that
//! another thread's end would take away.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use quinn::VarInt;
use quinn::crypto::rustls::QuicClientConfig;

use super::https::tls_of;
use super::mux::{Driver, MuxError};
use super::{MAX_MESSAGE, ProxyError, Shared};

/// RFC 9250 §4.3 error codes.
const DOQ_NO_ERROR: u32 = 0x0;
const DOQ_PROTOCOL_ERROR: u32 = 0x2;
const DOQ_REQUEST_CANCELLED: u32 = 0x3;
/// A QUIC connection with no packet for this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An open DoQ connection.
pub(super) struct QuicConn {
    conn: quinn::Connection,
    /// Kept open as long as the connection.
    _endpoint: quinn::Endpoint,
}

/// Opens a QUIC connection with `alpn`, checked against the TLS settings.
pub(super) async fn connect(
    shared: &Shared,
    alpn: &[u8],
) -> Result<(quinn::Connection, quinn::Endpoint), ProxyError> {
    let tls = tls_of(shared)?;
    let mut config = (*tls.config).clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicClientConfig::try_from(Arc::new(config)).map_err(|e| {
        ProxyError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("QUIC needs TLS 1.3: {e}"),
        ))
    })?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().map_err(io::Error::other)?))
        // The server opens no stream to us.
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(if alpn == b"h3" { 8 } else { 0 }));
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport));
    let bind = match (shared.source_address, shared.addr) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, SocketAddr::V4(_)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        (None, SocketAddr::V6(_)) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let endpoint = quinn::Endpoint::client(bind)?;
    let name = tls.server_name.to_str();
    let connecting = endpoint
        .connect_with(client, shared.addr, &name)
        .map_err(|e| ProxyError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let conn = connecting.await.map_err(connection_error)?;
    let negotiated = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if negotiated.as_deref() != Some(alpn) {
        conn.close(VarInt::from_u32(DOQ_PROTOCOL_ERROR), b"");
        return Err(ProxyError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the upstream did not agree to ALPN {}",
                String::from_utf8_lossy(alpn)
            ),
        )));
    }
    Ok((conn, endpoint))
}

/// A connection-level error: the TLS reason when there is one.
pub(super) fn connection_error(e: quinn::ConnectionError) -> ProxyError {
    match e {
        quinn::ConnectionError::TimedOut => ProxyError::Timeout,
        // Retired or idle out by this side while the query was on it.
        quinn::ConnectionError::LocallyClosed => ProxyError::Closed,
        quinn::ConnectionError::TransportError(t) if t.code.to_string().contains("TLS") => {
            ProxyError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("QUIC TLS: {t}"),
            ))
        }
        e => ProxyError::Io(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
    }
}

/// Opens a DoQ connection and the driver that watches it close.
pub(super) async fn connect_doq(shared: &Shared) -> Result<(QuicConn, Driver), ProxyError> {
    let (conn, endpoint) = connect(shared, b"doq").await?;
    let watch = conn.clone();
    let closer = conn.clone();
    let driver = Driver {
        run: Box::pin(async move {
            let why = watch.closed().await;
            tracing::debug!(reason = %why, "proxy: QUIC connection closed");
        }),
        close: Box::new(move || closer.close(VarInt::from_u32(DOQ_NO_ERROR), b"")),
    };
    Ok((
        QuicConn {
            conn,
            _endpoint: endpoint,
        },
        driver,
    ))
}

/// A stream that is reset with `DOQ_REQUEST_CANCELLED` if dropped before
/// its reply was read whole (a timeout, or another upstream answered).
struct Cancel {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    done: bool,
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if !self.done {
            let code = VarInt::from_u32(DOQ_REQUEST_CANCELLED);
            let _ = self.send.reset(code);
            let _ = self.recv.stop(code);
        }
    }
}

impl QuicConn {
    /// One query on its own stream: `len ‖ message`, FIN, then the reply
    /// read to its FIN (at most a length prefix and 65535 bytes).
    pub(super) async fn exchange(&self, wire: &[u8]) -> Result<Vec<u8>, MuxError> {
        let len = u16::try_from(wire.len()).map_err(|_| MuxError::Stream(ProxyError::Malformed))?;
        let (send, recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| MuxError::Conn(connection_error(e)))?;
        let mut s = Cancel {
            send,
            recv,
            done: false,
        };
        let mut frame = Vec::with_capacity(wire.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(wire);
        s.send
            .write_all(&frame)
            .await
            .map_err(|e| self.write_error(e))?;
        // Only fails if already finished or reset, which it is not.
        let _ = s.send.finish();
        let data = match s.recv.read_to_end(MAX_MESSAGE + 2).await {
            Ok(d) => d,
            Err(quinn::ReadToEndError::TooLong) => {
                return Err(MuxError::Stream(ProxyError::BadReply(format!(
                    "DoQ reply over {MAX_MESSAGE} bytes"
                ))));
            }
            Err(quinn::ReadToEndError::Read(e)) => return Err(self.read_error(e)),
        };
        s.done = true;
        let Some((prefix, msg)) = data.split_first_chunk::<2>() else {
            return Err(MuxError::Stream(ProxyError::BadReply(
                "DoQ stream ended before the length prefix".into(),
            )));
        };
        let want = usize::from(u16::from_be_bytes(*prefix));
        if want != msg.len() {
            return Err(MuxError::Stream(ProxyError::BadReply(format!(
                "DoQ length prefix says {want} bytes, the stream held {}",
                msg.len()
            ))));
        }
        Ok(msg.to_vec())
    }

    /// Closes the connection for a protocol error (RFC 9250 §4.3.3).
    pub(super) fn protocol_error(&self) {
        self.conn
            .close(VarInt::from_u32(DOQ_PROTOCOL_ERROR), b"malformed reply");
    }

    fn write_error(&self, e: quinn::WriteError) -> MuxError {
        match e {
            quinn::WriteError::Stopped(code) => MuxError::Stream(ProxyError::BadReply(format!(
                "DoQ stream stopped by the upstream (code {code})"
            ))),
            quinn::WriteError::ConnectionLost(e) => MuxError::Conn(connection_error(e)),
            e => MuxError::Conn(ProxyError::Io(io::Error::other(e))),
        }
    }

    fn read_error(&self, e: quinn::ReadError) -> MuxError {
        match e {
            quinn::ReadError::Reset(code) => MuxError::Stream(ProxyError::BadReply(format!(
                "DoQ stream reset by the upstream (code {code})"
            ))),
            quinn::ReadError::ConnectionLost(e) => MuxError::Conn(connection_error(e)),
            e => MuxError::Conn(ProxyError::Io(io::Error::other(e))),
        }
    }
}
