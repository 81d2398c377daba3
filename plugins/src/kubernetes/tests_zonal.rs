//! `zonal`: CoreDNS 1.14.7's `zonal_test.go` table, its `parse_test.go`
//! zonal rows, and the edges around them.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType::{A, AAAA, CNAME, MX, PTR, SRV, TXT};

use super::answer::{QName, parse_request};
use super::store::{EndpointRecord, ServiceKind};
use super::tests::{
    Got, HTTP, answer, ask, check, config, ep, nodata, nxdomain, slice, svc, sync, with_extra,
};
use super::*;
use crate::request::name_to_wire;

fn zoned(ip: &str, zone: &str) -> EndpointRecord {
    EndpointRecord {
        zone: Some(zone.into()),
        ..ep(ip, "", "")
    }
}

/// CoreDNS's `APIConnZonalTest` objects (`hdls`, `clstr`), and a few of
/// our own for the edges.
fn objects(store: &Store) {
    let mut b = store.batch();
    b.apply_namespace("testns");
    b.apply_service(svc("testns", "hdls", ServiceKind::Headless, &[]));
    b.apply_service(svc(
        "testns",
        "clstr",
        ServiceKind::ClusterIp(vec!["10.0.0.10".parse().unwrap()]),
        HTTP,
    ));
    b.apply_slice(slice(
        "testns",
        "hdls-slice",
        "hdls",
        HTTP,
        vec![
            zoned("172.0.0.1", "us-west-2a"),
            zoned("172.0.0.2", "us-west-2b"),
            zoned("172.0.0.3", "us-west-2b"),
        ],
    ));
    // Zones with dots and capitals, an endpoint without a zone, one with
    // an empty zone, one in a zone no name can spell, and a hostname.
    b.apply_service(svc("testns", "edge", ServiceKind::Headless, &[]));
    b.apply_slice(slice(
        "testns",
        "edge-a",
        "edge",
        HTTP,
        vec![
            zoned("172.0.1.1", "Corp.Example.COM"),
            EndpointRecord {
                zone: Some("us-east-1a".into()),
                ..ep("fd00::1", "db-0", "")
            },
            ep("172.0.1.3", "", ""),
            zoned("172.0.1.4", ""),
            zoned("172.0.1.5", "bad zone"),
        ],
    ));
    // A second slice of the same service, the same zone.
    b.apply_slice(slice(
        "testns",
        "edge-b",
        "edge",
        &[("dns", "udp", 53)],
        vec![zoned("172.0.1.6", "us-east-1a")],
    ));
    b.apply_service(svc(
        "testns",
        "ext",
        ServiceKind::ExternalName("example.org".into()),
        HTTP,
    ));
}

fn plugin(f: impl FnOnce(&mut KubernetesConfig)) -> Kubernetes {
    let mut cfg = config(&["cluster.local."]);
    cfg.namespaces = ["testns".to_string()].into();
    cfg.zonal = true;
    f(&mut cfg);
    let k = Kubernetes::new(&cfg, None);
    objects(k.store());
    sync(k.store());
    k
}

/// `zonalTestCases` of `zonal_test.go`.
#[test]
fn coredns_zonal_cases() {
    let k = plugin(|_| {});
    check(
        &k,
        vec![
            (
                "us-west-2a.pin._zone.hdls.testns.svc.cluster.local.",
                A,
                answer(&["us-west-2a.pin._zone.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.1"]),
            ),
            (
                "us-west-2b.pin._zone.hdls.testns.svc.cluster.local.",
                A,
                answer(&[
                    "us-west-2b.pin._zone.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.2",
                    "us-west-2b.pin._zone.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.3",
                ]),
            ),
            (
                "us-west-2c.pin._zone.hdls.testns.svc.cluster.local.",
                A,
                nodata(),
            ),
            (
                "us-west-2a.prefer._zone.hdls.testns.svc.cluster.local.",
                A,
                answer(&[
                    "us-west-2a.prefer._zone.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.1",
                ]),
            ),
            (
                "us-west-2c.prefer._zone.hdls.testns.svc.cluster.local.",
                A,
                answer(&[
                    "us-west-2c.prefer._zone.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.1",
                    "us-west-2c.prefer._zone.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.2",
                    "us-west-2c.prefer._zone.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.3",
                ]),
            ),
            (
                "us-west-2a.pin._zone.ghost.testns.svc.cluster.local.",
                A,
                nxdomain(),
            ),
            (
                "us-west-2a.florp._zone.hdls.testns.svc.cluster.local.",
                A,
                nxdomain(),
            ),
            (
                "us-west-2a.pin._zone.clstr.testns.svc.cluster.local.",
                A,
                nxdomain(),
            ),
            (
                "us-west-2c.pin._zone.hdls.testns.svc.cluster.local.",
                TXT,
                nodata(),
            ),
            (
                "us-west-2c.prefer._zone.hdls.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "us-west-2c.prefer._zone.hdls.testns.svc.cluster.local. 5 IN SRV 0 33 80 172-0-0-1.hdls.testns.svc.cluster.local.",
                        "us-west-2c.prefer._zone.hdls.testns.svc.cluster.local. 5 IN SRV 0 33 80 172-0-0-2.hdls.testns.svc.cluster.local.",
                        "us-west-2c.prefer._zone.hdls.testns.svc.cluster.local. 5 IN SRV 0 33 80 172-0-0-3.hdls.testns.svc.cluster.local.",
                    ],
                    &[
                        "172-0-0-1.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.1",
                        "172-0-0-2.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.2",
                        "172-0-0-3.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.3",
                    ],
                ),
            ),
            (
                "us-west-2c.prefer._zone.hdls.testns.svc.cluster.local.",
                TXT,
                nodata(),
            ),
            (
                "us-west-2b.pin._zone.hdls.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "us-west-2b.pin._zone.hdls.testns.svc.cluster.local. 5 IN SRV 0 50 80 172-0-0-2.hdls.testns.svc.cluster.local.",
                        "us-west-2b.pin._zone.hdls.testns.svc.cluster.local. 5 IN SRV 0 50 80 172-0-0-3.hdls.testns.svc.cluster.local.",
                    ],
                    &[
                        "172-0-0-2.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.2",
                        "172-0-0-3.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.3",
                    ],
                ),
            ),
        ],
    );
}

