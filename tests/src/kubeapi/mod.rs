//! A fake Kubernetes API server on loopback for the kubernetes plugin's
//! tests: it serves list and watch of Services, EndpointSlices, Pods,
//! Namespaces and ServiceImports (the Multi-Cluster Services API's custom
//! resource) in the API's JSON wire format, over HTTP/1.1 (or HTTPS with
//! a CA made for it), and lets a test change objects and break watches.
//!
//! What it speaks (see the API concepts page, "Efficient detection of
//! changes", "Resource versions", "Retrieving large results sets in
//! chunks", "Streaming lists"):
//!
//! - **list** `GET /api/v1/services`, `/api/v1/namespaces/NS/services`,
//!   `/apis/discovery.k8s.io/v1/[namespaces/NS/]endpointslices`,
//!   `/api/v1/[namespaces/NS/]pods`, `/api/v1/namespaces`,
//!   `/apis/multicluster.x-k8s.io/v1alpha1/[namespaces/NS/]serviceimports`:
//!   a `*List` with `metadata.resourceVersion`, items without
//!   `kind`/`apiVersion` (as the server sends built-in types; a custom
//!   resource's items keep theirs). `resourceVersion` and `resourceVersionMatch`
//!   follow the documented table (unset: most recent; `0`: any; `N`: not
//!   older than, or exact with `limit` or `Exact`; a compacted exact
//!   version is `410 Expired`, a future one waits 3 s then `504`).
//!   `limit`/`continue` page a consistent snapshot, with
//!   `remainingItemCount` when there is no selector; an expired continue
//!   token is `410` with an inconsistent token to go on with.
//! - **watch**: the same paths with `watch=true` (or `/api/v1/watch/...`):
//!   a chunked stream of `{"type":…,"object":…}` lines. Unset or `0`
//!   `resourceVersion` starts with synthetic ADDED events (and, with
//!   `allowWatchBookmarks`, a BOOKMARK annotated
//!   `k8s.io/initial-events-end`), as does `sendInitialEvents=true`
//!   (which requires `resourceVersionMatch=NotOlderThan`); `N` starts
//!   after N, and a compacted N gets `200` and one ERROR event (Status
//!   410 `Expired`) as the watch cache answers. `timeoutSeconds` ends the
//!   stream cleanly. Writes that move an object into or out of the
//!   selector come as ADDED / DELETED.
//! - `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, exists, `!`, `>`,
//!   `<`) and `fieldSelector` (`metadata.name`, `metadata.namespace` and
//!   the few fields each resource supports; others are `400`) on both.
//! - `GET` of one object, `/version`, `/healthz`, discovery at `/api`,
//!   `/apis`, `/api/v1`, `/apis/discovery.k8s.io/v1`,
//!   `/apis/multicluster.x-k8s.io/v1alpha1`; a `404` Status for
//!   anything else, `405` for other methods, `401` without the bearer
//!   token when one is set, `422` for invalid list options.
//!
//! Bounds: at most 64 connections (more wait in the backlog; an idle one
//! is closed after 5 minutes), a queue of 1000 events per watch (a
//! watcher that falls further behind is closed, as the API server closes
//! unresponsive watchers, and resumes from its last version), a log of
//! 10 000 writes (older versions are compacted), watches of at most 30
//! minutes. Everything stops when the fake is dropped.
//!
//! ```no_run
//! # async fn example() {
//! use nodedns_tests::kubeapi::{Endpoint, EndpointSlice, FakeKubeApi, Resource, Service};
//! let api = FakeKubeApi::start().await;
//! api.apply(Service::cluster_ip("default", "web", "10.96.0.10").port("http", "TCP", 80));
//! api.apply(
//!     EndpointSlice::new("default", "web", "web-abc12")
//!         .endpoint(Endpoint::new("10.1.0.5").hostname("web-0").pod("web-0"))
//!         .port("http", "TCP", 8080),
//! );
//! let corefile = format!("kubernetes cluster.local {{\n endpoint {}\n}}", api.endpoint_url());
//! // ... start the agent, query, then break the watch and change things:
//! api.drop_watches();
//! api.delete(Resource::Services, "default", "web");
//! # }
//! ```

mod objects;
mod selector;
mod store;
mod watch;
mod wire;

pub use objects::{
    Endpoint, EndpointSlice, Namespace, Object, Pod, Resource, Service, ServiceImport,
};
pub use wire::encode_query_value;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use selector::{FieldSelector, LabelSelector};
use store::{Store, Unavailable, WatchMsg};
use watch::{ApiBody, Filter, Pump};

