//! `forward FROM TO... { OPTIONS }`: CoreDNS 1.14's syntax, parsed into a
//! [`ForwardConfig`] (pure, comparable) and then built into a [`Forward`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dispenser::{Dispenser, SetupError};
use crate::pkg::names::rcode_from_name;
use crate::pkg::proxy::DohMethod;
use crate::pkg::zones;
use crate::setup::Controller;

use super::Forward;
use super::resolv;

/// Most upstreams one `forward` may name (CoreDNS's limit).
pub(crate) const MAX_UPSTREAMS: usize = 15;
/// CoreDNS's defaults.
pub(crate) const DEFAULT_EXPIRE: Duration = Duration::from_secs(10);
/// Interval between health checks of a failing upstream.
pub(crate) const DEFAULT_HEALTH_CHECK: Duration = Duration::from_millis(500);
/// Upper bound of one upstream attempt.
pub(crate) const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Failures before an upstream is down.
pub(crate) const DEFAULT_MAX_FAILS: u32 = 2;

/// How the next upstream is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// A random order per query.
    #[default]
    Random,
    /// Rotating the start per query.
    RoundRobin,
    /// Always in the order written.
    Sequential,
}

/// The transport a `TO` names by its scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scheme {
    /// `dns://` or none: UDP and TCP.
    #[default]
    Dns,
    /// `tls://`: DNS over TLS.
    Tls,
    /// `https://`: DNS over HTTPS (HTTP/2).
    Https,
    /// `quic://`: DNS over QUIC.
    Quic,
    /// `h3://`: DNS over HTTPS on HTTP/3.
    H3,
}

impl Scheme {
    /// Whether the transport is encrypted (TLS settings apply).
    pub fn is_secure(self) -> bool {
        self != Self::Dns
    }

    /// The scheme as written, with `://`.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Dns => "dns://",
            Self::Tls => "tls://",
            Self::Https => "https://",
            Self::Quic => "quic://",
            Self::H3 => "h3://",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Dns => 53,
            Self::Tls | Self::Quic => 853,
            Self::Https | Self::H3 => 443,
        }
    }
}

/// One `TO` as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    /// An address, with its transport (and a server name from `%NAME`).
    Addr {
        /// Where.
        addr: SocketAddr,
        /// How.
        scheme: Scheme,
        /// `tls://IP%NAME` (and the same for the other encrypted schemes).
        server_name: Option<String>,
    },
    /// A resolv.conf-style file whose nameservers are the upstreams.
    File(PathBuf),
    /// `k8s://NAMESPACE/SERVICE[:PORT]`: the ready endpoints of the
    /// service's EndpointSlices, followed live (plain DNS).
    K8s(K8sTarget),
}

/// `k8s://NAMESPACE/SERVICE[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct K8sTarget {
    /// The service's namespace.
    pub namespace: String,
    /// The service's name (its slices carry it as `kubernetes.io/service-name`).
    pub service: String,
    /// Which port of each endpoint.
    pub port: K8sPort,
}

impl std::fmt::Display for K8sTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "k8s://{}/{}", self.namespace, self.service)?;
        match &self.port {
            K8sPort::Default => Ok(()),
            K8sPort::Number(n) => write!(f, ":{n}"),
            K8sPort::Name(n) => write!(f, ":{n}"),
        }
    }
}

/// The port of a `k8s://` target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum K8sPort {
    /// None written: each slice's port named `dns` (UDP first), else
    /// `dns-tcp`, else 53.
    Default,
    /// A number: this port on every endpoint.
    Number(u16),
    /// A name: each slice's port of that name (slices without it add no
    /// endpoint).
    Name(String),
}

/// `tls [CERT KEY] [CA]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    /// Client certificate and key.
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// CA to verify the server with (else the system roots).
    pub ca: Option<PathBuf>,
}

