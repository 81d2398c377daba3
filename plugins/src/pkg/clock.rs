//! Whole-second clocks for the hot path.
//!
//! TTLs and cache ages count in seconds, so these read the kernel's coarse
//! clocks (updated every tick, a few milliseconds apart): a read costs a
//! few nanoseconds instead of the ~20 ns of a precise one, and a cache hit
//! or miss reads the clock more than once.

use std::sync::LazyLock;

use nix::time::{ClockId, clock_gettime};

/// Seconds of `clock`, or `None` when it cannot be read (never on Linux).
fn secs(clock: ClockId) -> Option<u64> {
    clock_gettime(clock)
        .ok()
        .and_then(|t| u64::try_from(t.tv_sec()).ok())
}

/// Seconds of the monotonic clock, falling back to the precise one.
fn mono() -> u64 {
    secs(ClockId::CLOCK_MONOTONIC_COARSE)
        .or_else(|| secs(ClockId::CLOCK_MONOTONIC))
        .unwrap_or(0)
}

/// Seconds since the process first asked, counted from 1 (so that 0 can
/// mean "never"). Monotonic: a change of the wall clock does not move it.
#[cfg(not(test))]
pub fn uptime_secs() -> u32 {
    coarse_uptime_secs()
}

/// Unit tests read tokio's clock, which they can pause and advance.
#[cfg(test)]
pub fn uptime_secs() -> u32 {
    static EPOCH: LazyLock<tokio::time::Instant> = LazyLock::new(tokio::time::Instant::now);
    u32::try_from(EPOCH.elapsed().as_secs())
        .unwrap_or(u32::MAX - 1)
        .saturating_add(1)
}

fn coarse_uptime_secs() -> u32 {
    static EPOCH: LazyLock<u64> = LazyLock::new(mono);
    u32::try_from(mono().saturating_sub(*EPOCH))
        .unwrap_or(u32::MAX - 1)
        .saturating_add(1)
}

/// Seconds since the Unix epoch (for RRSIG validity periods).
pub fn unix_secs() -> u64 {
    secs(ClockId::CLOCK_REALTIME_COARSE)
        .or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn clocks_agree_with_std_and_move_on() {
        let std_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        assert!(unix_secs().abs_diff(std_unix) <= 1);
        let a = coarse_uptime_secs();
        assert!(a >= 1);
        // The next second comes within a second and a tick.
        crate::pkg::test::wait_until("the coarse clock to move", Duration::from_secs(3), || {
            coarse_uptime_secs() > a
        })
        .await;
    }
}
