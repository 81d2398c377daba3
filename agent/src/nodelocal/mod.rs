//! Node-local mode: node-cache's flags ([`flags`]) and Corefile template
//! ([`template`]), the handover between an old and a new agent
//! ([`handover`]), how the agent runs it all ([`run`]), and the network
//! setup: what Kubernetes' NodeLocal DNSCache image (`node-cache`) does
//! around CoreDNS, as a library the agent drives.
//!
//! Two parts, each idempotent and safe to run again at every sync:
//!
//! - **Interface** ([`NodeLocalNet::ensure_interface`]): every local IP
//!   (`-localip`, a comma list that may mix IPv4 and IPv6) is put as a /32
//!   or /128 on a dummy link named `-interfacename` (default
//!   `nodelocaldns`), created over rtnetlink and brought up. Where the
//!   kernel has no dummy driver, or a link of that name exists and is not a
//!   dummy, the addresses go on that existing link (and on `lo` when the
//!   dummy driver is missing and no link of that name exists). A dummy
//!   already there under our name is adopted, as node-cache does.
//! - **Packet filter** ([`NodeLocalNet::ensure_rules`]): conntrack is
//!   skipped (`notrack`) for DNS to and from each local IP and the traffic
//!   is accepted, as node-cache's twelve iptables rules per IP do. The
//!   rules go through nf_tables over netlink ([`nft`]: table
//!   `inet nodedns`, one atomic transaction that always leaves exactly the
//!   desired set), or through the `iptables`/`ip6tables` binaries with
//!   node-cache's exact rules ([`iptables`]). [`FilterMode::Auto`] uses
//!   nf_tables and falls back to iptables when the kernel refuses it.
//!
//! [`NodeLocalNet::teardown`] removes the rules and the dummy link (or only
//! the addresses added to a link that was there before). Nothing here
//! panics: every error is logged with `tracing` and counted in
//! `coredns_nodecache_setup_errors_total{errortype}` ([`count_error`]).
//!
//! Every netlink socket and child process is opened on the calling thread,
//! so they act in that thread's network namespace (which the tests use).
//!
//! # Use from the agent
//!
//! ```text
//! let net = NodeLocalNet::new(config);   // metric registered, all labels at 0
//! net.ensure_interface().await;          // at start, before binding 169.254.20.10:53
//! /* bind the listeners */
//! net.ensure_rules().await;              // once the listeners are up
//! every -syncinterval:
//!     net.ensure_interface().await; net.ensure_rules().await;
//! at exit, unless -skipteardown:
//!     net.teardown().await;
//! ```
//!
//! The methods return the first error for the caller's information only:
//! it has already been logged and counted, and setup goes on (node-cache
//! keeps serving when a setup step fails and tries again at the next
//! sync).

pub mod flags;
pub mod handover;
pub mod iptables;
pub mod link;
pub mod nft;
pub mod run;
pub mod template;

use std::fmt;
use std::net::IpAddr;
use std::sync::LazyLock;
use std::time::Duration;

use tokio::sync::Mutex;

pub use link::LinkUse;

/// Comment on the rules that skip conntrack (node-cache's).
pub const COMMENT_SKIP_CONNTRACK: &str = "NodeLocal DNS Cache: skip conntrack";
/// Comment on the rules that accept the traffic (node-cache's).
pub const COMMENT_ALLOW_TRAFFIC: &str = "NodeLocal DNS Cache: allow DNS traffic";
/// The interface name node-cache uses by default.
pub const DEFAULT_INTERFACE: &str = "nodelocaldns";

/// Most time one netlink transaction or one iptables command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The `errortype` labels of `coredns_nodecache_setup_errors_total`:
/// node-cache's five, and `nftables` for the nf_tables path.
pub const ERROR_TYPES: [&str; 6] = [
    "iptables",
    "iptables_lock",
    "interface_add",
    "interface_check",
    "configmap",
    "nftables",
];

/// Which kind of setup error happened (the metric's `errortype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// An iptables command failed.
    Iptables,
    /// An iptables command failed because another process held the
    /// xtables lock.
    IptablesLock,
    /// Creating the link or adding an address failed.
    InterfaceAdd,
    /// Looking the link up failed.
    InterfaceCheck,
    /// Reading the kube-dns ConfigMap failed (counted by the agent).
    Configmap,
    /// An nf_tables transaction failed.
    Nftables,
}

