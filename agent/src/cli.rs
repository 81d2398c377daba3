//! The command line: CoreDNS's flags (single or double dash, `-flag value`
//! or `-flag=value`), so nodedns can replace the binary in existing
//! manifests, plus nodedns's own.

use std::path::PathBuf;
use std::time::Duration;

use nodedns_plugins::dispenser::parse_duration;

use crate::nodelocal::flags::NodeLocalArgs;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// `-conf FILE`.
    pub conf: Option<PathBuf>,
    /// `-dns.port N`: the port for keys that name none.
    pub dns_port: u16,
    /// `-plugins`: list the compiled plugins and exit.
    pub plugins: bool,
    /// `-version`: print the version and exit.
    pub version: bool,
    /// `-quiet`: no start-up banner and no listening lines.
    pub quiet: bool,
    /// `-pidfile FILE`.
    pub pidfile: Option<PathBuf>,
    /// `--admin ADDR`: the admin plane's address (`off` disables it).
    pub admin: String,
    /// `--admin-token-file FILE`: the bearer token every admin call needs.
    pub admin_token_file: Option<PathBuf>,
    /// `--udp-sockets N`: UDP sockets per address (0: one per core).
    pub udp_sockets: usize,
    /// `--udp-rcvbuf BYTES`.
    pub udp_rcvbuf: usize,
    /// `--max-udp-size BYTES`: cap on UDP replies.
    pub max_udp_size: u16,
    /// `--tcp-idle-timeout DURATION`.
    pub tcp_idle_timeout: Duration,
    /// `--max-tcp-conns N`.
    pub max_tcp_conns: usize,
    /// `--handshake-timeout DURATION`: TLS handshake (and DoH first header).
    pub handshake_timeout: Duration,
    /// `--max-http-streams N`: concurrent h2 streams per DoH connection.
    pub max_http_streams: u32,
    /// `--max-inflight N`: queries waiting on upstreams at once.
    pub max_inflight: usize,
    /// `--shutdown-timeout DURATION`: how long in-flight queries may take at stop.
    pub shutdown_timeout: Duration,
    /// `--resolv-conf FILE`: the upstreams of the embedded default.
    pub resolv_conf: PathBuf,
    /// `--handover-socket PATH`: where a new agent finds this one to take
    /// over from it (and where this one then waits for the next).
    pub handover_socket: Option<PathBuf>,
    /// `--cache-snapshot PATH`: the caches are written here at exit and
    /// loaded from here at start.
    pub cache_snapshot: Option<PathBuf>,
    /// NodeLocal DNSCache's flags (node-local mode when `-localip` is set).
    pub nodelocal: NodeLocalArgs,
    /// `-h`, `--help`.
    pub help: bool,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            conf: None,
            dns_port: 53,
            plugins: false,
            version: false,
            quiet: false,
            pidfile: None,
            admin: "127.0.0.1:8053".into(),
            admin_token_file: None,
            udp_sockets: 0,
            udp_rcvbuf: 8 << 20,
            max_udp_size: 1232,
            tcp_idle_timeout: Duration::from_secs(10),
            max_tcp_conns: 1024,
            handshake_timeout: Duration::from_secs(5),
            max_http_streams: 100,
            max_inflight: 10_000,
            shutdown_timeout: Duration::from_secs(5),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            handover_socket: None,
            cache_snapshot: None,
            nodelocal: NodeLocalArgs::default(),
            help: false,
        }
    }
}

/// The `--help` text.
pub const HELP: &str = "\
nodedns: a node-local DNS cache agent that runs CoreDNS Corefiles

Usage: nodedns [-conf FILE] [flags]

CoreDNS flags (one or two dashes; `-flag value` or `-flag=value`):
  -conf FILE            Corefile to load (default: ./Corefile, else the embedded default:
                        a cache with prefetch and serve-stale in front of the
                        --resolv-conf resolvers, with loop detection)
  -dns.port N           port for server blocks that name none (default 53)
  -plugins              list the compiled plugins in chain order and exit
  -version              print the version and exit
  -quiet                print no start-up banner or listening lines
  -pidfile FILE         write the process ID to FILE

