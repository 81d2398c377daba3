//! The resources the fake serves and builders for realistic objects of
//! each, in the API's JSON (what `kubectl get -o json` shows, less
//! `managedFields`). The fake stamps `uid`, `resourceVersion` and
//! `creationTimestamp` when an object is applied.

use serde_json::{Map, Value, json};

/// A resource type the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `v1` `services`.
    Services,
    /// `discovery.k8s.io/v1` `endpointslices`.
    EndpointSlices,
    /// `v1` `pods`.
    Pods,
    /// `v1` `namespaces` (cluster-scoped).
    Namespaces,
    /// `multicluster.x-k8s.io/v1alpha1` `serviceimports` (a custom
    /// resource of the Multi-Cluster Services API).
    ServiceImports,
}

impl Resource {
    /// Every resource, in a fixed order.
    pub const ALL: [Self; 5] = [
        Self::Services,
        Self::EndpointSlices,
        Self::Pods,
        Self::Namespaces,
        Self::ServiceImports,
    ];

    /// How many there are.
    pub(super) const COUNT: usize = Self::ALL.len();

    /// The plural name in URLs (`services`).
    pub fn plural(self) -> &'static str {
        match self {
            Self::Services => "services",
            Self::EndpointSlices => "endpointslices",
            Self::Pods => "pods",
            Self::Namespaces => "namespaces",
            Self::ServiceImports => "serviceimports",
        }
    }

    /// `apiVersion` of its objects.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::EndpointSlices => "discovery.k8s.io/v1",
            Self::ServiceImports => "multicluster.x-k8s.io/v1alpha1",
            _ => "v1",
        }
    }

    /// Whether it is a custom resource (served from a CRD: list items
    /// keep their `kind` and `apiVersion`).
    pub fn custom(self) -> bool {
        self == Self::ServiceImports
    }

    /// `kind` of its objects.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Services => "Service",
            Self::EndpointSlices => "EndpointSlice",
            Self::Pods => "Pod",
            Self::Namespaces => "Namespace",
            Self::ServiceImports => "ServiceImport",
        }
    }

    /// Whether its objects live in a namespace.
    pub fn namespaced(self) -> bool {
        self != Self::Namespaces
    }

    /// The collection across all namespaces (`/api/v1/services`).
    pub fn path(self) -> String {
        format!("{}/{}", self.prefix(), self.plural())
    }

    /// The collection in one namespace
    /// (`/api/v1/namespaces/NS/services`); for namespaces, as
    /// [`Self::path`].
    pub fn namespaced_path(self, namespace: &str) -> String {
        if self.namespaced() {
            format!("{}/namespaces/{namespace}/{}", self.prefix(), self.plural())
        } else {
            self.path()
        }
    }

    /// `/api/v1`, `/apis/discovery.k8s.io/v1` or
    /// `/apis/multicluster.x-k8s.io/v1alpha1`.
    pub(super) fn prefix(self) -> &'static str {
        match self {
            Self::EndpointSlices => "/apis/discovery.k8s.io/v1",
            Self::ServiceImports => "/apis/multicluster.x-k8s.io/v1alpha1",
            _ => "/api/v1",
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            Self::Services => 0,
            Self::EndpointSlices => 1,
            Self::Pods => 2,
            Self::Namespaces => 3,
            Self::ServiceImports => 4,
        }
    }

    pub(super) fn from_plural(group_version: &str, plural: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.api_version() == group_version && r.plural() == plural)
    }

    pub(super) fn singular(self) -> &'static str {
        match self {
            Self::Services => "service",
            Self::EndpointSlices => "endpointslice",
            Self::Pods => "pod",
            Self::Namespaces => "namespace",
            Self::ServiceImports => "serviceimport",
        }
    }
}

/// An object to apply: its resource and its JSON. The builders below
/// convert into it; [`Object::raw`] takes any JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Its resource.
    pub resource: Resource,
    /// Its JSON, with `metadata.name` (and `metadata.namespace` when
    /// namespaced).
    pub json: Value,
}

