//! Node-local mode: node-cache's flags and Corefile template, the
//! link-local addresses and packet-filter rules, and the handover between
//! an old and a new agent on one node.

pub mod flags;
pub mod handover;
pub mod run;
pub mod template;

/// Counts a node-local setup error in
/// `coredns_nodecache_setup_errors_total{errortype}`.
pub fn count_setup_error(errortype: &'static str) {
    tracing::debug!(errortype, "node-local setup error");
}
