//! What plugins share. Plugins never reach into each other; common code
//! lives here (CoreDNS's `plugin/pkg`).

pub mod clock;
pub mod fall;
pub mod http;
pub mod inspect;
pub mod lifecycle;
pub mod listen;
pub mod local;
pub mod metrics;
pub mod names;
pub mod output;
pub mod proxy;
pub mod response;
pub mod snapshot;
pub mod store;
#[cfg(test)]
pub(crate) mod test;
pub mod wire;
pub mod zones;