impl Object {
    /// Any JSON as an object of `resource`; `kind` and `apiVersion` are
    /// set to the resource's.
    pub fn raw(resource: Resource, mut json: Value) -> Self {
        if let Some(m) = json.as_object_mut() {
            m.insert("apiVersion".into(), resource.api_version().into());
            m.insert("kind".into(), resource.kind().into());
        }
        Self { resource, json }
    }

    /// `metadata.namespace`, or "" for a cluster-scoped object.
    pub fn namespace(&self) -> &str {
        meta_str(&self.json, "namespace")
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        meta_str(&self.json, "name")
    }
}

pub(super) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn metadata(namespace: Option<&str>, name: &str) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), name.into());
    if let Some(ns) = namespace {
        m.insert("namespace".into(), ns.into());
    }
    Value::Object(m)
}

fn set_map_entry(obj: &mut Value, path: &[&str], key: &str, value: Value) {
    let mut cur = obj;
    for p in path {
        let Some(m) = cur.as_object_mut() else { return };
        cur = m.entry(*p).or_insert_with(|| Value::Object(Map::new()));
    }
    if let Some(m) = cur.as_object_mut() {
        m.insert(key.to_string(), value);
    }
}

fn push(obj: &mut Value, path: &[&str], value: Value) {
    let mut cur = obj;
    for p in path {
        let Some(m) = cur.as_object_mut() else { return };
        cur = m.entry(*p).or_insert_with(|| Value::Array(Vec::new()));
    }
    if let Some(a) = cur.as_array_mut() {
        a.push(value);
    }
}

fn family(ip: &str) -> &'static str {
    if ip.contains(':') { "IPv6" } else { "IPv4" }
}

macro_rules! common {
    ($t:ident, $r:expr) => {
        impl $t {
            /// Adds a label.
            pub fn label(mut self, key: &str, value: &str) -> Self {
                set_map_entry(&mut self.0, &["metadata", "labels"], key, value.into());
                self
            }
            /// Adds an annotation.
            pub fn annotation(mut self, key: &str, value: &str) -> Self {
                set_map_entry(&mut self.0, &["metadata", "annotations"], key, value.into());
                self
            }
            /// Sets `metadata.deletionTimestamp` (as the API does on a
            /// graceful delete, before the object goes).
            pub fn deleting(mut self) -> Self {
                set_map_entry(
                    &mut self.0,
                    &["metadata"],
                    "deletionTimestamp",
                    super::wire::timestamp().into(),
                );
                self
            }
            /// Changes any field: `f` gets the whole JSON.
            pub fn with(mut self, f: impl FnOnce(&mut Value)) -> Self {
                f(&mut self.0);
                self
            }
            /// The JSON so far.
            pub fn json(&self) -> &Value {
                &self.0
            }
        }

        impl From<$t> for Object {
            fn from(v: $t) -> Object {
                Object {
                    resource: $r,
                    json: v.0,
                }
            }
        }
    };
}

// === Service ===

/// A `v1` Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service(Value);
common!(Service, Resource::Services);

