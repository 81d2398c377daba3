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

#[test]
fn checks_spread_over_interval_plus_or_minus_jitter() {
    let cfg = ReloadConfig {
        interval: Duration::from_secs(30),
        jitter: Duration::from_secs(15),
    };
    // The extremes of the random draw map to the ends of the range.
    assert_eq!(super::spread(&cfg, 0), Duration::from_secs(15));
    assert_eq!(super::spread(&cfg, 30_000), Duration::from_secs(45));
    assert_eq!(super::spread(&cfg, 15_000), Duration::from_secs(30));
    let mut below = false;
    let mut above = false;
    for _ in 0..1000 {
        let d = super::next_check(&cfg);
        assert!(
            (Duration::from_secs(15)..=Duration::from_secs(45)).contains(&d),
            "{d:?}"
        );
        below |= d < cfg.interval;
        above |= d > cfg.interval;
    }
    // 1000 uniform draws land on both sides of INTERVAL except with
    // probability 2^-999.
    assert!(below && above, "±JITTER, not 0…JITTER");
}

#[test]
fn failures_are_counted() {
    let before = super::failures();
    super::count_failure();
    assert!(super::failures() > before);
    assert!(crate::pkg::metrics::render().contains("coredns_reload_failed_total"));
}

#[test]
fn the_version_gauge_names_the_running_corefile_only() {
    let first = super::set_version(". {\n    whoami\n}\n");
    assert_eq!(first.len(), 128, "SHA-512 in hex");
    let second = super::set_version(". {\n    chaos\n}\n");
    assert_ne!(first, second);
    let text = crate::pkg::metrics::render();
    assert!(
        text.contains(&format!(
            "coredns_reload_version_info{{hash=\"sha512\",value=\"{second}\"}} 1"
        )),
        "{text}"
    );
    assert!(
        !text.contains(&first),
        "the replaced version's series is gone"
    );
}
