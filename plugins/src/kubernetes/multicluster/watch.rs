//! The multicluster watches: ServiceImports (`multicluster.x-k8s.io/v1alpha1`)
//! and the EndpointSlices labelled `multicluster.kubernetes.io/service-name`,
//! feeding the [`McStore`], as CoreDNS 1.14.7's `svcImportController` and
//! `mcEpController` do.
//!
//! They run beside the cluster watches, in the task `watched.rs` keeps
//! (carried over a reload with it), with their own client and request
//! budget (as CoreDNS's MCS clientset has), and the same mechanics: `kube::runtime::watcher` lists, then watches with
//! bookmarks; a `410 Gone` relists (and what the new list does not
//! mention is deleted); errors back off exponentially. The store is ready
//! once both watches finished their first list.
//!
//! Selection, as CoreDNS: the slices by `labels` plus the
//! `multicluster.kubernetes.io/service-name` label existing; the imports
//! by `namespace_labels` (CoreDNS passes its namespace selector to the
//! ServiceImport list; an import without those labels is not seen). With
//! a single `namespaces` entry, both are watched in that namespace only.
//!
//! ServiceImport is a custom resource, so its type is written here: only
//! the fields DNS reads (`spec.type`, `spec.ips`, `spec.ports`), every one
//! optional, so no object of the MCS API's versions fails to read.

use std::borrow::Cow;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::serde::Deserialize;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};

use super::super::setup::KubernetesConfig;
use super::super::store::PortRecord;
use super::super::watch::{client, slice_record};
use super::store::{ImportKind, ImportRecord, McBatch, McKind, McSliceRecord, McStore};
use super::{SERVICE_NAME_LABEL, SOURCE_CLUSTER_LABEL};

/// Events applied in one batch at most (then the batch is published).
const MAX_BATCH: usize = 1024;
/// Waits between attempts to build a client: doubling up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

// === The ServiceImport type ===

/// A `multicluster.x-k8s.io/v1alpha1` ServiceImport, as much as DNS reads.
/// (serde is the one k8s-openapi and kube read the API with.)
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(crate = "k8s_openapi::serde")]
pub(crate) struct ServiceImport {
    #[serde(default)]
    pub(crate) metadata: ObjectMeta,
    pub(crate) spec: Option<ServiceImportSpec>,
}

/// `spec` of a ServiceImport.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(crate = "k8s_openapi::serde")]
pub(crate) struct ServiceImportSpec {
    /// `ClusterSetIP` or `Headless`.
    #[serde(rename = "type")]
    pub(crate) type_: Option<String>,
    /// The ClusterSet IPs (at most one per family).
    pub(crate) ips: Option<Vec<String>>,
    pub(crate) ports: Option<Vec<ServiceImportPort>>,
}

/// A port of a ServiceImport.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(crate = "k8s_openapi::serde")]
pub(crate) struct ServiceImportPort {
    pub(crate) name: Option<String>,
    pub(crate) protocol: Option<String>,
    pub(crate) port: Option<i32>,
}

impl Resource for ServiceImport {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "ServiceImport".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "multicluster.x-k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "serviceimports".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

// === The task ===

/// The task that connects and runs both multicluster watches, until the
/// store is dropped or the task aborted.
pub(crate) fn run(cfg: Arc<KubernetesConfig>, store: Weak<McStore>) -> BoxFuture<'static, ()> {
    async move {
        let mut wait = RETRY_FIRST;
        let client = loop {
            match client(&cfg).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "kubernetes: multicluster: cannot connect to the API server");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                    if store.strong_count() == 0 {
                        return;
                    }
                }
            }
        };
        let single_ns = (cfg.namespaces.len() == 1)
            .then(|| cfg.namespaces.iter().next().cloned())
            .flatten();
        let api = |client: &Client| -> (Api<ServiceImport>, Api<EndpointSlice>) {
            match &single_ns {
                Some(ns) => (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                ),
                None => (Api::all(client.clone()), Api::all(client.clone())),
            }
        };
        let (imports, slices) = api(&client);
        let import_config = match &cfg.namespace_labels {
            Some(sel) => watcher::Config::default().labels(&sel.to_query()),
            None => watcher::Config::default(),
        };
        let slice_config = watcher::Config::default().labels(&slice_selector(
            cfg.labels.as_ref().map(super::super::Selector::to_query),
        ));
        futures_util::future::join(
            watch(
                store.clone(),
                McKind::ServiceImports,
                imports,
                import_config,
                apply_import,
                delete_import,
            ),
            watch(
                store,
                McKind::EndpointSlices,
                slices,
                slice_config,
                apply_slice,
                delete_slice,
            ),
        )
        .await;
    }
    .boxed()
}

