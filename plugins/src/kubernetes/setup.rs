//! `kubernetes [ZONES...] { ... }`, parsed as CoreDNS 1.14.7's
//! `plugin/kubernetes/setup.go` parses it.
//!
//! Every option CoreDNS has is read. Those that shape answers take effect
//! here; those that shape the connection to the API server (`endpoint`,
//! `tls`, `kubeconfig`, `apiserver_*`, `namespaces`, `labels`,
//! `namespace_labels`) are validated and kept in [`KubernetesConfig`] for
//! the watch side.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::dispenser::{Dispenser, SetupError};
use crate::pkg::fall::Fall;
use crate::pkg::zones;
use crate::setup::{BlockInfo, Controller, StartupWait};

use super::answer::is_reverse;
use super::labels::Selector;
use super::watched::{Watched, carry_key};
use super::{Kubernetes, PodMode};

/// CoreDNS's `defaultTTL`.
pub const DEFAULT_TTL: u32 = 5;
/// The largest `ttl` CoreDNS accepts.
pub const MAX_TTL: u32 = 3600;
/// CoreDNS's default `startup_timeout`.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `startup_timeout` accepted: a start or a reload waits this
/// long at most.
pub const MAX_STARTUP_TIMEOUT: Duration = Duration::from_secs(600);
/// Client TLS files for `endpoint` (`tls CERT KEY CACERT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Client certificate (PEM).
    pub cert: PathBuf,
    /// Client key (PEM).
    pub key: PathBuf,
    /// CA bundle that signs the API server's certificate (PEM).
    pub ca: PathBuf,
}

/// `kubeconfig KUBECONFIG [CONTEXT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeconfigFile {
    /// The file.
    pub path: PathBuf,
    /// The context to use; `None`: the file's current context.
    pub context: Option<String>,
}

/// Where the API server is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// In-cluster: the service account's token and CA, and
    /// `KUBERNETES_SERVICE_HOST`/`PORT` (neither `endpoint` nor `kubeconfig`).
    InCluster,
    /// `endpoint URL` (with `tls` when given).
    Endpoint {
        /// The URL (only the first of several is used, as CoreDNS).
        url: String,
        /// Client certificate, key and CA.
        tls: Option<TlsFiles>,
    },
    /// `kubeconfig` (wins over `endpoint`, as CoreDNS).
    Kubeconfig(KubeconfigFile),
}

/// The plugin's configuration, as the Corefile says it.
#[derive(Debug, Clone, PartialEq)]
pub struct KubernetesConfig {
    /// Zones served, normalised (`cluster.local.`, `10.in-addr.arpa.`).
    pub zones: Vec<String>,
    /// The first zone that is not a reverse zone: PTR targets live there.
    pub primary_zone: String,
    /// How to reach the API server.
    pub connection: Connection,
    /// `apiserver_qps` (0: the client's default).
    pub api_qps: f32,
    /// `apiserver_burst` (0: the client's default).
    pub api_burst: u32,
    /// `apiserver_max_inflight` (0: no limit of our own).
    pub api_max_inflight: u32,
    /// `namespaces`: only these are exposed (empty: all).
    pub namespaces: BTreeSet<String>,
    /// `labels`: only objects matching this are watched.
    pub labels: Option<Selector>,
    /// `namespace_labels`: only namespaces matching this are exposed.
    pub namespace_labels: Option<Selector>,
    /// `pods`.
    pub pods: PodMode,
    /// `endpoint_pod_names`.
    pub endpoint_pod_names: bool,
    /// `ttl`.
    pub ttl: u32,
    /// Not `noendpoints`: EndpointSlices are watched.
    pub endpoints: bool,
    /// `fallthrough`.
    pub fall: Fall,
    /// `ignore empty_service`.
    pub ignore_empty_service: bool,
    /// `startup_timeout`: how long a start or a reload waits for the first
    /// sync before it serves without it.
    pub startup_timeout: Duration,
    /// `multicluster`: zones (normalised, among `zones`) answered from
    /// ServiceImports (empty: none).
    pub multicluster: Vec<String>,
    /// `zonal`: headless services also answer
    /// `TOPOLOGY-ZONE.pin|prefer._zone.SERVICE.NS.svc.ZONE`.
    pub zonal: bool,
}

