//! The DNS server: binds every listening address of a configuration (UDP
//! and TCP for `dns://`, TCP for `tls://`, `https://` and `grpc://`, UDP
//! for the QUIC ones, `quic://` and `https3://`), serves it, and stops
//! gracefully.

pub mod chain;
mod grpc;
mod h3;
mod https;
pub mod probe;
mod quic;
mod tcp;
mod tls;
mod udp;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use nodedns_plugins::Transport;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub use chain::Limits;
pub use tcp::TcpOptions;

use crate::config::{Config, ListenKey, Router};
use crate::corefile::Scheme;
use crate::nodelocal::handover::{Inherited, Kind, Offered};

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
    /// past it a new UDP query is dropped and a TCP one refused.
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

/// One listening address: its sockets' threads and task, and the router
/// they serve (swapped on reload).
struct Listener {
    router: Arc<ArcSwap<Router>>,
    stop_udp: Arc<udp::Stop>,
    shutdown: watch::Sender<bool>,
    udp_threads: Vec<std::thread::JoinHandle<()>>,
    /// Disconnects once every UDP thread has ended (and closed its socket).
    udp_closed: std::sync::mpsc::Receiver<()>,
    /// The TCP accept loop, or the QUIC endpoint's.
    tcp_task: JoinHandle<()>,
    /// The QUIC endpoint of a `quic://` or `https3://` listener.
    endpoint: Option<quinn::Endpoint>,
    bound: Vec<(Transport, SocketAddr)>,
    /// Copies of its UDP and TCP sockets, to pass to a successor
    /// ([`Server::offer`]); dropped when it stops, so a stopped listener's
    /// sockets close.
    handover: std::sync::Mutex<Vec<(Kind, SocketAddr, std::os::fd::OwnedFd)>>,
}

impl Listener {
    /// Tells its sockets to stop (threads notice within their poll interval).
    fn stop(&self) {
        self.forget_copies();
        let _ = self.shutdown.send(true);
        self.stop_udp.stop();
    }

    fn forget_copies(&self) {
        self.handover
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Closes its UDP sockets now, dropping the replies still waiting on
    /// upstreams, and waits (at most [`ABORT_WAIT`]) for them to be closed.
    fn abort(self) {
        self.forget_copies();
        self.stop_udp.abort();
        let _ = self.shutdown.send(true);
        if let Some(e) = &self.endpoint {
            e.close(quinn::VarInt::from_u32(quic::DOQ_NO_ERROR), b"");
            self.tcp_task.abort();
        }
        // The threads wake at once (or at their next poll) and exit; the
        // channel disconnects when the last one has closed its socket.
        match self.udp_closed.recv_timeout(ABORT_WAIT) {
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                for t in self.udp_threads {
                    let _ = t.join();
                }
            }
            _ => tracing::warn!("reload: a UDP socket of a removed listener is still open"),
        }
    }

    /// Whether its UDP threads (and so its sockets) are done.
    fn closed(&self) -> bool {
        if self.endpoint.is_some() {
            return self.tcp_task.is_finished();
        }
        self.udp_threads
            .iter()
            .all(std::thread::JoinHandle::is_finished)
    }
}

/// How long a reload waits for a removed listener's UDP sockets to close
/// before it binds their address again.
const ABORT_WAIT: Duration = Duration::from_secs(1);

/// A running server.
pub struct Server {
    /// By address as bound (a port 0 resolved).
    listeners: std::collections::BTreeMap<ListenKey, Listener>,
    /// Listeners a reload removed whose UDP sockets are still open, still
    /// sending the replies of queries that were waiting on upstreams.
    draining: Vec<(ListenKey, Listener)>,
    /// The ports that Corefile keys with port 0 got, so a reload that
    /// still says port 0 (or names the port) keeps the same sockets.
    zero_ports: std::collections::HashMap<(Scheme, Option<IpAddr>), u16>,
    conns: Arc<Tracker>,
    up: Arc<UpstreamCtx>,
    opts: Options,
    /// What is bound: transport and address (the real port for port 0).
    pub bound: Vec<(Transport, SocketAddr)>,
}

