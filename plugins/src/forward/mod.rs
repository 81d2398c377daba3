//! *forward* proxies queries to upstream resolvers over pooled UDP, TCP,
//! DNS-over-TLS, DNS-over-HTTPS (HTTP/2 and HTTP/3) and DNS-over-QUIC
//! connections, with in-band health checks, policies for
//! choosing an upstream, failover and a bound on queries in flight.
//!
//! `query` only decides whether the name is forwarded (FROM, `except`);
//! the exchange runs off the receive path as the plugin's [`Upstream`]
//! step. Each upstream carries its own failure count, smoothed RTT (for an
//! adaptive hedge delay) and health-check loop.
//!
//! An upstream (its [`Proxy`] with its pooled connections and sockets, its
//! failure count, whether it is marked down, its RTT) belongs to the
//! upstream, not to the block: every `forward` of a configuration that
//! names the same upstream with the same pool settings shares it, and a
//! reload that leaves those settings alone keeps it (see [`PoolKey`]).

mod k8s;
mod metrics;
mod resolv;
mod setup;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_k8s;

pub use setup::{ForwardConfig, K8sPort, K8sTarget, Policy, Scheme, To, parse, setup};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::ResponseCode;
use prometheus::IntCounter;
use rustls::pki_types::ServerName;
use tokio::time::Instant;

use crate::pkg::inspect::{UpstreamInspect, UpstreamState};
use crate::pkg::names::rcode_name;
use crate::pkg::proxy::{Proto, Proxy, ProxyConfig, Secure, TlsSettings, tls_client_config};
use crate::plugin::{Context, Flow, Plugin, PluginError, Upstream, UpstreamFuture};
use crate::request::{is_subdomain, name_to_wire};
use crate::setup::{Carry, Task};

/// The overall deadline of one forwarded query (CoreDNS's `defaultTimeout`).
const DEADLINE: Duration = Duration::from_secs(5);
/// The adaptive hedge delay: four smoothed RTTs plus this, at most
/// `read_timeout`. After it an unanswered attempt is hedged to the next
/// upstream (and still waited for). Used only when another upstream can
/// be tried: with one, waiting longer beats asking the same server twice.
const RTT_SLACK: Duration = Duration::from_millis(100);
/// How often a resolv.conf upstream list is checked for changes.
const RESOLV_POLL: Duration = Duration::from_secs(2);
/// Sockets in each upstream's UDP pool, at least: there is one per core
/// beyond that, so that each server thread (one per core) has its own.
const UDP_SOCKETS: usize = 4;
/// Queries in flight per upstream.
const MAX_IN_FLIGHT: usize = 16_384;

/// Rcodes with metric handles resolved in advance (NOERROR to REFUSED).
const RCODES: [&str; 6] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED",
];

/// An upstream's metric handles, resolved once so a response costs atomic
/// adds rather than label lookups.
struct UpMetrics {
    responses: [IntCounter; 6],
    duration: [prometheus::Histogram; 6],
    proxy_duration: [prometheus::Histogram; 6],
    /// Connection cache hits and misses by [`PROTOS`].
    conn_hits: [IntCounter; 6],
    conn_misses: [IntCounter; 6],
}

impl UpMetrics {
    fn new(to: &str) -> Self {
        let protos = PROTOS;
        Self {
            responses: RCODES.map(|rc| metrics::RESPONSES.with_label_values(&[to, rc])),
            duration: RCODES.map(|rc| metrics::DURATION.with_label_values(&[to, rc])),
            proxy_duration: RCODES
                .map(|rc| metrics::PROXY_DURATION.with_label_values(&["forward", to, rc])),
            conn_hits: protos
                .map(|p| metrics::CONN_CACHE_HITS.with_label_values(&["forward", to, p])),
            conn_misses: protos
                .map(|p| metrics::CONN_CACHE_MISSES.with_label_values(&["forward", to, p])),
        }
    }

    fn observe(&self, to: &str, rcode: u16, secs: f64) {
        match RCODES.get(usize::from(rcode)) {
            Some(_) => {
                let i = usize::from(rcode);
                self.responses[i].inc();
                self.duration[i].observe(secs);
                self.proxy_duration[i].observe(secs);
            }
            None => {
                let label = rcode_name(rcode).unwrap_or("OTHER");
                metrics::RESPONSES.with_label_values(&[to, label]).inc();
                metrics::DURATION
                    .with_label_values(&[to, label])
                    .observe(secs);
                metrics::PROXY_DURATION
                    .with_label_values(&["forward", to, label])
                    .observe(secs);
            }
        }
    }
}

