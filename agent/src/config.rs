//! From a Corefile to a runnable configuration: every server block's
//! chain built in plugin order, the blocks routed by zone behind each
//! listening address, and the services (health, ready, prometheus) plugins
//! asked for.
//!
//! Building starts nothing: no socket, no task. That is what lets
//! [`load_str`] validate a Corefile in-process (tests, dry runs).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Weak};

use nodedns_plugins::pkg::zones;
use nodedns_plugins::prometheus::Enabled;
use nodedns_plugins::setup::{BoundAddrs, Carry, Task};
use nodedns_plugins::{
    BlockInfo, BlockSetup, Controller, Dispenser, Plugin, ServerInfo, Services, SetupError, Token,
};

use crate::corefile::{self, DEFAULT_PORT, Scheme, ServerBlock, Source};
use crate::registry;

/// A server block's chain on one port.
pub struct Block {
    /// Facts plugins see.
    pub info: ServerInfo,
    /// The plugins, in order.
    pub chain: Box<[Box<dyn Plugin>]>,
    /// Where its listeners are bound (the server fills this in).
    pub bound: Arc<BoundAddrs>,
    /// Itself, so a plugin holding `&Block` can start a background re-run.
    pub(crate) me: Weak<Self>,
    /// The router of the server it is part of (the first, when `bind`
    /// puts it behind several addresses), for a query a plugin asks the
    /// whole server again (CoreDNS's `upstream.Lookup`). Set once the
    /// configuration's routers are built.
    pub(crate) server: std::sync::OnceLock<Weak<Router>>,
}

/// Routes a query to the block with the longest matching zone.
#[derive(Default)]
pub struct Router {
    zones: HashMap<Box<[u8]>, usize>,
    /// Which wire lengths (1 to 255) some zone has: a suffix of another
    /// length is not looked up, so most names cost no hash at all (with
    /// only the root zone, none).
    lengths: [u64; 4],
    blocks: Vec<Arc<Block>>,
    /// A block runs a plugin that serves classes other than IN.
    any_class: bool,
    /// For an encrypted transport: the TLS of its first block with a
    /// `tls` directive, offering the transport's ALPN. `None` on `dns://`,
    /// and where no block has `tls` (CoreDNS then serves `tls://`,
    /// `https://` and `grpc://` unencrypted).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Plugins whose presence in any block opens an address to queries in
/// classes other than IN: CoreDNS's `dnsserver.EnableChaos` (its `proxy`
/// is not a nodedns plugin).
const OPEN_CLASSES: &[&str] = &["chaos", "forward"];

/// Record type DS.
const TYPE_DS: u16 = 43;

fn opens_classes(chain: &[Box<dyn Plugin>]) -> bool {
    chain.iter().any(|p| OPEN_CLASSES.contains(&p.name()))
}

impl Router {
    /// A router with one block for the root zone (tests build chains by hand).
    #[cfg(test)]
    pub(crate) fn single(chain: Vec<Box<dyn Plugin>>) -> Self {
        let block = Arc::new_cyclic(|me| Block {
            info: ServerInfo {
                name: Arc::from("dns://:53"),
                zones: vec![".".into()],
                port: 53,
            },
            chain: chain.into_boxed_slice(),
            bound: Arc::default(),
            me: me.clone(),
            server: std::sync::OnceLock::new(),
        });
        let mut router = Self {
            zones: HashMap::new(),
            lengths: [0; 4],
            any_class: opens_classes(&block.chain),
            blocks: vec![block],
            tls: None,
        };
        router.add_zone(Box::from(&[0u8][..]), 0);
        router
    }

    /// Routes `zone` (lower-case wire form) to block `block`.
    fn add_zone(&mut self, zone: Box<[u8]>, block: usize) {
        let n = zone.len();
        self.lengths[n / 64 % 4] |= 1 << (n % 64);
        self.zones.insert(zone, block);
    }

    /// Whether some zone is `n` bytes long in wire form.
    #[inline]
    fn has_length(&self, n: usize) -> bool {
        n < 256 && self.lengths[n / 64] & (1 << (n % 64)) != 0
    }

