//! Tables: the Corefile syntax (CoreDNS's `setup_test.go`,
//! `setup_ttl_test.go`), the store, and answers over a store built in
//! memory (CoreDNS's `handler_test.go`, `handler_case_test.go`,
//! `handler_pod_*_test.go`, `handler_ignore_emptyservice_test.go`,
//! `kubernetes_apex_test.go`, `reverse_test.go`, `ns_test.go`,
//! `kubernetes_test.go`, `parse_test.go`), with the same objects.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Record, RecordType};

use super::answer::{QName, Space, address_from_reverse, parse_request};
use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;
use crate::pkg::test::{Stub, query, query_edns, run, setup as run_setup};
use crate::plugin::{Chain, RefreshDone};
use crate::request::{Transport, name_to_wire};
use crate::setup::BlockInfo;

// === Setup ===

fn block(zones: &[&str]) -> BlockInfo {
    BlockInfo {
        zones: zones.iter().map(|z| z.to_string()).collect(),
        port: 53,
        server_name: Arc::from("dns://:53"),
        bound: Arc::default(),
    }
}

pub(super) fn parse_text(text: &str) -> Result<KubernetesConfig, String> {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).map_err(|e| e.to_string())?;
    let mut d = Dispenser::new("kubernetes", &tokens);
    parse(&mut d, &block(&["cluster.local."])).map_err(|e| e.to_string())
}

pub(super) fn config(zones: &[&str]) -> KubernetesConfig {
    let zones: Vec<String> = zones.iter().map(|z| z.to_string()).collect();
    KubernetesConfig {
        primary_zone: zones[0].clone(),
        zones,
        connection: Connection::InCluster,
        api_qps: 0.0,
        api_burst: 0,
        api_max_inflight: 0,
        namespaces: Default::default(),
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

#[test]
fn startup_timeout_is_a_go_duration_and_defaults_to_five_seconds() {
    let cfg = parse_text("kubernetes cluster.local {\n startup_timeout 1m30s\n}").unwrap();
    assert_eq!(cfg.startup_timeout, Duration::from_secs(90));
    let cfg = parse_text("kubernetes cluster.local {\n startup_timeout 250ms\n}").unwrap();
    assert_eq!(cfg.startup_timeout, Duration::from_millis(250));
    let cfg = parse_text("kubernetes cluster.local").unwrap();
    assert_eq!(cfg.startup_timeout, Duration::from_secs(5));
}

fn fall(text: &str) -> Fall {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).unwrap();
    let mut d = Dispenser::new("kubernetes", &tokens);
    assert!(d.next());
    Fall::parse(&mut d).unwrap()
}

/// A file that exists, for `tls` and `kubeconfig`.
fn existing() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml").to_string()
}

#[test]
fn setup_table() {
    let with = |zones: &[&str], f: &dyn Fn(&mut KubernetesConfig)| {
        let mut c = config(zones);
        f(&mut c);
        Ok(c)
    };
    let file = existing();
    let sel = |s: &str| Some(Selector::parse(s).unwrap());
    let cases: Vec<(String, Result<KubernetesConfig, String>)> = vec![
        // The block's zones when none are given.
        ("kubernetes".into(), with(&["cluster.local."], &|_| {})),
        (
            "kubernetes coredns.local".into(),
            with(&["coredns.local."], &|_| {}),
        ),
        (
            "kubernetes coredns.local test.local".into(),
            with(&["coredns.local.", "test.local."], &|_| {}),
        ),
        (
            "kubernetes coredns.local {\n}".into(),
            with(&["coredns.local."], &|_| {}),
        ),
        // Only the first endpoint is used.
        (
            "kubernetes coredns.local {\n endpoint http://localhost:9090 http://localhost:9091\n}"
                .into(),
            with(&["coredns.local."], &|c| {
                c.connection = Connection::Endpoint {
                    url: "http://localhost:9090".into(),
                    tls: None,
                };
            }),
        ),
        (
            format!("kubernetes coredns.local {{\n endpoint https://k8s:8443\n tls {file} {file} {file}\n}}"),
            with(&["coredns.local."], &|c| {
                c.connection = Connection::Endpoint {
                    url: "https://k8s:8443".into(),
                    tls: Some(TlsFiles {
                        cert: existing().into(),
                        key: existing().into(),
                        ca: existing().into(),
                    }),
                };
            }),
        ),
        // kubeconfig wins over endpoint, as in CoreDNS.
        (
            format!("kubernetes coredns.local {{\n endpoint https://k8s:8443\n kubeconfig {file} ctx\n}}"),
            with(&["coredns.local."], &|c| {
                c.connection = Connection::Kubeconfig(KubeconfigFile {
                    path: existing().into(),
                    context: Some("ctx".into()),
                });
            }),
        ),
        (
            format!("kubernetes coredns.local {{\n kubeconfig {file}\n}}"),
            with(&["coredns.local."], &|c| {
                c.connection = Connection::Kubeconfig(KubeconfigFile {
                    path: existing().into(),
                    context: None,
                });
            }),
        ),
        (
            "kubernetes coredns.local {\n namespaces demo test\n namespaces more\n}".into(),
            with(&["coredns.local."], &|c| {
                c.namespaces = ["demo", "test", "more"].map(String::from).into();
            }),
        ),
        (
            "kubernetes coredns.local {\n labels environment=prod\n}".into(),
            with(&["coredns.local."], &|c| c.labels = sel("environment=prod")),
        ),
        (
            "kubernetes coredns.local {\n labels environment in (production, staging, qa),application=nginx\n}".into(),
            with(&["coredns.local."], &|c| {
                c.labels = sel("application=nginx,environment in (production,qa,staging)");
            }),
        ),
        (
            "kubernetes coredns.local {\n namespace_labels istio-injection=enabled\n}".into(),
            with(&["coredns.local."], &|c| {
                c.namespace_labels = sel("istio-injection=enabled");
            }),
        ),
        (
            "kubernetes coredns.local test.local {\n endpoint http://localhost:8080\n namespaces demo test\n labels environment in (production, staging, qa),application=nginx\n fallthrough\n}".into(),
            with(&["coredns.local.", "test.local."], &|c| {
                c.connection = Connection::Endpoint {
                    url: "http://localhost:8080".into(),
                    tls: None,
                };
                c.namespaces = ["demo", "test"].map(String::from).into();
                c.labels = sel("environment in (production,qa,staging),application=nginx");
                c.fall = Fall::root();
            }),
        ),
        (
            "kubernetes coredns.local {\n pods disabled\n}".into(),
            with(&["coredns.local."], &|_| {}),
        ),
        (
            "kubernetes coredns.local {\n pods insecure\n}".into(),
            with(&["coredns.local."], &|c| c.pods = PodMode::Insecure),
        ),
        (
            "kubernetes coredns.local {\n pods verified\n}".into(),
            with(&["coredns.local."], &|c| c.pods = PodMode::Verified),
        ),
        (
            "kubernetes coredns.local {\n fallthrough ip6.arpa inaddr.arpa foo.com\n}".into(),
            with(&["coredns.local."], &|c| {
                c.fall = fall("fallthrough ip6.arpa inaddr.arpa foo.com");
            }),
        ),
        (
            "kubernetes coredns.local {\n endpoint_pod_names\n}".into(),
            with(&["coredns.local."], &|c| c.endpoint_pod_names = true),
        ),
        (
            "kubernetes coredns.local {\n noendpoints\n}".into(),
            with(&["coredns.local."], &|c| c.endpoints = false),
        ),
        (
            "kubernetes coredns.local {\n ignore empty_service\n}".into(),
            with(&["coredns.local."], &|c| c.ignore_empty_service = true),
        ),
        // CoreDNS reads the first word only.
        (
            "kubernetes coredns.local {\n ignore empty_service ixnay on the endpointsay\n}".into(),
            with(&["coredns.local."], &|c| c.ignore_empty_service = true),
        ),
        (
            "kubernetes coredns.local {\n apiserver_qps 50.0\n apiserver_burst 100\n apiserver_max_inflight 25\n}".into(),
            with(&["coredns.local."], &|c| {
                c.api_qps = 50.0;
                c.api_burst = 100;
                c.api_max_inflight = 25;
            }),
        ),
        (
            "kubernetes cluster.local {\n ttl 56\n}".into(),
            with(&["cluster.local."], &|c| c.ttl = 56),
        ),
        (
            "kubernetes cluster.local {\n ttl 0\n}".into(),
            with(&["cluster.local."], &|c| c.ttl = 0),
        ),
        (
            "kubernetes cluster.local {\n ttl 3600\n}".into(),
            with(&["cluster.local."], &|c| c.ttl = 3600),
        ),
        // A CIDR is its reverse zones; the primary zone is the first forward one.
        (
            "kubernetes 10.0.0.0/15 Cluster.Local. dns://example.org:53".into(),
            Ok(KubernetesConfig {
                primary_zone: "cluster.local.".into(),
                ..config(&[
                    "0.10.in-addr.arpa.",
                    "1.10.in-addr.arpa.",
                    "cluster.local.",
                    "example.org.",
                ])
            }),
        ),
        // As CoreDNS's IsReverse, the suffix itself is not a reverse zone.
        (
            "kubernetes in-addr.arpa".into(),
            with(&["in-addr.arpa."], &|_| {}),
        ),
        // Errors, each naming its line.
        (
            "kubernetes 10.0.0.0/8 fd00::/8".into(),
            Err("Corefile:1: kubernetes: non-reverse zone name must be used".into()),
        ),
        (
            "kubernetes coredns.local\nkubernetes cluster.local".into(),
            Err("Corefile:2: kubernetes: this plugin can only be used once per Server Block".into()),
        ),
        (
            "kubernetes a..b".into(),
            Err("Corefile:1: kubernetes: invalid zone 'a..b'".into()),
        ),
        (
            "kubernetes coredns.local {\n endpoint\n}".into(),
            Err("Corefile:2: kubernetes: wrong argument count or unexpected line ending after 'endpoint'".into()),
        ),
        (
            "kubernetes coredns.local {\n endpoint ftp://k8s\n}".into(),
            Err("Corefile:2: kubernetes: invalid endpoint 'ftp://k8s': the scheme must be http or https".into()),
        ),
        (
            "kubernetes coredns.local {\n namespaces\n}".into(),
            Err("Corefile:2: kubernetes: wrong argument count or unexpected line ending after 'namespaces'".into()),
        ),
        (
            "kubernetes coredns.local {\n labels\n}".into(),
            Err("Corefile:2: kubernetes: wrong argument count or unexpected line ending after 'labels'".into()),
        ),
        (
            "kubernetes coredns.local {\n labels environment in (production, qa\n}".into(),
            Err("Corefile:2: kubernetes: unable to parse label selector value: 'environment in (production, qa': found '', expected: ',' or ')'".into()),
        ),
        (
            "kubernetes coredns.local {\n namespace_labels env!=prod\n}".into(),
            Err("Corefile:2: kubernetes: unable to parse namespace_label selector value: 'env!=prod': \"!=\" is not a valid label selector operator".into()),
        ),
        (
            "kubernetes coredns.local {\n namespaces foo bar\n namespace_labels istio-injection=enabled\n}".into(),
            Err("Corefile:4: kubernetes: namespaces and namespace_labels cannot both be set".into()),
        ),
        (
            "kubernetes coredns.local {\n pods giant_seed\n}".into(),
            Err("Corefile:2: kubernetes: wrong value for pods: giant_seed, must be one of: disabled, verified, insecure".into()),
        ),
        (
            "kubernetes coredns.local {\n pods\n}".into(),
            Err("Corefile:2: kubernetes: wrong argument count or unexpected line ending after 'pods'".into()),
        ),
        (
            "kubernetes coredns.local {\n kubeconfig\n}".into(),
            Err("Corefile:2: kubernetes: wrong argument count or unexpected line ending after 'kubeconfig'".into()),
        ),
        (
            "kubernetes coredns.local {\n kubeconfig file context extraarg\n}".into(),
            Err("Corefile:2: kubernetes: wrong argument count or unexpected line ending after 'extraarg'".into()),
        ),
        (
            "kubernetes coredns.local {\n kubeconfig /nonexistent/kubeconfig\n}".into(),
            Err("Corefile:2: kubernetes: kubeconfig: cannot read '/nonexistent/kubeconfig': No such file or directory (os error 2)".into()),
        ),
        (
            format!("kubernetes coredns.local {{\n tls {file} {file}\n}}"),
            Err(format!("Corefile:2: kubernetes: wrong argument count or unexpected line ending after '{file}'")),
        ),
        (
            "kubernetes coredns.local {\n endpoint_pod_names giant_seed\n}".into(),
            Err("Corefile:2: kubernetes: wrong argument count or unexpected line ending after 'giant_seed'".into()),
        ),
        (
            "kubernetes coredns.local {\n noendpoints ixnay on the endpointsay\n}".into(),
            Err("Corefile:2: kubernetes: wrong argument count or unexpected line ending after 'endpointsay'".into()),
        ),
        (
            "kubernetes coredns.local {\n ignore ixnay on the endpointsay\n}".into(),
            Err("Corefile:2: kubernetes: unable to parse ignore value: 'ixnay'".into()),
        ),
        (
            "kubernetes coredns.local {\n ignore\n}".into(),
            Err("Corefile:2: kubernetes: wrong argument count or unexpected line ending after 'ignore'".into()),
        ),
        (
            "kubernetes coredns.local {\n apiserver_qps -10\n}".into(),
            Err("Corefile:2: kubernetes: apiserver_qps must be >= 0".into()),
        ),
        (
            "kubernetes coredns.local {\n apiserver_qps fast\n}".into(),
            Err("Corefile:2: kubernetes: invalid apiserver_qps \"fast\"".into()),
        ),
        (
            "kubernetes coredns.local {\n apiserver_burst -5\n}".into(),
            Err("Corefile:2: kubernetes: apiserver_burst must be >= 0".into()),
        ),
        (
            "kubernetes coredns.local {\n apiserver_max_inflight -1\n}".into(),
            Err("Corefile:2: kubernetes: apiserver_max_inflight must be >= 0".into()),
        ),
        (
            "kubernetes coredns.local {\n apiserver_burst 1 2\n}".into(),
            Err("Corefile:2: kubernetes: wrong argument count or unexpected line ending after '2'".into()),
        ),
        (
            "kubernetes cluster.local {\n ttl -1\n}".into(),
            Err("Corefile:2: kubernetes: ttl must be in range [0, 3600]: -1".into()),
        ),
        (
            "kubernetes cluster.local {\n ttl 3601\n}".into(),
            Err("Corefile:2: kubernetes: ttl must be in range [0, 3600]: 3601".into()),
        ),
        (
            "kubernetes cluster.local {\n ttl 5s\n}".into(),
            Err("Corefile:2: kubernetes: ttl must be an integer, not '5s'".into()),
        ),
        (
            "kubernetes cluster.local {\n multicluster clusterset.local\n}".into(),
            Err("Corefile:2: kubernetes: is not authoritative for the multicluster zone clusterset.local. (authoritative zones: [cluster.local.])".into()),
        ),
        // CoreDNS's TestKubernetesParseZonal.
        (
            "kubernetes cluster.local {\n zonal\n}".into(),
            with(&["cluster.local."], &|c| c.zonal = true),
        ),
        (
            "kubernetes cluster.local {\n zonal us-west-2a\n}".into(),
            Err("Corefile:2: kubernetes: wrong argument count or unexpected line ending after 'us-west-2a'".into()),
        ),
        (
            "kubernetes cluster.local {\n zonal\n noendpoints\n}".into(),
            Err("Corefile:4: kubernetes: zonal requires the endpoint cache; remove noendpoints".into()),
        ),
        (
            "kubernetes cluster.local {\n startup_timeout\n}".into(),
            Err("Corefile:2: kubernetes: wrong argument count or unexpected line ending after 'startup_timeout'".into()),
        ),
        (
            "kubernetes cluster.local {\n startup_timeout 5\n}".into(),
            Err("Corefile:2: kubernetes: failed to parse startup_timeout: 5: a duration above 0 and at most 10m".into()),
        ),
        (
            "kubernetes cluster.local {\n startup_timeout 0s\n}".into(),
            Err("Corefile:2: kubernetes: failed to parse startup_timeout: 0s: a duration above 0 and at most 10m".into()),
        ),
        (
            "kubernetes cluster.local {\n startup_timeout 11m\n}".into(),
            Err("Corefile:2: kubernetes: failed to parse startup_timeout: 11m: a duration above 0 and at most 10m".into()),
        ),
        (
            "kubernetes cluster.local {\n giant_seed\n}".into(),
            Err("Corefile:2: kubernetes: unknown property 'giant_seed'".into()),
        ),
        (
            "kubernetes cluster.local {\n fallthrough a..b\n}".into(),
            Err("Corefile:2: kubernetes: invalid zone 'a..b'".into()),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(parse_text(&text), want, "{text}");
    }
}

#[test]
fn setup_adds_plugin_and_readiness() {
    let (out, services) = run_setup("kubernetes", setup, "kubernetes cluster.local").unwrap();
    assert_eq!(out.plugins.len(), 1);
    assert_eq!(out.plugins[0].name(), "kubernetes");
    assert!(
        out.tasks.is_empty(),
        "the watch belongs to the view, not the config"
    );
    assert_eq!(services.startup.len(), 1, "waited for before serving");
    assert_eq!(services.startup[0].timeout, DEFAULT_STARTUP_TIMEOUT);
    assert_eq!(services.readiness.len(), 1);
    assert_eq!(services.readiness[0].name(), "kubernetes");
    assert!(!services.readiness[0].ready(), "not ready before a sync");
    assert_eq!(services.carry_out.len(), 1, "the view is kept for a reload");
}

/// Runs setup for `text` in a block of zone `.`, carrying in `carry`.
fn setup_carrying(text: &str, carry: crate::setup::Carry) -> crate::setup::Services {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).unwrap();
    let block = block(&["cluster.local."]);
    let mut out = crate::setup::BlockSetup::default();
    let mut services = crate::setup::Services {
        carry_in: carry,
        ..Default::default()
    };
    let mut c = crate::setup::Controller {
        d: Dispenser::new("kubernetes", &tokens),
        block: &block,
        out: &mut out,
        services: &mut services,
    };
    setup(&mut c).unwrap();
    services
}

