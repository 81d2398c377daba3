//! The watch side: kube-rs watchers on Services, EndpointSlices
//! (discovery.k8s.io/v1), Namespaces and, for `pods verified`, Pods,
//! feeding the [`Store`].
//!
//! One task runs every watch (no sub-task is spawned, so aborting the task
//! stops them all). Each watch is `kube::runtime::watcher`: a list, then a
//! watch from its resourceVersion with bookmarks; a watch that ends is
//! resumed, one refused with `410 Gone` starts over with a new list
//! (`Event::Init` .. `Event::InitDone`, which the store turns into a
//! relist that deletes what is gone); errors back off exponentially. The
//! store is ready once every watch finished its first list.
//!
//! As CoreDNS: objects are filtered server-side by `labels` (Services,
//! EndpointSlices, Pods) and `namespace_labels` (Namespaces); with a single
//! `namespaces` entry the namespaced objects are watched in that namespace
//! only (with several, everywhere, and the names filter answers).
//! Namespaces are always watched: CoreDNS answers NXDOMAIN in a namespace
//! that does not exist. Pods that have finished are left out by a field
//! selector. `apiserver_qps`/`apiserver_burst` (default 5 and 10, client-go's)
//! pace the requests but watches (client-go does not rate limit watches),
//! `apiserver_max_inflight` bounds them in flight.
//!
//! Metrics (see `metrics.rs`): every request is counted and timed by a
//! layer around the client, the pacing wait is recorded by the pacer, and
//! an EndpointSlice's programming latency once the batch that applied it
//! is published.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config, Resource};
use tokio::time::Instant;

use super::metrics::{self, ServiceKindLabel};
use super::setup::{Connection, KubernetesConfig};
use super::store::{
    Batch, EndpointRecord, Kind, PodRecord, PortRecord, ServiceKind, ServiceRecord, SliceRecord,
    Store, parse_ip,
};

/// client-go's defaults, which CoreDNS keeps unless told otherwise.
const DEFAULT_QPS: f64 = 5.0;
const DEFAULT_BURST: u32 = 10;
/// Events applied in one batch at most (then the batch is published).
const MAX_BATCH: usize = 1024;
/// Waits between attempts to build a client (bad kubeconfig, not in a
/// cluster): doubling up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Pods in these phases hold no address worth answering (CoreDNS's selector).
const LIVE_PODS: &str = "status.phase!=Succeeded,status.phase!=Failed,status.phase!=Unknown";
/// The label that ties an EndpointSlice to its service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The task that connects and runs every watch the store needs, until the
/// store is dropped or the task aborted.
pub(crate) fn run(cfg: Arc<KubernetesConfig>, store: Weak<Store>) -> BoxFuture<'static, ()> {
    async move {
        let mut wait = RETRY_FIRST;
        let client = loop {
            match client(&cfg).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "kubernetes: cannot connect to the API server");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                    if store.strong_count() == 0 {
                        return;
                    }
                }
            }
        };
        let Some(opts) = store.upgrade().map(|s| s.options()) else {
            return;
        };
        let labels = cfg.labels.as_ref().map(super::Selector::to_query);
        let single_ns = (cfg.namespaces.len() == 1)
            .then(|| cfg.namespaces.iter().next().cloned())
            .flatten();
        let api = |client: &Client| -> (Api<Service>, Api<EndpointSlice>, Api<Pod>) {
            match &single_ns {
                Some(ns) => (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                ),
                None => (
                    Api::all(client.clone()),
                    Api::all(client.clone()),
                    Api::all(client.clone()),
                ),
            }
        };
        let (services, slices, pods) = api(&client);
        let with_labels = |c: watcher::Config| match &labels {
            Some(l) => c.labels(l),
            None => c,
        };
        let mut watches: Vec<BoxFuture<'static, ()>> = vec![
            watch(
                store.clone(),
                Kind::Services,
                services,
                with_labels(watcher::Config::default()),
                apply_service,
                delete_service,
            ),
            watch(
                store.clone(),
                Kind::Namespaces,
                Api::<Namespace>::all(client.clone()),
                match &cfg.namespace_labels {
                    Some(sel) => watcher::Config::default().labels(&sel.to_query()),
                    None => watcher::Config::default(),
                },
                apply_namespace,
                delete_namespace,
            ),
        ];
        if opts.endpoints {
            watches.push(watch(
                store.clone(),
                Kind::EndpointSlices,
                slices,
                with_labels(watcher::Config::default()),
                apply_slice,
                delete_slice,
            ));
        }
        if opts.pods {
            watches.push(watch(
                store.clone(),
                Kind::Pods,
                pods,
                with_labels(watcher::Config::default().fields(LIVE_PODS)),
                apply_pod,
                delete_pod,
            ));
        }
        futures_util::future::join_all(watches).await;
    }
    .boxed()
}

