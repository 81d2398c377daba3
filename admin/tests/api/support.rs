//! The harness: a fake `Control`, a running admin plane, and small
//! clients (HTTP/1.1 and HTTP/2 by hand, gRPC through `ctl::Channel`).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{self, HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use nodedns_admin::ctl::Channel;
use nodedns_admin::grpc::pb::admin_client::AdminClient;
use nodedns_admin::{
    Applied, ApplyError, BadRequest, BoxFuture, CacheEntry, CacheStats, ConfigView, Control,
    Limits, QueryStats, Stats, Token, Upstream,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Every wait in these tests ends by this, whatever the machine's load.
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

pub(crate) const TOKEN: &str = "t0ken-for-tests";

pub(crate) const COREFILE: &str = ". {\n    cache\n    forward . 192.0.2.53\n}\n";

/// Types the fake knows; anything else is a `BadRequest`, as in the agent.
const TYPES: &[&str] = &["A", "AAAA", "MX", "TXT", "NS"];

/// An in-memory agent: versioned config, counters, a cache, upstreams,
/// switches for health and readiness.
pub(crate) struct Fake {
    state: Mutex<State>,
    /// `stats()` calls, so a stream's end can be seen.
    pub(crate) stats_calls: AtomicU64,
    pub(crate) healthy: AtomicBool,
}

struct State {
    corefile: String,
    version: u64,
    entries: Vec<CacheEntry>,
    not_ready: Vec<String>,
}

pub(crate) fn entry(name: &str, rtype: &str, ttl: u32, stale: bool) -> CacheEntry {
    CacheEntry {
        name: name.into(),
        rtype: rtype.into(),
        ttl,
        stale,
    }
}

pub(crate) fn upstreams() -> Vec<Upstream> {
    vec![
        Upstream {
            address: "192.0.2.53:53".into(),
            healthy: true,
            fails: 0,
            rtt_ms: 0.4,
            pooled: 2,
        },
        Upstream {
            address: "tls://192.0.2.54:853".into(),
            healthy: false,
            fails: 3,
            rtt_ms: 12.5,
            pooled: 0,
        },
    ]
}

impl Fake {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                corefile: COREFILE.into(),
                version: 1,
                entries: vec![
                    entry("www.example.org.", "A", 27, false),
                    entry("www.example.org.", "AAAA", 30, false),
                    entry("old.example.org.", "A", 0, true),
                ],
                not_ready: Vec::new(),
            }),
            stats_calls: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
        })
    }

    pub(crate) fn set_not_ready(&self, what: &[&str]) {
        self.state.lock().unwrap().not_ready = what.iter().map(|s| s.to_string()).collect();
    }

    pub(crate) fn version(&self) -> u64 {
        self.state.lock().unwrap().version
    }

    pub(crate) fn entries(&self) -> Vec<CacheEntry> {
        self.state.lock().unwrap().entries.clone()
    }
}

fn check(name: Option<&str>, rtype: Option<&str>) -> Result<(), BadRequest> {
    if let Some(t) = rtype
        && !TYPES.contains(&t)
    {
        return Err(BadRequest(format!("unknown type '{t}'")));
    }
    if name.is_some_and(|n| n.contains(' ')) {
        return Err(BadRequest("invalid name".into()));
    }
    Ok(())
}

fn matches(e: &CacheEntry, name: Option<&str>, rtype: Option<&str>) -> bool {
    name.is_none_or(|n| e.name == n) && rtype.is_none_or(|t| e.rtype == t)
}

impl Control for Fake {
    fn config(&self) -> ConfigView {
        let s = self.state.lock().unwrap();
        ConfigView {
            corefile: s.corefile.clone(),
            version: s.version,
        }
    }

