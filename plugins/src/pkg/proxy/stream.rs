//! The stream pool: persistent TCP or TLS connections, each with many
//! queries in flight (pipelined, replies in any order) and one task that
//! writes its queries, reads its replies and closes it when idle.
//!
//! Lock order: the pool's state, then a connection's state. A query is
//! registered on a connection only under the pool's lock, so the choice of
//! a connection and the registration are one step.

use std::io;
use std::pin::pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::wire::{Failure, Outcome, Question, Waiters};
use super::{
    Counters, MAX_STREAMS, ProxyError, STREAM_PIPELINE_MAX, STREAM_PIPELINE_SOFT, Shared, lock,
};

/// How long closing an idle connection may take (TLS close_notify).
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// A connection's read buffer starts this big and grows to a frame's size.
const INITIAL_READ_BUF: usize = 4096;

/// The proxy's stream connections.
pub(super) struct StreamPool {
    shared: Arc<PoolShared>,
}

struct PoolShared {
    state: Mutex<PoolState>,
    /// Woken when a connection opens or an opening fails.
    opened: Notify,
}

#[derive(Default)]
struct PoolState {
    /// Open connections, oldest first.
    conns: Vec<Arc<Conn>>,
    /// Connections being opened.
    opening: usize,
    /// Queries waiting for a connection being opened.
    waiting: usize,
}

/// One connection, shared by its task, the pool and its queries.
struct Conn {
    state: Mutex<ConnState>,
    /// When it was opened (for `max_age`).
    born: Instant,
    /// No new query after this age.
    max_age: Option<Duration>,
    /// Frames (length prefix included) for the task to write.
    tx: mpsc::Sender<Vec<u8>>,
    /// Poked when a query gives up and leaves the connection idle.
    idle: Notify,
}

struct ConnState {
    waiters: Waiters,
    /// The task ended or is ending: no new query may register.
    closed: bool,
    /// Queries registered so far (more than 0: the connection is reused).
    carried: u64,
    /// Frames read so far (matching a query or not): a query that times
    /// out with this unchanged since it was sent met a silent connection.
    frames: u64,
    /// When the last query left.
    idle_since: Instant,
}

impl Conn {
    /// Registers a query if the connection is open and carries fewer than
    /// `limit` queries.
    fn register(self: &Arc<Self>, question: &Question, limit: usize) -> Option<Registered> {
        if self.aged() {
            return None;
        }
        let mut st = lock(&self.state);
        if st.closed || st.waiters.len() >= limit {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let (id, token) = st.waiters.insert(*question, tx)?;
        let reused = st.carried > 0;
        st.carried += 1;
        Some(Registered {
            conn: Arc::clone(self),
            id,
            token,
            rx: Some(rx),
            reused,
            frames: st.frames,
        })
    }

    /// A query sent here timed out. If the connection has read nothing
    /// since that query was registered (`frames` then), it has stopped
    /// answering (a broken upstream, a NAT that forgot the flow): it is
    /// retired at once, so the next query opens a fresh one, and the
    /// queries still on it are told it closed (they retry on a fresh
    /// connection). Returns whether it was retired.
    fn retire_if_silent(self: &Arc<Self>, frames: u64, pool: &PoolShared) -> bool {
        let mut ps = lock(&pool.state);
        let mut st = lock(&self.state);
        if st.closed || st.frames != frames {
            return false;
        }
        st.closed = true;
        st.waiters.fail_all(&Failure::Closed);
        drop(st);
        ps.conns.retain(|c| !Arc::ptr_eq(c, self));
        drop(ps);
        // Wakes the task, which sees `closed` and drops the connection.
        self.idle.notify_one();
        true
    }

    /// Older than `max_age`: takes no new query.
    fn aged(&self) -> bool {
        self.max_age.is_some_and(|age| self.born.elapsed() >= age)
    }

    fn load(&self) -> Option<usize> {
        let st = lock(&self.state);
        (!st.closed).then(|| st.waiters.len())
    }
}

/// A query registered on a connection; leaves it when dropped.
struct Registered {
    conn: Arc<Conn>,
    id: u16,
    token: u64,
    rx: Option<oneshot::Receiver<Outcome>>,
    reused: bool,
    /// The connection's frame count when the query was registered.
    frames: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut st = lock(&self.conn.state);
        if st.waiters.remove(self.id, self.token) && st.waiters.is_empty() {
            st.idle_since = Instant::now();
            drop(st);
            self.conn.idle.notify_one();
        }
    }
}