fn carried_view(s: &crate::setup::Services, text: &str) -> Arc<watched::Watched> {
    let cfg = parse_text(text).unwrap();
    s.carry_out
        .get::<watched::Watched>(&watched::carry_key(&cfg))
        .expect("kept")
}

#[tokio::test]
async fn a_reload_with_the_same_settings_carries_the_view_and_its_watch() {
    let text = "kubernetes cluster.local {\n endpoint http://127.0.0.1:9\n}";
    let mut first = setup_carrying(text, Default::default());
    let view = carried_view(&first, text);
    assert!(!view.running(), "setup starts nothing");
    (first.startup.pop().unwrap().start)();
    assert!(view.running(), "started before serving");

    // Same settings: the same view, its watch left running.
    let mut again = setup_carrying(text, first.carry_out.clone());
    assert!(Arc::ptr_eq(&carried_view(&again, text), &view));
    (again.startup.pop().unwrap().start)();
    assert!(view.running());

    // Other settings: a view of their own.
    let other = "kubernetes cluster.local {\n endpoint http://127.0.0.1:9\n namespaces a\n}";
    let changed = setup_carrying(other, again.carry_out.clone());
    assert!(!Arc::ptr_eq(&carried_view(&changed, other), &view));

    // The last configuration holding a view drops it, and its watch stops.
    let weak = Arc::downgrade(&view);
    drop((view, first, again, changed));
    assert!(weak.upgrade().is_none(), "dropped with the configurations");
}

#[test]
fn two_blocks_with_the_same_settings_share_one_view() {
    let text = "kubernetes cluster.local {\n endpoint http://127.0.0.1:9\n}";
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).unwrap();
    let mut services = crate::setup::Services::default();
    for port in [53, 5353] {
        let mut block = block(&["cluster.local."]);
        block.port = port;
        let mut out = crate::setup::BlockSetup::default();
        let mut c = crate::setup::Controller {
            d: Dispenser::new("kubernetes", &tokens),
            block: &block,
            out: &mut out,
            services: &mut services,
        };
        setup(&mut c).unwrap();
    }
    assert_eq!(services.carry_out.len(), 1, "one view, kept once");
    assert_eq!(services.startup.len(), 2);
}