impl Server {
    /// Binds every listener of `config` and starts serving. Must be called
    /// inside a tokio runtime. Fails (binding nothing) if any address
    /// cannot be bound.
    pub fn start(config: &Config, opts: &Options, inherited: &mut Inherited) -> io::Result<Self> {
        let bound = bind_all(config, opts, inherited)?;
        let conns = Arc::new(Tracker::default());
        let up = Arc::new(UpstreamCtx {
            permits: Arc::new(tokio::sync::Semaphore::new(opts.max_inflight.max(1))),
            tracker: Arc::clone(&conns),
        });
        chain::set_background(tokio::runtime::Handle::current(), Arc::clone(&up));
        let mut server = Self {
            listeners: std::collections::BTreeMap::new(),
            draining: Vec::new(),
            zero_ports: std::collections::HashMap::new(),
            conns,
            up,
            opts: opts.clone(),
            bound: Vec::new(),
        };
        for (key, router, sockets) in bound {
            let key = server.resolved(key, &sockets)?;
            let l = server.serve(key.scheme, router, sockets)?;
            server.bound.extend(l.bound.iter().copied());
            server.listeners.insert(key, l);
        }
        Ok(server)
    }

    /// Applies a new configuration: listeners whose address stays keep
    /// their sockets and get the new routes; new addresses are bound
    /// (nothing changes if one cannot be); addresses no longer named stop.
    /// Queries in flight finish on the routes they started with. Returns
    /// the addresses newly bound.
    pub fn reload(&mut self, config: &Config) -> io::Result<Vec<(Transport, SocketAddr)>> {
        let wanted: Vec<(ListenKey, Arc<Router>)> = config
            .listeners
            .iter()
            .map(|(k, r)| (self.known(*k), Arc::clone(r)))
            .collect();
        let fresh: Vec<_> = wanted
            .iter()
            .filter(|(k, _)| !self.listeners.contains_key(k))
            .cloned()
            .collect();
        self.draining.retain(|(_, l)| !l.closed());
        let mut opened = Vec::new();
        for (key, router) in fresh {
            // A removed listener still draining on this address would keep
            // a share of its datagrams (SO_REUSEPORT) and never read them:
            // close it first.
            self.close_draining(key);
            let sockets = udp_sockets(&self.opts);
            let bound = bind_pair(&key, sockets, self.opts.udp_rcvbuf)
                .map_err(|e| io::Error::new(e.kind(), format!("binding {key}: {e}")))?;
            opened.push((key, router, bound));
        }
        let mut added = Vec::new();
        for (key, router, sockets) in opened {
            let key = self.resolved(key, &sockets)?;
            let l = self.serve(key.scheme, router, sockets)?;
            added.extend(l.bound.iter().copied());
            self.listeners.insert(key, l);
        }
        let gone: Vec<ListenKey> = self
            .listeners
            .keys()
            .filter(|k| !wanted.iter().any(|(w, _)| self.known(*w) == **k))
            .copied()
            .collect();
        for key in gone {
            if let Some(l) = self.listeners.remove(&key) {
                tracing::info!(addr = %key, "reload: no longer listening");
                l.stop();
                self.bound.retain(|b| !l.bound.contains(b));
                self.draining.push((key, l));
            }
        }
        for (key, router) in &wanted {
            if let Some(l) = self.listeners.get(&self.known(*key)) {
                for b in router.blocks() {
                    for (t, a) in &l.bound {
                        if *t == Transport::Udp {
                            b.bound.add(reachable(*a));
                        }
                    }
                }
                l.router.store(Arc::clone(router));
            }
        }
        self.bound.extend(added.iter().copied());
        Ok(added)
    }

    /// Closes the sockets of removed listeners still draining on `key`.
    fn close_draining(&mut self, key: ListenKey) {
        let mut i = 0;
        while i < self.draining.len() {
            if self.draining[i].0 == key {
                let (_, l) = self.draining.swap_remove(i);
                tracing::info!(addr = %key, "reload: address listened on again; closing its old sockets");
                l.abort();
            } else {
                i += 1;
            }
        }
    }

    /// A Corefile key with the port a port-0 key already got.
    fn known(&self, key: ListenKey) -> ListenKey {
        match (key.port, self.zero_ports.get(&(key.scheme, key.addr))) {
            (0, Some(p)) => ListenKey { port: *p, ..key },
            _ => key,
        }
    }

    /// The key of a bound listener, recording what a port 0 became.
    fn resolved(&mut self, key: ListenKey, sockets: &Sockets) -> io::Result<ListenKey> {
        if key.port != 0 {
            return Ok(key);
        }
        let port = sockets.port()?;
        self.zero_ports.insert((key.scheme, key.addr), port);
        Ok(ListenKey { port, ..key })
    }

