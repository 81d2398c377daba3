//! Handover between an old and a new agent on one node, over a unix
//! socket (`--handover-socket PATH`), so a rollout loses no query.
//!
//! A running agent listens on PATH. A new agent started with the same PATH
//! connects and says hello; the old one answers with a list of its
//! listening sockets and passes them (`SCM_RIGHTS`: the same sockets, not
//! copies of their addresses), then a snapshot of its caches. The new
//! agent serves those very sockets (both processes now read them; each
//! datagram and connection goes to one), with the cache warm, and says
//! `serving`. The old one then stops reading them, finishes what it had in
//! flight, closes its copies (the sockets stay open: the new agent holds
//! them, so nothing queued in them is lost, unlike two `SO_REUSEPORT`
//! groups where the one that closes drops its queue), and answers
//! `released`. It then waits, serving nothing, for its SIGTERM, and leaves
//! the node-local interface and rules in place at exit: they are the new
//! agent's now.
//!
//! If the new agent fails before it says `serving`, the connection closes
//! and the old agent goes on as if nothing happened.
//!
//! Wire: frames of a 4-byte big-endian length and a payload; the first
//! frames are JSON. File descriptors ride on one-byte messages after the
//! list, at most [`FDS_PER_MESSAGE`] each.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde_json::{Value, json};

/// File descriptors per message (the kernel's limit is 253).
const FDS_PER_MESSAGE: usize = 200;
/// Most sockets handed over.
const MAX_FDS: usize = 4096;
/// The largest JSON frame.
const MAX_JSON: usize = 1 << 20;
/// The largest cache snapshot accepted over the socket.
pub const MAX_SNAPSHOT: usize = 1 << 30;
/// How long each step of the exchange may take (a snapshot of a large
/// cache included).
const STEP: Duration = Duration::from_secs(30);
/// How long the old agent waits for the new one to serve: the new one may
/// wait for its kubernetes watches to sync (`startup_timeout`, at most 10m).
pub const SERVE_WAIT: Duration = Duration::from_secs(11 * 60);

/// What kind of socket is handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Udp,
    Tcp,
}

impl Kind {
    /// `udp` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// A listening socket offered to a successor.
#[derive(Debug)]
pub struct Offered {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub fd: OwnedFd,
}

/// What a new agent got from the old one.
#[derive(Debug, Default)]
pub struct Inherited {
    udp: Vec<(SocketAddr, UdpSocket)>,
    tcp: Vec<(SocketAddr, TcpListener)>,
    /// Every address the old agent served (including ones whose sockets are
    /// not handed over, such as QUIC's): binding beside them is expected.
    pub served: Vec<(Kind, SocketAddr)>,
    /// The old agent's caches.
    pub snapshot: Vec<u8>,
    /// The old agent's process ID.
    pub pid: u32,
    conn: Option<UnixStream>,
}

impl Inherited {
    /// Whether anything was inherited.
    pub fn active(&self) -> bool {
        self.conn.is_some()
    }

    /// Takes the TCP listener on `addr`, if the old agent had one.
    pub fn take_tcp(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let i = self.tcp.iter().position(|(a, _)| *a == addr)?;
        Some(self.tcp.swap_remove(i).1)
    }

    /// Takes every UDP socket on `addr` (all of a `SO_REUSEPORT` group must
    /// be read, or the datagrams hashed to one left out are lost).
    pub fn take_udp(&mut self, addr: SocketAddr) -> Vec<UdpSocket> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.udp)
            .into_iter()
            .partition(|(a, _)| *a == addr);
        self.udp = rest;
        mine.into_iter().map(|(_, s)| s).collect()
    }

    /// Whether the old agent served `addr` (so binding beside it is a
    /// takeover, not a clash).
    pub fn served(&self, kind: Kind, addr: SocketAddr) -> bool {
        self.served.iter().any(|(k, a)| {
            *k == kind
                && a.port() == addr.port()
                && (a.ip() == addr.ip() || a.ip().is_unspecified() || addr.ip().is_unspecified())
        })
    }

    /// The sockets nobody took: addresses the new configuration no longer
    /// names. They are closed.
    pub fn unused(&self) -> Vec<(Kind, SocketAddr)> {
        self.udp
            .iter()
            .map(|(a, _)| (Kind::Udp, *a))
            .chain(self.tcp.iter().map(|(a, _)| (Kind::Tcp, *a)))
            .collect()
    }

    /// Tells the old agent this one serves, and waits for it to stop
    /// reading the shared sockets. Closes what was not taken.
    pub fn confirm(&mut self) -> io::Result<()> {
        let unused = self.unused();
        if !unused.is_empty() {
            tracing::info!(
                ?unused,
                "handover: closing sockets the new configuration does not use"
            );
        }
        self.udp.clear();
        self.tcp.clear();
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        write_frame(&mut conn, &serde_json::to_vec(&json!({"serving": true}))?)?;
        conn.set_read_timeout(Some(STEP + Duration::from_secs(60)))?;
        let reply = read_json(&mut conn)?;
        if reply.get("released").and_then(Value::as_bool) != Some(true) {
            return Err(io::Error::other(format!("unexpected answer {reply}")));
        }
        Ok(())
    }
}