/// The `proto` label values: CoreDNS's (`udp`, `tcp`, `tcp-tls`,
/// `https`), then DoQ's and DoH3's.
const PROTOS: [&str; 6] = ["udp", "tcp", "tcp-tls", "https", "quic", "h3"];

/// One upstream: its pool, health and RTT.
struct Up {
    proxy: Proxy,
    to: String,
    scheme: Scheme,
    fails: AtomicU32,
    checking: AtomicBool,
    /// Smoothed RTT in microseconds (0: no sample yet).
    srtt_us: AtomicU64,
    requests: IntCounter,
    hc_failures: IntCounter,
    m: UpMetrics,
    /// Its series go with it (a `k8s://` endpoint's; see
    /// `metrics::up_dropped`).
    forget_series: AtomicBool,
}

impl Drop for Up {
    fn drop(&mut self) {
        metrics::up_dropped(&self.to, self.forget_series.load(Ordering::Relaxed));
    }
}

impl Up {
    fn down(&self, max_fails: u32) -> bool {
        max_fails != 0 && self.fails.load(Ordering::Relaxed) >= max_fails
    }

    /// How long an attempt waits before it is hedged to another upstream.
    fn hedge_delay(&self, read_timeout: Duration) -> Duration {
        match self.srtt_us.load(Ordering::Relaxed) {
            0 => read_timeout,
            us => (Duration::from_micros(us) * 4 + RTT_SLACK).min(read_timeout),
        }
    }

    /// Its state for the admin plane, judged down by `max_fails`.
    fn state(&self, max_fails: u32) -> UpstreamState {
        let stats = self.proxy.stats();
        let pooled = stats.udp_sockets + stats.open_streams;
        UpstreamState {
            address: if self.scheme.is_secure() {
                format!("{}{}", self.scheme.prefix(), self.to)
            } else {
                self.to.clone()
            },
            healthy: !self.down(max_fails),
            fails: self.fails.load(Ordering::Relaxed),
            rtt: Duration::from_micros(self.srtt_us.load(Ordering::Relaxed)),
            pooled: u32::try_from(pooled).unwrap_or(u32::MAX),
        }
    }

    /// An upstream reached through `proxy`, healthy, with no RTT yet.
    fn new(proxy: Proxy, scheme: Scheme) -> Arc<Self> {
        let to = proxy.addr().to_string();
        metrics::up_created(&to);
        Arc::new(Self {
            proxy,
            requests: metrics::REQUESTS.with_label_values(&[&to]),
            hc_failures: metrics::PROXY_HC_FAILURES.with_label_values(&["forward", &to, ""]),
            m: UpMetrics::new(&to),
            to,
            scheme,
            fails: AtomicU32::new(0),
            checking: AtomicBool::new(false),
            srtt_us: AtomicU64::new(0),
            forget_series: AtomicBool::new(false),
        })
    }

    fn observe(&self, rtt: Duration) {
        let sample = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.srtt_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.srtt_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Index of the `proto` label in [`PROTOS`].
    fn proto_index(&self, proto: Proto) -> usize {
        match (self.scheme, proto) {
            (Scheme::Dns, Proto::Udp) => 0,
            (Scheme::Dns, Proto::Tcp) => 1,
            (Scheme::Tls, _) => 2,
            (Scheme::Https, _) => 3,
            (Scheme::Quic, _) => 4,
            (Scheme::H3, _) => 5,
        }
    }
}

/// What health checks ask and how often.
#[derive(Debug, Clone)]
struct HealthCheck {
    query: Arc<[u8]>,
    interval: Duration,
    timeout: Duration,
    proto: Proto,
}

/// The forward handler.
pub struct Forward {
    cfg: ForwardConfig,
    from: Vec<u8>,
    except: Vec<Vec<u8>>,
    upstreams: Arc<ArcSwap<Vec<Arc<Up>>>>,
    concurrent: AtomicUsize,
    rr: AtomicUsize,
    hc: HealthCheck,
    /// With `k8s://` upstreams: what keeps `upstreams` in step with them
    /// (and holds their watches).
    follow: Option<Arc<k8s::Follow>>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward").field("cfg", &self.cfg).finish()
    }
}

/// Everything needed to (re)build the upstream list.
#[derive(Clone)]
struct Builder {
    cfg: ForwardConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// A digest of the TLS files' contents (0 without TLS): a reload after
    /// a certificate or CA was replaced under the same name opens fresh
    /// connections with the new one.
    tls_files: u64,
}

