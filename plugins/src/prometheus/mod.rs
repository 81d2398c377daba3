//! *prometheus* asks the agent for a process-wide HTTP endpoint, `/metrics`,
//! that serves the process-wide registry ([`crate::pkg::metrics`]) in
//! Prometheus's text format, with `coredns_build_info`,
//! `coredns_plugin_enabled`, `coredns_panics_total` and the `process_*`
//! metrics added; and it adds an entry to its block's chain that counts
//! every query of the block in the per-query `coredns_dns_*` families
//! ([`dns`]). The agent binds the address and runs [`serve`].

pub mod dns;
mod handler;
mod process;
mod setup;
#[cfg(test)]
mod tests;

pub use dns::report_dropped;
pub use handler::Metrics;
pub use setup::{DEFAULT_ADDR, setup};

use std::sync::LazyLock;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::any;
use prometheus::IntGaugeVec;
use tokio::net::TcpListener;

use crate::pkg::metrics;

/// The endpoint's path (fixed, as in CoreDNS).
pub const PATH: &str = "/metrics";

/// The content type of Prometheus's text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `coredns_build_info`: 1, labeled with what this binary is.
static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::gauge_vec(
        "coredns_build_info",
        "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.",
        &["version", "revision", "goversion"],
    )
});

/// `coredns_plugin_enabled`: 1 for each plugin of each server block.
static PLUGIN_ENABLED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::gauge_vec(
        "coredns_plugin_enabled",
        "A metric that indicates whether a plugin is enabled on per server and zone basis.",
        &["server", "zone", "name", "view"],
    )
});

/// The version `coredns_build_info` reports (the workspace's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `coredns_build_info` reports as `goversion`: the toolchain.
const TOOLCHAIN: &str = "rust";

/// A plugin enabled in a server block, for `coredns_plugin_enabled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enabled {
    /// CoreDNS's server label: `dns://:53`.
    pub server: String,
    /// The block's zone: `cluster.local.`.
    pub zone: String,
    /// The plugin's name.
    pub name: String,
}

/// Replaces the `coredns_plugin_enabled` series with `list` (at start-up
/// and when a reload applies a new configuration).
pub fn set_enabled(list: &[Enabled]) {
    PLUGIN_ENABLED.reset();
    for e in list {
        PLUGIN_ENABLED
            .with_label_values(&[e.server.as_str(), e.zone.as_str(), e.name.as_str(), ""])
            .set(1);
    }
}

/// Registers what only the endpoint exports (build info, process
/// metrics), once per process.
fn register_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        BUILD_INFO
            .with_label_values(&[
                VERSION,
                option_env!("NODEDNS_REVISION").unwrap_or(""),
                TOOLCHAIN,
            ])
            .set(1);
        LazyLock::force(&PLUGIN_ENABLED);
        metrics::panics();
        dns::register();
        // CoreDNS registers its reload counter when the process starts, so
        // it is exported at 0 before any reload: reading it registers it.
        let _ = crate::reload::failures();
        metrics::register_collector(Box::new(process::ProcessCollector::new()));
    });
}

/// The body `/metrics` serves: every registered family, text format.
pub fn render() -> String {
    register_once();
    metrics::render()
}

/// Serves `/metrics` on `listener` until `stop` fires (or its sender is
/// dropped), then closes every connection. Bounded as every HTTP endpoint
/// (see [`crate::pkg::http`]). Every method is answered, as Go's
/// `ServeMux` does; other paths get 404.
pub async fn serve(listener: TcpListener, stop: tokio::sync::oneshot::Receiver<()>) {
    register_once();
    let app = Router::new().route(PATH, any(scrape));
    crate::pkg::http::serve("prometheus", listener, app, stop).await;
}

async fn scrape() -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    // Reading /proc and encoding are short, but blocking: off the runtime.
    match tokio::task::spawn_blocking(render).await {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, TEXT_FORMAT)], body),
        Err(e) => {
            tracing::warn!(error = %e, "rendering metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                String::new(),
            )
        }
    }
}