    /// Every block this router serves.
    pub fn blocks(&self) -> &[Arc<Block>] {
        &self.blocks
    }

    /// Whether queries in classes other than IN may reach the blocks:
    /// CoreDNS refuses them (REFUSED, before any block) unless a block on
    /// the address runs `chaos` or `forward`.
    pub fn any_class(&self) -> bool {
        self.any_class
    }

    /// The block for a lower-cased wire-form name and a query type, and the
    /// zone that matched: the longest zone the name is in, the root zone
    /// last. A DS query goes to the shortest zone instead (the root only
    /// when nothing else matches), as CoreDNS's server routes it: the DS
    /// record of a zone lives in its parent's.
    pub fn route<'a>(&'a self, name: &'a [u8], qtype: u16) -> Option<(&'a Arc<Block>, &'a [u8])> {
        let ds = qtype == TYPE_DS;
        let mut best = None;
        let mut pos = 0usize;
        while let Some(suffix) = name.get(pos..) {
            let Some(&len) = suffix.first() else { break };
            if let Some(&i) = self
                .has_length(suffix.len())
                .then(|| self.zones.get(suffix))
                .flatten()
            {
                if len == 0 && best.is_some() {
                    break;
                }
                best = Some((&self.blocks[i], suffix));
                if !ds {
                    break;
                }
            }
            if len == 0 {
                break;
            }
            pos += 1 + usize::from(len);
        }
        best
    }
}

/// Where to listen: a transport, an address (`None`: every address) and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenKey {
    /// The transport (`dns` is UDP and TCP).
    pub scheme: Scheme,
    /// The address; `None` is the wildcard.
    pub addr: Option<IpAddr>,
    /// The port.
    pub port: u16,
}

impl std::fmt::Display for ListenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.scheme != Scheme::Dns {
            write!(f, "{}://", self.scheme)?;
        }
        match self.addr {
            None => write!(f, ":{}", self.port),
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
            Some(IpAddr::V4(a)) => write!(f, "{a}:{}", self.port),
        }
    }
}

