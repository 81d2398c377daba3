//! *ready* asks the agent for a process-wide HTTP endpoint, `/ready`, that
//! answers 200 `OK` when the server is serving and every plugin that
//! reports readiness is ready, and 503 otherwise: with the names of what
//! is not ready, sorted and comma-separated, or `Shutting down` once a stop
//! signal came (lame duck), as CoreDNS's *ready* does. Setup only: *ready*
//! adds nothing to the chain. The agent binds the address and runs
//! [`serve`].

mod setup;
#[cfg(test)]
mod tests;

pub use setup::{DEFAULT_ADDR, setup};

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::any;
use tokio::net::TcpListener;

use crate::pkg::lifecycle::Lifecycle;

/// The endpoint's path (fixed, as in CoreDNS).
pub const PATH: &str = "/ready";

/// Serves `/ready` on `listener` until `stop` fires (or its sender is
/// dropped), then closes every connection. Bounded as every HTTP endpoint
/// (see [`crate::pkg::http`]). Every method is answered, as Go's
/// `ServeMux` does; other paths get 404.
pub async fn serve(
    listener: TcpListener,
    life: Arc<Lifecycle>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let app = Router::new().route(PATH, any(ready)).with_state(life);
    crate::pkg::http::serve("ready", listener, app, stop).await;
}

async fn ready(State(life): State<Arc<Lifecycle>>) -> (StatusCode, String) {
    if life.is_stopping() {
        return (StatusCode::SERVICE_UNAVAILABLE, "Shutting down".to_string());
    }
    let mut names = life.not_ready();
    if names.is_empty() {
        return (StatusCode::OK, "OK".to_string());
    }
    names.sort_unstable();
    names.dedup();
    let list = names.join(",");
    tracing::info!("Plugins not ready: {list:?}");
    (StatusCode::SERVICE_UNAVAILABLE, list)
}