/// What the pool offers a query.
enum Pick {
    Use(Registered),
    Open(Opening),
    Wait,
    Busy,
}

/// A connection being opened: counted in `opening` until it is in the
/// pool or failed (or the query gave up).
struct Opening {
    pool: Arc<PoolShared>,
}

impl Drop for Opening {
    fn drop(&mut self) {
        lock(&self.pool.state).opening -= 1;
        self.pool.opened.notify_waiters();
    }
}

/// A query waiting for a connection being opened.
struct WaitingForOpen<'a>(&'a Mutex<PoolState>);

impl Drop for WaitingForOpen<'_> {
    fn drop(&mut self) {
        lock(self.0).waiting -= 1;
    }
}

// === impl StreamPool ===

impl StreamPool {
    pub(super) fn new() -> Self {
        Self {
            shared: Arc::new(PoolShared {
                state: Mutex::default(),
                opened: Notify::new(),
            }),
        }
    }

    /// Open connections.
    pub(super) fn open_count(&self) -> usize {
        lock(&self.shared.state).conns.len()
    }

    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        let st = lock(&self.shared.state);
        st.conns.iter().map(|c| lock(&c.state).waiters.len()).sum()
    }

    /// Sends `query` on a pooled (or new) connection and waits for its
    /// reply until `deadline`; a connection that breaks first is replaced
    /// once. Returns the reply (wire ID) and whether a pooled connection
    /// carried it. A query that times out on a connection that has read
    /// nothing since the query was sent retires that connection (see
    /// [`Conn::retire_if_silent`]); a query dropped before its deadline
    /// (another upstream answered first) says nothing about it.
    pub(super) async fn exchange(
        &self,
        shared: &Shared,
        query: &[u8],
        deadline: Instant,
    ) -> Result<(Vec<u8>, bool), ProxyError> {
        let mut waiting_on = None;
        match tokio::time::timeout_at(
            deadline,
            self.exchange_inner(shared, query, &mut waiting_on),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => {
                if let Some((conn, frames)) = waiting_on
                    && conn.retire_if_silent(frames, &self.shared)
                {
                    shared
                        .counters
                        .streams_retired
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(upstream = %shared.addr, "proxy: connection stopped answering; retired");
                }
                Err(ProxyError::Timeout)
            }
        }
    }

    /// [`StreamPool::exchange`] without the deadline; `waiting_on` is set
    /// to the connection the query is waiting on, and its frame count.
    async fn exchange_inner(
        &self,
        shared: &Shared,
        query: &[u8],
        waiting_on: &mut Option<(Arc<Conn>, u64)>,
    ) -> Result<(Vec<u8>, bool), ProxyError> {
        let question = &Question::of_query(query).ok_or(ProxyError::Malformed)?;
        // The caller checked that the query fits a frame.
        let len = u16::try_from(query.len()).map_err(|_| ProxyError::Malformed)?;
        let mut fresh = false;
        loop {
            let mut reg = self.acquire(shared, question, fresh).await?;
            *waiting_on = Some((Arc::clone(&reg.conn), reg.frames));
            let mut frame = Vec::with_capacity(query.len() + 2);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&reg.id.to_be_bytes());
            frame.extend_from_slice(query.get(2..).unwrap_or_default());
            let outcome = match reg.conn.tx.send(frame).await {
                Ok(()) => match reg.rx.take() {
                    Some(rx) => rx.await.unwrap_or(Err(Failure::Closed)),
                    None => Err(Failure::Closed),
                },
                // The task is gone: the connection is closed.
                Err(_) => Err(Failure::Closed),
            };
            match outcome {
                Ok(reply) => return Ok((reply, reg.reused)),
                Err(why) if !fresh => {
                    tracing::debug!(upstream = %shared.addr, error = ?why, "proxy: connection broke; retrying on a fresh one");
                    fresh = true;
                }
                Err(why) => return Err(why.into()),
            }
        }
    }

    /// A connection for one query, with the query registered on it. With
    /// `fresh`, a new connection is opened when there is room.
    async fn acquire(
        &self,
        shared: &Shared,
        question: &Question,
        fresh: bool,
    ) -> Result<Registered, ProxyError> {
        loop {
            let mut opened = pin!(self.shared.opened.notified());
            let pick = {
                let mut st = lock(&self.shared.state);
                let pick = self.pick(&mut st, question, fresh);
                if matches!(pick, Pick::Wait) {
                    // Registered before the lock is let go, so a connection
                    // that opens meanwhile still wakes this query.
                    opened.as_mut().enable();
                    st.waiting += 1;
                }
                pick
            };
            match pick {
                Pick::Use(reg) => return Ok(reg),
                Pick::Open(opening) => return self.open(shared, question, opening).await,
                Pick::Busy => return Err(ProxyError::Busy),
                Pick::Wait => {
                    let _waiting = WaitingForOpen(&self.shared.state);
                    opened.await;
                }
            }
        }
    }

    /// The choice, under the pool's lock. See the module docs of `proxy`.
    fn pick(&self, st: &mut PoolState, question: &Question, fresh: bool) -> Pick {
        if !fresh {
            // A connection that is not busy.
            for c in &st.conns {
                if let Some(reg) = c.register(question, STREAM_PIPELINE_SOFT) {
                    return Pick::Use(reg);
                }
            }
            // A connection being opened will take this query.
            if st.opening * STREAM_PIPELINE_SOFT > st.waiting {
                return Pick::Wait;
            }
        }
        if st.conns.len() + st.opening < MAX_STREAMS {
            st.opening += 1;
            return Pick::Open(Opening {
                pool: Arc::clone(&self.shared),
            });
        }
        // No room for another: pipeline on the least loaded.
        let least = st
            .conns
            .iter()
            .filter_map(|c| Some((c.load()?, c)))
            .filter(|(n, _)| *n < STREAM_PIPELINE_MAX)
            .min_by_key(|(n, _)| *n);
        if let Some(reg) = least.and_then(|(_, c)| c.register(question, STREAM_PIPELINE_MAX)) {
            return Pick::Use(reg);
        }
        if st.opening > 0 {
            return Pick::Wait;
        }
        Pick::Busy
    }

    /// Opens a connection, starts its task, puts it in the pool and
    /// registers the query on it.
    async fn open(
        &self,
        shared: &Shared,
        question: &Question,
        opening: Opening,
    ) -> Result<Registered, ProxyError> {
        let stream = connect(shared).await?;
        let (tx, rx) = mpsc::channel(STREAM_PIPELINE_MAX);
        let conn = Arc::new(Conn {
            state: Mutex::new(ConnState {
                waiters: Waiters::default(),
                closed: false,
                carried: 0,
                frames: 0,
                idle_since: Instant::now(),
            }),
            tx,
            idle: Notify::new(),
            born: Instant::now(),
            max_age: shared.max_age,
        });
        let task = Task {
            conn: Arc::clone(&conn),
            rx,
            pool: Arc::downgrade(&self.shared),
            counters: Arc::clone(&shared.counters),
            shutdown: shared.shutdown.clone(),
            expire: shared.expire,
            max_idle: shared.max_idle_conns,
        };
        // In the pool with the query registered before the task starts, so
        // the task never sees a new connection as idle.
        let reg = {
            let mut st = lock(&self.shared.state);
            st.conns.push(Arc::clone(&conn));
            conn.register(question, STREAM_PIPELINE_MAX)
        };
        // Made before the task, so that a task dropped before its first
        // poll still takes its connection out of the pool.
        let end = EndGuard {
            conn: Arc::clone(&conn),
            pool: Arc::downgrade(&self.shared),
            finished: false,
        };
        // On the runtime of the thread that opens it: when that runtime
        // ends first (a reload removed a server thread's listener), the
        // task is dropped, and the queries on the connection are sent
        // again on a fresh one (see `EndGuard`).
        match stream {
            Stream::Tcp(s) => tokio::spawn(task.run(s, end)),
            Stream::Tls(s) => tokio::spawn(task.run(*s, end)),
        };
        // Counted as open now; `Opening` wakes the queries waiting for it.
        drop(opening);
        shared
            .counters
            .streams_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        reg.ok_or(ProxyError::Closed)
    }
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects to the upstream (from the source address, if set) and, for
/// DoT, completes the TLS handshake.
async fn connect(shared: &Shared) -> Result<Stream, ProxyError> {
    let socket = if shared.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = shared.source_address {
        socket.bind(std::net::SocketAddr::new(ip, 0))?;
    }
    let tcp = socket.connect(shared.addr).await?;
    tcp.set_nodelay(true)?;
    let Some(tls) = &shared.tls else {
        return Ok(Stream::Tcp(tcp));
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
    match connector.connect(tls.server_name.clone(), tcp).await {
        Ok(s) => Ok(Stream::Tls(Box::new(s))),
        Err(e) => Err(tls_error(e)),
    }
}

/// A handshake error: the TLS reason when there is one.
fn tls_error(e: io::Error) -> ProxyError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(t) => ProxyError::Tls(t.clone()),
        None => ProxyError::Io(e),
    }
}

