//! What a plugin's setup can see and change: the server block it is in,
//! the chain being built, and the process-wide services (health, ready, prometheus).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::dispenser::{Dispenser, SetupError};
use crate::pkg::lifecycle::Readiness;
use crate::plugin::Plugin;

/// The server block a directive sits in.
#[derive(Debug, Clone)]
pub struct BlockInfo {
    /// The block's zones, normalised (`example.org.`, `.`).
    pub zones: Vec<String>,
    /// The block's port.
    pub port: u16,
    /// CoreDNS's `server` label for this block: `dns://:53`.
    pub server_name: Arc<str>,
    /// Where the block's listeners are bound, filled in when the server
    /// starts (so a port 0 is known): for plugins that query their own
    /// server, as `loop` does.
    pub bound: Arc<BoundAddrs>,
}

/// The UDP addresses a block listens on, known once the server has bound.
#[derive(Debug, Default)]
pub struct BoundAddrs(std::sync::Mutex<Vec<std::net::SocketAddr>>);

impl BoundAddrs {
    /// Records an address (the server does this when it binds).
    pub fn add(&self, addr: std::net::SocketAddr) {
        let mut v = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !v.contains(&addr) {
            v.push(addr);
        }
    }
    /// The addresses recorded so far.
    pub fn get(&self) -> Vec<std::net::SocketAddr> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A `health` endpoint asked for by a Corefile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// `host:port` to listen on; an empty host means every address.
    pub addr: String,
    /// How long to keep serving (and report healthy) after a stop signal.
    pub lameduck: std::time::Duration,
}

/// A `ready` endpoint asked for by a Corefile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyConfig {
    /// `host:port` to listen on; an empty host means every address.
    pub addr: String,
}

/// A `prometheus` endpoint asked for by a Corefile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusConfig {
    /// `host:port` to listen on; an empty host means every address.
    pub addr: String,
}

/// A background task a plugin needs while its config serves (re-reading a
/// file, watching an API). The agent spawns it when the config starts and
/// aborts it when the config is replaced or the process stops.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Something a new configuration waits for before it serves (CoreDNS's
/// blocking `OnStartup`, as kubernetes waits for its first sync): the
/// agent calls `start`, then waits until `ready` says so or `timeout` has
/// passed, whichever is first, before it serves the configuration (at
/// start) or swaps it in (on a reload, while the old one keeps serving).
/// Never run for a configuration that is only validated.
pub struct StartupWait {
    /// What is waited for; its name is logged while waiting.
    pub ready: Arc<dyn Readiness>,
    /// The longest wait.
    pub timeout: std::time::Duration,
    /// Starts what `ready` waits on (spawns the watch); called once, on
    /// the runtime.
    pub start: Box<dyn FnOnce() + Send>,
    /// Logged every 500 ms while waiting.
    pub waiting: &'static str,
    /// Logged when `timeout` passes first.
    pub gave_up: &'static str,
}

impl std::fmt::Debug for StartupWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartupWait")
            .field("plugin", &self.ready.name())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What setup of one server block produced.
#[derive(Default)]
pub struct BlockSetup {
    /// The chain, in the fixed plugin order (setups run in that order).
    pub plugins: Vec<Box<dyn Plugin>>,
    /// Addresses from `bind`; `None` means every address.
    pub bind: Option<Vec<IpAddr>>,
    /// Background tasks to run while this config serves.
    pub tasks: Vec<Task>,
    /// The block's `tls` settings, for its encrypted listeners.
    pub tls: Option<Arc<crate::tls::TlsSettings>>,
}

impl std::fmt::Debug for BlockSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockSetup")
            .field("plugins", &self.plugins)
            .field("bind", &self.bind)
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

/// `reload`: how often the agent checks its Corefile for changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReloadConfig {
    /// Time between checks.
    pub interval: std::time::Duration,
    /// Up to this much is added to or taken from each interval.
    pub jitter: std::time::Duration,
}

/// State that outlives a configuration when a reload leaves its settings
/// unchanged (cache stores, forward's upstream pools), keyed by a
/// description of those settings and of the block that owns it. A key kept
/// twice is ambiguous: nothing is carried under it, rather than one block
/// getting another's state.
#[derive(Default, Clone)]
pub struct Carry {
    items: std::collections::HashMap<String, Arc<dyn std::any::Any + Send + Sync>>,
    ambiguous: std::collections::HashSet<String>,
}