impl KubernetesConfig {
    fn new(zones: Vec<String>, primary_zone: String) -> Self {
        Self {
            zones,
            primary_zone,
            connection: Connection::InCluster,
            api_qps: 0.0,
            api_burst: 0,
            api_max_inflight: 0,
            namespaces: BTreeSet::new(),
            labels: None,
            namespace_labels: None,
            pods: PodMode::Disabled,
            endpoint_pod_names: false,
            ttl: DEFAULT_TTL,
            endpoints: true,
            fall: Fall::default(),
            ignore_empty_service: false,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            multicluster: Vec::new(),
            zonal: false,
        }
    }
}

/// Parses `kubernetes`, adds the handler and its readiness, and the task
/// that watches the API server while the configuration serves.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let config = parse(&mut c.d, c.block)?;
    // The same settings in two blocks share one view; a reload that keeps
    // them carries it over, synced, with its watch running.
    let key = carry_key(&config);
    let watched = match c.services.carry_out.get::<Watched>(&key) {
        Some(w) => w,
        None => {
            let w = c
                .services
                .carry_in
                .take::<Watched>(&key)
                .unwrap_or_else(|| {
                    Arc::new(Watched::new(
                        super::store_options(&config),
                        !config.multicluster.is_empty(),
                    ))
                });
            c.services.carry_out.keep(key, Arc::clone(&w));
            w
        }
    };
    let k = Kubernetes::with_store(
        &config,
        Some(Arc::clone(&c.block.bound)),
        Arc::clone(watched.store()),
        Some(Arc::clone(&watched)),
    );
    c.services.readiness.push(k.readiness());
    let cfg = Arc::clone(k.config());
    c.services.startup.push(StartupWait {
        ready: k.readiness(),
        timeout: config.startup_timeout,
        start: Box::new(move || watched.ensure_running(&cfg)),
        waiting: "plugin/kubernetes: waiting for Kubernetes API before starting server",
        gave_up: "plugin/kubernetes: starting server with unsynced Kubernetes API",
    });
    c.add_plugin(Box::new(k));
    Ok(())
}

/// Tokens to config (no I/O but checking that named files exist).
pub fn parse(d: &mut Dispenser<'_>, block: &BlockInfo) -> Result<KubernetesConfig, SetupError> {
    let mut cfg = None;
    while d.next() {
        if cfg.is_some() {
            return Err(d.err("this plugin can only be used once per Server Block"));
        }
        cfg = Some(stanza(d, block)?);
    }
    cfg.ok_or_else(|| d.err("missing directive"))
}

