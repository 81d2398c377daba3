//! Cache snapshots: every servable entry of a set of caches, written by one
//! process and loaded by another (a warm restart from a file, or a handover
//! over a unix socket), so the new process answers warmed names from its
//! cache at once.
//!
//! # Format (version 1, integers big-endian)
//!
//! ```text
//! header (60 bytes)
//!   magic     8  b"NDNSSNAP"
//!   version   2  1
//!   reserved  2  0
//!   written   8  wall-clock time of the export, ms since the Unix epoch
//!   body_len  8  bytes of body that follow
//!   sha256   32  over the 28 header bytes above, then the body
//! body
//!   caches    2  count, then per cache: id_len (2) and its identity
//!                (UTF-8, at most 4096 bytes; CacheInspect::snapshot_id)
//!   entries   4  count, then per entry (13 bytes + the reply):
//!                cache (2, index into the table above), key_bits (1:
//!                DO = 1, CD = 2), fresh_for (4), dead_in (4, seconds from
//!                `written`), wire_len (2), the reply without OPT
//! ```
//!
//! The question in the reply is the key's name, type and class; the tier
//! (success or denial) and the TTL offsets are found again on import by
//! analysing the reply, as when it first came from upstream.
//!
//! A snapshot is decoded and verified whole before anything is imported: a
//! truncated, corrupt or oversized one imports nothing and says why. On
//! import the wall time elapsed since `written` (rounded up to the second;
//! 0 if the clock went back) is taken off every entry's times; entries past
//! them are dropped, as are entries of caches whose identity is not among
//! the caches given (counted in [`Loaded::unknown_cache`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::digest;

use crate::pkg::inspect::{CacheInspect, ImportStats, SnapshotEntry};

/// The first 8 bytes of every snapshot.
pub const MAGIC: &[u8; 8] = b"NDNSSNAP";
/// The format written, and the only one read.
pub const VERSION: u16 = 1;
/// Size of the header.
pub const HEADER_LEN: usize = 60;
/// Longest cache identity.
pub const MAX_ID_LEN: usize = 4096;
/// The default bound on a whole snapshot: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// Bytes of an entry before its reply.
const ENTRY_FIXED: usize = 13;
/// The shortest reply: a header and a question for the root.
const MIN_WIRE: usize = 12 + 5;
/// Offset of the checksum in the header.
const SUM_AT: usize = 28;

/// Bounds on what a decode accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest snapshot (header and body) read; a larger one is refused
    /// before its body is read.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// What an encode wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Saved {
    /// Caches written.
    pub caches: usize,
    /// Caches left out because an earlier one has the same identity (two
    /// caches a snapshot could not tell apart; none in a valid Corefile).
    pub skipped_caches: usize,
    /// Entries written.
    pub entries: u64,
    /// Bytes written, header included.
    pub bytes: u64,
}

/// What a decode imported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Entries in the snapshot.
    pub entries: u64,
    /// Entries of a cache whose identity is not among the caches given (the
    /// Corefile changed), dropped.
    pub unknown_cache: u64,
    /// Wall time from the export to the decode (0 if the clock went back).
    pub age: Duration,
    /// What the caches did with the rest.
    pub import: ImportStats,
}

