//! What the admin plane sees of a cache: its entries (one per question,
//! whichever DO/CD variants are held) and a purge by name or RRset.

use std::collections::HashMap;

use super::Inner;
use super::entry::Entry;
use crate::pkg::inspect::{CacheInspect, CachedEntry, ImportStats, Selector, SnapshotEntry};
use crate::request::{MAX_NAME, read_question};

/// An entry's question: its name lower-cased in wire form, and its type.
fn question(e: &Entry) -> Option<(Vec<u8>, u16)> {
    let mut lower = [0u8; MAX_NAME];
    let (len, qtype, _, _) = read_question(e.wire(), &mut lower)?;
    Some((lower[..len].to_vec(), qtype))
}

/// Whether an entry is one `sel` names.
fn selected(e: &Entry, sel: Selector<'_>) -> bool {
    if sel.name.is_none() && sel.qtype.is_none() {
        return true;
    }
    let mut lower = [0u8; MAX_NAME];
    let Some((len, qtype, _, _)) = read_question(e.wire(), &mut lower) else {
        return false;
    };
    sel.name.is_none_or(|n| lower[..len] == *n) && sel.qtype.is_none_or(|t| t == qtype)
}

impl CacheInspect for Inner {
    fn entries(&self, sel: Selector<'_>, limit: usize) -> Vec<CachedEntry> {
        let now = super::now_secs();
        // One row per question: the DO and CD variants of an RRset are one
        // thing to an operator; the freshest stands for them.
        let mut seen: HashMap<(Vec<u8>, u16), CachedEntry> = HashMap::new();
        for store in [&self.positive, &self.negative] {
            store.for_each(|_, e| {
                if seen.len() >= limit || !selected(e, sel) {
                    return;
                }
                let Some((name, qtype)) = question(e) else {
                    return;
                };
                let row = CachedEntry {
                    name: presentation(&name),
                    qtype,
                    ttl: e.remaining(now),
                    stale: e.expired(now),
                };
                seen.entry((name, qtype))
                    .and_modify(|r| {
                        if row.ttl > r.ttl || (r.stale && !row.stale) {
                            *r = row.clone();
                        }
                    })
                    .or_insert(row);
            });
        }
        let mut rows: Vec<CachedEntry> = seen.into_values().collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name).then(a.qtype.cmp(&b.qtype)));
        rows
    }

    fn purge(&self, sel: Selector<'_>) -> u64 {
        if sel.name.is_none() && sel.qtype.is_none() {
            let n = self.positive.len() + self.negative.len();
            self.positive.clear();
            self.negative.clear();
            self.update_gauges();
            return n as u64;
        }
        let removed = self.positive.retain(|e| !selected(e, sel))
            + self.negative.retain(|e| !selected(e, sel));
        self.update_gauges();
        removed as u64
    }

    fn len(&self) -> u64 {
        (self.positive.len() + self.negative.len()) as u64
    }

    fn snapshot_id(&self) -> &str {
        &self.snapshot_id
    }

    fn export(&self, f: &mut dyn FnMut(SnapshotEntry<'_>)) {
        self.export_entries(super::now_secs(), f);
    }

    fn import(&self, entries: &[SnapshotEntry<'_>], elapsed_secs: u64) -> ImportStats {
        let unix = crate::pkg::clock::unix_secs();
        self.import_entries(entries, elapsed_secs, super::now_secs(), unix)
    }
}

/// A wire-form name as text, `www.example.org.` (`.` for the root), with
/// dots and unusual bytes escaped as in zone files.
fn presentation(wire: &[u8]) -> String {
    let mut out = String::with_capacity(wire.len() + 1);
    let mut pos = 0;
    while let Some(&len) = wire.get(pos) {
        if len == 0 {
            break;
        }
        let Some(label) = wire.get(pos + 1..pos + 1 + usize::from(len)) else {
            break;
        };
        for &b in label {
            match b {
                b'.' | b'\\' | b'"' | b'(' | b')' | b';' | b'@' | b'$' => {
                    out.push('\\');
                    out.push(char::from(b));
                }
                0x21..=0x7e => out.push(char::from(b)),
                _ => out.push_str(&format!("\\{b:03}")),
            }
        }
        out.push('.');
        pos += 1 + usize::from(len);
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::presentation;

    #[test]
    fn names_print_as_in_zone_files() {
        assert_eq!(presentation(b"\0"), ".");
        assert_eq!(
            presentation(b"\x03www\x07example\x03org\0"),
            "www.example.org."
        );
        assert_eq!(presentation(b"\x03a.b\x02\x00z\0"), "a\\.b.\\000z.");
        // A name cut short prints what reads.
        assert_eq!(presentation(b"\x03ww"), ".");
    }
}