Subcommands:
  nodedns ctl ...       the admin plane's client (`nodedns ctl --help`)

nodedns flags:
  --admin ADDR          admin plane (REST and gRPC) address (default 127.0.0.1:8053;
                        `off` disables). A non-loopback address needs a token file.
  --admin-token-file F  every admin call must carry `Authorization: Bearer <token in F>`
  --udp-sockets N       UDP sockets (threads) per address, SO_REUSEPORT (default: one per core)
  --udp-rcvbuf BYTES    receive buffer for each UDP socket (default 8388608)
  --max-udp-size BYTES  cap on UDP replies, whatever the client advertises (default 1232)
  --tcp-idle-timeout D  close a TCP, DoT, DoH, DoQ or DoH3 connection idle this long (default 10s)
  --max-tcp-conns N     most connections at once per TCP, DoT, DoH, DoQ or DoH3 listener (default 1024)
  --handshake-timeout D close a DoT/DoH connection whose TLS handshake (or first
                        HTTP request header) takes longer (default 5s)
  --max-http-streams N  most streams at once per DoH (h2), DoQ or DoH3 connection (default 100)
  --max-inflight N      most queries waiting on upstreams at once; past it a UDP query is dropped, a TCP one refused (default 10000)
  --shutdown-timeout D  how long in-flight queries may finish at stop (default 5s)
  --resolv-conf FILE    upstreams of the embedded default (default /etc/resolv.conf)
  --handover-socket P   unix socket where a new agent takes over from this one: it gets
                        the listening sockets and the cache, then this one stops serving
                        (a rollout loses no query); without it, an agent refuses to
                        start on an address another process already serves
  --cache-snapshot P    write the caches to P at exit and load them from P at start
  -h, --help            this text

NodeLocal DNSCache (node-cache) flags, node-local mode when -localip is set:
  -localip IPS          comma-separated addresses to hold and answer on (IPv4 and IPv6 may mix)
  -setupinterface       put the addresses on a dummy interface (default true)
  -interfacename NAME   that interface (default nodelocaldns); an existing link is used as is
  -setupiptables        install NOTRACK/ACCEPT rules for the addresses (default true)
  --packet-filter M     auto (nftables over netlink, else iptables), nftables or iptables
  -syncinterval D       how often the interface and rules are checked (default 60s; a bare number is seconds)
  -skipteardown         leave the rules and the interface in place at exit
  -upstreamsvc NAME     Service whose ClusterIP (env NAME_SERVICE_HOST) replaces
                        __PILLAR__CLUSTER__DNS__ (default kube-dns); or k8s://NS/SVC[:PORT]
                        to forward to the Service's ready endpoints
  -health-port N        the health port the rules open (default 8080)
  -basecorefile F       the Corefile template (default /etc/coredns/Corefile.base)
  -corefile F           where the filled Corefile is written and run from (default /etc/Corefile; -conf overrides)
  -kubednscm DIR        the kube-dns ConfigMap (stubDomains, upstreamNameservers; default /etc/kube-dns if present)
  -metrics-listen-address A  also serve /metrics here (default 0.0.0.0:9353; empty: off)
  -reloadwithsignal     accepted; changes are applied by the agent itself
";

