use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, RData, RecordType};

use super::*;
use crate::pkg::test::{Stub, query, run, setup as run_setup};
use crate::request::Transport;

#[test]
fn setup_table() {
    let cases: &[(&str, Result<(), &str>)] = &[
        ("any", Ok(())),
        ("any\nany", Ok(())),
        (
            "any example.org",
            Err(
                "Corefile:1: any: wrong argument count or unexpected line ending after 'example.org'",
            ),
        ),
        (
            "any\nany {\n}",
            Err("Corefile:2: any: wrong argument count or unexpected line ending after '{'"),
        ),
    ];
    for (text, want) in cases {
        let got = run_setup("any", setup, text)
            .map(|(out, _)| assert_eq!(out.plugins.len(), 1, "{text}"))
            .map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(str::to_string), "{text}");
    }
}

#[test]
fn answers_any_with_hinfo() {
    let out = run(
        &Any,
        &query("Example.org.", RecordType::ANY),
        Transport::Udp,
        Stub::Rcode(ResponseCode::ServFail),
    );
    assert!(matches!(out.flow, Flow::Answered));
    let m = out.msg.unwrap();
    assert_eq!(m.metadata.id, 4242);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.recursion_desired);
    assert_eq!(m.queries.len(), 1);
    assert_eq!(m.answers.len(), 1);
    let rr = &m.answers[0];
    assert_eq!(rr.name.to_string(), "Example.org.");
    assert_eq!(rr.ttl, HINFO_TTL);
    assert_eq!(rr.dns_class, DNSClass::IN);
    let RData::HINFO(h) = &rr.data else {
        panic!("not HINFO: {rr:?}")
    };
    assert_eq!(&*h.cpu, b"ANY obsoleted");
    assert_eq!(&*h.os, b"See RFC 8482");
    assert!(m.authorities.is_empty() && m.additionals.is_empty());
}

#[test]
fn other_types_pass_on() {
    for qtype in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::HINFO,
    ] {
        let out = run(
            &Any,
            &query("example.org.", qtype),
            Transport::Tcp,
            Stub::Rcode(ResponseCode::Refused),
        );
        assert!(matches!(out.flow, Flow::Next), "{qtype}");
        assert_eq!(
            out.msg.unwrap().metadata.response_code,
            ResponseCode::Refused
        );
    }
}
