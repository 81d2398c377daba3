//! The nodedns test harness: the real binary under test ([`Agent`]), a
//! DNS client ([`Client`]), a fake upstream server with fault modes
//! ([`FakeUpstream`]) and [`wait_until`]. Everything stays on loopback,
//! every wait has a deadline, and everything started is stopped on drop.

pub mod agent;
pub mod client;
pub mod upstream;

pub use agent::Agent;
pub use client::Client;
pub use upstream::{Fault, FakeUpstream};

use std::future::Future;
use std::time::Duration;

/// Polls `cond` every 10 ms until it holds or `within` passes. Returns
/// whether it held.
pub async fn wait_until<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
