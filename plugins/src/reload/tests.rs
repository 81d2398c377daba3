use std::time::Duration;

use super::setup;
use crate::pkg::test::setup as run_setup;
use crate::setup::ReloadConfig;

#[test]
fn setup_table() {
    let cases: &[(&str, Result<ReloadConfig, &str>)] = &[
        (
            "reload",
            Ok(ReloadConfig {
                interval: Duration::from_secs(30),
                jitter: Duration::from_secs(15),
            }),
        ),
        (
            "reload 10s",
            Ok(ReloadConfig {
                interval: Duration::from_secs(10),
                jitter: Duration::from_secs(5),
            }),
        ),
        (
            "reload 10s 2s",
            Ok(ReloadConfig {
                interval: Duration::from_secs(10),
                jitter: Duration::from_secs(2),
            }),
        ),
        (
            "reload 1s",
            Err("Corefile:1: reload: interval value must be greater or equal to 2s"),
        ),
        (
            "reload 5s 500ms",
            Err("Corefile:1: reload: jitter value must be greater or equal to 1s"),
        ),
        ("reload x", Err("Corefile:1: reload: invalid duration 'x'")),
        (
            "reload 5s 1s 1s",
            Err("Corefile:1: reload: wrong argument count or unexpected line ending after '1s'"),
        ),
        (
            "reload\nreload",
            Err("Corefile:2: reload: plugin can only be used once per server block"),
        ),
    ];
    for (text, want) in cases {
        let got = run_setup("reload", setup, text).map(|(out, services)| {
            assert!(out.plugins.is_empty(), "reload adds no handler");
            services.reload.expect("reload set")
        });
        assert_eq!(
            got.map_err(|e| e.to_string()),
            want.map_err(str::to_string),
            "{text}"
        );
    }
}
