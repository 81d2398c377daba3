//! The DNS server: binds every listening address of a configuration over
//! UDP and TCP, serves it, and stops gracefully.

pub mod chain;
mod tcp;
mod udp;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use nodedns_plugins::Transport;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use chain::Limits;
pub use tcp::TcpOptions;

use crate::config::{Config, ListenKey, Router};

/// Server settings from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// UDP sockets (and threads) per address; 0 means one per core.
    pub udp_sockets: usize,
    /// Receive buffer asked for each UDP socket, in bytes.
    pub udp_rcvbuf: usize,
    /// Reply limits.
    pub limits: Limits,
    /// TCP settings.
    pub tcp: TcpOptions,
    /// Most queries waiting on upstreams at once, over every listener;
    /// past it new ones are dropped.
    pub max_inflight: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            udp_sockets: 0,
            udp_rcvbuf: 8 << 20,
            limits: Limits::default(),
            tcp: TcpOptions::default(),
            max_inflight: 10_000,
        }
    }
}

/// What a listener needs to continue a query on the runtime.
#[derive(Debug)]
pub(crate) struct UpstreamCtx {
    runtime: tokio::runtime::Handle,
    permits: Arc<tokio::sync::Semaphore>,
    tracker: Arc<Tracker>,
}

/// Counts tasks in flight so shutdown can wait for them.
#[derive(Debug, Default)]
pub struct Tracker {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by a task while it runs.
#[derive(Debug)]
pub struct TrackerGuard(Arc<Tracker>);

impl Tracker {
    /// Registers a task.
    pub fn enter(self: &Arc<Self>) -> TrackerGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        TrackerGuard(Arc::clone(self))
    }
    /// Waits until no task is registered.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A running server.
pub struct Server {
    stop_udp: Arc<AtomicBool>,
    shutdown: watch::Sender<bool>,
    udp_threads: Vec<std::thread::JoinHandle<()>>,
    tcp_tasks: Vec<JoinHandle<()>>,
    conns: Arc<Tracker>,
    /// What is bound: transport and address (the real port for port 0).
    pub bound: Vec<(Transport, SocketAddr)>,
    /// The routers being served, by listening address (swapped on reload).
    pub routers: Vec<(ListenKey, Arc<ArcSwap<Router>>)>,
}

impl Server {
    /// Binds every listener of `config` and starts serving. Must be called
    /// inside a tokio runtime. Fails (binding nothing) if any address
    /// cannot be bound.
    pub fn start(config: &Config, opts: &Options) -> io::Result<Self> {
        let sockets = if opts.udp_sockets == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            opts.udp_sockets
        };
        let mut bound_sockets = Vec::new();
        for (key, router) in &config.listeners {
            let (tcp, udps) = bind_pair(key, sockets, opts.udp_rcvbuf)
                .map_err(|e| io::Error::new(e.kind(), format!("binding {key}: {e}")))?;
            bound_sockets.push((*key, Arc::clone(router), tcp, udps));
        }
        let (shutdown, _) = watch::channel(false);
        let stop_udp = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Tracker::default());
        chain::set_runtime(tokio::runtime::Handle::current());
        let up = Arc::new(UpstreamCtx {
            runtime: tokio::runtime::Handle::current(),
            permits: Arc::new(tokio::sync::Semaphore::new(opts.max_inflight.max(1))),
            tracker: Arc::clone(&conns),
        });
        let mut server = Self {
            stop_udp: Arc::clone(&stop_udp),
            shutdown,
            udp_threads: Vec::new(),
            tcp_tasks: Vec::new(),
            conns: Arc::clone(&conns),
            bound: Vec::new(),
            routers: Vec::new(),
        };
        for (key, router, tcp, udps) in bound_sockets {
            let shared = Arc::new(ArcSwap::new(router));
            server.routers.push((key, Arc::clone(&shared)));
            let tcp_addr = tcp.local_addr()?;
            for (i, u) in udps.into_iter().enumerate() {
                if i == 0 {
                    let addr = u.local_addr()?;
                    server.bound.push((Transport::Udp, addr));
                    let reachable = match addr.ip() {
                        ip if ip.is_unspecified() && addr.is_ipv6() => {
                            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
                        }
                        ip if ip.is_unspecified() => {
                            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
                        }
                        _ => addr,
                    };
                    for b in router_blocks(&shared) {
                        b.bound.add(reachable);
                    }
                }
                let shared = Arc::clone(&shared);
                let stop = Arc::clone(&stop_udp);
                let limits = opts.limits;
                let up = Arc::clone(&up);
                let u = Arc::new(u);
                let handle = std::thread::Builder::new()
                    .name(format!("udp-{}-{i}", tcp_addr.port()))
                    .spawn(move || udp::serve(u, shared, limits, stop, up))?;
                server.udp_threads.push(handle);
            }
            server.bound.push((Transport::Tcp, tcp_addr));
            tcp.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(tcp)?;
            server.tcp_tasks.push(tokio::spawn(tcp::serve(
                listener,
                shared,
                opts.limits,
                opts.tcp,
                server.shutdown.subscribe(),
                Arc::clone(&up),
            )));
        }
        Ok(server)
    }

    /// Stops accepting, lets in-flight queries finish (at most `grace`),
    /// and returns when everything stopped.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        self.stop_udp.store(true, Ordering::Relaxed);
        for t in self.tcp_tasks {
            let _ = t.await;
        }
        if tokio::time::timeout(grace, self.conns.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: connections still open after {grace:?}; closing them");
        }
        let threads = self.udp_threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

fn router_blocks(shared: &ArcSwap<Router>) -> Vec<Arc<crate::config::Block>> {
    shared.load().blocks().to_vec()
}

/// Binds a TCP listener and `n` UDP sockets on the same port. For port 0,
/// TCP picks the port and UDP follows (retrying if UDP's is taken).
fn bind_pair(
    key: &ListenKey,
    n: usize,
    rcvbuf: usize,
) -> io::Result<(std::net::TcpListener, Vec<std::net::UdpSocket>)> {
    let candidates: Vec<IpAddr> = match key.addr {
        Some(a) => vec![a],
        // Every address: dual-stack if the host has IPv6, else IPv4.
        None => vec![
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ],
    };
    let mut last_err = io::Error::other("no address to bind");
    for ip in candidates {
        for _attempt in 0..8 {
            match bind_on(SocketAddr::new(ip, key.port), n, rcvbuf) {
                Ok(pair) => return Ok(pair),
                Err(e) if key.port == 0 && e.kind() == io::ErrorKind::AddrInUse => last_err = e,
                Err(e) => {
                    last_err = e;
                    break;
                }
            }
        }
    }
    Err(last_err)
}

fn bind_on(
    addr: SocketAddr,
    n: usize,
    rcvbuf: usize,
) -> io::Result<(std::net::TcpListener, Vec<std::net::UdpSocket>)> {
    let tcp = tcp_bind(addr)?;
    let port = tcp.local_addr()?.port();
    let addr = SocketAddr::new(addr.ip(), port);
    let mut udps = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        udps.push(udp::bind(addr, rcvbuf)?);
    }
    Ok((tcp, udps))
}

fn tcp_bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        sock.set_only_v6(false)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}