impl ErrorType {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::IptablesLock => "iptables_lock",
            Self::InterfaceAdd => "interface_add",
            Self::InterfaceCheck => "interface_check",
            Self::Configmap => "configmap",
            Self::Nftables => "nftables",
        }
    }
}

static SETUP_ERRORS: LazyLock<prometheus::IntCounterVec> = LazyLock::new(|| {
    let vec = nodedns_plugins::pkg::metrics::counter_vec(
        "coredns_nodecache_setup_errors_total",
        "The number of errors during periodic network setup for node-cache",
        &["errortype"],
    );
    for label in ERROR_TYPES {
        vec.with_label_values(&[label]).inc_by(0);
    }
    vec
});

/// Registers `coredns_nodecache_setup_errors_total` with every label at 0
/// (done by [`NodeLocalNet::new`]; calling it again changes nothing).
pub fn register_metrics() {
    LazyLock::force(&SETUP_ERRORS);
}

/// Counts one setup error of this type.
pub fn count_error(kind: ErrorType) {
    SETUP_ERRORS.with_label_values(&[kind.label()]).inc();
}

/// The count of setup errors of this type so far (tests, stats).
pub fn error_count(kind: ErrorType) -> u64 {
    SETUP_ERRORS.with_label_values(&[kind.label()]).get()
}

/// How the packet-filter rules are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterMode {
    /// No rules (`-setupiptables=false`).
    Off,
    /// nf_tables over netlink; iptables when the kernel refuses nf_tables.
    Auto,
    /// nf_tables over netlink only.
    Nftables,
    /// The `iptables`/`ip6tables` binaries only (node-cache's way).
    Iptables,
}

/// The backend the rules went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterBackend {
    /// nf_tables over netlink, table `inet nodedns`.
    Nftables,
    /// The `iptables`/`ip6tables` binaries.
    Iptables,
}

impl fmt::Display for FilterBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Nftables => "nftables",
            Self::Iptables => "iptables",
        })
    }
}

/// What node-local setup is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLocalConfig {
    /// The local IPs (`-localip`); both families may be mixed.
    pub ips: Vec<IpAddr>,
    /// The DNS port the rules match (node-cache's `LocalPort`, 53).
    pub port: u16,
    /// The health port (`-health-port`, 8080) whose probe traffic skips
    /// conntrack.
    pub health_port: u16,
    /// The link to hold the IPs (`-interfacename`); `None` when
    /// `-setupinterface=false`.
    pub interface: Option<String>,
    /// How the rules are installed (`Off` for `-setupiptables=false`).
    pub filter: FilterMode,
}

/// An error from one setup step (already logged and counted when a
/// [`NodeLocalNet`] method returns it).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A netlink request failed.
    #[error("{what}: {detail}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's or the library's answer.
        detail: String,
    },
    /// An iptables command failed.
    #[error("{command}: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and standard error, or why it did not run.
        detail: String,
        /// Whether it failed because the xtables lock was held.
        locked: bool,
    },
    /// A step took longer than [`COMMAND_TIMEOUT`].
    #[error("{0}: timed out")]
    Timeout(String),
}

/// One packet-filter rule, as node-cache writes it: in `table`/`chain`,
/// match `proto` and the local IP as destination (`dst`) or source, with
/// `port` as destination or source port; then `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `raw` or `filter`.
    pub table: Table,
    /// The built-in chain.
    pub chain: Chain,
    /// TCP or UDP.
    pub proto: Proto,
    /// The local IP.
    pub ip: IpAddr,
    /// Whether the IP and port are matched as destination (else source).
    pub dst: bool,
    /// The port.
    pub port: u16,
}

impl Rule {
    /// NOTRACK in `raw`, ACCEPT in `filter`.
    pub fn action(&self) -> Action {
        match self.table {
            Table::Raw => Action::Notrack,
            Table::Filter => Action::Accept,
        }
    }

    /// The rule's comment (node-cache's).
    pub fn comment(&self) -> &'static str {
        match self.action() {
            Action::Notrack => COMMENT_SKIP_CONNTRACK,
            Action::Accept => COMMENT_ALLOW_TRAFFIC,
        }
    }
}

/// An iptables table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `raw` (before conntrack).
    Raw,
    /// `filter`.
    Filter,
}

/// A built-in chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// `PREROUTING`.
    Prerouting,
    /// `INPUT`.
    Input,
    /// `OUTPUT`.
    Output,
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
        }
    }

    /// The name iptables takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// What a rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Skip connection tracking.
    Notrack,
    /// Accept.
    Accept,
}