/// Connections served at once by default.
const MAX_CONNECTIONS: usize = 64;
/// Events queued per watch by default before the watcher is closed.
const WATCH_QUEUE: usize = 1000;
/// Writes remembered by default for watches from, and lists at, a version.
const MAX_LOG: usize = 10_000;
/// The longest watch (the API server's default is 30 to 60 minutes).
const MAX_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long a list for a version not reached yet waits (the API
/// server's `blockTimeout`).
const TOO_LARGE_WAIT: Duration = Duration::from_secs(3);
/// The longest a list waits while lists are stalled.
const MAX_STALL: Duration = Duration::from_secs(60);
/// Requests remembered for [`FakeKubeApi::requests`].
const MAX_REQUESTS: usize = 10_000;
/// Lines buffered between a watch's pump and its connection.
const STREAM_BUFFER: usize = 16;

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeRequest {
    /// `GET`, …
    pub method: String,
    /// The path, as sent.
    pub path: String,
    /// The query, decoded, in order.
    pub query: Vec<(String, String)>,
}

impl KubeRequest {
    /// The first value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether it asked for a watch.
    pub fn is_watch(&self) -> bool {
        self.path.contains("/watch/")
            || self
                .param("watch")
                .and_then(wire::parse_bool)
                .unwrap_or(false)
    }

    /// The resource its path names, if any.
    pub fn resource(&self) -> Option<Resource> {
        parse_path(&self.path).map(|t| t.resource)
    }
}

#[derive(Debug)]
struct Shared {
    store: Arc<Mutex<Store>>,
    changed: Notify,
    kill: tokio::sync::watch::Sender<u64>,
    stall: tokio::sync::watch::Sender<bool>,
    shutdown: tokio::sync::watch::Receiver<()>,
    /// The status code and how many more requests get it.
    fail: Mutex<(u16, usize)>,
    /// Per resource: lists, watches.
    counts: Mutex<[[usize; 2]; Resource::COUNT]>,
    requests: Mutex<VecDeque<KubeRequest>>,
    token: Option<String>,
    watch_queue: usize,
    max_watch_timeout: Duration,
    addr: SocketAddr,
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .expect("invariant: store lock not poisoned")
    }
}

/// Builder for a [`FakeKubeApi`].
#[derive(Debug, Clone)]
pub struct FakeKubeApiBuilder {
    token: Option<String>,
    tls: bool,
    max_connections: usize,
    watch_queue: usize,
    max_log: usize,
    max_watch_timeout: Duration,
    bookmark_interval: Option<Duration>,
}

/// A running fake API server. Stops (closing every connection) on drop.
#[derive(Debug)]
pub struct FakeKubeApi {
    addr: SocketAddr,
    ca_pem: Option<String>,
    token: Option<String>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    _shutdown: tokio::sync::watch::Sender<()>,
}

impl std::fmt::Display for FakeKubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.endpoint_url())
    }
}

impl FakeKubeApiBuilder {
    /// Requires `Authorization: Bearer TOKEN` on every request (`401`
    /// otherwise); the kubeconfig carries it.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }
    /// Serves HTTPS with a certificate for 127.0.0.1 and `localhost` from
    /// a CA made for this server ([`FakeKubeApi::ca_pem`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
    /// Connections served at once (default 64).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }
    /// Events a watch may have queued before it is closed (default 1000).
    pub fn watch_queue(mut self, n: usize) -> Self {
        self.watch_queue = n.max(1);
        self
    }
    /// Writes kept for resuming watches (default 10 000); older versions
    /// answer 410.
    pub fn history(mut self, n: usize) -> Self {
        self.max_log = n.max(1);
        self
    }
    /// The longest a watch lasts, whatever `timeoutSeconds` asks
    /// (default 30 minutes); also the length of a watch without it.
    pub fn max_watch_timeout(mut self, d: Duration) -> Self {
        self.max_watch_timeout = d;
        self
    }
    /// Sends a BOOKMARK to watches that allow them this often (default:
    /// only on [`FakeKubeApi::bookmark`]).
    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = Some(d.max(Duration::from_millis(10)));
        self
    }

    /// Binds 127.0.0.1 on a free port and serves.
    pub async fn start(self) -> FakeKubeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (acceptor, ca_pem) = if self.tls {
            let (a, pem) = tls_acceptor();
            (Some(a), Some(pem))
        } else {
            (None, None)
        };
        let (shutdown_tx, shutdown) = tokio::sync::watch::channel(());
        let shared = Arc::new(Shared {
            store: Arc::new(Mutex::new(Store::new(self.max_log))),
            changed: Notify::new(),
            kill: tokio::sync::watch::Sender::new(0),
            stall: tokio::sync::watch::Sender::new(false),
            shutdown: shutdown.clone(),
            fail: Mutex::new((0, 0)),
            counts: Mutex::new([[0; 2]; Resource::COUNT]),
            requests: Mutex::new(VecDeque::new()),
            token: self.token.clone(),
            watch_queue: self.watch_queue,
            max_watch_timeout: self.max_watch_timeout,
            addr,
        });
        let mut tasks = vec![tokio::spawn(accept_loop(
            listener,
            acceptor,
            Arc::clone(&shared),
            self.max_connections,
        ))];
        if let Some(every) = self.bookmark_interval {
            let s = Arc::clone(&shared);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(Instant::now() + every, every);
                loop {
                    tick.tick().await;
                    s.store().bookmark();
                }
            }));
        }
        FakeKubeApi {
            addr,
            ca_pem,
            token: self.token,
            shared,
            tasks,
            _shutdown: shutdown_tx,
        }
    }
}

