//! `k8s://` upstreams: parsing, slices to upstreams, and a forward that
//! follows a watch's slices.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::k8s::{MAX_ENDPOINTS_PER_SLICE, SliceView, expand, share};
use super::setup::{K8sPort, K8sTarget, MAX_UPSTREAMS, To, parse};
use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;

fn parse_text(text: &str) -> Result<Vec<ForwardConfig>, String> {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).map_err(|e| e.to_string())?;
    let mut d = Dispenser::new("forward", &tokens);
    parse(&mut d).map_err(|e| e.to_string())
}

fn target(ns: &str, svc: &str, port: K8sPort) -> To {
    To::K8s(K8sTarget {
        namespace: ns.into(),
        service: svc.into(),
        port,
    })
}

#[test]
fn k8s_targets_parse() {
    let c = parse_text(
        "forward . k8s://kube-system/kube-dns k8s://ns/svc:53 k8s://a/b:dns-tcp 192.0.2.1 k8s://x1/s-2:65535",
    )
    .unwrap()
    .remove(0);
    assert_eq!(
        c.to,
        vec![
            target("kube-system", "kube-dns", K8sPort::Default),
            target("ns", "svc", K8sPort::Number(53)),
            target("a", "b", K8sPort::Name("dns-tcp".into())),
            To::Addr {
                addr: "192.0.2.1:53".parse().unwrap(),
                scheme: Scheme::Dns,
                server_name: None,
            },
            target("x1", "s-2", K8sPort::Number(65535)),
        ]
    );
    if let To::K8s(t) = &c.to[2] {
        assert_eq!(t.to_string(), "k8s://a/b:dns-tcp");
    }
}

#[test]
fn bad_k8s_targets_name_their_line() {
    let cases = [
        (
            "forward . k8s://kube-dns",
            "no SERVICE: write NAMESPACE/SERVICE",
        ),
        ("forward . k8s:///kube-dns", "invalid namespace ''"),
        ("forward . k8s://ns/", "invalid service name ''"),
        ("forward . k8s://Kube/dns", "invalid namespace 'Kube'"),
        ("forward . k8s://ns/1dns", "invalid service name '1dns'"),
        ("forward . k8s://ns/a/b", "invalid service name 'a/b'"),
        ("forward . k8s://ns/svc:0", "invalid port '0': 1 to 65535"),
        ("forward . k8s://ns/svc:65536", "invalid port '65536'"),
        ("forward . k8s://ns/svc:", "invalid port ''"),
        ("forward . k8s://ns/svc:dns_tcp", "invalid port 'dns_tcp'"),
        (
            "forward . k8s://ns/svc:a-very-long-port-name",
            "invalid port 'a-very-long-port-name'",
        ),
        ("forward . k8s://ns/svc:a--b", "invalid port 'a--b'"),
    ];
    for (text, want) in cases {
        let e = parse_text(text).unwrap_err();
        assert!(e.starts_with("Corefile:1: forward: upstream '"), "{e}");
        assert!(e.contains(want), "{text}: {e}");
        assert!(e.ends_with("(k8s://NAMESPACE/SERVICE[:PORT])"), "{e}");
    }
    let e = parse_text("forward . tls://k8s://ns/svc").unwrap_err();
    assert_eq!(
        e,
        "Corefile:1: forward: upstream 'tls://k8s://ns/svc': k8s:// upstreams are plain DNS; tls://k8s:// is not supported"
    );
    let e = parse_text("forward . k8s://ns/svc /etc/resolv.conf").unwrap_err();
    assert!(
        e.starts_with("Corefile:1: forward: k8s:// upstreams cannot be combined with resolv.conf"),
        "{e}"
    );
    let e = parse_text("forward . k8s://ns/svc k8s://ns/svc").unwrap_err();
    assert_eq!(
        e,
        "Corefile:1: forward: upstream 'k8s://ns/svc' is listed twice"
    );
    // A target leaves room for one endpoint at least.
    let fifteen: Vec<String> = (1..=15).map(|i| format!("192.0.2.{i}")).collect();
    let e = parse_text(&format!("forward . {} k8s://ns/svc", fifteen.join(" "))).unwrap_err();
    assert!(e.contains("more than 15 upstreams (16)"), "{e}");
    assert!(
        parse_text(&format!(
            "forward . {} k8s://ns/svc",
            fifteen[..14].join(" ")
        ))
        .is_ok()
    );
}

// === Slices to upstreams ===