fn stanza(d: &mut Dispenser<'_>, block: &BlockInfo) -> Result<KubernetesConfig, SetupError> {
    let args = d.remaining_args();
    let zones = if args.is_empty() {
        block.zones.clone()
    } else {
        let mut out = Vec::new();
        for a in &args {
            out.extend(
                zones::normalize_exact(a)
                    .ok_or_else(|| d.err(format_args!("invalid zone '{a}'")))?,
            );
        }
        out
    };
    let primary = zones
        .iter()
        .find(|z| zones::to_wire(z).is_some_and(|w| !is_reverse(&w)))
        .cloned()
        .ok_or_else(|| d.err("non-reverse zone name must be used"))?;
    let mut cfg = KubernetesConfig::new(zones, primary);
    let mut endpoint: Option<String> = None;
    let mut tls: Option<TlsFiles> = None;
    let mut kubeconfig: Option<KubeconfigFile> = None;

    while d.next_block() {
        let option = d.val();
        match option {
            "endpoint_pod_names" => {
                no_args(d)?;
                cfg.endpoint_pod_names = true;
            }
            "pods" => {
                let args = d.remaining_args();
                let [mode] = args.as_slice() else {
                    return Err(d.arg_err());
                };
                cfg.pods = match mode.as_str() {
                    "disabled" => PodMode::Disabled,
                    "insecure" => PodMode::Insecure,
                    "verified" => PodMode::Verified,
                    _ => {
                        return Err(d.err(format_args!(
                            "wrong value for pods: {mode}, must be one of: disabled, verified, insecure"
                        )));
                    }
                };
            }
            "namespaces" => {
                let args = d.remaining_args();
                if args.is_empty() {
                    return Err(d.arg_err());
                }
                cfg.namespaces.extend(args);
            }
            "endpoint" => {
                let args = d.remaining_args();
                let Some(first) = args.first() else {
                    return Err(d.arg_err());
                };
                check_url(first)
                    .map_err(|e| d.err(format_args!("invalid endpoint '{first}': {e}")))?;
                if args.len() > 1 {
                    tracing::warn!(
                        endpoint = %first,
                        "multiple endpoints have been deprecated, only the first specified endpoint is used"
                    );
                }
                endpoint = Some(first.clone());
            }
            "tls" => {
                let args = d.remaining_args();
                let [cert, key, ca] = args.as_slice() else {
                    return Err(d.arg_err());
                };
                for f in [cert, key, ca] {
                    check_file(d, "tls", f)?;
                }
                tls = Some(TlsFiles {
                    cert: cert.into(),
                    key: key.into(),
                    ca: ca.into(),
                });
            }
            "labels" | "namespace_labels" => {
                let args = d.remaining_args();
                if args.is_empty() {
                    return Err(d.arg_err());
                }
                let text = args.join(" ");
                let what = if option == "labels" {
                    "label selector"
                } else {
                    "namespace_label selector"
                };
                let sel = Selector::parse(&text).map_err(|e| {
                    d.err(format_args!("unable to parse {what} value: '{text}': {e}"))
                })?;
                if option == "labels" {
                    cfg.labels = Some(sel);
                } else {
                    cfg.namespace_labels = Some(sel);
                }
            }
            "fallthrough" => cfg.fall = Fall::parse(d)?,
            "ttl" => {
                let args = d.remaining_args();
                let Some(first) = args.first() else {
                    return Err(d.arg_err());
                };
                let t: i64 = first
                    .parse()
                    .map_err(|_| d.err(format_args!("ttl must be an integer, not '{first}'")))?;
                cfg.ttl = u32::try_from(t)
                    .ok()
                    .filter(|t| *t <= MAX_TTL)
                    .ok_or_else(|| d.err(format_args!("ttl must be in range [0, 3600]: {t}")))?;
            }
            "noendpoints" => {
                no_args(d)?;
                cfg.endpoints = false;
            }
            "ignore" => {
                let args = d.remaining_args();
                match args.first().map(String::as_str) {
                    // CoreDNS reads the first word only.
                    Some("empty_service") => cfg.ignore_empty_service = true,
                    Some(other) => {
                        return Err(d.err(format_args!("unable to parse ignore value: '{other}'")));
                    }
                    None => return Err(d.arg_err()),
                }
            }
            "kubeconfig" => {
                let args = d.remaining_args();
                let (path, context) = match args.as_slice() {
                    [p] => (p, None),
                    [p, c] => (p, Some(c.clone())),
                    _ => return Err(d.arg_err()),
                };
                check_file(d, "kubeconfig", path)?;
                kubeconfig = Some(KubeconfigFile {
                    path: path.into(),
                    context,
                });
            }
            "apiserver_qps" => {
                let v = one_arg(d)?;
                let qps: f32 = v
                    .parse()
                    .ok()
                    .filter(|q: &f32| q.is_finite())
                    .ok_or_else(|| d.err(format_args!("invalid apiserver_qps \"{v}\"")))?;
                if qps < 0.0 {
                    return Err(d.err("apiserver_qps must be >= 0"));
                }
                cfg.api_qps = qps;
            }
            "apiserver_burst" | "apiserver_max_inflight" => {
                let v = one_arg(d)?;
                let n: i64 = v
                    .parse()
                    .map_err(|_| d.err(format_args!("invalid {option} \"{v}\"")))?;
                let n =
                    u32::try_from(n).map_err(|_| d.err(format_args!("{option} must be >= 0")))?;
                if option == "apiserver_burst" {
                    cfg.api_burst = n;
                } else {
                    cfg.api_max_inflight = n;
                }
            }
            "startup_timeout" => {
                let Some(v) = d.remaining_args().into_iter().next() else {
                    return Err(d.arg_err());
                };
                let t = crate::dispenser::parse_duration(&v)
                    .filter(|t| !t.is_zero() && *t <= MAX_STARTUP_TIMEOUT)
                    .ok_or_else(|| {
                        d.err(format_args!(
                            "failed to parse startup_timeout: {v}: a duration above 0 and at most 10m"
                        ))
                    })?;
                cfg.startup_timeout = t;
            }
            "multicluster" => {
                // CoreDNS's OriginsFromArgsOrServerBlock with no server
                // block: no zones, no multicluster. The check that each is
                // one of the plugin's zones is CoreDNS's, made here so the
                // error names this line.
                let mut mc = Vec::new();
                for a in d.remaining_args() {
                    mc.extend(
                        zones::normalize_exact(&a)
                            .ok_or_else(|| d.err(format_args!("invalid zone '{a}'")))?,
                    );
                }
                if let Some(z) = mc.iter().find(|z| !cfg.zones.contains(z)) {
                    return Err(d.err(format_args!(
                        "is not authoritative for the multicluster zone {z} (authoritative zones: [{}])",
                        cfg.zones.join(" ")
                    )));
                }
                cfg.multicluster = mc;
            }
            "zonal" => {
                no_args(d)?;
                cfg.zonal = true;
            }
            other => return Err(d.err(format_args!("unknown property '{other}'"))),
        }
    }

    if !cfg.namespaces.is_empty() && cfg.namespace_labels.is_some() {
        return Err(d.err("namespaces and namespace_labels cannot both be set"));
    }
    // Zonal names are answered from the endpoints: without them every one
    // would contradict `noendpoints` (NXDOMAIN for all headless names).
    if cfg.zonal && !cfg.endpoints {
        return Err(d.err("zonal requires the endpoint cache; remove noendpoints"));
    }
    cfg.connection = match (kubeconfig, endpoint) {
        (Some(k), _) => Connection::Kubeconfig(k),
        (None, Some(url)) => Connection::Endpoint { url, tls },
        (None, None) => Connection::InCluster,
    };
    Ok(cfg)
}

fn no_args(d: &mut Dispenser<'_>) -> Result<(), SetupError> {
    if d.remaining_args().is_empty() {
        Ok(())
    } else {
        Err(d.arg_err())
    }
}

fn one_arg(d: &mut Dispenser<'_>) -> Result<String, SetupError> {
    let args = d.remaining_args();
    match <[String; 1]>::try_from(args) {
        Ok([v]) => Ok(v),
        Err(_) => Err(d.arg_err()),
    }
}

/// An `http://` or `https://` URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("the scheme must be http or https".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(())
}

/// A file the watch side will read must be there now (CoreDNS reads it
/// when it sets the plugin up).
fn check_file(d: &Dispenser<'_>, option: &str, path: &str) -> Result<(), SetupError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(d.err(format_args!("{option}: '{path}' is not a file"))),
        Err(e) => Err(d.err(format_args!("{option}: cannot read '{path}': {e}"))),
    }
}