/// Everything one `forward` line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardConfig {
    /// Zone forwarded (normalised).
    pub from: String,
    /// Upstreams as written.
    pub to: Vec<To>,
    /// Zones not forwarded.
    pub except: Vec<String>,
    /// TCP whatever the client used.
    pub force_tcp: bool,
    /// UDP whatever the client used (TCP on truncation).
    pub prefer_udp: bool,
    /// Idle pooled connections close after this.
    pub expire: Duration,
    /// Pooled connections take no new query past this age.
    pub max_age: Option<Duration>,
    /// Most idle pooled connections per upstream (0: no limit).
    pub max_idle_conns: usize,
    /// Upper bound of one upstream attempt.
    pub read_timeout: Duration,
    /// Consecutive failures before an upstream is down (0: never).
    pub max_fails: u32,
    /// Most upstream attempts per query (0: until the deadline).
    pub max_connect_attempts: u32,
    /// `tls` files.
    pub tls: Option<TlsFiles>,
    /// `tls_servername`.
    pub tls_servername: Option<String>,
    /// `doh_method`: how `https://` and `h3://` queries are sent.
    pub doh_method: DohMethod,
    /// Upstream order.
    pub policy: Policy,
    /// Health check interval.
    pub health_check: Duration,
    /// RD on health checks (`no_rec` clears it).
    pub hc_recursion_desired: bool,
    /// The name health checks ask (`. IN NS` by default).
    pub hc_domain: String,
    /// Most queries in flight (0: no limit).
    pub max_concurrent: usize,
    /// Rcodes handed to the next plugin.
    pub next: Vec<u16>,
    /// NODATA handed to the next plugin.
    pub next_on_nodata: bool,
    /// Rcodes that make forward try the next upstream.
    pub failover: Vec<u16>,
    /// SERVFAIL at once when every upstream is down.
    pub failfast: bool,
    /// Source address of outgoing queries.
    pub source_address: Option<IpAddr>,
}

impl ForwardConfig {
    fn new(from: String) -> Self {
        Self {
            from,
            to: Vec::new(),
            except: Vec::new(),
            force_tcp: false,
            prefer_udp: false,
            expire: DEFAULT_EXPIRE,
            max_age: None,
            max_idle_conns: 0,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_fails: DEFAULT_MAX_FAILS,
            max_connect_attempts: 0,
            tls: None,
            tls_servername: None,
            doh_method: DohMethod::Post,
            policy: Policy::Random,
            health_check: DEFAULT_HEALTH_CHECK,
            hc_recursion_desired: true,
            hc_domain: ".".into(),
            max_concurrent: 0,
            next: Vec::new(),
            next_on_nodata: false,
            failover: Vec::new(),
            failfast: false,
            source_address: None,
        }
    }
}

/// Parses every `forward` line of a block and adds one plugin per line,
/// in order (several `forward`s are tried in the order written). Upstreams
/// are shared with other forwards of the configuration and carried over
/// from the running one where their pool settings match (see
/// `Forward::build_carried`); each forward's upstreams are shown to the
/// admin plane.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let configs = parse(&mut c.d)?;
    for cfg in configs {
        let services = &mut *c.services;
        let (fwd, task) =
            Forward::build_carried(cfg, &mut services.carry_in, &mut services.carry_out)
                .map_err(|e| c.d.err(e))?;
        if let Some(task) = task {
            c.spawn_on_start(task);
        }
        c.services.upstreams.push(fwd.inspect());
        c.services.startup.extend(fwd.startup());
        c.add_plugin(Box::new(fwd));
    }
    Ok(())
}

/// Parses every `forward` line.
pub fn parse(d: &mut Dispenser<'_>) -> Result<Vec<ForwardConfig>, SetupError> {
    let mut out = Vec::new();
    while d.next() {
        out.push(parse_one(d)?);
    }
    Ok(out)
}

fn parse_one(d: &mut Dispenser<'_>) -> Result<ForwardConfig, SetupError> {
    let from = d.arg("FROM")?;
    let from = from_zone(from).ok_or_else(|| d.err(format_args!("invalid FROM zone '{from}'")))?;
    let mut cfg = ForwardConfig::new(from);
    let tos = d.remaining_args();
    if tos.is_empty() {
        return Err(d.err("missing TO: at least one upstream address or file"));
    }
    for t in &tos {
        cfg.to.push(parse_to(t).map_err(|m| d.err(m))?);
    }
    while d.next_block() {
        parse_option(d, &mut cfg)?;
    }
    validate(d, &cfg)?;
    Ok(cfg)
}