#[tokio::test]
async fn a_dropped_view_aborts_its_watch() {
    let text = "kubernetes cluster.local {\n endpoint http://127.0.0.1:9\n}";
    let w = watched::Watched::new(store_options(&parse_text(text).unwrap()), false);
    let cfg = Arc::new(parse_text(text).unwrap());
    w.ensure_running(&cfg);
    let handle = w.abort_handle().expect("running");
    drop(w);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !handle.is_finished() {
        assert!(std::time::Instant::now() < deadline, "the watch still runs");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// === The store ===

pub(super) fn svc(
    ns: &str,
    name: &str,
    kind: ServiceKind,
    ports: &[(&str, &str, i32)],
) -> ServiceRecord {
    ServiceRecord {
        namespace: ns.into(),
        name: name.into(),
        kind,
        ports: ports
            .iter()
            .map(|(n, p, port)| PortRecord {
                name: Some((*n).into()),
                protocol: Some((*p).into()),
                port: Some(*port),
            })
            .collect(),
    }
}

fn ips(list: &[&str]) -> ServiceKind {
    ServiceKind::ClusterIp(list.iter().map(|s| s.parse().unwrap()).collect())
}

fn ext(target: &str) -> ServiceKind {
    ServiceKind::ExternalName(target.into())
}

/// An endpoint: address, hostname, pod name.
pub(super) fn ep(ip: &str, hostname: &str, pod: &str) -> EndpointRecord {
    EndpointRecord {
        addresses: vec![ip.parse().unwrap()],
        ready: None,
        hostname: (!hostname.is_empty()).then(|| hostname.into()),
        target_name: (!pod.is_empty()).then(|| pod.into()),
        zone: None,
    }
}

pub(super) fn slice(
    ns: &str,
    name: &str,
    service: &str,
    ports: &[(&str, &str, i32)],
    endpoints: Vec<EndpointRecord>,
) -> SliceRecord {
    SliceRecord {
        namespace: ns.into(),
        name: name.into(),
        service: Some(service.into()),
        ports: ports
            .iter()
            .map(|(n, p, port)| PortRecord {
                name: Some((*n).into()),
                protocol: Some((*p).into()),
                port: Some(*port),
            })
            .collect(),
        endpoints,
    }
}

/// Marks every kind listed: the store is synced.
pub(super) fn sync(store: &Store) {
    let mut b = store.batch();
    for k in [
        Kind::Services,
        Kind::EndpointSlices,
        Kind::Pods,
        Kind::Namespaces,
    ] {
        b.finish_resync(k);
    }
}

pub(super) const HTTP: &[(&str, &str, i32)] = &[("http", "tcp", 80)];

/// CoreDNS's `APIConnServeTest`: the objects of `handler_test.go`.
pub(super) fn serve_test_objects(store: &Store) {
    let mut b = store.batch();
    for ns in [
        "testns",
        "kube-system",
        "unexposedns",
        "svc-nons",
        "podns",
        "svcns",
    ] {
        b.apply_namespace(ns);
    }
    b.apply_service(svc(
        "kube-system",
        "kubedns",
        ips(&["10.0.0.10"]),
        &[("dns", "udp", 53)],
    ));
    b.apply_service(svc("testns", "svc1", ips(&["10.0.0.1"]), HTTP));
    b.apply_service(svc("testns", "svcempty", ips(&["10.0.0.1"]), HTTP));
    b.apply_service(svc("testns", "svc6", ips(&["1234:abcd::1"]), HTTP));
    b.apply_service(svc("testns", "hdls1", ServiceKind::Headless, &[]));
    b.apply_service(svc("testns", "external", ext("ext.interwebs.test"), HTTP));
    b.apply_service(svc(
        "testns",
        "external-to-service",
        ext("svc1.testns.svc.cluster.local."),
        HTTP,
    ));
    b.apply_service(svc("testns", "hdlsprtls", ServiceKind::Headless, &[]));
    b.apply_service(svc("unexposedns", "svc1", ips(&["10.0.0.2"]), HTTP));
    b.apply_service(svc(
        "testns",
        "svc-dual-stack",
        ips(&["10.0.0.3", "10::3"]),
        HTTP,
    ));

    b.apply_slice(slice(
        "kube-system",
        "kubedns",
        "kubedns",
        &[("dns", "udp", 53)],
        vec![ep("172.0.0.100", "", "")],
    ));
    b.apply_slice(slice(
        "testns",
        "svc1-slice1",
        "svc1",
        HTTP,
        vec![ep("172.0.0.1", "ep1a", "")],
    ));
    b.apply_slice(slice("testns", "svcempty-slice1", "svcempty", HTTP, vec![]));
    b.apply_slice(slice(
        "testns",
        "hdls1-slice1",
        "hdls1",
        HTTP,
        vec![
            ep("172.0.0.2", "", ""),
            ep("172.0.0.3", "", ""),
            ep("172.0.0.4", "dup-name", ""),
            ep("172.0.0.5", "dup-name", ""),
            ep("5678:abcd::1", "", ""),
            ep("5678:abcd::2", "", ""),
        ],
    ));
    b.apply_slice(slice(
        "testns",
        "hdlsprtls-slice1",
        "hdlsprtls",
        &[],
        vec![ep("172.0.0.20", "", "")],
    ));
    b.apply_pod(PodRecord {
        namespace: "podns".into(),
        name: "foo".into(),
        ip: Some("10.240.0.1".parse().unwrap()),
        terminating: false,
    });
}

/// A plugin over `serve_test_objects`, synced.
fn plugin(f: impl FnOnce(&mut KubernetesConfig)) -> Kubernetes {
    let mut cfg = config(&["cluster.local."]);
    f(&mut cfg);
    let k = Kubernetes::new(&cfg, None);
    serve_test_objects(k.store());
    sync(k.store());
    k
}

// === Asking ===

/// What a query gave, reduced to compare in tables (records sorted, SOA
/// serials replaced by `SERIAL`).
#[derive(Debug, PartialEq)]
pub(super) enum Got {
    Reply {
        rcode: ResponseCode,
        answer: Vec<String>,
        ns: Vec<String>,
        extra: Vec<String>,
    },
    Next,
    Fail(ResponseCode),
    Upstream,
}

pub(super) fn show(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .map(|r| {
            let s = r.to_string();
            if r.record_type() == RecordType::SOA {
                let mut parts: Vec<&str> = s.split(' ').collect();
                if parts.len() > 6 {
                    parts[6] = "SERIAL";
                }
                parts.join(" ")
            } else {
                s
            }
        })
        .collect();
    v.sort();
    v
}

fn got(out: crate::pkg::test::Outcome, name: &str) -> Got {
    match out.flow {
        Flow::Next => Got::Next,
        Flow::Fail(rc, _) => Got::Fail(rc),
        Flow::Upstream => Got::Upstream,
        Flow::Drop => panic!("kubernetes never drops"),
        Flow::Answered => {
            let m = out.msg.expect("answered");
            check_header(&m, name);
            Got::Reply {
                rcode: m.metadata.response_code,
                answer: show(&m.answers),
                ns: show(&m.authorities),
                extra: show(&m.additionals),
            }
        }
    }
}

fn check_header(m: &Message, name: &str) {
    assert!(m.metadata.authoritative, "{name}: AA");
    assert!(!m.metadata.recursion_available, "{name}: no RA");
    assert_eq!(m.queries.len(), 1);
    assert_eq!(m.queries[0].name().to_string(), name);
    assert_eq!(m.metadata.id, 4242);
}

pub(super) fn ask(k: &Kubernetes, name: &str, qtype: RecordType) -> Got {
    let out = run(
        k,
        &query(name, qtype),
        Transport::Udp,
        Stub::Rcode(ResponseCode::Refused),
    );
    got(out, name)
}

pub(super) fn reply(rcode: ResponseCode, answer: &[&str], ns: &[&str], extra: &[&str]) -> Got {
    let v = |s: &[&str]| {
        let mut v: Vec<String> = s.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    Got::Reply {
        rcode,
        answer: v(answer),
        ns: v(ns),
        extra: v(extra),
    }
}

pub(super) fn answer(records: &[&str]) -> Got {
    reply(ResponseCode::NoError, records, &[], &[])
}

pub(super) fn with_extra(records: &[&str], extra: &[&str]) -> Got {
    reply(ResponseCode::NoError, records, &[], extra)
}

pub(super) const SOA: &str = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 5";

pub(super) fn nodata() -> Got {
    reply(ResponseCode::NoError, &[], &[SOA], &[])
}

pub(super) fn nxdomain() -> Got {
    reply(ResponseCode::NXDomain, &[], &[SOA], &[])
}

pub(super) type Case = (&'static str, RecordType, Got);

pub(super) fn check(k: &Kubernetes, cases: Vec<Case>) {
    for (name, qtype, want) in cases {
        assert_eq!(ask(k, name, qtype), want, "{name} {qtype}");
    }
}

use RecordType::{A, AAAA, CNAME, HINFO, MX, NS, PTR, SOA as TSOA, SRV, TXT};

/// `commonDnsTestCases` and `dnsTestCases` of `handler_test.go` (the
/// upstream case is `external_name_outside_the_zone` below).
#[test]
fn coredns_handler_cases() {
    let k = plugin(|c| c.namespaces = ["testns".to_string()].into());
    check(
        &k,
        vec![
            (
                "svc1.testns.svc.cluster.local.",
                A,
                answer(&["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
            ),
            (
                "svcempty.testns.svc.cluster.local.",
                A,
                answer(&["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
            ),
            (
                "svc1.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local.",
                    ],
                    &["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"],
                ),
            ),
            (
                "svcempty.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "svcempty.testns.svc.cluster.local. 5 IN SRV 0 100 80 svcempty.testns.svc.cluster.local.",
                    ],
                    &["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.1"],
                ),
            ),
            (
                "svc6.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "svc6.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc6.testns.svc.cluster.local.",
                    ],
                    &["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"],
                ),
            ),
            (
                "_http._tcp.svc1.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "_http._tcp.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local.",
                    ],
                    &["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"],
                ),
            ),
            (
                "_http._tcp.svcempty.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "_http._tcp.svcempty.testns.svc.cluster.local. 5 IN SRV 0 100 80 svcempty.testns.svc.cluster.local.",
                    ],
                    &["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.1"],
                ),
            ),
            (
                "hdls1.testns.svc.cluster.local.",
                A,
                answer(&[
                    "hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2",
                    "hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3",
                    "hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
                    "hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
                ]),
            ),
            (
                "hdlsprtls.testns.svc.cluster.local.",
                A,
                answer(&["hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"]),
            ),
            ("svc1.testns.svc.cluster.local.", AAAA, nodata()),
            ("svc0.testns.svc.cluster.local.", AAAA, nxdomain()),
            ("svc0.testns.svc.cluster.local.", A, nxdomain()),
            ("svc0.svc-nons.svc.cluster.local.", A, nxdomain()),
            (
                "dns-version.cluster.local.",
                TXT,
                answer(&["dns-version.cluster.local. 28800 IN TXT 1.1.0"]),
            ),
            ("svc1.testns.svc.cluster.local.", TXT, nodata()),
            ("svc0.svc-nons.svc.cluster.local.", TXT, nxdomain()),
            (
                "bogusendpoint.hdls1.testns.svc.cluster.local.",
                A,
                nxdomain(),
            ),
            (
                "bogusendpoint.svc0.testns.svc.cluster.local.",
                A,
                nxdomain(),
            ),
            (
                "svc6.testns.svc.cluster.local.",
                AAAA,
                answer(&["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"]),
            ),
            (
                "_http._tcp.svc6.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "_http._tcp.svc6.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc6.testns.svc.cluster.local.",
                    ],
                    &["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"],
                ),
            ),
            (
                "hdls1.testns.svc.cluster.local.",
                AAAA,
                answer(&[
                    "hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
                    "hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
                ]),
            ),
            ("svc.cluster.local.", A, nodata()),
            ("pod.cluster.local.", A, nodata()),
            ("testns.svc.cluster.local.", A, nodata()),
            ("svc.cluster.local.", NS, nodata()),
            ("testns.svc.cluster.local.", NS, nodata()),
            ("foo.cluster.local.", NS, nxdomain()),
            ("foo.svc.cluster.local.", NS, nxdomain()),
            (
                "svc-dual-stack.testns.svc.cluster.local.",
                A,
                answer(&["svc-dual-stack.testns.svc.cluster.local. 5 IN A 10.0.0.3"]),
            ),
            (
                "svc-dual-stack.testns.svc.cluster.local.",
                AAAA,
                answer(&["svc-dual-stack.testns.svc.cluster.local. 5 IN AAAA 10::3"]),
            ),
            (
                "svc-dual-stack.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "svc-dual-stack.testns.svc.cluster.local. 5 IN SRV 0 50 80 svc-dual-stack.testns.svc.cluster.local.",
                    ],
                    &[
                        "svc-dual-stack.testns.svc.cluster.local. 5 IN A 10.0.0.3",
                        "svc-dual-stack.testns.svc.cluster.local. 5 IN AAAA 10::3",
                    ],
                ),
            ),
            ("svc1.testns.svc.cluster.local.", TSOA, nodata()),
            (
                "endpoint.external.testns.svc.cluster.local.",
                CNAME,
                nxdomain(),
            ),
            (
                "subdomain.subdomain.external.testns.svc.cluster.local.",
                CNAME,
                nxdomain(),
            ),
            // dnsTestCases
            (
                "_http._tcp.hdls1.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 172-0-0-2.hdls1.testns.svc.cluster.local.",
                        "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 172-0-0-3.hdls1.testns.svc.cluster.local.",
                        "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 5678-abcd--1.hdls1.testns.svc.cluster.local.",
                        "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 5678-abcd--2.hdls1.testns.svc.cluster.local.",
                        "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 dup-name.hdls1.testns.svc.cluster.local.",
                    ],
                    &[
                        "172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2",
                        "172-0-0-3.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3",
                        "5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
                        "5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
                        "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
                        "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
                    ],
                ),
            ),
            (
                "5678-abcd--2.hdls1.testns.svc.cluster.local.",
                AAAA,
                answer(&["5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2"]),
            ),
            (
                "5678-abcd--1.hdls1.testns.svc.cluster.local.",
                AAAA,
                answer(&["5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1"]),
            ),
            (
                "172-0-0-20.hdlsprtls.testns.svc.cluster.local.",
                A,
                answer(&["172-0-0-20.hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"]),
            ),
            (
                "172-0-0-2.hdls1.testns.svc.cluster.local.",
                A,
                answer(&["172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2"]),
            ),
            (
                "172-0-0-3.hdls1.testns.svc.cluster.local.",
                A,
                answer(&["172-0-0-3.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3"]),
            ),
            (
                "dup-name.hdls1.testns.svc.cluster.local.",
                A,
                answer(&[
                    "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
                    "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
                ]),
            ),
            (
                "external.testns.svc.cluster.local.",
                CNAME,
                answer(&["external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."]),
            ),
            (
                "external-to-service.testns.svc.cluster.local.",
                A,
                answer(&[
                    "external-to-service.testns.svc.cluster.local. 5 IN CNAME svc1.testns.svc.cluster.local.",
                    "svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1",
                ]),
            ),
        ],
    );
}