/// One watch: its events applied to the store in batches.
fn watch<K>(
    store: Weak<Store>,
    kind: Kind,
    api: Api<K>,
    config: watcher::Config,
    apply: Apply<K>,
    delete: Apply<K>,
) -> BoxFuture<'static, ()>
where
    K: Resource
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    async move {
        let mut events = watcher::watcher(api, config).default_backoff().boxed();
        let mut was_synced = false;
        let mut programmed = Vec::new();
        while let Some(first) = events.next().await {
            let Some(store) = store.upgrade() else { return };
            {
                let mut batch = store.batch();
                handle(&mut batch, kind, first, apply, delete, &mut programmed);
                // What else is ready goes in the same batch.
                for _ in 1..MAX_BATCH {
                    match events.next().now_or_never() {
                        Some(Some(ev)) => {
                            handle(&mut batch, kind, ev, apply, delete, &mut programmed);
                        }
                        Some(None) => return,
                        None => break,
                    }
                }
            }
            // Published (the batch is dropped): served from now on.
            for (kind, at) in programmed.drain(..) {
                metrics::programmed(kind, at);
            }
            if !was_synced && store.synced() {
                was_synced = true;
                tracing::info!(stats = ?store.stats(), "kubernetes: synced with the API server");
            }
        }
    }
    .boxed()
}

