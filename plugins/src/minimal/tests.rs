use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::*;
use crate::pkg::response::reply_for;
use crate::pkg::test::{Canned, query, query_edns, run_with, setup as run_setup};
use crate::request::Transport;

#[test]
fn setup_table() {
    let cases: &[(&str, Result<(), &str>)] = &[
        ("minimal", Ok(())),
        ("minimal\nminimal", Ok(())),
        (
            "minimal yes",
            Err("Corefile:1: minimal: wrong argument count or unexpected line ending after 'yes'"),
        ),
    ];
    for (text, want) in cases {
        let got = run_setup("minimal", setup, text)
            .map(|(out, _)| assert_eq!(out.plugins.len(), 1, "{text}"))
            .map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(str::to_string), "{text}");
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn a(owner: &str, ip: [u8; 4]) -> Record {
    Record::from_rdata(
        name(owner),
        300,
        RData::A(A::new(ip[0], ip[1], ip[2], ip[3])),
    )
}

fn ns(owner: &str, target: &str) -> Record {
    Record::from_rdata(name(owner), 300, RData::NS(NS(name(target))))
}

fn soa() -> Record {
    let n = name("example.org.");
    Record::from_rdata(
        n.clone(),
        300,
        RData::SOA(SOA::new(n.clone(), n, 1, 60, 60, 60, 60)),
    )
}

/// A reply with the given rcode and sections, and an OPT record with DO.
fn reply(
    rcode: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
) -> Message {
    let mut m = Message::response(0, OpCode::Query);
    m.metadata.response_code = rcode;
    m.answers = answers;
    m.authorities = authorities;
    m.additionals = additionals;
    let mut e = Edns::new();
    e.set_max_payload(1232);
    e.set_dnssec_ok(true);
    m.set_edns(e);
    m
}

fn sections(m: &Message) -> (usize, usize, usize) {
    (m.answers.len(), m.authorities.len(), m.additionals.len())
}

#[test]
fn trims_positive_answers_and_keeps_opt() {
    let full = reply(
        ResponseCode::NoError,
        vec![a("www.example.org.", [192, 0, 2, 1])],
        vec![ns("example.org.", "ns.example.org.")],
        vec![a("ns.example.org.", [192, 0, 2, 53])],
    );
    let out = run_with(
        &Minimal,
        &query_edns("www.example.org.", RecordType::A, 4096, true),
        Transport::Udp,
        &Canned(full),
    );
    assert!(matches!(out.flow, Flow::Next));
    let m = out.msg.unwrap();
    assert_eq!(sections(&m), (1, 0, 0));
    let e = m.edns.expect("OPT kept");
    assert_eq!(e.max_payload(), 1232);
    assert!(e.flags().dnssec_ok);
}

#[test]
fn leaves_everything_else_alone() {
    let glue = || vec![a("ns.example.org.", [192, 0, 2, 53])];
    let answer = || vec![a("www.example.org.", [192, 0, 2, 1])];
    let cases = [
        (
            "delegation",
            RecordType::A,
            reply(
                ResponseCode::NoError,
                vec![],
                vec![ns("sub.example.org.", "ns.example.org.")],
                glue(),
            ),
        ),
        (
            "nodata",
            RecordType::A,
            reply(ResponseCode::NoError, vec![], vec![soa()], glue()),
        ),
        (
            "nxdomain",
            RecordType::A,
            reply(ResponseCode::NXDomain, vec![], vec![soa()], glue()),
        ),
        (
            "servfail",
            RecordType::A,
            reply(ResponseCode::ServFail, answer(), vec![soa()], glue()),
        ),
        (
            "axfr",
            RecordType::AXFR,
            reply(ResponseCode::NoError, answer(), vec![soa()], glue()),
        ),
    ];
    for (what, qtype, msg) in cases {
        let want = sections(&msg);
        let out = run_with(
            &Minimal,
            &query("www.example.org.", qtype),
            Transport::Tcp,
            &Canned(msg),
        );
        assert_eq!(sections(&out.msg.unwrap()), want, "{what}");
    }
}

/// A next plugin that hands over wire bytes, as a cache or upstream does.
struct Wire(Message);

impl Plugin for Wire {
    fn name(&self) -> &'static str {
        "wire"
    }
    fn query(&self, cx: &mut Context<'_>) -> Flow {
        let mut m = self.0.clone();
        m.metadata.id = cx.req.id();
        m.queries = reply_for(cx.req).queries;
        cx.reply.set_wire(&m.to_vec().unwrap());
        Flow::Answered
    }
}

#[test]
fn trims_wire_replies_too() {
    let full = reply(
        ResponseCode::NoError,
        vec![
            a("www.example.org.", [192, 0, 2, 1]),
            a("www.example.org.", [192, 0, 2, 2]),
        ],
        vec![ns("example.org.", "ns.example.org.")],
        vec![a("ns.example.org.", [192, 0, 2, 53])],
    );
    let out = run_with(
        &Minimal,
        &query_edns("www.example.org.", RecordType::A, 1232, false),
        Transport::Udp,
        &Wire(full),
    );
    let m = out.msg.unwrap();
    assert_eq!(m.metadata.id, 4242);
    assert_eq!(sections(&m), (2, 0, 0));
    assert!(m.edns.is_some());
}

/// A next plugin that fails: nothing is written.
struct Fails;

impl Plugin for Fails {
    fn name(&self) -> &'static str {
        "fails"
    }
    fn query(&self, _cx: &mut Context<'_>) -> Flow {
        Flow::Fail(ResponseCode::ServFail, None)
    }
}

#[test]
fn failures_pass_untouched() {
    let out = run_with(
        &Minimal,
        &query("www.example.org.", RecordType::A),
        Transport::Udp,
        &Fails,
    );
    assert!(out.msg.is_none());
    assert_eq!(out.failed, Some(ResponseCode::ServFail));
}