/// Why a connection's task ended.
enum End {
    /// The proxy was dropped.
    Shutdown,
    /// Idle for `expire`, or one idle connection too many.
    Idle,
    /// The connection broke.
    Broken(Failure),
    /// The connection was retired for not answering; its queries were
    /// told already.
    Retired,
}

/// The task that owns one connection.
struct Task {
    conn: Arc<Conn>,
    rx: mpsc::Receiver<Vec<u8>>,
    pool: Weak<PoolShared>,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<()>,
    expire: Duration,
    max_idle: usize,
}

// === impl Task ===

impl Task {
    async fn run<S>(mut self, stream: S, mut end: EndGuard)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        match self.serve(&mut rd, &mut wr).await {
            End::Broken(why) => {
                tracing::debug!(error = ?why, "proxy: connection broke");
                let mut st = lock(&self.conn.state);
                st.closed = true;
                st.waiters.fail_all(&why);
            }
            // Dropped at once: a silent peer may not read a close_notify.
            End::Retired => {}
            End::Idle | End::Shutdown => {
                // TLS close_notify, then FIN.
                let _ = tokio::time::timeout(CLOSE_GRACE, wr.shutdown()).await;
            }
        }
        end.finished = true;
    }

    /// Writes queries and reads replies until the connection breaks, idles
    /// out or the proxy is dropped.
    async fn serve<S>(&mut self, rd: &mut ReadHalf<S>, wr: &mut WriteHalf<S>) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut buf = vec![0u8; INITIAL_READ_BUF];
        let mut filled = 0usize;
        // The frame being written, and how much of it is written.
        let mut out: Option<Vec<u8>> = None;
        let mut written = 0usize;
        let mut needs_flush = false;
        let mut was_idle = true;
        loop {
            let idle_since = {
                let st = lock(&self.conn.state);
                if st.closed {
                    return End::Retired;
                }
                st.waiters.is_empty().then_some(st.idle_since)
            };
            if let Some(since) = idle_since {
                if !was_idle && self.one_idle_too_many() {
                    return End::Idle;
                }
                if since.elapsed() >= self.expire && self.close_if_idle(self.expire) {
                    return End::Idle;
                }
                if self.conn.aged() && self.close_if_idle(Duration::ZERO) {
                    return End::Idle;
                }
            }
            was_idle = idle_since.is_some();
            // No timer while busy (a query leaving pokes `idle`), nor for
            // an `expire` too long to add.
            let expiry = idle_since.and_then(|s| s.checked_add(self.expire));
            // An idle connection also ends at `max_age`.
            let expiry = match (expiry, idle_since.and(self.conn.max_age)) {
                (Some(e), Some(age)) => {
                    Some(self.conn.born.checked_add(age).map_or(e, |a| a.min(e)))
                }
                (e, _) => e,
            };
            let pending: &[u8] = out.as_deref().and_then(|o| o.get(written..)).unwrap_or(&[]);
            tokio::select! {
                _ = self.shutdown.changed() => return End::Shutdown,
                () = self.conn.idle.notified() => {}
                () = sleep_until(expiry), if expiry.is_some() => {}
                r = rd.read(&mut buf[filled..]) => match r {
                    Ok(0) => return End::Broken(Failure::Closed),
                    Ok(n) => {
                        filled += n;
                        filled = self.deliver_frames(&mut buf, filled);
                    }
                    Err(e) => return End::Broken(Failure::from(&e)),
                },
                r = write_or_flush(wr, pending), if out.is_some() || needs_flush => match r {
                    Ok(n) if out.is_some() => {
                        if n == 0 {
                            return End::Broken(Failure::Io(io::ErrorKind::WriteZero, "connection accepts no more data".into()));
                        }
                        written += n;
                        if out.as_ref().is_some_and(|o| written >= o.len()) {
                            // Queue the next frame now; flush when none is left.
                            out = self.rx.try_recv().ok();
                            written = 0;
                            needs_flush = out.is_none();
                        }
                    }
                    Ok(_) => needs_flush = false,
                    Err(e) => return End::Broken(Failure::from(&e)),
                },
                frame = self.rx.recv(), if out.is_none() => match frame {
                    Some(f) => {
                        out = Some(f);
                        written = 0;
                    }
                    // Unreachable while `conn` holds the sender.
                    None => return End::Shutdown,
                },
            }
        }
    }

    /// Hands every complete frame in `buf[..filled]` to its query, moves
    /// what is left to the front, grows the buffer to fit the next frame,
    /// and returns how much is left.
    fn deliver_frames(&self, buf: &mut Vec<u8>, filled: usize) -> usize {
        let mut start = 0usize;
        let mut next_len = None;
        while let Some(prefix) = buf.get(start..start + 2).filter(|_| start + 2 <= filled) {
            let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
            let Some(frame) = buf
                .get(start + 2..start + 2 + len)
                .filter(|_| start + 2 + len <= filled)
            else {
                next_len = Some(len);
                break;
            };
            let delivered = {
                let mut st = lock(&self.conn.state);
                st.frames += 1;
                let ok = st.waiters.deliver(frame);
                if ok && st.waiters.is_empty() {
                    st.idle_since = Instant::now();
                }
                ok
            };
            if !delivered {
                self.counters
                    .mismatched
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::trace!(len, "proxy: dropped a stream reply that matches no query");
            }
            start += 2 + len;
        }
        buf.copy_within(start..filled, 0);
        let left = filled - start;
        if let Some(len) = next_len
            && buf.len() < 2 + len
        {
            buf.resize(2 + len, 0);
        }
        left
    }

    /// Closes this connection if it is still idle after `expire` (checked
    /// under the pool's lock, so no query registers meanwhile).
    fn close_if_idle(&self, expire: Duration) -> bool {
        let Some(pool) = self.pool.upgrade() else {
            return true;
        };
        let mut ps = lock(&pool.state);
        let mut st = lock(&self.conn.state);
        if !st.waiters.is_empty() || st.idle_since.elapsed() < expire {
            return false;
        }
        st.closed = true;
        drop(st);
        ps.conns.retain(|c| !Arc::ptr_eq(c, &self.conn));
        true
    }

    /// Whether this connection, just become idle, is one more idle
    /// connection than `max_idle_conns` allows; closes it if so.
    fn one_idle_too_many(&self) -> bool {
        if self.max_idle == 0 {
            return false;
        }
        let Some(pool) = self.pool.upgrade() else {
            return true;
        };
        let mut ps = lock(&pool.state);
        let idle = ps.conns.iter().filter(|c| c.load() == Some(0)).count();
        if idle <= self.max_idle {
            return false;
        }
        let mut st = lock(&self.conn.state);
        if !st.waiters.is_empty() {
            return false;
        }
        st.closed = true;
        drop(st);
        ps.conns.retain(|c| !Arc::ptr_eq(c, &self.conn));
        true
    }
}