/// `zonalDisabledTestCases`: without the option the shape is too long.
#[test]
fn without_the_option_zonal_names_are_too_long() {
    let k = plugin(|c| c.zonal = false);
    check(
        &k,
        vec![
            (
                "us-west-2a.pin._zone.hdls.testns.svc.cluster.local.",
                A,
                nxdomain(),
            ),
            (
                "us-west-2a.prefer._zone.hdls.testns.svc.cluster.local.",
                SRV,
                nxdomain(),
            ),
            (
                "us-west-2c.pin._zone.hdls.testns.svc.cluster.local.",
                TXT,
                nxdomain(),
            ),
        ],
    );
    // The plain names are as ever.
    check(
        &k,
        vec![(
            "hdls.testns.svc.cluster.local.",
            A,
            answer(&[
                "hdls.testns.svc.cluster.local. 5 IN A 172.0.0.1",
                "hdls.testns.svc.cluster.local. 5 IN A 172.0.0.2",
                "hdls.testns.svc.cluster.local. 5 IN A 172.0.0.3",
            ]),
        )],
    );
}

#[test]
fn zonal_edges() {
    let k = plugin(|_| {});
    const E: &str = "edge.testns.svc.cluster.local.";
    check(
        &k,
        vec![
            // A zone with dots is every label left of the directive;
            // zones compare without letter case, owners are as asked.
            (
                "corp.example.com.pin._zone.edge.testns.svc.cluster.local.",
                A,
                answer(&[
                    "corp.example.com.pin._zone.edge.testns.svc.cluster.local. 5 IN A 172.0.1.1",
                ]),
            ),
            (
                "CORP.Example.com.PIN._zone.Edge.testns.svc.cluster.local.",
                A,
                answer(&[
                    "CORP.Example.com.PIN._zone.Edge.testns.svc.cluster.local. 5 IN A 172.0.1.1",
                ]),
            ),
            (
                "example.com.pin._zone.edge.testns.svc.cluster.local.",
                A,
                nodata(),
            ),
            ("corp.pin._zone.edge.testns.svc.cluster.local.", A, nodata()),
            // AAAA too; a zone across slices and their ports; SRV targets
            // are the endpoints' own names.
            (
                "us-east-1a.pin._zone.edge.testns.svc.cluster.local.",
                AAAA,
                answer(&["us-east-1a.pin._zone.edge.testns.svc.cluster.local. 5 IN AAAA fd00::1"]),
            ),
            (
                "us-east-1a.pin._zone.edge.testns.svc.cluster.local.",
                A,
                answer(&["us-east-1a.pin._zone.edge.testns.svc.cluster.local. 5 IN A 172.0.1.6"]),
            ),
            (
                "us-east-1a.prefer._zone.edge.testns.svc.cluster.local.",
                SRV,
                with_extra(
                    &[
                        "us-east-1a.prefer._zone.edge.testns.svc.cluster.local. 5 IN SRV 0 50 80 db-0.edge.testns.svc.cluster.local.",
                        "us-east-1a.prefer._zone.edge.testns.svc.cluster.local. 5 IN SRV 0 50 53 172-0-1-6.edge.testns.svc.cluster.local.",
                    ],
                    &[
                        "db-0.edge.testns.svc.cluster.local. 5 IN AAAA fd00::1",
                        "172-0-1-6.edge.testns.svc.cluster.local. 5 IN A 172.0.1.6",
                    ],
                ),
            ),
            // Endpoints without a zone (or an empty one, or one no name
            // can spell) are in no zone, but in `prefer`'s fallback.
            (
                "nowhere.prefer._zone.edge.testns.svc.cluster.local.",
                A,
                answer(&[
                    "nowhere.prefer._zone.edge.testns.svc.cluster.local. 5 IN A 172.0.1.1",
                    "nowhere.prefer._zone.edge.testns.svc.cluster.local. 5 IN A 172.0.1.3",
                    "nowhere.prefer._zone.edge.testns.svc.cluster.local. 5 IN A 172.0.1.4",
                    "nowhere.prefer._zone.edge.testns.svc.cluster.local. 5 IN A 172.0.1.5",
                    "nowhere.prefer._zone.edge.testns.svc.cluster.local. 5 IN A 172.0.1.6",
                ]),
            ),
            // Other types of an existing zonal name are NODATA, full or empty.
            (
                "us-east-1a.pin._zone.edge.testns.svc.cluster.local.",
                MX,
                nodata(),
            ),
            (
                "us-east-1a.pin._zone.edge.testns.svc.cluster.local.",
                CNAME,
                nodata(),
            ),
            (
                "us-east-1a.pin._zone.edge.testns.svc.cluster.local.",
                PTR,
                nodata(),
            ),
            (
                "nowhere.pin._zone.edge.testns.svc.cluster.local.",
                MX,
                nodata(),
            ),
            (
                "us-east-1a.pin._zone.edge.testns.svc.cluster.local.",
                TXT,
                nodata(),
            ),
            // ExternalName services, other spaces, unexposed namespaces,
            // names with a port and the wrong shapes are NXDOMAIN.
            (
                "us-east-1a.pin._zone.ext.testns.svc.cluster.local.",
                A,
                nxdomain(),
            ),
            (
                "us-east-1a.pin._zone.ext.testns.svc.cluster.local.",
                TXT,
                nxdomain(),
            ),
            (
                "us-east-1a.pin._zone.clstr.testns.svc.cluster.local.",
                SRV,
                nxdomain(),
            ),
            (
                "us-east-1a.pin._zone.edge.testns.pod.cluster.local.",
                A,
                nxdomain(),
            ),
            (
                "us-east-1a.pin._zone.edge.otherns.svc.cluster.local.",
                A,
                nxdomain(),
            ),
            (
                "us-east-1a.pin._zone.ghost.testns.svc.cluster.local.",
                TXT,
                nxdomain(),
            ),
            (
                "us-east-1a.pin.zone.edge.testns.svc.cluster.local.",
                A,
                nxdomain(),
            ),
            (
                "us-east-1a._zone.pin.edge.testns.svc.cluster.local.",
                A,
                nxdomain(),
            ),
            (
                "us-east-1a._zone.edge.testns.svc.cluster.local.",
                A,
                nxdomain(),
            ),
            // `pin._zone.SERVICE` alone is the port and protocol shape.
            ("pin._zone.edge.testns.svc.cluster.local.", A, nxdomain()),
            // The plain names are as ever.
            (
                E,
                SRV,
                with_extra(
                    &[
                        "edge.testns.svc.cluster.local. 5 IN SRV 0 16 53 172-0-1-6.edge.testns.svc.cluster.local.",
                        "edge.testns.svc.cluster.local. 5 IN SRV 0 16 80 172-0-1-1.edge.testns.svc.cluster.local.",
                        "edge.testns.svc.cluster.local. 5 IN SRV 0 16 80 172-0-1-3.edge.testns.svc.cluster.local.",
                        "edge.testns.svc.cluster.local. 5 IN SRV 0 16 80 172-0-1-4.edge.testns.svc.cluster.local.",
                        "edge.testns.svc.cluster.local. 5 IN SRV 0 16 80 172-0-1-5.edge.testns.svc.cluster.local.",
                        "edge.testns.svc.cluster.local. 5 IN SRV 0 16 80 db-0.edge.testns.svc.cluster.local.",
                    ],
                    &[
                        "172-0-1-1.edge.testns.svc.cluster.local. 5 IN A 172.0.1.1",
                        "172-0-1-3.edge.testns.svc.cluster.local. 5 IN A 172.0.1.3",
                        "172-0-1-4.edge.testns.svc.cluster.local. 5 IN A 172.0.1.4",
                        "172-0-1-5.edge.testns.svc.cluster.local. 5 IN A 172.0.1.5",
                        "172-0-1-6.edge.testns.svc.cluster.local. 5 IN A 172.0.1.6",
                        "db-0.edge.testns.svc.cluster.local. 5 IN AAAA fd00::1",
                    ],
                ),
            ),
        ],
    );
}

