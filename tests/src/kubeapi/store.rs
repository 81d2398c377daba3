//! The fake's "etcd": current objects per resource, one global resource
//! version, a bounded log of changes (for watches from a version and
//! lists at an exact version), and the open watches to fan changes out
//! to.
//!
//! Keys are `NAMESPACE/NAME` (or `NAME` when cluster-scoped) and ordered
//! as bytes, as etcd orders them, so pages follow the same order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;

use super::objects::{Object, Resource, meta_str};
use super::wire;

/// One write: the object after (`None`: deleted) and before (`None`:
/// created).
#[derive(Debug)]
pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) key: String,
    pub(super) new: Option<Arc<Value>>,
    pub(super) old: Option<Arc<Value>>,
}

/// What an open watch is sent, in order.
#[derive(Debug, Clone)]
pub(super) enum WatchMsg {
    /// A write to its resource.
    Change(Arc<Change>),
    /// A synthetic ADDED for the initial state.
    Initial(Arc<Value>),
    /// A BOOKMARK at this version; `true` marks the end of the initial
    /// events (`k8s.io/initial-events-end`).
    Bookmark(u64, bool),
    /// An ERROR 410 Expired, then the end of the stream; the number is
    /// the oldest version still served.
    Expire(u64),
    /// The end of the stream, cleanly.
    End,
}

#[derive(Debug)]
struct Watcher {
    id: u64,
    resource: Resource,
    bookmarks: bool,
    tx: mpsc::Sender<WatchMsg>,
}

/// A resource version the store cannot serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unavailable {
    /// Older than the oldest kept (the oldest kept is given).
    TooOld(u64),
    /// Newer than the current one (given).
    TooLarge(u64),
}

#[derive(Debug)]
pub(super) struct Store {
    rv: u64,
    /// Watches may resume from, and lists read exactly at, versions from
    /// here on; older ones are compacted away.
    floor: u64,
    objects: [BTreeMap<String, Arc<Value>>; Resource::COUNT],
    /// Changes after `floor`, oldest first, per resource.
    log: [VecDeque<Arc<Change>>; Resource::COUNT],
    log_len: usize,
    max_log: usize,
    watchers: Vec<Watcher>,
    next_id: u64,
}

pub(super) fn key_of(r: Resource, obj: &Value) -> String {
    if r.namespaced() {
        format!("{}/{}", meta_str(obj, "namespace"), meta_str(obj, "name"))
    } else {
        meta_str(obj, "name").to_string()
    }
}

pub(super) fn key(r: Resource, namespace: &str, name: &str) -> String {
    if r.namespaced() {
        format!("{namespace}/{name}")
    } else {
        name.to_string()
    }
}

/// A copy of `obj` with `metadata.resourceVersion` set.
pub(super) fn with_rv(obj: &Value, rv: u64) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), rv.to_string().into());
    }
    o
}

impl Store {
    pub(super) fn new(max_log: usize) -> Self {
        Self {
            rv: 1,
            floor: 1,
            objects: Default::default(),
            log: Default::default(),
            log_len: 0,
            max_log: max_log.max(1),
            watchers: Vec::new(),
            next_id: 0,
        }
    }

    pub(super) fn rv(&self) -> u64 {
        self.rv
    }

    #[cfg(test)]
    pub(super) fn floor(&self) -> u64 {
        self.floor
    }

    /// Creates or replaces `obj`, keeping the stored `uid` and
    /// `creationTimestamp`; returns the new resource version.
    pub(super) fn apply(&mut self, obj: Object) -> u64 {
        let r = obj.resource;
        let mut json = obj.json;
        let key = key_of(r, &json);
        let old = self.objects[r.index()].get(&key).cloned();
        let rv = self.rv + 1;
        if let Some(m) = json.get_mut("metadata").and_then(Value::as_object_mut) {
            let prev = |f: &str| {
                old.as_ref()
                    .and_then(|o| o.pointer(&format!("/metadata/{f}")))
                    .cloned()
            };
            let uid = prev("uid")
                .or_else(|| m.get("uid").cloned())
                .unwrap_or_else(|| wire::uid().into());
            m.insert("uid".into(), uid);
            let created = prev("creationTimestamp")
                .or_else(|| m.get("creationTimestamp").cloned())
                .unwrap_or_else(|| wire::timestamp().into());
            m.insert("creationTimestamp".into(), created);
            m.insert("resourceVersion".into(), rv.to_string().into());
            if r == Resource::Namespaces {
                let name = m.get("name").cloned().unwrap_or_default();
                if let Some(l) = m
                    .entry("labels")
                    .or_insert_with(|| Value::Object(Default::default()))
                    .as_object_mut()
                {
                    l.insert("kubernetes.io/metadata.name".into(), name);
                }
            }
        }
        if r == Resource::EndpointSlices {
            self.fill_owner_uid(&mut json);
        }
        self.commit(r, key, Some(Arc::new(json)))
    }