/// Applies an object to the store; slices add their programming latency
/// to record once the batch is published.
type Apply<K> = fn(&mut Batch<'_>, &K, &mut Vec<(ServiceKindLabel, SystemTime)>);

fn handle<K: Resource>(
    batch: &mut Batch<'_>,
    kind: Kind,
    ev: Result<Event<K>, watcher::Error>,
    apply: Apply<K>,
    delete: Apply<K>,
    programmed: &mut Vec<(ServiceKindLabel, SystemTime)>,
) {
    match ev {
        Ok(Event::Init) => batch.begin_resync(kind),
        Ok(Event::InitApply(o) | Event::Apply(o)) => apply(batch, &o, programmed),
        Ok(Event::InitDone) => batch.finish_resync(kind),
        Ok(Event::Delete(o)) => delete(batch, &o, programmed),
        Err(e) => tracing::warn!(?kind, error = %e, "kubernetes: watch failed; retrying"),
    }
}

fn names<K: Resource>(o: &K) -> (&str, &str) {
    let m = o.meta();
    (
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
    )
}

/// What [`Apply`] gives the functions that record nothing.
type Programmed = Vec<(ServiceKindLabel, SystemTime)>;

fn apply_service(b: &mut Batch<'_>, s: &Service, _: &mut Programmed) {
    if let Some(r) = service_record(s) {
        b.apply_service(r);
    }
}

fn delete_service(b: &mut Batch<'_>, s: &Service, _: &mut Programmed) {
    let (ns, name) = names(s);
    b.delete_service(ns, name);
}

fn apply_slice(b: &mut Batch<'_>, s: &EndpointSlice, programmed: &mut Programmed) {
    let latency = programming(b, s);
    b.apply_slice(slice_record(s));
    programmed.extend(latency);
}

fn delete_slice(b: &mut Batch<'_>, s: &EndpointSlice, programmed: &mut Programmed) {
    let latency = programming(b, s);
    let (ns, name) = names(s);
    b.delete_slice(ns, name);
    programmed.extend(latency);
}

/// CoreDNS's `EndpointLatencyRecorder`: a slice with a trigger time whose
/// service the store knows (looked up before the slice is applied) has a
/// programming latency, labelled by the service's kind.
fn programming(b: &Batch<'_>, s: &EndpointSlice) -> Option<(ServiceKindLabel, SystemTime)> {
    let (ns, name) = names(s);
    let value = s
        .metadata
        .annotations
        .as_ref()?
        .get(metrics::TRIGGER_TIME)?;
    let at = metrics::trigger_time(ns, name, value)?;
    let service = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let kind = match b.service_headless(ns, service)? {
        true => ServiceKindLabel::HeadlessWithSelector,
        false => ServiceKindLabel::ClusterIp,
    };
    Some((kind, at))
}

fn apply_pod(b: &mut Batch<'_>, p: &Pod, _: &mut Programmed) {
    b.apply_pod(pod_record(p));
}

fn delete_pod(b: &mut Batch<'_>, p: &Pod, _: &mut Programmed) {
    let (ns, name) = names(p);
    b.delete_pod(ns, name);
}

fn apply_namespace(b: &mut Batch<'_>, n: &Namespace, _: &mut Programmed) {
    b.apply_namespace(names(n).1);
}

fn delete_namespace(b: &mut Batch<'_>, n: &Namespace, _: &mut Programmed) {
    b.delete_namespace(names(n).1);
}

// === Objects to records ===

/// A Service as the store takes it (CoreDNS's `object.ToService`).
pub(crate) fn service_record(s: &Service) -> Option<ServiceRecord> {
    let (namespace, name) = names(s);
    let spec = s.spec.as_ref()?;
    let cluster_ips = spec.cluster_ips.clone().unwrap_or_default();
    Some(ServiceRecord {
        namespace: namespace.to_string(),
        name: name.to_string(),
        kind: ServiceKind::from_spec(
            spec.type_.as_deref(),
            &cluster_ips,
            spec.cluster_ip.as_deref(),
            spec.external_name.as_deref(),
        ),
        ports: spec
            .ports
            .iter()
            .flatten()
            .map(|p| PortRecord {
                name: p.name.clone(),
                protocol: p.protocol.clone(),
                port: Some(p.port),
            })
            .collect(),
    })
}

/// An EndpointSlice as the store takes it (CoreDNS's
/// `object.EndpointSliceToEndpoints`); addresses that are not IPs (FQDN
/// slices) are left out.
pub(crate) fn slice_record(s: &EndpointSlice) -> SliceRecord {
    let (namespace, name) = names(s);
    SliceRecord {
        namespace: namespace.to_string(),
        name: name.to_string(),
        service: s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned(),
        ports: s
            .ports
            .iter()
            .flatten()
            .map(|p| PortRecord {
                name: p.name.clone(),
                protocol: p.protocol.clone(),
                port: p.port,
            })
            .collect(),
        endpoints: s
            .endpoints
            .iter()
            .map(|e| EndpointRecord {
                addresses: e.addresses.iter().filter_map(|a| parse_ip(a)).collect(),
                ready: e.conditions.as_ref().and_then(|c| c.ready),
                hostname: e.hostname.clone(),
                target_name: e.target_ref.as_ref().and_then(|t| t.name.clone()),
                zone: e.zone.clone(),
            })
            .collect(),
    }
}

/// A pod as the store takes it (CoreDNS's `object.ToPod`).
pub(crate) fn pod_record(p: &Pod) -> PodRecord {
    let (namespace, name) = names(p);
    PodRecord {
        namespace: namespace.to_string(),
        name: name.to_string(),
        ip: p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(parse_ip),
        terminating: p.metadata.deletion_timestamp.is_some(),
    }
}

// === The client ===

/// A client as the configuration says: in-cluster, `endpoint` (with
/// `tls`), or `kubeconfig`; with the request limits.
pub(crate) async fn client(cfg: &KubernetesConfig) -> Result<Client, String> {
    let config = match &cfg.connection {
        Connection::InCluster => {
            Config::incluster().map_err(|e| format!("in-cluster configuration: {e}"))?
        }
        Connection::Endpoint { url, tls } => {
            let uri: hyper::Uri = url.parse().map_err(|e| format!("endpoint '{url}': {e}"))?;
            let mut c = Config::new(uri);
            if let Some(t) = tls {
                c.root_cert = Some(pem_certs(&t.ca)?);
                c.root_cert_file = Some(t.ca.clone());
                c.auth_info.client_certificate = Some(t.cert.display().to_string());
                c.auth_info.client_key = Some(t.key.display().to_string());
            }
            c
        }
        Connection::Kubeconfig(k) => {
            let file = kube::config::Kubeconfig::read_from(&k.path)
                .map_err(|e| format!("kubeconfig '{}': {e}", k.path.display()))?;
            let opts = kube::config::KubeConfigOptions {
                context: k.context.clone(),
                ..Default::default()
            };
            Config::from_custom_kubeconfig(file, &opts)
                .await
                .map_err(|e| format!("kubeconfig '{}': {e}", k.path.display()))?
        }
    };
    let qps = if cfg.api_qps > 0.0 {
        f64::from(cfg.api_qps)
    } else {
        DEFAULT_QPS
    };
    let burst = if cfg.api_burst > 0 {
        cfg.api_burst
    } else {
        DEFAULT_BURST
    };
    layered(config, qps, burst, cfg.api_max_inflight)
}

/// A client for a plugin with no connection settings of its own
/// (forward's `k8s://` upstreams): the kubeconfig `KUBECONFIG` names when
/// it is set, else in-cluster when `KUBERNETES_SERVICE_HOST` is set, else
/// kube's inference (`~/.kube/config`, then in-cluster); client-go's
/// default pacing, measured as the plugin's own requests are.
pub(crate) async fn inferred_client() -> Result<Client, String> {
    let config = if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) {
        Config::from_kubeconfig(&kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| format!("kubeconfig from KUBECONFIG: {e}"))?
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        Config::incluster().map_err(|e| format!("in-cluster configuration: {e}"))?
    } else {
        Config::infer()
            .await
            .map_err(|e| format!("no kubeconfig and not in a cluster: {e}"))?
    };
    layered(config, DEFAULT_QPS, DEFAULT_BURST, 0)
}