    /// Starts serving one bound address.
    fn serve(&self, scheme: Scheme, router: Arc<Router>, sockets: Sockets) -> io::Result<Listener> {
        let shared = Arc::new(ArcSwap::new(router));
        let stop_udp = Arc::new(udp::Stop::default());
        let (shutdown, _) = watch::channel(false);
        let (tcp, udps) = match sockets {
            Sockets::Pair(tcp, udps) => (tcp, udps),
            Sockets::Quic(socket) => {
                let transport = if scheme == Scheme::Https3 {
                    Transport::Https3
                } else {
                    Transport::Quic
                };
                let addr = socket.local_addr()?;
                let tls = shared.load().tls.clone();
                let endpoint = quic::endpoint(socket, tls, transport, &self.opts.tcp)?;
                let ctx = Arc::new(quic::Ctx {
                    router: Arc::clone(&shared),
                    limits: self.opts.limits,
                    opts: self.opts.tcp,
                    up: Arc::clone(&self.up),
                    transport,
                });
                let task = tokio::spawn(quic::serve(endpoint.clone(), ctx, shutdown.subscribe()));
                let (_, udp_closed) = std::sync::mpsc::channel::<()>();
                return Ok(Listener {
                    router: shared,
                    stop_udp,
                    shutdown,
                    udp_threads: Vec::new(),
                    udp_closed,
                    tcp_task: task,
                    endpoint: Some(endpoint),
                    bound: vec![(transport, addr)],
                    handover: std::sync::Mutex::new(Vec::new()),
                });
            }
        };
        let tcp_addr = tcp.local_addr()?;
        let mut copies = Vec::new();
        copies.push((
            Kind::Tcp,
            tcp_addr,
            std::os::fd::OwnedFd::from(tcp.try_clone()?),
        ));
        for u in &udps {
            copies.push((
                Kind::Udp,
                u.local_addr()?,
                std::os::fd::OwnedFd::from(u.try_clone()?),
            ));
        }
        let mut bound = Vec::new();
        let mut threads = Vec::new();
        let (closed_tx, udp_closed) = std::sync::mpsc::channel::<()>();
        for (i, u) in udps.into_iter().enumerate() {
            if i == 0 {
                let addr = u.local_addr()?;
                bound.push((Transport::Udp, addr));
                for b in router_blocks(&shared) {
                    b.bound.add(reachable(addr));
                }
            }
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop_udp);
            let limits = self.opts.limits;
            let up = Arc::clone(&self.up);
            let closed = closed_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("udp-{}-{i}", tcp_addr.port()))
                    .spawn(move || {
                        udp::serve(u, shared, limits, stop, up);
                        drop(closed);
                    })?,
            );
        }
        let transport = match scheme {
            Scheme::Tls => Transport::Tls,
            Scheme::Https => Transport::Https,
            Scheme::Grpc => Transport::Grpc,
            _ => Transport::Tcp,
        };
        bound.push((transport, tcp_addr));
        tcp.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(tcp)?;
        let tcp_task = if transport == Transport::Grpc {
            tokio::spawn(grpc::serve(
                listener,
                Arc::clone(&shared),
                self.opts.limits,
                self.opts.tcp,
                shutdown.subscribe(),
                Arc::clone(&self.up),
            ))
        } else if transport == Transport::Https {
            tokio::spawn(https::serve(
                listener,
                Arc::clone(&shared),
                self.opts.limits,
                self.opts.tcp,
                shutdown.subscribe(),
                Arc::clone(&self.up),
            ))
        } else {
            tokio::spawn(tcp::serve(
                listener,
                Arc::clone(&shared),
                self.opts.limits,
                self.opts.tcp,
                shutdown.subscribe(),
                Arc::clone(&self.up),
                transport,
            ))
        };
        Ok(Listener {
            router: shared,
            stop_udp,
            shutdown,
            udp_threads: threads,
            udp_closed,
            tcp_task,
            endpoint: None,
            bound,
            handover: std::sync::Mutex::new(copies),
        })
    }

    /// The `dns://` listeners' addresses, as a client on this host reaches
    /// them: what the DNS-level health check probes.
    pub fn dns_targets(&self) -> Vec<SocketAddr> {
        self.bound
            .iter()
            .filter(|(t, _)| *t == Transport::Udp)
            .map(|(_, a)| reachable(*a))
            .collect()
    }

    /// What a successor gets ([`crate::nodelocal::handover`]): copies of
    /// every UDP and TCP socket (QUIC's are not passed: a QUIC connection's
    /// state lives in this process), and every address served.
    pub fn offer(&self) -> (Vec<Offered>, Vec<(Kind, SocketAddr)>) {
        let mut sockets = Vec::new();
        for l in self.listeners.values() {
            let copies = l
                .handover
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (kind, addr, fd) in copies.iter() {
                match fd.try_clone() {
                    Ok(fd) => sockets.push(Offered {
                        kind: *kind,
                        addr: *addr,
                        fd,
                    }),
                    Err(e) => tracing::warn!(%addr, "handover: cannot copy a socket: {e}"),
                }
            }
        }
        let served = self
            .bound
            .iter()
            .map(|(t, a)| {
                let kind = match t {
                    Transport::Udp | Transport::Quic | Transport::Https3 => Kind::Udp,
                    _ => Kind::Tcp,
                };
                (kind, *a)
            })
            .collect();
        (sockets, served)
    }

    /// Stops accepting, lets in-flight queries finish (at most `grace`),
    /// and returns when everything stopped, or when `grace` plus
    /// [`JOIN_DEADLINE`] has passed: a thread or task stuck past that is
    /// left behind (the process is exiting), never waited for.
    pub async fn shutdown(self, grace: Duration) {
        for l in self.listeners.values() {
            l.stop();
        }
        let mut threads = Vec::new();
        let mut tasks = Vec::new();
        // Listeners a reload removed and still draining end with the rest.
        let draining = self.draining.into_iter().map(|(_, l)| l);
        for l in self.listeners.into_values().chain(draining) {
            l.stop();
            tasks.push(l.tcp_task);
            threads.extend(l.udp_threads);
        }
        let deadline = tokio::time::Instant::now() + grace + JOIN_DEADLINE;
        if tokio::time::timeout(grace, self.conns.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: connections still open after {grace:?}; closing them");
        }
        for t in tasks {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                tracing::warn!("shutdown: a TCP listener did not stop in time; leaving it");
            }
        }
        // Joined on a plain thread (not `spawn_blocking`, which the runtime
        // would wait for on drop), so a stuck thread cannot hold up exit.
        let n = threads.len();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let joiner = std::thread::Builder::new()
            .name("udp-join".to_string())
            .spawn(move || {
                for t in threads {
                    let _ = t.join();
                }
                let _ = done_tx.send(());
            });
        if joiner.is_err() || tokio::time::timeout_at(deadline, done_rx).await.is_err() {
            tracing::warn!("shutdown: {n} UDP threads did not stop in time; leaving them");
        }
    }
}