/// A zone-only change of an endpoint is a change (CoreDNS's
/// `TestEndpointsEquivalentZoneChange`): the answers follow it.
#[test]
fn a_zone_change_shows() {
    let k = plugin(|_| {});
    let name = "us-west-2a.pin._zone.hdls.testns.svc.cluster.local.";
    {
        let mut b = k.store().batch();
        b.apply_slice(slice(
            "testns",
            "hdls-slice",
            "hdls",
            HTTP,
            vec![
                zoned("172.0.0.1", "us-west-2b"),
                zoned("172.0.0.2", "us-west-2a"),
                zoned("172.0.0.3", "us-west-2b"),
            ],
        ));
    }
    check(
        &k,
        vec![(
            name,
            A,
            answer(&["us-west-2a.pin._zone.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.2"]),
        )],
    );
}

/// Zonal names are not defined in multicluster zones.
#[test]
fn not_in_multicluster_zones() {
    let mut cfg = config(&["cluster.local.", "clusterset.local."]);
    cfg.multicluster = vec!["clusterset.local.".into()];
    cfg.zonal = true;
    let k = Kubernetes::new(&cfg, None);
    objects(k.store());
    sync(k.store());
    let mc = k.multicluster_store().expect("multicluster");
    {
        let mut b = mc.batch();
        b.finish_resync(McKind::ServiceImports);
        b.finish_resync(McKind::EndpointSlices);
    }
    let got = ask(
        &k,
        "us-west-2a.pin._zone.hdls.testns.svc.clusterset.local.",
        A,
    );
    assert!(
        matches!(
            got,
            Got::Reply {
                rcode: ResponseCode::NXDomain,
                ..
            }
        ),
        "{got:?}"
    );
    // And still are in the cluster zone of the same block.
    check(
        &k,
        vec![(
            "us-west-2a.pin._zone.hdls.testns.svc.cluster.local.",
            A,
            answer(&["us-west-2a.pin._zone.hdls.testns.svc.cluster.local. 5 IN A 172.0.0.1"]),
        )],
    );
}

