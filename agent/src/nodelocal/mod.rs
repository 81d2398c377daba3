//! Node-local mode: node-cache's flags and Corefile template, the
//! link-local addresses and packet-filter rules, and the handover between
//! an old and a new agent on one node.

pub mod flags;
pub mod handover;
pub mod template;