fn ep(addr: &str, ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
    Endpoint {
        addresses: vec![addr.into()],
        conditions: Some(EndpointConditions {
            ready,
            terminating,
            serving: None,
        }),
        ..Default::default()
    }
}

fn port(name: Option<&str>, proto: &str, port: i32) -> EndpointPort {
    EndpointPort {
        name: name.map(String::from),
        protocol: Some(proto.into()),
        port: Some(port),
        ..Default::default()
    }
}

fn slice(family: &str, ports: Vec<EndpointPort>, endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta::default(),
        address_type: family.into(),
        ports: Some(ports),
        endpoints,
    }
}

fn views(slices: &[EndpointSlice]) -> BTreeMap<String, SliceView> {
    slices
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("s{i}"), SliceView::new(s)))
        .collect()
}

fn sorted(mut v: Vec<SocketAddr>) -> Vec<String> {
    v.sort();
    v.into_iter().map(|a| a.to_string()).collect()
}

#[test]
fn ready_endpoints_on_each_slices_port() {
    let slices = [
        slice(
            "IPv4",
            vec![
                port(Some("metrics"), "TCP", 9153),
                port(Some("dns-tcp"), "TCP", 5353),
                port(Some("dns"), "TCP", 5454),
                port(Some("dns"), "UDP", 5353),
            ],
            vec![
                ep("10.0.0.1", Some(true), Some(false)),
                ep("10.0.0.2", None, None),
                ep("10.0.0.3", Some(false), Some(false)),
                ep("10.0.0.4", Some(false), Some(true)),
                // Ready, yet terminating: left out.
                ep("10.0.0.5", Some(true), Some(true)),
                ep("not-an-ip", Some(true), None),
            ],
        ),
        // Another slice of the service, on another port; IPv6.
        slice(
            "IPv6",
            vec![port(Some("dns"), "UDP", 53)],
            vec![ep("fd00::1", Some(true), None), ep("fd00::2", None, None)],
        ),
        // No port named dns: dns-tcp.
        slice(
            "IPv4",
            vec![port(Some("dns-tcp"), "TCP", 1053)],
            vec![ep("10.0.1.1", None, None)],
        ),
        // No DNS port at all: 53.
        slice("IPv4", vec![], vec![ep("10.0.2.1", None, None)]),
        // The same endpoint twice: once.
        slice(
            "IPv4",
            vec![port(Some("dns"), "UDP", 5353)],
            vec![ep("10.0.0.1", None, None)],
        ),
    ];
    let v = views(&slices);
    let e = expand(&v, &K8sPort::Default, 7);
    assert_eq!(
        sorted(e.ranked.clone()),
        [
            "10.0.0.1:5353",
            "10.0.0.2:5353",
            "10.0.1.1:1053",
            "10.0.2.1:53",
            "[fd00::1]:53",
            "[fd00::2]:53",
        ]
    );
    assert_eq!(e.dropped, 0);

    // A number: that port everywhere.
    let e = expand(&v, &K8sPort::Number(8053), 7);
    assert_eq!(e.ranked.len(), 6);
    assert!(e.ranked.iter().all(|a| a.port() == 8053));

    // A name: the slices that have it, UDP first.
    let e = expand(&v, &K8sPort::Name("dns".into()), 7);
    assert_eq!(
        sorted(e.ranked),
        [
            "10.0.0.1:5353",
            "10.0.0.2:5353",
            "[fd00::1]:53",
            "[fd00::2]:53"
        ]
    );
    let e = expand(&v, &K8sPort::Name("metrics".into()), 7);
    assert_eq!(sorted(e.ranked), ["10.0.0.1:9153", "10.0.0.2:9153"]);
    assert!(
        expand(&v, &K8sPort::Name("nope".into()), 7)
            .ranked
            .is_empty()
    );
}

#[test]
fn api_input_out_of_range_is_left_out() {
    let slices = [
        slice(
            "IPv4",
            vec![
                port(Some("dns"), "UDP", 70_000),
                port(Some("dns-tcp"), "TCP", 0),
            ],
            vec![ep("10.0.0.1", None, None)],
        ),
        slice(
            "IPv4",
            vec![port(Some("dns"), "UDP", -1)],
            vec![
                ep("0.0.0.0", None, None),
                ep("224.0.0.1", None, None),
                Endpoint::default(),
            ],
        ),
    ];
    // Invalid named ports fall through to 53; unusable addresses are dropped.
    let e = expand(&views(&slices), &K8sPort::Default, 1);
    assert_eq!(sorted(e.ranked), ["10.0.0.1:53"]);
    // A slice with more endpoints than the API allows: bounded.
    let many: Vec<Endpoint> = (0..1500)
        .map(|i| ep(&format!("10.1.{}.{}", i / 250, i % 250), None, None))
        .collect();
    let v = SliceView::new(&slice("IPv4", vec![], many));
    let e = expand(
        &BTreeMap::from([("s".to_string(), v)]),
        &K8sPort::Default,
        1,
    );
    assert_eq!(e.ranked.len(), MAX_ENDPOINTS_PER_SLICE);
}

