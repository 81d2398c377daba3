use std::collections::BTreeSet;

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;
use crate::pkg::test::{Canned, query, run_with, setup as run_setup};
use crate::request::Transport;

fn parse_text(text: &str) -> Result<LoadBalanceConfig, String> {
    let file: std::sync::Arc<str> = std::sync::Arc::from("Corefile");
    let tokens = lex(&file, text).map_err(|e| e.to_string())?;
    setup::parse(&mut Dispenser::new("loadbalance", &tokens)).map_err(|e| e.to_string())
}

fn cidrs(list: &[&str]) -> LoadBalanceConfig {
    LoadBalanceConfig {
        prefer: list.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
    }
}

#[test]
fn setup_table() {
    let cases: Vec<(&str, Result<LoadBalanceConfig, &str>)> = vec![
        ("loadbalance", Ok(cidrs(&[]))),
        ("loadbalance round_robin", Ok(cidrs(&[]))),
        ("loadbalance round_robin {\n}", Ok(cidrs(&[]))),
        (
            "loadbalance round_robin {\n  prefer 192.0.2.0/24 2001:db8::/32\n}",
            Ok(cidrs(&["192.0.2.0/24", "2001:db8::/32"])),
        ),
        (
            "loadbalance {\n  prefer 192.0.2.128/25\n  prefer 192.0.2.0/24\n}\nloadbalance round_robin {\n  prefer 198.51.100.0/24\n}",
            Ok(cidrs(&[
                "192.0.2.128/25",
                "192.0.2.0/24",
                "198.51.100.0/24",
            ])),
        ),
        (
            "loadbalance weighted ./db.example.org.weights",
            Err(
                "Corefile:1: loadbalance: policy 'weighted' not supported (use round_robin, optionally with prefer)",
            ),
        ),
        (
            "loadbalance weighted w {\n  reload 10s\n}",
            Err(
                "Corefile:1: loadbalance: policy 'weighted' not supported (use round_robin, optionally with prefer)",
            ),
        ),
        (
            "loadbalance fleeb",
            Err("Corefile:1: loadbalance: unknown policy 'fleeb'"),
        ),
        (
            "loadbalance round_robin a",
            Err("Corefile:1: loadbalance: unknown property 'a' for round_robin"),
        ),
        (
            "loadbalance round_robin {\n  reload 10s\n}",
            Err("Corefile:2: loadbalance: unknown property 'reload'"),
        ),
        (
            "loadbalance {\n  limit_answers 5\n}",
            Err("Corefile:2: loadbalance: unknown property 'limit_answers'"),
        ),
        (
            "loadbalance {\n\n  prefer\n}",
            Err("Corefile:3: loadbalance: prefer needs at least one CIDR"),
        ),
        (
            "loadbalance {\n  prefer invalid\n}",
            Err("Corefile:2: loadbalance: invalid CIDR 'invalid'"),
        ),
        (
            "loadbalance {\n  prefer 192.0.2.1\n}",
            Err("Corefile:2: loadbalance: invalid CIDR '192.0.2.1'"),
        ),
        (
            "loadbalance {\n  prefer 192.0.2.0/33\n}",
            Err("Corefile:2: loadbalance: invalid CIDR '192.0.2.0/33'"),
        ),
        (
            "loadbalance {\n  prefer 2001:db8::/129\n}",
            Err("Corefile:2: loadbalance: invalid CIDR '2001:db8::/129'"),
        ),
        (
            "loadbalance {\n  prefer 192.0.2.0/+8\n}",
            Err("Corefile:2: loadbalance: invalid CIDR '192.0.2.0/+8'"),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(
            parse_text(text),
            want.clone().map_err(str::to_string),
            "{text}"
        );
        let got = run_setup("loadbalance", setup, text)
            .map(|(out, _)| out.plugins.len())
            .map_err(|e| e.to_string());
        assert_eq!(got, want.map(|_| 1).map_err(str::to_string), "{text}");
    }
}

#[test]
fn cidrs_parse_and_match() {
    let c = Cidr::parse("192.0.2.77/24").unwrap();
    assert_eq!(c.to_string(), "192.0.2.0/24");
    assert!(c.contains("192.0.2.1".parse().unwrap()));
    assert!(
        c.contains("::ffff:192.0.2.9".parse().unwrap()),
        "IPv4-mapped counts as IPv4"
    );
    assert!(!c.contains("192.0.3.1".parse().unwrap()));
    assert!(!c.contains("2001:db8::1".parse().unwrap()));
    let all = Cidr::parse("0.0.0.0/0").unwrap();
    assert!(all.contains("203.0.113.5".parse().unwrap()));
    let host = Cidr::parse("192.0.2.1/32").unwrap();
    assert!(
        host.contains("192.0.2.1".parse().unwrap()) && !host.contains("192.0.2.2".parse().unwrap())
    );
    let v6 = Cidr::parse("2001:db8::1/32").unwrap();
    assert_eq!(v6.to_string(), "2001:db8::/32");
    assert!(v6.contains("2001:db8:abcd::1".parse().unwrap()));
    assert!(!v6.contains("2001:db9::1".parse().unwrap()));
    assert!(
        Cidr::parse("::/0")
            .unwrap()
            .contains("fd00::1".parse().unwrap())
    );
    for bad in [
        "",
        "/24",
        "192.0.2.0/",
        "192.0.2.0/a",
        "example.org/24",
        "192.0.2.0/24/1",
    ] {
        assert_eq!(Cidr::parse(bad), None, "{bad}");
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn rr(data: RData) -> Record {
    Record::from_rdata(name("www.example.org."), 300, data)
}

fn a(ip: &str) -> Record {
    rr(RData::A(A(ip.parse().unwrap())))
}

fn aaaa(ip: &str) -> Record {
    rr(RData::AAAA(AAAA(ip.parse().unwrap())))
}

fn cname(target: &str) -> Record {
    rr(RData::CNAME(CNAME(name(target))))
}

fn mx(pref: u16, host: &str) -> Record {
    rr(RData::MX(MX::new(pref, name(host))))
}

fn txt(s: &str) -> Record {
    rr(RData::TXT(TXT::new(vec![s.to_string()])))
}

/// A short label per record, to compare orders.
fn label(r: &Record) -> String {
    match &r.data {
        RData::A(a) => a.0.to_string(),
        RData::AAAA(a) => a.0.to_string(),
        RData::CNAME(c) => format!("cname {}", c.0),
        RData::MX(m) => format!("mx {}", m.exchange),
        RData::TXT(t) => format!("txt {}", String::from_utf8_lossy(&t.txt_data[0])),
        other => format!("{other:?}"),
    }
}

fn labels(rs: &[Record]) -> Vec<String> {
    rs.iter().map(label).collect()
}

#[test]
fn round_robin_groups_then_shuffles() {
    let section = vec![
        a("192.0.2.1"),
        cname("alias.example.org."),
        a("192.0.2.2"),
        mx(10, "mx1.example.org."),
        txt("v=spf1"),
        aaaa("2001:db8::1"),
        mx(20, "mx2.example.org."),
    ];
    let mut orders = BTreeSet::new();
    let mut rng = rand::rng();
    for _ in 0..300 {
        let mut s = section.clone();
        round_robin(&mut s, &mut rng);
        let l = labels(&s);
        assert_eq!(l[0], "cname alias.example.org.");
        assert_eq!(l[1], "txt v=spf1");
        let addrs: BTreeSet<&str> = l[2..5].iter().map(String::as_str).collect();
        assert_eq!(
            addrs,
            BTreeSet::from(["192.0.2.1", "192.0.2.2", "2001:db8::1"])
        );
        let mxs: BTreeSet<&str> = l[5..].iter().map(String::as_str).collect();
        assert_eq!(
            mxs,
            BTreeSet::from(["mx mx1.example.org.", "mx mx2.example.org."])
        );
        orders.insert(l);
    }
    // 3! address orders times 2 MX orders: every one shows up in 300 tries
    // (the chance that one does not is below 1e-20).
    assert_eq!(orders.len(), 12);
}

#[test]
fn prefer_orders_as_coredns() {
    // CoreDNS's TestSortPreferred.
    let mut records = vec![
        a("10.9.30.1"),
        a("10.9.20.5"),
        a("192.168.1.2"),
        a("10.10.0.1"),
        a("10.9.20.3"),
        a("172.16.0.1"),
        aaaa("2001:db8::1"),
        aaaa("2001:db8:abcd::1"),
        aaaa("fd00::1"),
        cname("alias.example.org."),
    ];
    let subnets: Vec<Cidr> = ["2001:db8::/32", "10.9.20.0/24", "10.9.30.0/24"]
        .iter()
        .map(|c| Cidr::parse(c).unwrap())
        .collect();
    prefer(&mut records, &subnets);
    assert_eq!(
        labels(&records),
        vec![
            "cname alias.example.org.",
            "2001:db8::1",
            "2001:db8:abcd::1",
            "10.9.20.5",
            "10.9.20.3",
            "10.9.30.1",
            "192.168.1.2",
            "10.10.0.1",
            "172.16.0.1",
            "fd00::1",
        ]
    );
    let mut mixed = vec![
        txt("x"),
        mx(10, "mx.example.org."),
        a("192.0.2.1"),
        cname("c.example.org."),
    ];
    prefer(&mut mixed, &subnets);
    assert_eq!(
        labels(&mixed),
        vec![
            "cname c.example.org.",
            "192.0.2.1",
            "mx mx.example.org.",
            "txt x"
        ]
    );
}

fn reply(rcode: ResponseCode, answers: Vec<Record>) -> Message {
    let mut m = Message::response(0, OpCode::Query);
    m.metadata.response_code = rcode;
    m.answers = answers.clone();
    m.authorities = answers.clone();
    m.additionals = answers;
    m
}

#[test]
fn shuffles_every_section_of_noerror_replies() {
    let lb = LoadBalance::new(&LoadBalanceConfig::default());
    let records = vec![
        a("192.0.2.1"),
        a("192.0.2.2"),
        a("192.0.2.3"),
        cname("alias.example.org."),
    ];
    let mut firsts = BTreeSet::new();
    for _ in 0..200 {
        let out = run_with(
            &lb,
            &query("www.example.org.", RecordType::A),
            Transport::Udp,
            &Canned(reply(ResponseCode::NoError, records.clone())),
        );
        assert!(matches!(out.flow, Flow::Next));
        let m = out.msg.unwrap();
        for section in [&m.answers, &m.authorities, &m.additionals] {
            assert_eq!(section.len(), 4);
            assert_eq!(label(&section[0]), "cname alias.example.org.");
        }
        firsts.insert(label(&m.answers[1]));
    }
    assert_eq!(firsts.len(), 3, "every address comes first sometimes");
}

#[test]
fn errors_and_transfers_keep_their_order() {
    let lb = LoadBalance::new(&LoadBalanceConfig::default());
    let records = vec![
        a("192.0.2.1"),
        a("192.0.2.2"),
        a("192.0.2.3"),
        cname("alias.example.org."),
    ];
    let want = labels(&records);
    for (rcode, qtype) in [
        (ResponseCode::NXDomain, RecordType::A),
        (ResponseCode::ServFail, RecordType::A),
        (ResponseCode::NoError, RecordType::AXFR),
        (ResponseCode::NoError, RecordType::IXFR),
    ] {
        for _ in 0..20 {
            let out = run_with(
                &lb,
                &query("www.example.org.", qtype),
                Transport::Tcp,
                &Canned(reply(rcode, records.clone())),
            );
            assert_eq!(labels(&out.msg.unwrap().answers), want, "{rcode} {qtype}");
        }
    }
}

#[test]
fn prefer_puts_preferred_addresses_first() {
    // CoreDNS's TestSetupWeightedPrefer, with round_robin.
    let (out, _) = run_setup(
        "loadbalance",
        setup,
        "loadbalance {\n  prefer 192.0.2.0/24\n}",
    )
    .unwrap();
    let lb = &out.plugins[0];
    for _ in 0..50 {
        let out = run_with(
            lb.as_ref(),
            &query("www.example.org.", RecordType::A),
            Transport::Udp,
            &Canned(reply(
                ResponseCode::NoError,
                vec![a("198.51.100.1"), a("192.0.2.1"), a("198.51.100.2")],
            )),
        );
        let m = out.msg.unwrap();
        assert_eq!(label(&m.answers[0]), "192.0.2.1");
        assert_eq!(label(&m.additionals[0]), "192.0.2.1");
    }
}