/// What shapes an upstream's pool: its address and transport, the TLS
/// settings a DoT connection is made with, and the pool's own settings
/// (`expire`, `max_age`, `max_idle_conns`, `source_address`). Its text is
/// the key an upstream is carried over a reload under, and shared under
/// within a configuration: two `forward`s, in one block or in two, that
/// name the same upstream with the same key use one [`Up`], one pool
/// and one health record. What only a forward's choice of upstream depends
/// on (`policy`, `max_fails`, `force_tcp`, health check settings…) is not
/// part of it: the upstream's state is a fact about the upstream, and
/// each forward reads it by its own settings.
struct PoolKey(String);

impl PoolKey {
    fn new(b: &Builder, addr: SocketAddr, scheme: Scheme, server_name: Option<&str>) -> Self {
        let c = &b.cfg;
        let pool = format!(
            "expire={:?}|max_age={:?}|max_idle={}|source={:?}",
            c.expire, c.max_age, c.max_idle_conns, c.source_address
        );
        let method = match scheme {
            Scheme::Https | Scheme::H3 => format!("|method={:?}", c.doh_method),
            _ => String::new(),
        };
        Self(if scheme.is_secure() {
            let name = server_name.or(c.tls_servername.as_deref());
            format!(
                "forward|{}{addr}|name={name:?}|files={:?}|digest={:x}{method}|{pool}",
                scheme.prefix(),
                c.tls,
                b.tls_files
            )
        } else {
            format!("forward|dns://{addr}|{pool}")
        })
    }
}

/// Where a configuration being built finds upstreams: the running one's
/// (`from`, what it carries) and those this one built already (`kept`,
/// what it will carry). Both hold [`Weak`] references: what keeps an
/// upstream alive is a forward that uses it, so one a resolv.conf change
/// dropped is not kept open until the next reload.
struct Pools<'a> {
    from: &'a mut Carry,
    kept: &'a mut Carry,
}

impl Pools<'_> {
    /// The upstream under `key`: one this configuration built already
    /// (shared), else the running configuration's (carried), else a new
    /// one from `make`.
    fn up(
        &mut self,
        key: PoolKey,
        make: impl FnOnce() -> Result<Arc<Up>, String>,
    ) -> Result<Arc<Up>, String> {
        if let Some(up) = self.kept.get::<Weak<Up>>(&key.0).and_then(|w| w.upgrade()) {
            return Ok(up);
        }
        let up = match self.from.take::<Weak<Up>>(&key.0).and_then(|w| w.upgrade()) {
            Some(up) => up,
            None => make()?,
        };
        self.kept.keep(key.0, Arc::new(Arc::downgrade(&up)));
        Ok(up)
    }
}

impl Builder {
    /// Expands files into addresses.
    fn targets(&self) -> Result<Vec<(SocketAddr, Scheme, Option<String>)>, String> {
        let mut out = Vec::new();
        for t in &self.cfg.to {
            match t {
                To::Addr {
                    addr,
                    scheme,
                    server_name,
                } => out.push((*addr, *scheme, server_name.clone())),
                To::File(p) => {
                    let list =
                        resolv::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
                    if list.is_empty() {
                        return Err(format!("{} lists no nameserver", p.display()));
                    }
                    out.extend(list.into_iter().map(|a| (a, Scheme::Dns, None)));
                }
                // Followed by `k8s::Follow`.
                To::K8s(_) => {}
            }
        }
        Ok(out)
    }

    fn up(
        &self,
        addr: SocketAddr,
        scheme: Scheme,
        server_name: Option<String>,
    ) -> Result<Arc<Up>, String> {
        let tls_settings = if scheme.is_secure() {
            let config = self
                .tls
                .clone()
                .ok_or("internal: TLS upstream without TLS config")?;
            let name = server_name.or_else(|| self.cfg.tls_servername.clone());
            let server_name = match name {
                Some(n) => ServerName::try_from(n.clone())
                    .map_err(|_| format!("invalid TLS server name '{n}'"))?,
                None => ServerName::IpAddress(addr.ip().into()),
            };
            Some(TlsSettings {
                config,
                server_name,
            })
        } else {
            None
        };
        let proxy = Proxy::new(ProxyConfig {
            addr,
            tls: tls_settings,
            secure: match scheme {
                Scheme::Dns | Scheme::Tls => None,
                Scheme::Https => Some(Secure::Https(self.cfg.doh_method)),
                Scheme::Quic => Some(Secure::Quic),
                Scheme::H3 => Some(Secure::H3(self.cfg.doh_method)),
            },
            expire: self.cfg.expire,
            max_age: self.cfg.max_age,
            max_idle_conns: self.cfg.max_idle_conns,
            source_address: self.cfg.source_address,
            udp_sockets: std::thread::available_parallelism()
                .map_or(UDP_SOCKETS, |n| n.get().max(UDP_SOCKETS)),
            max_in_flight: MAX_IN_FLIGHT,
        });
        Ok(Up::new(proxy, scheme))
    }