/// The multicluster EndpointSlices' selector: `labels` and the
/// service-name label existing.
pub(crate) fn slice_selector(labels: Option<String>) -> String {
    match labels {
        Some(l) if !l.is_empty() => format!("{l},{SERVICE_NAME_LABEL}"),
        _ => SERVICE_NAME_LABEL.to_string(),
    }
}

/// One watch: its events applied to the store in batches.
fn watch<K>(
    store: Weak<McStore>,
    kind: McKind,
    api: Api<K>,
    config: watcher::Config,
    apply: fn(&mut McBatch<'_>, &K),
    delete: fn(&mut McBatch<'_>, &K),
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
        while let Some(first) = events.next().await {
            let Some(store) = store.upgrade() else { return };
            {
                let mut batch = store.batch();
                handle(&mut batch, kind, first, apply, delete);
                for _ in 1..MAX_BATCH {
                    match events.next().now_or_never() {
                        Some(Some(ev)) => handle(&mut batch, kind, ev, apply, delete),
                        Some(None) => return,
                        None => break,
                    }
                }
            }
            if !was_synced && store.synced() {
                was_synced = true;
                tracing::info!(stats = ?store.stats(), "kubernetes: multicluster: synced with the API server");
            }
        }
    }
    .boxed()
}

fn handle<K: Resource>(
    batch: &mut McBatch<'_>,
    kind: McKind,
    ev: Result<Event<K>, watcher::Error>,
    apply: fn(&mut McBatch<'_>, &K),
    delete: fn(&mut McBatch<'_>, &K),
) {
    match ev {
        Ok(Event::Init) => batch.begin_resync(kind),
        Ok(Event::InitApply(o) | Event::Apply(o)) => apply(batch, &o),
        Ok(Event::InitDone) => batch.finish_resync(kind),
        Ok(Event::Delete(o)) => delete(batch, &o),
        Err(e) => {
            tracing::warn!(?kind, error = %e, "kubernetes: multicluster: watch failed; retrying")
        }
    }
}

fn names<K: Resource>(o: &K) -> (&str, &str) {
    let m = o.meta();
    (
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
    )
}

fn apply_import(b: &mut McBatch<'_>, s: &ServiceImport) {
    b.apply_import(import_record(s));
}

fn delete_import(b: &mut McBatch<'_>, s: &ServiceImport) {
    let (ns, name) = names(s);
    b.delete_import(ns, name);
}

fn apply_slice(b: &mut McBatch<'_>, s: &EndpointSlice) {
    b.apply_slice(mc_slice_record(s));
}

fn delete_slice(b: &mut McBatch<'_>, s: &EndpointSlice) {
    let (ns, name) = names(s);
    b.delete_slice(ns, name);
}

// === Objects to records ===

/// A ServiceImport as the store takes it (CoreDNS's `ToServiceImport`);
/// a port without a number is port 0, as Go reads it.
pub(crate) fn import_record(s: &ServiceImport) -> ImportRecord {
    let (namespace, name) = names(s);
    let spec = s.spec.clone().unwrap_or_default();
    ImportRecord {
        namespace: namespace.to_string(),
        name: name.to_string(),
        kind: ImportKind::from_spec(
            spec.type_.as_deref(),
            spec.ips.as_deref().unwrap_or_default(),
        ),
        ports: spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| PortRecord {
                name: p.name,
                protocol: p.protocol,
                port: Some(p.port.unwrap_or(0)),
            })
            .collect(),
    }
}

/// A multicluster EndpointSlice as the store takes it (CoreDNS's
/// `EndpointSliceToMultiClusterEndpoints`): the slice as the cluster
/// store reads it, tied to its import and its source cluster by labels.
pub(crate) fn mc_slice_record(s: &EndpointSlice) -> McSliceRecord {
    let r = slice_record(s);
    let label = |k: &str| s.metadata.labels.as_ref().and_then(|l| l.get(k)).cloned();
    McSliceRecord {
        namespace: r.namespace,
        name: r.name,
        service: label(SERVICE_NAME_LABEL),
        cluster: label(SOURCE_CLUSTER_LABEL),
        ports: r.ports,
        endpoints: r.endpoints,
    }
}