/// `nsTestCases`: with no `namespaces`, every namespace that exists is
/// exposed; one that does not is NXDOMAIN.
#[test]
fn namespaces_that_do_not_exist() {
    let k = plugin(|_| {});
    check(
        &k,
        vec![
            (
                "svc1.testns.svc.cluster.local.",
                A,
                answer(&["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
            ),
            (
                "svc1.unexposedns.svc.cluster.local.",
                A,
                answer(&["svc1.unexposedns.svc.cluster.local. 5 IN A 10.0.0.2"]),
            ),
            ("svc1.nsnoexist.svc.cluster.local.", A, nxdomain()),
            ("nsnoexist.svc.cluster.local.", A, nxdomain()),
            ("testns.svc.cluster.local.", A, nodata()),
        ],
    );
    // `namespaces` hides the others even when they exist.
    let k = plugin(|c| c.namespaces = ["testns".to_string()].into());
    check(
        &k,
        vec![
            ("svc1.unexposedns.svc.cluster.local.", A, nxdomain()),
            ("unexposedns.svc.cluster.local.", A, nxdomain()),
        ],
    );
}

/// A service's entry carries whether its namespace exists: it follows the
/// namespace coming, going (by a delete or a relist) and coming back, in
/// either order with the service, for every kind of answer.
#[test]
fn namespace_existence_follows_the_namespace_watch() {
    let k = Kubernetes::new(&config(&["cluster.local."]), None);
    sync(k.store());
    let web = "web.later.svc.cluster.local.";
    let srv = "_http._tcp.web.later.svc.cluster.local.";
    let ok = || answer(&["web.later.svc.cluster.local. 5 IN A 10.9.0.1"]);
    // The service before its namespace.
    {
        let mut b = k.store().batch();
        b.apply_service(svc("later", "web", ips(&["10.9.0.1"]), HTTP));
    }
    check(&k, vec![(web, A, nxdomain()), (srv, SRV, nxdomain())]);
    k.store().batch().apply_namespace("later");
    check(&k, vec![(web, A, ok())]);
    assert!(matches!(
        ask(&k, srv, SRV),
        Got::Reply {
            rcode: ResponseCode::NoError,
            ..
        }
    ));
    k.store().batch().delete_namespace("later");
    check(&k, vec![(web, A, nxdomain()), (srv, SRV, nxdomain())]);
    k.store().batch().apply_namespace("later");
    check(&k, vec![(web, A, ok())]);
    // A relist that does not mention it.
    {
        let mut b = k.store().batch();
        b.begin_resync(Kind::Namespaces);
        b.apply_namespace("other");
        b.finish_resync(Kind::Namespaces);
    }
    check(&k, vec![(web, A, nxdomain())]);
    // A headless service's slice made before anything else.
    {
        let mut b = k.store().batch();
        b.apply_slice(slice(
            "fresh",
            "db-1",
            "db",
            HTTP,
            vec![ep("10.9.1.1", "db-0", "")],
        ));
        b.apply_service(svc("fresh", "db", ServiceKind::Headless, HTTP));
    }
    check(&k, vec![("db.fresh.svc.cluster.local.", A, nxdomain())]);
    k.store().batch().apply_namespace("fresh");
    check(
        &k,
        vec![(
            "db.fresh.svc.cluster.local.",
            A,
            answer(&["db.fresh.svc.cluster.local. 5 IN A 10.9.1.1"]),
        )],
    );
    // Namespaces made and deleted, services and all, leave no flag behind.
    for i in 0..100 {
        let ns = format!("ci-{i}");
        let mut b = k.store().batch();
        b.apply_namespace(&ns);
        b.apply_service(svc(&ns, "web", ips(&["10.9.2.1"]), HTTP));
        b.delete_service(&ns, "web");
        b.delete_namespace(&ns);
    }
    assert!(
        k.store().namespace_flags() <= 4,
        "{}",
        k.store().namespace_flags()
    );
}

/// `notSyncedTestCases`: before the first sync a missing name is SERVFAIL
/// (with the SOA); what is there is answered.
#[test]
fn not_synced_is_servfail_for_missing_names() {
    let k = Kubernetes::new(&config(&["cluster.local."]), None);
    serve_test_objects(k.store());
    assert!(!k.store().synced());
    assert!(!k.readiness().ready());
    check(
        &k,
        vec![
            (
                "svc0.testns.svc.cluster.local.",
                A,
                reply(ResponseCode::ServFail, &[], &[SOA], &[]),
            ),
            (
                "svc1.testns.svc.cluster.local.",
                A,
                answer(&["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
            ),
        ],
    );
    sync(k.store());
    assert!(k.readiness().ready());
    assert_eq!(ask(&k, "svc0.testns.svc.cluster.local.", A), nxdomain());
}

/// `kubeApexCases`, with the server at 127.0.0.1 as CoreDNS's test sets
/// it (loopback is only ever left out when read from the system).
#[test]
fn apex() {
    let k = plugin(|_| {});
    k.set_local_ips(&["127.0.0.1".parse().unwrap()]);
    check(
        &k,
        vec![
            ("cluster.local.", TSOA, answer(&[SOA])),
            ("cluster.local.", HINFO, nodata()),
            (
                "cluster.local.",
                NS,
                with_extra(
                    &["cluster.local. 5 IN NS ns.dns.cluster.local."],
                    &["ns.dns.cluster.local. 5 IN A 127.0.0.1"],
                ),
            ),
            ("cluster.local.", A, nodata()),
            ("cluster.local.", AAAA, nodata()),
            ("cluster.local.", SRV, nodata()),
            // CoreDNS's TXT lookup finds nothing at the apex: NXDOMAIN.
            ("cluster.local.", TXT, nxdomain()),
            (
                "ns.dns.cluster.local.",
                A,
                answer(&["ns.dns.cluster.local. 5 IN A 127.0.0.1"]),
            ),
            ("ns.dns.cluster.local.", AAAA, nodata()),
            ("ns.dns.cluster.local.", SRV, nodata()),
            ("ns.dns.cluster.local.", TXT, nxdomain()),
            ("dns.cluster.local.", A, nxdomain()),
        ],
    );
}

/// `TestServicesAuthority`: `ns.dns.ZONE` by family.
#[test]
fn ns_dns_by_family() {
    for (local, qtype, want) in [
        ("1.2.3.4", A, vec!["ns.dns.interwebs.test. 5 IN A 1.2.3.4"]),
        ("1.2.3.4", AAAA, vec![]),
        ("1:2::3:4", A, vec![]),
        (
            "1:2::3:4",
            AAAA,
            vec!["ns.dns.interwebs.test. 5 IN AAAA 1:2::3:4"],
        ),
    ] {
        let k = Kubernetes::new(&config(&["interwebs.test."]), None);
        sync(k.store());
        k.set_local_ips(&[local.parse().unwrap()]);
        let got = ask(&k, "ns.dns.interwebs.test.", qtype);
        let want = if want.is_empty() {
            reply(
                ResponseCode::NoError,
                &[],
                &[
                    "interwebs.test. 5 IN SOA ns.dns.interwebs.test. hostmaster.interwebs.test. SERIAL 7200 1800 86400 5",
                ],
                &[],
            )
        } else {
            answer(&want)
        };
        assert_eq!(got, want, "{local} {qtype}");
    }
    let k = Kubernetes::new(&config(&["interwebs.test."]), None);
    sync(k.store());
    k.set_local_ips(&["1.2.3.4".parse().unwrap(), "1:2::3:4".parse().unwrap()]);
    assert_eq!(
        ask(&k, "interwebs.test.", NS),
        with_extra(
            &["interwebs.test. 5 IN NS ns.dns.interwebs.test."],
            &[
                "ns.dns.interwebs.test. 5 IN A 1.2.3.4",
                "ns.dns.interwebs.test. 5 IN AAAA 1:2::3:4",
            ],
        )
    );
}

/// `TestNsAddrs`: when this server is an endpoint of services, their
/// addresses (a headless one's endpoints) stand for it.
#[test]
fn ns_addrs_from_own_endpoints() {
    let k = Kubernetes::new(&config(&["inter.webs.test."]), None);
    {
        let mut b = k.store().batch();
        b.apply_namespace("kube-system");
        b.apply_service(svc("kube-system", "dns-service", ips(&["10.0.0.111"]), &[]));
        b.apply_service(svc(
            "kube-system",
            "hdls-dns-service",
            ServiceKind::Headless,
            &[],
        ));
        b.apply_service(svc("kube-system", "dns6-service", ips(&["10::111"]), &[]));
        for s in ["dns-service", "hdls-dns-service", "dns6-service"] {
            b.apply_slice(slice(
                "kube-system",
                &format!("{s}-slice1"),
                s,
                &[],
                vec![ep("10.244.0.20", "", "")],
            ));
        }
    }
    sync(k.store());
    k.set_local_ips(&["10.244.0.20".parse().unwrap()]);
    let mut got = k.ns_addrs();
    got.sort();
    let want: Vec<IpAddr> = ["10.0.0.111", "10.244.0.20", "10::111"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        ask(&k, "ns.dns.inter.webs.test.", AAAA),
        answer(&["ns.dns.inter.webs.test. 5 IN AAAA 10::111"])
    );
}

/// `dnsPreserveCaseCases`: answers keep the client's spelling; SRV
/// targets take the zone's spelling from the question and the rest from
/// the store, as CoreDNS's do.
#[test]
fn preserves_case() {
    let k = plugin(|c| c.ignore_empty_service = true);
    k.set_local_ips(&["127.0.0.1".parse().unwrap()]);
    check(
        &k,
        vec![
            (
                "not-a-service.testns.svc.ClUsTeR.lOcAl.",
                A,
                reply(
                    ResponseCode::NXDomain,
                    &[],
                    &[
                        "ClUsTeR.lOcAl. 5 IN SOA ns.dns.ClUsTeR.lOcAl. hostmaster.ClUsTeR.lOcAl. SERIAL 7200 1800 86400 5",
                    ],
                    &[],
                ),
            ),
            (
                "SvC1.TeStNs.SvC.cLuStEr.LoCaL.",
                A,
                answer(&["SvC1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN A 10.0.0.1"]),
            ),
            (
                "_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL.",
                SRV,
                with_extra(
                    &[
                        "_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN SRV 0 100 80 svc1.testns.svc.cLuStEr.LoCaL.",
                    ],
                    &["svc1.testns.svc.cLuStEr.LoCaL. 5 IN A 10.0.0.1"],
                ),
            ),
            (
                "Cluster.local.",
                TSOA,
                answer(&[
                    "Cluster.local. 5 IN SOA ns.dns.Cluster.local. hostmaster.Cluster.local. SERIAL 7200 1800 86400 5",
                ]),
            ),
            // CoreDNS compares the lower-cased name with the zone as
            // asked: the apex NS and ns.dns exist only in lower case.
            (
                "Cluster.local.",
                NS,
                reply(
                    ResponseCode::NoError,
                    &[],
                    &[
                        "Cluster.local. 5 IN SOA ns.dns.Cluster.local. hostmaster.Cluster.local. SERIAL 7200 1800 86400 5",
                    ],
                    &[],
                ),
            ),
            (
                "ns.dns.Cluster.local.",
                A,
                reply(
                    ResponseCode::NXDomain,
                    &[],
                    &[
                        "Cluster.local. 5 IN SOA ns.dns.Cluster.local. hostmaster.Cluster.local. SERIAL 7200 1800 86400 5",
                    ],
                    &[],
                ),
            ),
        ],
    );
}

/// `podModeInsecureCases`.
#[test]
fn pods_insecure() {
    let k = plugin(|c| c.pods = PodMode::Insecure);
    check(
        &k,
        vec![
            (
                "10-240-0-1.podns.pod.cluster.local.",
                A,
                answer(&["10-240-0-1.podns.pod.cluster.local. 5 IN A 10.240.0.1"]),
            ),
            (
                "172-0-0-2.podns.pod.cluster.local.",
                A,
                answer(&["172-0-0-2.podns.pod.cluster.local. 5 IN A 172.0.0.2"]),
            ),
            ("blah.podns.pod.cluster.local.", A, nxdomain()),
            ("blah.podns.pod.cluster.local.", AAAA, nxdomain()),
            ("blah.podns.pod.cluster.local.", HINFO, nxdomain()),
            ("blah.pod-nons.pod.cluster.local.", A, nxdomain()),
            ("podns.pod.cluster.local.", A, nodata()),
            // IPv6, and the other family is NODATA.
            (
                "2001-db8--1.podns.pod.cluster.local.",
                AAAA,
                answer(&["2001-db8--1.podns.pod.cluster.local. 5 IN AAAA 2001:db8::1"]),
            ),
            ("2001-db8--1.podns.pod.cluster.local.", A, nodata()),
            ("10-240-0-1.podns.pod.cluster.local.", AAAA, nodata()),
            // Leading zeros are not an address (Go's ParseIP agrees).
            ("010-240-0-1.podns.pod.cluster.local.", A, nxdomain()),
            // The endpoint and port labels of a pod name are not looked at.
            (
                "_http._tcp.10-240-0-1.podns.pod.cluster.local.",
                A,
                answer(&["_http._tcp.10-240-0-1.podns.pod.cluster.local. 5 IN A 10.240.0.1"]),
            ),
            (
                "10-240-0-1.podns.pod.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "10-240-0-1.podns.pod.cluster.local. 5 IN SRV 0 100 0 10-240-0-1.podns.pod.cluster.local.",
                    ],
                    &["10-240-0-1.podns.pod.cluster.local. 5 IN A 10.240.0.1"],
                ),
            ),
        ],
    );
}

/// `podModeVerifiedCases`.
#[test]
fn pods_verified() {
    let k = plugin(|c| c.pods = PodMode::Verified);
    check(
        &k,
        vec![
            (
                "10-240-0-1.podns.pod.cluster.local.",
                A,
                answer(&["10-240-0-1.podns.pod.cluster.local. 5 IN A 10.240.0.1"]),
            ),
            ("podns.pod.cluster.local.", A, nodata()),
            ("svcns.svc.cluster.local.", A, nodata()),
            ("pod-nons.pod.cluster.local.", A, nxdomain()),
            ("172-0-0-2.podns.pod.cluster.local.", A, nxdomain()),
            // The pod is in podns, not testns.
            ("10-240-0-1.testns.pod.cluster.local.", A, nxdomain()),
        ],
    );
    // A pod that goes away stops answering; a terminating one stays until deleted.
    {
        let mut b = k.store().batch();
        b.apply_pod(PodRecord {
            namespace: "podns".into(),
            name: "foo".into(),
            ip: Some("10.240.0.1".parse().unwrap()),
            terminating: true,
        });
    }
    assert!(matches!(
        ask(&k, "10-240-0-1.podns.pod.cluster.local.", A),
        Got::Reply { ref answer, .. } if answer.len() == 1
    ));
    k.store().batch().delete_pod("podns", "foo");
    assert_eq!(
        ask(&k, "10-240-0-1.podns.pod.cluster.local.", A),
        nxdomain()
    );
}

/// `podModeDisabledCases`.
#[test]
fn pods_disabled() {
    let k = plugin(|_| {});
    check(
        &k,
        vec![
            ("10-240-0-1.podns.pod.cluster.local.", A, nxdomain()),
            ("172-0-0-2.podns.pod.cluster.local.", A, nxdomain()),
            // Unlike the other modes, the bare namespace is NXDOMAIN too.
            ("podns.pod.cluster.local.", A, nxdomain()),
        ],
    );
}

/// `dnsEmptyServiceTestCases`: `ignore empty_service`.
#[test]
fn ignore_empty_service() {
    let k = plugin(|c| c.ignore_empty_service = true);
    check(
        &k,
        vec![
            ("svcempty.testns.svc.cluster.local.", A, nxdomain()),
            (
                "external.testns.svc.cluster.local.",
                CNAME,
                answer(&["external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."]),
            ),
            (
                "svc1.testns.svc.cluster.local.",
                A,
                answer(&["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
            ),
            // Headless services are not affected.
            (
                "hdlsprtls.testns.svc.cluster.local.",
                A,
                answer(&["hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"]),
            ),
        ],
    );
    // Without the option the empty service answers.
    let k = plugin(|_| {});
    assert_eq!(
        ask(&k, "svcempty.testns.svc.cluster.local.", A),
        answer(&["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.1"])
    );
}

/// `noendpoints`: headless services and endpoint names are NXDOMAIN;
/// cluster IPs still answer.
#[test]
fn noendpoints() {
    let k = plugin(|c| c.endpoints = false);
    check(
        &k,
        vec![
            ("hdls1.testns.svc.cluster.local.", A, nxdomain()),
            ("ep1a.svc1.testns.svc.cluster.local.", A, nxdomain()),
            (
                "svc1.testns.svc.cluster.local.",
                A,
                answer(&["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
            ),
        ],
    );
    assert_eq!(k.store().stats().slices, 0);
    assert!(
        !k.store().required().contains(&Kind::EndpointSlices),
        "no EndpointSlice watch to wait for"
    );
}

/// `TestServices`: an endpoint name also answers under a ClusterIP service.
#[test]
fn endpoint_names_under_cluster_ip_services() {
    let k = plugin(|_| {});
    check(
        &k,
        vec![
            (
                "ep1a.svc1.testns.svc.cluster.local.",
                A,
                answer(&["ep1a.svc1.testns.svc.cluster.local. 5 IN A 172.0.0.1"]),
            ),
            (
                "ep1a.svc1.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "ep1a.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 ep1a.svc1.testns.svc.cluster.local.",
                    ],
                    &["ep1a.svc1.testns.svc.cluster.local. 5 IN A 172.0.0.1"],
                ),
            ),
            // A port that is not there, and a protocol that is not.
            (
                "_https._tcp.svc1.testns.svc.cluster.local.",
                SRV,
                nxdomain(),
            ),
            ("_http._udp.svc1.testns.svc.cluster.local.", SRV, nxdomain()),
            // The underscores are optional.
            (
                "http.tcp.svc1.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "http.tcp.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local.",
                    ],
                    &["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"],
                ),
            ),
            // Too long.
            ("a.b.c.svc1.testns.svc.cluster.local.", A, nxdomain()),
            // An address spelled other than canonically names no endpoint
            // (CoreDNS compares the strings).
            (
                "5678-abcd-0-0-0-0-0-1.hdls1.testns.svc.cluster.local.",
                AAAA,
                nxdomain(),
            ),
            ("172-000-0-2.hdls1.testns.svc.cluster.local.", A, nxdomain()),
            // Neither svc nor pod.
            ("svc1.testns.pood.cluster.local.", A, nxdomain()),
            // Other types: NODATA for what exists.
            ("svc1.testns.svc.cluster.local.", MX, nodata()),
            ("svc1.testns.svc.cluster.local.", CNAME, nodata()),
            ("svc0.testns.svc.cluster.local.", MX, nxdomain()),
        ],
    );
}

/// `endpoint_pod_names`: endpoints without a hostname take their pod's name.
#[test]
fn endpoint_pod_names() {
    let mut cfg = config(&["cluster.local."]);
    cfg.endpoint_pod_names = true;
    let k = Kubernetes::new(&cfg, None);
    {
        let mut b = k.store().batch();
        b.apply_namespace("ns");
        b.apply_service(svc("ns", "web", ServiceKind::Headless, HTTP));
        b.apply_slice(slice(
            "ns",
            "web-abc",
            "web",
            HTTP,
            vec![
                ep("10.1.0.1", "", "web-0"),
                ep("10.1.0.2", "named", "web-1"),
                ep("10.1.0.3", "", &"x".repeat(64)),
            ],
        ));
    }
    sync(k.store());
    check(
        &k,
        vec![
            (
                "web-0.web.ns.svc.cluster.local.",
                A,
                answer(&["web-0.web.ns.svc.cluster.local. 5 IN A 10.1.0.1"]),
            ),
            ("10-1-0-1.web.ns.svc.cluster.local.", A, nxdomain()),
            (
                "named.web.ns.svc.cluster.local.",
                A,
                answer(&["named.web.ns.svc.cluster.local. 5 IN A 10.1.0.2"]),
            ),
            // A pod name too long for a label: the dashed address.
            (
                "10-1-0-3.web.ns.svc.cluster.local.",
                A,
                answer(&["10-1-0-3.web.ns.svc.cluster.local. 5 IN A 10.1.0.3"]),
            ),
        ],
    );
    // Without the option, the dashed address.
    let k = plugin(|_| {});
    {
        let mut b = k.store().batch();
        b.apply_service(svc("testns", "web", ServiceKind::Headless, HTTP));
        b.apply_slice(slice(
            "testns",
            "web-abc",
            "web",
            HTTP,
            vec![ep("10.1.0.1", "", "web-0")],
        ));
    }
    assert_eq!(
        ask(&k, "web-0.web.testns.svc.cluster.local.", A),
        nxdomain()
    );
    assert_eq!(
        ask(&k, "10-1-0-1.web.testns.svc.cluster.local.", A),
        answer(&["10-1-0-1.web.testns.svc.cluster.local. 5 IN A 10.1.0.1"])
    );
}

/// Wildcards were removed in CoreDNS 1.9.0: `*` is an ordinary label.
#[test]
fn wildcards_find_nothing() {
    let k = plugin(|_| {});
    check(
        &k,
        vec![
            ("*.testns.svc.cluster.local.", A, nxdomain()),
            ("svc1.*.svc.cluster.local.", A, nxdomain()),
            ("*.*.svc.cluster.local.", A, nxdomain()),
            ("any.testns.svc.cluster.local.", A, nxdomain()),
            ("*.hdls1.testns.svc.cluster.local.", A, nxdomain()),
        ],
    );
    // `_*` in the port or protocol place (hickory will not spell it).
    for (spelled, label) in [
        ("_x._tcp.svc1.testns.svc.cluster.local.", &b"\x02_x"[..]),
        ("_http._x.svc1.testns.svc.cluster.local.", &b"\x02_x"[..]),
    ] {
        let mut raw = query(spelled, SRV);
        let at = raw.windows(3).position(|w| w == label).unwrap();
        raw[at + 2] = b'*';
        let out = run(&k, &raw, Transport::Udp, Stub::Rcode(ResponseCode::Refused));
        let m = out.msg.expect("answered");
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "{spelled}"
        );
    }
}

/// `fallthrough [ZONES]`: a name error in a listed zone goes to the next
/// plugin; NODATA and other zones do not.
#[test]
fn fallthrough_zones() {
    let k = plugin(|c| {
        c.zones = vec!["cluster.local.".into(), "in-addr.arpa.".into()];
        c.fall = fall("fallthrough in-addr.arpa");
    });
    check(
        &k,
        vec![
            ("1.0.0.127.in-addr.arpa.", PTR, Got::Next),
            ("svc0.testns.svc.cluster.local.", A, nxdomain()),
            ("svc1.testns.svc.cluster.local.", AAAA, nodata()),
            ("example.org.", A, Got::Next),
        ],
    );
    let k = plugin(|c| c.fall = Fall::root());
    check(
        &k,
        vec![
            ("svc0.testns.svc.cluster.local.", A, Got::Next),
            ("svc1.testns.svc.cluster.local.", AAAA, nodata()),
        ],
    );
}

/// `TestReverse`.
#[test]
fn reverse() {
    let k = Kubernetes::new(
        &config(&[
            "cluster.local.",
            "0.10.in-addr.arpa.",
            "168.192.in-addr.arpa.",
            "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa.",
            "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.7.7.0.0.0.0.d.f.ip6.arpa.",
        ]),
        None,
    );
    {
        let mut b = k.store().batch();
        b.apply_namespace("testns");
        b.apply_service(svc("testns", "svc1", ips(&["192.168.1.100"]), HTTP));
        b.apply_slice(slice(
            "testns",
            "svc1-slice1",
            "svc1",
            HTTP,
            vec![
                ep("10.0.0.100", "ep1a", ""),
                ep("10.0.0.99", "double-ep", ""),
            ],
        ));
        b.apply_slice(slice(
            "testns",
            "svc1-slice2",
            "svc1",
            HTTP,
            vec![
                ep("1234:abcd::1", "ep1b", ""),
                ep("fd00:77:30::a", "ip6svc1ex", ""),
                ep("fd00:77:30::2:9ba6", "ip6svc1in", ""),
            ],
        ));
        // EndpointSlice skew: the same address in two slices of one service.
        b.apply_slice(slice(
            "testns",
            "svc1-ccccc",
            "svc1",
            HTTP,
            vec![ep("10.0.0.100", "ep1a", "")],
        ));
        b.apply_slice(slice(
            "testns",
            "svc2-slice1",
            "svc2",
            HTTP,
            vec![ep("10.0.0.99", "double-ep", "")],
        ));
    }
    sync(k.store());
    let rsoa = "0.10.in-addr.arpa. 5 IN SOA ns.dns.0.10.in-addr.arpa. hostmaster.0.10.in-addr.arpa. SERIAL 7200 1800 86400 5";
    check(
        &k,
        vec![
            (
                "100.0.0.10.in-addr.arpa.",
                PTR,
                answer(&["100.0.0.10.in-addr.arpa. 5 IN PTR ep1a.svc1.testns.svc.cluster.local."]),
            ),
            (
                "100.1.168.192.in-addr.arpa.",
                PTR,
                answer(&["100.1.168.192.in-addr.arpa. 5 IN PTR svc1.testns.svc.cluster.local."]),
            ),
            (
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa.",
                PTR,
                answer(&[
                    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa. 5 IN PTR ep1b.svc1.testns.svc.cluster.local.",
                ]),
            ),
            (
                "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.7.7.0.0.0.0.d.f.ip6.arpa.",
                PTR,
                answer(&[
                    "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.7.7.0.0.0.0.d.f.ip6.arpa. 5 IN PTR ip6svc1ex.svc1.testns.svc.cluster.local.",
                ]),
            ),
            (
                "6.a.b.9.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.7.7.0.0.0.0.d.f.ip6.arpa.",
                PTR,
                answer(&[
                    "6.a.b.9.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.7.7.0.0.0.0.d.f.ip6.arpa. 5 IN PTR ip6svc1in.svc1.testns.svc.cluster.local.",
                ]),
            ),
            (
                "101.0.0.10.in-addr.arpa.",
                PTR,
                reply(ResponseCode::NXDomain, &[], &[rsoa], &[]),
            ),
            ("example.org.cluster.local.", PTR, nxdomain()),
            ("svc1.testns.svc.cluster.local.", PTR, nodata()),
            (
                "svc1.testns.svc.0.10.in-addr.arpa.",
                A,
                reply(ResponseCode::NXDomain, &[], &[rsoa], &[]),
            ),
            ("100.0.0.10.cluster.local.", PTR, nxdomain()),
            (
                "99.0.0.10.in-addr.arpa.",
                PTR,
                answer(&[
                    "99.0.0.10.in-addr.arpa. 5 IN PTR double-ep.svc1.testns.svc.cluster.local.",
                    "99.0.0.10.in-addr.arpa. 5 IN PTR double-ep.svc2.testns.svc.cluster.local.",
                ]),
            ),
            // Outside the plugin's zones: not ours.
            ("1.1.1.1.in-addr.arpa.", PTR, Got::Next),
        ],
    );
    // A reverse name that is not a whole address, at and below the zone.
    check(
        &k,
        vec![
            (
                "0.10.in-addr.arpa.",
                PTR,
                reply(ResponseCode::NoError, &[], &[rsoa], &[]),
            ),
            (
                "5.0.10.in-addr.arpa.",
                PTR,
                reply(ResponseCode::NXDomain, &[], &[rsoa], &[]),
            ),
        ],
    );
}

/// PTR with `namespaces`: only exposed namespaces' names.
#[test]
fn reverse_respects_namespaces() {
    let mut cfg = config(&["cluster.local.", "in-addr.arpa."]);
    cfg.namespaces = ["b".to_string()].into();
    let k = Kubernetes::new(&cfg, None);
    {
        let mut b = k.store().batch();
        b.apply_namespace("a");
        b.apply_namespace("b");
        b.apply_service(svc("a", "one", ips(&["10.9.0.1"]), &[]));
        b.apply_service(svc("b", "two", ips(&["10.9.0.1"]), &[]));
        b.apply_slice(slice("a", "x-1", "x", &[], vec![ep("10.9.0.2", "", "")]));
    }
    sync(k.store());
    check(
        &k,
        vec![
            (
                "1.0.9.10.in-addr.arpa.",
                PTR,
                answer(&["1.0.9.10.in-addr.arpa. 5 IN PTR two.b.svc.cluster.local."]),
            ),
            (
                "2.0.9.10.in-addr.arpa.",
                PTR,
                reply(
                    ResponseCode::NXDomain,
                    &[],
                    &[
                        "in-addr.arpa. 5 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. SERIAL 7200 1800 86400 5",
                    ],
                    &[],
                ),
            ),
        ],
    );
}

#[test]
fn ttl_option() {
    let k = plugin(|c| c.ttl = 0);
    check(
        &k,
        vec![
            (
                "svc1.testns.svc.cluster.local.",
                A,
                answer(&["svc1.testns.svc.cluster.local. 0 IN A 10.0.0.1"]),
            ),
            (
                "svc0.testns.svc.cluster.local.",
                A,
                reply(
                    ResponseCode::NXDomain,
                    &[],
                    &[
                        "cluster.local. 0 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 0",
                    ],
                    &[],
                ),
            ),
        ],
    );
    // The SOA's own TTL is capped at 300; its minimum is the TTL.
    let k = plugin(|c| c.ttl = 3600);
    assert_eq!(
        ask(&k, "svc0.testns.svc.cluster.local.", A),
        reply(
            ResponseCode::NXDomain,
            &[],
            &[
                "cluster.local. 300 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 3600"
            ],
            &[],
        )
    );
}

#[test]
fn zone_transfers_are_refused() {
    let k = plugin(|_| {});
    assert_eq!(
        ask(&k, "cluster.local.", RecordType::AXFR),
        Got::Fail(ResponseCode::Refused)
    );
    assert_eq!(
        ask(&k, "cluster.local.", RecordType::IXFR),
        Got::Fail(ResponseCode::Refused)
    );
}

#[test]
fn srv_weights_are_shared() {
    let k = plugin(|_| {});
    {
        let mut b = k.store().batch();
        b.apply_service(svc("testns", "three", ServiceKind::Headless, HTTP));
        b.apply_slice(slice(
            "testns",
            "three-a",
            "three",
            &[("http", "tcp", 80), ("metrics", "tcp", 9090)],
            vec![ep("10.3.0.1", "a", ""), ep("10.3.0.2", "b", "")],
        ));
        b.apply_slice(slice(
            "testns",
            "three-b",
            "three",
            HTTP,
            vec![ep("10.3.0.3", "c", "")],
        ));
    }
    // Five (address, port) pairs: 100/5 each.
    let Got::Reply { answer, extra, .. } = ask(&k, "three.testns.svc.cluster.local.", SRV) else {
        panic!("no reply");
    };
    assert_eq!(answer.len(), 5);
    assert!(
        answer.iter().all(|a| a.contains(" SRV 0 20 ")),
        "{answer:?}"
    );
    assert_eq!(extra.len(), 3, "one address record per target: {extra:?}");
    let Got::Reply { answer, .. } = ask(&k, "_metrics._tcp.three.testns.svc.cluster.local.", SRV)
    else {
        panic!("no reply");
    };
    assert_eq!(
        answer,
        vec![
            "_metrics._tcp.three.testns.svc.cluster.local. 5 IN SRV 0 50 9090 a.three.testns.svc.cluster.local.",
            "_metrics._tcp.three.testns.svc.cluster.local. 5 IN SRV 0 50 9090 b.three.testns.svc.cluster.local.",
        ]
    );
}

/// The reply to `raw` in wire form (TCP: no cut to 512 bytes), SRV
/// answers written straight from the store or through the hits.
fn srv_wire(k: &Kubernetes, raw: &[u8], through_hits: bool) -> Vec<u8> {
    answer::GENERAL_SRV.with(|g| g.set(through_hits));
    let wire = crate::pkg::test::with_context(raw, Transport::Tcp, |cx| match k.query(cx) {
        Flow::Answered => cx.reply.finish().unwrap().to_vec(),
        other => format!("{other:?}").into_bytes(),
    });
    answer::GENERAL_SRV.with(|g| g.set(false));
    wire
}

/// SRV answers written straight from the store are byte for byte those
/// written from the hits, over the shapes the direct path takes and the
/// ones it leaves to the hits.
#[test]
fn srv_direct_writes_what_the_hits_write() {
    // `three.testns.svc.` under it is 255 bytes: a target below is longer.
    let long_zone = format!("{}.{}.", vec!["z".repeat(60); 3].join("."), "z".repeat(53));
    let k = {
        let mut cfg = config(&["cluster.local.", &long_zone]);
        cfg.namespaces = Default::default();
        let k = Kubernetes::new(&cfg, None);
        serve_test_objects(k.store());
        sync(k.store());
        k
    };
    let two: &[(&str, &str, i32)] = &[("http", "tcp", 80), ("metrics", "tcp", 9090)];
    // The same number twice, a port without a number, another protocol.
    let odd: &[(&str, &str, i32)] = &[
        ("http", "tcp", 80),
        ("alt", "tcp", 80),
        ("dns", "udp", 53),
        ("none", "tcp", -1),
    ];
    {
        let mut b = k.store().batch();
        b.apply_service(svc("testns", "three", ServiceKind::Headless, HTTP));
        b.apply_slice(slice(
            "testns",
            "three-a",
            "three",
            two,
            vec![ep("10.3.0.1", "a", ""), ep("10.3.0.2", "", "")],
        ));
        b.apply_slice(slice(
            "testns",
            "three-b",
            "three",
            odd,
            vec![ep("10.3.0.3", "c", ""), ep("fd00::3", "", "")],
        ));
        b.apply_slice(slice(
            "testns",
            "three-c",
            "three",
            &[],
            vec![ep("10.3.0.9", "", "")],
        ));
        // One address in two slices: one target.
        b.apply_service(svc("testns", "dup", ServiceKind::Headless, HTTP));
        for s in ["dup-a", "dup-b"] {
            b.apply_slice(slice(
                "testns",
                s,
                "dup",
                HTTP,
                vec![ep("10.4.0.1", "", "")],
            ));
        }
        b.apply_service(svc("testns", "ports", ips(&["10.0.0.7", "fd00::7"]), odd));
        b.apply_slice(slice(
            "testns",
            "ports-a",
            "ports",
            odd,
            vec![ep("10.5.0.1", "p", "")],
        ));
        b.apply_service(svc("testns", "noips", ips(&[]), HTTP));
        // More than a message holds, fewer than the hits looked at: TC,
        // and targets past where a pointer reaches.
        b.apply_service(svc("testns", "many", ServiceKind::Headless, HTTP));
        let eps = (0..3000u32)
            .map(|i| {
                ep(
                    &format!("10.6.{}.{}", i / 250, i % 250 + 1),
                    &format!("host-{i:0>40}"),
                    "",
                )
            })
            .collect();
        b.apply_slice(slice("testns", "many-a", "many", two, eps));
        // Under 64 KiB, over 16 KiB: the last addresses' owners are
        // written out, as a pointer cannot reach their targets.
        b.apply_service(svc("testns", "wide", ServiceKind::Headless, HTTP));
        let eps = (0..300u32)
            .map(|i| {
                ep(
                    &format!("10.7.{}.{}", i / 250, i % 250 + 1),
                    &format!("host-{i:0>40}"),
                    "",
                )
            })
            .collect();
        b.apply_slice(slice("testns", "wide-a", "wide", HTTP, eps));
    }
    let names: [&str; 37] = [
        "three.testns.svc.cluster.local.",
        "_http._tcp.three.testns.svc.cluster.local.",
        "_metrics._tcp.three.testns.svc.cluster.local.",
        "_tcp.three.testns.svc.cluster.local.",
        "_dns._udp.three.testns.svc.cluster.local.",
        "_none._tcp.three.testns.svc.cluster.local.",
        "_nope._tcp.three.testns.svc.cluster.local.",
        "a.three.testns.svc.cluster.local.",
        "10-3-0-2.three.testns.svc.cluster.local.",
        "fd00--3.three.testns.svc.cluster.local.",
        "nope.three.testns.svc.cluster.local.",
        "THREE.TestNS.svc.Cluster.Local.",
        &format!("three.testns.svc.{long_zone}"),
        "dup.testns.svc.cluster.local.",
        "ports.testns.svc.cluster.local.",
        "_http._tcp.ports.testns.svc.cluster.local.",
        "_none._tcp.ports.testns.svc.cluster.local.",
        "_dns._udp.ports.testns.svc.cluster.local.",
        "p.ports.testns.svc.cluster.local.",
        "noips.testns.svc.cluster.local.",
        "many.testns.svc.cluster.local.",
        "wide.testns.svc.cluster.local.",
        "svc1.testns.svc.cluster.local.",
        "_http._tcp.svc1.testns.svc.cluster.local.",
        "ep1a.svc1.testns.svc.cluster.local.",
        "svc-dual-stack.testns.svc.cluster.local.",
        "svcempty.testns.svc.cluster.local.",
        "hdls1.testns.svc.cluster.local.",
        "hdlsprtls.testns.svc.cluster.local.",
        "external.testns.svc.cluster.local.",
        "_http._tcp.external.testns.svc.cluster.local.",
        "nope.testns.svc.cluster.local.",
        "svc1.unexposedns.svc.cluster.local.",
        "svc1.nons.svc.cluster.local.",
        "ns.dns.cluster.local.",
        "testns.svc.cluster.local.",
        "10-240-0-1.podns.pod.cluster.local.",
    ];
    for name in names {
        for raw in [query(name, SRV), query_edns(name, SRV, 1232, false)] {
            let direct = srv_wire(&k, &raw, false);
            let hits = srv_wire(&k, &raw, true);
            assert_eq!(direct, hits, "{name}");
        }
    }
    // The cases that matter are answered at all.
    let m = Message::from_vec(&srv_wire(&k, &query(names[0], SRV), false)).unwrap();
    // 2 + 2 + 2 + 2 records (80 once, no -1); weight 100/13: the port-less
    // slice counts.
    assert_eq!((m.answers.len(), m.additionals.len()), (8, 4), "{m:?}");
    assert!(
        m.answers[0].to_string().contains(" SRV 0 7 80 "),
        "{}",
        m.answers[0]
    );
    let m = Message::from_vec(&srv_wire(&k, &query(names[12], SRV), false)).unwrap();
    assert!(
        m.answers.is_empty(),
        "targets longer than 255 bytes are left out"
    );
    let m = Message::from_vec(&srv_wire(&k, &query(names[20], SRV), false)).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.answers.len() > 500, "{}", m.answers.len());
    let m = Message::from_vec(&srv_wire(&k, &query(names[21], SRV), false)).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!((m.answers.len(), m.additionals.len()), (300, 300));
    // With ignore_empty_service, a service without endpoints is not a name.
    let k = plugin(|c| c.ignore_empty_service = true);
    for name in [
        "svcempty.testns.svc.cluster.local.",
        "svc1.testns.svc.cluster.local.",
    ] {
        let raw = query(name, SRV);
        assert_eq!(
            srv_wire(&k, &raw, false),
            srv_wire(&k, &raw, true),
            "{name}"
        );
    }
}