    /// The upstreams, each found in `pools` or made.
    fn build_pooled(&self, pools: &mut Pools<'_>) -> Result<Vec<Arc<Up>>, String> {
        let mut out = Vec::new();
        for (addr, scheme, name) in self.targets()? {
            let key = PoolKey::new(self, addr, scheme, name.as_deref());
            out.push(pools.up(key, || self.up(addr, scheme, name))?);
        }
        Ok(out)
    }

    /// The upstreams after a resolv.conf change: those still listed keep
    /// theirs (`keep`, the current list).
    fn build_all(&self, keep: &[Arc<Up>]) -> Result<Vec<Arc<Up>>, String> {
        let mut out = Vec::new();
        for (addr, scheme, name) in self.targets()? {
            // An upstream that stays keeps its pool and health.
            match keep
                .iter()
                .find(|u| u.proxy.addr() == addr && u.scheme == scheme)
            {
                Some(u) => out.push(Arc::clone(u)),
                None => out.push(self.up(addr, scheme, name)?),
            }
        }
        Ok(out)
    }
}

impl Forward {
    /// Builds the handler (no I/O but reading resolv.conf files and TLS
    /// files) and, for file upstreams, the task that re-reads them. Every
    /// upstream gets a new pool.
    pub fn build(cfg: ForwardConfig) -> Result<(Self, Option<Task>), String> {
        Self::build_carried(cfg, &mut Carry::default(), &mut Carry::default())
    }

