use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::time::Instant;

use super::setup::{ErrorsConfig, MAX_PATTERNS, parse};
use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;
use crate::pkg::test::{AnswerStub, FailStub, Stub, query, run_next, setup as run_setup};
use crate::request::Transport;

// === helpers ===

fn parse_text(text: &str) -> Result<ErrorsConfig, String> {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).map_err(|e| e.to_string())?;
    let mut d = Dispenser::new("errors", &tokens);
    parse(&mut d).map_err(|e| e.to_string())
}

type Lines = Arc<Mutex<Vec<String>>>;

/// A handler for `text` whose lines land in the returned vector.
fn handler(text: &str) -> (Errors, Lines) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let out: Output = Arc::new(move |l: &str| sink.lock().unwrap().push(l.to_string()));
    (parse_text(text).unwrap().build(out), lines)
}

/// Sends one query through `errors` and then `next`.
fn serve(errors: &Errors, name: &str, next: &dyn Plugin) {
    let out = run_next(
        errors,
        &query(name, RecordType::A),
        Transport::Udp,
        next,
        Instant::now(),
    );
    assert!(matches!(out.flow, Flow::Next));
}

fn fail() -> FailStub {
    FailStub(ResponseCode::ServFail)
}

fn take(lines: &Lines) -> Vec<String> {
    std::mem::take(&mut *lines.lock().unwrap())
}

const FAILED: &str = "[ERROR] plugin/errors: 2 example.org. A: plugin/stub: no next plugin found";

// === setup ===