/// The client for `config`, paced (`qps`, `burst`), measured, and with at
/// most `max_inflight` requests in flight (0: no limit of our own).
fn layered(config: Config, qps: f64, burst: u32, max_inflight: u32) -> Result<Client, String> {
    let host = metrics::host_label(&config.cluster_url);
    let builder = kube::client::ClientBuilder::try_from(config).map_err(|e| e.to_string())?;
    // Outermost last: the measure sees the pacing wait, as client-go's
    // request duration includes its rate limiter's.
    let builder = builder
        .with_layer(&Pace::new(qps, burst).for_host(&host))
        .with_layer(&metrics::Measure::new(&host));
    Ok(if max_inflight > 0 {
        builder
            .with_layer(&tower::limit::ConcurrencyLimitLayer::new(
                max_inflight as usize,
            ))
            .build()
    } else {
        builder.build()
    })
}

/// The certificates of a PEM file.
fn pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<Vec<u8>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("CA file '{}': {e}", path.display()))?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("CA file '{}': {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("CA file '{}': no certificate", path.display()));
    }
    Ok(certs)
}

// === Pacing requests (client-go's token bucket) ===

/// A token bucket: `qps` tokens a second, at most `burst` saved up. Each
/// request takes one, waiting for it when there is none.
#[derive(Clone, Debug)]
pub(crate) struct Pace {
    bucket: Arc<Mutex<Bucket>>,
    /// The `host` label of the rate limiter metric.
    host: Arc<str>,
}

#[derive(Debug)]
struct Bucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Pace {
    pub(crate) fn new(qps: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            bucket: Arc::new(Mutex::new(Bucket {
                qps,
                burst,
                tokens: burst,
                at: Instant::now(),
            })),
            host: Arc::from("none"),
        }
    }

    /// Records its waits under `host` (the API server's `host:port`).
    pub(crate) fn for_host(mut self, host: &str) -> Self {
        self.host = Arc::from(host);
        self
    }

    /// Takes a token; how long to wait before using it.
    pub(crate) fn take(&self) -> Duration {
        let mut b = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let earned = now.duration_since(b.at).as_secs_f64() * b.qps;
        b.tokens = (b.tokens + earned).min(b.burst) - 1.0;
        b.at = now;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(-b.tokens / b.qps).unwrap_or(Duration::from_secs(1))
        }
    }
}

impl<S> tower::Layer<S> for Pace {
    type Service = Paced<S>;
    fn layer(&self, inner: S) -> Paced<S> {
        Paced {
            inner,
            pace: self.clone(),
        }
    }
}

/// A service whose requests start at the pace of a [`Pace`]. The inner
/// call is made at once (tower services do their work when polled) and
/// polled once the token is due. Watches are not paced (client-go's
/// `Watch` skips its rate limiter); every paced request's wait, zero
/// included, is recorded as client-go's `tryThrottle` records it.
pub(crate) struct Paced<S> {
    inner: S,
    pace: Pace,
}

