//! *health* asks the agent for a process-wide HTTP endpoint, `/health`,
//! that answers 200 `OK` while the agent's own DNS listeners answer, lame
//! duck included (a stopping server is still alive; *ready* is what turns
//! 503). Where CoreDNS's *health* proves only that HTTP is served, this one
//! asks each UDP and TCP listener a probe query (answered by the listener
//! itself, not by the chain, so an upstream's health plays no part) and
//! answers 503 with the reason when one does not reply in time. Setup only: *health* adds nothing to the chain. The agent
//! binds the address and runs [`serve`], which also runs CoreDNS's
//! self-check ([`overloaded`]) for as long as it serves.

mod overloaded;
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
pub const PATH: &str = "/health";

/// Serves `/health` on `listener` until `stop` fires (or its sender is
/// dropped), then closes every connection. Bounded as every HTTP endpoint
/// (see [`crate::pkg::http`]). Every method is answered, as Go's
/// `ServeMux` does; other paths get 404.
pub async fn serve(
    listener: TcpListener,
    life: Arc<Lifecycle>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let addr = listener.local_addr().ok().map(overloaded::target);
    let app = Router::new().route(PATH, any(health)).with_state(life);
    let serving = crate::pkg::http::serve("health", listener, app, stop);
    match addr {
        // The self-check ends with the endpoint.
        Some(addr) => {
            tokio::select! {
                () = serving => {}
                () = overloaded::run(addr) => {}
            }
        }
        None => serving.await,
    }
}

async fn health(State(life): State<Arc<Lifecycle>>) -> (StatusCode, String) {
    if life.is_stopping() {
        tracing::debug!("lame duck: /health still reports OK");
    }
    if let Some(check) = life.dns_check()
        && let Err(why) = check.check().await
    {
        tracing::warn!("health: {why}");
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    }
    (StatusCode::OK, "OK".to_string())
}
