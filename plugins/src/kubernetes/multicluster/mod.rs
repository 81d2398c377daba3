//! `multicluster ZONES...`: the Multi-Cluster Services API (KEP-1645)
//! names, as CoreDNS 1.14.7's kubernetes plugin answers them.
//!
//! In a multicluster zone (`clusterset.local`, say), services are not the
//! cluster's Services but its ServiceImports (`multicluster.x-k8s.io/v1alpha1`):
//!
//! - `SERVICE.NS.svc.ZONE` A/AAAA: a `ClusterSetIP` import's `spec.ips`; a
//!   `Headless` import's ready endpoints, from the EndpointSlices labelled
//!   `multicluster.kubernetes.io/service-name: SERVICE`;
//! - `ENDPOINT.CLUSTER.SERVICE.NS.svc.ZONE`: one endpoint (its hostname,
//!   else its pod's name with `endpoint_pod_names`, else its dashed
//!   address) of the slices whose `multicluster.kubernetes.io/source-cluster`
//!   is `CLUSTER`; that is what SRV targets of headless imports are;
//! - SRV, TXT, NS, SOA, pods and the rest as in the cluster zone; the SOA
//!   serial is the multicluster one (see `store.rs`).
//!
//! - `store.rs`: the imports and their slices, read without a lock;
//! - `answer.rs`: the records, hooked into the cluster zone's answer path;
//! - `watch.rs`: the ServiceImport type and the two watches.

mod answer;
mod store;
#[cfg(test)]
mod tests;
mod watch;

pub use store::{ImportKind, ImportRecord, McBatch, McKind, McSliceRecord, McStats, McStore};
pub(crate) use watch::run;

use std::sync::Arc;

use crate::pkg::zones;

use super::store::Store;

/// The label that ties a multicluster EndpointSlice to its ServiceImport.
pub(crate) const SERVICE_NAME_LABEL: &str = "multicluster.kubernetes.io/service-name";
/// The label that names the cluster a multicluster EndpointSlice came from.
pub(crate) const SOURCE_CLUSTER_LABEL: &str = "multicluster.kubernetes.io/source-cluster";

/// The multicluster zones and what they answer from.
#[derive(Debug)]
pub(crate) struct Multicluster {
    /// Lower-cased wire form.
    zones: Vec<Vec<u8>>,
    pub(crate) store: Arc<McStore>,
}

impl Multicluster {
    /// For the zones of `multicluster` (normalised), answering from
    /// `carried` (the store a reload carried over, with its watch) or a new
    /// store beside `cluster`; `None` without any zone.
    pub(crate) fn new(
        zones: &[String],
        carried: Option<Arc<McStore>>,
        cluster: &Arc<Store>,
    ) -> Option<Self> {
        let zones: Vec<Vec<u8>> = zones.iter().filter_map(|z| zones::to_wire(z)).collect();
        (!zones.is_empty()).then(|| Self {
            zones,
            store: carried.unwrap_or_else(|| McStore::new(Arc::clone(cluster))),
        })
    }

    /// Whether `zone` (wire form, any letter case) is a multicluster zone
    /// or below one (CoreDNS's `isMultiClusterZone`).
    pub(crate) fn serves(&self, zone: &[u8]) -> bool {
        self.zones.iter().any(|z| {
            let mut pos = 0;
            while let Some(rest) = zone.get(pos..) {
                if rest.eq_ignore_ascii_case(z) {
                    return true;
                }
                match rest.first() {
                    Some(&len) if len != 0 => pos += 1 + usize::from(len),
                    _ => return false,
                }
            }
            false
        })
    }
}