impl FakeKubeApi {
    /// A builder: plain HTTP, no token.
    pub fn builder() -> FakeKubeApiBuilder {
        FakeKubeApiBuilder {
            token: None,
            tls: false,
            max_connections: MAX_CONNECTIONS,
            watch_queue: WATCH_QUEUE,
            max_log: MAX_LOG,
            max_watch_timeout: MAX_WATCH_TIMEOUT,
            bookmark_interval: None,
        }
    }

    /// A plain HTTP fake without a token.
    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (or `https://…` with TLS).
    pub fn endpoint_url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// With TLS, the PEM of the CA that signed its certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The bearer token it requires, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Writes `DIR/kubeconfig`: one cluster (this server; with TLS its
    /// CA as `certificate-authority-data`), one user (the token, if any),
    /// one context (namespace `default`), current. Returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let mut cluster = format!("    server: {}\n", self.endpoint_url());
        if let Some(ca) = &self.ca_pem {
            cluster.push_str(&format!(
                "    certificate-authority-data: {}\n",
                wire::base64(ca.as_bytes())
            ));
        }
        let user = match &self.token {
            Some(t) => format!("  user:\n    token: \"{t}\"\n"),
            None => "  user: {}\n".to_string(),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n{cluster}\
             users:\n- name: fake\n{user}\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\npreferences: {{}}\n"
        );
        let path = dir.join("kubeconfig");
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Creates or replaces an object (its `uid` and `creationTimestamp`
    /// kept across replacements) and tells the watches: ADDED or
    /// MODIFIED. Returns the new resource version.
    pub fn apply(&self, obj: impl Into<Object>) -> u64 {
        let rv = self.shared.store().apply(obj.into());
        self.shared.changed.notify_waiters();
        rv
    }

    /// Deletes an object (`namespace` is ignored for namespaces) and
    /// tells the watches: DELETED. The new resource version, or `None` if
    /// there was no such object.
    pub fn delete(&self, resource: Resource, namespace: &str, name: &str) -> Option<u64> {
        let rv = self
            .shared
            .store()
            .delete(resource, store::key(resource, namespace, name));
        self.shared.changed.notify_waiters();
        rv
    }

    /// The stored object, as a get returns it.
    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.shared
            .store()
            .get(resource, &store::key(resource, namespace, name))
            .map(|o| (*o).clone())
    }

