//! DNS over HTTPS (RFC 8484) on one multiplexed HTTP/2 connection, and
//! what DoH3 shares with it: the request's form and the reply's checks.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpSocket;

use super::mux::{Driver, MuxError};
use super::{DOH_PATH, DohMethod, MAX_MESSAGE, MUX_STREAMS, ProxyError, Shared, TlsSettings};

/// The media type of a DNS message over HTTP.
pub(super) const DNS_MESSAGE: &str = "application/dns-message";

/// An open HTTP/2 connection.
pub(super) struct H2Conn {
    send: http2::SendRequest<Full<Bytes>>,
    method: DohMethod,
}

/// The TLS settings of an encrypted transport, or an error that says
/// they are missing.
pub(super) fn tls_of(shared: &Shared) -> Result<&TlsSettings, ProxyError> {
    shared.tls.as_ref().ok_or_else(|| {
        ProxyError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no TLS settings for an encrypted upstream",
        ))
    })
}

/// Connects over TCP, shakes hands with TLS (ALPN `h2`), then HTTP/2.
pub(super) async fn connect(
    shared: &Shared,
    method: DohMethod,
) -> Result<(H2Conn, Driver), ProxyError> {
    let tls = tls_of(shared)?;
    let socket = if shared.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = shared.source_address {
        socket.bind(std::net::SocketAddr::new(ip, 0))?;
    }
    let tcp = socket.connect(shared.addr).await?;
    tcp.set_nodelay(true)?;
    let mut config = (*tls.config).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = connector
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(tls_error)?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(ProxyError::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            "the upstream does not offer HTTP/2 (ALPN h2) for DNS over HTTPS",
        )));
    }
    let (send, conn) = http2::Builder::new(TokioExecutor::new())
        .max_concurrent_reset_streams(MUX_STREAMS)
        .max_header_list_size(16 * 1024)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProxyError::Io(io::Error::other(format!("HTTP/2 handshake: {e}"))))?;
    let driver = Driver {
        run: Box::pin(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "proxy: HTTP/2 connection ended");
            }
        }),
        close: Box::new(|| {}),
    };
    Ok((H2Conn { send, method }, driver))
}

/// A handshake error: the TLS reason when there is one.
pub(super) fn tls_error(e: io::Error) -> ProxyError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(t) => ProxyError::Tls(t.clone()),
        None => ProxyError::Io(e),
    }
}

impl H2Conn {
    /// One query on its own stream.
    pub(super) async fn exchange(&self, shared: &Shared, wire: &[u8]) -> Result<Vec<u8>, MuxError> {
        let mut send = self.send.clone();
        let (req, body) = request(shared, self.method, wire).map_err(MuxError::Stream)?;
        let req = req.map(|()| Full::new(body));
        let conn_or_stream = |send: &http2::SendRequest<_>, e: hyper::Error| {
            let err = ProxyError::Io(io::Error::other(format!("HTTP/2: {e}")));
            if send.is_closed() {
                MuxError::Conn(err)
            } else {
                MuxError::Stream(ProxyError::BadReply(format!("HTTP/2 stream: {e}")))
            }
        };
        let resp = match send.send_request(req).await {
            Ok(r) => r,
            Err(e) => return Err(conn_or_stream(&send, e)),
        };
        check_head(resp.status(), resp.headers())?;
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| conn_or_stream(&send, e))?;
            if let Ok(data) = frame.into_data() {
                append(&mut out, &data)?;
            }
        }
        Ok(out)
    }
}

/// The request for one query (ID 0 already): `POST` with the query as
/// the body, or `GET` with it in the `dns` parameter. The authority is
/// the TLS server name (or the address), with the port unless 443.
pub(super) fn request(
    shared: &Shared,
    method: DohMethod,
    wire: &[u8],
) -> Result<(Request<()>, Bytes), ProxyError> {
    let host = match shared.tls.as_ref().map(|t| &t.server_name) {
        Some(rustls::pki_types::ServerName::DnsName(n)) => n.as_ref().to_string(),
        _ => match shared.addr.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        },
    };
    let authority = if shared.addr.port() == 443 {
        host
    } else {
        format!("{host}:{}", shared.addr.port())
    };
    let (m, uri, body) = match method {
        DohMethod::Post => (
            Method::POST,
            format!("https://{authority}{DOH_PATH}"),
            Bytes::copy_from_slice(wire),
        ),
        DohMethod::Get => (
            Method::GET,
            format!("https://{authority}{DOH_PATH}?dns={}", base64url(wire)),
            Bytes::new(),
        ),
    };
    let mut b = Request::builder()
        .method(m)
        .uri(uri)
        .header(header::ACCEPT, DNS_MESSAGE);
    if method == DohMethod::Post {
        b = b
            .header(header::CONTENT_TYPE, DNS_MESSAGE)
            .header(header::CONTENT_LENGTH, wire.len());
    }
    let req = b
        .body(())
        .map_err(|e| ProxyError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    Ok((req, body))
}

/// A reply's status and headers: 200, `application/dns-message`, and a
/// `content-length` (if any) that fits a DNS message.
pub(super) fn check_head(status: StatusCode, headers: &HeaderMap) -> Result<(), MuxError> {
    let bad = |m: String| Err(MuxError::Stream(ProxyError::BadReply(m)));
    if status != StatusCode::OK {
        return bad(format!("HTTP status {status}"));
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ctype.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case(DNS_MESSAGE) {
        return bad(format!("content type '{ctype}', not {DNS_MESSAGE}"));
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > MAX_MESSAGE as u64
    {
        return bad(format!("content length {len} over {MAX_MESSAGE} bytes"));
    }
    Ok(())
}

/// Adds a body chunk, refusing a body over a DNS message's size.
pub(super) fn append(out: &mut Vec<u8>, data: &[u8]) -> Result<(), MuxError> {
    if out.len() + data.len() > MAX_MESSAGE {
        return Err(MuxError::Stream(ProxyError::BadReply(format!(
            "body over {MAX_MESSAGE} bytes"
        ))));
    }
    out.extend_from_slice(data);
    Ok(())
}

/// base64url without padding (RFC 4648 §5), as RFC 8484's GET wants.
pub(super) fn base64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[idx as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648_vectors_without_padding() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), want, "{input}");
        }
        // The URL-safe letters.
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn reply_heads_other_than_200_dns_message_are_bad() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/dns-message; charset=x".parse().unwrap(),
        );
        assert!(check_head(StatusCode::OK, &h).is_ok());
        assert!(check_head(StatusCode::INTERNAL_SERVER_ERROR, &h).is_err());
        h.insert(header::CONTENT_LENGTH, "70000".parse().unwrap());
        assert!(check_head(StatusCode::OK, &h).is_err());
        h.remove(header::CONTENT_LENGTH);
        h.insert(header::CONTENT_TYPE, "text/html".parse().unwrap());
        assert!(check_head(StatusCode::OK, &h).is_err());
        assert!(check_head(StatusCode::OK, &HeaderMap::new()).is_err());
    }
}