    /// An EndpointSlice's owner reference to its Service gets the
    /// Service's uid, as the controller sets it.
    fn fill_owner_uid(&self, json: &mut Value) {
        let ns = meta_str(json, "namespace").to_string();
        let Some(refs) = json
            .pointer_mut("/metadata/ownerReferences")
            .and_then(Value::as_array_mut)
        else {
            return;
        };
        for r in refs {
            if r["kind"] == "Service" && r["uid"] == "" {
                let name = r["name"].as_str().unwrap_or("");
                let k = key(Resource::Services, &ns, name);
                if let Some(uid) = self.objects[Resource::Services.index()]
                    .get(&k)
                    .and_then(|s| s.pointer("/metadata/uid"))
                {
                    r["uid"] = uid.clone();
                }
            }
        }
    }

    /// Deletes an object; the new resource version, or `None` if there
    /// was no such object.
    pub(super) fn delete(&mut self, r: Resource, key: String) -> Option<u64> {
        self.objects[r.index()].get(&key)?;
        Some(self.commit(r, key, None))
    }

    fn commit(&mut self, r: Resource, key: String, new: Option<Arc<Value>>) -> u64 {
        self.rv += 1;
        let rv = self.rv;
        let old = match &new {
            Some(n) => self.objects[r.index()].insert(key.clone(), Arc::clone(n)),
            None => self.objects[r.index()].remove(&key),
        };
        let change = Arc::new(Change { rv, key, new, old });
        self.log[r.index()].push_back(Arc::clone(&change));
        self.log_len += 1;
        while self.log_len > self.max_log {
            // Drop the oldest change of any resource: the floor rises to it.
            let Some(i) = (0..4)
                .filter(|&i| !self.log[i].is_empty())
                .min_by_key(|&i| self.log[i].front().map_or(u64::MAX, |c| c.rv))
            else {
                break;
            };
            if let Some(c) = self.log[i].pop_front() {
                self.floor = self.floor.max(c.rv);
                self.log_len -= 1;
            }
        }
        self.fan_out(|w| (w.resource == r).then(|| WatchMsg::Change(Arc::clone(&change))));
        rv
    }

    /// Sends each watch what `f` gives it; a watch whose queue is full
    /// (a slow reader) is dropped from the registry, which ends its
    /// stream once it has sent what it has queued, as the API server
    /// closes unresponsive watchers.
    fn fan_out(&mut self, mut f: impl FnMut(&Watcher) -> Option<WatchMsg>) {
        self.watchers.retain(|w| match f(w) {
            Some(m) => w.tx.try_send(m).is_ok(),
            None => !w.tx.is_closed(),
        });
    }

    pub(super) fn get(&self, r: Resource, key: &str) -> Option<Arc<Value>> {
        self.objects[r.index()].get(key).cloned()
    }

    /// The objects of `r` as they were at `rv` (floor ≤ rv ≤ current).
    pub(super) fn snapshot(
        &self,
        r: Resource,
        rv: u64,
    ) -> Result<BTreeMap<String, Arc<Value>>, Unavailable> {
        if rv > self.rv {
            return Err(Unavailable::TooLarge(self.rv));
        }
        if rv < self.floor {
            return Err(Unavailable::TooOld(self.floor));
        }
        let mut objs = self.objects[r.index()].clone();
        for c in self.log[r.index()].iter().rev().take_while(|c| c.rv > rv) {
            match &c.old {
                Some(o) => objs.insert(c.key.clone(), Arc::clone(o)),
                None => objs.remove(&c.key),
            };
        }
        Ok(objs)
    }

    /// The current objects of `r`.
    pub(super) fn current(&self, r: Resource) -> impl Iterator<Item = &Arc<Value>> {
        self.objects[r.index()].values()
    }