impl<S, B> tower::Service<hyper::Request<B>> for Paced<S>
where
    S: tower::Service<hyper::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        if metrics::is_watch(req.uri()) {
            return Box::pin(self.inner.call(req));
        }
        let verb = req.method().clone();
        let host = Arc::clone(&self.pace.host);
        let wait = self.pace.take();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let start = Instant::now();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            metrics::rate_limited(verb.as_str(), &host, start.elapsed());
            fut.await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{ObjectReference, PodStatus, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    use super::*;
    use crate::kubernetes::setup::{KubeconfigFile, TlsFiles};

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    fn ip(s: &str) -> std::net::IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn services_as_coredns_reads_them() {
        let svc = |spec: ServiceSpec| Service {
            metadata: meta("ns", "web"),
            spec: Some(spec),
            ..Default::default()
        };
        let dual = svc(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("10.0.0.1".into()),
            cluster_ips: Some(vec!["10.0.0.1".into(), "fd00::1".into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(
            service_record(&dual),
            Some(ServiceRecord {
                namespace: "ns".into(),
                name: "web".into(),
                kind: ServiceKind::ClusterIp(vec![ip("10.0.0.1"), ip("fd00::1")]),
                ports: vec![PortRecord {
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    port: Some(80),
                }],
            })
        );
        let headless = svc(ServiceSpec {
            cluster_ip: Some("None".into()),
            cluster_ips: Some(vec!["None".into()]),
            ..Default::default()
        });
        assert_eq!(
            service_record(&headless).map(|r| r.kind),
            Some(ServiceKind::Headless)
        );
        let external = svc(ServiceSpec {
            type_: Some("ExternalName".into()),
            external_name: Some("example.org".into()),
            ..Default::default()
        });
        assert_eq!(
            service_record(&external).map(|r| r.kind),
            Some(ServiceKind::ExternalName("example.org".into()))
        );
        assert_eq!(service_record(&Service::default()), None, "no spec");
    }

    #[test]
    fn slices_as_coredns_reads_them() {
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    SERVICE_NAME_LABEL.to_string(),
                    "web".to_string(),
                )])),
                ..meta("ns", "web-x1")
            },
            address_type: "IPv4".into(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: Some(8080),
                ..Default::default()
            }]),
            endpoints: vec![
                Endpoint {
                    addresses: vec!["10.1.0.1".into()],
                    hostname: Some("web-0".into()),
                    zone: Some("us-west-2a".into()),
                    target_ref: Some(ObjectReference {
                        name: Some("web-0".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Endpoint {
                    addresses: vec!["10.1.0.2".into(), "not-an-ip.example".into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(false),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ],
        };
        assert_eq!(
            slice_record(&slice),
            SliceRecord {
                namespace: "ns".into(),
                name: "web-x1".into(),
                service: Some("web".into()),
                ports: vec![PortRecord {
                    name: Some("http".into()),
                    protocol: Some("TCP".into()),
                    port: Some(8080),
                }],
                endpoints: vec![
                    EndpointRecord {
                        addresses: vec![ip("10.1.0.1")],
                        ready: None,
                        hostname: Some("web-0".into()),
                        target_name: Some("web-0".into()),
                        zone: Some("us-west-2a".into()),
                    },
                    EndpointRecord {
                        addresses: vec![ip("10.1.0.2")],
                        ready: Some(false),
                        hostname: None,
                        target_name: None,
                        zone: None,
                    },
                ],
            }
        );
    }

    #[test]
    fn pods_as_coredns_reads_them() {
        let mut pod = Pod {
            metadata: meta("ns", "web-0"),
            status: Some(PodStatus {
                pod_ip: Some("10.1.0.1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            pod_record(&pod),
            PodRecord {
                namespace: "ns".into(),
                name: "web-0".into(),
                ip: Some(ip("10.1.0.1")),
                terminating: false,
            }
        );
        pod.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert!(pod_record(&pod).terminating);
    }

    #[tokio::test(start_paused = true)]
    async fn pace_is_a_token_bucket() {
        let pace = Pace::new(5.0, 2);
        assert_eq!(pace.take(), Duration::ZERO);
        assert_eq!(pace.take(), Duration::ZERO);
        assert_eq!(pace.take(), Duration::from_millis(200));
        assert_eq!(pace.take(), Duration::from_millis(400));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(pace.take(), Duration::ZERO, "refilled, up to the burst");
        assert_eq!(pace.take(), Duration::ZERO);
        assert_eq!(pace.take(), Duration::from_millis(200));
    }

    fn temp(name: &str, contents: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("nodedns-kube-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }

    fn cfg(connection: Connection) -> KubernetesConfig {
        let file: Arc<str> = Arc::from("Corefile");
        let tokens = crate::lexer::lex(&file, "kubernetes cluster.local").unwrap();
        let mut d = crate::Dispenser::new("kubernetes", &tokens);
        let block = crate::setup::BlockInfo {
            zones: vec!["cluster.local.".into()],
            port: 53,
            server_name: Arc::from("dns://:53"),
            bound: Arc::default(),
        };
        let mut c = super::super::parse(&mut d, &block).unwrap();
        c.connection = connection;
        c.api_max_inflight = 4;
        c
    }

    #[tokio::test]
    async fn clients_from_each_connection() {
        // A kubeconfig and one of its contexts.
        let kubeconfig = temp(
            "kubeconfig",
            b"apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://127.0.0.1:1
contexts:
- name: fake
  context:
    cluster: fake
    user: nobody
users:
- name: nobody
  user:
    token: t0k3n
current-context: fake
",
        );
        let ok = |path: &Path, context: Option<&str>| {
            cfg(Connection::Kubeconfig(KubeconfigFile {
                path: path.to_path_buf(),
                context: context.map(String::from),
            }))
        };
        assert!(client(&ok(&kubeconfig, None)).await.is_ok());
        assert!(client(&ok(&kubeconfig, Some("fake"))).await.is_ok());
        let e = client(&ok(&kubeconfig, Some("nonesuch")))
            .await
            .err()
            .unwrap();
        assert!(e.contains("kubeconfig"), "{e}");
        let garbage = temp("garbage", b"{{{");
        assert!(client(&ok(&garbage, None)).await.is_err());

        // An endpoint with client certificates and a CA.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let tls = TlsFiles {
            cert: temp("client.crt", cert.pem().as_bytes()),
            key: temp("client.key", key.serialize_pem().as_bytes()),
            ca: temp("ca.crt", cert.pem().as_bytes()),
        };
        let endpoint = |url: &str, tls: Option<TlsFiles>| {
            cfg(Connection::Endpoint {
                url: url.into(),
                tls,
            })
        };
        assert!(
            client(&endpoint("https://127.0.0.1:1", Some(tls.clone())))
                .await
                .is_ok()
        );
        assert!(client(&endpoint("http://127.0.0.1:1", None)).await.is_ok());
        let no_ca = TlsFiles {
            ca: temp("empty.crt", b""),
            ..tls
        };
        let e = client(&endpoint("https://127.0.0.1:1", Some(no_ca)))
            .await
            .err()
            .unwrap();
        assert!(e.contains("no certificate"), "{e}");

        // In-cluster, outside a cluster.
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
            let e = client(&cfg(Connection::InCluster)).await.err().unwrap();
            assert!(e.contains("in-cluster"), "{e}");
        }
    }

    // === Against a small fake API server ===

    use axum::body::{Body, Bytes};
    use axum::http::Uri;
    use axum::response::Response;

    type Events = Arc<Mutex<Option<tokio::sync::mpsc::Receiver<String>>>>;

    fn list(kind: &str, api_version: &str, items: &str) -> Response {
        let body = format!(
            r#"{{"kind":"{kind}","apiVersion":"{api_version}","metadata":{{"resourceVersion":"10"}},"items":[{items}]}}"#
        );
        Response::new(Body::from(body))
    }

    const WEB: &str = r#"{"metadata":{"name":"web","namespace":"shop","resourceVersion":"5"},"spec":{"type":"ClusterIP","clusterIP":"10.96.0.7","clusterIPs":["10.96.0.7"],"ports":[{"name":"http","protocol":"TCP","port":80}]}}"#;
    const DB: &str = r#"{"metadata":{"name":"db","namespace":"shop","resourceVersion":"11"},"spec":{"clusterIP":"None","clusterIPs":["None"]}}"#;
    const DB_SLICE: &str = r#"{"metadata":{"name":"db-abcde","namespace":"shop","resourceVersion":"6","labels":{"kubernetes.io/service-name":"db"}},"addressType":"IPv4","ports":[{"name":"pg","protocol":"TCP","port":5432}],"endpoints":[{"addresses":["10.1.0.9"],"hostname":"db-0","conditions":{"ready":true}}]}"#;

    /// Lists, then watches that stay open; the services watch streams
    /// what the test sends.
    async fn fake(uri: Uri, events: Events) -> Response {
        let watching = uri.query().is_some_and(|q| q.contains("watch=true"));
        let path = uri.path();
        if watching {
            let rx = (path == "/api/v1/services")
                .then(|| events.lock().unwrap().take())
                .flatten();
            let stream = futures_util::stream::unfold(rx, |rx| async move {
                match rx {
                    Some(mut rx) => {
                        let line = rx.recv().await?;
                        Some((Ok::<_, std::io::Error>(Bytes::from(line + "\n")), Some(rx)))
                    }
                    None => futures_util::future::pending().await,
                }
            });
            return Response::new(Body::from_stream(stream));
        }
        match path {
            "/api/v1/services" => list("ServiceList", "v1", WEB),
            "/apis/discovery.k8s.io/v1/endpointslices" => {
                list("EndpointSliceList", "discovery.k8s.io/v1", DB_SLICE)
            }
            "/api/v1/namespaces" => list(
                "NamespaceList",
                "v1",
                r#"{"metadata":{"name":"shop","resourceVersion":"3"}}"#,
            ),
            _ => {
                let mut r = Response::new(Body::from("not found"));
                *r.status_mut() = http::StatusCode::NOT_FOUND;
                r
            }
        }
    }

    /// The store syncs from the lists, answers, and follows a watch event.
    #[tokio::test]
    async fn syncs_from_an_api_server_and_follows_its_watch() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let events: Events = Arc::new(Mutex::new(Some(rx)));
        let app = axum::Router::new().fallback(move |uri: Uri| fake(uri, Arc::clone(&events)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(crate::pkg::http::serve("fake-api", listener, app, stopped));

        let config = cfg(Connection::Endpoint {
            url: format!("http://{addr}"),
            tls: None,
        });
        let k = crate::kubernetes::Kubernetes::new(&config, None);
        let ready = k.readiness();
        let task = tokio::spawn(run(Arc::clone(k.config()), Arc::downgrade(k.store())));
        let limit = Duration::from_secs(10);
        crate::pkg::test::wait_until("the first sync", limit, || ready.ready()).await;
        let ask = |name: &str, qtype| {
            let raw = crate::pkg::test::query(name, qtype);
            let out = crate::pkg::test::run(
                &k,
                &raw,
                crate::request::Transport::Udp,
                crate::pkg::test::Stub::Rcode(hickory_proto::op::ResponseCode::Refused),
            );
            let m = out.msg.expect("answered");
            (
                m.metadata.response_code,
                m.answers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
        };
        use hickory_proto::op::ResponseCode::{NXDomain, NoError};
        use hickory_proto::rr::RecordType::A;
        assert_eq!(
            ask("web.shop.svc.cluster.local.", A),
            (
                NoError,
                vec!["web.shop.svc.cluster.local. 5 IN A 10.96.0.7".to_string()]
            )
        );
        // The slice came before its service: not a name yet.
        assert_eq!(ask("db.shop.svc.cluster.local.", A).0, NXDomain);
        tx.send(format!(
            r#"{{"type":"ADDED","object":{{"kind":"Service","apiVersion":"v1",{}}}"#,
            &DB[1..]
        ))
        .await
        .unwrap();
        crate::pkg::test::wait_until("the added service", limit, || {
            ask("db.shop.svc.cluster.local.", A).0 == NoError
        })
        .await;
        assert_eq!(
            ask("db-0.db.shop.svc.cluster.local.", A),
            (
                NoError,
                vec!["db-0.db.shop.svc.cluster.local. 5 IN A 10.1.0.9".to_string()]
            )
        );
        tx.send(format!(
            r#"{{"type":"DELETED","object":{{"kind":"Service","apiVersion":"v1",{}}}"#,
            &WEB[1..]
        ))
        .await
        .unwrap();
        crate::pkg::test::wait_until("the deleted service", limit, || {
            ask("web.shop.svc.cluster.local.", A).0 == NXDomain
        })
        .await;
        task.abort();
        let _ = stop.send(());
        let _ = server.await;
    }
}