fn from_zone(s: &str) -> Option<String> {
    // A CIDR FROM uses its first reverse zone, as CoreDNS does.
    if s.contains('/') {
        let (ip, bits) = s.split_once('/')?;
        let ip: IpAddr = ip.parse().ok()?;
        let bits: u32 = bits.parse().ok()?;
        return match ip {
            IpAddr::V4(v4) if bits <= 32 => {
                let octets = bits.div_ceil(8) as usize;
                let mut z: Vec<String> = v4.octets()[..octets].iter().map(u8::to_string).collect();
                z.reverse();
                z.push("in-addr.arpa.".into());
                Some(z.join("."))
            }
            IpAddr::V6(v6) if bits <= 128 => {
                let nibbles = bits.div_ceil(4) as usize;
                let all: Vec<String> = v6
                    .octets()
                    .iter()
                    .flat_map(|b| [b >> 4, b & 0xf])
                    .map(|n| format!("{n:x}"))
                    .collect();
                let mut z: Vec<String> = all[..nibbles].to_vec();
                z.reverse();
                z.push("ip6.arpa.".into());
                Some(z.join("."))
            }
            _ => None,
        };
    }
    zones::normalize(s.strip_prefix("dns://").unwrap_or(s))
}

/// The scheme of an upstream that follows a Kubernetes service.
const K8S_PREFIX: &str = "k8s://";

/// Parses one `TO`.
fn parse_to(t: &str) -> Result<To, String> {
    if let Some(rest) = t.strip_prefix(K8S_PREFIX) {
        return parse_k8s(rest)
            .map(To::K8s)
            .map_err(|e| format!("upstream '{t}': {e} (k8s://NAMESPACE/SERVICE[:PORT])"));
    }
    let schemes = [
        Scheme::Dns,
        Scheme::Tls,
        Scheme::Https,
        Scheme::Quic,
        Scheme::H3,
    ];
    let (scheme, rest) = match schemes
        .iter()
        .find_map(|s| t.strip_prefix(s.prefix()).map(|r| (*s, r)))
    {
        Some(found) => found,
        None => match t.split_once("://") {
            Some((scheme, _)) => {
                return Err(format!(
                    "upstream '{t}': transport '{scheme}://' not supported (dns://, tls://, https://, quic:// and h3:// are)"
                ));
            }
            None => (Scheme::Dns, t),
        },
    };
    if rest.starts_with(K8S_PREFIX) {
        return Err(format!(
            "upstream '{t}': {K8S_PREFIX} upstreams are plain DNS; {}{K8S_PREFIX} is not supported",
            scheme.prefix()
        ));
    }
    if matches!(scheme, Scheme::Https | Scheme::H3) && rest.contains('/') {
        return Err(format!(
            "upstream '{t}': paths are not allowed in HTTPS upstream addresses (the {} path is used)",
            crate::pkg::proxy::DOH_PATH
        ));
    }
    // SCHEME://IP%SERVERNAME[:PORT]
    let (host_port, server_name) = match rest.split_once('%') {
        Some((ip, tail)) if scheme.is_secure() => {
            let (name, port) = match tail.rsplit_once(':') {
                Some((n, p)) if p.chars().all(|c| c.is_ascii_digit()) => (n, Some(p)),
                _ => (tail, None),
            };
            let hp = match port {
                Some(p) => format!("{ip}:{p}"),
                None => ip.to_string(),
            };
            (hp, Some(name.to_string()))
        }
        _ => (rest.to_string(), None),
    };
    if let Some(addr) = parse_addr(&host_port, scheme.default_port()) {
        return Ok(To::Addr {
            addr,
            scheme,
            server_name,
        });
    }
    if scheme == Scheme::Dns
        && (rest.starts_with('/') || rest.starts_with('.') || Path::new(rest).is_file())
    {
        return Ok(To::File(PathBuf::from(rest)));
    }
    Err(format!(
        "upstream '{t}' is not an IP address, [IPv6]:port or file (host names are not supported)"
    ))
}

