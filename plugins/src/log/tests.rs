use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use regex::Regex;
use tokio::time::Instant;

use super::format::{COMBINED, COMMON};
use super::setup::{DEFAULT_MIN_DURATION, LogConfig, RuleConfig, parse};
use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;
use crate::pkg::test::{
    AnswerStub, FailStub, SoaStub, Stub, query, query_class, run_next, setup as run_setup,
};
use crate::request::Transport;

// === helpers ===

fn parse_text(text: &str) -> Result<LogConfig, String> {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).map_err(|e| e.to_string())?;
    let mut d = Dispenser::new("log", &tokens);
    parse(&mut d).map_err(|e| e.to_string())
}

/// A handler for `text` whose lines land in the returned vector.
fn logger(text: &str) -> (Log, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let out: Output = Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_string()));
    let config = parse_text(text).unwrap();
    (config.build(out), lines)
}

/// Runs `text`'s handler in front of `next` for `raw` and returns the lines.
fn lines_for(text: &str, raw: &[u8], transport: Transport, next: &dyn Plugin) -> Vec<String> {
    lines_at(text, raw, transport, next, Instant::now())
}

fn lines_at(
    text: &str,
    raw: &[u8],
    transport: Transport,
    next: &dyn Plugin,
    start: Instant,
) -> Vec<String> {
    let (log, lines) = logger(text);
    let out = run_next(&log, raw, transport, next, start);
    assert!(matches!(out.flow, Flow::Next));
    lines.lock().unwrap().clone()
}

fn a_query() -> Vec<u8> {
    query("example.org.", RecordType::A)
}

fn edns_query(size: u16, dnssec_ok: bool) -> Vec<u8> {
    let mut m = Message::from_vec(&a_query()).unwrap();
    let mut e = Edns::new();
    e.set_max_payload(size);
    e.set_dnssec_ok(dnssec_ok);
    m.set_edns(e);
    m.to_vec().unwrap()
}

fn rule(name: &str, format: &str, classes: Classes, min: Duration) -> RuleConfig {
    RuleConfig {
        name: name.to_string(),
        zone: crate::request::name_to_wire(name).unwrap(),
        format: format.to_string(),
        classes,
        min_duration: min,
    }
}

fn classes(list: &[Classes]) -> Classes {
    let mut c = Classes::default();
    for x in list {
        c.insert(*x);
    }
    c
}

// === setup ===

#[test]
fn setup_table() {
    use Classes as C;
    let z = Duration::ZERO;
    let cases: Vec<(&str, Result<Vec<RuleConfig>, &str>)> = vec![
        ("log", Ok(vec![rule(".", COMMON, C::ALL, z)])),
        (
            "log example.org",
            Ok(vec![rule("example.org.", COMMON, C::ALL, z)]),
        ),
        (
            "log example.org. {common}",
            Ok(vec![rule("example.org.", COMMON, C::ALL, z)]),
        ),
        (
            "log example.org {combined}",
            Ok(vec![rule("example.org.", COMBINED, C::ALL, z)]),
        ),
        (
            "log example.org.\nlog example.net {combined}",
            Ok(vec![
                rule("example.org.", COMMON, C::ALL, z),
                rule("example.net.", COMBINED, C::ALL, z),
            ]),
        ),
        (
            "log example.org {host}\nlog example.org {when}",
            Ok(vec![
                rule("example.org.", "{host}", C::ALL, z),
                rule("example.org.", "{when}", C::ALL, z),
            ]),
        ),
        (
            "log example.org example.net",
            Ok(vec![
                rule("example.org.", COMMON, C::ALL, z),
                rule("example.net.", COMMON, C::ALL, z),
            ]),
        ),
        (
            "log example.org example.net \"{type} {name}\" {\n  class denial\n}",
            Ok(vec![
                rule("example.org.", "{type} {name}", C::DENIAL, z),
                rule("example.net.", "{type} {name}", C::DENIAL, z),
            ]),
        ),
        (
            "log example.org {\n  class all\n}",
            Ok(vec![rule("example.org.", COMMON, C::ALL, z)]),
        ),
        (
            "log {\n  class denial\n}",
            Ok(vec![rule(".", COMMON, C::DENIAL, z)]),
        ),
        (
            "log {\n  class denial error\n}",
            Ok(vec![rule(".", COMMON, classes(&[C::DENIAL, C::ERROR]), z)]),
        ),
        (
            "log {\n  class denial\n  class error\n}",
            Ok(vec![rule(".", COMMON, classes(&[C::DENIAL, C::ERROR]), z)]),
        ),
        (
            "log {\n  minDuration\n}",
            Ok(vec![rule(".", COMMON, C::ALL, DEFAULT_MIN_DURATION)]),
        ),
        (
            "log {\n  class error\n  minDuration 1s\n}",
            Ok(vec![rule(".", COMMON, C::ERROR, Duration::from_secs(1))]),
        ),
        (
            "log . \"{/test/meta} {name}\"",
            Ok(vec![rule(".", "{/test/meta} {name}", C::ALL, z)]),
        ),
        // Errors.
        (
            "log {\n  class abracadabra\n}",
            Err("Corefile:2: log: invalid class 'abracadabra': want all, success, denial or error"),
        ),
        (
            "log {\n  class\n}",
            Err("Corefile:2: log: wrong argument count or unexpected line ending after 'class'"),
        ),
        (
            "log {\n  minDuration 123abc\n}",
            Err("Corefile:2: log: invalid duration '123abc'"),
        ),
        (
            "log {\n  minDuration 1s 2s\n}",
            Err("Corefile:2: log: wrong argument count or unexpected line ending after '2s'"),
        ),
        (
            "log {\n  unknown\n}",
            Err("Corefile:2: log: option 'unknown' not supported"),
        ),
        (
            "log example..org",
            Err("Corefile:1: log: invalid name 'example..org'"),
        ),
        (
            "log {combined}",
            Err(
                "Corefile:1: log: '{combined}' is not a name; a FORMAT comes after at least one NAME, as in 'log . {combined}'",
            ),
        ),
        (
            "log\nlog . \"{local} {name}\"",
            Err(
                "Corefile:2: log: placeholder {local} not supported: plugins are not told the server's own address",
            ),
        ),
    ];
    for (text, want) in cases {
        let got = parse_text(text).map(|c| c.rules);
        assert_eq!(got, want.map_err(str::to_string), "{text}");
        // The setup function agrees, and adds one handler.
        match run_setup("log", setup, text) {
            Ok((out, _)) => assert_eq!(out.plugins.len(), 1, "{text}"),
            Err(e) => assert!(got.is_err(), "{text}: {e}"),
        }
    }
}