#[test]
fn replies_carry_opt_when_asked_with_edns() {
    let k = plugin(|_| {});
    let out = run(
        &k,
        &query_edns("svc1.testns.svc.cluster.local.", A, 4096, true),
        Transport::Udp,
        Stub::Rcode(ResponseCode::Refused),
    );
    let m = out.msg.expect("answered");
    let e = m.edns.expect("an OPT record");
    assert_eq!(e.max_payload(), crate::pkg::response::ADVERTISED_UDP_SIZE);
    assert!(e.flags().dnssec_ok);
    assert_eq!(m.answers.len(), 1);
    let out = run(
        &k,
        &query("svc1.testns.svc.cluster.local.", A),
        Transport::Udp,
        Stub::Rcode(ResponseCode::Refused),
    );
    assert!(out.msg.expect("answered").edns.is_none());
}

/// A headless service with more endpoints than a message holds: the
/// answer stops at 65,535 bytes with TC set (the server cuts it further
/// for UDP).
#[test]
fn huge_answers_are_bounded() {
    let k = plugin(|_| {});
    {
        let mut b = k.store().batch();
        b.apply_service(svc("testns", "big", ServiceKind::Headless, HTTP));
        // More than the plugin looks at for one name (8192).
        let eps = (0..9000u32)
            .map(|i| ep(&format!("2001:db8::{:x}", i + 1), "", ""))
            .collect();
        b.apply_slice(slice("testns", "big-1", "big", HTTP, eps));
    }
    // With EDNS, so the OPT record must fit too.
    let raw = query_edns("big.testns.svc.cluster.local.", AAAA, 4096, false);
    let wire = crate::pkg::test::with_context(&raw, Transport::Tcp, |cx| {
        assert!(matches!(k.query(cx), Flow::Answered));
        cx.reply.finish().unwrap().to_vec()
    });
    assert!(wire.len() <= 65535, "{}", wire.len());
    let m = Message::from_vec(&wire).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.edns.is_some());
    assert!(
        m.answers.len() > 1000 && m.answers.len() < 5000,
        "{}",
        m.answers.len()
    );
    // SRV too: weight 1 each, the targets' addresses after them.
    let raw = query("big.testns.svc.cluster.local.", SRV);
    let wire = crate::pkg::test::with_context(&raw, Transport::Tcp, |cx| {
        assert!(matches!(k.query(cx), Flow::Answered));
        cx.reply.finish().unwrap().to_vec()
    });
    assert!(wire.len() <= 65535, "{}", wire.len());
    let m = Message::from_vec(&wire).unwrap();
    assert!(m.metadata.truncation);
    assert!(m.answers.len() > 500, "{}", m.answers.len());
    assert!(
        m.answers[0].to_string().contains(" SRV 0 1 80 "),
        "{}",
        m.answers[0]
    );
}