    /// The changes to `r` after `rv`, or `TooOld` if some are compacted.
    pub(super) fn changes_after(
        &self,
        r: Resource,
        rv: u64,
    ) -> Result<Vec<Arc<Change>>, Unavailable> {
        if rv < self.floor {
            return Err(Unavailable::TooOld(self.floor));
        }
        let log = &self.log[r.index()];
        let first = log.partition_point(|c| c.rv <= rv);
        Ok(log.range(first..).cloned().collect())
    }

    /// Registers a watch; its queue holds `cap` messages.
    pub(super) fn register(
        &mut self,
        r: Resource,
        bookmarks: bool,
        cap: usize,
    ) -> (u64, mpsc::Receiver<WatchMsg>) {
        let (tx, rx) = mpsc::channel(cap.max(1));
        self.next_id += 1;
        let id = self.next_id;
        self.watchers.push(Watcher {
            id,
            resource: r,
            bookmarks,
            tx,
        });
        (id, rx)
    }

    pub(super) fn unregister(&mut self, id: u64) {
        self.watchers.retain(|w| w.id != id);
    }

    pub(super) fn open_watches(&self, r: Resource) -> usize {
        self.watchers
            .iter()
            .filter(|w| w.resource == r && !w.tx.is_closed())
            .count()
    }

    /// A BOOKMARK at the current version to every watch that asked for
    /// them.
    pub(super) fn bookmark(&mut self) -> u64 {
        let rv = self.rv;
        self.fan_out(|w| w.bookmarks.then_some(WatchMsg::Bookmark(rv, false)));
        rv
    }

    /// Forgets the changes up to `rv` (at most the current version):
    /// older versions then answer 410 Gone.
    pub(super) fn expire_before(&mut self, rv: u64) {
        self.floor = self.floor.max(rv.min(self.rv));
        let floor = self.floor;
        for log in &mut self.log {
            while log.front().is_some_and(|c| c.rv <= floor) {
                log.pop_front();
                self.log_len -= 1;
            }
        }
    }

    /// Every open watch gets an ERROR 410 and ends.
    pub(super) fn expire_watches(&mut self) {
        let floor = self.floor;
        self.fan_out(|_| Some(WatchMsg::Expire(floor)));
        self.watchers.clear();
    }

    /// Every open watch ends cleanly (as at its timeout).
    pub(super) fn end_watches(&mut self) {
        self.fan_out(|_| Some(WatchMsg::End));
        self.watchers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeapi::objects::Service;

    #[test]
    fn snapshots_undo_later_changes() {
        let mut s = Store::new(100);
        let a = s.apply(Service::headless("ns", "a").into());
        let b = s.apply(Service::headless("ns", "b").label("x", "1").into());
        s.apply(Service::headless("ns", "b").label("x", "2").into());
        s.delete(Resource::Services, key(Resource::Services, "ns", "a"));
        let at_b = s.snapshot(Resource::Services, b).unwrap();
        assert_eq!(at_b.len(), 2);
        assert_eq!(at_b["ns/b"]["metadata"]["labels"]["x"], "1");
        assert_eq!(s.snapshot(Resource::Services, a).unwrap().len(), 1);
        assert_eq!(s.snapshot(Resource::Services, s.rv()).unwrap().len(), 1);
        assert_eq!(s.snapshot(Resource::Services, 1).unwrap().len(), 0);
        s.expire_before(b);
        assert_eq!(
            s.snapshot(Resource::Services, a),
            Err(Unavailable::TooOld(b))
        );
        assert_eq!(s.changes_after(Resource::Services, b).unwrap().len(), 2);
    }

    #[test]
    fn a_full_log_raises_the_floor() {
        let mut s = Store::new(2);
        for i in 0..5 {
            s.apply(Service::headless("ns", &format!("s{i}")).into());
        }
        assert_eq!(s.rv(), 6);
        assert_eq!(s.floor(), 4);
        assert!(s.changes_after(Resource::Services, 3).is_err());
        assert_eq!(s.changes_after(Resource::Services, 4).unwrap().len(), 2);
    }

    #[test]
    fn uid_and_creation_survive_updates() {
        let mut s = Store::new(10);
        s.apply(Service::headless("ns", "a").into());
        let first = s.get(Resource::Services, "ns/a").unwrap();
        s.apply(Service::headless("ns", "a").label("k", "v").into());
        let second = s.get(Resource::Services, "ns/a").unwrap();
        assert_eq!(first["metadata"]["uid"], second["metadata"]["uid"]);
        assert_ne!(
            first["metadata"]["resourceVersion"],
            second["metadata"]["resourceVersion"]
        );
    }
}