/// node-cache's twelve rules per local IP, in its order.
pub fn rules(ips: &[IpAddr], port: u16, health_port: u16) -> Vec<Rule> {
    use Chain::{Input, Output, Prerouting};
    use Proto::{Tcp, Udp};
    use Table::{Filter, Raw};
    let mut out = Vec::with_capacity(ips.len() * 12);
    for &ip in ips {
        let r = |table, chain, proto, dst, port| Rule {
            table,
            chain,
            proto,
            ip,
            dst,
            port,
        };
        out.extend([
            r(Raw, Prerouting, Tcp, true, port),
            r(Raw, Prerouting, Udp, true, port),
            r(Filter, Input, Tcp, true, port),
            r(Filter, Input, Udp, true, port),
            r(Raw, Output, Tcp, false, port),
            r(Raw, Output, Udp, false, port),
            r(Filter, Output, Tcp, false, port),
            r(Filter, Output, Udp, false, port),
            r(Raw, Output, Tcp, true, port),
            r(Raw, Output, Udp, true, port),
            r(Raw, Output, Tcp, true, health_port),
            r(Raw, Output, Tcp, false, health_port),
        ]);
    }
    out
}

/// Node-local network setup: the interface and the packet-filter rules.
/// Every method may be called from any task; calls are serialized.
#[derive(Debug)]
pub struct NodeLocalNet {
    config: NodeLocalConfig,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    link: Option<link::LinkState>,
    /// The backend that worked (kept once chosen), or `None` before the
    /// first success.
    backend: Option<FilterBackend>,
    /// Whether rules may be in place (ensure_rules ran), so teardown
    /// removes them.
    rules_installed: bool,
}

