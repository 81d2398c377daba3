//! The Corefile node-local mode runs: node-cache's base Corefile with its
//! `__PILLAR__` placeholders filled, and a block per stub domain of the
//! kube-dns ConfigMap, as node-cache writes it.
//!
//! - `__PILLAR__CLUSTER__DNS__`: the ClusterIP of `-upstreamsvc` (env
//!   `<NAME>_SERVICE_HOST`), or the `k8s://` target it names.
//! - `__PILLAR__UPSTREAM__SERVERS__`: the ConfigMap's
//!   `upstreamNameservers` (then over UDP: a `force_tcp` block around them
//!   is removed, as node-cache does), else `/etc/resolv.conf`.
//! - `__PILLAR__LOCAL__DNS__`: the `-localip` addresses.
//! - `__PILLAR__DNS__SERVER__`: removed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use super::flags::NodeLocalArgs;

pub const CLUSTER_DNS: &str = "__PILLAR__CLUSTER__DNS__";
pub const UPSTREAM_SERVERS: &str = "__PILLAR__UPSTREAM__SERVERS__";
pub const LOCAL_DNS: &str = "__PILLAR__LOCAL__DNS__";
pub const DNS_SERVER: &str = "__PILLAR__DNS__SERVER__";

/// The largest ConfigMap file read.
const MAX_FILE: u64 = 1 << 20;
/// The cache TTL of a stub domain's block (node-cache's).
const STUB_TTL: u32 = 30;

/// What the kube-dns ConfigMap says that node-cache uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeDnsConfig {
    /// `stubDomains`: domain → nameservers.
    pub stub_domains: BTreeMap<String, Vec<String>>,
    /// `upstreamNameservers`.
    pub upstream_nameservers: Vec<String>,
}

impl KubeDnsConfig {
    /// Reads the ConfigMap's directory: the files `stubDomains` (a JSON
    /// object) and `upstreamNameservers` (a JSON array); a missing file is
    /// empty. The values are checked as node-cache checks them.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let mut out = Self::default();
        if let Some(text) = read_small(&dir.join("stubDomains"))? {
            let text = text.trim();
            if !text.is_empty() {
                out.stub_domains = serde_json::from_str(text)
                    .map_err(|e| format!("{}/stubDomains: {e}", dir.display()))?;
            }
        }
        if let Some(text) = read_small(&dir.join("upstreamNameservers"))? {
            let text = text.trim();
            if !text.is_empty() {
                out.upstream_nameservers = serde_json::from_str(text)
                    .map_err(|e| format!("{}/upstreamNameservers: {e}", dir.display()))?;
            }
        }
        out.validate()?;
        Ok(out)
    }

    fn validate(&self) -> Result<(), String> {
        for (domain, servers) in &self.stub_domains {
            if !valid_domain(domain) {
                return Err(format!("invalid domain name: \"{domain}\""));
            }
            if servers.is_empty() {
                return Err(format!("no nameservers for the stub domain {domain}"));
            }
            for s in servers {
                if !valid_server(s) {
                    return Err(format!(
                        "invalid nameservers {servers:?} for the stub domain {domain}: \"{s}\""
                    ));
                }
            }
        }
        if self.upstream_nameservers.len() > 3 {
            return Err("upstreamNameserver cannot have more than three entries".into());
        }
        for s in &self.upstream_nameservers {
            if !valid_server(s) {
                return Err(format!(
                    "invalid upstream nameservers {:?}: \"{s}\"",
                    self.upstream_nameservers
                ));
            }
        }
        Ok(())
    }
}

fn read_small(path: &Path) -> Result<Option<String>, String> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
        Ok(m) if m.len() > MAX_FILE => {
            return Err(format!("{}: larger than {MAX_FILE} bytes", path.display()));
        }
        Ok(_) => {}
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A DNS-1123 subdomain, as kube-dns requires of a stub domain.
fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// An address, an address and port, or a resolv.conf-style file, as
/// CoreDNS's `parse.HostPortOrFile` takes.
fn valid_server(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() || s.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    s.starts_with('/') && Path::new(s).is_file()
}

