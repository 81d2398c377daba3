//! hosts's metrics, under CoreDNS's names and labels: set each time the
//! file is read, as CoreDNS's `readHosts` sets them.

use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, IntGaugeVec};

use crate::pkg::metrics::{gauge, gauge_vec};

pub(super) static ENTRIES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "coredns_hosts_entries",
        "The combined number of entries in hosts and Corefile.",
        &["hostsfile"],
    )
});

pub(super) static RELOAD_TIME: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        "coredns_hosts_reload_timestamp_seconds",
        "The timestamp of the last reload of hosts file.",
    )
});

/// The file at `path` was read: `entries` in the table (file and inline),
/// the file last modified at `modified`.
pub(super) fn file_read(path: &str, entries: usize, modified: Option<SystemTime>) {
    ENTRIES
        .with_label_values(&[path])
        .set(i64::try_from(entries).unwrap_or(i64::MAX));
    if let Some(secs) = modified
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
    {
        RELOAD_TIME.set(secs);
    }
}
