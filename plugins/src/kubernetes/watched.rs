//! A store and the watch that feeds it, shared by every configuration
//! that asks for the same view of the cluster.
//!
//! A reload that leaves the plugin's settings as they were carries the
//! [`Watched`] over: the new configuration answers from the store the old
//! one built, already synced, and the watch goes on without a relist. A
//! reload that changes them builds a new one, which the agent lets sync
//! (up to `startup_timeout`) while the old configuration keeps serving.
//! The watch stops when the last configuration holding it is dropped.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};

use super::multicluster::McStore;
use super::setup::{Connection, KubernetesConfig};
use super::store::{Store, StoreOptions};

/// The store and its watch task (with `multicluster`, the ServiceImports'
/// store too, and the task runs their watches as well).
#[derive(Debug)]
pub(crate) struct Watched {
    store: Arc<Store>,
    multicluster: Option<Arc<McStore>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Watched {
    pub(crate) fn new(opts: StoreOptions, multicluster: bool) -> Self {
        let store = Store::new(opts);
        Self {
            multicluster: multicluster.then(|| McStore::new(Arc::clone(&store))),
            store,
            task: Mutex::new(None),
        }
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn multicluster(&self) -> Option<&Arc<McStore>> {
        self.multicluster.as_ref()
    }

    /// Starts the watch unless it runs already (carried over a reload).
    /// Must be called on the runtime.
    pub(crate) fn ensure_running(&self, cfg: &Arc<KubernetesConfig>) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let run = super::watch::run(Arc::clone(cfg), Arc::downgrade(&self.store));
        *task = Some(match &self.multicluster {
            Some(mc) => {
                let mc = super::multicluster::run(Arc::clone(cfg), Arc::downgrade(mc));
                tokio::spawn(futures_util::future::join(run, mc)).abort_handle()
            }
            None => tokio::spawn(run).abort_handle(),
        });
    }

    /// The watch task, if started.
    #[cfg(test)]
    pub(crate) fn abort_handle(&self) -> Option<tokio::task::AbortHandle> {
        self.task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the watch task runs.
    #[cfg(test)]
    pub(crate) fn running(&self) -> bool {
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let task = self.task.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(t) = task.take() {
            t.abort();
        }
    }
}

/// What a [`Watched`] is carried under: every setting of the plugin (a
/// change in any of them builds a new view; answers-only settings such as
/// `ttl` could share one, but a reload that changes them is rare and a
/// fresh sync is cheap), and the contents of the files the connection
/// reads, so a rotated client certificate or kubeconfig reconnects.
pub(crate) fn carry_key(cfg: &KubernetesConfig) -> String {
    let mut h = std::hash::DefaultHasher::new();
    let files: Vec<&std::path::Path> = match &cfg.connection {
        Connection::InCluster => Vec::new(),
        Connection::Endpoint { tls, .. } => tls
            .iter()
            .flat_map(|t| [t.cert.as_path(), t.key.as_path(), t.ca.as_path()])
            .collect(),
        Connection::Kubeconfig(k) => vec![k.path.as_path()],
    };
    for f in files {
        // Unreadable now: the watch reports it when it connects.
        std::fs::read(f).ok().hash(&mut h);
    }
    format!("kubernetes {cfg:?} files={:016x}", h.finish())
}
