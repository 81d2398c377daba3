//! Tables for `multicluster`: the syntax (CoreDNS's
//! `TestKubernetesParseMulticluster`), the answers over ServiceImports
//! built in memory (`TestMultiClusterServeDNS` of `handler_test.go` with
//! its `svcImportIndex` and `mcEpsIndex`, the multicluster cases of
//! `kubernetes_test.go`'s `TestServices`, `parse_test.go` and
//! `controller_test.go`'s `TestMultiClusterHeadless`), the store, and the
//! objects as read from the API.

use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType::{A, AAAA, CNAME, NS, SOA as TSOA, SRV, TXT};

use super::super::tests::{
    Case, Got, HTTP, SOA, answer, ask, check, config, ep, nodata, nxdomain, parse_text, reply,
    serve_test_objects, sync, with_extra,
};
use super::super::{EndpointRecord, Kubernetes, KubernetesConfig, PortRecord, Store, StoreOptions};
use super::watch::{ServiceImport, import_record, mc_slice_record, slice_selector};
use super::*;
use k8s_openapi::serde_json;

fn cluster_store() -> Arc<Store> {
    Store::new(StoreOptions {
        endpoints: true,
        pods: false,
        endpoint_pod_names: false,
        zones: false,
    })
}

// === Setup ===

#[test]
fn setup_table() {
    let ok = |text: &str| parse_text(text).map(|c| c.multicluster);
    assert_eq!(
        ok("kubernetes coredns.local clusterset.local {\n\tmulticluster clusterset.local\n}"),
        Ok(vec!["clusterset.local.".to_string()])
    );
    assert_eq!(
        ok("kubernetes coredns.local {\n\tmulticluster clusterset.local\n}"),
        Err("Corefile:2: kubernetes: is not authoritative for the multicluster zone clusterset.local. (authoritative zones: [coredns.local.])".into())
    );
    assert_eq!(
        ok("kubernetes coredns.local clusterset.local {\n\tmulticluster clusterset.local test.local\n}"),
        Err("Corefile:2: kubernetes: is not authoritative for the multicluster zone test.local. (authoritative zones: [coredns.local. clusterset.local.])".into())
    );
    // No zones: no multicluster, as CoreDNS.
    assert_eq!(
        ok("kubernetes coredns.local {\n\tmulticluster\n}"),
        Ok(vec![])
    );
    // Normalised as the plugin's zones are; the last line wins.
    assert_eq!(
        ok(
            "kubernetes a.local ClusterSet.Local. {\n multicluster a.local\n multicluster dns://CLUSTERSET.local:53\n}"
        ),
        Ok(vec!["clusterset.local.".to_string()])
    );
    // The block's zones, when the plugin names none.
    assert_eq!(
        ok("kubernetes {\n multicluster cluster.local\n}"),
        Ok(vec!["cluster.local.".to_string()])
    );
    assert_eq!(
        ok("kubernetes cluster.local {\n multicluster ..bad\n}"),
        Err("Corefile:2: kubernetes: invalid zone '..bad'".into())
    );
    // `zonal` goes with `multicluster` (its names are not defined in the
    // multicluster zones).
    assert_eq!(
        parse_text(
            "kubernetes cluster.local clusterset.local {\n zonal\n multicluster clusterset.local\n}"
        )
        .map(|c| (c.zonal, c.multicluster)),
        Ok((true, vec!["clusterset.local.".to_string()]))
    );
}

#[test]
fn zones_and_their_subdomains_are_multicluster() {
    let store = cluster_store();
    let mc = Multicluster::new(&["clusterset.local.".to_string()], None, &store).unwrap();
    let wire = |s: &str| crate::request::name_to_wire(s).unwrap();
    assert!(mc.serves(&wire("clusterset.local.")));
    assert!(mc.serves(b"\x0aClusterSet\x05LOCAL\x00"));
    assert!(mc.serves(&wire("a.clusterset.local.")));
    assert!(!mc.serves(&wire("cluster.local.")));
    assert!(!mc.serves(&wire("local.")));
    assert!(!mc.serves(&wire("xclusterset.local.")));
    assert!(!mc.serves(b"\x0aclusterset"), "cut short");
    assert!(Multicluster::new(&[], None, &store).is_none());
}

// === The objects of `handler_test.go` ===

fn port(name: &str, protocol: &str, port: i32) -> PortRecord {
    PortRecord {
        name: Some(name.into()),
        protocol: Some(protocol.into()),
        port: Some(port),
    }
}

fn import(ns: &str, name: &str, kind: ImportKind, ports: &[(&str, &str, i32)]) -> ImportRecord {
    ImportRecord {
        namespace: ns.into(),
        name: name.into(),
        kind,
        ports: ports.iter().map(|(n, p, x)| port(n, p, *x)).collect(),
    }
}

fn set_ips(list: &[&str]) -> ImportKind {
    ImportKind::ClusterSetIp(list.iter().map(|s| s.parse().unwrap()).collect())
}