/// How long shutdown waits, past the grace period, for listener threads
/// and tasks to end.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(5);

fn udp_sockets(opts: &Options) -> usize {
    if opts.udp_sockets == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        opts.udp_sockets
    }
}

/// The sockets of one listening address.
enum Sockets {
    /// TCP, and for `dns://` the UDP sockets on the same port.
    Pair(std::net::TcpListener, Vec<std::net::UdpSocket>),
    /// The one UDP socket of a QUIC listener.
    Quic(std::net::UdpSocket),
}

impl Sockets {
    /// The port bound.
    fn port(&self) -> io::Result<u16> {
        match self {
            Self::Pair(tcp, _) => Ok(tcp.local_addr()?.port()),
            Self::Quic(u) => Ok(u.local_addr()?.port()),
        }
    }
}

/// Binds every listener of a config, or none. Sockets a predecessor
/// handed over are used as they are; every other fixed address is first
/// checked to be served by no other process (see [`refuse_shared`]).
fn bind_all(
    config: &Config,
    opts: &Options,
    inherited: &mut Inherited,
) -> io::Result<Vec<(ListenKey, Arc<Router>, Sockets)>> {
    let sockets = udp_sockets(opts);
    for key in config.listeners.keys() {
        refuse_shared(key, inherited)?;
    }
    let mut out = Vec::new();
    for (key, router) in &config.listeners {
        let bound = match adopt(key, inherited) {
            Some(s) => s,
            None => bind_pair(key, sockets, opts.udp_rcvbuf)
                .map_err(|e| io::Error::new(e.kind(), format!("binding {key}: {e}")))?,
        };
        out.push((*key, Arc::clone(router), bound));
    }
    Ok(out)
}

/// The addresses a key binds: its own, or for every address, IPv6's
/// wildcard (dual-stack if the host has IPv6) then IPv4's.
fn candidates(key: &ListenKey) -> Vec<SocketAddr> {
    match key.addr {
        Some(a) => vec![SocketAddr::new(a, key.port)],
        None => vec![
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), key.port),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), key.port),
        ],
    }
}