/// Connects to a running agent on `path` and takes over from it: gets its
/// listening sockets and its cache snapshot. `None` when no agent listens
/// there (no socket file, or a stale one).
pub fn takeover(path: &Path) -> io::Result<Option<Inherited>> {
    let mut conn = match UnixStream::connect(path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("connecting to {}: {e}", path.display()),
            ));
        }
    };
    conn.set_read_timeout(Some(STEP))?;
    conn.set_write_timeout(Some(STEP))?;
    let hello = json!({"hello": "nodedns", "version": crate::VERSION, "pid": std::process::id()});
    write_frame(&mut conn, &serde_json::to_vec(&hello)?)?;
    let offer = read_json(&mut conn)?;
    let pid = offer.get("pid").and_then(Value::as_u64).unwrap_or(0) as u32;
    let mut inherited = Inherited {
        pid,
        ..Inherited::default()
    };
    let parse_entry = |v: &Value| -> io::Result<(Kind, SocketAddr)> {
        let kind = match v.get("kind").and_then(Value::as_str) {
            Some("udp") => Kind::Udp,
            Some("tcp") => Kind::Tcp,
            _ => return Err(bad("a listener without a kind")),
        };
        let addr = v
            .get("addr")
            .and_then(Value::as_str)
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| bad("a listener without an address"))?;
        Ok((kind, addr))
    };
    if let Some(served) = offer.get("served").and_then(Value::as_array) {
        for v in served.iter().take(MAX_FDS) {
            inherited.served.push(parse_entry(v)?);
        }
    }
    let listed = offer
        .get("sockets")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no socket list"))?;
    if listed.len() > MAX_FDS {
        return Err(bad("too many sockets"));
    }
    let entries = listed
        .iter()
        .map(parse_entry)
        .collect::<io::Result<Vec<_>>>()?;
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(entries.len());
    while fds.len() < entries.len() {
        let want = (entries.len() - fds.len()).min(FDS_PER_MESSAGE);
        let got = recv_fds(&conn, want)?;
        if got.len() != want {
            return Err(bad("fewer sockets than listed"));
        }
        fds.extend(got);
    }
    for ((kind, addr), fd) in entries.into_iter().zip(fds) {
        match kind {
            Kind::Udp => inherited.udp.push((addr, UdpSocket::from(fd))),
            Kind::Tcp => inherited.tcp.push((addr, TcpListener::from(fd))),
        }
    }
    inherited.snapshot = read_frame(&mut conn, MAX_SNAPSHOT)?;
    inherited.conn = Some(conn);
    Ok(Some(inherited))
}

/// The old agent's side of one handover, on a connection accepted on the
/// handover socket: reads the hello, asks `offer` for the sockets and
/// the snapshot, sends them, and waits for the new agent to serve. Returns
/// the connection once the new agent serves (the caller releases, then
/// calls [`released`]); an error (the new agent went away) means nothing
/// changes.
pub fn offer(
    mut conn: UnixStream,
    offer: impl FnOnce() -> (Vec<Offered>, Vec<(Kind, SocketAddr)>, Vec<u8>),
) -> io::Result<UnixStream> {
    conn.set_read_timeout(Some(STEP))?;
    conn.set_write_timeout(Some(STEP))?;
    let hello = read_json(&mut conn)?;
    if hello.get("hello").and_then(Value::as_str) != Some("nodedns") {
        return Err(bad("not a nodedns hello"));
    }
    let new_pid = hello.get("pid").and_then(Value::as_u64).unwrap_or(0);
    let (sockets, served, snapshot) = offer();
    let sockets: Vec<Offered> = sockets.into_iter().take(MAX_FDS).collect();
    tracing::info!(
        new_pid,
        sockets = sockets.len(),
        snapshot_bytes = snapshot.len(),
        "handover: a new agent takes over; passing the listening sockets and the cache"
    );
    let list: Vec<Value> = sockets
        .iter()
        .map(|s| json!({"kind": s.kind.as_str(), "addr": s.addr.to_string()}))
        .collect();
    let served: Vec<Value> = served
        .iter()
        .map(|(k, a)| json!({"kind": k.as_str(), "addr": a.to_string()}))
        .collect();
    let header = json!({"pid": std::process::id(), "sockets": list, "served": served});
    write_frame(&mut conn, &serde_json::to_vec(&header)?)?;
    let raw: Vec<RawFd> = sockets.iter().map(|s| s.fd.as_raw_fd()).collect();
    for chunk in raw.chunks(FDS_PER_MESSAGE) {
        send_fds(&conn, chunk)?;
    }
    drop(sockets);
    write_frame(&mut conn, &snapshot)?;
    drop(snapshot);
    conn.set_read_timeout(Some(SERVE_WAIT))?;
    let said = read_json(&mut conn)?;
    if said.get("serving").and_then(Value::as_bool) != Some(true) {
        return Err(bad("the new agent did not say it serves"));
    }
    Ok(conn)
}

