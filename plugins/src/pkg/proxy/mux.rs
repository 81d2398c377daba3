//! The multiplexed pool: DoH (HTTP/2), DoQ and DoH3 (QUIC) connections,
//! each carrying many queries at once, one per stream.
//!
//! A connection lives in a [`Slot`]: the slot is put in the pool (under
//! the pool's lock, with the first query's stream permit taken) before
//! the connection is made, so that queries arriving during the handshake
//! join it instead of opening more. Each slot has a semaphore of
//! [`MUX_STREAMS`] permits; a query holds one ([`Lease`]) from the moment
//! it picks the slot until it is done, however it ends, and the permit is
//! given back when the lease drops. A slot's task drives the connection
//! (hyper's connection future, h3's, or QUIC's close) and closes it when
//! it has been idle for `expire`, when the proxy is dropped, or when the
//! slot is marked dead (broken, retired); when the task ends, however it
//! ends (its runtime may drop it), the slot leaves the pool.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, OnceCell, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;

use super::wire::Question;
use super::{MUX_CONNS, MUX_STREAMS, ProxyError, Secure, Shared, lock};

/// One multiplexed connection, ready for queries.
pub(super) enum Conn {
    /// DoH over HTTP/2.
    H2(super::https::H2Conn),
    /// DoQ.
    Quic(super::quic::QuicConn),
    /// DoH3.
    H3(super::h3::H3Conn),
}

/// Why an exchange on a multiplexed connection failed.
pub(super) enum MuxError {
    /// The connection is unusable (closed, reset, lost): the query may be
    /// sent again on a fresh one.
    Conn(ProxyError),
    /// Only this query failed (a bad reply, a stream reset): not retried.
    Stream(ProxyError),
}

/// What a connection's driver future and its close need, handed to the
/// slot's task.
pub(super) struct Driver {
    /// Completes when the connection is closed; polling it drives the
    /// connection (HTTP/2, HTTP/3 control streams).
    pub(super) run: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Closes the connection (QUIC's CONNECTION_CLOSE with no error);
    /// dropping `run` is enough for HTTP/2.
    pub(super) close: Box<dyn FnOnce() + Send>,
}

/// The pool.
pub(super) struct MuxPool {
    shared: Arc<PoolShared>,
}

struct PoolShared {
    slots: Mutex<Vec<Arc<Slot>>>,
}

/// One connection: being made, open, or dead.
struct Slot {
    /// The connection once made, or why it could not be (shared by every
    /// query that waited for the handshake).
    conn: OnceCell<Result<Arc<Conn>, Arc<ProxyError>>>,
    /// One permit per stream this connection may still carry.
    permits: Arc<Semaphore>,
    /// Takes no new query: broken, retired, idle out or failed to open.
    dead: AtomicBool,
    born: Instant,
    /// When the last query left (while none is on it).
    idle_since: Mutex<Instant>,
    /// Queries that picked this slot so far (more than 0: reused).
    carried: AtomicU64,
    /// Replies read so far: a query that times out with this unchanged
    /// met a silent connection.
    replies: AtomicU64,
    /// Wakes the task: a query left, or the slot died.
    poke: Notify,
}

impl Slot {
    fn in_use(&self) -> usize {
        MUX_STREAMS.saturating_sub(self.permits.available_permits())
    }

    /// Marks the slot dead and wakes its task, which closes it.
    fn kill(&self) {
        self.dead.store(true, Ordering::Release);
        self.poke.notify_one();
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

/// A query's stream permit on a slot; given back when dropped.
struct Lease {
    slot: Arc<Slot>,
    permit: Option<OwnedSemaphorePermit>,
    reused: bool,
    /// The slot's reply count when the query picked it.
    replies: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.permit.take());
        if self.slot.in_use() == 0 {
            *lock(&self.slot.idle_since) = Instant::now();
            self.slot.poke.notify_one();
        }
    }
}

// === impl MuxPool ===

impl MuxPool {
    pub(super) fn new() -> Self {
        Self {
            shared: Arc::new(PoolShared {
                slots: Mutex::default(),
            }),
        }
    }

    /// Open (or opening) connections that take queries.
    pub(super) fn open_count(&self) -> usize {
        lock(&self.shared.slots)
            .iter()
            .filter(|s| !s.is_dead() && matches!(s.conn.get(), Some(Ok(_))))
            .count()
    }

    /// Streams in use, over all connections.
    pub(super) fn streams_in_use(&self) -> usize {
        lock(&self.shared.slots).iter().map(|s| s.in_use()).sum()
    }