// === ExternalName ===

#[test]
fn external_name_inside_the_zone_follows_the_chain() {
    let k = plugin(|_| {});
    {
        let mut b = k.store().batch();
        b.apply_service(svc(
            "testns",
            "alias",
            ext("external-to-service.testns.svc.cluster.local"),
            &[],
        ));
        b.apply_service(svc(
            "testns",
            "loop-a",
            ext("loop-b.testns.svc.cluster.local"),
            &[],
        ));
        b.apply_service(svc(
            "testns",
            "loop-b",
            ext("loop-a.testns.svc.cluster.local"),
            &[],
        ));
        b.apply_service(svc(
            "testns",
            "self",
            ext("self.testns.svc.cluster.local"),
            &[],
        ));
        b.apply_service(svc(
            "testns",
            "dangling",
            ext("svc0.testns.svc.cluster.local"),
            &[],
        ));
        b.apply_service(svc("testns", "ip", ext("192.0.2.1"), &[]));
    }
    check(
        &k,
        vec![
            (
                "alias.testns.svc.cluster.local.",
                A,
                answer(&[
                    "alias.testns.svc.cluster.local. 5 IN CNAME external-to-service.testns.svc.cluster.local.",
                    "external-to-service.testns.svc.cluster.local. 5 IN CNAME svc1.testns.svc.cluster.local.",
                    "svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1",
                ]),
            ),
            // A loop, a self-reference and a target that does not exist:
            // no CNAME is kept, the name exists: NODATA.
            ("loop-a.testns.svc.cluster.local.", A, nodata()),
            ("self.testns.svc.cluster.local.", A, nodata()),
            ("dangling.testns.svc.cluster.local.", A, nodata()),
            (
                "dangling.testns.svc.cluster.local.",
                CNAME,
                answer(&[
                    "dangling.testns.svc.cluster.local. 5 IN CNAME svc0.testns.svc.cluster.local.",
                ]),
            ),
            // An address as the external name is never answered.
            ("ip.testns.svc.cluster.local.", A, nxdomain()),
            ("ip.testns.svc.cluster.local.", CNAME, nxdomain()),
            // SRV leaves ExternalName services out.
            ("external.testns.svc.cluster.local.", SRV, nodata()),
            (
                "_http._tcp.external.testns.svc.cluster.local.",
                SRV,
                nxdomain(),
            ),
            ("external.testns.svc.cluster.local.", TXT, nodata()),
        ],
    );
}