/// What `-upstreamsvc` puts in place of `__PILLAR__CLUSTER__DNS__`: the
/// `k8s://` target as given, or the ClusterIP from the Service's
/// environment variable (`kube-dns` → `KUBE_DNS_SERVICE_HOST`).
pub fn cluster_dns(
    upstream_svc: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if upstream_svc.starts_with("k8s://") {
        return Ok(upstream_svc.to_string());
    }
    let var = format!(
        "{}_SERVICE_HOST",
        upstream_svc.replace('-', "_").to_ascii_uppercase()
    );
    let value = env(&var).unwrap_or_default();
    match value.trim().parse::<IpAddr>() {
        Ok(ip) => Ok(ip.to_string()),
        Err(_) => Err(format!(
            "-upstreamsvc {upstream_svc}: env {var} is {} (it should hold the Service's ClusterIP)",
            if value.is_empty() {
                "not set".to_string()
            } else {
                format!("'{value}', not an address")
            }
        )),
    }
}

/// Fills the base Corefile and appends the stub domains' blocks.
/// `cluster_dns` is `None` when `-upstreamsvc` could not be resolved: the
/// base must then not use `__PILLAR__CLUSTER__DNS__`.
pub fn render(
    base: &str,
    kube_dns: &KubeDnsConfig,
    args: &NodeLocalArgs,
    port: u16,
    cluster_dns: Result<&str, &str>,
) -> Result<String, String> {
    let local_ips = args
        .local_ips
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let mut text = base.to_string();
    if kube_dns.upstream_nameservers.is_empty() {
        text = text.replace(UPSTREAM_SERVERS, "/etc/resolv.conf");
    } else {
        let servers = kube_dns.upstream_nameservers.join(" ");
        text = without_force_tcp(&text, UPSTREAM_SERVERS);
        text = text.replace(UPSTREAM_SERVERS, &servers);
    }
    if text.contains(CLUSTER_DNS) {
        match cluster_dns {
            Ok(v) => text = text.replace(CLUSTER_DNS, v),
            Err(e) => return Err(e.to_string()),
        }
    }
    text = text.replace(LOCAL_DNS, &local_ips);
    text = text.replace(DNS_SERVER, "");
    for (domain, servers) in &kube_dns.stub_domains {
        text.push_str(&format!(
            "\n{domain}:{port} {{\n    errors\n    cache {STUB_TTL}\n    bind {local_ips}\n    forward . {}\n}}\n",
            servers.join(" ")
        ));
    }
    Ok(text)
}