/// The zonal rows of `parse_test.go`.
#[test]
fn parse_zonal_requests() {
    let zone = "inter.webs.tests.";
    let zl = name_to_wire(zone).unwrap().len();
    let parse = |name: &str, zonal: bool| -> Option<(String, String, String, bool)> {
        let lower = name_to_wire(name).unwrap();
        let q = QName::new(&lower, zl);
        let r = parse_request(&q, || zonal).ok()?;
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        // The zone in text form.
        let mut text = Vec::new();
        let mut pos = 0;
        while let Some(&len) = r.zone.get(pos) {
            if !text.is_empty() {
                text.push(b'.');
            }
            text.extend_from_slice(&r.zone[pos + 1..pos + 1 + usize::from(len)]);
            pos += 1 + usize::from(len);
        }
        Some((s(r.service), s(r.namespace), s(&text), r.prefer))
    };
    let t = |a: &str, b: &str, c: &str, p| Some((a.into(), b.into(), c.into(), p));
    assert_eq!(
        parse(
            "us-west-2a.pin._zone.webs.mynamespace.svc.inter.webs.tests.",
            true
        ),
        t("webs", "mynamespace", "us-west-2a", false)
    );
    assert_eq!(
        parse(
            "us-west-2a.prefer._zone.webs.mynamespace.svc.inter.webs.tests.",
            true
        ),
        t("webs", "mynamespace", "us-west-2a", true)
    );
    assert_eq!(
        parse(
            "corp.example.com.pin._zone.webs.mynamespace.svc.inter.webs.tests.",
            true
        ),
        t("webs", "mynamespace", "corp.example.com", false)
    );
    // Two labels left of the service: port and protocol, as ever.
    assert_eq!(
        parse(
            "us-west-2a._zone.webs.mynamespace.svc.inter.webs.tests.",
            true
        ),
        t("webs", "mynamespace", "", false)
    );
    for (bad, zonal) in [
        (
            "us-west-2a.pin._zone.webs.mynamespace.svc.inter.webs.tests.",
            false,
        ),
        (
            "us-west-2a.pin._zone.webs.mynamespace.pod.inter.webs.tests.",
            true,
        ),
        (
            "us-west-2a.florp._zone.webs.mynamespace.svc.inter.webs.tests.",
            true,
        ),
        (
            "a.b.c.d.e.f.g.h.i.j.pin.zone.webs.mynamespace.svc.inter.webs.tests.",
            true,
        ),
    ] {
        assert_eq!(parse(bad, zonal), None, "{bad}");
    }
}