/// `NAMESPACE/SERVICE[:PORT]`, as the API server would accept them: a
/// namespace is a DNS label (RFC 1123), a service name an RFC 1035 label,
/// a port a number from 1 to 65535 or a port name (IANA service name
/// syntax: up to 15 lower-case letters, digits and inner `-`, a letter
/// among them).
pub(super) fn parse_k8s(rest: &str) -> Result<K8sTarget, String> {
    let (namespace, tail) = rest
        .split_once('/')
        .ok_or("no SERVICE: write NAMESPACE/SERVICE")?;
    let (service, port) = match tail.split_once(':') {
        Some((s, p)) => (s, Some(p)),
        None => (tail, None),
    };
    if !is_label(namespace, false) {
        return Err(format!(
            "invalid namespace '{namespace}': lower-case letters, digits and inner '-', at most 63"
        ));
    }
    if !is_label(service, true) {
        return Err(format!(
            "invalid service name '{service}': a lower-case letter, then letters, digits and inner '-', at most 63"
        ));
    }
    let port = match port {
        None => K8sPort::Default,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => K8sPort::Number(n),
                _ => return Err(format!("invalid port '{p}': 1 to 65535")),
            }
        }
        Some(p) if is_port_name(p) => K8sPort::Name(p.to_string()),
        Some(p) => {
            return Err(format!(
                "invalid port '{p}': a number or a port name (at most 15 lower-case letters, digits and inner '-')"
            ));
        }
    };
    Ok(K8sTarget {
        namespace: namespace.to_string(),
        service: service.to_string(),
        port,
    })
}

/// A DNS label in lower case, at most 63 (RFC 1123; RFC 1035 with
/// `letter_first`).
fn is_label(s: &str, letter_first: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && (!letter_first || b[0].is_ascii_lowercase())
}

/// An IANA service name, as a Kubernetes port name: at most 15, lower-case
/// letters, digits and `-` (not first, not last, never two in a row), a
/// letter among them.
fn is_port_name(s: &str) -> bool {
    s.len() <= 15
        && is_label(s, false)
        && !s.contains("--")
        && s.bytes().any(|c| c.is_ascii_lowercase())
}

/// `IP`, `IP:PORT`, `[IPv6]:PORT` or a bare IPv6 address.
pub(super) fn parse_addr(s: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, default_port));
    }
    let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))?;
    inner
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

fn parse_option(d: &mut Dispenser<'_>, cfg: &mut ForwardConfig) -> Result<(), SetupError> {
    match d.val() {
        "except" => {
            let names = d.remaining_args();
            if names.is_empty() {
                return Err(d.arg_err());
            }
            for n in names {
                let z = zones::normalize(&n)
                    .ok_or_else(|| d.err(format_args!("invalid except name '{n}'")))?;
                cfg.except.push(z);
            }
        }
        "force_tcp" => {
            d.no_more_args()?;
            cfg.force_tcp = true;
        }
        "prefer_udp" => {
            d.no_more_args()?;
            cfg.prefer_udp = true;
        }
        "expire" => cfg.expire = one_duration(d)?,
        "max_age" => {
            let t = one_duration(d)?;
            cfg.max_age = (!t.is_zero()).then_some(t);
        }
        "read_timeout" => {
            let t = one_duration(d)?;
            if t.is_zero() {
                return Err(d.err("read_timeout must be above 0"));
            }
            cfg.read_timeout = t;
        }
        "max_idle_conns" => cfg.max_idle_conns = one_number(d)?,
        "max_fails" => cfg.max_fails = one_number(d)?,
        "max_connect_attempts" => cfg.max_connect_attempts = one_number(d)?,
        "max_concurrent" => {
            let n: usize = one_number(d)?;
            if n == 0 {
                return Err(d.err("max_concurrent must be at least 1"));
            }
            cfg.max_concurrent = n;
        }
        "tls" => {
            let args = d.remaining_args();
            let files = match args.as_slice() {
                [] => TlsFiles::default(),
                [ca] => TlsFiles {
                    cert_key: None,
                    ca: Some(ca.into()),
                },
                [cert, key] => TlsFiles {
                    cert_key: Some((cert.into(), key.into())),
                    ca: None,
                },
                [cert, key, ca] => TlsFiles {
                    cert_key: Some((cert.into(), key.into())),
                    ca: Some(ca.into()),
                },
                _ => return Err(d.arg_err()),
            };
            cfg.tls = Some(files);
        }
        "tls_servername" => {
            let name = d.arg("NAME")?.to_string();
            d.no_more_args()?;
            cfg.tls_servername = Some(name);
        }
        "policy" => {
            let p = d.arg("policy")?;
            cfg.policy = match p {
                "random" => Policy::Random,
                "round_robin" => Policy::RoundRobin,
                "sequential" => Policy::Sequential,
                other => return Err(d.err(format_args!("unknown policy '{other}'"))),
            };
            d.no_more_args()?;
        }
        "health_check" => {
            d.arg("DURATION")?;
            let t = d.duration()?;
            if t.is_zero() {
                return Err(d.err("health_check interval must be above 0"));
            }
            cfg.health_check = t;
            while d.next_arg() {
                match d.val() {
                    "no_rec" => cfg.hc_recursion_desired = false,
                    "domain" => {
                        let dom = d.arg("FQDN")?;
                        cfg.hc_domain = zones::normalize(dom)
                            .ok_or_else(|| d.err(format_args!("invalid domain '{dom}'")))?;
                    }
                    other => {
                        return Err(d.err(format_args!("health_check: unknown argument '{other}'")));
                    }
                }
            }
        }
        "next" => cfg.next = rcodes(d)?,
        "next_on_nodata" => {
            d.no_more_args()?;
            cfg.next_on_nodata = true;
        }
        "failover" => {
            let list = rcodes(d)?;
            if list.contains(&0) {
                return Err(d.err("failover: NOERROR cannot be used"));
            }
            cfg.failover = list;
        }
        "failfast_all_unhealthy_upstreams" => {
            d.no_more_args()?;
            cfg.failfast = true;
        }
        "source_address" => {
            let a = d.arg("IP")?;
            let ip: IpAddr = a
                .parse()
                .map_err(|_| d.err(format_args!("invalid source_address '{a}'")))?;
            d.no_more_args()?;
            cfg.source_address = Some(ip);
        }
        "doh_method" => {
            let m = d.arg("GET|POST")?;
            cfg.doh_method = match m {
                "POST" => DohMethod::Post,
                "GET" => DohMethod::Get,
                other => {
                    return Err(d.err(format_args!(
                        "doh_method must be either POST or GET, not '{other}'"
                    )));
                }
            };
            d.no_more_args()?;
        }
        "resolver" => return Err(d.unsupported()),
        _ => return Err(d.unsupported()),
    }
    Ok(())
}

