//! Zone names: normalising what a Corefile says into what a server matches.

use std::net::IpAddr;

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

/// Most reverse zones a CIDR argument may expand to (a /1 in IPv4 asks
/// for 128): more is refused as an invalid zone.
const MAX_REVERSE_ZONES: usize = 128;

/// Normalises a ZONES argument as CoreDNS's `plugin.Host.NormalizeExact`:
/// an optional `SCHEME://` and `:PORT` are dropped, and a CIDR becomes its
/// reverse zones (`10.0.0.0/15` → `0.10.in-addr.arpa.`, `1.10.in-addr.arpa.`).
pub fn normalize_exact(arg: &str) -> Option<Vec<String>> {
    let s = arg.split_once("://").map_or(arg, |(_, rest)| rest);
    let s = match s.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.ends_with(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            host
        }
        _ => s,
    };
    if let Some((ip, bits)) = s.split_once('/') {
        let ip: IpAddr = ip.parse().ok()?;
        let bits: u32 = bits.parse().ok()?;
        return reverse_zones(ip, bits);
    }
    normalize(s).map(|z| vec![z])
}

/// The reverse zones of a prefix, rounded out to the next label boundary.
fn reverse_zones(ip: IpAddr, bits: u32) -> Option<Vec<String>> {
    // (address bits, bits per label, suffix)
    let (value, width, step, suffix) = match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32u32, 8u32, "in-addr.arpa."),
        IpAddr::V6(v6) => (u128::from(v6), 128, 4, "ip6.arpa."),
    };
    if bits > width {
        return None;
    }
    if bits == 0 {
        return Some(vec![suffix.to_string()]);
    }
    let rounded = bits.div_ceil(step) * step;
    let count = 1usize << (rounded - bits);
    if count > MAX_REVERSE_ZONES {
        return None;
    }
    let base = value & (u128::MAX << (width - bits)) & mask(width);
    let mut out = Vec::with_capacity(count);
    for i in 0..count as u128 {
        let net = base | (i << (width - rounded));
        let mut zone = String::new();
        for label in (0..rounded / step).rev() {
            let shift = width - step * (label + 1);
            let v = (net >> shift) & ((1u128 << step) - 1);
            match ip {
                IpAddr::V4(_) => zone.push_str(&v.to_string()),
                IpAddr::V6(_) => zone.push(char::from_digit(v as u32, 16)?),
            }
            zone.push('.');
        }
        zone.push_str(suffix);
        out.push(zone);
    }
    Some(out)
}

fn mask(width: u32) -> u128 {
    if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
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
