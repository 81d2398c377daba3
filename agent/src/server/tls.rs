//! The TLS side of the encrypted stream listeners: a handshake under a
//! deadline, with the block's `tls` settings (certificate re-read on
//! change, client policy, ALPN, session resumption). DNS over TLS then
//! runs [`super::tcp`]'s loop over the stream; DoH hands it to hyper.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::TcpOptions;

/// Runs the server side of a handshake, at most `opts.handshake_timeout`;
/// `None` (the connection closed) when it fails or takes longer.
pub(super) async fn accept(
    config: Arc<rustls::ServerConfig>,
    stream: TcpStream,
    peer: SocketAddr,
    opts: &TcpOptions,
) -> Option<TlsStream<TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "tls handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "tls handshake timed out");
            None
        }
    }
}