impl Service {
    fn base(namespace: &str, name: &str, spec: Value) -> Self {
        Self(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(Some(namespace), name),
            "spec": spec,
            "status": {"loadBalancer": {}},
        }))
    }

    /// A ClusterIP service with one IP (single stack).
    pub fn cluster_ip(namespace: &str, name: &str, ip: &str) -> Self {
        Self::cluster_ips(namespace, name, &[ip])
    }

    /// A ClusterIP service with these IPs: two of different families
    /// make it dual-stack (`ipFamilyPolicy: RequireDualStack`), the
    /// first is `clusterIP`.
    pub fn cluster_ips(namespace: &str, name: &str, ips: &[&str]) -> Self {
        let families: Vec<&str> = ips.iter().map(|ip| family(ip)).collect();
        let policy = if ips.len() > 1 {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        Self::base(
            namespace,
            name,
            json!({
                "type": "ClusterIP",
                "clusterIP": ips.first().copied().unwrap_or(""),
                "clusterIPs": ips,
                "ipFamilies": families,
                "ipFamilyPolicy": policy,
                "internalTrafficPolicy": "Cluster",
                "sessionAffinity": "None",
                "ports": [],
                "selector": {"app": name},
            }),
        )
    }

    /// A headless service (`clusterIP: None`).
    pub fn headless(namespace: &str, name: &str) -> Self {
        Self::base(
            namespace,
            name,
            json!({
                "type": "ClusterIP",
                "clusterIP": "None",
                "clusterIPs": ["None"],
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster",
                "sessionAffinity": "None",
                "ports": [],
                "selector": {"app": name},
            }),
        )
    }

    /// An ExternalName service pointing at `target`.
    pub fn external_name(namespace: &str, name: &str, target: &str) -> Self {
        Self::base(
            namespace,
            name,
            json!({
                "type": "ExternalName",
                "externalName": target,
                "sessionAffinity": "None",
            }),
        )
    }

    /// Makes it `type: LoadBalancer` with this ingress IP in its status.
    pub fn load_balancer(mut self, ingress_ip: &str) -> Self {
        set_map_entry(&mut self.0, &["spec"], "type", "LoadBalancer".into());
        set_map_entry(
            &mut self.0,
            &["status"],
            "loadBalancer",
            json!({"ingress": [{"ip": ingress_ip, "ipMode": "VIP"}]}),
        );
        self
    }

    /// Adds a port (`targetPort` the same number); `protocol` is `TCP`,
    /// `UDP` or `SCTP`.
    pub fn port(mut self, name: &str, protocol: &str, port: u16) -> Self {
        let mut p = json!({"protocol": protocol, "port": port, "targetPort": port});
        if !name.is_empty() {
            set_map_entry(&mut p, &[], "name", name.into());
        }
        push(&mut self.0, &["spec", "ports"], p);
        self
    }
}

// === EndpointSlice ===

/// A `discovery.k8s.io/v1` EndpointSlice, as the endpointslice
/// controller makes them: labelled `kubernetes.io/service-name` and
/// owned by its Service (whose `uid` the fake fills in when the Service
/// exists).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSlice(Value);
common!(EndpointSlice, Resource::EndpointSlices);

impl EndpointSlice {
    /// An empty IPv4 slice `name` for `service`.
    pub fn new(namespace: &str, service: &str, name: &str) -> Self {
        let mut meta = metadata(Some(namespace), name);
        set_map_entry(&mut meta, &[], "generateName", format!("{service}-").into());
        set_map_entry(
            &mut meta,
            &[],
            "labels",
            json!({
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            }),
        );
        set_map_entry(
            &mut meta,
            &[],
            "ownerReferences",
            json!([{
                "apiVersion": "v1",
                "kind": "Service",
                "name": service,
                "uid": "",
                "controller": true,
                "blockOwnerDeletion": true,
            }]),
        );
        Self(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": meta,
            "addressType": "IPv4",
            "endpoints": [],
            "ports": [],
        }))
    }

    /// Makes it an IPv6 slice (`addressType: IPv6`).
    pub fn ipv6(mut self) -> Self {
        set_map_entry(&mut self.0, &[], "addressType", "IPv6".into());
        self
    }

    /// Adds an endpoint; a pod `targetRef` gets the slice's namespace.
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        let mut ep = endpoint.0;
        let ns = meta_str(&self.0, "namespace").to_string();
        if let Some(r) = ep.get_mut("targetRef").and_then(Value::as_object_mut) {
            r.insert("namespace".into(), ns.into());
        }
        push(&mut self.0, &["endpoints"], ep);
        self
    }

    /// Adds a port; `protocol` is `TCP`, `UDP` or `SCTP`.
    pub fn port(mut self, name: &str, protocol: &str, port: u16) -> Self {
        push(
            &mut self.0,
            &["ports"],
            json!({"name": name, "protocol": protocol, "port": port}),
        );
        self
    }

    /// An empty IPv4 slice `name` imported from `cluster` for the
    /// ServiceImport `service`, as an MCS controller makes them: labelled
    /// `multicluster.kubernetes.io/service-name` and
    /// `multicluster.kubernetes.io/source-cluster` (not
    /// `kubernetes.io/service-name`), owned by no Service.
    pub fn imported(namespace: &str, service: &str, cluster: &str, name: &str) -> Self {
        let mut meta = metadata(Some(namespace), name);
        set_map_entry(
            &mut meta,
            &[],
            "labels",
            json!({
                "multicluster.kubernetes.io/service-name": service,
                "multicluster.kubernetes.io/source-cluster": cluster,
                "endpointslice.kubernetes.io/managed-by": "mcs-controller.example.org",
            }),
        );
        Self(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": meta,
            "addressType": "IPv4",
            "endpoints": [],
            "ports": [],
        }))
    }
}