    /// The current (global) resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv()
    }

    /// Cuts every open watch connection without ending its chunked body,
    /// as a dropped connection or a dying API server does.
    pub fn drop_watches(&self) {
        self.shared.kill.send_modify(|g| *g += 1);
    }

    /// Ends every open watch stream cleanly, as its timeout does.
    pub fn end_watches(&self) {
        self.shared.store().end_watches();
    }

    /// Compacts all history: watches from, and exact lists at, any older
    /// version get 410 Expired, so clients must relist. Open watches go on.
    pub fn compact(&self) {
        let mut s = self.shared.store();
        let rv = s.rv();
        s.expire_before(rv);
    }

    /// Compacts history before `rv`: watches from older versions get 410.
    pub fn expire_before(&self, rv: u64) {
        self.shared.store().expire_before(rv);
    }

    /// Compacts all history, sends every open watch an ERROR event with
    /// Status 410 `Expired` and ends it: the client must relist.
    pub fn expire_watches(&self) {
        let mut s = self.shared.store();
        let rv = s.rv();
        s.expire_before(rv);
        s.expire_watches();
    }

    /// Sends a BOOKMARK at the current version to every watch that
    /// allowed bookmarks; returns that version.
    pub fn bookmark(&self) -> u64 {
        self.shared.store().bookmark()
    }

    /// While on, list requests wait (at most 60 s) before they are
    /// answered: a client cannot finish its initial sync.
    pub fn stall_lists(&self, on: bool) {
        self.shared.stall.send_replace(on);
    }

    /// The next `count` list, get and watch requests get HTTP `code` with
    /// a Status (429 also says `Retry-After: 1`).
    pub fn fail_next(&self, count: usize, code: u16) {
        *self.shared.fail.lock().expect("fail lock") = (code, count);
    }

    /// List requests received for a resource (whatever the outcome).
    pub fn list_count(&self, resource: Resource) -> usize {
        self.shared.counts.lock().expect("counts lock")[resource.index()][0]
    }

    /// Watch requests received for a resource (whatever the outcome).
    pub fn watch_count(&self, resource: Resource) -> usize {
        self.shared.counts.lock().expect("counts lock")[resource.index()][1]
    }

    /// Watches of a resource open now.
    pub fn open_watches(&self, resource: Resource) -> usize {
        self.shared.store().open_watches(resource)
    }

    /// The requests received, oldest first (the last 10 000).
    pub fn requests(&self) -> Vec<KubeRequest> {
        self.shared
            .requests
            .lock()
            .expect("requests lock")
            .iter()
            .cloned()
            .collect()
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Dropping `_shutdown` then ends every connection and watch.
    }
}

// === serving ===

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    max_connections: usize,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Ok((tcp, _)) = listener.accept().await else {
            // Out of descriptors or similar: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let acceptor = acceptor.clone();
        let mut shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // On shutdown the connection is dropped as it is, without
            // ending a watch's body: clients see the server go away.
            tokio::select! {
                biased;
                _ = shutdown.changed() => {}
                () = serve(tcp, acceptor, shared) => {}
            }
        });
    }
}

async fn serve(tcp: TcpStream, acceptor: Option<tokio_rustls::TlsAcceptor>, shared: Arc<Shared>) {
    match acceptor {
        Some(a) => {
            let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), a.accept(tcp)).await
            else {
                return;
            };
            serve_http(TokioIo::new(tls), shared).await;
        }
        None => serve_http(TokioIo::new(tcp), shared).await,
    }
}

async fn serve_http<I>(io: I, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(Arc::clone(&shared), req));
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        // hyper times the wait for the next request's head from the end
        // of the last response, so this also closes idle keep-alive
        // connections: long enough that a test's pooled connection is not
        // closed under it.
        .header_read_timeout(Duration::from_secs(300))
        .max_buf_size(64 * 1024)
        .serve_connection(io, svc)
        .await;
}

fn respond(code: u16, content_type: &'static str, body: ApiBody) -> Response<ApiBody> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache, private"));
    r
}

fn json_response(code: u16, v: &Value) -> Response<ApiBody> {
    respond(
        code,
        "application/json",
        ApiBody::Full(Some(Bytes::from(v.to_string()))),
    )
}

fn status_response(code: u16, message: &str) -> Response<ApiBody> {
    json_response(code, &wire::status(code, wire::reason_for(code), message))
}

fn not_found() -> Response<ApiBody> {
    json_response(
        404,
        &wire::status_details(
            404,
            "NotFound",
            "the server could not find the requested resource",
            json!({}),
        ),
    )
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ApiBody>, Infallible> {
    let path = req.uri().path().to_string();
    let query = wire::parse_query(req.uri().query().unwrap_or(""));
    {
        let mut log = shared.requests.lock().expect("requests lock");
        if log.len() >= MAX_REQUESTS {
            log.pop_front();
        }
        log.push_back(KubeRequest {
            method: req.method().to_string(),
            path: path.clone(),
            query: query.clone(),
        });
    }
    if let Some(token) = &shared.token {
        let want = format!("Bearer {token}");
        let ok = req
            .headers()
            .get(AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == want.as_bytes());
        if !ok {
            return Ok(status_response(401, "Unauthorized"));
        }
    }
    if req.method() != Method::GET {
        return Ok(status_response(
            405,
            "the server does not allow this method on the requested resource",
        ));
    }
    Ok(route(&shared, &path, &query).await)
}

/// The query parameters of a request.
struct Params<'a>(&'a [(String, String)]);

