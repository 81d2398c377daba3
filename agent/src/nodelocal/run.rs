//! Node-local mode as the agent runs it: the Corefile written from the
//! base and the kube-dns ConfigMap (at start and whenever they change),
//! the addresses and the packet-filter rules (set up, re-checked every
//! `-syncinterval`, torn down at exit unless `-skipteardown`).

use std::path::{Path, PathBuf};

use super::flags::{NodeLocalArgs, PacketFilter};
use super::template::{self, KubeDnsConfig};

/// Where node-cache looks for the kube-dns ConfigMap when `-kubednscm` is
/// not given.
const DEFAULT_KUBEDNS_CM: &str = "/etc/kube-dns";

/// The node-local side of a running agent.
#[derive(Debug)]
pub struct NodeLocal {
    pub args: NodeLocalArgs,
    /// The Corefile the agent runs (`-conf`, else `-corefile`).
    out: PathBuf,
    dns_port: u16,
    /// What was last written to `out`.
    written: Option<String>,
    /// What the inputs were when last read (base and ConfigMap texts), so
    /// an unchanged input is not rendered again.
    inputs: Option<(String, KubeDnsConfig)>,
}

impl NodeLocal {
    pub fn new(args: &NodeLocalArgs, conf: Option<&Path>, dns_port: u16) -> Self {
        Self {
            args: args.clone(),
            out: conf.map_or_else(|| args.corefile.clone(), Path::to_path_buf),
            dns_port,
            written: None,
            inputs: None,
        }
    }

    /// The Corefile the agent runs.
    pub fn corefile(&self) -> &Path {
        &self.out
    }

    fn kubedns_dir(&self) -> Option<PathBuf> {
        self.args.kubednscm.clone().or_else(|| {
            let d = PathBuf::from(DEFAULT_KUBEDNS_CM);
            d.is_dir().then_some(d)
        })
    }

    /// Reads the base Corefile and the ConfigMap and, if what they make
    /// differs from what was last written, writes the Corefile. `Ok(true)`
    /// when it was written. An input that does not read or check is
    /// counted (`configmap`) and changes nothing, as in node-cache.
    pub fn refresh(&mut self) -> Result<bool, String> {
        let result = self.render();
        let (base, cm) = match result {
            Ok(inputs) => inputs,
            Err(e) => {
                super::count_error(super::ErrorType::Configmap);
                return Err(e);
            }
        };
        if self.inputs.as_ref() == Some(&(base.clone(), cm.clone())) {
            return Ok(false);
        }
        let env = |k: &str| std::env::var(k).ok();
        let cluster = template::cluster_dns(&self.args.upstream_svc, &env);
        let text = template::render(
            &base,
            &cm,
            &self.args,
            self.dns_port,
            cluster.as_deref().map_err(String::as_str),
        )
        .inspect_err(|_| super::count_error(super::ErrorType::Configmap))?;
        self.inputs = Some((base, cm));
        if self.written.as_deref() == Some(text.as_str())
            || std::fs::read_to_string(&self.out).ok().as_deref() == Some(text.as_str())
        {
            self.written = Some(text);
            return Ok(false);
        }
        write_atomically(&self.out, &text).map_err(|e| {
            super::count_error(super::ErrorType::Configmap);
            format!("writing {}: {e}", self.out.display())
        })?;
        tracing::info!(
            corefile = %self.out.display(),
            stub_domains = self.inputs.as_ref().map_or(0, |(_, c)| c.stub_domains.len()),
            "node-local: wrote the Corefile from {}",
            self.args.base_corefile.display()
        );
        self.written = Some(text);
        Ok(true)
    }

    fn render(&self) -> Result<(String, KubeDnsConfig), String> {
        let base = std::fs::read_to_string(&self.args.base_corefile).map_err(|e| {
            format!(
                "Failed to read node-cache coreFile {}: {e}",
                self.args.base_corefile.display()
            )
        })?;
        let cm = match self.kubedns_dir() {
            Some(dir) => KubeDnsConfig::read(&dir).map_err(|e| format!("Invalid config: {e}"))?,
            None => KubeDnsConfig::default(),
        };
        Ok((base, cm))
    }
}

/// A temporary file beside `path`, then a rename: a reader never sees half
/// a Corefile.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.nodedns-{}.tmp",
        path.file_name()
            .map_or_else(|| "Corefile".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The addresses and packet-filter rules of node-local mode.
#[derive(Debug)]
pub struct Network {
    net: super::NodeLocalNet,
}

impl NodeLocal {
    /// Sets up the interface and its addresses (before the listeners
    /// bind; they bind with `IP_FREEBIND`, so a failure here does not keep
    /// them from starting, and the next sync tries again).
    pub async fn network(&self) -> Network {
        let filter = if !self.args.setup_iptables {
            super::FilterMode::Off
        } else {
            match self.args.packet_filter {
                PacketFilter::Auto => super::FilterMode::Auto,
                PacketFilter::Nftables => super::FilterMode::Nftables,
                PacketFilter::Iptables => super::FilterMode::Iptables,
            }
        };
        let net = super::NodeLocalNet::new(super::NodeLocalConfig {
            ips: self.args.local_ips.clone(),
            port: self.dns_port,
            health_port: self.args.health_port,
            interface: self
                .args
                .setup_interface
                .then(|| self.args.interface_name.clone()),
            filter,
        });
        if let Err(e) = net.ensure_interface().await {
            tracing::error!("node-local: setting up the interface: {e}");
        }
        Network { net }
    }
}

impl Network {
    /// Installs the rules (once the listeners answer).
    pub async fn ensure_rules(&self) {
        if let Err(e) = self.net.ensure_rules().await {
            tracing::error!("node-local: installing the packet-filter rules: {e}");
        }
    }

    /// Checks the interface and the rules, putting back what is missing.
    pub async fn sync(&self) {
        let interface = self.net.ensure_interface().await;
        let rules = self.net.ensure_rules().await;
        match (interface, rules) {
            (Ok(()), Ok(())) => tracing::debug!("node-local: synced the interface and rules"),
            (i, r) => {
                for e in [i.err(), r.err()].into_iter().flatten() {
                    tracing::error!("node-local: sync: {e}");
                }
            }
        }
    }

    /// Removes the rules and the interface (or the addresses put on a link
    /// that was there before).
    pub async fn teardown(&self) {
        match self.net.teardown().await {
            Ok(()) => tracing::info!("node-local: removed the interface and rules"),
            Err(e) => tracing::error!("node-local: teardown: {e}"),
        }
    }
}