// === handler ===

#[test]
fn default_format_line() {
    let lines = lines_for("log", &a_query(), Transport::Udp, &AnswerStub);
    assert_eq!(lines.len(), 1);
    let re = Regex::new(
        r#"^\[INFO\] 127\.0\.0\.1:40212 - 4242 "A IN example\.org\. udp 29 false 512" NOERROR qr,aa,rd 45 \d+(\.\d+)?s$"#,
    )
    .unwrap();
    assert!(re.is_match(&lines[0]), "{}", lines[0]);
}

#[test]
fn edns_tcp_class_and_case() {
    let lines = lines_for("log", &edns_query(1232, true), Transport::Udp, &AnswerStub);
    assert!(
        lines[0].contains("\"A IN example.org. udp 40 true 1232\""),
        "{}",
        lines[0]
    );
    // Advertised sizes below 512 read as 512.
    let lines = lines_for("log", &edns_query(100, false), Transport::Udp, &AnswerStub);
    assert!(lines[0].contains(" udp 40 false 512\""), "{}", lines[0]);
    // Over TCP the buffer is the largest message.
    let lines = lines_for("log", &a_query(), Transport::Tcp, &AnswerStub);
    assert!(
        lines[0].contains("\"A IN example.org. tcp 29 false 65535\""),
        "{}",
        lines[0]
    );
    // The name is lower-cased; other classes and types by their mnemonic.
    let raw = query_class("WWW.Example.ORG.", RecordType::TXT, DNSClass::CH);
    let lines = lines_for(
        "log",
        &raw,
        Transport::Udp,
        &Stub::Rcode(ResponseCode::Refused),
    );
    assert!(
        lines[0].contains("\"TXT CH www.example.org. udp "),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("\" REFUSED qr,rd "), "{}", lines[0]);
}

#[test]
fn custom_and_combined_formats() {
    let text = r#"log . "{proto} Request: {name} {type} {>id}""#;
    let lines = lines_for(text, &a_query(), Transport::Udp, &AnswerStub);
    assert_eq!(lines, vec!["[INFO] udp Request: example.org. A 4242"]);

    let text = r#"log . "{type} {class} {/test/meta2} {host} {>ID} {{remote}}""#;
    let lines = lines_for(text, &a_query(), Transport::Udp, &AnswerStub);
    assert_eq!(lines, vec!["[INFO] A IN - {host} {>ID} {127.0.0.1}"]);

    let lines = lines_for("log . {combined}", &a_query(), Transport::Udp, &AnswerStub);
    assert!(lines[0].ends_with("s \"0\""), "{}", lines[0]);
    assert!(lines[0].contains(" NOERROR qr,aa,rd 45 "), "{}", lines[0]);
}