/// A built configuration.
pub struct Config {
    /// The Corefile text it was built from.
    pub corefile: String,
    /// Its server blocks, imports expanded: what a reload compares.
    pub blocks: Vec<ServerBlock>,
    /// One router per listening address.
    pub listeners: BTreeMap<ListenKey, Arc<Router>>,
    /// Health and ready endpoints, readiness reporters.
    pub services: Services,
    /// Background tasks to run while this config serves.
    pub tasks: Vec<Task>,
    /// What the next configuration may carry over (cache stores,
    /// forward's upstream pools).
    pub carry: Carry,
    /// Each block's plugins, for `coredns_plugin_enabled`.
    pub enabled: Vec<Enabled>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listeners", &self.listeners.keys().collect::<Vec<_>>())
            .field("services", &self.services)
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// Builds a configuration from Corefile text (named `Corefile`, imports
/// relative to the current directory, default port 53).
pub fn load_str(text: &str) -> Result<Config, SetupError> {
    load(
        &Source {
            name: "Corefile",
            text,
            dir: Path::new("."),
        },
        DEFAULT_PORT,
    )
}

/// Builds a configuration from a Corefile source.
pub fn load(src: &Source<'_>, default_port: u16) -> Result<Config, SetupError> {
    load_with(src, default_port, Carry::default())
}

/// Builds a configuration that takes over what `carry` holds from the
/// running one where settings did not change (a reload).
pub fn load_with(src: &Source<'_>, default_port: u16, carry: Carry) -> Result<Config, SetupError> {
    let blocks = corefile::parse(src, default_port)?;
    build(src.text, &blocks, carry)
}

/// Where a zone was defined, for the duplicate error.
struct Owner {
    block: usize,
    file: Arc<str>,
    line: u32,
}

/// Which block defined each zone of a listener.
type Owners = HashMap<Box<[u8]>, Owner>;

fn build(text: &str, blocks: &[ServerBlock], carry: Carry) -> Result<Config, SetupError> {
    let mut services = Services {
        carry_in: carry,
        ..Services::default()
    };
    let mut tasks = Vec::new();
    let mut enabled = Vec::new();
    let mut routers: BTreeMap<ListenKey, (Router, Owners)> = BTreeMap::new();
    for (bi, sb) in blocks.iter().enumerate() {
        check_directives(sb)?;
        check_schemes(sb)?;
        // One chain per transport and port the block's keys name.
        let mut ports: Vec<(Scheme, u16)> = sb.keys.iter().map(|k| (k.scheme, k.port)).collect();
        ports.sort_unstable();
        ports.dedup();
        for (scheme, port) in ports {
            let zones_here: Vec<String> = sb
                .keys
                .iter()
                .filter(|k| k.scheme == scheme && k.port == port)
                .map(|k| k.zone.clone())
                .collect();
            let server_name: Arc<str> = Arc::from(format!("{scheme}://:{port}"));
            let bound = Arc::new(BoundAddrs::default());
            let info = BlockInfo {
                zones: zones_here.clone(),
                port,
                server_name: Arc::clone(&server_name),
                bound: Arc::clone(&bound),
            };
            let mut out = BlockSetup::default();
            run_setups(sb, &info, &mut out, &mut services)?;
            enabled.extend(enabled_plugins(sb, &server_name, &zones_here));
            let BlockSetup {
                plugins,
                bind,
                tasks: block_tasks,
                tls,
            } = out;
            let tls =
                match (alpn(scheme), tls) {
                    (Some(alpn), Some(t)) => Some(t.server_config(alpn).map_err(|e| {
                        SetupError::new(&sb.file, sb.line, format_args!("tls: {e}"))
                    })?),
                    (_, None) if matches!(scheme, Scheme::Quic | Scheme::Https3) => {
                        return Err(SetupError::new(
                            &sb.file,
                            sb.line,
                            format_args!("{scheme}:// needs TLS: add a tls directive to the block"),
                        ));
                    }
                    _ => None,
                };
            tasks.extend(block_tasks);
            let addrs: Vec<Option<IpAddr>> = match bind {
                None => vec![None],
                // `bind` already resolved interfaces and applied `except`.
                Some(mut list) => {
                    list.sort();
                    list.dedup();
                    list.into_iter().map(Some).collect()
                }
            };
            let chain = plugins.into_boxed_slice();
            let block = Arc::new_cyclic(|me| Block {
                info: ServerInfo {
                    name: server_name,
                    zones: zones_here.clone(),
                    port,
                },
                chain,
                bound,
                me: me.clone(),
                server: std::sync::OnceLock::new(),
            });
            for addr in addrs {
                let key = ListenKey { scheme, addr, port };
                let (router, owners) = routers.entry(key).or_default();
                let idx = router.blocks.len();
                router.any_class |= opens_classes(&block.chain);
                if router.tls.is_none() {
                    router.tls.clone_from(&tls);
                }
                router.blocks.push(Arc::clone(&block));
                for z in &zones_here {
                    let wire = zones::to_wire(z)
                        .ok_or_else(|| {
                            SetupError::new(&sb.file, sb.line, format_args!("invalid zone '{z}'"))
                        })?
                        .into_boxed_slice();
                    if let Some(prev) = owners.get(&wire) {
                        if prev.block == bi {
                            continue;
                        }
                        return Err(SetupError::new(
                            &sb.file,
                            sb.line,
                            format_args!(
                                "cannot serve {scheme}://{z}:{port} on {key}: it is already defined at {}:{}",
                                prev.file, prev.line
                            ),
                        ));
                    }
                    owners.insert(
                        wire.clone(),
                        Owner {
                            block: bi,
                            file: Arc::clone(&sb.file),
                            line: sb.line,
                        },
                    );
                    router.add_zone(wire, idx);
                }
            }
        }
    }
    let carry = std::mem::take(&mut services.carry_out);
    services.carry_in = Carry::default();
    Ok(Config {
        carry,
        corefile: text.to_string(),
        blocks: blocks.to_vec(),
        listeners: routers
            .into_iter()
            .map(|(k, (r, _))| {
                let r = Arc::new(r);
                for b in r.blocks() {
                    let _ = b.server.set(Arc::downgrade(&r));
                }
                (k, r)
            })
            .collect(),
        services,
        tasks,
        enabled,
    })
}

/// The block's plugins, in plugin order, once per zone: what
/// `coredns_plugin_enabled` reports (with the server and zone labels).
fn enabled_plugins(sb: &ServerBlock, server: &str, zones: &[String]) -> Vec<Enabled> {
    let mut out = Vec::new();
    for zone in zones {
        for (name, _) in registry::ORDER {
            if sb.directives.iter().any(|d| d.name == *name) {
                out.push(Enabled {
                    server: server.to_string(),
                    zone: zone.clone(),
                    name: (*name).to_string(),
                });
            }
        }
    }
    out
}

/// The ALPN protocols a transport offers; `None` for plain DNS.
fn alpn(scheme: Scheme) -> Option<&'static [&'static [u8]]> {
    use nodedns_plugins::tls;
    match scheme {
        Scheme::Dns => None,
        Scheme::Tls => Some(tls::ALPN_DOT),
        Scheme::Https => Some(tls::ALPN_DOH),
        Scheme::Grpc => Some(tls::ALPN_GRPC),
        Scheme::Quic => Some(tls::ALPN_DOQ),
        Scheme::Https3 => Some(tls::ALPN_H3),
    }
}

