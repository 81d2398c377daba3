//! nodedns plugins: the contract every plugin implements, the token reader
//! its setup parses with, shared helpers (`pkg`), and one module per plugin.
//!
//! A plugin module has the same shape everywhere: `mod.rs` (the handler),
//! `setup.rs` (Corefile syntax to config), `tests.rs`, and `README.md`
//! (the plugin's manual).

#![forbid(unsafe_code)]

pub mod dispenser;
pub mod lexer;
pub mod pkg;
pub mod plugin;
pub mod request;
pub mod setup;

pub mod any;
pub mod bind;
pub mod cache;
pub mod chaos;
pub mod errors;
pub mod forward;
pub mod health;
pub mod hosts;
pub mod kubernetes;
pub mod loadbalance;
pub mod log;
pub mod r#loop;
pub mod minimal;
pub mod prometheus;
pub mod ready;
pub mod reload;
pub mod tls;
pub mod whoami;

pub use dispenser::{Dispenser, SetupError, Token};
pub use plugin::{
    Chain, Context, End, Flow, Next, NoChain, Plugin, PluginError, Reply, ServerInfo,
};
pub use request::{Request, Transport};
pub use setup::{BlockInfo, BlockSetup, Controller, Services, SetupFn};
