//! One watch stream: turns the store's messages into watch events for
//! this watcher's filter, one JSON document per line, and the HTTP body
//! that carries them.
//!
//! A write moving an object into the watcher's selector comes as ADDED,
//! out of it as DELETED (the object as it was, at the write's version),
//! as the API server's watch cache does (`cacheWatcher.convertToWatchEvent`).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::objects::Resource;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Store, WatchMsg, with_rv};
use super::wire;

/// Which objects a list or watch sees.
#[derive(Debug, Clone)]
pub(super) struct Filter {
    pub(super) resource: Resource,
    pub(super) namespace: Option<String>,
    pub(super) labels: LabelSelector,
    pub(super) fields: FieldSelector,
}

impl Filter {
    pub(super) fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| super::objects::meta_str(obj, "namespace") == ns)
            && self.labels.matches(obj)
            && self.fields.matches(self.resource, obj)
    }

    /// Whether the key can hold a match (the namespace prefix).
    pub(super) fn in_scope(&self, key: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| {
            key.strip_prefix(ns)
                .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

/// `{"type":T,"object":O}` and a newline.
pub(super) fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut s = format!("{{\"type\":\"{kind}\",\"object\":");
    s.push_str(&obj.to_string());
    s.push_str("}\n");
    Bytes::from(s)
}

fn bookmark_line(r: Resource, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": r.kind(), "apiVersion": r.api_version(), "metadata": meta}),
    )
}

/// The ERROR event for a watch from a compacted version.
pub(super) fn expired_line(rv: u64, floor: u64) -> Bytes {
    event_line(
        "ERROR",
        &wire::status(
            410,
            "Expired",
            &format!("too old resource version: {rv} ({floor})"),
        ),
    )
}

/// What a message means for this watcher: the line to send (if any) and
/// whether the stream ends after it.
fn render(f: &Filter, msg: &WatchMsg, min_rv: u64, last_rv: &mut u64) -> (Option<Bytes>, bool) {
    match msg {
        WatchMsg::Change(c) => {
            if c.rv <= min_rv {
                return (None, false);
            }
            let cur = c.new.as_ref().is_some_and(|n| f.matches(n));
            let old = c.old.as_ref().is_some_and(|o| f.matches(o));
            let line = match (cur, old, &c.new, &c.old) {
                (true, false, Some(n), _) => event_line("ADDED", n),
                (true, true, Some(n), _) => event_line("MODIFIED", n),
                (false, true, _, Some(o)) => event_line("DELETED", &with_rv(o, c.rv)),
                _ => return (None, false),
            };
            *last_rv = c.rv;
            (Some(line), false)
        }
        WatchMsg::Initial(o) => (f.matches(o).then(|| event_line("ADDED", o)), false),
        WatchMsg::Bookmark(rv, end) => {
            *last_rv = (*last_rv).max(*rv);
            (Some(bookmark_line(f.resource, *rv, *end)), false)
        }
        WatchMsg::Expire(floor) => (Some(expired_line(*last_rv, *floor)), true),
        WatchMsg::End => (None, true),
    }
}

/// Unregisters the watch when its pump ends, however it ends.
struct Registration {
    store: Arc<Mutex<Store>>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut s) = self.store.lock() {
            s.unregister(self.id);
        }
    }
}

/// Everything a pump needs.
pub(super) struct Pump {
    pub(super) filter: Filter,
    /// Changes at or below this version are not sent (a watch from a
    /// version not yet reached waits for it).
    pub(super) min_rv: u64,
    pub(super) backlog: Vec<WatchMsg>,
    pub(super) rx: mpsc::Receiver<WatchMsg>,
    pub(super) out: mpsc::Sender<io::Result<Bytes>>,
    pub(super) deadline: Instant,
    pub(super) store: Arc<Mutex<Store>>,
    pub(super) id: u64,
}

impl Pump {
    /// Runs until the deadline, the end of the queue or the client going
    /// away (the connection closes when the fake stops).
    pub(super) async fn run(self) {
        let Self {
            filter,
            min_rv,
            backlog,
            mut rx,
            out,
            deadline,
            store,
            id,
        } = self;
        let _reg = Registration { store, id };
        let mut last_rv = min_rv;
        let mut backlog = backlog.into_iter();
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        loop {
            let msg = match backlog.next() {
                Some(m) => m,
                None => tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => m,
                        None => return,
                    },
                    () = &mut sleep => return,
                    () = out.closed() => return,
                },
            };
            let (line, end) = render(&filter, &msg, min_rv, &mut last_rv);
            if let Some(line) = line {
                tokio::select! {
                    r = out.send(Ok(line)) => if r.is_err() { return },
                    () = &mut sleep => return,
                }
            }
            if end {
                return;
            }
        }
    }
}

/// A response body: whole, or the lines of a watch. A watch body fails
/// (so the connection is cut without the final chunk) when `kill`
/// changes.
pub(super) enum ApiBody {
    Full(Option<Bytes>),
    Stream {
        rx: mpsc::Receiver<io::Result<Bytes>>,
        kill: Pin<Box<dyn Future<Output = ()> + Send>>,
    },
}

impl ApiBody {
    pub(super) fn stream(
        rx: mpsc::Receiver<io::Result<Bytes>>,
        mut kill: watch::Receiver<u64>,
    ) -> Self {
        let kill = Box::pin(async move {
            if kill.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        Self::Stream { rx, kill }
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Self::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream { rx, kill } => {
                if kill.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "watch dropped by the test",
                    ))));
                }
                rx.poll_recv(cx).map(|m| m.map(|r| r.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeapi::store::Change;

    fn svc(labels: Value, rv: u64) -> Arc<Value> {
        Arc::new(json!({
            "kind": "Service",
            "metadata": {"name": "a", "namespace": "ns", "labels": labels, "resourceVersion": rv.to_string()},
        }))
    }

    fn kind(b: &Bytes) -> String {
        let v: Value = serde_json::from_slice(b).unwrap();
        v["type"].as_str().unwrap().to_string()
    }

    #[test]
    fn selector_transitions_are_added_and_deleted() {
        let f = Filter {
            resource: Resource::Services,
            namespace: None,
            labels: LabelSelector::parse("app=web").unwrap(),
            fields: FieldSelector::default(),
        };
        let web = svc(json!({"app": "web"}), 2);
        let db = svc(json!({"app": "db"}), 3);
        let mut last = 0;
        let into = WatchMsg::Change(Arc::new(Change {
            rv: 3,
            key: "ns/a".into(),
            new: Some(Arc::clone(&web)),
            old: Some(Arc::clone(&db)),
        }));
        assert_eq!(kind(&render(&f, &into, 0, &mut last).0.unwrap()), "ADDED");
        let out = WatchMsg::Change(Arc::new(Change {
            rv: 4,
            key: "ns/a".into(),
            new: Some(Arc::clone(&db)),
            old: Some(Arc::clone(&web)),
        }));
        let line = render(&f, &out, 0, &mut last).0.unwrap();
        assert_eq!(kind(&line), "DELETED");
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["object"]["metadata"]["labels"]["app"], "web");
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "4");
        let neither = WatchMsg::Change(Arc::new(Change {
            rv: 5,
            key: "ns/a".into(),
            new: Some(Arc::clone(&db)),
            old: Some(db),
        }));
        assert!(render(&f, &neither, 0, &mut last).0.is_none());
        assert_eq!(last, 4);
    }
}