/// A chain that answers every re-run with a canned reply (or fails).
struct Canned(Option<Vec<u8>>);

impl Chain for Canned {
    fn spawn_after(
        &self,
        _after: usize,
        _query: Vec<u8>,
        _client: SocketAddr,
        _transport: Transport,
        _done: RefreshDone,
    ) {
        panic!("an ExternalName target is asked of the whole server, not the rest of the block");
    }

    fn spawn_server(
        &self,
        query: Vec<u8>,
        _client: SocketAddr,
        _transport: Transport,
        done: RefreshDone,
    ) {
        let q = Message::from_vec(&query).expect("a query");
        assert_eq!(q.queries[0].name().to_string(), "ext.interwebs.test.");
        done(match &self.0 {
            Some(r) => Rerun::Reply(r.clone()),
            None => Rerun::Failed,
        });
    }
}

async fn exchange(k: &Kubernetes, chain: &dyn Chain, name: &str, qtype: RecordType) -> Got {
    let raw = query(name, qtype);
    let req = Request::parse(&raw, crate::pkg::test::client(), Transport::Udp).unwrap();
    let server = crate::plugin::ServerInfo {
        name: Arc::from("dns://:53"),
        zones: vec![".".into()],
        port: 53,
    };
    let mut reply = crate::plugin::Reply::new();
    let mut cx = Context {
        req: &req,
        server: &server,
        zone: &[0],
        reply: &mut reply,
        start: tokio::time::Instant::now(),
        next: crate::plugin::Next { chain, at: 0 },
    };
    let flow = k.exchange(&mut cx).await;
    assert!(matches!(flow, Flow::Answered), "{flow:?}");
    let m = Message::from_vec(cx.reply.finish().unwrap()).unwrap();
    check_header(&m, name);
    Got::Reply {
        rcode: m.metadata.response_code,
        answer: show(&m.answers),
        ns: show(&m.authorities),
        extra: show(&m.additionals),
    }
}

