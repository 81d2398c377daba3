//! Where a plugin's background task runs.
//!
//! A server thread that answers UDP runs its futures in a `LocalSet` on a
//! runtime of its own, and polls them through [`in_local_set`]. A task a
//! plugin starts from there (a socket's reader) then joins that
//! `LocalSet`, so the queries it wakes run in the same turn instead of
//! waiting for the runtime to poll its I/O driver again. Anywhere else,
//! including a plain runtime task on that same thread, it is an ordinary
//! `tokio::spawn`.

use std::cell::Cell;
use std::future::Future;

thread_local! {
    static IN_LOCAL_SET: Cell<bool> = const { Cell::new(false) };
}

/// Wraps a future that is polled inside a `LocalSet` (its `block_on`
/// future or one of its tasks): while it is being polled, [`spawn`] puts
/// tasks on that `LocalSet`.
pub fn in_local_set<F: Future>(f: F) -> impl Future<Output = F::Output> {
    let mut f = Box::pin(f);
    std::future::poll_fn(move |cx| {
        let outer = IN_LOCAL_SET.with(|c| c.replace(true));
        let r = f.as_mut().poll(cx);
        IN_LOCAL_SET.with(|c| c.set(outer));
        r
    })
}

/// Spawns `task` on the `LocalSet` being polled, if any (see
/// [`in_local_set`]), else on the current runtime.
pub fn spawn<F>(task: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    if IN_LOCAL_SET.with(Cell::get) {
        tokio::task::spawn_local(task);
    } else {
        tokio::spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn joins_the_local_set_only_from_inside_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let (a, b) = (Arc::clone(&ran), Arc::clone(&ran));
        local.block_on(
            &rt,
            in_local_set(async move {
                // From inside: a local task.
                spawn(async move {
                    a.fetch_add(1, Ordering::SeqCst);
                });
                // A plain runtime task on this thread spawns on the
                // runtime (spawn_local would panic there).
                let plain = tokio::spawn(async move {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    spawn(async move {
                        b.fetch_add(1, Ordering::SeqCst);
                        let _ = tx.send(());
                    });
                    rx.await.unwrap();
                });
                plain.await.unwrap();
                tokio::task::yield_now().await;
            }),
        );
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }
}
