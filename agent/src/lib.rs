//! nodedns: a node-local DNS cache agent that runs CoreDNS Corefiles.
//!
//! The binary (`main.rs`) is a thin shell over this library, so tests and
//! benches can build a configuration in-process with [`config::load_str`].

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod control;
pub mod corefile;
pub mod nodelocal;
pub mod registry;
pub mod server;

/// The version nodedns reports (`-version`, `version.bind`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