#[test]
fn failure_logs_dashes() {
    // Nothing written: CoreDNS logs `-` for the rcode and flags, and 0 bytes.
    let lines = lines_for(
        "log",
        &a_query(),
        Transport::Udp,
        &FailStub(ResponseCode::ServFail),
    );
    let re = Regex::new(
        r#"^\[INFO\] 127\.0\.0\.1:40212 - 4242 "A IN example\.org\. udp 29 false 512" - - 0 \d+(\.\d+)?s$"#,
    )
    .unwrap();
    assert!(re.is_match(&lines[0]), "{}", lines[0]);
}

#[test]
fn class_filters() {
    let nx = SoaStub(ResponseCode::NXDomain);
    let nodata = SoaStub(ResponseCode::NoError);
    let servfail = Stub::Rcode(ResponseCode::ServFail);
    let nx_no_soa = Stub::Rcode(ResponseCode::NXDomain);
    let empty_noerror = Stub::Rcode(ResponseCode::NoError);
    let fail = FailStub(ResponseCode::ServFail);
    let cases: &[(&str, &dyn Plugin, bool)] = &[
        ("all", &AnswerStub, true),
        ("all", &fail, true),
        ("success", &AnswerStub, true),
        ("success", &empty_noerror, true),
        ("success", &nx, false),
        ("success", &fail, false),
        ("denial", &nx, true),
        ("denial", &nodata, true),
        ("denial", &AnswerStub, false),
        ("denial", &servfail, false),
        ("error", &servfail, true),
        ("error", &fail, true),
        ("error", &nx_no_soa, true),
        ("error", &AnswerStub, false),
        ("error", &nodata, false),
        ("denial error", &nx, true),
        ("denial error", &fail, true),
        ("denial error", &AnswerStub, false),
        ("denial success", &AnswerStub, true),
        ("denial success", &servfail, false),
    ];
    for (list, next, want) in cases {
        let text = format!("log {{\n  class {list}\n}}");
        let lines = lines_for(&text, &a_query(), Transport::Udp, *next);
        assert_eq!(
            lines.len(),
            usize::from(*want),
            "class {list} with {next:?}: {lines:?}"
        );
    }
}

#[test]
fn names_and_first_rule_wins() {
    let text = "log example.org";
    for (name, want) in [
        ("example.org.", 1),
        ("www.Example.org.", 1),
        ("example.net.", 0),
        ("org.", 0),
    ] {
        let lines = lines_for(
            text,
            &query(name, RecordType::A),
            Transport::Udp,
            &AnswerStub,
        );
        assert_eq!(lines.len(), want, "{name}");
    }
    // Several names on one line, each its own rule.
    let text = "log example.net example.org \"{name}\"";
    let lines = lines_for(text, &a_query(), Transport::Udp, &AnswerStub);
    assert_eq!(lines, vec!["[INFO] example.org."]);
    // The first rule that covers the name decides, even when it then
    // logs nothing (CoreDNS returns after the first match).
    let text = "log example.org {\n  class denial\n}\nlog . \"{name}\"";
    let lines = lines_for(text, &a_query(), Transport::Udp, &AnswerStub);
    assert!(lines.is_empty(), "{lines:?}");
    let lines = lines_for(
        text,
        &query("example.net.", RecordType::A),
        Transport::Udp,
        &AnswerStub,
    );
    assert_eq!(lines, vec!["[INFO] example.net."]);
}

#[test]
fn min_duration_logs_slow_queries() {
    let text = "log . \"{name} {rcode}\" {\n  class denial\n  minDuration 1s\n}";
    let slow = Instant::now()
        .checked_sub(Duration::from_secs(2))
        .expect("clock is past 2s");
    let lines = lines_at(text, &a_query(), Transport::Udp, &AnswerStub, slow);
    assert_eq!(lines, vec!["[INFO] example.org. NOERROR"]);
    let lines = lines_at(
        text,
        &a_query(),
        Transport::Udp,
        &AnswerStub,
        Instant::now(),
    );
    assert!(lines.is_empty(), "{lines:?}");
}

#[test]
fn duration_reflects_start() {
    let start = Instant::now()
        .checked_sub(Duration::from_millis(1500))
        .expect("clock is past 1.5s");
    let lines = lines_at(
        "log . {duration}",
        &a_query(),
        Transport::Udp,
        &AnswerStub,
        start,
    );
    let secs: f64 = lines[0]
        .strip_prefix("[INFO] ")
        .and_then(|s| s.strip_suffix('s'))
        .unwrap()
        .parse()
        .unwrap();
    assert!((1.5..60.0).contains(&secs), "{}", lines[0]);
}

#[test]
fn reply_is_untouched() {
    let (log, _lines) = logger("log");
    let out = run_next(
        &log,
        &a_query(),
        Transport::Udp,
        &AnswerStub,
        Instant::now(),
    );
    let m = out.msg.unwrap();
    assert_eq!(m.metadata.id, 4242);
    assert_eq!(m.answers.len(), 1);
    assert!(m.metadata.authoritative);
}
