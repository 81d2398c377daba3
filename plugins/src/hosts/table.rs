//! The hosts table: names to addresses and addresses to names, read from
//! hosts(5) text the way CoreDNS's `plugin/hosts/hostsfile.go` reads it.
//!
//! A line is `IP NAME [NAME...]`; `#` starts a comment anywhere on a line.
//! Lines with fewer than two fields, or whose first field is not an IP
//! address, are skipped. An IPv6 zone (`fe80::1%eth0`) is dropped, and an
//! IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) counts as IPv4. Names
//! outside the plugin's zones, and names that are not valid DNS names, are
//! skipped. Reading refuses files larger than [`MAX_FILE_SIZE`] and tables
//! with more than [`MAX_ENTRIES`] entries; the caller then keeps its old
//! table.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::pkg::zones;
use crate::request::name_to_wire;

/// The largest hosts file read (ad-blocking lists run to tens of MiB).
pub(crate) const MAX_FILE_SIZE: u64 = 64 << 20;
/// The most entries (address records plus reverse records) one table holds.
pub(crate) const MAX_ENTRIES: usize = 4_000_000;

/// The addresses of one name, in file order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Addrs {
    /// IPv4 addresses (A records).
    pub(crate) v4: Vec<Ipv4Addr>,
    /// IPv6 addresses (AAAA records).
    pub(crate) v6: Vec<Ipv6Addr>,
}

/// What governs which entries a table keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rules {
    /// The plugin's zones, lower-cased wire form: names outside are skipped.
    pub(crate) origins: Vec<Vec<u8>>,
    /// Whether to keep address-to-name entries for PTR queries.
    pub(crate) auto_reverse: bool,
}

/// Why a table was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// Opening, reading or stat-ing the file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file is larger than allowed.
    #[error(
        "{path} is larger than {max} bytes; keeping the previous entries (split the file or trim it)"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// The text has more entries than allowed.
    #[error("more than {max} entries; keeping the previous entries (split the file or trim it)")]
    TooManyEntries {
        /// The limit.
        max: usize,
    },
}

/// Names to addresses and addresses to names.
#[derive(Debug, Default, Clone)]
pub(crate) struct Table {
    /// Lower-cased wire-form name → its addresses.
    names: HashMap<Arc<[u8]>, Addrs>,
    /// Address → the names that have it (lower-cased wire form), in order.
    reverse: HashMap<IpAddr, Vec<Arc<[u8]>>>,
    /// Entries, counted as CoreDNS's `Map.Len` counts them.
    entries: usize,
}

impl Table {
    /// Parses hosts(5) text.
    pub(crate) fn parse(text: &[u8], rules: &Rules) -> Result<Self, LoadError> {
        let mut t = Self::default();
        for line in text.split(|&b| b == b'\n') {
            let line = match line.iter().position(|&b| b == b'#') {
                Some(i) => &line[..i],
                None => line,
            };
            let mut fields = line.split(|&b| is_space(b)).filter(|f| !f.is_empty());
            let Some(ip) = fields.next().and_then(parse_ip) else {
                continue;
            };
            for name in fields {
                let Some(wire) = std::str::from_utf8(name).ok().and_then(name_to_wire) else {
                    continue;
                };
                if zones::matches(&rules.origins, &wire).is_none() {
                    continue;
                }
                let added = if rules.auto_reverse { 2 } else { 1 };
                if t.entries + added > MAX_ENTRIES {
                    return Err(LoadError::TooManyEntries { max: MAX_ENTRIES });
                }
                t.add(&wire, ip, rules.auto_reverse);
            }
        }
        Ok(t)
    }

    fn add(&mut self, wire: &[u8], ip: IpAddr, auto_reverse: bool) {
        let key: Arc<[u8]> = match self.names.get_key_value(wire) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::from(wire),
        };
        let addrs = self.names.entry(Arc::clone(&key)).or_default();
        match ip {
            IpAddr::V4(v4) => addrs.v4.push(v4),
            IpAddr::V6(v6) => addrs.v6.push(v6),
        }
        self.entries += 1;
        if auto_reverse {
            self.reverse.entry(ip).or_default().push(key);
            self.entries += 1;
        }
    }

    /// This table (the file's) followed by `inline`'s entries: for a name
    /// or address in both, the file's come first, as CoreDNS's lookups
    /// append the inline map's results to the file's.
    pub(crate) fn merged(mut self, inline: &Self) -> Self {
        for (name, addrs) in &inline.names {
            let e = self.names.entry(Arc::clone(name)).or_default();
            e.v4.extend_from_slice(&addrs.v4);
            e.v6.extend_from_slice(&addrs.v6);
        }
        for (ip, names) in &inline.reverse {
            self.reverse
                .entry(*ip)
                .or_default()
                .extend(names.iter().cloned());
        }
        self.entries += inline.entries;
        self
    }

    /// The addresses of a (lower-cased wire form) name.
    pub(crate) fn lookup(&self, name: &[u8]) -> Option<&Addrs> {
        self.names.get(name)
    }

    /// The names (lower-cased wire form) that have address `ip`.
    pub(crate) fn names_for(&self, ip: IpAddr) -> &[Arc<[u8]>] {
        self.reverse.get(&ip).map_or(&[], Vec::as_slice)
    }

    /// Entries, as CoreDNS counts them for `coredns_hosts_entries`:
    /// address records plus reverse records.
    pub(crate) fn len(&self) -> usize {
        self.entries
    }
}