/// Removes a `{ force_tcp }` block after `forward . PLACEHOLDER`, whatever
/// its layout (node-cache matches one exact layout, then falls back to
/// plain replacement): custom upstreams are asked over UDP.
fn without_force_tcp(text: &str, placeholder: &str) -> String {
    let head = format!("forward . {placeholder}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&head) {
        let after = at + head.len();
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        let block = ["{", "force_tcp", "}"]
            .iter()
            .try_fold(rest, |s, word| s.trim_start().strip_prefix(word));
        if let Some(after_block) = block {
            rest = after_block;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN: &str = include_str!("../../../tests/corefiles/nodelocaldns.Corefile");

    fn args() -> NodeLocalArgs {
        NodeLocalArgs {
            local_ips: vec![
                "169.254.20.10".parse().unwrap(),
                "10.96.0.10".parse().unwrap(),
            ],
            ..NodeLocalArgs::default()
        }
    }

    #[test]
    fn cluster_dns_from_env_or_k8s() {
        let env =
            |k: &str| (k == "KUBE_DNS_UPSTREAM_SERVICE_HOST").then(|| "10.0.0.53".to_string());
        assert_eq!(cluster_dns("kube-dns-upstream", &env).unwrap(), "10.0.0.53");
        let e = cluster_dns("kube-dns", &env).unwrap_err();
        assert!(e.contains("KUBE_DNS_SERVICE_HOST is not set"), "{e}");
        let bad = |_: &str| Some("x".to_string());
        assert!(
            cluster_dns("kube-dns", &bad)
                .unwrap_err()
                .contains("not an address")
        );
        assert_eq!(
            cluster_dns("k8s://kube-system/kube-dns", &env).unwrap(),
            "k8s://kube-system/kube-dns"
        );
    }

    #[test]
    fn golden_with_resolv_conf() {
        let out = render(
            GOLDEN,
            &KubeDnsConfig::default(),
            &args(),
            53,
            Ok("10.0.0.53"),
        )
        .unwrap();
        assert!(!out.contains("__PILLAR__"), "{out}");
        assert!(out.contains("forward . 10.0.0.53 {\n        force_tcp"));
        assert!(out.contains("forward . /etc/resolv.conf"));
    }

    #[test]
    fn custom_upstreams_go_over_udp() {
        let base = "cluster.local:53 {\n    forward . __PILLAR__CLUSTER__DNS__ {\n        force_tcp\n    }\n}\n.:53 {\n    forward . __PILLAR__UPSTREAM__SERVERS__ {\n            force_tcp\n    }\n    cache 30\n}\n";
        let cm = KubeDnsConfig {
            upstream_nameservers: vec!["1.1.1.1".into(), "8.8.8.8:53".into()],
            ..KubeDnsConfig::default()
        };
        let out = render(base, &cm, &args(), 53, Ok("10.0.0.53")).unwrap();
        assert!(
            out.contains("forward . 1.1.1.1 8.8.8.8:53\n    cache 30"),
            "{out}"
        );
        assert!(
            out.contains("forward . 10.0.0.53 {\n        force_tcp"),
            "{out}"
        );
    }

    #[test]
    fn stub_domains_and_local_dns() {
        let base = "__PILLAR__DNS__SERVER__.:53 {\n    bind __PILLAR__LOCAL__DNS__\n}\n";
        let mut cm = KubeDnsConfig::default();
        cm.stub_domains.insert(
            "acme.local".into(),
            vec!["1.2.3.4".into(), "5.6.7.8:5353".into()],
        );
        let out = render(base, &cm, &args(), 1053, Err("unused")).unwrap();
        assert!(
            out.starts_with(".:53 {\n    bind 169.254.20.10 10.96.0.10\n}"),
            "{out}"
        );
        assert!(out.contains(
            "acme.local:1053 {\n    errors\n    cache 30\n    bind 169.254.20.10 10.96.0.10\n    forward . 1.2.3.4 5.6.7.8:5353\n}"
        ));
    }

    #[test]
    fn unresolved_cluster_dns_is_an_error_only_when_used() {
        let e = render(
            GOLDEN,
            &KubeDnsConfig::default(),
            &args(),
            53,
            Err("env not set"),
        );
        assert_eq!(e.unwrap_err(), "env not set");
    }

    #[test]
    fn configmap_files() {
        let dir = std::env::temp_dir().join(format!("nodedns-cm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(KubeDnsConfig::read(&dir).unwrap(), KubeDnsConfig::default());
        std::fs::write(dir.join("stubDomains"), r#"{"acme.local": ["1.2.3.4"]}"#).unwrap();
        std::fs::write(
            dir.join("upstreamNameservers"),
            r#"["8.8.8.8", "8.8.4.4:53"]"#,
        )
        .unwrap();
        let cm = KubeDnsConfig::read(&dir).unwrap();
        assert_eq!(cm.stub_domains["acme.local"], vec!["1.2.3.4"]);
        assert_eq!(cm.upstream_nameservers.len(), 2);
        for (file, text, want) in [
            (
                "stubDomains",
                r#"{"Acme_Local": ["1.2.3.4"]}"#,
                "invalid domain",
            ),
            (
                "stubDomains",
                r#"{"acme.local": ["not a server"]}"#,
                "invalid nameservers",
            ),
            ("stubDomains", "{", "stubDomains"),
            (
                "upstreamNameservers",
                r#"["1.1.1.1","1.1.1.2","1.1.1.3","1.1.1.4"]"#,
                "three",
            ),
        ] {
            std::fs::write(dir.join("stubDomains"), "{}").unwrap();
            std::fs::write(dir.join("upstreamNameservers"), "[]").unwrap();
            std::fs::write(dir.join(file), text).unwrap();
            let e = KubeDnsConfig::read(&dir).unwrap_err();
            assert!(e.contains(want), "{file} {text}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
