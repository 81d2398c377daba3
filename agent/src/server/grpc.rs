//! DNS over gRPC: CoreDNS's `coredns.dns.DnsService/Query`, one DNS
//! message in a `DnsPacket` each way, on h2 (over TLS when the block has
//! `tls`, h2c with prior knowledge otherwise, as CoreDNS's plain gRPC
//! server), through the same chain as every listener.
//!
//! A message over 65535 bytes or one that is not a DNS query gets
//! `INVALID_ARGUMENT` (CoreDNS returns an error there too); no answer,
//! `INTERNAL`; too many queries waiting on upstreams, `UNAVAILABLE`.
//! Limits: connections per listener, h2 streams per connection, the
//! handshake under `handshake_timeout`, idle connections closed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use nodedns_plugins::{Reply, Transport};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::UpstreamCtx;
use super::chain::{Handled, Limits, handle, resume};
use super::https::{Activity, accept_loop, drive};
use super::tcp::TcpOptions;
use crate::config::Router;

#[allow(
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::pedantic,
    missing_docs
)]
mod pb {
    tonic::include_proto!("coredns.dns");
}

use pb::dns_service_server::{DnsService, DnsServiceServer};

/// The largest DNS message.
const MAX_MSG: usize = 65535;

/// Accepts connections until shutdown.
pub(super) async fn serve(
    listener: TcpListener,
    router: Arc<ArcSwap<Router>>,
    limits: Limits,
    opts: TcpOptions,
    shutdown: watch::Receiver<bool>,
    up: Arc<UpstreamCtx>,
) {
    let each = shutdown.clone();
    accept_loop(listener, "grpc", &opts, shutdown, &up, |stream, peer| {
        let svc = Grpc {
            router: Arc::clone(&router),
            limits,
            up: Arc::clone(&up),
            peer,
        };
        let tls = router.load().tls.clone();
        let shutdown = each.clone();
        async move {
            match tls {
                None => connection(stream, svc, opts, shutdown).await,
                Some(config) => {
                    if let Some(tls) = super::tls::accept(config, stream, peer, &opts).await {
                        connection(tls, svc, opts, shutdown).await;
                    }
                }
            }
        }
    })
    .await;
}

/// Serves one h2 connection.
async fn connection<S>(io: S, svc: Grpc, opts: TcpOptions, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let server = DnsServiceServer::new(svc)
        .max_decoding_message_size(MAX_MSG + 16)
        .max_encoding_message_size(MAX_MSG + 16);
    let activity = Arc::new(Activity::default());
    let act = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut server = server.clone();
        let act = Arc::clone(&act);
        async move {
            act.busy.fetch_add(1, Ordering::AcqRel);
            act.seen.fetch_add(1, Ordering::AcqRel);
            let resp = tower::Service::call(&mut server, req).await;
            act.busy.fetch_sub(1, Ordering::AcqRel);
            resp.map_err(|e: Infallible| match e {})
        }
    });
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(opts.max_streams)
        .max_header_list_size(16 * 1024)
        .keep_alive_interval(None);
    let conn = b.serve_connection(TokioIo::new(io), service);
    drive(conn, &activity, opts.idle_timeout, &mut shutdown).await;
}

/// The service, for one connection (it knows the client's address).
#[derive(Clone)]
struct Grpc {
    router: Arc<ArcSwap<Router>>,
    limits: Limits,
    up: Arc<UpstreamCtx>,
    peer: SocketAddr,
}

#[tonic::async_trait]
impl DnsService for Grpc {
    async fn query(
        &self,
        request: tonic::Request<pb::DnsPacket>,
    ) -> Result<tonic::Response<pb::DnsPacket>, tonic::Status> {
        let raw = request.into_inner().msg;
        if raw.len() > MAX_MSG {
            return Err(tonic::Status::invalid_argument(format!(
                "dns message exceeds size limit: {}",
                raw.len()
            )));
        }
        if nodedns_plugins::Request::parse(&raw, self.peer, Transport::Grpc).is_err() {
            return Err(tonic::Status::invalid_argument("not a DNS query"));
        }
        let mut reply = Reply::new();
        let handled = {
            let current = self.router.load();
            handle(
                &current,
                &raw,
                self.peer,
                Transport::Grpc,
                &mut reply,
                &self.limits,
            )
        };
        let wire = match handled {
            Handled::Reply => reply.wire().to_vec(),
            Handled::Drop => return Err(tonic::Status::internal("no response")),
            Handled::Upstream(p) => {
                let Ok(permit) = Arc::clone(&self.up.permits).try_acquire_owned() else {
                    return Err(tonic::Status::unavailable(
                        "too many queries waiting on upstreams",
                    ));
                };
                let guard = self.up.tracker.enter();
                let out = resume(p, &raw, self.peer, Transport::Grpc, self.limits).await;
                drop((permit, guard));
                out.ok_or_else(|| tonic::Status::internal("no response"))?
            }
        };
        Ok(tonic::Response::new(pb::DnsPacket { msg: wire }))
    }
}