/// One endpoint of an [`EndpointSlice`]: ready and serving unless told.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint(Value);

impl Endpoint {
    /// An endpoint at `address`.
    pub fn new(address: &str) -> Self {
        Self(json!({
            "addresses": [address],
            "conditions": {"ready": true, "serving": true, "terminating": false},
        }))
    }
    /// Sets `hostname` (a StatefulSet pod's, or a pod's `spec.hostname`).
    pub fn hostname(mut self, hostname: &str) -> Self {
        set_map_entry(&mut self.0, &[], "hostname", hostname.into());
        self
    }
    /// Sets `nodeName`.
    pub fn node(mut self, node: &str) -> Self {
        set_map_entry(&mut self.0, &[], "nodeName", node.into());
        self
    }
    /// Sets `zone`.
    pub fn zone(mut self, zone: &str) -> Self {
        set_map_entry(&mut self.0, &[], "zone", zone.into());
        self
    }
    /// Sets `targetRef` to this pod (in the slice's namespace).
    pub fn pod(mut self, name: &str) -> Self {
        set_map_entry(
            &mut self.0,
            &[],
            "targetRef",
            json!({"kind": "Pod", "name": name}),
        );
        self
    }
    /// Not ready and not serving.
    pub fn not_ready(mut self) -> Self {
        set_map_entry(
            &mut self.0,
            &[],
            "conditions",
            json!({"ready": false, "serving": false, "terminating": false}),
        );
        self
    }
    /// No conditions known (`conditions: {}`): the API's "unknown", which
    /// consumers take as ready.
    pub fn conditions_unknown(mut self) -> Self {
        set_map_entry(&mut self.0, &[], "conditions", json!({}));
        self
    }
    /// Terminating: not ready, still serving.
    pub fn terminating(mut self) -> Self {
        set_map_entry(
            &mut self.0,
            &[],
            "conditions",
            json!({"ready": false, "serving": true, "terminating": true}),
        );
        self
    }
}

// === ServiceImport ===

/// A `multicluster.x-k8s.io/v1alpha1` ServiceImport (MCS API v0.3 and
/// later: `spec.type`, `spec.ips`, `spec.ports`, `status.clusters`), as an
/// MCS controller makes them.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceImport(Value);
common!(ServiceImport, Resource::ServiceImports);