#[test]
fn the_rank_is_stable_per_seed_and_moves_little() {
    let endpoints = |n: usize| -> Vec<Endpoint> {
        (1..=n)
            .map(|i| ep(&format!("10.0.0.{i}"), None, None))
            .collect()
    };
    let v = views(&[slice("IPv4", vec![], endpoints(40))]);
    let a = expand(&v, &K8sPort::Default, 1).ranked;
    assert_eq!(a, expand(&v, &K8sPort::Default, 1).ranked, "stable");
    let b = expand(&v, &K8sPort::Default, 2).ranked;
    assert_ne!(
        a[..MAX_UPSTREAMS],
        b[..MAX_UPSTREAMS],
        "another node, another choice"
    );
    // One endpoint that was not chosen goes: the chosen stay.
    let gone = a[30];
    let fewer: Vec<Endpoint> = (1..=40)
        .map(|i| format!("10.0.0.{i}"))
        .filter(|s| *s != gone.ip().to_string())
        .map(|s| ep(&s, None, None))
        .collect();
    let c = expand(
        &views(&[slice("IPv4", vec![], fewer)]),
        &K8sPort::Default,
        1,
    )
    .ranked;
    assert_eq!(a[..MAX_UPSTREAMS], c[..MAX_UPSTREAMS]);
}

#[test]
fn targets_share_what_is_left() {
    assert_eq!(share(&[], 15), Vec::<usize>::new());
    assert_eq!(share(&[40], 15), [15]);
    assert_eq!(share(&[40], 0), [0]);
    assert_eq!(share(&[1, 40], 15), [1, 14]);
    assert_eq!(share(&[40, 40], 15), [8, 7]);
    assert_eq!(share(&[2, 3], 15), [2, 3]);
    assert_eq!(share(&[0, 20, 5], 12), [0, 7, 5]);
}

// === A forward that follows ===

#[tokio::test]
async fn a_forward_follows_its_watch_and_keeps_what_stays() {
    let cfg = parse_text("forward . 192.0.2.1 k8s://kube-system/kube-dns")
        .unwrap()
        .remove(0);
    let mut carry_in = Carry::default();
    let mut kept = Carry::default();
    let (f, task) = Forward::build_carried(cfg.clone(), &mut carry_in, &mut kept).unwrap();
    assert!(task.is_none());
    assert_eq!(f.startup().len(), 1);
    let addrs = |f: &Forward| -> Vec<String> {
        f.upstreams
            .load()
            .iter()
            .map(|u| u.proxy.addr().to_string())
            .collect()
    };
    // Not synced yet: the written upstream alone.
    assert_eq!(addrs(&f), ["192.0.2.1:53"]);
    let watch = k8s::K8sWatch::carried("kube-system", "kube-dns", &mut carry_in, &mut kept);
    let publish = |eps: Vec<Endpoint>| {
        watch.publish_for_test(views(&[slice(
            "IPv4",
            vec![port(Some("dns"), "UDP", 53)],
            eps,
        )]));
    };
    publish(vec![ep("10.0.0.1", None, None), ep("10.0.0.2", None, None)]);
    let list = addrs(&f);
    assert_eq!(list[0], "192.0.2.1:53", "written order first");
    assert_eq!(sorted_strings(&list[1..]), ["10.0.0.1:53", "10.0.0.2:53"]);
    let first = f.upstreams.load_full();
    let kept_up = first
        .iter()
        .find(|u| u.proxy.addr().to_string() == "10.0.0.1:53")
        .cloned()
        .unwrap();
    kept_up.fails.store(1, Ordering::Relaxed);
    let gone = Arc::downgrade(
        first
            .iter()
            .find(|u| u.proxy.addr().to_string() == "10.0.0.2:53")
            .unwrap(),
    );
    drop(first);

    // One goes, one comes: the one that stays is the same upstream.
    publish(vec![ep("10.0.0.1", None, None), ep("10.0.0.3", None, None)]);
    let list = f.upstreams.load_full();
    let same = list
        .iter()
        .find(|u| u.proxy.addr().to_string() == "10.0.0.1:53")
        .unwrap();
    assert!(Arc::ptr_eq(same, &kept_up));
    assert_eq!(same.fails.load(Ordering::Relaxed), 1, "health kept");
    assert!(gone.upgrade().is_none(), "the one that went is dropped");
    drop(list);

    // A second configuration (a reload) finds the watch and the upstreams.
    let mut next = Carry::default();
    let (g, _) = Forward::build_carried(cfg, &mut kept, &mut next).unwrap();
    let reloaded = g.upstreams.load_full();
    assert!(
        reloaded.iter().any(|u| Arc::ptr_eq(u, &kept_up)),
        "carried over the reload"
    );
    drop(reloaded);

    // Not ready: none left but the written one; then nothing at all.
    publish(vec![ep("10.0.0.1", Some(false), None)]);
    assert_eq!(addrs(&f), ["192.0.2.1:53"]);
    assert_eq!(addrs(&g), ["192.0.2.1:53"]);
    drop(f);
    publish(vec![ep("10.0.0.9", None, None)]);
    assert_eq!(addrs(&g), ["192.0.2.1:53", "10.0.0.9:53"]);
}

