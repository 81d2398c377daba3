//! `consolidate DURATION REGEXP [LEVEL] [show_first]`: errors matching
//! REGEXP are counted, and DURATION after the first of them one line says
//! how many there were (CoreDNS's `time.AfterFunc` per pattern, here a task
//! per pattern woken by the first error of a period).
//!
//! With `show_first`, the first error of a period is also printed in full
//! when it happens, and the summary is left out when it was the only one.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use regex::Regex;
use tokio::sync::Notify;

use super::{Level, Shared};

/// One `consolidate` line and its running count.
pub(crate) struct Pattern {
    regex: Regex,
    period: Duration,
    /// The period as Go prints a `time.Duration` (`5m0s`).
    period_text: String,
    level: Level,
    show_first: bool,
    count: AtomicU64,
    wake: Arc<Wake>,
}

/// How the handler reaches a pattern's flush task.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    notify: Notify,
    /// Set when the handler is dropped: count nothing more, end the task.
    closed: AtomicBool,
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pattern")
            .field("regex", &self.regex.as_str())
            .field("period", &self.period_text)
            .field("level", &self.level)
            .field("show_first", &self.show_first)
            .finish()
    }
}

impl Pattern {
    pub(crate) fn new(regex: Regex, period: Duration, level: Level, show_first: bool) -> Self {
        Self {
            regex,
            period,
            period_text: go_duration(period),
            level,
            show_first,
            count: AtomicU64::new(0),
            wake: Arc::new(Wake::default()),
        }
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }

    pub(crate) fn level(&self) -> Level {
        self.level
    }

    pub(crate) fn period(&self) -> Duration {
        self.period
    }

    pub(crate) fn wake(&self) -> Arc<Wake> {
        Arc::clone(&self.wake)
    }

    /// Counts one error. True when it is consolidated and the caller prints
    /// nothing; false for the first of a period under `show_first`, and
    /// after the handler stopped (the caller prints it at this pattern's
    /// level, as CoreDNS's `consolidateError` does).
    pub(crate) fn consolidate(&self) -> bool {
        if self.wake.closed.load(Ordering::Acquire) {
            return false;
        }
        if self.count.fetch_add(1, Ordering::AcqRel) == 0 {
            self.wake.notify.notify_one();
            return !self.show_first;
        }
        true
    }

    /// Takes the count and returns the summary line, if one is due
    /// (CoreDNS's `logPattern`).
    pub(crate) fn take_summary(&self) -> Option<String> {
        let n = self.count.swap(0, Ordering::AcqRel);
        if n == 0 || (n == 1 && self.show_first) {
            return None;
        }
        Some(format!(
            "{n} errors like '{}' occurred in last {}",
            self.regex.as_str(),
            self.period_text
        ))
    }

    /// Stops counting.
    pub(crate) fn close(&self) {
        self.wake.closed.store(true, Ordering::Release);
    }

    /// Wakes the flush task (so that it sees `closed` and ends).
    pub(crate) fn wake_task(&self) {
        self.wake.notify.notify_one();
    }
}

/// The flush task of pattern `i`: waits for the first error of a period,
/// sleeps the period, prints the count, and again. Ends when the handler is
/// dropped (it is woken then), without keeping the handler alive.
pub(crate) async fn flush_task(shared: Weak<Shared>, i: usize, wake: Arc<Wake>, period: Duration) {
    loop {
        wake.notify.notified().await;
        if wake.closed.load(Ordering::Acquire) {
            return;
        }
        // While a period runs the count is above zero, so only the handler's
        // drop notifies here.
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = wake.notify.notified() => {}
        }
        if wake.closed.load(Ordering::Acquire) {
            return;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.flush(i);
    }
}

/// Formats a duration as Go's `time.Duration.String` does: `0s`, `750ms`,
/// `1.5µs`, `30s`, `5m0s`, `1h0m0s`, `1m30.5s`.
pub(crate) fn go_duration(d: Duration) -> String {
    const NS_PER_S: u128 = 1_000_000_000;
    let ns = d.as_nanos();
    let mut out = String::new();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000 {
        let _ = write!(out, "{ns}ns");
        return out;
    }
    if ns < 1_000_000 {
        write_fraction(&mut out, ns, 1_000, 3);
        out.push_str("µs");
        return out;
    }
    if ns < NS_PER_S {
        write_fraction(&mut out, ns, 1_000_000, 6);
        out.push_str("ms");
        return out;
    }
    let secs = ns / NS_PER_S;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if secs >= 60 {
        let _ = write!(out, "{m}m");
    }
    write_fraction(&mut out, s * NS_PER_S + ns % NS_PER_S, NS_PER_S, 9);
    out.push('s');
    out
}

/// Writes `v / unit` with up to `digits` decimals, trailing zeros dropped.
fn write_fraction(out: &mut String, v: u128, unit: u128, digits: usize) {
    let (int, rem) = (v / unit, v % unit);
    let _ = write!(out, "{int}");
    if rem != 0 {
        let frac = format!("{rem:0digits$}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go_prints_them() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(5), "5ns"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (Duration::from_micros(1_000), "1ms"),
            (Duration::from_millis(750), "750ms"),
            (Duration::from_millis(1_500), "1.5s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_millis(90_500), "1m30.5s"),
            (Duration::from_secs(300), "5m0s"),
            (Duration::from_secs(3_600), "1h0m0s"),
            (Duration::from_secs(3_600 * 26 + 61), "26h1m1s"),
        ] {
            assert_eq!(go_duration(d), want, "{d:?}");
        }
    }
}
