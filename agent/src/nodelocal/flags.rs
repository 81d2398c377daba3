//! NodeLocal DNSCache's (`node-cache`'s) flags, with its names, defaults
//! and meanings, so the agent can replace the image in an existing
//! DaemonSet. Node-local mode is on when `-localip` is given.
//!
//! Differences from node-cache, each a superset:
//! - `-localip` may mix IPv4 and IPv6 (node-cache refuses two families).
//! - `-syncinterval` takes a Go duration (`30s`) or a bare number of
//!   seconds (`30`); node-cache's flag is a `time.Duration` that it then
//!   multiplies by a second, so only a unit-less count was meaningful.
//! - `-upstreamsvc` also takes `k8s://NAMESPACE/SERVICE[:PORT]`: that
//!   forward target replaces `__PILLAR__CLUSTER__DNS__`, so the cluster
//!   zone goes to the Service's ready endpoints instead of its ClusterIP.
//! - `--packet-filter auto|nftables|iptables` chooses how the NOTRACK and
//!   ACCEPT rules are installed (`auto`: nftables over netlink, else the
//!   iptables binaries).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use nodedns_plugins::dispenser::parse_duration;

/// How the packet-filter rules are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PacketFilter {
    /// nftables over netlink, else iptables.
    #[default]
    Auto,
    /// nftables over netlink only.
    Nftables,
    /// The `iptables`/`ip6tables` binaries, as node-cache.
    Iptables,
}

/// The node-local flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLocalArgs {
    /// `-localip`: the addresses to hold and answer on (empty: not node-local).
    pub local_ips: Vec<IpAddr>,
    /// `-setupinterface` (default true).
    pub setup_interface: bool,
    /// `-interfacename` (default `nodelocaldns`).
    pub interface_name: String,
    /// `-setupiptables` (default true).
    pub setup_iptables: bool,
    /// `-syncinterval` (default 60s): how often the interface and the rules
    /// are checked and put back.
    pub sync_interval: Duration,
    /// `-skipteardown`: leave the rules and the interface at exit.
    pub skip_teardown: bool,
    /// `-upstreamsvc` (default `kube-dns`).
    pub upstream_svc: String,
    /// `-health-port` (default 8080): the port the health rules open.
    pub health_port: u16,
    /// `-basecorefile` (default `/etc/coredns/Corefile.base`).
    pub base_corefile: PathBuf,
    /// `-corefile` (default `/etc/Corefile`; `-conf` overrides it, as in
    /// node-cache): where the Corefile made from the base is written.
    pub corefile: PathBuf,
    /// `-kubednscm`: the kube-dns ConfigMap's directory (default: none, or
    /// `/etc/kube-dns` when that exists).
    pub kubednscm: Option<PathBuf>,
    /// `-metrics-listen-address` (default `0.0.0.0:9353`; empty: off):
    /// where `/metrics` is also served (node-cache's setup-error metrics).
    pub metrics_listen_address: String,
    /// `-reloadwithsignal`: accepted for node-cache's manifests; a changed
    /// Corefile is always applied by the agent itself.
    pub reload_with_signal: bool,
    /// `--packet-filter`.
    pub packet_filter: PacketFilter,
}

impl Default for NodeLocalArgs {
    fn default() -> Self {
        Self {
            local_ips: Vec::new(),
            setup_interface: true,
            interface_name: "nodelocaldns".into(),
            setup_iptables: true,
            sync_interval: Duration::from_secs(60),
            skip_teardown: false,
            upstream_svc: "kube-dns".into(),
            health_port: 8080,
            base_corefile: PathBuf::from("/etc/coredns/Corefile.base"),
            corefile: PathBuf::from("/etc/Corefile"),
            kubednscm: None,
            metrics_listen_address: "0.0.0.0:9353".into(),
            reload_with_signal: false,
            packet_filter: PacketFilter::Auto,
        }
    }
}

impl NodeLocalArgs {
    /// Whether node-local mode is on.
    pub fn enabled(&self) -> bool {
        !self.local_ips.is_empty()
    }