impl<'a> Params<'a> {
    /// The first value of `name`.
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A resource path: the resource, the namespace and name it names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    watch_path: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("v1", rest),
        ["apis", "discovery.k8s.io", "v1", rest @ ..] => ("discovery.k8s.io/v1", rest),
        ["apis", "multicluster.x-k8s.io", "v1alpha1", rest @ ..] => {
            ("multicluster.x-k8s.io/v1alpha1", rest)
        }
        _ => return None,
    };
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let (namespace, plural, name) = match rest {
        [plural] => (None, *plural, None),
        [plural, name] => (None, *plural, Some(*name)),
        ["namespaces", ns, plural] => (Some(*ns), *plural, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
        _ => return None,
    };
    let resource = Resource::from_plural(gv, plural)?;
    if (resource.namespaced() && namespace.is_none() && name.is_some())
        || (!resource.namespaced() && namespace.is_some())
        || namespace.is_some_and(str::is_empty)
        || name.is_some_and(str::is_empty)
    {
        return None;
    }
    Some(Target {
        resource,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        watch_path,
    })
}

async fn route(shared: &Arc<Shared>, path: &str, query: &[(String, String)]) -> Response<ApiBody> {
    match path {
        "/version" | "/version/" => return json_response(200, &version()),
        "/healthz" | "/livez" | "/readyz" => {
            return respond(
                200,
                "text/plain; charset=utf-8",
                ApiBody::Full(Some(Bytes::from_static(b"ok"))),
            );
        }
        "/api" | "/api/" => {
            return json_response(
                200,
                &json!({
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}
                    ],
                }),
            );
        }
        "/apis" | "/apis/" => {
            let gv = json!({"groupVersion": "discovery.k8s.io/v1", "version": "v1"});
            let mcs =
                json!({"groupVersion": "multicluster.x-k8s.io/v1alpha1", "version": "v1alpha1"});
            return json_response(
                200,
                &json!({
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [
                        {"name": "discovery.k8s.io", "versions": [gv], "preferredVersion": gv},
                        {"name": "multicluster.x-k8s.io", "versions": [mcs], "preferredVersion": mcs},
                    ],
                }),
            );
        }
        "/api/v1" | "/api/v1/" => return json_response(200, &resource_list("v1")),
        "/apis/discovery.k8s.io/v1" | "/apis/discovery.k8s.io/v1/" => {
            return json_response(200, &resource_list("discovery.k8s.io/v1"));
        }
        "/apis/multicluster.x-k8s.io/v1alpha1" | "/apis/multicluster.x-k8s.io/v1alpha1/" => {
            return json_response(200, &resource_list("multicluster.x-k8s.io/v1alpha1"));
        }
        _ => {}
    }
    let Some(target) = parse_path(path) else {
        return not_found();
    };
    let param = Params(query);
    let watch = match param.get("watch") {
        None | Some("") => target.watch_path,
        Some(v) => match wire::parse_bool(v) {
            Some(b) => b || target.watch_path,
            None => {
                return status_response(400, &format!("invalid value for watch: \"{v}\""));
            }
        },
    };
    {
        let mut counts = shared.counts.lock().expect("counts lock");
        if watch {
            counts[target.resource.index()][1] += 1;
        } else if target.name.is_none() {
            counts[target.resource.index()][0] += 1;
        }
    }
    {
        let mut fail = shared.fail.lock().expect("fail lock");
        if fail.1 > 0 {
            fail.1 -= 1;
            let code = fail.0;
            drop(fail);
            let mut r = status_response(code, &format!("injected failure ({code})"));
            if code == 429 {
                r.headers_mut()
                    .insert("Retry-After", HeaderValue::from_static("1"));
            }
            return r;
        }
    }
    if watch {
        watch_request(shared, &target, &param).await
    } else if let Some(name) = &target.name {
        get(shared, &target, name)
    } else {
        list(shared, &target, &param).await
    }
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0",
        "gitCommit": "60a317eadfcb839692a68eab88b2096f4d708f4f",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T13:07:52Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn resource_list(group_version: &str) -> Value {
    let resources: Vec<Value> = Resource::ALL
        .into_iter()
        .filter(|r| r.api_version() == group_version)
        .map(|r| {
            json!({
                "name": r.plural(),
                "singularName": r.singular(),
                "namespaced": r.namespaced(),
                "kind": r.kind(),
                "verbs": ["get", "list", "watch"],
            })
        })
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

fn get(shared: &Shared, target: &Target, name: &str) -> Response<ApiBody> {
    let key = store::key(
        target.resource,
        target.namespace.as_deref().unwrap_or(""),
        name,
    );
    match shared.store().get(target.resource, &key) {
        Some(o) => json_response(200, &o),
        None => json_response(
            404,
            &wire::status_details(
                404,
                "NotFound",
                &format!("{} \"{name}\" not found", target.resource.plural()),
                json!({"name": name, "kind": target.resource.plural()}),
            ),
        ),
    }
}

/// The filter for a request, or the 400 to answer.
/// A 400 to answer: the Status message.
struct BadRequest(String);

impl BadRequest {
    fn response(self) -> Response<ApiBody> {
        status_response(400, &self.0)
    }
}

fn filter(target: &Target, param: &Params<'_>) -> Result<Filter, BadRequest> {
    let labels =
        LabelSelector::parse(param.get("labelSelector").unwrap_or("")).map_err(BadRequest)?;
    let mut fields =
        FieldSelector::parse(target.resource, param.get("fieldSelector").unwrap_or(""))
            .map_err(BadRequest)?;
    if let Some(name) = &target.name {
        fields = fields.and(FieldSelector::name(name));
    }
    Ok(Filter {
        resource: target.resource,
        namespace: target.namespace.clone(),
        labels,
        fields,
    })
}

/// A list item: the object without `kind` and `apiVersion`, as the API
/// server encodes the items of a typed list (a custom resource's list is
/// unstructured: its items keep them).
fn item(r: Resource, o: &Value) -> Value {
    let mut o = o.clone();
    if r.custom() {
        return o;
    }
    if let Some(m) = o.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    o
}

fn parse_rv(s: &str) -> Result<u64, BadRequest> {
    s.parse::<u64>().map_err(|_| {
        BadRequest(
            format!("resourceVersion: Invalid value: \"{s}\": strconv.ParseUint: parsing \"{s}\": invalid syntax"),
        )
    })
}

/// Waits (at most 3 s) for the store to reach `rv`.
async fn wait_for_rv(shared: &Shared, rv: u64) -> bool {
    let deadline = Instant::now() + TOO_LARGE_WAIT;
    loop {
        let notified = shared.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if shared.store().rv() >= rv {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return false;
        }
    }
}

fn too_large(rv: u64, current: u64) -> Response<ApiBody> {
    json_response(
        504,
        &wire::status_details(
            504,
            "Timeout",
            &format!("Too large resource version: {rv}, current: {current}"),
            json!({
                "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1,
            }),
        ),
    )
}

async fn list(shared: &Shared, target: &Target, param: &Params<'_>) -> Response<ApiBody> {
    let rv = param.get("resourceVersion").unwrap_or("");
    let rvm = param.get("resourceVersionMatch").unwrap_or("");
    let cont = param.get("continue").unwrap_or("");
    let mut errs: Vec<(&str, String)> = Vec::new();
    if !rvm.is_empty() {
        if rv.is_empty() {
            errs.push((
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
                    .into(),
            ));
        }
        if !cont.is_empty() {
            errs.push((
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden when continue is provided".into(),
            ));
        }
        if rvm != "Exact" && rvm != "NotOlderThan" {
            errs.push((
                "resourceVersionMatch",
                format!(
                    "Unsupported value: \"{rvm}\": supported values: \"Exact\", \"NotOlderThan\", \"\""
                ),
            ));
        }
        if rvm == "Exact" && rv == "0" {
            errs.push((
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\""
                    .into(),
            ));
        }
    }
    if param.get("sendInitialEvents").is_some() {
        errs.push((
            "sendInitialEvents",
            "Forbidden: sendInitialEvents is forbidden for list".into(),
        ));
    }
    if !errs.is_empty() {
        return json_response(422, &wire::invalid_list_options(&errs));
    }
    let f = match filter(target, param) {
        Ok(f) => f,
        Err(r) => return r.response(),
    };
    let limit = match param.get("limit") {
        None | Some("") => None,
        Some(l) => match l.parse::<i64>() {
            Ok(n) => usize::try_from(n).ok().filter(|&n| n > 0),
            Err(_) => return status_response(400, &format!("invalid value for limit: \"{l}\"")),
        },
    };

    if *shared.stall.borrow() {
        let mut stall = shared.stall.subscribe();
        let _ = tokio::time::timeout(MAX_STALL, stall.wait_for(|on| !*on)).await;
    }

    // Which version to read at, and the key to start after.
    let (at, start) = if cont.is_empty() {
        match rv {
            "" | "0" => (None, None),
            s => {
                let n = match parse_rv(s) {
                    Ok(n) => n,
                    Err(r) => return r.response(),
                };
                if !wait_for_rv(shared, n).await {
                    return too_large(n, shared.store().rv());
                }
                let exact = rvm == "Exact" || (rvm.is_empty() && limit.is_some());
                (exact.then_some(n), None)
            }
        }
    } else {
        if !rv.is_empty() && rv != "0" {
            return status_response(
                400,
                "specifying resource version is not allowed when using continue",
            );
        }
        let (tok_rv, start) = match wire::parse_continue(cont) {
            Ok(t) => t,
            Err(e) => return status_response(400, &e),
        };
        let at = u64::try_from(tok_rv).ok();
        (at, Some(start))
    };

    let s = shared.store();
    let current = s.rv();
    let read_at = at.unwrap_or(current);
    let objs = match s.snapshot(target.resource, read_at) {
        Ok(o) => o,
        Err(Unavailable::TooOld(_)) if start.is_some() => {
            let token = wire::continue_token(-1, start.as_deref().unwrap_or(""));
            let mut st = wire::status(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter, or use the continue \
                 token in this response to retrieve the remainder of the results. Continuing \
                 with the provided token results in an inconsistent list - objects that were \
                 created, modified, or deleted between the time the first chunk was returned \
                 and now may show up in the list.",
            );
            st["metadata"] = json!({"continue": token});
            return json_response(410, &st);
        }
        // Only an exact read can ask for a compacted version.
        Err(Unavailable::TooOld(_)) => {
            return status_response(410, "The resourceVersion for the provided list is too old.");
        }
        Err(Unavailable::TooLarge(cur)) => {
            return if start.is_some() {
                status_response(
                    400,
                    "continue key is not valid: resource version is in the future",
                )
            } else {
                too_large(read_at, cur)
            };
        }
    };
    drop(s);

    let range = match &start {
        Some(k) => objs.range::<String, _>((Bound::Excluded(k), Bound::Unbounded)),
        None => objs.range::<String, _>(..),
    };
    let mut items = Vec::new();
    let mut last_key: Option<&str> = None;
    let mut remaining = 0usize;
    for (k, o) in range {
        if !f.in_scope(k) {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            remaining += 1;
            continue;
        }
        if f.matches(o) {
            items.push(item(target.resource, o));
            last_key = Some(k);
        }
    }
    let mut meta = json!({"resourceVersion": read_at.to_string()});
    if remaining > 0 {
        let rv_i64 = i64::try_from(read_at).unwrap_or(i64::MAX);
        meta["continue"] = wire::continue_token(rv_i64, last_key.unwrap_or("")).into();
        if f.labels.is_empty() && f.fields.is_empty() {
            meta["remainingItemCount"] = remaining.into();
        }
    }
    let r = target.resource;
    json_response(
        200,
        &json!({
            "kind": format!("{}List", r.kind()),
            "apiVersion": r.api_version(),
            "metadata": meta,
            "items": items,
        }),
    )
}

async fn watch_request(shared: &Shared, target: &Target, param: &Params<'_>) -> Response<ApiBody> {
    let rv = param.get("resourceVersion").unwrap_or("");
    let rvm = param.get("resourceVersionMatch").unwrap_or("");
    let send_initial = match param.get("sendInitialEvents") {
        None => None,
        Some(v) => match wire::parse_bool(v) {
            Some(b) => Some(b),
            None => {
                return status_response(
                    400,
                    &format!("invalid value for sendInitialEvents: \"{v}\""),
                );
            }
        },
    };
    let mut errs: Vec<(&str, String)> = Vec::new();
    if send_initial.is_some() && rvm != "NotOlderThan" {
        errs.push((
            "resourceVersionMatch",
            "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
                .into(),
        ));
    }
    if !rvm.is_empty() {
        if send_initial.is_none() {
            errs.push((
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
                    .into(),
            ));
        }
        if rvm != "NotOlderThan" {
            errs.push((
                "resourceVersionMatch",
                format!("Unsupported value: \"{rvm}\": supported values: \"NotOlderThan\""),
            ));
        }
        if param.get("continue").is_some_and(|c| !c.is_empty()) {
            errs.push((
                "resourceVersionMatch",
                "Forbidden: resourceVersionMatch is forbidden when continue is provided".into(),
            ));
        }
    }
    if !errs.is_empty() {
        return json_response(422, &wire::invalid_list_options(&errs));
    }
    let f = match filter(target, param) {
        Ok(f) => f,
        Err(r) => return r.response(),
    };
    let bookmarks = param
        .get("allowWatchBookmarks")
        .and_then(wire::parse_bool)
        .unwrap_or(false);
    let timeout = match param.get("timeoutSeconds") {
        None | Some("") => shared.max_watch_timeout,
        Some(t) => match t.parse::<u64>() {
            Ok(0) => shared.max_watch_timeout,
            Ok(n) => Duration::from_secs(n).min(shared.max_watch_timeout),
            Err(_) => {
                return status_response(400, &format!("invalid value for timeoutSeconds: \"{t}\""));
            }
        },
    };
    let from = match rv {
        "" | "0" => None,
        s => match parse_rv(s) {
            Ok(n) => Some(n),
            Err(r) => return r.response(),
        },
    };
    // Unset or "0": get the state, then start; sendInitialEvents decides
    // when given (the API's defaulting).
    let initial = send_initial.unwrap_or(from.is_none());

    let kill = shared.kill.subscribe();
    let mut s = shared.store();
    let mut backlog = Vec::new();
    let min_rv = if initial {
        backlog.extend(s.current(target.resource).cloned().map(WatchMsg::Initial));
        if bookmarks {
            backlog.push(WatchMsg::Bookmark(s.rv(), true));
        }
        s.rv()
    } else if let Some(n) = from {
        match s.changes_after(target.resource, n) {
            Ok(changes) => backlog.extend(changes.into_iter().map(WatchMsg::Change)),
            Err(Unavailable::TooOld(floor)) | Err(Unavailable::TooLarge(floor)) => {
                drop(s);
                // The watch cache answers 200 and one ERROR event.
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.try_send(Ok(watch::expired_line(n, floor)));
                return respond(200, "application/json", ApiBody::stream(rx, kill));
            }
        }
        n
    } else {
        s.rv()
    };
    let (id, rx) = s.register(target.resource, bookmarks, shared.watch_queue);
    drop(s);

    let (out, body) = mpsc::channel(STREAM_BUFFER);
    let pump = Pump {
        filter: f,
        min_rv,
        backlog,
        rx,
        out,
        deadline: Instant::now() + timeout,
        store: Arc::clone(&shared.store),
        id,
    };
    tokio::spawn(pump.run());
    respond(200, "application/json", ApiBody::stream(body, kill))
}

/// A TLS acceptor with a fresh CA and a certificate for 127.0.0.1 and
/// `localhost`; returns the CA's PEM too.
fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca =
        CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("cert");
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .expect("server config");
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca.pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let t = parse_path("/api/v1/namespaces/ns/services").unwrap();
        assert_eq!(t.resource, Resource::Services);
        assert_eq!(t.namespace.as_deref(), Some("ns"));
        let t = parse_path("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!((t.resource, t.namespace), (Resource::EndpointSlices, None));
        let t = parse_path("/api/v1/namespaces").unwrap();
        assert_eq!(t.resource, Resource::Namespaces);
        let t = parse_path("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!(
            (t.resource, t.name.as_deref()),
            (Resource::Namespaces, Some("kube-system"))
        );
        let t = parse_path("/api/v1/watch/namespaces/ns/pods/p").unwrap();
        assert!(t.watch_path);
        assert_eq!(t.name.as_deref(), Some("p"));
        assert!(parse_path("/api/v1/services/x").is_none());
        assert!(parse_path("/api/v1/endpointslices").is_none());
        assert!(parse_path("/apis/discovery.k8s.io/v1/services").is_none());
        assert!(parse_path("/api/v1/namespaces/ns/namespaces").is_none());
        assert!(parse_path("/foo").is_none());
        let t = parse_path("/apis/multicluster.x-k8s.io/v1alpha1/serviceimports").unwrap();
        assert_eq!((t.resource, t.namespace), (Resource::ServiceImports, None));
        let t = parse_path("/apis/multicluster.x-k8s.io/v1alpha1/namespaces/ns/serviceimports/web")
            .unwrap();
        assert_eq!(
            (t.resource, t.namespace.as_deref(), t.name.as_deref()),
            (Resource::ServiceImports, Some("ns"), Some("web"))
        );
        assert!(parse_path("/apis/multicluster.x-k8s.io/v1alpha1/services").is_none());
        assert!(parse_path("/api/v1/serviceimports").is_none());
    }
}