/// Transports nodedns serves.
pub const SERVED_SCHEMES: &[Scheme] = &[
    Scheme::Dns,
    Scheme::Tls,
    Scheme::Https,
    Scheme::Grpc,
    Scheme::Quic,
    Scheme::Https3,
];

/// Refuses a key whose transport nodedns does not serve yet.
fn check_schemes(sb: &ServerBlock) -> Result<(), SetupError> {
    match sb.keys.iter().find(|k| !SERVED_SCHEMES.contains(&k.scheme)) {
        None => Ok(()),
        Some(k) => Err(SetupError::new(
            &sb.file,
            sb.line,
            format_args!(
                "transport '{}://' in '{k}' not supported yet by nodedns",
                k.scheme
            ),
        )),
    }
}

/// Refuses unknown directives and CoreDNS plugins nodedns lacks, naming the line.
fn check_directives(sb: &ServerBlock) -> Result<(), SetupError> {
    for d in &sb.directives {
        let Some(first) = d.tokens.first() else {
            continue;
        };
        match registry::lookup(&d.name) {
            Some(Some(_)) => {}
            Some(None) => {
                return Err(SetupError::new(
                    &first.file,
                    first.line,
                    format_args!("{}: plugin not supported yet by nodedns", d.name),
                ));
            }
            None => {
                return Err(SetupError::new(
                    &first.file,
                    first.line,
                    format_args!("unknown directive '{}'", d.name),
                ));
            }
        }
    }
    Ok(())
}