    fn apply(
        &self,
        corefile: String,
        dry_run: bool,
        if_match: Option<u64>,
    ) -> BoxFuture<'_, Result<Applied, ApplyError>> {
        Box::pin(async move {
            if let Some(line) = corefile.lines().position(|l| l.contains("bogus")) {
                let line = line as u32 + 1;
                return Err(ApplyError::Invalid {
                    message: format!("Corefile:{line}: unknown directive 'bogus'"),
                    line: Some(line),
                });
            }
            if corefile.contains("busy") {
                return Err(ApplyError::Unavailable("agent: shutting down".into()));
            }
            let mut s = self.state.lock().unwrap();
            if let Some(expected) = if_match
                && expected != s.version
            {
                return Err(ApplyError::VersionMismatch {
                    expected,
                    running: s.version,
                });
            }
            if dry_run {
                return Ok(Applied {
                    version: s.version,
                    persisted: false,
                });
            }
            s.version += 1;
            s.corefile = corefile;
            Ok(Applied {
                version: s.version,
                persisted: true,
            })
        })
    }

    fn stats(&self) -> Stats {
        let n = self.stats_calls.fetch_add(1, Ordering::SeqCst) + 1;
        Stats {
            queries: QueryStats {
                total: 100 + n,
                by_rcode: BTreeMap::from([("NOERROR".into(), 90), ("NXDOMAIN".into(), 10)]),
                by_type: BTreeMap::from([("A".into(), 70), ("AAAA".into(), 30)]),
            },
            cache: CacheStats {
                hits: 60,
                misses: 40,
                prefetches: 5,
                stale: 1,
                entries: self.state.lock().unwrap().entries.len() as u64,
            },
            upstreams: upstreams(),
        }
    }

    fn cache_entries(
        &self,
        name: Option<&str>,
        rtype: Option<&str>,
    ) -> Result<Vec<CacheEntry>, BadRequest> {
        check(name, rtype)?;
        let s = self.state.lock().unwrap();
        Ok(s.entries
            .iter()
            .filter(|e| matches(e, name, rtype))
            .cloned()
            .collect())
    }

    fn cache_purge(&self, name: Option<&str>, rtype: Option<&str>) -> Result<u64, BadRequest> {
        check(name, rtype)?;
        let mut s = self.state.lock().unwrap();
        let before = s.entries.len();
        s.entries.retain(|e| !matches(e, name, rtype));
        Ok((before - s.entries.len()) as u64)
    }

    fn upstreams(&self) -> Vec<Upstream> {
        upstreams()
    }

    fn plugins(&self) -> Vec<String> {
        ["errors", "cache", "forward"].map(String::from).to_vec()
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    fn not_ready(&self) -> Vec<String> {
        self.state.lock().unwrap().not_ready.clone()
    }
}

/// A running admin plane; stopped (and awaited, bounded) by `stop`, or
/// shut down when dropped.
pub(crate) struct Admin {
    pub(crate) addr: SocketAddr,
    pub(crate) fake: Arc<Fake>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Admin {
    pub(crate) async fn start() -> Self {
        Self::start_with(None, Limits::default()).await
    }

    pub(crate) async fn with_token() -> Self {
        Self::start_with(Some(TOKEN), Limits::default()).await
    }

    pub(crate) async fn start_with(token: Option<&str>, limits: Limits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = Fake::new();
        let (stop, stopped) = oneshot::channel::<()>();
        let token = token.map(|t| Token::new(t).unwrap());
        let control: Arc<dyn Control> = fake.clone();
        let task = tokio::spawn(nodedns_admin::serve_with(
            listener,
            control,
            token,
            limits,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            fake,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the plane and waits for `serve` to return; how long it took.
    pub(crate) async fn stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
        started.elapsed()
    }

    pub(crate) fn origin(&self) -> http::Uri {
        format!("http://{}", self.addr).parse().unwrap()
    }

    pub(crate) async fn grpc(&self, token: Option<&str>) -> AdminClient<Channel> {
        let token = token.map(|t| Token::new(t).unwrap());
        let channel = Channel::connect(&self.addr.to_string(), token.as_ref())
            .await
            .unwrap();
        AdminClient::with_origin(channel, self.origin())
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One HTTP answer, body read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Answer {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    /// The JSON error body: `{error, line?}` and a JSON content type.
    pub(crate) fn error(&self, status: StatusCode) -> serde_json::Value {
        assert_eq!(
            self.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.header("content-type"), "application/json");
        let v = self.json();
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
        v
    }
}

/// A request builder for [`http1`] and [`http2`].
pub(crate) fn req(method: Method, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin.test")
}

pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// One request over a fresh HTTP/1.1 connection.
pub(crate) async fn http1(addr: SocketAddr, request: Request<Bytes>) -> Answer {
    within(async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = send.send_request(request.map(Full::new)).await.unwrap();
        collect(response).await
    })
    .await
}

/// One request over a fresh cleartext HTTP/2 connection (prior knowledge).
pub(crate) async fn http2(addr: SocketAddr, request: Request<Bytes>) -> Answer {
    within(async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let (mut parts, body) = request.into_parts();
        parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
        let response = send
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await
            .unwrap();
        collect(response).await
    })
    .await
}

async fn collect(response: http::Response<hyper::body::Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

pub(crate) async fn get(addr: SocketAddr, path: &str) -> Answer {
    http1(addr, req(Method::GET, path).body(Bytes::new()).unwrap()).await
}

/// Fails the test if `f` takes longer than [`DEADLINE`].
pub(crate) async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("finished within the test deadline")
}

/// Waits until `cond` holds, checking every 20 ms, failing after
/// [`DEADLINE`].
pub(crate) async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