/// Parses arguments (without the program name).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Args, String> {
    let mut out = Args::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            return Err(format!(
                "unexpected argument '{arg}' (flags start with '-')"
            ));
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .ok_or_else(|| format!("flag -{name} needs {what}")),
            }
        };
        let boolean = |inline: &Option<String>| -> Result<bool, String> {
            match inline.as_deref() {
                None | Some("true" | "1") => Ok(true),
                Some("false" | "0") => Ok(false),
                Some(v) => Err(format!("flag -{name}: invalid boolean '{v}'")),
            }
        };
        match name {
            "conf" => out.conf = Some(PathBuf::from(value("a file")?)),
            "dns.port" => out.dns_port = number(name, &value("a port")?)?,
            "plugins" => out.plugins = boolean(&inline)?,
            "version" => out.version = boolean(&inline)?,
            "quiet" => out.quiet = boolean(&inline)?,
            "pidfile" => out.pidfile = Some(PathBuf::from(value("a file")?)),
            "admin" => out.admin = value("an address")?,
            "admin-token-file" => out.admin_token_file = Some(PathBuf::from(value("a file")?)),
            "udp-sockets" => out.udp_sockets = number(name, &value("a count")?)?,
            "udp-rcvbuf" => out.udp_rcvbuf = number(name, &value("a size")?)?,
            "max-udp-size" => {
                let v: u16 = number(name, &value("a size")?)?;
                if v < 512 {
                    return Err(format!(
                        "flag -{name}: {v} is below the 512 bytes every client accepts"
                    ));
                }
                out.max_udp_size = v;
            }
            "tcp-idle-timeout" => out.tcp_idle_timeout = duration(name, &value("a duration")?)?,
            "max-tcp-conns" => out.max_tcp_conns = number(name, &value("a count")?)?,
            "handshake-timeout" => {
                out.handshake_timeout = duration(name, &value("a duration")?)?;
            }
            "max-http-streams" => out.max_http_streams = number(name, &value("a count")?)?,
            "max-inflight" => out.max_inflight = number(name, &value("a count")?)?,
            "shutdown-timeout" => out.shutdown_timeout = duration(name, &value("a duration")?)?,
            "resolv-conf" => out.resolv_conf = PathBuf::from(value("a file")?),
            "handover-socket" => out.handover_socket = Some(PathBuf::from(value("a path")?)),
            "cache-snapshot" => out.cache_snapshot = Some(PathBuf::from(value("a path")?)),
            "h" | "help" => out.help = true,
            _ => {
                let is_bool = || boolean(&inline);
                if !out.nodelocal.flag(name, &mut value, &is_bool)? {
                    return Err(format!("unknown flag '{arg}' (see --help)"));
                }
            }
        }
    }
    Ok(out)
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("flag -{name}: invalid number '{v}'"))
}

fn duration(name: &str, v: &str) -> Result<Duration, String> {
    parse_duration(v).ok_or_else(|| format!("flag -{name}: invalid duration '{v}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Args, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn coredns_spellings() {
        let a = p(&[
            "-conf",
            "/etc/Corefile",
            "-dns.port=1053",
            "-quiet",
            "--pidfile",
            "/run/x.pid",
        ])
        .unwrap();
        assert_eq!(a.conf, Some(PathBuf::from("/etc/Corefile")));
        assert_eq!(a.dns_port, 1053);
        assert!(a.quiet);
        assert_eq!(a.pidfile, Some(PathBuf::from("/run/x.pid")));
        let a = p(&["--conf=x", "-plugins", "-version=false"]).unwrap();
        assert_eq!(a.conf, Some(PathBuf::from("x")));
        assert!(a.plugins && !a.version);
        let a = p(&[
            "--admin",
            "off",
            "--tcp-idle-timeout",
            "3s",
            "--max-udp-size",
            "4096",
        ])
        .unwrap();
        assert_eq!(a.admin, "off");
        assert_eq!(a.tcp_idle_timeout, Duration::from_secs(3));
        assert_eq!(a.max_udp_size, 4096);
    }

    #[test]
    fn errors() {
        assert!(p(&["-conf"]).unwrap_err().contains("needs a file"));
        assert!(
            p(&["-dns.port", "x"])
                .unwrap_err()
                .contains("invalid number")
        );
        assert!(p(&["-nonesuch"]).unwrap_err().contains("unknown flag"));
        assert!(
            p(&["Corefile"])
                .unwrap_err()
                .contains("unexpected argument")
        );
        assert!(
            p(&["-localip", "169.254.20.x"])
                .unwrap_err()
                .contains("invalid localip")
        );
        assert!(p(&["--max-udp-size", "100"]).is_err());
    }
}