/// Runs the block's directives' setups in plugin order.
fn run_setups(
    sb: &ServerBlock,
    info: &BlockInfo,
    out: &mut BlockSetup,
    services: &mut Services,
) -> Result<(), SetupError> {
    for (name, setup) in registry::ORDER {
        let Some(setup) = setup else { continue };
        let tokens: Vec<Token> = sb
            .directives
            .iter()
            .filter(|d| d.name == *name)
            .flat_map(|d| d.tokens.iter().cloned())
            .collect();
        if tokens.is_empty() {
            continue;
        }
        let mut c = Controller {
            d: Dispenser::new(name, &tokens),
            block: info,
            out,
            services,
        };
        setup(&mut c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodedns_plugins::pkg::zones::to_wire;

    #[test]
    fn routes_longest_zone() {
        let c = load_str(".:1053 {\n whoami\n}\nexample.org:1053 {\n whoami\n}\n").unwrap();
        assert_eq!(c.listeners.len(), 1);
        let r = c.listeners.values().next().unwrap();
        let name = to_wire("www.Example.org.").unwrap();
        let (b, zone) = r.route(&name, 1).unwrap();
        assert_eq!(b.info.zones, vec!["example.org."]);
        assert_eq!(zone, &to_wire("example.org.").unwrap()[..]);
        let net = to_wire("example.net.").unwrap();
        let (b, _) = r.route(&net, 1).unwrap();
        assert_eq!(b.info.zones, vec!["."]);
    }

    #[test]
    fn ds_goes_to_the_shortest_zone_but_the_root() {
        const DS: u16 = 43;
        let c = load_str(
            ".:1053 {\n whoami\n}\norg:1053 {\n whoami\n}\nexample.org:1053 {\n whoami\n}\n",
        )
        .unwrap();
        let r = c.listeners.values().next().unwrap();
        let zone_of = |name: &str, qtype: u16| {
            let wire = to_wire(name).unwrap();
            let (b, _) = r.route(&wire, qtype).unwrap();
            b.info.zones[0].clone()
        };
        assert_eq!(zone_of("example.org.", 1), "example.org.");
        assert_eq!(zone_of("example.org.", DS), "org.");
        // As CoreDNS: the grandparent when it is served, never the root
        // when another zone matches.
        assert_eq!(zone_of("a.b.example.org.", DS), "org.");
        assert_eq!(zone_of("org.", DS), "org.");
        assert_eq!(zone_of("example.net.", DS), ".");
        assert_eq!(zone_of(".", DS), ".");
        let c = load_str(".:1053 {\n whoami\n}\nexample.org:1053 {\n whoami\n}\n").unwrap();
        let r = c.listeners.values().next().unwrap();
        let wire = to_wire("example.org.").unwrap();
        let (b, _) = r.route(&wire, DS).unwrap();
        assert_eq!(
            b.info.zones,
            vec!["example.org."],
            "the root is the last resort"
        );
    }

    #[test]
    fn chaos_or_forward_in_any_block_opens_other_classes() {
        for (corefile, open) in [
            (".:1053 {\n whoami\n}\n", false),
            (
                ".:1053 {\n whoami\n}\nversion.bind:1053 {\n chaos\n}\n",
                true,
            ),
            (".:1053 {\n forward . 127.0.0.1:9\n}\n", true),
            (
                ".:1053 {\n whoami\n}\nversion.bind:1054 {\n chaos\n}\n",
                false,
            ),
        ] {
            let c = load_str(corefile).unwrap();
            let port_1053 = c.listeners.iter().find(|(k, _)| k.port == 1053).unwrap().1;
            assert_eq!(port_1053.any_class(), open, "{corefile}");
        }
    }

    #[test]
    fn no_root_means_unrouted() {
        let c = load_str("example.org:1053 {\n whoami\n}\n").unwrap();
        let r = c.listeners.values().next().unwrap();
        assert!(r.route(&to_wire("example.net.").unwrap(), 1).is_none());
    }

    #[test]
    fn same_zone_on_two_ports_and_two_zones_on_one_port() {
        let c =
            load_str("example.org:1053 example.org:1054 example.net:1053 {\n whoami\n}\n").unwrap();
        let ports: Vec<u16> = c.listeners.keys().map(|k| k.port).collect();
        assert_eq!(ports, vec![1053, 1054]);
    }

    #[test]
    fn duplicate_zone_is_an_error() {
        let err = load_str(".:1053 {\n whoami\n}\n.:1053 {\n whoami\n}\n").unwrap_err();
        assert_eq!(err.line, 4);
        assert!(
            err.to_string().contains("already defined at Corefile:1"),
            "{err}"
        );
    }

    #[test]
    fn transports_are_listeners_of_their_own() {
        // The same port on two transports is two listeners (CoreDNS groups
        // servers by transport://address).
        let c = load_str("tls://.:1053 {\n whoami\n}\nhttps://.:1053 {\n whoami\n}\n").unwrap();
        let keys: Vec<_> = c.listeners.keys().map(ToString::to_string).collect();
        assert_eq!(keys, vec!["tls://:1053", "https://:1053"]);
        // Without a tls directive there is no TLS (CoreDNS serves plain).
        assert!(c.listeners.values().all(|r| r.tls.is_none()));
        // The QUIC transports need TLS (CoreDNS refuses them without).
        for (text, want) in [
            (
                "quic://. {\n whoami\n}\n",
                "Corefile:1: quic:// needs TLS: add a tls directive to the block",
            ),
            (
                "https3://. {\n whoami\n}\n",
                "Corefile:1: https3:// needs TLS: add a tls directive to the block",
            ),
        ] {
            assert_eq!(load_str(text).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn unknown_and_missing_directives() {
        let err = load_str(".:1053 {\n whoami\n nonesuch\n}\n").unwrap_err();
        assert_eq!(err.to_string(), "Corefile:3: unknown directive 'nonesuch'");
        let err = load_str(". {\n    rewrite name a b\n}\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Corefile:2: rewrite: plugin not supported yet by nodedns"
        );
    }

    /// NodeLocal DNSCache's Corefile needed only `prometheus` to load: its
    /// four blocks name one address, which is one endpoint; every block's
    /// plugins are listed for `coredns_plugin_enabled`.
    #[test]
    fn nodelocaldns_golden_loads_with_one_metrics_endpoint() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corefiles/nodelocaldns.Corefile");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("__PILLAR__CLUSTER__DNS__", "192.0.2.53")
            .replace("__PILLAR__UPSTREAM__SERVERS__", "/etc/resolv.conf");
        let c = load_str(&text).unwrap();
        let addrs: Vec<&str> = c
            .services
            .prometheus
            .iter()
            .map(|p| p.addr.as_str())
            .collect();
        assert_eq!(addrs, vec![":9253"]);
        let zones: Vec<&str> = c
            .enabled
            .iter()
            .filter(|e| e.name == "prometheus")
            .map(|e| e.zone.as_str())
            .collect();
        assert_eq!(
            zones,
            vec!["cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."]
        );
        let first: Vec<&str> = c
            .enabled
            .iter()
            .filter(|e| e.zone == "cluster.local.")
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(
            first,
            vec![
                "reload",
                "bind",
                "health",
                "prometheus",
                "errors",
                "cache",
                "loop",
                "forward"
            ]
        );
        assert!(c.enabled.iter().all(|e| &*e.server == "dns://:53"));
    }

    /// Forward upstreams are kept once per upstream (two blocks forwarding
    /// to one upstream share it), and found again by the next config.
    #[test]
    fn forward_upstreams_are_kept_once_each_for_the_next_config() {
        let text = ".:1053 {\n forward . 192.0.2.1\n}\n\
                    example.org:1054 {\n forward . 192.0.2.1 192.0.2.2\n}\n";
        let c = load_str(text).unwrap();
        assert_eq!(c.carry.len(), 2, "{:?}", c.carry);
        assert_eq!(c.services.upstreams.len(), 2, "one view per forward");
        let again = load_with(
            &Source {
                name: "Corefile",
                text,
                dir: Path::new("."),
            },
            DEFAULT_PORT,
            c.carry.clone(),
        )
        .unwrap();
        assert_eq!(again.carry.len(), 2, "{:?}", again.carry);
        // The copy taken from is spent; the running config's is not.
        assert_eq!(c.carry.len(), 2);
    }

    /// Two blocks on one port split by `bind`, same zones and same `cache`
    /// line: each cache is carried under a key of its own, so a reload
    /// cannot hand one block the other's entries.
    #[test]
    fn caches_of_blocks_split_by_bind_are_carried_apart() {
        let text = ".:1053 {\n bind 127.0.0.1\n cache 30\n whoami\n}\n\
                    .:1053 {\n bind 127.0.0.2\n cache 30\n whoami\n}\n";
        let c = load_str(text).unwrap();
        assert_eq!(c.carry.len(), 2, "{:?}", c.carry);
        let again = load_with(
            &Source {
                name: "Corefile",
                text,
                dir: Path::new("."),
            },
            DEFAULT_PORT,
            c.carry,
        )
        .unwrap();
        assert_eq!(again.carry.len(), 2, "{:?}", again.carry);
    }
}