#[tokio::test]
async fn no_endpoint_is_servfail_at_once() {
    let cfg = parse_text("forward . k8s://kube-system/kube-dns")
        .unwrap()
        .remove(0);
    let (f, _) = Forward::build(cfg).unwrap();
    assert!(f.upstreams.load().is_empty());
    let (flow, _) = tests::exchange(&f, "example.org.").await;
    assert!(
        matches!(flow, Flow::Fail(ResponseCode::ServFail, _)),
        "{flow:?}"
    );
}

#[tokio::test]
async fn more_endpoints_than_allowed_are_cut_to_the_bound() {
    let cfg = parse_text("forward . 192.0.2.1 192.0.2.2 k8s://ns/a k8s://ns/b")
        .unwrap()
        .remove(0);
    let mut carry_in = Carry::default();
    let mut kept = Carry::default();
    let (f, _) = Forward::build_carried(cfg, &mut carry_in, &mut kept).unwrap();
    let a = k8s::K8sWatch::carried("ns", "a", &mut carry_in, &mut kept);
    let b = k8s::K8sWatch::carried("ns", "b", &mut carry_in, &mut kept);
    let eps = |net: u8, n: u8| -> Vec<Endpoint> {
        (1..=n)
            .map(|i| ep(&format!("10.{net}.0.{i}"), None, None))
            .collect()
    };
    a.publish_for_test(views(&[slice("IPv4", vec![], eps(1, 3))]));
    assert_eq!(f.upstreams.load().len(), 5);
    b.publish_for_test(views(&[slice("IPv4", vec![], eps(2, 100))]));
    let list = f.upstreams.load();
    assert_eq!(list.len(), MAX_UPSTREAMS);
    let from = |net: &str| {
        list.iter()
            .filter(|u| u.proxy.addr().ip().to_string().starts_with(net))
            .count()
    };
    assert_eq!((from("192.0.2."), from("10.1."), from("10.2.")), (2, 3, 10));
}

fn sorted_strings(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[tokio::test]
async fn an_endpoint_that_goes_takes_its_series() {
    let cfg = parse_text("forward . k8s://metrics/dns").unwrap().remove(0);
    let mut carry_in = Carry::default();
    let mut kept = Carry::default();
    let (f, _) = Forward::build_carried(cfg, &mut carry_in, &mut kept).unwrap();
    let w = k8s::K8sWatch::carried("metrics", "dns", &mut carry_in, &mut kept);
    let publish = |addrs: &[&str]| {
        let eps = addrs.iter().map(|a| ep(a, None, None)).collect();
        w.publish_for_test(views(&[slice("IPv4", vec![], eps)]));
    };
    let series = |to: &str| {
        crate::pkg::metrics::render()
            .contains(&format!("coredns_forward_requests_total{{to=\"{to}\"}}"))
    };
    publish(&["10.99.0.1", "10.99.0.2"]);
    assert_eq!(f.upstreams.load().len(), 2);
    assert!(series("10.99.0.1:53") && series("10.99.0.2:53"));
    publish(&["10.99.0.1"]);
    assert!(series("10.99.0.1:53"));
    assert!(!series("10.99.0.2:53"), "gone with its upstream");
    // Back: counted again.
    publish(&["10.99.0.1", "10.99.0.2"]);
    assert!(series("10.99.0.2:53"));
}