/// Tells the new agent the old one no longer reads the shared sockets.
pub fn released(mut conn: UnixStream) -> io::Result<()> {
    write_frame(&mut conn, &serde_json::to_vec(&json!({"released": true}))?)
}

/// The handover socket this agent listens on; removed at drop only if it
/// is still this agent's (a successor binds the same path).
#[derive(Debug)]
pub struct HandoverSocket {
    path: PathBuf,
    /// Device, inode and change time: an inode number alone may be
    /// reused at once by the successor's socket file.
    ino: (u64, u64, i64, i64),
}

impl HandoverSocket {
    /// Binds `path`, replacing a stale socket file (or the one of the agent
    /// this one took over from: that agent is leaving).
    pub fn bind(path: &Path) -> io::Result<(Self, std::os::unix::net::UnixListener)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        let meta = std::fs::metadata(path)?;
        Ok((
            Self {
                path: path.to_path_buf(),
                ino: identity(&meta),
            },
            listener,
        ))
    }
}

impl Drop for HandoverSocket {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::metadata(&self.path)
            && identity(&meta) == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn identity(meta: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("handover: {what}"))
}

fn write_frame(w: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| bad("frame too large"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(payload)?;
    w.flush()
}

fn read_frame(r: &mut impl Read, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(bad("frame too large"));
    }
    let mut buf = Vec::new();
    r.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "handover: frame cut short",
        ));
    }
    Ok(buf)
}

fn read_json(r: &mut impl Read) -> io::Result<Value> {
    let frame = read_frame(r, MAX_JSON)?;
    serde_json::from_slice(&frame).map_err(|e| bad(&format!("bad JSON: {e}")))
}

fn send_fds(conn: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    let byte = [1u8];
    let iov = [IoSlice::new(&byte)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(io::Error::from)?;
    Ok(())
}

fn recv_fds(conn: &UnixStream, want: usize) -> io::Result<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    if msg.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "handover: closed",
        ));
    }
    let mut out = Vec::with_capacity(want);
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            out.extend(fds.into_iter().map(adopt));
        }
    }
    if truncated {
        return Err(bad("file descriptors cut short"));
    }
    Ok(out)
}

/// Takes ownership of a descriptor the kernel just installed in this
/// process for us (`SCM_RIGHTS`).
#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was returned by recvmsg's SCM_RIGHTS control message: a
    // new, open descriptor nothing else in this process owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_sockets_and_snapshot_both_ways() {
        let dir = std::env::temp_dir().join(format!("nodedns-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.sock");
        let (guard, listener) = HandoverSocket::bind(&path).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let (ua, ta) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let old = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let conn = offer(conn, || {
                (
                    vec![
                        Offered {
                            kind: Kind::Udp,
                            addr: ua,
                            fd: udp.try_clone().unwrap().into(),
                        },
                        Offered {
                            kind: Kind::Tcp,
                            addr: ta,
                            fd: tcp.try_clone().unwrap().into(),
                        },
                    ],
                    vec![(Kind::Udp, ua), (Kind::Tcp, ta)],
                    b"snapshot".to_vec(),
                )
            })
            .unwrap();
            released(conn).unwrap();
            // The old agent's own copies close; the sockets live on.
            drop((udp, tcp));
        });
        let mut got = takeover(&path).unwrap().unwrap();
        assert_eq!(got.snapshot, b"snapshot");
        assert!(got.served(Kind::Udp, ua));
        let u = got.take_udp(ua);
        assert_eq!(u.len(), 1);
        let t = got.take_tcp(ta).unwrap();
        got.confirm().unwrap();
        old.join().unwrap();
        // The inherited sockets still work.
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"x", ua).unwrap();
        let mut buf = [0u8; 4];
        u[0].set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(u[0].recv_from(&mut buf).unwrap().0, 1);
        let _c = std::net::TcpStream::connect(ta).unwrap();
        assert!(t.accept().is_ok());
        drop(guard);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_agent_is_none_and_a_new_socket_is_not_removed_by_the_old_guard() {
        let dir = std::env::temp_dir().join(format!("nodedns-handover2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.sock");
        assert!(takeover(&path).unwrap().is_none());
        let (old, l1) = HandoverSocket::bind(&path).unwrap();
        drop(l1);
        // A stale socket file: nobody listens.
        assert!(takeover(&path).unwrap().is_none());
        let (new, _l2) = HandoverSocket::bind(&path).unwrap();
        drop(old);
        assert!(
            path.exists(),
            "the old agent removed its successor's socket"
        );
        drop(new);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_peer_is_an_error_not_a_panic() {
        let (mut a, b) = UnixStream::pair().unwrap();
        write_frame(&mut a, &u32::MAX.to_be_bytes()).unwrap();
        let e = offer(b, || (Vec::new(), Vec::new(), Vec::new())).unwrap_err();
        assert!(e.to_string().contains("handover"), "{e}");
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&(MAX_JSON as u32 + 1).to_be_bytes()).unwrap();
        assert!(
            read_json(&mut b)
                .unwrap_err()
                .to_string()
                .contains("too large")
        );
    }
}