/// Why a snapshot was not imported. Nothing was, whatever the error.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading failed.
    #[error("reading the snapshot: {0}")]
    Io(#[from] io::Error),
    /// It does not start with [`MAGIC`].
    #[error("not a nodedns cache snapshot (bad magic)")]
    Magic,
    /// A format this build does not read.
    #[error("snapshot version {0} not supported (this build reads {VERSION})")]
    Version(u16),
    /// Larger than [`Limits::max_bytes`].
    #[error("snapshot of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Its size (header and body).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// It ends before its header or body does.
    #[error("snapshot truncated: {got} of {want} bytes")]
    Truncated {
        /// Bytes read.
        got: u64,
        /// Bytes the header announces (or the header's size).
        want: u64,
    },
    /// The checksum does not match: a corrupt snapshot.
    #[error("snapshot checksum mismatch (corrupt)")]
    Checksum,
    /// The checksum matches but the body does not read.
    #[error("malformed snapshot: {0}")]
    Malformed(&'static str),
}

/// Encodes every servable entry of `caches` into a snapshot in memory.
/// Each cache is read shard by shard; hits go on meanwhile.
pub fn encode_to_vec(caches: &[Arc<dyn CacheInspect>]) -> (Vec<u8>, Saved) {
    // Taken first: entries exported later count from an earlier time, so
    // they can only lose TTL, never gain it.
    let written = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut saved = Saved::default();
    let mut out = vec![0u8; HEADER_LEN];
    // The cache table: each identity once, at most u16::MAX of them.
    let mut table: Vec<&Arc<dyn CacheInspect>> = Vec::new();
    for c in caches {
        let id = c.snapshot_id();
        let dup = table.iter().any(|t| t.snapshot_id() == id);
        if dup || id.len() > MAX_ID_LEN || table.len() >= usize::from(u16::MAX) {
            saved.skipped_caches += 1;
            continue;
        }
        table.push(c);
    }
    out.extend_from_slice(&(table.len() as u16).to_be_bytes());
    for c in &table {
        let id = c.snapshot_id().as_bytes();
        out.extend_from_slice(&(id.len() as u16).to_be_bytes());
        out.extend_from_slice(id);
    }
    let count_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut count: u32 = 0;
    for (i, c) in table.iter().enumerate() {
        let index = (i as u16).to_be_bytes();
        c.export(&mut |e| {
            let Ok(len) = u16::try_from(e.wire.len()) else {
                return;
            };
            let dead_in = e.dead_in.max(e.fresh_for);
            if count == u32::MAX || dead_in == 0 || e.wire.len() < MIN_WIRE {
                return;
            }
            count += 1;
            out.extend_from_slice(&index);
            out.push(e.key_bits);
            out.extend_from_slice(&e.fresh_for.to_be_bytes());
            out.extend_from_slice(&dead_in.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(e.wire);
        });
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
    let body_len = (out.len() - HEADER_LEN) as u64;
    out[..8].copy_from_slice(MAGIC);
    out[8..10].copy_from_slice(&VERSION.to_be_bytes());
    out[10..12].copy_from_slice(&[0, 0]);
    out[12..20].copy_from_slice(&written.to_be_bytes());
    out[20..28].copy_from_slice(&body_len.to_be_bytes());
    let sum = checksum(&out[..SUM_AT], &out[HEADER_LEN..]);
    out[SUM_AT..HEADER_LEN].copy_from_slice(sum.as_ref());
    saved.caches = table.len();
    saved.entries = u64::from(count);
    saved.bytes = out.len() as u64;
    (out, saved)
}

/// Encodes `caches` (see [`encode_to_vec`]) into `w`. The snapshot is built
/// in memory first, so a slow writer never holds a cache's lock.
pub fn encode(caches: &[Arc<dyn CacheInspect>], w: &mut impl Write) -> io::Result<Saved> {
    let (bytes, saved) = encode_to_vec(caches);
    w.write_all(&bytes)?;
    w.flush()?;
    Ok(saved)
}

/// Reads one snapshot from `r` (exactly its bytes: what follows is left
/// unread), verifies it whole, and imports it into `caches`.
pub fn decode(
    r: &mut impl Read,
    caches: &[Arc<dyn CacheInspect>],
    limits: &Limits,
) -> Result<Loaded, SnapshotError> {
    decode_at(r, caches, limits, SystemTime::now())
}

/// [`decode`] with the wall-clock time taken as `now`.
pub fn decode_at(
    r: &mut impl Read,
    caches: &[Arc<dyn CacheInspect>],
    limits: &Limits,
    now: SystemTime,
) -> Result<Loaded, SnapshotError> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_full(r, &mut header)?;
    if got < HEADER_LEN {
        return Err(SnapshotError::Truncated {
            got: got as u64,
            want: HEADER_LEN as u64,
        });
    }
    let body_len = check_header(&header, limits)?;
    let mut body = Vec::new();
    r.take(body_len).read_to_end(&mut body)?;
    if (body.len() as u64) < body_len {
        return Err(SnapshotError::Truncated {
            got: (HEADER_LEN + body.len()) as u64,
            want: HEADER_LEN as u64 + body_len,
        });
    }
    import(&header, &body, caches, now)
}

/// Decodes a snapshot held in memory: it must be exactly one snapshot.
pub fn decode_slice(
    bytes: &[u8],
    caches: &[Arc<dyn CacheInspect>],
    limits: &Limits,
) -> Result<Loaded, SnapshotError> {
    decode_slice_at(bytes, caches, limits, SystemTime::now())
}

/// [`decode_slice`] with the wall-clock time taken as `now`.
pub fn decode_slice_at(
    bytes: &[u8],
    caches: &[Arc<dyn CacheInspect>],
    limits: &Limits,
    now: SystemTime,
) -> Result<Loaded, SnapshotError> {
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(SnapshotError::Truncated {
            got: bytes.len() as u64,
            want: HEADER_LEN as u64,
        });
    };
    let body_len = check_header(header, limits)?;
    if (body.len() as u64) < body_len {
        return Err(SnapshotError::Truncated {
            got: bytes.len() as u64,
            want: HEADER_LEN as u64 + body_len,
        });
    }
    if body.len() as u64 > body_len {
        return Err(SnapshotError::Malformed("bytes after the snapshot"));
    }
    import(header, body, caches, now)
}

/// Writes a snapshot of `caches` to `path` atomically: to a temporary file
/// beside it (mode 0600: it holds the names the node asked for), synced,
/// then renamed over `path`, and the directory synced. A crash leaves the
/// old snapshot or the new one, never half of one.
pub fn save(path: &Path, caches: &[Arc<dyn CacheInspect>]) -> io::Result<Saved> {
    let (bytes, saved) = encode_to_vec(caches);
    let tmp = temp_path(path);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(saved)
}

/// Loads the snapshot at `path` into `caches` (see [`decode`]). A missing
/// file is [`SnapshotError::Io`] with [`io::ErrorKind::NotFound`]; a file
/// over the limit is refused before it is read.
pub fn load(
    path: &Path,
    caches: &[Arc<dyn CacheInspect>],
    limits: &Limits,
) -> Result<Loaded, SnapshotError> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    if size > limits.max_bytes {
        return Err(SnapshotError::TooLarge {
            size,
            limit: limits.max_bytes,
        });
    }
    let mut bytes = Vec::new();
    f.take(limits.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    decode_slice(&bytes, caches, limits)
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

fn checksum(header: &[u8], body: &[u8]) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(header);
    ctx.update(body);
    ctx.finish()
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Checks magic, version and size; returns the body's length.
fn check_header(h: &[u8; HEADER_LEN], limits: &Limits) -> Result<u64, SnapshotError> {
    if &h[..8] != MAGIC {
        return Err(SnapshotError::Magic);
    }
    let version = u16::from_be_bytes([h[8], h[9]]);
    if version != VERSION {
        return Err(SnapshotError::Version(version));
    }
    let body_len = be_u64(&h[20..28]);
    let size = body_len.saturating_add(HEADER_LEN as u64);
    if size > limits.max_bytes {
        return Err(SnapshotError::TooLarge {
            size,
            limit: limits.max_bytes,
        });
    }
    Ok(body_len)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Verifies, parses whole, then imports.
fn import(
    header: &[u8; HEADER_LEN],
    body: &[u8],
    caches: &[Arc<dyn CacheInspect>],
    now: SystemTime,
) -> Result<Loaded, SnapshotError> {
    if header[10..12] != [0, 0] {
        return Err(SnapshotError::Malformed("reserved header bytes set"));
    }
    let sum = checksum(&header[..SUM_AT], body);
    if sum.as_ref() != &header[SUM_AT..] {
        return Err(SnapshotError::Checksum);
    }
    let (ids, groups) = parse(body)?;
    let written = UNIX_EPOCH + Duration::from_millis(be_u64(&header[12..20]));
    let age = now.duration_since(written).unwrap_or(Duration::ZERO);
    // Whole seconds, rounded up: an entry is never served longer than its
    // TTL.
    let elapsed = age.as_secs() + u64::from(age.subsec_nanos() > 0);
    let mut loaded = Loaded {
        entries: groups.iter().map(|g| g.len() as u64).sum(),
        age,
        ..Loaded::default()
    };
    for (id, entries) in ids.iter().zip(&groups) {
        let mut same = caches.iter().filter(|c| c.snapshot_id().as_bytes() == *id);
        // An identity two caches share maps to neither.
        let (Some(target), None) = (same.next(), same.next()) else {
            loaded.unknown_cache += entries.len() as u64;
            continue;
        };
        if !entries.is_empty() {
            loaded.import.add(&target.import(entries, elapsed));
        }
    }
    Ok(loaded)
}

/// A cursor over the body that fails with [`SnapshotError::Malformed`].
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.rest.len() < n {
            return Err(SnapshotError::Malformed("body ends inside a record"));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The body's cache identities and each one's entries.
type Parsed<'a> = (Vec<&'a [u8]>, Vec<Vec<SnapshotEntry<'a>>>);

fn parse(body: &[u8]) -> Result<Parsed<'_>, SnapshotError> {
    let mut c = Cursor { rest: body };
    let n_caches = usize::from(c.u16()?);
    // Each identity takes at least its 2-byte length.
    if n_caches * 2 > c.rest.len() {
        return Err(SnapshotError::Malformed("more caches than the body holds"));
    }
    let mut ids = Vec::with_capacity(n_caches);
    for _ in 0..n_caches {
        let len = usize::from(c.u16()?);
        if len > MAX_ID_LEN {
            return Err(SnapshotError::Malformed("cache identity too long"));
        }
        ids.push(c.take(len)?);
    }
    let n = c.u32()? as usize;
    if n.saturating_mul(ENTRY_FIXED + MIN_WIRE) > c.rest.len() {
        return Err(SnapshotError::Malformed("more entries than the body holds"));
    }
    let mut groups: Vec<Vec<SnapshotEntry<'_>>> = vec![Vec::new(); n_caches];
    for _ in 0..n {
        let cache = usize::from(c.u16()?);
        let key_bits = c.take(1)?[0];
        let fresh_for = c.u32()?;
        let dead_in = c.u32()?;
        let len = usize::from(c.u16()?);
        let wire = c.take(len)?;
        if len < MIN_WIRE {
            return Err(SnapshotError::Malformed("entry shorter than a DNS message"));
        }
        let group = groups.get_mut(cache).ok_or(SnapshotError::Malformed(
            "entry of a cache not in the table",
        ))?;
        group.push(SnapshotEntry {
            key_bits,
            fresh_for,
            dead_in,
            wire,
        });
    }
    if !c.rest.is_empty() {
        return Err(SnapshotError::Malformed("bytes after the last entry"));
    }
    Ok((ids, groups))
}
