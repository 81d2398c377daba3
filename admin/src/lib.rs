//! The nodedns admin plane's contract: what REST and gRPC will ask of a
//! running agent. The agent implements [`Control`]; the axum and tonic
//! front ends (one port) come with the admin issue.

#![forbid(unsafe_code)]

/// The running configuration as the admin plane shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigView {
    /// The Corefile text.
    pub corefile: String,
    /// Increases on every applied change (`ETag`).
    pub version: u64,
}

/// Why a new configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// The Corefile is invalid (`Corefile:LINE: message`).
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// The line it is on, when known.
        line: Option<u32>,
    },
    /// `If-Match` named a version that is no longer running.
    #[error("config version {expected} is not the running version {running}")]
    VersionMismatch {
        /// What the client expected.
        expected: u64,
        /// What runs.
        running: u64,
    },
}

/// What the admin plane may do to a running agent.
pub trait Control: Send + Sync + 'static {
    /// The running configuration.
    fn config(&self) -> ConfigView;
    /// Validates and (unless `dry_run`) applies a new Corefile; `if_match`
    /// guards against lost updates. Returns the new version.
    fn apply(
        &self,
        corefile: &str,
        dry_run: bool,
        if_match: Option<u64>,
    ) -> Result<u64, ApplyError>;
    /// Compiled plugins in chain order.
    fn plugins(&self) -> Vec<&'static str>;
    /// Names of what is not ready; empty means ready.
    fn not_ready(&self) -> Vec<&'static str>;
}