impl std::fmt::Debug for Carry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carry")
            .field("items", &self.items.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Carry {
    /// Takes what the previous configuration kept under `key` (once).
    pub fn take<T: std::any::Any + Send + Sync>(&mut self, key: &str) -> Option<Arc<T>> {
        let v = self.items.remove(key)?;
        v.downcast::<T>().ok()
    }
    /// What is kept under `key` already, left in place: for state that
    /// several blocks of one configuration share (forward's upstream
    /// pools), the first block keeps it and the others find it here.
    pub fn get<T: std::any::Any + Send + Sync>(&self, key: &str) -> Option<Arc<T>> {
        let v = self.items.get(key)?;
        Arc::clone(v).downcast::<T>().ok()
    }
    /// Keeps `value` for the next configuration under `key`; if something
    /// was already kept under `key`, neither is.
    pub fn keep<T: std::any::Any + Send + Sync>(&mut self, key: String, value: Arc<T>) {
        if self.ambiguous.contains(&key) {
            return;
        }
        if self.items.remove(&key).is_some() {
            self.ambiguous.insert(key);
            return;
        }
        self.items.insert(key, value);
    }
    /// How many items it holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Process-wide services that plugins ask for; the agent starts them.
#[derive(Default)]
pub struct Services {
    /// `reload`, if any block asked for it.
    pub reload: Option<ReloadConfig>,
    /// What the running configuration carries over to this one.
    pub carry_in: Carry,
    /// What this configuration carries over to the next.
    pub carry_out: Carry,
    /// `health` endpoints.
    pub health: Vec<HealthConfig>,
    /// `ready` endpoints.
    pub ready: Vec<ReadyConfig>,
    /// `prometheus` endpoints.
    pub prometheus: Vec<PrometheusConfig>,
    /// Plugins that report readiness to `ready`.
    pub readiness: Vec<Arc<dyn Readiness>>,
    /// Caches the admin plane lists and purges.
    pub caches: Vec<Arc<dyn crate::pkg::inspect::CacheInspect>>,
    /// Forwarding plugins whose upstreams the admin plane shows.
    pub upstreams: Vec<Arc<dyn crate::pkg::inspect::UpstreamInspect>>,
    /// What the configuration waits for before it serves.
    pub startup: Vec<StartupWait>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("health", &self.health)
            .field("ready", &self.ready)
            .field("prometheus", &self.prometheus)
            .field("readiness", &self.readiness.len())
            .field("caches", &self.caches.len())
            .field("upstreams", &self.upstreams.len())
            .field("startup", &self.startup)
            .finish()
    }
}

/// Handed to a plugin's setup function: the directive's tokens, the block,
/// and what the setup may add to.
pub struct Controller<'a> {
    /// The directive's tokens (every occurrence of it in the block).
    pub d: Dispenser<'a>,
    /// The server block.
    pub block: &'a BlockInfo,
    /// The block's chain and bind addresses.
    pub out: &'a mut BlockSetup,
    /// Process-wide services.
    pub services: &'a mut Services,
}

impl Controller<'_> {
    /// Appends a plugin to the block's chain.
    pub fn add_plugin(&mut self, p: Box<dyn Plugin>) {
        self.out.plugins.push(p);
    }

    /// Runs `task` in the background while this config serves (CoreDNS's
    /// `OnStartup` for goroutines). Setup itself must not spawn: it also
    /// runs for validation (`load_str`, dry runs) where nothing may start.
    pub fn spawn_on_start(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.out.tasks.push(Box::pin(task));
    }
}

/// A plugin's setup function.
pub type SetupFn = fn(&mut Controller<'_>) -> Result<(), SetupError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_kept_twice_carries_nothing() {
        let mut c = Carry::default();
        c.keep("a".into(), Arc::new(1u8));
        c.keep("b".into(), Arc::new(2u8));
        c.keep("a".into(), Arc::new(3u8));
        c.keep("a".into(), Arc::new(4u8));
        assert_eq!(c.len(), 1);
        assert!(c.take::<u8>("a").is_none(), "ambiguous: not carried");
        assert_eq!(c.take::<u8>("b").as_deref(), Some(&2));
    }

    #[test]
    fn get_leaves_what_it_finds_in_place() {
        let mut c = Carry::default();
        c.keep("a".into(), Arc::new(1u8));
        assert_eq!(c.get::<u8>("a").as_deref(), Some(&1));
        assert!(c.get::<u16>("a").is_none(), "another type: nothing");
        assert_eq!(c.len(), 1);
        assert_eq!(c.take::<u8>("a").as_deref(), Some(&1));
        assert!(c.get::<u8>("a").is_none());
    }
}
