//! *reload* makes the agent re-read its Corefile when it changes: every
//! INTERVAL ± JITTER the configuration, `import`ed files and snippets
//! expanded, is compared with the running one, and a change is applied
//! live. A Corefile that does not load (a syntax error, no server block at
//! all, an address that cannot be bound) is refused with its `FILE:LINE`
//! error, counted in `coredns_reload_failed_total`, and the running one
//! keeps serving. SIGUSR1 reloads at once, with or without this plugin.

mod setup;
#[cfg(test)]
mod tests;

pub use setup::setup;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::IntCounter;

use crate::setup::ReloadConfig;

static FAILED: LazyLock<IntCounter> = LazyLock::new(|| {
    crate::pkg::metrics::counter(
        "coredns_reload_failed_total",
        "Counter of the number of failed reload attempts.",
    )
});

static VERSION: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    crate::pkg::metrics::gauge_vec(
        "coredns_reload_version_info",
        "A metric with a constant '1' value labeled by hash, and value which type of hash generated.",
        &["hash", "value"],
    )
});

/// Shows which configuration runs, as CoreDNS's `reload` does:
/// `coredns_reload_version_info{hash="sha512",value=HEX}` is 1 for the
/// running Corefile's SHA-512 (the series of the one it replaced goes).
/// Called on start and on every applied change, whatever triggered it.
pub fn set_version(corefile: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA512, corefile.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    VERSION.reset();
    VERSION.with_label_values(&["sha512", &hex]).set(1);
    hex
}

/// Counts a refused reload (`coredns_reload_failed_total`, as CoreDNS).
pub fn count_failure() {
    FAILED.inc();
}

/// Refused reloads so far.
pub fn failures() -> u64 {
    FAILED.get()
}

/// How long to wait before the next check: INTERVAL ± JITTER, uniformly
/// (CoreDNS's `reload` spreads checks this way, so that agents started
/// together do not all re-read at once).
pub fn next_check(cfg: &ReloadConfig) -> Duration {
    spread(cfg, rand::random::<u64>())
}

/// INTERVAL − JITTER plus `r` reduced to `[0, 2 × JITTER]` milliseconds.
fn spread(cfg: &ReloadConfig, r: u64) -> Duration {
    let jitter = cfg.jitter.min(cfg.interval);
    let span = u64::try_from(jitter.as_millis().saturating_mul(2)).unwrap_or(u64::MAX);
    let offset = Duration::from_millis(r % span.saturating_add(1).max(1));
    (cfg.interval - jitter) + offset
}