/// Sleeps until `at`; never returns for `None` (its branch is disabled
/// then anyway).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes some of `pending`, or flushes when it is empty. Returns how many
/// bytes were written (0 for a flush).
async fn write_or_flush<W: AsyncWrite + Unpin>(wr: &mut W, pending: &[u8]) -> io::Result<usize> {
    if pending.is_empty() {
        wr.flush().await.map(|()| 0)
    } else {
        wr.write(pending).await
    }
}

/// Runs when a connection's task ends, however it ends (even when the
/// runtime drops it): the connection leaves the pool and its queries are
/// told that no reply will come: [`Failure::Closed`] when the task ended
/// by itself, [`Failure::Stopped`] when its runtime dropped it (its thread
/// ended), which is local and not the upstream's fault. Either way each
/// query is sent again once, on a fresh connection.
struct EndGuard {
    conn: Arc<Conn>,
    pool: Weak<PoolShared>,
    /// The task ran to its end.
    finished: bool,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let why = if self.finished {
            Failure::Closed
        } else {
            Failure::Stopped
        };
        let pool = self.pool.upgrade();
        let ps = pool.as_ref().map(|p| lock(&p.state));
        let mut st = lock(&self.conn.state);
        st.closed = true;
        st.waiters.fail_all(&why);
        drop(st);
        if let Some(mut ps) = ps {
            ps.conns.retain(|c| !Arc::ptr_eq(c, &self.conn));
        }
    }
}
