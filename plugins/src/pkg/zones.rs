//! Zone names: normalising what a Corefile says into what a server matches.

use crate::request::{is_subdomain, name_to_wire};

/// Normalises a zone to lower-case, fully-qualified presentation form
/// (`Example.ORG` → `example.org.`), or `None` when it is not a valid name.
pub fn normalize(zone: &str) -> Option<String> {
    let wire = name_to_wire(zone)?;
    if wire.len() == 1 {
        return Some(".".to_string());
    }
    let mut s = zone.to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    Some(s)
}

/// A zone or name in lower-cased wire form.
pub fn to_wire(zone: &str) -> Option<Vec<u8>> {
    name_to_wire(zone)
}

/// The longest of `zones` (lower-cased wire form) that contains `qname`.
pub fn matches<'z>(zones: &'z [Vec<u8>], qname: &[u8]) -> Option<&'z [u8]> {
    zones
        .iter()
        .filter(|z| is_subdomain(qname, z))
        .max_by_key(|z| z.len())
        .map(Vec::as_slice)
}

/// The longest of a block's zones (presentation form) that contains
/// `qname`, in wire form; the root when none does.
pub fn matches_owned(zones: &[String], qname: &[u8]) -> Vec<u8> {
    zones
        .iter()
        .filter_map(|z| to_wire(z))
        .filter(|z| is_subdomain(qname, z))
        .max_by_key(Vec::len)
        .unwrap_or_else(|| vec![0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize("Example.ORG").as_deref(), Some("example.org."));
        assert_eq!(normalize(".").as_deref(), Some("."));
        assert_eq!(normalize("a..b"), None);
    }

    #[test]
    fn longest_match() {
        let zones = vec![to_wire(".").unwrap(), to_wire("example.org").unwrap()];
        let q = to_wire("www.example.org").unwrap();
        assert_eq!(matches(&zones, &q), Some(&zones[1][..]));
        let q = to_wire("example.net").unwrap();
        assert_eq!(matches(&zones, &q), Some(&zones[0][..]));
        assert_eq!(matches(&zones[1..], &q), None);
    }
}