fn mc_slice(
    ns: &str,
    name: &str,
    service: &str,
    cluster: &str,
    ports: &[(&str, &str, i32)],
    endpoints: Vec<EndpointRecord>,
) -> McSliceRecord {
    McSliceRecord {
        namespace: ns.into(),
        name: name.into(),
        service: Some(service.into()),
        cluster: (!cluster.is_empty()).then(|| cluster.into()),
        ports: ports.iter().map(|(n, p, x)| port(n, p, *x)).collect(),
        endpoints,
    }
}

/// `svcImportIndex` and `mcEpsIndex` of `handler_test.go`.
fn import_test_objects(store: &McStore) {
    let mut b = store.batch();
    b.apply_import(import(
        "kube-system",
        "kubedns",
        set_ips(&["10.0.0.10"]),
        &[("dns", "udp", 53)],
    ));
    b.apply_import(import("testns", "svc1", set_ips(&["10.0.0.1"]), HTTP));
    b.apply_import(import("testns", "svcempty", set_ips(&["10.0.0.1"]), HTTP));
    b.apply_import(import("testns", "svc6", set_ips(&["1234:abcd::1"]), HTTP));
    b.apply_import(import("testns", "hdls1", ImportKind::Headless, &[]));
    b.apply_import(import("testns", "hdlsprtls", ImportKind::Headless, &[]));
    b.apply_import(import("unexposedns", "svc1", set_ips(&["10.0.0.2"]), HTTP));
    b.apply_import(import(
        "testns",
        "svc-dual-stack",
        set_ips(&["10.0.0.3", "10::3"]),
        HTTP,
    ));
    b.apply_slice(mc_slice(
        "kube-system",
        "kubedns",
        "kubedns",
        "cluster1",
        &[("dns", "udp", 53)],
        vec![ep("172.0.0.100", "", "")],
    ));
    b.apply_slice(mc_slice(
        "testns",
        "svc1-slice1",
        "svc1",
        "cluster1",
        HTTP,
        vec![ep("172.0.0.1", "ep1a", "")],
    ));
    b.apply_slice(mc_slice(
        "testns",
        "svcempty-slice1",
        "svcempty",
        "cluster1",
        HTTP,
        vec![],
    ));
    b.apply_slice(mc_slice(
        "testns",
        "hdls1-slice1",
        "hdls1",
        "cluster1",
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
    b.apply_slice(mc_slice(
        "testns",
        "hdlsprtls-slice1",
        "hdlsprtls",
        "cluster1",
        &[],
        vec![ep("172.0.0.20", "", "")],
    ));
}

fn sync_mc(store: &McStore) {
    let mut b = store.batch();
    b.finish_resync(McKind::ServiceImports);
    b.finish_resync(McKind::EndpointSlices);
}

/// A plugin with `multicluster` over the cluster objects of
/// `handler_test.go` and its imports, synced.
fn plugin(zones: &[&str], mc: &[&str], f: impl FnOnce(&mut KubernetesConfig)) -> Kubernetes {
    let mut cfg = config(zones);
    cfg.multicluster = mc.iter().map(|z| z.to_string()).collect();
    f(&mut cfg);
    let k = Kubernetes::new(&cfg, None);
    serve_test_objects(k.store());
    sync(k.store());
    let store = k.multicluster_store().expect("multicluster");
    import_test_objects(store);
    sync_mc(store);
    k
}

/// `TestMultiClusterServeDNS`: `cluster.local` is the multicluster zone;
/// `commonDnsTestCases` (as for the cluster zone, now answered from the
/// imports) and `multiclusterDnsTestCases`.
#[test]
fn coredns_multicluster_handler_cases() {
    let k = plugin(&["cluster.local."], &["cluster.local."], |c| {
        c.namespaces = ["testns".to_string()].into();
    });
    let mut cases: Vec<Case> = vec![
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
    ];
    // multiclusterDnsTestCases
    cases.extend([
        (
            "_http._tcp.hdls1.testns.svc.cluster.local.",
            SRV,
            with_extra(
                &[
                    "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 172-0-0-2.cluster1.hdls1.testns.svc.cluster.local.",
                    "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 172-0-0-3.cluster1.hdls1.testns.svc.cluster.local.",
                    "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 5678-abcd--1.cluster1.hdls1.testns.svc.cluster.local.",
                    "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 5678-abcd--2.cluster1.hdls1.testns.svc.cluster.local.",
                    "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 dup-name.cluster1.hdls1.testns.svc.cluster.local.",
                ],
                &[
                    "172-0-0-2.cluster1.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2",
                    "172-0-0-3.cluster1.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3",
                    "5678-abcd--1.cluster1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
                    "5678-abcd--2.cluster1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
                    "dup-name.cluster1.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
                    "dup-name.cluster1.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
                ],
            ),
        ),
        (
            "5678-abcd--2.cluster1.hdls1.testns.svc.cluster.local.",
            AAAA,
            answer(&[
                "5678-abcd--2.cluster1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
            ]),
        ),
        (
            "5678-abcd--1.cluster1.hdls1.testns.svc.cluster.local.",
            AAAA,
            answer(&[
                "5678-abcd--1.cluster1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
            ]),
        ),
        (
            "172-0-0-20.cluster1.hdlsprtls.testns.svc.cluster.local.",
            A,
            answer(&["172-0-0-20.cluster1.hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"]),
        ),
        // Without the cluster: no such endpoint.
        (
            "5678-abcd--1.hdls1.testns.svc.cluster.local.",
            AAAA,
            nxdomain(),
        ),
        (
            "172-0-0-2.cluster1.hdls1.testns.svc.cluster.local.",
            A,
            answer(&["172-0-0-2.cluster1.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2"]),
        ),
        (
            "172-0-0-3.cluster1.hdls1.testns.svc.cluster.local.",
            A,
            answer(&["172-0-0-3.cluster1.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3"]),
        ),
        (
            "dup-name.cluster1.hdls1.testns.svc.cluster.local.",
            A,
            answer(&[
                "dup-name.cluster1.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
                "dup-name.cluster1.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
            ]),
        ),
    ]);
    check(&k, cases);
}

const SET_SOA: &str = "clusterset.test. 5 IN SOA ns.dns.clusterset.test. hostmaster.clusterset.test. SERIAL 7200 1800 86400 5";

fn set_nxdomain() -> Got {
    reply(ResponseCode::NXDomain, &[], &[SET_SOA], &[])
}

fn set_nodata() -> Got {
    reply(ResponseCode::NoError, &[], &[SET_SOA], &[])
}

/// `TestServices` of `kubernetes_test.go`: a cluster zone and a
/// multicluster zone side by side; each answers from its own objects.
#[test]
fn coredns_services_in_both_zones() {
    let k = plugin(
        &["interwebs.test.", "clusterset.test."],
        &["clusterset.test."],
        |_| {},
    );
    {
        // A cluster service the imports do not have, and the reverse.
        let mut b = k.store().batch();
        b.apply_service(super::super::ServiceRecord {
            namespace: "testns".into(),
            name: "local-only".into(),
            kind: super::super::ServiceKind::ClusterIp(vec!["10.9.9.9".parse().unwrap()]),
            ports: vec![port("http", "tcp", 80)],
        });
        let mc = k.multicluster_store().unwrap();
        mc.batch().apply_import(import(
            "testns",
            "imported-only",
            set_ips(&["10.8.8.8"]),
            HTTP,
        ));
    }
    check(
        &k,
        vec![
            // The cluster zone: Services and their EndpointSlices.
            (
                "svc1.testns.svc.interwebs.test.",
                A,
                answer(&["svc1.testns.svc.interwebs.test. 5 IN A 10.0.0.1"]),
            ),
            (
                "ep1a.svc1.testns.svc.interwebs.test.",
                A,
                answer(&["ep1a.svc1.testns.svc.interwebs.test. 5 IN A 172.0.0.1"]),
            ),
            (
                "external.testns.svc.interwebs.test.",
                CNAME,
                answer(&["external.testns.svc.interwebs.test. 5 IN CNAME ext.interwebs.test."]),
            ),
            (
                "172-0-0-2.hdls1.testns.svc.interwebs.test.",
                A,
                answer(&["172-0-0-2.hdls1.testns.svc.interwebs.test. 5 IN A 172.0.0.2"]),
            ),
            (
                "local-only.testns.svc.interwebs.test.",
                A,
                answer(&["local-only.testns.svc.interwebs.test. 5 IN A 10.9.9.9"]),
            ),
            (
                "imported-only.testns.svc.interwebs.test.",
                A,
                reply(
                    ResponseCode::NXDomain,
                    &[],
                    &[
                        "interwebs.test. 5 IN SOA ns.dns.interwebs.test. hostmaster.interwebs.test. SERIAL 7200 1800 86400 5",
                    ],
                    &[],
                ),
            ),
            // The multicluster zone: ServiceImports and theirs.
            (
                "svc1.testns.svc.clusterset.test.",
                A,
                answer(&["svc1.testns.svc.clusterset.test. 5 IN A 10.0.0.1"]),
            ),
            (
                "_http._tcp.svc1.testns.svc.clusterset.test.",
                SRV,
                with_extra(
                    &[
                        "_http._tcp.svc1.testns.svc.clusterset.test. 5 IN SRV 0 100 80 svc1.testns.svc.clusterset.test.",
                    ],
                    &["svc1.testns.svc.clusterset.test. 5 IN A 10.0.0.1"],
                ),
            ),
            // An endpoint of a ClusterSetIP import, by cluster.
            (
                "ep1a.cluster1.svc1.testns.svc.clusterset.test.",
                A,
                answer(&["ep1a.cluster1.svc1.testns.svc.clusterset.test. 5 IN A 172.0.0.1"]),
            ),
            ("ep1a.svc1.testns.svc.clusterset.test.", A, set_nxdomain()),
            (
                "ep1a.cluster2.svc1.testns.svc.clusterset.test.",
                A,
                set_nxdomain(),
            ),
            (
                "_http._tcp.svc-dual-stack.testns.svc.clusterset.test.",
                SRV,
                with_extra(
                    &[
                        "_http._tcp.svc-dual-stack.testns.svc.clusterset.test. 5 IN SRV 0 50 80 svc-dual-stack.testns.svc.clusterset.test.",
                    ],
                    &[
                        "svc-dual-stack.testns.svc.clusterset.test. 5 IN A 10.0.0.3",
                        "svc-dual-stack.testns.svc.clusterset.test. 5 IN AAAA 10::3",
                    ],
                ),
            ),
            (
                "hdls1.testns.svc.clusterset.test.",
                A,
                answer(&[
                    "hdls1.testns.svc.clusterset.test. 5 IN A 172.0.0.2",
                    "hdls1.testns.svc.clusterset.test. 5 IN A 172.0.0.3",
                    "hdls1.testns.svc.clusterset.test. 5 IN A 172.0.0.4",
                    "hdls1.testns.svc.clusterset.test. 5 IN A 172.0.0.5",
                ]),
            ),
            (
                "imported-only.testns.svc.clusterset.test.",
                A,
                answer(&["imported-only.testns.svc.clusterset.test. 5 IN A 10.8.8.8"]),
            ),
            ("local-only.testns.svc.clusterset.test.", A, set_nxdomain()),
            // No ExternalName imports.
            (
                "external.testns.svc.clusterset.test.",
                CNAME,
                set_nxdomain(),
            ),
            // The rest of the zone as in the cluster zone.
            ("clusterset.test.", A, set_nodata()),
            ("testns.svc.clusterset.test.", A, set_nodata()),
            ("svc1.nonesuch.svc.clusterset.test.", A, set_nxdomain()),
            (
                "dns-version.clusterset.test.",
                TXT,
                answer(&["dns-version.clusterset.test. 28800 IN TXT 1.1.0"]),
            ),
            ("svc1.testns.svc.clusterset.test.", TXT, set_nodata()),
            ("svc1.testns.svc.clusterset.test.", AAAA, set_nodata()),
            ("svc1.testns.svc.clusterset.test.", NS, set_nodata()),
        ],
    );
}

/// `parse_test.go`'s multicluster shape: two labels before the service are
/// `endpoint.cluster`, unless either starts with `_`.
#[test]
fn endpoint_and_cluster_or_port_and_protocol() {
    let k = plugin(
        &["cluster.local.", "clusterset.local."],
        &["clusterset.local."],
        |_| {},
    );
    {
        let mc = k.multicluster_store().unwrap();
        let mut b = mc.batch();
        // A cluster named like a protocol.
        b.apply_slice(mc_slice(
            "testns",
            "svc1-slice2",
            "svc1",
            "tcp",
            HTTP,
            vec![ep("172.0.0.9", "http", "")],
        ));
    }
    let set = |s: &str| s.replace("cluster.local.", "clusterset.local.");
    let srv_svc1 = with_extra(
        &[&set(
            "_http._tcp.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local.",
        )],
        &[&set("svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1")],
    );
    check(
        &k,
        vec![
            // `http.tcp`: the endpoint `http` of the cluster `tcp`.
            (
                "http.tcp.svc1.testns.svc.clusterset.local.",
                A,
                answer(&["http.tcp.svc1.testns.svc.clusterset.local. 5 IN A 172.0.0.9"]),
            ),
            (
                "_http._tcp.svc1.testns.svc.clusterset.local.",
                SRV,
                srv_svc1,
            ),
            (
                "_http.tcp.svc1.testns.svc.clusterset.local.",
                SRV,
                with_extra(
                    &[&set(
                        "_http.tcp.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local.",
                    )],
                    &[&set("svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1")],
                ),
            ),
            // In the cluster zone, `http.tcp` is a port and a protocol.
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
            // Too long, as anywhere.
            (
                "a.ep1a.cluster1.svc1.testns.svc.clusterset.local.",
                A,
                reply(ResponseCode::NXDomain, &[], &[&set(SOA)], &[]),
            ),
        ],
    );
}

/// `TestMultiClusterHeadless` of `controller_test.go`: a headless import
/// whose slice has only the multicluster label answers in the
/// multicluster zone, and is no service of the cluster zone.
#[test]
fn coredns_multicluster_headless() {
    let mut cfg = config(&["cluster.local.", "clusterset.local."]);
    cfg.multicluster = vec!["clusterset.local.".into()];
    let k = Kubernetes::new(&cfg, None);
    {
        let mut b = k.store().batch();
        b.apply_namespace("testns");
    }
    sync(k.store());
    let mc = k.multicluster_store().unwrap();
    {
        let mut b = mc.batch();
        b.apply_import(import("testns", "svc2", ImportKind::Headless, HTTP));
        b.apply_slice(mc_slice(
            "testns",
            "svc2",
            "svc2",
            "",
            HTTP,
            vec![ep("10.0.0.1", "foo2", "")],
        ));
    }
    sync_mc(mc);
    check(
        &k,
        vec![
            (
                "svc2.testns.svc.clusterset.local.",
                A,
                answer(&["svc2.testns.svc.clusterset.local. 5 IN A 10.0.0.1"]),
            ),
            ("svc2.testns.svc.cluster.local.", A, nxdomain()),
            // Without a source cluster, an endpoint is named without one,
            // and that is its SRV target.
            (
                "foo2.svc2.testns.svc.clusterset.local.",
                A,
                answer(&["foo2.svc2.testns.svc.clusterset.local. 5 IN A 10.0.0.1"]),
            ),
            (
                "svc2.testns.svc.clusterset.local.",
                SRV,
                with_extra(
                    &[
                        "svc2.testns.svc.clusterset.local. 5 IN SRV 0 100 80 foo2.svc2.testns.svc.clusterset.local.",
                    ],
                    &["foo2.svc2.testns.svc.clusterset.local. 5 IN A 10.0.0.1"],
                ),
            ),
        ],
    );
}

/// Letter case: per-endpoint names match any case; owners are spelled as
/// asked; SRV targets carry the zone as asked.
#[test]
fn case_is_kept_and_ignored() {
    let k = plugin(
        &["cluster.local.", "clusterset.local."],
        &["clusterset.local."],
        |_| {},
    );
    {
        let mc = k.multicluster_store().unwrap();
        mc.batch().apply_slice(mc_slice(
            "testns",
            "svc1-slice9",
            "svc1",
            "West-1",
            HTTP,
            vec![ep("172.0.0.8", "Ep9", "")],
        ));
    }
    check(
        &k,
        vec![
            (
                "EP9.WEST-1.Svc1.TestNS.svc.ClusterSet.Local.",
                A,
                answer(&["EP9.WEST-1.Svc1.TestNS.svc.ClusterSet.Local. 5 IN A 172.0.0.8"]),
            ),
            (
                "ep1a.CLUSTER1.svc1.testns.svc.clusterset.local.",
                A,
                answer(&["ep1a.CLUSTER1.svc1.testns.svc.clusterset.local. 5 IN A 172.0.0.1"]),
            ),
            (
                "hdls1.testns.svc.CLUSTERSET.local.",
                TSOA,
                reply(
                    ResponseCode::NoError,
                    &[],
                    &[
                        "CLUSTERSET.local. 5 IN SOA ns.dns.CLUSTERSET.local. hostmaster.CLUSTERSET.local. SERIAL 7200 1800 86400 5",
                    ],
                    &[],
                ),
            ),
        ],
    );
}

/// Edges of what imports and slices hold.
#[test]
fn imports_at_the_edges() {
    let k = plugin(
        &["cluster.local.", "clusterset.local."],
        &["clusterset.local."],
        |c| {
            c.endpoint_pod_names = true;
        },
    );
    {
        let mc = k.multicluster_store().unwrap();
        let mut b = mc.batch();
        // A ClusterSetIP import without ports has no address (CoreDNS adds
        // no sentinel port to imports).
        b.apply_import(import("testns", "portless", set_ips(&["10.0.0.50"]), &[]));
        // A source cluster that is no DNS label: its endpoints answer the
        // import, but no name reaches them and SRV leaves them out.
        b.apply_import(import("testns", "odd", ImportKind::Headless, &[]));
        b.apply_slice(mc_slice(
            "testns",
            "odd-a",
            "odd",
            "a.b",
            HTTP,
            vec![ep("172.0.1.1", "x", "")],
        ));
        b.apply_slice(mc_slice(
            "testns",
            "odd-b",
            "odd",
            "west",
            HTTP,
            vec![
                ep("172.0.1.2", "", "pod-2"),
                EndpointRecord {
                    ready: Some(false),
                    ..ep("172.0.1.3", "y", "")
                },
            ],
        ));
        // A slice before its import: no name yet.
        b.apply_slice(mc_slice(
            "testns",
            "early-1",
            "early",
            "west",
            HTTP,
            vec![ep("172.0.2.1", "", "")],
        ));
        // Names that are not labels are not kept.
        b.apply_import(import(
            "testns",
            &"x".repeat(64),
            set_ips(&["10.0.0.60"]),
            HTTP,
        ));
    }
    let set = |s: &str| s.replace("cluster.local.", "clusterset.local.");
    let nx = || reply(ResponseCode::NXDomain, &[], &[&set(SOA)], &[]);
    check(
        &k,
        vec![
            ("portless.testns.svc.clusterset.local.", A, nx()),
            (
                "odd.testns.svc.clusterset.local.",
                A,
                answer(&[
                    "odd.testns.svc.clusterset.local. 5 IN A 172.0.1.1",
                    "odd.testns.svc.clusterset.local. 5 IN A 172.0.1.2",
                ]),
            ),
            ("x.a.odd.testns.svc.clusterset.local.", A, nx()),
            ("x.odd.testns.svc.clusterset.local.", A, nx()),
            // `endpoint_pod_names` names an endpoint after its pod.
            (
                "pod-2.west.odd.testns.svc.clusterset.local.",
                A,
                answer(&["pod-2.west.odd.testns.svc.clusterset.local. 5 IN A 172.0.1.2"]),
            ),
            (
                "odd.testns.svc.clusterset.local.",
                SRV,
                with_extra(
                    &[
                        "odd.testns.svc.clusterset.local. 5 IN SRV 0 50 80 pod-2.west.odd.testns.svc.clusterset.local.",
                    ],
                    &["pod-2.west.odd.testns.svc.clusterset.local. 5 IN A 172.0.1.2"],
                ),
            ),
            // Not ready: not there.
            ("y.west.odd.testns.svc.clusterset.local.", A, nx()),
            ("early.testns.svc.clusterset.local.", A, nx()),
        ],
    );
    // The import comes: its slice answers.
    {
        let mc = k.multicluster_store().unwrap();
        mc.batch()
            .apply_import(import("testns", "early", ImportKind::Headless, &[]));
    }
    check(
        &k,
        vec![(
            "early.testns.svc.clusterset.local.",
            A,
            answer(&["early.testns.svc.clusterset.local. 5 IN A 172.0.2.1"]),
        )],
    );
    // Deleted, the import goes; its slices wait for it to come back.
    {
        let mc = k.multicluster_store().unwrap();
        mc.batch().delete_import("testns", "early");
    }
    check(&k, vec![("early.testns.svc.clusterset.local.", A, nx())]);
}

/// `ignore empty_service`: a ClusterSetIP import without a ready endpoint
/// is NXDOMAIN; a headless one is not affected.
#[test]
fn ignore_empty_service() {
    let k = plugin(
        &["cluster.local.", "clusterset.local."],
        &["clusterset.local."],
        |c| {
            c.ignore_empty_service = true;
        },
    );
    let set = |s: &str| s.replace("cluster.local.", "clusterset.local.");
    check(
        &k,
        vec![
            (
                "svcempty.testns.svc.clusterset.local.",
                A,
                reply(ResponseCode::NXDomain, &[], &[&set(SOA)], &[]),
            ),
            (
                "svc1.testns.svc.clusterset.local.",
                A,
                answer(&["svc1.testns.svc.clusterset.local. 5 IN A 10.0.0.1"]),
            ),
            (
                "hdlsprtls.testns.svc.clusterset.local.",
                A,
                answer(&["hdlsprtls.testns.svc.clusterset.local. 5 IN A 172.0.0.20"]),
            ),
        ],
    );
}

/// `noendpoints` leaves the cluster's EndpointSlices out, not the
/// imports' (CoreDNS's multicluster informer does not depend on it).
#[test]
fn noendpoints_keeps_the_imports_slices() {
    let k = plugin(
        &["cluster.local.", "clusterset.local."],
        &["clusterset.local."],
        |c| {
            c.endpoints = false;
        },
    );
    check(
        &k,
        vec![
            ("hdlsprtls.testns.svc.cluster.local.", A, nxdomain()),
            (
                "hdlsprtls.testns.svc.clusterset.local.",
                A,
                answer(&["hdlsprtls.testns.svc.clusterset.local. 5 IN A 172.0.0.20"]),
            ),
        ],
    );
}

/// Until the imports are listed too, a missing name is SERVFAIL in every
/// zone, and the plugin is not ready (CoreDNS's `HasSynced` waits for the
/// multicluster informers).
#[test]
fn not_synced_until_imports_are() {
    let mut cfg = config(&["cluster.local.", "clusterset.local."]);
    cfg.multicluster = vec!["clusterset.local.".into()];
    let k = Kubernetes::new(&cfg, None);
    serve_test_objects(k.store());
    sync(k.store());
    let ready = k.readiness();
    assert!(!ready.ready());
    let servfail = |zone: &str| {
        reply(
            ResponseCode::ServFail,
            &[],
            &[&format!(
                "{zone} 5 IN SOA ns.dns.{zone} hostmaster.{zone} SERIAL 7200 1800 86400 5"
            )],
            &[],
        )
    };
    check(
        &k,
        vec![
            (
                "svc0.testns.svc.cluster.local.",
                A,
                servfail("cluster.local."),
            ),
            (
                "svc1.testns.svc.clusterset.local.",
                A,
                servfail("clusterset.local."),
            ),
        ],
    );
    let mc = k.multicluster_store().unwrap();
    mc.batch().finish_resync(McKind::ServiceImports);
    assert!(!ready.ready(), "the slices are not listed yet");
    mc.batch().finish_resync(McKind::EndpointSlices);
    assert!(ready.ready());
    check(&k, vec![("svc0.testns.svc.cluster.local.", A, nxdomain())]);
}

// === Across a reload ===

/// Runs setup for `text` carrying in `carry`.
fn setup_carrying(text: &str, carry: crate::setup::Carry) -> crate::setup::Services {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = crate::lexer::lex(&file, text).unwrap();
    let block = crate::setup::BlockInfo {
        zones: vec!["cluster.local.".into()],
        port: 53,
        server_name: Arc::from("dns://:53"),
        bound: Arc::default(),
    };
    let mut out = crate::setup::BlockSetup::default();
    let mut services = crate::setup::Services {
        carry_in: carry,
        ..Default::default()
    };
    let mut c = crate::setup::Controller {
        d: crate::Dispenser::new("kubernetes", &tokens),
        block: &block,
        out: &mut out,
        services: &mut services,
    };
    super::super::setup(&mut c).unwrap();
    services
}

fn carried_view(s: &crate::setup::Services, text: &str) -> Arc<super::super::watched::Watched> {
    let cfg = parse_text(text).unwrap();
    s.carry_out
        .get::<super::super::watched::Watched>(&super::super::watched::carry_key(&cfg))
        .expect("kept")
}

/// The imports' store is part of the view a reload carries over, synced,
/// its watches running with the cluster's; the plugin is ready (and the
/// start waits) only once both stores are.
#[tokio::test]
async fn a_reload_carries_the_imports_with_the_view() {
    let text = "kubernetes cluster.local clusterset.local {\n endpoint http://127.0.0.1:9\n multicluster clusterset.local\n}";
    let mut first = setup_carrying(text, Default::default());
    let view = carried_view(&first, text);
    let mc = Arc::clone(view.multicluster().expect("the imports' store"));
    let ready = Arc::clone(&first.readiness[0]);
    let start = first.startup.pop().unwrap();
    let waits = Arc::clone(&start.ready);
    assert!(!waits.ready());
    (start.start)();
    assert!(view.running(), "started before serving");
    sync(view.store());
    assert!(!ready.ready(), "the imports are not listed yet");
    sync_mc(&mc);
    assert!(ready.ready() && waits.ready());

    // Same settings: the same imports, synced.
    let again = setup_carrying(text, first.carry_out.clone());
    let kept = carried_view(&again, text);
    assert!(Arc::ptr_eq(kept.multicluster().unwrap(), &mc));
    assert!(again.readiness[0].ready());

    // Without multicluster: a view without imports.
    let other = "kubernetes cluster.local clusterset.local {\n endpoint http://127.0.0.1:9\n}";
    let changed = setup_carrying(other, again.carry_out.clone());
    assert!(carried_view(&changed, other).multicluster().is_none());

    let weak = Arc::downgrade(&mc);
    drop(start.ready);
    drop((view, kept, first, again, changed, mc, ready, waits));
    assert!(weak.upgrade().is_none(), "dropped with the configurations");
}

// === The store ===

#[test]
fn relist_deletes_what_it_did_not_see() {
    let cluster = cluster_store();
    let mc = McStore::new(Arc::clone(&cluster));
    import_test_objects(&mc);
    sync_mc(&mc);
    assert_eq!(
        mc.stats(),
        McStats {
            imports: 8,
            slices: 5,
            endpoints: 9,
        }
    );
    {
        let mut b = mc.batch();
        b.begin_resync(McKind::ServiceImports);
        b.begin_resync(McKind::EndpointSlices);
        b.apply_import(import("testns", "svc1", set_ips(&["10.0.0.1"]), HTTP));
        b.apply_slice(mc_slice(
            "testns",
            "svc1-slice1",
            "svc1",
            "cluster1",
            HTTP,
            vec![ep("172.0.0.1", "ep1a", "")],
        ));
    }
    // Not published until the relist ends.
    assert_eq!(mc.stats().imports, 8);
    {
        let mut b = mc.batch();
        b.finish_resync(McKind::ServiceImports);
        b.finish_resync(McKind::EndpointSlices);
    }
    assert_eq!(
        mc.stats(),
        McStats {
            imports: 1,
            slices: 1,
            endpoints: 1,
        }
    );
    assert!(mc.with_import(b"svc1.testns", |e| e.is_some()));
    assert!(mc.with_import(b"hdls1.testns", |e| e.is_none()));
}

#[test]
fn serials_move_as_coredns_moves_them() {
    let cluster = cluster_store();
    let mc = McStore::new(Arc::clone(&cluster));
    // Adds move the cluster serial only (CoreDNS's informer Add handler).
    mc.batch()
        .apply_import(import("testns", "svc1", set_ips(&["10.0.0.1"]), HTTP));
    assert_ne!(cluster.serial(), 0);
    assert_eq!(mc.serial(), 0);
    // A new address alone is no change to CoreDNS's serviceImportEquivalent.
    mc.batch()
        .apply_import(import("testns", "svc1", set_ips(&["10.0.0.2"]), HTTP));
    assert_eq!(mc.serial(), 0);
    // Ports are.
    mc.batch().apply_import(import(
        "testns",
        "svc1",
        set_ips(&["10.0.0.2"]),
        &[("https", "tcp", 443)],
    ));
    assert_ne!(mc.serial(), 0);
    // Slice updates move it too.
    let mc2 = McStore::new(Arc::clone(&cluster));
    let s = |ip: &str| mc_slice("testns", "s1", "svc1", "c1", HTTP, vec![ep(ip, "", "")]);
    mc2.batch().apply_slice(s("172.0.0.1"));
    assert_eq!(mc2.serial(), 0);
    mc2.batch().apply_slice(s("172.0.0.1"));
    assert_eq!(mc2.serial(), 0, "no change");
    mc2.batch().apply_slice(s("172.0.0.2"));
    assert_ne!(mc2.serial(), 0);
}

/// The SOA of a multicluster zone carries the multicluster serial.
#[test]
fn soa_serial_per_zone() {
    let k = plugin(
        &["cluster.local.", "clusterset.local."],
        &["clusterset.local."],
        |_| {},
    );
    assert!(matches!(
        ask(&k, "clusterset.local.", TSOA),
        Got::Reply { .. }
    ));
    // The tables mask serials; read them raw.
    let raw = |name: &str| -> u32 {
        let out = crate::pkg::test::run(
            &k,
            &crate::pkg::test::query(name, TSOA),
            crate::request::Transport::Udp,
            crate::pkg::test::Stub::Rcode(ResponseCode::Refused),
        );
        let soa = out.msg.unwrap().answers[0].to_string();
        soa.split(' ').nth(6).unwrap().parse().unwrap()
    };
    assert_eq!(raw("clusterset.local."), 0, "no import updated yet");
    assert_ne!(raw("cluster.local."), 0);
    k.multicluster_store().unwrap().batch().apply_import(import(
        "testns",
        "svc1",
        set_ips(&["10.0.0.1"]),
        &[("http", "tcp", 8080)],
    ));
    assert_ne!(raw("clusterset.local."), 0);
}

// === Objects as the API sends them ===

#[test]
fn service_imports_as_the_api_sends_them() {
    let json = r#"{
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7",
                     "labels": {"app": "web"}},
        "spec": {
            "type": "ClusterSetIP",
            "ips": ["10.42.0.7", "fd00::7", "not-an-ip"],
            "ports": [
                {"name": "http", "protocol": "TCP", "appProtocol": "http", "port": 80},
                {"protocol": "UDP", "port": 53},
                {"name": "noport"}
            ],
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4", "IPv6"]
        },
        "status": {"clusters": [{"cluster": "west"}]}
    }"#;
    let si: ServiceImport = serde_json::from_str(json).unwrap();
    assert_eq!(
        import_record(&si),
        ImportRecord {
            namespace: "shop".into(),
            name: "web".into(),
            kind: ImportKind::ClusterSetIp(vec![
                "10.42.0.7".parse().unwrap(),
                "fd00::7".parse().unwrap()
            ]),
            ports: vec![
                port("http", "TCP", 80),
                PortRecord {
                    name: None,
                    protocol: Some("UDP".into()),
                    port: Some(53),
                },
                PortRecord {
                    name: Some("noport".into()),
                    protocol: None,
                    port: Some(0),
                },
            ],
        }
    );
    let headless: ServiceImport = serde_json::from_str(
        r#"{"metadata": {"name": "db", "namespace": "shop"},
            "spec": {"type": "Headless", "ips": null, "ports": null}}"#,
    )
    .unwrap();
    assert_eq!(import_record(&headless).kind, ImportKind::Headless);
    assert!(import_record(&headless).ports.is_empty());
    // No spec, or a type CoreDNS does not know: ClusterSetIP without IPs.
    let bare: ServiceImport =
        serde_json::from_str(r#"{"metadata": {"name": "x", "namespace": "y"}}"#).unwrap();
    assert_eq!(import_record(&bare).kind, ImportKind::ClusterSetIp(vec![]));
    use kube::Resource as _;
    assert_eq!(
        ServiceImport::url_path(&(), Some("shop")),
        "/apis/multicluster.x-k8s.io/v1alpha1/namespaces/shop/serviceimports"
    );
    assert_eq!(
        ServiceImport::url_path(&(), None),
        "/apis/multicluster.x-k8s.io/v1alpha1/serviceimports"
    );
}