/// White space as Go's `bytes.Fields` sees it, for ASCII.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

/// Parses an address field: an IPv6 zone is dropped, and an IPv4-mapped
/// IPv6 address is IPv4 (Go's `net.ParseIP` then `To4`).
fn parse_ip(field: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(field).ok()?;
    let s = s.split_once('%').map_or(s, |(addr, _zone)| addr);
    Some(canonical(s.parse().ok()?))
}

/// An IPv4-mapped IPv6 address as IPv4; anything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address a reverse name stands for (`1.2.0.192.in-addr.arpa.` →
/// 192.0.2.1; 32 nibbles under `ip6.arpa.` → an IPv6 address), from the
/// lower-cased wire form. `None` for anything else. Never allocates.
pub(crate) fn reverse_addr(qname: &[u8]) -> Option<IpAddr> {
    const MAX_LABELS: usize = 34;
    let mut labels: [&[u8]; MAX_LABELS] = [&[]; MAX_LABELS];
    let mut n = 0usize;
    let mut pos = 0usize;
    loop {
        let len = *qname.get(pos)? as usize;
        if len == 0 {
            break;
        }
        if n == MAX_LABELS {
            return None;
        }
        labels[n] = qname.get(pos + 1..pos + 1 + len)?;
        n += 1;
        pos += 1 + len;
    }
    let (body, suffix) = labels[..n].split_at(n.checked_sub(2)?);
    match suffix {
        [a, b"arpa"] if *a == b"in-addr" && body.len() == 4 => {
            let mut octets = [0u8; 4];
            for (o, label) in octets.iter_mut().rev().zip(body) {
                *o = parse_octet(label)?;
            }
            Some(IpAddr::V4(Ipv4Addr::from(octets)))
        }
        [a, b"arpa"] if *a == b"ip6" && body.len() == 32 => {
            let mut bits = 0u128;
            for label in body.iter().rev() {
                let [c] = label else { return None };
                let nibble = (*c as char).to_digit(16)?;
                bits = (bits << 4) | u128::from(nibble);
            }
            Some(canonical(IpAddr::V6(Ipv6Addr::from(bits))))
        }
        _ => None,
    }
}

/// A decimal octet as Go's `net.ParseIP` reads one: no sign, no leading zero.
fn parse_octet(label: &[u8]) -> Option<u8> {
    if label.is_empty() || label.len() > 3 || (label.len() > 1 && label[0] == b'0') {
        return None;
    }
    let mut v = 0u16;
    for &c in label {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u16::from(c - b'0');
    }
    u8::try_from(v).ok()
}

/// What identifies one version of a file: CoreDNS re-reads when the
/// modification time or the size changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl Stamp {
    /// When the file was last modified, if the system says.
    pub(crate) fn modified(&self) -> Option<SystemTime> {
        self.modified
    }
}

/// The file and what the plugin mixes into every table built from it.
#[derive(Debug)]
pub(crate) struct Source {
    /// The hosts file.
    pub(crate) path: PathBuf,
    /// Which entries to keep.
    pub(crate) rules: Rules,
    /// Entries from the Corefile, appended to the file's.
    pub(crate) inline: Table,
    /// The largest file read.
    pub(crate) max_size: u64,
}

/// What [`Source::load`] found.
#[derive(Debug)]
pub(crate) enum Loaded {
    /// The file has the stamp it had last time.
    Unchanged,
    /// A new table, built from the file as stamped.
    Table(Table, Stamp),
    /// The file changed but was refused; the stamp is remembered so the
    /// refusal is logged once per change.
    Refused(LoadError, Stamp),
}

impl Source {
    /// Reads the file unless it has stamp `last`. Blocking: run it on a
    /// blocking thread from async code.
    pub(crate) fn load(&self, last: Option<&Stamp>) -> Result<Loaded, LoadError> {
        let io_err = |source| LoadError::Io {
            path: self.path.clone(),
            source,
        };
        let file = File::open(&self.path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        let stamp = Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
        };
        if last == Some(&stamp) {
            return Ok(Loaded::Unchanged);
        }
        match self.read(file, meta.len()) {
            Ok(table) => Ok(Loaded::Table(table, stamp)),
            Err(e) => Ok(Loaded::Refused(e, stamp)),
        }
    }

    fn read(&self, file: File, len: u64) -> Result<Table, LoadError> {
        let too_large = || LoadError::TooLarge {
            path: self.path.clone(),
            max: self.max_size,
        };
        if len > self.max_size {
            return Err(too_large());
        }
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        // The file may grow while it is read: read one byte past the limit to see.
        file.take(self.max_size.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|source| LoadError::Io {
                path: self.path.clone(),
                source,
            })?;
        if buf.len() as u64 > self.max_size {
            return Err(too_large());
        }
        Ok(Table::parse(&buf, &self.rules)?.merged(&self.inline))
    }

    /// The table with no file: the inline entries only.
    pub(crate) fn inline_only(&self) -> Table {
        self.inline.clone()
    }

    /// The file's path, for logs.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}