    /// Sends `query` on a multiplexed connection (opening one if needed)
    /// and waits for its reply until `deadline`; a connection that breaks
    /// first is replaced once. Returns the reply (ID 0 as on the wire)
    /// and whether an open connection carried it.
    pub(super) async fn exchange(
        &self,
        shared: &Shared,
        secure: Secure,
        query: &[u8],
        deadline: Instant,
    ) -> Result<(Vec<u8>, bool), ProxyError> {
        let question = Question::of_query(query).ok_or(ProxyError::Malformed)?;
        // The wire form: ID 0.
        let mut wire = query.to_vec();
        if let Some(id) = wire.get_mut(..2) {
            id.copy_from_slice(&[0, 0]);
        }
        let mut on: Option<(Arc<Slot>, u64)> = None;
        let run = self.exchange_inner(shared, secure, &question, &wire, &mut on);
        match tokio::time::timeout_at(deadline, run).await {
            Ok(r) => r,
            Err(_) => {
                if let Some((slot, replies)) = on
                    && slot.replies.load(Ordering::Acquire) == replies
                    && !slot.dead.swap(true, Ordering::AcqRel)
                {
                    // Read nothing while this query waited: retired, as a
                    // silent TCP connection is.
                    slot.poke.notify_one();
                    shared
                        .counters
                        .streams_retired
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(upstream = %shared.addr, "proxy: multiplexed connection stopped answering; retired");
                }
                Err(ProxyError::Timeout)
            }
        }
    }

    async fn exchange_inner(
        &self,
        shared: &Shared,
        secure: Secure,
        question: &Question,
        wire: &[u8],
        on: &mut Option<(Arc<Slot>, u64)>,
    ) -> Result<(Vec<u8>, bool), ProxyError> {
        let mut fresh = false;
        loop {
            let lease = self.pick(shared, fresh)?;
            *on = Some((Arc::clone(&lease.slot), lease.replies));
            let conn = self.connection(shared, secure, &lease.slot).await?;
            let result = match &*conn {
                Conn::H2(c) => c.exchange(shared, wire).await,
                Conn::Quic(c) => c.exchange(wire).await,
                Conn::H3(c) => c.exchange(shared, wire).await,
            };
            let result = result.and_then(|reply| {
                // Anything read counts as the connection being alive.
                lease.slot.replies.fetch_add(1, Ordering::AcqRel);
                check_reply(question, reply)
            });
            match result {
                Ok(reply) => return Ok((reply, lease.reused)),
                Err(MuxError::Stream(e)) => {
                    if let (Conn::Quic(c), ProxyError::BadReply(_)) = (&*conn, &e) {
                        // RFC 9250 §4.3.3: a protocol error is fatal to
                        // the connection.
                        c.protocol_error();
                        lease.slot.kill();
                    }
                    return Err(e);
                }
                Err(MuxError::Conn(e)) => {
                    lease.slot.kill();
                    if fresh {
                        return Err(e);
                    }
                    tracing::debug!(upstream = %shared.addr, error = %e, "proxy: multiplexed connection broke; retrying on a fresh one");
                    fresh = true;
                }
            }
        }
    }

    /// A stream permit on a slot: the oldest live one with a free stream,
    /// else a new slot when there is room (always a new one when `fresh`,
    /// if there is room), else `Busy`.
    fn pick(&self, shared: &Shared, fresh: bool) -> Result<Lease, ProxyError> {
        let mut slots = lock(&self.shared.slots);
        slots.retain(|s| !s.is_dead());
        let usable = |s: &Arc<Slot>| shared.max_age.is_none_or(|age| s.born.elapsed() < age);
        let lease = |slot: &Arc<Slot>, permit| Lease {
            reused: slot.carried.fetch_add(1, Ordering::Relaxed) > 0,
            replies: slot.replies.load(Ordering::Acquire),
            slot: Arc::clone(slot),
            permit: Some(permit),
        };
        if !fresh || slots.len() >= MUX_CONNS {
            for s in slots.iter().filter(|s| usable(s)) {
                if let Ok(p) = Arc::clone(&s.permits).try_acquire_owned() {
                    return Ok(lease(s, p));
                }
            }
        }
        // Aged slots still count against the limit until their queries
        // are done.
        if slots.len() >= MUX_CONNS {
            return Err(ProxyError::Busy);
        }
        let slot = Arc::new(Slot {
            conn: OnceCell::new(),
            permits: Arc::new(Semaphore::new(MUX_STREAMS)),
            dead: AtomicBool::new(false),
            born: Instant::now(),
            idle_since: Mutex::new(Instant::now()),
            carried: AtomicU64::new(0),
            replies: AtomicU64::new(0),
            poke: Notify::new(),
        });
        let permit = Arc::clone(&slot.permits)
            .try_acquire_owned()
            .map_err(|_| ProxyError::Busy)?;
        slots.push(Arc::clone(&slot));
        Ok(lease(&slot, permit))
    }