#[test]
fn multicluster_slices_as_the_api_sends_them() {
    let json = r#"{
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-west-1", "namespace": "shop",
            "labels": {"multicluster.kubernetes.io/service-name": "web",
                       "multicluster.kubernetes.io/source-cluster": "west",
                       "endpointslice.kubernetes.io/managed-by": "mcs-controller"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [
            {"addresses": ["10.1.0.1"], "hostname": "web-0", "conditions": {"ready": true}},
            {"addresses": ["10.1.0.2"], "conditions": {"ready": false}}
        ]
    }"#;
    let s: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_str(json).unwrap();
    let r = mc_slice_record(&s);
    assert_eq!(r.service.as_deref(), Some("web"));
    assert_eq!(r.cluster.as_deref(), Some("west"));
    assert_eq!(r.ports, vec![port("http", "TCP", 8080)]);
    assert_eq!(r.endpoints.len(), 2);
    assert_eq!(r.endpoints[0].hostname.as_deref(), Some("web-0"));
    assert_eq!(r.endpoints[1].ready, Some(false));
    assert_eq!(
        slice_selector(None),
        "multicluster.kubernetes.io/service-name"
    );
    assert_eq!(
        slice_selector(Some("env=prod".into())),
        "env=prod,multicluster.kubernetes.io/service-name"
    );
}
