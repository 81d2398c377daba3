use std::collections::BTreeSet;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, RecordType};

use super::*;
use crate::pkg::test::{Stub, query_class, run, setup as run_setup};
use crate::request::Transport;

fn cfg(version: &str, authors: &[&str]) -> ChaosConfig {
    ChaosConfig {
        version: version.to_string(),
        authors: authors.iter().map(|a| (*a).to_string()).collect(),
    }
}

#[test]
fn setup_table() {
    let dflt = ChaosConfig::default();
    assert_eq!(
        dflt.version,
        format!("nodedns-{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(dflt.authors, vec!["The nodedns authors".to_string()]);
    let cases: Vec<(&str, Result<ChaosConfig, &str>)> = vec![
        ("chaos", Ok(dflt.clone())),
        ("chaos {\n}", Ok(dflt.clone())),
        ("chaos nodedns-001", Ok(cfg("nodedns-001", DEFAULT_AUTHORS))),
        (
            "chaos nodedns-001 zed@example.org \"Ann Example\" zed@example.org",
            Ok(cfg("nodedns-001", &["Ann Example", "zed@example.org"])),
        ),
        (
            "chaos v1\nchaos v2",
            Err("Corefile:2: chaos: this plugin can only be used once per Server Block"),
        ),
        (
            "chaos v1 {\n  fallthrough\n}",
            Err("Corefile:2: chaos: unknown property 'fallthrough'"),
        ),
    ];
    for (text, want) in cases {
        let got = run_setup("chaos", setup, text)
            .map(|(out, _)| out.plugins.len())
            .map_err(|e| e.to_string());
        match want {
            Ok(_) => assert_eq!(got, Ok(1), "{text}"),
            Err(e) => assert_eq!(got, Err(e.to_string()), "{text}"),
        }
        if let Ok(config) = want {
            assert_eq!(parse_text(text), config, "{text}");
        }
    }
}

/// Runs `parse` on Corefile text.
fn parse_text(text: &str) -> ChaosConfig {
    let file: std::sync::Arc<str> = std::sync::Arc::from("Corefile");
    let tokens = crate::lexer::lex(&file, text).unwrap();
    let mut d = crate::dispenser::Dispenser::new("chaos", &tokens);
    setup::parse(&mut d).unwrap()
}

fn ask(plugin: &Chaos, name: &str, qtype: RecordType, class: DNSClass) -> (Flow, Message) {
    let out = run(
        plugin,
        &query_class(name, qtype, class),
        Transport::Udp,
        Stub::Rcode(ResponseCode::NXDomain),
    );
    (out.flow, out.msg.unwrap())
}

fn texts(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .map(|r| {
            assert_eq!(r.dns_class, DNSClass::CH);
            assert_eq!(r.ttl, 0);
            let RData::TXT(t) = &r.data else {
                panic!("not TXT: {r:?}")
            };
            assert_eq!(t.txt_data.len(), 1);
            String::from_utf8(t.txt_data[0].to_vec()).unwrap()
        })
        .collect()
}

#[test]
fn answers_version_authors_and_hostname() {
    let chaos = Chaos::new(
        &cfg(
            "nodedns-001",
            &["a@example.org", "b@example.org", "c@example.org"],
        ),
        "node-1",
    );
    for name in ["version.bind.", "VERSION.Bind.", "version.server."] {
        let (flow, m) = ask(&chaos, name, RecordType::TXT, DNSClass::CH);
        assert!(matches!(flow, Flow::Answered), "{name}");
        assert_eq!(texts(&m), vec!["nodedns-001"], "{name}");
        assert_eq!(
            m.answers[0].name.to_string(),
            name,
            "owner keeps the client's spelling"
        );
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    for name in ["hostname.bind.", "id.server."] {
        let (_, m) = ask(&chaos, name, RecordType::TXT, DNSClass::CH);
        assert_eq!(texts(&m), vec!["node-1"], "{name}");
    }
    let (_, m) = ask(&chaos, "authors.bind.", RecordType::TXT, DNSClass::CH);
    let got: BTreeSet<String> = texts(&m).into_iter().collect();
    let want: BTreeSet<String> = ["a@example.org", "b@example.org", "c@example.org"]
        .map(String::from)
        .into();
    assert_eq!(got, want);
}

#[test]
fn other_questions_pass_on() {
    let chaos = Chaos::new(&ChaosConfig::default(), "node-1");
    let cases = [
        ("version.bind.", RecordType::TXT, DNSClass::IN),
        ("version.bind.", RecordType::A, DNSClass::CH),
        ("example.org.", RecordType::TXT, DNSClass::CH),
        ("x.version.bind.", RecordType::TXT, DNSClass::CH),
        ("bind.", RecordType::TXT, DNSClass::CH),
    ];
    for (name, qtype, class) in cases {
        let (flow, m) = ask(&chaos, name, qtype, class);
        assert!(matches!(flow, Flow::Next), "{name} {qtype} {class}");
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
}

#[test]
fn long_strings_are_cut_to_255_bytes() {
    let long = "v".repeat(300);
    let chaos = Chaos::new(&cfg(&long, &[&long]), &long);
    for name in ["version.bind.", "authors.bind.", "hostname.bind."] {
        let (_, m) = ask(&chaos, name, RecordType::TXT, DNSClass::CH);
        assert_eq!(texts(&m), vec!["v".repeat(255)], "{name}");
    }
}

#[test]
fn hostname_is_never_empty() {
    let h = hostname();
    assert!(!h.is_empty());
    assert_eq!(h, h.trim());
}