#[test]
fn setup_table() {
    // (text, Ok(patterns as (period, regex, level, show_first)) or the error)
    type Want = Vec<(Duration, &'static str, Level, bool)>;
    let secs = Duration::from_secs;
    let cases: Vec<(&str, Result<Want, &str>)> = vec![
        ("errors", Ok(vec![])),
        ("errors stdout", Ok(vec![])),
        ("errors {\n}", Ok(vec![])),
        (
            "errors {\n  consolidate 1m .* \n}",
            Ok(vec![(secs(60), ".*", Level::Error, false)]),
        ),
        (
            "errors {\n  consolidate 1m \"format error\" warning\n}",
            Ok(vec![(secs(60), "format error", Level::Warning, false)]),
        ),
        (
            "errors {\n  consolidate 5m \".* i/o timeout$\" warning\n  consolidate 30s \"^Failed to .+\"\n}",
            Ok(vec![
                (secs(300), ".* i/o timeout$", Level::Warning, false),
                (secs(30), "^Failed to .+", Level::Error, false),
            ]),
        ),
        (
            "errors {\n  consolidate 1m error info\n  consolidate 1m error debug\n  consolidate 1m error error\n}",
            Ok(vec![
                (secs(60), "error", Level::Info, false),
                (secs(60), "error", Level::Debug, false),
                (secs(60), "error", Level::Error, false),
            ]),
        ),
        (
            "errors {\n  consolidate 30s timeout warning show_first\n  consolidate 30s refused show_first\n}",
            Ok(vec![
                (secs(30), "timeout", Level::Warning, true),
                (secs(30), "refused", Level::Error, true),
            ]),
        ),
        // Errors.
        (
            "errors\nerrors",
            Err("Corefile:2: errors: this plugin can only be used once per Server Block"),
        ),
        (
            "errors /var/log/errors.log",
            Err(
                "Corefile:1: errors: invalid log file '/var/log/errors.log': errors are printed to stdout only",
            ),
        ),
        (
            "errors stdout more",
            Err("Corefile:1: errors: wrong argument count or unexpected line ending after 'more'"),
        ),
        (
            "errors {\n  stacktrace\n}",
            Err("Corefile:2: errors: option 'stacktrace' not supported"),
        ),
        (
            "errors {\n  consolidate 1m .* \n  unknown\n}",
            Err("Corefile:3: errors: option 'unknown' not supported"),
        ),
        (
            "errors {\n  consolidate\n}",
            Err(
                "Corefile:2: errors: wrong argument count or unexpected line ending after 'consolidate'",
            ),
        ),
        (
            "errors {\n  consolidate 1m\n}",
            Err("Corefile:2: errors: wrong argument count or unexpected line ending after '1m'"),
        ),
        (
            "errors {\n  consolidate 1m .* error show_first extra\n}",
            Err("Corefile:2: errors: wrong argument count or unexpected line ending after 'extra'"),
        ),
        (
            "errors {\n  consolidate abc .*\n}",
            Err("Corefile:2: errors: invalid duration 'abc'"),
        ),
        (
            "errors {\n  consolidate 1m (\n}",
            Err("Corefile:2: errors: invalid REGEXP '(': unclosed group"),
        ),
        (
            "errors {\n  consolidate 1m .* warn\n}",
            Err(
                "Corefile:2: errors: unknown log level argument in consolidate: warn (want warning, error, info or debug)",
            ),
        ),
        (
            "errors {\n  consolidate 1m .* error first\n}",
            Err("Corefile:2: errors: unknown argument in consolidate: first (want show_first)"),
        ),
    ];
    for (text, want) in cases {
        let got = parse_text(text).map(|c| {
            c.patterns
                .iter()
                .map(|p| {
                    (
                        p.period,
                        p.regex.as_str().to_string(),
                        p.level,
                        p.show_first,
                    )
                })
                .collect::<Vec<_>>()
        });
        let want = want
            .map(|v| {
                v.into_iter()
                    .map(|(d, r, l, s)| (d, r.to_string(), l, s))
                    .collect::<Vec<_>>()
            })
            .map_err(str::to_string);
        assert_eq!(got, want, "{text}");
        // The setup function agrees: one handler, one task per pattern.
        match run_setup("errors", setup, text) {
            Ok((out, _)) => {
                assert_eq!(out.plugins.len(), 1, "{text}");
                assert_eq!(out.tasks.len(), got.map_or(0, |p| p.len()), "{text}");
            }
            Err(e) => assert!(got.is_err(), "{text}: {e}"),
        }
    }
}

#[test]
fn setup_limits() {
    let long = "a".repeat(10_001);
    let text = format!("errors {{\n  consolidate 1m {long}\n}}");
    assert_eq!(
        parse_text(&text).unwrap_err(),
        "Corefile:2: errors: REGEXP is longer than 10000 characters"
    );
    let ok = format!("errors {{\n  consolidate 1m {}\n}}", "a".repeat(10_000));
    assert!(parse_text(&ok).is_ok());

    let mut text = String::from("errors {\n");
    for _ in 0..=MAX_PATTERNS {
        text.push_str("  consolidate 1m x\n");
    }
    text.push('}');
    assert_eq!(
        parse_text(&text).unwrap_err(),
        format!(
            "Corefile:{}: errors: too many consolidate lines (at most 256)",
            MAX_PATTERNS + 2
        )
    );
}

// === handler ===

#[test]
fn logs_a_failure() {
    let (errors, lines) = handler("errors");
    serve(&errors, "Example.org.", &fail());
    assert_eq!(take(&lines), vec![FAILED]);
    serve(&errors, "example.org.", &FailStub(ResponseCode::Refused));
    assert_eq!(
        take(&lines),
        vec!["[ERROR] plugin/errors: 5 example.org. A: plugin/stub: no next plugin found"]
    );
}

#[test]
fn answers_are_not_errors() {
    let (errors, lines) = handler("errors");
    serve(&errors, "example.org.", &AnswerStub);
    serve(
        &errors,
        "example.org.",
        &Stub::Rcode(ResponseCode::ServFail),
    );
    assert!(take(&lines).is_empty());
}

#[test]
fn consolidates_and_counts() {
    let (errors, lines) = handler("errors {\n  consolidate 5m \"no next plugin\"\n}");
    for _ in 0..3 {
        serve(&errors, "example.org.", &fail());
    }
    assert!(take(&lines).is_empty());
    errors.shared.flush(0);
    assert_eq!(
        take(&lines),
        vec!["[ERROR] plugin/errors: 3 errors like 'no next plugin' occurred in last 5m0s"]
    );
    // Nothing new: nothing to say.
    errors.shared.flush(0);
    assert!(take(&lines).is_empty());
    // A new period counts from one.
    serve(&errors, "example.org.", &fail());
    errors.shared.flush(0);
    assert_eq!(
        take(&lines),
        vec!["[ERROR] plugin/errors: 1 errors like 'no next plugin' occurred in last 5m0s"]
    );
}

#[test]
fn consolidate_levels() {
    for (level, prefix) in [
        ("warning", "[WARNING]"),
        ("info", "[INFO]"),
        ("error", "[ERROR]"),
    ] {
        let (errors, lines) = handler(&format!("errors {{\n  consolidate 30s stub {level}\n}}"));
        serve(&errors, "example.org.", &fail());
        serve(&errors, "example.org.", &fail());
        errors.shared.flush(0);
        assert_eq!(
            take(&lines),
            vec![format!(
                "{prefix} plugin/errors: 2 errors like 'stub' occurred in last 30s"
            )]
        );
    }
    // Debug lines need CoreDNS's debug plugin: not printed.
    let (errors, lines) = handler("errors {\n  consolidate 30s stub debug show_first\n}");
    serve(&errors, "example.org.", &fail());
    serve(&errors, "example.org.", &fail());
    errors.shared.flush(0);
    assert!(take(&lines).is_empty());
}

#[test]
fn first_matching_pattern_counts_others_print() {
    let text = "errors {\n  consolidate 1m ^foo\n  consolidate 1m stub\n  consolidate 1m found$\n}";
    let (errors, lines) = handler(text);
    serve(&errors, "example.org.", &fail());
    assert!(take(&lines).is_empty());
    for i in 0..3 {
        errors.shared.flush(i);
    }
    assert_eq!(
        take(&lines),
        vec!["[ERROR] plugin/errors: 1 errors like 'stub' occurred in last 1m0s"]
    );
    // An error no pattern matches prints at once.
    let (errors, lines) = handler("errors {\n  consolidate 1m timeout$\n}");
    serve(&errors, "example.org.", &fail());
    assert_eq!(take(&lines), vec![FAILED]);
}

#[test]
fn show_first() {
    let (errors, lines) = handler("errors {\n  consolidate 30s stub warning show_first\n}");
    // One error: printed in full at the pattern's level, no summary.
    serve(&errors, "example.org.", &fail());
    assert_eq!(
        take(&lines),
        vec!["[WARNING] plugin/errors: 2 example.org. A: plugin/stub: no next plugin found"]
    );
    errors.shared.flush(0);
    assert!(take(&lines).is_empty());
    // Three: the first in full, then the total.
    for _ in 0..3 {
        serve(&errors, "example.org.", &fail());
    }
    assert_eq!(take(&lines).len(), 1);
    errors.shared.flush(0);
    assert_eq!(
        take(&lines),
        vec!["[WARNING] plugin/errors: 3 errors like 'stub' occurred in last 30s"]
    );
}

#[test]
fn drop_prints_pending_counts() {
    let (errors, lines) = handler("errors {\n  consolidate 5m stub\n  consolidate 5m other\n}");
    serve(&errors, "example.org.", &fail());
    serve(&errors, "example.org.", &fail());
    drop(errors);
    assert_eq!(
        take(&lines),
        vec!["[ERROR] plugin/errors: 2 errors like 'stub' occurred in last 5m0s"]
    );
}

#[tokio::test]
async fn task_prints_after_the_period_and_ends_with_the_handler() {
    let (errors, lines) = handler("errors {\n  consolidate 20ms stub\n}");
    let tasks: Vec<_> = errors.tasks().into_iter().map(tokio::spawn).collect();
    assert_eq!(tasks.len(), 1);
    serve(&errors, "example.org.", &fail());
    serve(&errors, "example.org.", &fail());
    let want = "[ERROR] plugin/errors: 2 errors like 'stub' occurred in last 20ms";
    crate::pkg::test::wait_until(want, Duration::from_secs(10), || {
        lines.lock().unwrap().iter().any(|l| l == want)
    })
    .await;
    // A second period.
    take(&lines);
    serve(&errors, "example.org.", &fail());
    let want = "[ERROR] plugin/errors: 1 errors like 'stub' occurred in last 20ms";
    crate::pkg::test::wait_until(want, Duration::from_secs(10), || {
        lines.lock().unwrap().iter().any(|l| l == want)
    })
    .await;
    // Dropping the handler ends the task, even mid-period.
    serve(&errors, "example.org.", &fail());
    drop(errors);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("task ends when the handler is dropped")
            .unwrap();
    }
}

#[tokio::test]
async fn idle_task_ends_with_the_handler() {
    let (errors, _lines) = handler("errors {\n  consolidate 1h stub\n}");
    let tasks: Vec<_> = errors.tasks().into_iter().map(tokio::spawn).collect();
    tokio::task::yield_now().await;
    drop(errors);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("task ends when the handler is dropped")
            .unwrap();
    }
}
