//! The process's life as `health` and `ready` report it: starting, serving,
//! stopping (lame duck).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A plugin that is not ready until it has done something (synced a
/// watch, loaded a file). `ready` answers 200 only when all are ready.
pub trait Readiness: Send + Sync {
    /// The plugin's name, listed by `/ready` while it is not ready.
    fn name(&self) -> &'static str;
    /// Whether it is ready now.
    fn ready(&self) -> bool;
}

/// Shared by the server and the health and ready endpoints.
#[derive(Default)]
pub struct Lifecycle {
    serving: AtomicBool,
    stopping: AtomicBool,
    reporters: std::sync::RwLock<Vec<Arc<dyn Readiness>>>,
    dns_check: std::sync::RwLock<Option<Arc<dyn DnsCheck>>>,
}

/// The agent's check that its own DNS listeners answer, which *health*
/// reports: `Err` says which did not, and why.
pub trait DnsCheck: Send + Sync {
    fn check(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("serving", &self.serving.load(Ordering::Relaxed))
            .field("stopping", &self.stopping.load(Ordering::Relaxed))
            .finish()
    }
}

impl Lifecycle {
    /// A lifecycle in the starting state.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    /// Every listener is bound: the server answers queries.
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }
    /// A stop signal came: lame duck, then shut down.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }
    /// Whether a stop signal came.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
    /// Replaces the plugins that report readiness (on start and reload).
    pub fn set_reporters(&self, reporters: Vec<Arc<dyn Readiness>>) {
        let mut guard = self
            .reporters
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = reporters;
    }
    /// Names of what is not ready; empty means ready. A server that is not
    /// yet serving, or is stopping, is not ready (named `server`).
    /// Sets the check *health* runs.
    pub fn set_dns_check(&self, check: Arc<dyn DnsCheck>) {
        *self
            .dns_check
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(check);
    }

    /// The check *health* runs, if the agent set one.
    pub fn dns_check(&self) -> Option<Arc<dyn DnsCheck>> {
        self.dns_check
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn not_ready(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !self.serving.load(Ordering::Acquire) || self.is_stopping() {
            out.push("server");
        }
        let guard = self
            .reporters
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        out.extend(guard.iter().filter(|r| !r.ready()).map(|r| r.name()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flag(AtomicBool);
    impl Readiness for Flag {
        fn name(&self) -> &'static str {
            "flag"
        }
        fn ready(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn ready_when_serving_and_all_reporters_ready() {
        let life = Lifecycle::new();
        assert_eq!(life.not_ready(), vec!["server"]);
        life.set_serving();
        assert!(life.not_ready().is_empty());
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        life.set_reporters(vec![flag.clone()]);
        assert_eq!(life.not_ready(), vec!["flag"]);
        flag.0.store(true, Ordering::Relaxed);
        assert!(life.not_ready().is_empty());
        life.set_stopping();
        assert_eq!(life.not_ready(), vec!["server"]);
    }
}