/// "CNAME External Truncated Lookup": the target outside the zone is asked
/// of the rest of the chain; its answer (and TC) joins the CNAME.
#[tokio::test]
async fn external_name_outside_the_zone() {
    let k = plugin(|_| {});
    assert_eq!(
        ask(&k, "external.testns.svc.cluster.local.", A),
        Got::Upstream,
        "the query step hands it to the network step"
    );
    let mut up = Message::response(1, hickory_proto::op::OpCode::Query);
    up.metadata.truncation = true;
    up.add_answer(Record::from_rdata(
        hickory_proto::rr::Name::from_ascii("ext.interwebs.test.").unwrap(),
        5,
        hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A::new(1, 2, 3, 4)),
    ));
    let chain = Canned(Some(up.to_vec().unwrap()));
    let raw = query("external.testns.svc.cluster.local.", A);
    let truncated = {
        let req = Request::parse(&raw, crate::pkg::test::client(), Transport::Udp).unwrap();
        let server = crate::plugin::ServerInfo {
            name: Arc::from("dns://:53"),
            zones: vec![".".into()],
            port: 53,
        };
        let mut reply = crate::plugin::Reply::new();
        let mut cx = Context {
            req: &req,
            server: &server,
            zone: &[0],
            reply: &mut reply,
            start: tokio::time::Instant::now(),
            next: crate::plugin::Next {
                chain: &chain,
                at: 0,
            },
        };
        let _ = k.exchange(&mut cx).await;
        Message::from_vec(cx.reply.finish().unwrap())
            .unwrap()
            .metadata
            .truncation
    };
    assert!(truncated, "TC from the upstream answer");
    assert_eq!(
        exchange(&k, &chain, "external.testns.svc.cluster.local.", A).await,
        answer(&[
            "ext.interwebs.test. 5 IN A 1.2.3.4",
            "external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test.",
        ])
    );
    // The chain failed (SERVFAIL): the CNAME alone, as CoreDNS.
    assert_eq!(
        exchange(&k, &Canned(None), "external.testns.svc.cluster.local.", A).await,
        answer(&["external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."])
    );
    // Nothing could be asked: the CNAME is dropped (NODATA).
    assert_eq!(
        exchange(
            &k,
            &crate::plugin::NoChain,
            "external.testns.svc.cluster.local.",
            A
        )
        .await,
        nodata()
    );
}

// === The store ===

#[test]
fn relist_deletes_what_it_did_not_see() {
    let k = plugin(|c| c.pods = PodMode::Verified);
    let store = k.store();
    {
        let mut b = store.batch();
        for kind in [
            Kind::Services,
            Kind::EndpointSlices,
            Kind::Pods,
            Kind::Namespaces,
        ] {
            b.begin_resync(kind);
        }
        b.apply_namespace("testns");
        b.apply_service(svc("testns", "svc1", ips(&["10.0.0.1"]), HTTP));
        b.apply_service(svc("testns", "hdls1", ServiceKind::Headless, &[]));
        b.apply_slice(slice(
            "testns",
            "hdls1-slice1",
            "hdls1",
            HTTP,
            vec![ep("172.0.0.9", "", "")],
        ));
    }
    // Not published while the relist runs: the old view answers.
    assert_eq!(
        ask(&k, "svc6.testns.svc.cluster.local.", AAAA),
        answer(&["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"])
    );
    {
        let mut b = store.batch();
        for kind in [
            Kind::Services,
            Kind::EndpointSlices,
            Kind::Pods,
            Kind::Namespaces,
        ] {
            b.finish_resync(kind);
        }
    }
    check(
        &k,
        vec![
            ("svc6.testns.svc.cluster.local.", AAAA, nxdomain()),
            (
                "hdls1.testns.svc.cluster.local.",
                A,
                answer(&["hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.9"]),
            ),
            ("svc1.kube-system.svc.cluster.local.", A, nxdomain()),
            ("10-240-0-1.podns.pod.cluster.local.", A, nxdomain()),
        ],
    );
    assert_eq!(
        store.stats(),
        StoreStats {
            services: 2,
            slices: 1,
            endpoints: 1,
            pods: 0,
            namespaces: 1,
        }
    );
    // The reverse index forgot the old addresses too.
    assert!(store.with_endpoint_ip("172.0.0.2".parse().unwrap(), |s| s.is_empty()));
    assert!(store.with_cluster_ip("10.0.0.10".parse().unwrap(), |s| s.is_empty()));
}

#[test]
fn synced_waits_for_every_needed_kind() {
    let store = Store::new(StoreOptions {
        endpoints: true,
        pods: false,
        endpoint_pod_names: false,
        zones: false,
    });
    assert_eq!(
        store.required(),
        vec![Kind::Services, Kind::EndpointSlices, Kind::Namespaces]
    );
    store.batch().finish_resync(Kind::Services);
    store.batch().finish_resync(Kind::Namespaces);
    assert!(!store.synced());
    store.batch().finish_resync(Kind::EndpointSlices);
    assert!(store.synced());
}

#[test]
fn changes_show_at_once_and_bump_the_serial() {
    let store = Store::new(StoreOptions {
        endpoints: true,
        pods: false,
        endpoint_pod_names: false,
        zones: false,
    });
    assert_eq!(store.serial(), 0);
    store.batch().apply_namespace("ns");
    assert_eq!(store.serial(), 0, "namespaces do not change the serial");
    store
        .batch()
        .apply_service(svc("ns", "a", ips(&["10.1.1.1"]), HTTP));
    assert!(store.serial() > 0);
    let key = b"a.ns";
    assert!(store.with_service(key, |e| e.is_some_and(|e| e.service.is_some())));
    // A slice before its service, a service deleted before its slice.
    store
        .batch()
        .apply_slice(slice("ns", "b-1", "b", HTTP, vec![ep("10.2.0.1", "", "")]));
    assert!(store.with_service(b"b.ns", |e| e.is_some_and(|e| e.service.is_none())));
    store
        .batch()
        .apply_service(svc("ns", "b", ServiceKind::Headless, HTTP));
    store.batch().delete_service("ns", "b");
    assert!(store.with_service(b"b.ns", |e| e.is_some_and(|e| e.slices.len() == 1)));
    store.batch().delete_slice("ns", "b-1");
    assert!(store.with_service(b"b.ns", |e| e.is_none()));
    assert!(store.with_endpoint_ip("10.2.0.1".parse().unwrap(), |s| s.is_empty()));
    // A slice that moves to another service leaves the first.
    store
        .batch()
        .apply_slice(slice("ns", "m-1", "a", HTTP, vec![ep("10.2.0.2", "", "")]));
    store
        .batch()
        .apply_slice(slice("ns", "m-1", "c", HTTP, vec![ep("10.2.0.2", "", "")]));
    assert!(store.with_service(b"a.ns", |e| e.is_some_and(|e| e.slices.is_empty())));
    assert!(store.with_service(b"c.ns", |e| e.is_some_and(|e| e.slices.len() == 1)));
    assert!(store.with_endpoint_ip("10.2.0.2".parse().unwrap(), |s| s.len() == 1));
    // Not-ready endpoints are left out; names that cannot be labels too.
    let mut not_ready = ep("10.2.0.3", "", "");
    not_ready.ready = Some(false);
    store.batch().apply_slice(slice(
        "ns",
        "n-1",
        "a",
        HTTP,
        vec![not_ready, ep("10.2.0.4", "", "")],
    ));
    assert!(store.with_endpoint_ip("10.2.0.3".parse().unwrap(), |s| s.is_empty()));
    assert!(store.with_endpoint_ip("10.2.0.4".parse().unwrap(), |s| s.len() == 1));
    store
        .batch()
        .apply_service(svc("ns", &"x".repeat(64), ips(&["10.9.9.9"]), HTTP));
    assert!(store.with_cluster_ip("10.9.9.9".parse().unwrap(), |s| s.is_empty()));
    // A cluster IP that changes moves in the reverse index.
    store
        .batch()
        .apply_service(svc("ns", "a", ips(&["10.1.1.2"]), HTTP));
    assert!(store.with_cluster_ip("10.1.1.1".parse().unwrap(), |s| s.is_empty()));
    assert!(store.with_cluster_ip("10.1.1.2".parse().unwrap(), |s| s.len() == 1));
}

#[test]
fn service_kinds_from_the_spec() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        ServiceKind::from_spec(
            Some("ClusterIP"),
            &s(&["10.0.0.1", "fd00::1"]),
            Some("10.0.0.1"),
            None
        ),
        ips(&["10.0.0.1", "fd00::1"])
    );
    assert_eq!(
        ServiceKind::from_spec(None, &[], Some("10.0.0.1"), None),
        ips(&["10.0.0.1"])
    );
    assert_eq!(
        ServiceKind::from_spec(Some("ClusterIP"), &s(&["None"]), Some("None"), None),
        ServiceKind::Headless
    );
    assert_eq!(
        ServiceKind::from_spec(Some("ExternalName"), &[], None, Some("example.org")),
        ext("example.org")
    );
    assert_eq!(
        ServiceKind::from_spec(Some("LoadBalancer"), &s(&["10.0.0.1", "bogus"]), None, None),
        ips(&["10.0.0.1"])
    );
    assert_eq!(
        parse_ip("::ffff:192.0.2.1"),
        Some("192.0.2.1".parse().unwrap())
    );
}

// === Names ===

/// `TestParseRequest` and `TestParseInvalidRequest` (multicluster rows
/// left out; the zonal ones are in `tests_zonal.rs`).
#[test]
fn parse_requests() {
    let zone = "inter.webs.tests.";
    let zl = name_to_wire(zone).unwrap().len();
    let show = |name: &str| -> Result<String, ()> {
        let lower = name_to_wire(name).unwrap();
        let q = QName::new(&lower, zl);
        let r = parse_request(&q, || false).map_err(|_| ())?;
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let space = match r.space {
            Some(Space::Svc) => "svc",
            Some(Space::Pod) => "pod",
            None => "",
        };
        // CoreDNS's recordRequest.String(), the cluster always empty.
        Ok(format!(
            "{}.{}.{}..{}.{}.{}",
            s(r.port),
            s(r.protocol),
            s(r.endpoint),
            s(r.service),
            s(r.namespace),
            space
        ))
    };
    for (name, want) in [
        (
            "_http._tcp.webs.mynamespace.svc.inter.webs.tests.",
            "http.tcp...webs.mynamespace.svc",
        ),
        (
            "1-2-3-4.webs.mynamespace.svc.inter.webs.tests.",
            "..1-2-3-4..webs.mynamespace.svc",
        ),
        ("inter.webs.tests.", "......"),
        ("svc.inter.webs.tests.", "......"),
        ("pod.inter.webs.tests.", "......"),
    ] {
        assert_eq!(show(name), Ok(want.to_string()), "{name}");
    }
    for bad in [
        "webs.mynamespace.pood.inter.webs.tests.",
        "too.long.for.what.I.am.trying.to.pod.inter.webs.tests.",
        "us-west-2a.pin._zone.webs.mynamespace.svc.inter.webs.tests.",
    ] {
        assert!(show(bad).is_err(), "{bad}");
    }
}

#[test]
fn reverse_names() {
    let ip = |s: &str| address_from_reverse(&name_to_wire(s).unwrap());
    assert_eq!(
        ip("54.119.58.176.in-addr.arpa."),
        Some("176.58.119.54".parse().unwrap())
    );
    assert_eq!(
        ip("b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."),
        Some("2001:db8::567:89ab".parse().unwrap())
    );
    assert_eq!(ip("5.0.10.in-addr.arpa."), None);
    assert_eq!(ip("in-addr.arpa."), None);
    assert_eq!(ip("1.2.3.4.example.org."), None);
    assert_eq!(ip("x.0.0.10.in-addr.arpa."), None);
}

/// The README's `~~~ corefile` examples parse (the e2e README test loads
/// them whole once the plugin is registered).
#[test]
fn readme_examples_parse() {
    let text = include_str!("README.md");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.starts_with("~~~ corefile") => current = Some(String::new()),
            Some(b) if line.starts_with("~~~") => blocks.push(current.take().unwrap_or_default()),
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    assert_eq!(blocks.len(), 5);
    let file: Arc<str> = Arc::from("Corefile");
    for b in blocks {
        let tokens = lex(&file, &b).unwrap();
        let start = tokens.iter().position(|t| t.text == "kubernetes").unwrap();
        // The directive's tokens: to the end of its block.
        let mut end = start + 1;
        let mut depth = 0;
        while end < tokens.len() {
            match tokens[end].text.as_str() {
                "{" => depth += 1,
                "}" => depth -= 1,
                _ => {}
            }
            end += 1;
            if depth == 0 && tokens[end - 1].text == "}" {
                break;
            }
        }
        let mut d = Dispenser::new("kubernetes", &tokens[start..end]);
        parse(&mut d, &block(&["cluster.local."])).unwrap_or_else(|e| panic!("{b}: {e}"));
    }
}