/// The sockets a predecessor handed over for `key`: its TCP listener and
/// every UDP socket of its group (for `dns://`), or its TCP listener (DoT,
/// DoH, gRPC). QUIC listeners are bound anew.
fn adopt(key: &ListenKey, inherited: &mut Inherited) -> Option<Sockets> {
    if !inherited.active() || key.port == 0 || matches!(key.scheme, Scheme::Quic | Scheme::Https3) {
        return None;
    }
    for addr in candidates(key) {
        let Some(tcp) = inherited.take_tcp(addr) else {
            continue;
        };
        let udps = if key.scheme == Scheme::Dns {
            inherited.take_udp(addr)
        } else {
            Vec::new()
        };
        if key.scheme == Scheme::Dns && udps.is_empty() {
            tracing::warn!(%addr, "handover: a TCP listener came without its UDP sockets; binding UDP anew");
            return None;
        }
        tracing::info!(%addr, udp = udps.len(), "handover: serving the predecessor's sockets");
        return Some(Sockets::Pair(tcp, udps));
    }
    None
}

/// Refuses an address another process already serves. Every listener sets
/// `SO_REUSEPORT` (so a successor can bind beside a running agent), which
/// would also let a forgotten second agent silently take a share of the
/// queries: so a socket without that option is bound first, to see whether
/// the address is taken. Addresses a predecessor handed over (or served)
/// are expected to be taken.
fn refuse_shared(key: &ListenKey, inherited: &Inherited) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    if key.port == 0 {
        return Ok(());
    }
    let udp = matches!(key.scheme, Scheme::Dns | Scheme::Quic | Scheme::Https3);
    let kind = if udp { Kind::Udp } else { Kind::Tcp };
    for addr in candidates(key) {
        if inherited.served(kind, addr) {
            return Ok(());
        }
        let probe = if udp {
            Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        } else {
            Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        };
        let Ok(probe) = probe else { continue };
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            let _ = probe.set_only_v6(false);
        }
        let _ = freebind(&probe, addr);
        // TCP: SO_REUSEADDR passes TIME_WAIT leftovers, not a listener.
        if !udp {
            let _ = probe.set_reuse_address(true);
        }
        match probe.bind(&addr.into()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{addr} ({}) is already served by another process: nodedns will not share it \
                         (SO_REUSEPORT would split the queries between the two). Stop that process, \
                         or, if it is a nodedns agent, start this one with --handover-socket naming its \
                         handover socket to take over from it",
                        kind.as_str()
                    ),
                ));
            }
            // This family may be missing (no IPv6): try the next.
            Err(_) => {}
        }
    }
    Ok(())
}

/// `IP_FREEBIND`: bind an address the host does not hold yet, so the
/// agent may start before its link-local address is up.
pub(crate) fn freebind(sock: &socket2::Socket, addr: SocketAddr) -> io::Result<()> {
    if addr.ip().is_unspecified() {
        return Ok(());
    }
    if addr.is_ipv6() {
        sock.set_freebind_v6(true)
    } else {
        sock.set_freebind_v4(true)
    }
}

/// An address a plugin on this host can send to: the wildcard becomes loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv6() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}

fn router_blocks(shared: &ArcSwap<Router>) -> Vec<Arc<crate::config::Block>> {
    shared.load().blocks().to_vec()
}

/// Binds a TCP listener and, for `dns://`, `n` UDP sockets on the same
/// port. For port 0, TCP picks the port and UDP follows (retrying if UDP's
/// is taken). A QUIC listener binds one UDP socket only.
fn bind_pair(key: &ListenKey, n: usize, rcvbuf: usize) -> io::Result<Sockets> {
    let quic = matches!(key.scheme, Scheme::Quic | Scheme::Https3);
    let n = if key.scheme == Scheme::Dns {
        n.max(1)
    } else {
        0
    };
    let mut last_err = io::Error::other("no address to bind");
    for addr in candidates(key) {
        for _attempt in 0..8 {
            let bound = if quic {
                udp::bind(addr, rcvbuf).map(Sockets::Quic)
            } else {
                bind_on(addr, n, rcvbuf).map(|(t, u)| Sockets::Pair(t, u))
            };
            match bound {
                Ok(sockets) => return Ok(sockets),
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
    for _ in 0..n {
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
    freebind(&sock, addr)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}
