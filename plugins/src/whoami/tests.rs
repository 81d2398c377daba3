use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

use std::net::IpAddr;

use super::*;
use crate::pkg::test::{Stub, client, query, run, setup as run_setup};
use crate::request::Transport;

#[test]
fn setup_table() {
    let cases: &[(&str, Result<(), &str>)] = &[
        ("whoami", Ok(())),
        ("whoami\nwhoami", Ok(())),
        (
            "whoami example.org",
            Err(
                "Corefile:1: whoami: wrong argument count or unexpected line ending after 'example.org'",
            ),
        ),
    ];
    for (text, want) in cases {
        let got = run_setup("whoami", setup, text)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(got, want.map_err(str::to_string), "{text}");
    }
}

#[test]
fn answers_with_address_and_port() {
    for (transport, label) in [(Transport::Udp, "_udp"), (Transport::Tcp, "_tcp")] {
        let out = run(
            &Whoami,
            &query("Example.org.", RecordType::A),
            transport,
            Stub::Rcode(ResponseCode::ServFail),
        );
        assert!(matches!(out.flow, Flow::Answered));
        let m = out.msg.unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        assert!(m.answers.is_empty());
        assert_eq!(m.additionals.len(), 2);
        assert_eq!(m.additionals[0].name.to_string(), "Example.org.");
        let RData::A(a) = &m.additionals[0].data else {
            panic!("not A")
        };
        assert_eq!(IpAddr::V4(a.0), client().ip());
        assert_eq!(
            m.additionals[1].name.to_string(),
            format!("{label}.Example.org.")
        );
        let RData::SRV(srv) = &m.additionals[1].data else {
            panic!("not SRV")
        };
        assert_eq!(srv.port, client().port());
    }
}