    /// [`Forward::build`] for a configuration being built: an upstream
    /// whose [`PoolKey`] is in `kept` (another forward of this
    /// configuration built it) is shared, else one in `carry_in` (the
    /// running configuration's) is taken over, with its connections,
    /// health and RTT; what this forward uses is added to `kept`. Taking
    /// from `carry_in` changes nothing but `carry_in` (a dry run passes a
    /// copy), and nothing is spawned.
    pub fn build_carried(
        cfg: ForwardConfig,
        carry_in: &mut Carry,
        kept: &mut Carry,
    ) -> Result<(Self, Option<Task>), String> {
        let from = name_to_wire(&cfg.from).ok_or_else(|| format!("invalid FROM '{}'", cfg.from))?;
        let except = cfg
            .except
            .iter()
            .map(|e| name_to_wire(e).ok_or_else(|| format!("invalid except '{e}'")))
            .collect::<Result<Vec<_>, _>>()?;
        let any_tls = cfg
            .to
            .iter()
            .any(|t| matches!(t, To::Addr { scheme, .. } if scheme.is_secure()));
        let (tls, tls_files) = if any_tls {
            let files = cfg.tls.clone().unwrap_or_default();
            let ck = files
                .cert_key
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path()));
            let config =
                tls_client_config(files.ca.as_deref(), ck).map_err(|e| format!("tls: {e}"))?;
            (Some(config), digest_files(&files))
        } else {
            (None, 0)
        };
        let builder = Builder {
            cfg: cfg.clone(),
            tls,
            tls_files,
        };
        let ups = builder.build_pooled(&mut Pools {
            from: carry_in,
            kept,
        })?;
        let hc_proto = if cfg.force_tcp {
            Proto::Tcp
        } else {
            Proto::Udp
        };
        let hc = HealthCheck {
            query: health_query(&cfg.hc_domain, cfg.hc_recursion_desired)?.into(),
            interval: cfg.health_check,
            timeout: cfg.read_timeout,
            proto: hc_proto,
        };
        let has_k8s = cfg.to.iter().any(|t| matches!(t, To::K8s(_)));
        let upstreams = Arc::new(ArcSwap::from_pointee(if has_k8s {
            Vec::new()
        } else {
            ups.clone()
        }));
        let follow = has_k8s.then(|| {
            // The written order: each address its upstream, each target
            // its endpoints.
            let mut statics = ups.into_iter();
            let slots = cfg
                .to
                .iter()
                .filter_map(|t| match t {
                    To::Addr { .. } => statics.next().map(k8s::Slot::Static),
                    To::File(_) => None,
                    To::K8s(k) => Some(k8s::Slot::K8s(
                        k8s::K8sWatch::carried(&k.namespace, &k.service, carry_in, kept),
                        k.clone(),
                    )),
                })
                .collect();
            k8s::Follow::start(Arc::clone(&upstreams), slots, builder.clone())
        });
        let files: Vec<PathBuf> = cfg
            .to
            .iter()
            .filter_map(|t| match t {
                To::File(p) => Some(p.clone()),
                To::Addr { .. } | To::K8s(_) => None,
            })
            .collect();
        let task: Option<Task> = (!files.is_empty()).then(|| {
            let weak = Arc::downgrade(&upstreams);
            Box::pin(watch_files(weak, builder, files)) as Task
        });
        Ok((
            Self {
                cfg,
                from,
                except,
                upstreams,
                concurrent: AtomicUsize::new(0),
                rr: AtomicUsize::new(0),
                hc,
                follow,
            },
            task,
        ))
    }

    /// What the admin plane shows of this forward's upstreams. It keeps
    /// nothing alive: once the forward is dropped it shows none.
    pub fn inspect(&self) -> Arc<dyn UpstreamInspect> {
        Arc::new(Inspect {
            upstreams: Arc::downgrade(&self.upstreams),
            max_fails: self.cfg.max_fails,
        })
    }

    /// What a configuration with this forward waits for before it serves:
    /// the first list of each `k8s://` target's watch (which this starts,
    /// unless it was carried over running), up to
    /// [`k8s::STARTUP_TIMEOUT`].
    pub fn startup(&self) -> Vec<crate::setup::StartupWait> {
        self.follow
            .iter()
            .flat_map(|f| f.watches())
            .map(|w| w.startup())
            .collect()
    }

    /// Whether this forward handles the (lower-cased wire) name.
    fn matches(&self, qname: &[u8]) -> bool {
        if !is_subdomain(qname, &self.from) {
            return false;
        }
        qname == self.from.as_slice() || !self.except.iter().any(|e| is_subdomain(qname, e))
    }

    /// The order to try upstreams in, as indexes.
    fn order(&self, n: usize) -> ([u8; setup::MAX_UPSTREAMS], usize) {
        let n = n.min(setup::MAX_UPSTREAMS);
        let mut idx = [0u8; setup::MAX_UPSTREAMS];
        for (i, slot) in idx.iter_mut().enumerate().take(n) {
            *slot = i as u8;
        }
        match self.cfg.policy {
            Policy::Sequential => {}
            Policy::RoundRobin if n > 0 => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed) % n;
                idx[..n].rotate_left(start);
            }
            Policy::RoundRobin => {}
            Policy::Random => {
                use rand::seq::SliceRandom;
                idx[..n].shuffle(&mut rand::rng());
            }
        }
        (idx, n)
    }

    /// Starts checking `up` unless a check is running. The loop runs on
    /// the runtime of the thread that starts it (a server thread's, for a
    /// query that came over UDP); if that runtime ends first (a reload
    /// removed the thread's listener), the loop is dropped and says so
    /// (see [`CheckingGuard`]), and the next query that finds the
    /// upstream down starts it again (see [`Forward::next_up`]).
    fn start_health_check(&self, up: &Arc<Up>) {
        if self.cfg.max_fails == 0
            || up.checking.load(Ordering::Relaxed)
            || up.checking.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let weak = Arc::downgrade(up);
        let hc = self.hc.clone();
        tokio::spawn(health_loop(CheckingGuard(weak), hc));
    }

    /// The next upstream to try, by the policy's order, skipping those
    /// that are down; when every one is down, one at random (health
    /// checking itself may be what is broken), or `None` with `failfast`.
    /// `i` walks `order`; `fails` counts the upstreams of this round that
    /// were down or answered a `failover` rcode.
    fn next_up<'l>(
        &self,
        list: &'l [Arc<Up>],
        order: &[u8],
        i: &mut usize,
        fails: &mut usize,
    ) -> Option<&'l Arc<Up>> {
        let n = order.len();
        // Bounded: `fails` reaches `n` within two rounds.
        for _ in 0..=2 * n {
            if *i >= n {
                *i = 0;
                *fails = 0;
            }
            let up = &list[usize::from(order[*i])];
            *i += 1;
            if !up.down(self.cfg.max_fails) {
                return Some(up);
            }
            // Down, and no loop to bring it back (the one that ran was
            // dropped with its thread): start one.
            self.start_health_check(up);
            *fails += 1;
            if *fails < n {
                continue;
            }
            metrics::HEALTHCHECK_BROKEN.inc();
            if self.cfg.failfast {
                return None;
            }
            return Some(&list[rand::random_range(0..n)]);
        }
        None
    }

    /// Sends the query to upstreams until one answers. Each attempt waits
    /// up to `read_timeout` (within the overall deadline). With more than
    /// one upstream, an attempt unanswered after its upstream's adaptive
    /// timeout (four smoothed RTTs plus [`RTT_SLACK`]) is *hedged*: the
    /// next upstream is asked too, and whichever answers first wins. The
    /// first attempt is still waited for, so a slow but live upstream (one
    /// that recurses) is not failed for being slow, and an attempt given up
    /// because another answered first is not counted as a failure: its
    /// upstream gets a health check instead, which decides (so one that
    /// died is still marked down, though hedges hide it). At most two
    /// attempts are in flight at once.
    async fn forward(&self, cx: &mut Context<'_>) -> Flow {
        let _slot = if self.cfg.max_concurrent > 0 {
            let n = self.concurrent.fetch_add(1, Ordering::AcqRel) + 1;
            let guard = Decrement(&self.concurrent);
            if n > self.cfg.max_concurrent {
                metrics::MAX_CONCURRENT_REJECTS.inc();
                return Flow::Fail(
                    ResponseCode::Refused,
                    Some(PluginError::MaxConcurrent {
                        plugin: "forward",
                        max: self.cfg.max_concurrent,
                    }),
                );
            }
            Some(guard)
        } else {
            None
        };
        let list = self.upstreams.load_full();
        let n = list.len();
        if n == 0 {
            return Flow::Fail(
                ResponseCode::ServFail,
                Some(PluginError::NoHealthy { plugin: "forward" }),
            );
        }
        let (order, n) = self.order(n);
        let order = &order[..n];
        let proto = if self.cfg.force_tcp {
            Proto::Tcp
        } else if self.cfg.prefer_udp {
            Proto::Udp
        } else {
            // CoreDNS's `state.Proto()`: a DoT/DoH/gRPC query goes out
            // over TCP, a DoQ/DoH3 one over UDP first.
            if cx.req.transport().is_udp() {
                Proto::Udp
            } else {
                Proto::Tcp
            }
        };
        // The clock is read once per attempt (and once per reply, for the
        // RTT): a miss is a few microseconds of work.
        let mut now = Instant::now();
        // From the query's arrival: time spent queued for a worker counts.
        let deadline = cx.start + DEADLINE;
        let max_attempts = if self.cfg.max_connect_attempts > 0 {
            self.cfg.max_connect_attempts as usize
        } else {
            // Bounded even when every upstream fails at once.
            2 * n + 1
        };
        let query = cx.req.raw();
        let mut i = 0usize;
        let mut fails = 0usize;
        let mut attempts = 0usize;
        let mut last_err: Option<PluginError> = None;
        let mut last_reply: Option<Vec<u8>> = None;
        // The attempts in flight: the first in place, a second (a hedge
        // started while the first waits) boxed, which only a slow
        // upstream pays for. The hedge timer belongs to the latest.
        let mut first = pin!(None);
        let mut first_up: Option<&Arc<Up>> = None;
        let mut second: Option<Pin<Box<dyn Future<Output = Exchange> + Send + '_>>> = None;
        let mut second_up: Option<&Arc<Up>> = None;
        let mut hedge = pin!(None::<tokio::time::Sleep>);
        let mut hedge_armed = false;
        let mut hedge_due = false;
        // Whether each attempt was hedged (its hedge timer fired), and
        // which one the timer belongs to.
        let mut hedged = [false; 2];
        let mut timer_for_first = true;
        loop {
            let in_flight = usize::from(first_up.is_some()) + usize::from(second_up.is_some());
            if in_flight == 0 || (hedge_due && in_flight == 1) {
                hedge_due = false;
                if in_flight > 0 || attempts > 0 {
                    now = Instant::now();
                }
                let up = if attempts < max_attempts && now < deadline {
                    self.next_up(&list, order, &mut i, &mut fails)
                } else {
                    None
                };
                match up {
                    Some(up) => {
                        attempts += 1;
                        let limit = self.cfg.read_timeout.min(deadline - now);
                        up.requests.inc();
                        let attempt = up.proxy.exchange_until(query, proto, now, now + limit);
                        timer_for_first = first_up.is_none();
                        if timer_for_first {
                            first.set(Some(attempt));
                            first_up = Some(up);
                        } else {
                            second = Some(Box::pin(attempt));
                            second_up = Some(up);
                        }
                        hedged[usize::from(!timer_for_first)] = false;
                        // A hedge needs another upstream and another attempt.
                        let hedge_after = up.hedge_delay(self.cfg.read_timeout);
                        hedge_armed = n > 1 && attempts < max_attempts && hedge_after < limit;
                        if hedge_armed {
                            match hedge.as_mut().as_pin_mut() {
                                Some(sleep) => sleep.reset(now + hedge_after),
                                None => {
                                    hedge.set(Some(tokio::time::sleep_until(now + hedge_after)))
                                }
                            }
                        }
                    }
                    None if in_flight == 0 => break,
                    None => {}
                }
            }
            let (result, up) = {
                let event = std::future::poll_fn(|task| {
                    if let Some(f) = first.as_mut().as_pin_mut()
                        && let Poll::Ready(r) = f.poll(task)
                    {
                        return Poll::Ready(Some((r, true)));
                    }
                    if let Some(f) = second.as_mut()
                        && let Poll::Ready(r) = f.as_mut().poll(task)
                    {
                        return Poll::Ready(Some((r, false)));
                    }
                    if hedge_armed
                        && let Some(sleep) = hedge.as_mut().as_pin_mut()
                        && sleep.poll(task).is_ready()
                    {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                })
                .await;
                match event {
                    None => {
                        hedge_armed = false;
                        hedge_due = true;
                        hedged[usize::from(!timer_for_first)] = true;
                        continue;
                    }
                    Some((r, true)) => {
                        first.set(None);
                        (r, first_up.take())
                    }
                    Some((r, false)) => {
                        second = None;
                        (r, second_up.take())
                    }
                }
            };
            let Some(up) = up else { continue };
            let mut result = result;
            // A truncated UDP answer is asked again over TCP, for the full
            // answer. Boxed: rare, and the other attempt may be in flight.
            if proto == Proto::Udp
                && up.scheme == Scheme::Dns
                && let Ok(x) = &result
                && x.reply.get(2).is_some_and(|b| b & 0x02 != 0)
            {
                let left = deadline.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    let tcp = Box::pin(up.proxy.exchange(
                        query,
                        Proto::Tcp,
                        self.cfg.read_timeout.min(left),
                    ))
                    .await;
                    if tcp.is_ok() {
                        result = tcp;
                    }
                }
            }
            let x = match result {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(upstream = %up.to, error = %e, "forward: exchange failed");
                    // A local limit (too many queries in flight) says
                    // nothing about the upstream's health.
                    if e.is_network() {
                        up.fails.fetch_add(1, Ordering::Relaxed);
                        self.start_health_check(up);
                    }
                    last_err = Some(PluginError::Upstream {
                        plugin: "forward",
                        to: up.to.clone(),
                        source: Box::new(e),
                    });
                    continue;
                }
            };
            up.observe(x.rtt);
            let p = up.proto_index(proto);
            if x.reused_conn {
                up.m.conn_hits[p].inc();
            } else {
                up.m.conn_misses[p].inc();
            }
            let rcode = x.reply.get(3).map_or(2, |b| u16::from(b & 0x0f));
            up.m.observe(&up.to, rcode, x.rtt.as_secs_f64());
            if self.cfg.failover.contains(&rcode) && fails < n {
                fails += 1;
                last_reply = Some(x.reply);
                continue;
            }
            // The attempt still in flight, if hedged, is given up unanswered.
            for (other, was_hedged) in [(first_up, hedged[0]), (second_up, hedged[1])] {
                if let Some(other) = other
                    && was_hedged
                {
                    self.start_health_check(other);
                }
            }
            if self.cfg.next.contains(&rcode) || (self.cfg.next_on_nodata && is_nodata(&x.reply)) {
                return Flow::Next;
            }
            cx.reply.set_wire_vec(x.reply);
            return Flow::Answered;
        }
        if let Some(r) = last_reply {
            cx.reply.set_wire_vec(r);
            return Flow::Answered;
        }
        Flow::Fail(
            ResponseCode::ServFail,
            Some(last_err.unwrap_or(PluginError::NoHealthy { plugin: "forward" })),
        )
    }
}