impl ServiceImport {
    fn base(namespace: &str, name: &str, spec: Value) -> Self {
        Self(json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceImport",
            "metadata": metadata(Some(namespace), name),
            "spec": spec,
            "status": {"clusters": []},
        }))
    }

    /// A `ClusterSetIP` import with these IPs (one per family).
    pub fn cluster_set_ip(namespace: &str, name: &str, ips: &[&str]) -> Self {
        let families: Vec<&str> = ips.iter().map(|ip| family(ip)).collect();
        Self::base(
            namespace,
            name,
            json!({
                "type": "ClusterSetIP",
                "ips": ips,
                "ipFamilies": families,
                "sessionAffinity": "None",
                "ports": [],
            }),
        )
    }

    /// A `Headless` import.
    pub fn headless(namespace: &str, name: &str) -> Self {
        Self::base(
            namespace,
            name,
            json!({
                "type": "Headless",
                "ipFamilies": ["IPv4"],
                "sessionAffinity": "None",
                "ports": [],
            }),
        )
    }

    /// Adds a port; `protocol` is `TCP`, `UDP` or `SCTP`.
    pub fn port(mut self, name: &str, protocol: &str, port: u16) -> Self {
        let mut p = json!({"protocol": protocol, "port": port});
        if !name.is_empty() {
            set_map_entry(&mut p, &[], "name", name.into());
        }
        push(&mut self.0, &["spec", "ports"], p);
        self
    }

    /// Lists `cluster` among the exporting clusters (`status.clusters`).
    pub fn cluster(mut self, cluster: &str) -> Self {
        push(
            &mut self.0,
            &["status", "clusters"],
            json!({"cluster": cluster}),
        );
        self
    }
}

// === Pod ===

/// A `v1` Pod, running.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod(Value);
common!(Pod, Resource::Pods);

impl Pod {
    /// A running pod with one IP on `node-1`.
    pub fn new(namespace: &str, name: &str, ip: &str) -> Self {
        Self::ips(namespace, name, &[ip])
    }

    /// A running pod with these IPs (dual-stack when two); `podIP` is
    /// the first.
    pub fn ips(namespace: &str, name: &str, ips: &[&str]) -> Self {
        let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        let mut status = json!({
            "phase": "Running",
            "hostIP": "192.0.2.1",
            "hostIPs": [{"ip": "192.0.2.1"}],
            "podIPs": pod_ips,
            "conditions": [{"type": "Ready", "status": "True"}],
        });
        if let Some(ip) = ips.first() {
            set_map_entry(&mut status, &[], "podIP", (*ip).into());
        }
        Self(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata(Some(namespace), name),
            "spec": {
                "nodeName": "node-1",
                "restartPolicy": "Always",
                "schedulerName": "default-scheduler",
                "serviceAccountName": "default",
                "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
            },
            "status": status,
        }))
    }

    /// Sets `spec.nodeName`.
    pub fn node(mut self, node: &str) -> Self {
        set_map_entry(&mut self.0, &["spec"], "nodeName", node.into());
        self
    }
    /// Sets `spec.hostname`.
    pub fn hostname(mut self, hostname: &str) -> Self {
        set_map_entry(&mut self.0, &["spec"], "hostname", hostname.into());
        self
    }
    /// Sets `spec.subdomain`.
    pub fn subdomain(mut self, subdomain: &str) -> Self {
        set_map_entry(&mut self.0, &["spec"], "subdomain", subdomain.into());
        self
    }
    /// Sets `status.phase` (`Pending`, `Running`, `Succeeded`, `Failed`).
    pub fn phase(mut self, phase: &str) -> Self {
        set_map_entry(&mut self.0, &["status"], "phase", phase.into());
        self
    }
}

// === Namespace ===

/// A `v1` Namespace, active. The fake adds the label
/// `kubernetes.io/metadata.name` as the API server does.
#[derive(Debug, Clone, PartialEq)]
pub struct Namespace(Value);
common!(Namespace, Resource::Namespaces);

impl Namespace {
    /// An active namespace.
    pub fn new(name: &str) -> Self {
        Self(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": metadata(None, name),
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }))
    }
    /// `status.phase: Terminating`.
    pub fn terminating(mut self) -> Self {
        set_map_entry(&mut self.0, &["status"], "phase", "Terminating".into());
        self
    }
}
