//! *reload* makes the agent re-read its Corefile when it changes: every
//! INTERVAL (± JITTER) the file's contents are compared with the running
//! ones, and a change is applied live. A Corefile that does not load is
//! refused with its `FILE:LINE` error and the running one keeps serving.
//! SIGUSR1 reloads at once, with or without this plugin.

mod setup;
#[cfg(test)]
mod tests;

pub use setup::setup;