/// A forward's upstreams as the admin plane reads them.
struct Inspect {
    /// Weak: a view the admin plane still holds after a reload must not
    /// keep the old configuration's pools open.
    upstreams: Weak<ArcSwap<Vec<Arc<Up>>>>,
    max_fails: u32,
}

impl UpstreamInspect for Inspect {
    fn upstreams(&self) -> Vec<UpstreamState> {
        let Some(list) = self.upstreams.upgrade() else {
            return Vec::new();
        };
        list.load()
            .iter()
            .map(|u| u.state(self.max_fails))
            .collect()
    }
}

/// A digest of the TLS files' contents (a file that cannot be read counts
/// as empty: building the TLS configuration has refused it already).
fn digest_files(files: &setup::TlsFiles) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    let paths = files
        .cert_key
        .iter()
        .flat_map(|(c, k)| [c, k])
        .chain(files.ca.iter());
    for p in paths {
        std::fs::read(p).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

/// What an attempt returns.
type Exchange = Result<crate::pkg::proxy::Exchanged, crate::pkg::proxy::ProxyError>;

/// Decrements a counter when dropped.
struct Decrement<'a>(&'a AtomicUsize);
impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Plugin for Forward {
    fn name(&self) -> &'static str {
        "forward"
    }
    fn query(&self, cx: &mut Context<'_>) -> Flow {
        if self.matches(cx.req.qname_lower()) {
            Flow::Upstream
        } else {
            Flow::Next
        }
    }
    fn upstream(&self) -> Option<&dyn Upstream> {
        Some(self)
    }
}