    /// Takes one flag if it is node-cache's: `Ok(false)` if `name` is not
    /// one. `value` fetches the flag's value; `boolean` reads a Go-style
    /// boolean from the `=value` part.
    pub fn flag(
        &mut self,
        name: &str,
        value: &mut dyn FnMut(&str) -> Result<String, String>,
        boolean: &dyn Fn() -> Result<bool, String>,
    ) -> Result<bool, String> {
        match name {
            "localip" => {
                self.local_ips = parse_ips(&value("a comma-separated list of addresses")?)?
            }
            "setupinterface" => self.setup_interface = boolean()?,
            "interfacename" => {
                let v = value("an interface name")?;
                if v.is_empty() || v.len() > 15 || v.contains(['/', ' ']) {
                    return Err(format!("flag -{name}: invalid interface name '{v}'"));
                }
                self.interface_name = v;
            }
            "setupiptables" => self.setup_iptables = boolean()?,
            "syncinterval" => self.sync_interval = sync_interval(&value("a duration")?)?,
            "skipteardown" => self.skip_teardown = boolean()?,
            "upstreamsvc" => {
                let v = value("a service name")?;
                if v.is_empty() {
                    return Err(format!("flag -{name}: empty service name"));
                }
                self.upstream_svc = v;
            }
            "health-port" => {
                let v = value("a port")?;
                self.health_port = v
                    .parse()
                    .map_err(|_| format!("invalid healthcheck port specified - \"{v}\""))?;
            }
            "basecorefile" => self.base_corefile = PathBuf::from(value("a file")?),
            "corefile" => self.corefile = PathBuf::from(value("a file")?),
            "kubednscm" => {
                let v = value("a directory")?;
                self.kubednscm = (!v.is_empty()).then(|| PathBuf::from(v));
            }
            "metrics-listen-address" => self.metrics_listen_address = value("an address")?,
            "reloadwithsignal" => self.reload_with_signal = boolean()?,
            "packet-filter" => {
                self.packet_filter = match value("auto, nftables or iptables")?.as_str() {
                    "auto" => PacketFilter::Auto,
                    "nftables" | "nft" => PacketFilter::Nftables,
                    "iptables" => PacketFilter::Iptables,
                    v => {
                        return Err(format!(
                            "flag --packet-filter: '{v}' is not auto, nftables or iptables"
                        ));
                    }
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `-localip`: a comma-separated list (spaces around commas allowed),
/// each a plain address, no duplicates, at most 16.
fn parse_ips(v: &str) -> Result<Vec<IpAddr>, String> {
    let mut out: Vec<IpAddr> = Vec::new();
    for part in v.split(',').map(str::trim) {
        let ip: IpAddr = part
            .parse()
            .map_err(|_| format!("invalid localip specified - \"{part}\""))?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(format!(
                "invalid localip specified - \"{part}\": not a unicast address"
            ));
        }
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    if out.len() > 16 {
        return Err("flag -localip: at most 16 addresses".into());
    }
    Ok(out)
}

/// `-syncinterval`: a Go duration, or a bare number of seconds; between
/// 1s and 1h.
fn sync_interval(v: &str) -> Result<Duration, String> {
    let d = match v.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => parse_duration(v)
            .ok_or_else(|| format!("flag -syncinterval: invalid duration '{v}'"))?,
    };
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
        return Err(format!("flag -syncinterval: {v} is outside 1s..1h"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(a: &mut NodeLocalArgs, name: &str, v: Option<&str>) -> Result<bool, String> {
        let inline = v.map(str::to_string);
        let mut value = |_: &str| inline.clone().ok_or_else(|| "needs a value".to_string());
        let b = v.map(str::to_string);
        let boolean = || match b.as_deref() {
            None | Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(x) => Err(format!("invalid boolean '{x}'")),
        };
        a.flag(name, &mut value, &boolean)
    }

    #[test]
    fn node_cache_flags() {
        let mut a = NodeLocalArgs::default();
        assert!(!a.enabled());
        assert!(set(&mut a, "localip", Some("169.254.20.10, 10.96.0.10,fd00::a")).unwrap());
        assert_eq!(a.local_ips.len(), 3);
        assert!(a.enabled());
        assert!(set(&mut a, "setupiptables", Some("false")).unwrap());
        assert!(!a.setup_iptables);
        assert!(set(&mut a, "syncinterval", Some("5")).unwrap());
        assert_eq!(a.sync_interval, Duration::from_secs(5));
        assert!(set(&mut a, "syncinterval", Some("1m30s")).unwrap());
        assert_eq!(a.sync_interval, Duration::from_secs(90));
        assert!(set(&mut a, "health-port", Some("9090")).unwrap());
        assert_eq!(a.health_port, 9090);
        assert!(set(&mut a, "packet-filter", Some("iptables")).unwrap());
        assert_eq!(a.packet_filter, PacketFilter::Iptables);
        assert!(!set(&mut a, "conf", Some("x")).unwrap());
    }

    #[test]
    fn refused() {
        let mut a = NodeLocalArgs::default();
        for (name, v, want) in [
            ("localip", "169.254.20.x", "invalid localip"),
            ("localip", "0.0.0.0", "not a unicast"),
            ("health-port", "http", "invalid healthcheck port"),
            ("syncinterval", "0", "outside"),
            ("syncinterval", "soon", "invalid duration"),
            (
                "interfacename",
                "a-very-long-interface-name",
                "invalid interface",
            ),
            ("packet-filter", "pf", "not auto"),
        ] {
            let e = set(&mut a, name, Some(v)).unwrap_err();
            assert!(e.contains(want), "{name} {v}: {e}");
        }
    }
}