fn one_duration(d: &mut Dispenser<'_>) -> Result<Duration, SetupError> {
    d.arg("DURATION")?;
    let t = d.duration()?;
    d.no_more_args()?;
    Ok(t)
}

fn one_number<T: std::str::FromStr>(d: &mut Dispenser<'_>) -> Result<T, SetupError> {
    d.arg("number")?;
    let n = d.number()?;
    d.no_more_args()?;
    Ok(n)
}

fn rcodes(d: &mut Dispenser<'_>) -> Result<Vec<u16>, SetupError> {
    let args = d.remaining_args();
    if args.is_empty() {
        return Err(d.arg_err());
    }
    args.iter()
        .map(|a| rcode_from_name(a).ok_or_else(|| d.err(format_args!("unknown rcode '{a}'"))))
        .collect()
}

fn validate(d: &Dispenser<'_>, cfg: &ForwardConfig) -> Result<(), SetupError> {
    let has_sni = cfg.to.iter().any(|t| {
        matches!(
            t,
            To::Addr {
                server_name: Some(_),
                ..
            }
        )
    });
    if has_sni && cfg.tls_servername.is_some() {
        return Err(d.err("tls_servername cannot be combined with tls://IP%NAME upstreams"));
    }
    let has_k8s = cfg.to.iter().any(|t| matches!(t, To::K8s(_)));
    if has_k8s && cfg.to.iter().any(|t| matches!(t, To::File(_))) {
        return Err(d.err(
            "k8s:// upstreams cannot be combined with resolv.conf files in one forward; use two forwards",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(t) = cfg.to.iter().find_map(|t| match t {
        To::K8s(k) if !seen.insert(k) => Some(k),
        _ => None,
    }) {
        return Err(d.err(format_args!("upstream '{t}' is listed twice")));
    }
    let mut count = 0usize;
    for t in &cfg.to {
        count += match t {
            To::Addr { .. } => 1,
            To::File(p) => resolv::read(p).map(|v| v.len()).unwrap_or(0),
            // Its endpoints share what the others leave (see `k8s.rs`);
            // a forward whose written upstreams leave none is refused.
            To::K8s(_) => 1,
        };
    }
    if count > MAX_UPSTREAMS {
        return Err(d.err(format_args!(
            "more than {MAX_UPSTREAMS} upstreams ({count})"
        )));
    }
    Ok(())
}