impl Upstream for Forward {
    fn exchange<'a>(&'a self, cx: &'a mut Context<'_>) -> UpstreamFuture<'a> {
        Box::pin(self.forward(cx))
    }
}

/// NOERROR with no answer records.
fn is_nodata(reply: &[u8]) -> bool {
    reply.len() >= 12 && reply[3] & 0x0f == 0 && reply[6] == 0 && reply[7] == 0
}

/// `. IN NS` (or the configured domain), RD unless `no_rec`.
fn health_query(domain: &str, rd: bool) -> Result<Vec<u8>, String> {
    let name =
        name_to_wire(domain).ok_or_else(|| format!("invalid health_check domain '{domain}'"))?;
    let mut q = Vec::with_capacity(12 + name.len() + 4);
    q.extend_from_slice(&[0, 0, if rd { 0x01 } else { 0 }, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(&name);
    q.extend_from_slice(&[0, 2, 0, 1]);
    Ok(q)
}

/// An upstream's health-check loop: clears `checking` when the loop
/// ends, however it ends (a passing check, or the runtime that ran it
/// dropping it), so that another can start.
struct CheckingGuard(Weak<Up>);

impl Drop for CheckingGuard {
    fn drop(&mut self) {
        if let Some(up) = self.0.upgrade() {
            up.checking.store(false, Ordering::Release);
        }
    }
}

/// Checks a failing upstream every interval until a check passes (any
/// reply counts, as CoreDNS), or the upstream is gone.
async fn health_loop(guard: CheckingGuard, hc: HealthCheck) {
    let up = &guard.0;
    loop {
        let Some(u) = up.upgrade() else { return };
        let ok = u
            .proxy
            .exchange(&hc.query, hc.proto, hc.timeout)
            .await
            .is_ok();
        if ok {
            u.fails.store(0, Ordering::Relaxed);
            tracing::debug!(upstream = %u.to, "forward: health check passed");
            // `guard` clears `checking` as the loop ends.
            return;
        }
        u.fails.fetch_add(1, Ordering::Relaxed);
        u.hc_failures.inc();
        tracing::warn!(upstream = %u.to, "forward: health check failed");
        drop(u);
        tokio::time::sleep(hc.interval).await;
    }
}

/// Re-reads resolv.conf-style upstream files when they change, and swaps
/// the upstream list; stops when the forward is gone.
async fn watch_files(target: Weak<ArcSwap<Vec<Arc<Up>>>>, builder: Builder, files: Vec<PathBuf>) {
    let stamp = |files: &[PathBuf]| -> Vec<Option<(std::time::SystemTime, u64)>> {
        files
            .iter()
            .map(|f| {
                std::fs::metadata(f)
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())))
            })
            .collect()
    };
    let mut last = stamp(&files);
    let mut tick = tokio::time::interval(RESOLV_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(current) = target.upgrade() else {
            return;
        };
        let now = stamp(&files);
        if now == last {
            continue;
        }
        last = now;
        match builder.build_all(&current.load()) {
            Ok(list) if !list.is_empty() => {
                let addrs: Vec<String> = list.iter().map(|u| u.to.clone()).collect();
                tracing::info!(upstreams = ?addrs, "forward: upstream file changed");
                current.store(Arc::new(list));
            }
            Ok(_) => {
                tracing::warn!("forward: upstream file lists no nameserver; keeping the old list")
            }
            Err(e) => {
                tracing::warn!(error = %e, "forward: re-reading upstream file failed; keeping the old list")
            }
        }
    }
}