    /// The slot's connection, made by the first query that needs it (the
    /// others wait for the same handshake). A failed handshake fails
    /// every query that waited for it, and the slot leaves the pool.
    async fn connection(
        &self,
        shared: &Shared,
        secure: Secure,
        slot: &Arc<Slot>,
    ) -> Result<Arc<Conn>, ProxyError> {
        let made = slot
            .conn
            .get_or_init(|| async {
                let r = match secure {
                    Secure::Https(method) => super::https::connect(shared, method)
                        .await
                        .map(|(c, d)| (Conn::H2(c), d)),
                    Secure::Quic => super::quic::connect_doq(shared)
                        .await
                        .map(|(c, d)| (Conn::Quic(c), d)),
                    Secure::H3(method) => super::h3::connect(shared, method)
                        .await
                        .map(|(c, d)| (Conn::H3(c), d)),
                };
                match r {
                    Ok((conn, driver)) => {
                        shared.counters.mux_opened.fetch_add(1, Ordering::Relaxed);
                        let task = SlotTask {
                            slot: Arc::clone(slot),
                            pool: Arc::downgrade(&self.shared),
                            shutdown: shared.shutdown.clone(),
                            expire: shared.expire,
                        };
                        // Made before the spawn, so that a task dropped
                        // before its first poll still frees its slot.
                        let end = EndGuard {
                            slot: Arc::clone(slot),
                            pool: Arc::downgrade(&self.shared),
                        };
                        tokio::spawn(task.run(driver, end));
                        Ok(Arc::new(conn))
                    }
                    Err(e) => {
                        slot.kill();
                        lock(&self.shared.slots).retain(|s| !Arc::ptr_eq(s, slot));
                        Err(Arc::new(e))
                    }
                }
            })
            .await;
        match made {
            Ok(c) if !slot.is_dead() => Ok(Arc::clone(c)),
            Ok(_) => Err(ProxyError::Closed),
            Err(e) => Err(replay(e)),
        }
    }
}

/// A reply that a multiplexed transport read whole: ID 0 (as sent) and
/// the query's question, else a bad reply.
fn check_reply(question: &Question, reply: Vec<u8>) -> Result<Vec<u8>, MuxError> {
    if reply.len() < crate::request::HEADER_LEN {
        return Err(MuxError::Stream(ProxyError::BadReply(format!(
            "{} bytes, shorter than a DNS header",
            reply.len()
        ))));
    }
    if reply[..2] != [0, 0] {
        return Err(MuxError::Stream(ProxyError::BadReply(
            "message ID is not 0, as the query's was".into(),
        )));
    }
    if !question.answered_by(&reply) {
        return Err(MuxError::Stream(ProxyError::BadReply(
            "not a response to the query's question".into(),
        )));
    }
    Ok(reply)
}

/// The same error again, for each query that waited on one handshake.
fn replay(e: &ProxyError) -> ProxyError {
    match e {
        ProxyError::Timeout => ProxyError::Timeout,
        ProxyError::Busy => ProxyError::Busy,
        ProxyError::Io(e) => ProxyError::Io(std::io::Error::new(e.kind(), e.to_string())),
        ProxyError::Tls(e) => ProxyError::Tls(e.clone()),
        ProxyError::Malformed => ProxyError::Malformed,
        ProxyError::Closed => ProxyError::Closed,
        ProxyError::BadReply(s) => ProxyError::BadReply(s.clone()),
        ProxyError::Stopped => ProxyError::Stopped,
    }
}

/// The task that owns one connection's driver.
struct SlotTask {
    slot: Arc<Slot>,
    pool: Weak<PoolShared>,
    shutdown: watch::Receiver<()>,
    expire: Duration,
}

impl SlotTask {
    async fn run(mut self, driver: Driver, _end: EndGuard) {
        let Driver { mut run, close } = driver;
        loop {
            if self.slot.is_dead() {
                break;
            }
            let idle_until = (self.slot.in_use() == 0)
                .then(|| *lock(&self.slot.idle_since))
                .and_then(|since| since.checked_add(self.expire));
            if idle_until.is_some_and(|t| t <= Instant::now()) && self.close_if_idle() {
                break;
            }
            tokio::select! {
                () = &mut run => {
                    tracing::debug!("proxy: multiplexed connection closed");
                    break;
                }
                _ = self.shutdown.changed() => break,
                () = self.slot.poke.notified() => {}
                () = sleep_until(idle_until), if idle_until.is_some() => {}
            }
        }
        self.slot.kill();
        close();
    }

    /// Marks the slot dead if no query is on it (under the pool's lock,
    /// where queries pick slots, so none picks it meanwhile).
    fn close_if_idle(&self) -> bool {
        let Some(pool) = self.pool.upgrade() else {
            return true;
        };
        let mut slots = lock(&pool.slots);
        if self.slot.in_use() != 0 {
            return false;
        }
        self.slot.dead.store(true, Ordering::Release);
        slots.retain(|s| !Arc::ptr_eq(s, &self.slot));
        true
    }
}

/// Runs when a slot's task ends, however it ends: the slot is dead and
/// out of the pool.
struct EndGuard {
    slot: Arc<Slot>,
    pool: Weak<PoolShared>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.slot.dead.store(true, Ordering::Release);
        if let Some(pool) = self.pool.upgrade() {
            lock(&pool.slots).retain(|s| !Arc::ptr_eq(s, &self.slot));
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