impl NodeLocalNet {
    /// Node-local setup for this configuration. Registers the setup-error
    /// metric (every label at 0); changes nothing on the system yet.
    pub fn new(config: NodeLocalConfig) -> Self {
        register_metrics();
        let mut config = config;
        // One rule set per IP, however often it was given.
        let mut seen = Vec::with_capacity(config.ips.len());
        config.ips.retain(|ip| {
            let new = !seen.contains(ip);
            seen.push(*ip);
            new
        });
        Self {
            config,
            state: Mutex::new(State::default()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NodeLocalConfig {
        &self.config
    }

    /// Puts every local IP on the link (creating the dummy when needed)
    /// and brings a created dummy up. A no-op when the interface is not
    /// managed. Errors are logged and counted (`interface_add`,
    /// `interface_check`); the first is returned.
    pub async fn ensure_interface(&self) -> Result<(), SetupError> {
        let Some(name) = self.config.interface.as_deref() else {
            return Ok(());
        };
        let mut state = self.state.lock().await;
        let link = state
            .link
            .get_or_insert_with(|| link::LinkState::new(name, &self.config.ips));
        link.ensure().await
    }

    /// Which link holds the IPs: the dummy we created, a dummy of that name
    /// that was there (adopted), or an existing link. `None` before the
    /// first successful [`Self::ensure_interface`] or when the interface is
    /// not managed.
    pub async fn link_use(&self) -> Option<LinkUse> {
        self.state
            .lock()
            .await
            .link
            .as_ref()
            .and_then(|l| l.link_use())
    }

    /// Installs the packet-filter rules, or puts back what is missing;
    /// never duplicates them. Call once the listeners are bound, then at
    /// every sync. A no-op with [`FilterMode::Off`] or no IPs. Errors are
    /// logged and counted (`nftables`, `iptables`, `iptables_lock`).
    pub async fn ensure_rules(&self) -> Result<(), SetupError> {
        if self.config.filter == FilterMode::Off || self.config.ips.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        state.rules_installed = true;
        let backend = match (self.config.filter, state.backend) {
            (_, Some(b)) => b,
            (FilterMode::Iptables, None) => FilterBackend::Iptables,
            _ => FilterBackend::Nftables,
        };
        let result = self.apply(backend).await;
        match (&result, self.config.filter, state.backend) {
            (Ok(()), _, None) => {
                tracing::info!(backend = %backend, "node-local packet-filter rules installed");
                state.backend = Some(backend);
                result
            }
            // nf_tables refused at the first try: iptables, from now on.
            (Err(e), FilterMode::Auto, None) => {
                tracing::warn!(error = %e, "nf_tables unavailable, falling back to iptables");
                let result = self.apply(FilterBackend::Iptables).await;
                if result.is_ok() {
                    tracing::info!(
                        backend = "iptables",
                        "node-local packet-filter rules installed"
                    );
                    state.backend = Some(FilterBackend::Iptables);
                }
                result
            }
            _ => result,
        }
    }

    async fn apply(&self, backend: FilterBackend) -> Result<(), SetupError> {
        match backend {
            FilterBackend::Nftables => {
                let rules = rules(&self.config.ips, self.config.port, self.config.health_port);
                nft::ensure(&rules).await.inspect_err(|e| {
                    tracing::error!(error = %e, "nf_tables: installing the rules failed");
                    count_error(ErrorType::Nftables);
                })
            }
            FilterBackend::Iptables => {
                let rules = rules(&self.config.ips, self.config.port, self.config.health_port);
                iptables::ensure(&rules).await
            }
        }
    }

    /// The backend the rules went through, once one worked.
    pub async fn filter_backend(&self) -> Option<FilterBackend> {
        self.state.lock().await.backend
    }

    /// Removes the rules and the dummy link we created (or the addresses
    /// we added to an existing link). Safe after a partial setup and after
    /// someone removed some of it; errors are logged and counted, and the
    /// first is returned once everything was tried. Skip it for
    /// `-skipteardown`.
    pub async fn teardown(&self) -> Result<(), SetupError> {
        let mut state = self.state.lock().await;
        let mut first = None;
        if state.rules_installed && self.config.filter != FilterMode::Off {
            let rules = rules(&self.config.ips, self.config.port, self.config.health_port);
            // Both backends when none was chosen yet (a failed first try
            // may have left part of either).
            let backends: &[FilterBackend] = match (state.backend, self.config.filter) {
                (Some(FilterBackend::Nftables), _) | (None, FilterMode::Nftables) => {
                    &[FilterBackend::Nftables]
                }
                (Some(FilterBackend::Iptables), _) | (None, FilterMode::Iptables) => {
                    &[FilterBackend::Iptables]
                }
                _ => &[FilterBackend::Nftables, FilterBackend::Iptables],
            };
            for backend in backends {
                let r = match backend {
                    FilterBackend::Nftables => nft::teardown().await.inspect_err(|e| {
                        tracing::error!(error = %e, "nf_tables: removing the rules failed");
                        count_error(ErrorType::Nftables);
                    }),
                    FilterBackend::Iptables => iptables::teardown(&rules).await,
                };
                if let Err(e) = r {
                    first.get_or_insert(e);
                }
            }
            state.rules_installed = false;
        }
        if let Some(link) = state.link.as_mut()
            && let Err(e) = link.teardown().await
        {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twelve_rules_per_ip_in_node_cache_order() {
        let ips: Vec<IpAddr> = vec!["169.254.20.10".parse().unwrap(), "fd00::a".parse().unwrap()];
        let r = rules(&ips, 53, 8080);
        assert_eq!(r.len(), 24);
        assert_eq!(r[0].table, Table::Raw);
        assert_eq!(r[0].chain, Chain::Prerouting);
        assert_eq!(r[0].action(), Action::Notrack);
        assert_eq!(r[2].action(), Action::Accept);
        assert_eq!(r[2].comment(), COMMENT_ALLOW_TRAFFIC);
        assert_eq!(r[11].port, 8080);
        assert!(!r[11].dst);
        assert_eq!(r[12].ip, ips[1]);
    }

    #[test]
    fn metric_has_every_label_at_zero() {
        register_metrics();
        let text = nodedns_plugins::pkg::metrics::render();
        for label in ERROR_TYPES {
            assert!(
                text.contains(&format!(
                    "coredns_nodecache_setup_errors_total{{errortype=\"{label}\"}}"
                )),
                "{label} missing in {text}"
            );
        }
    }

    #[tokio::test]
    async fn nothing_to_do_when_disabled() {
        let net = NodeLocalNet::new(NodeLocalConfig {
            ips: vec!["169.254.20.10".parse().unwrap()],
            port: 53,
            health_port: 8080,
            interface: None,
            filter: FilterMode::Off,
        });
        net.ensure_interface().await.unwrap();
        net.ensure_rules().await.unwrap();
        assert_eq!(net.link_use().await, None);
        assert_eq!(net.filter_backend().await, None);
        net.teardown().await.unwrap();
    }
}
