//! Server block keys: `[SCHEME://]ZONE[:PORT]`, with CIDR zones expanded
//! to reverse zones, as CoreDNS normalises them.

use std::net::IpAddr;

use nodedns_plugins::pkg::zones::normalize;

/// Schemes CoreDNS knows that nodedns does not serve yet.
const LATER_SCHEMES: &[&str] = &["tls", "https", "https3", "quic", "grpc"];

/// One normalised key of a server block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The transport's scheme (`dns`).
    pub scheme: &'static str,
    /// The zone, normalised (`example.org.`, `.`).
    pub zone: String,
    /// The port.
    pub port: u16,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.zone, self.port)
    }
}

/// Parses one key. A CIDR zone gives one reverse zone per covered
/// octet/nibble boundary, so the result may hold several keys.
pub fn parse_key(raw: &str, default_port: u16) -> Result<Vec<Key>, String> {
    let (scheme, rest) = match raw.split_once("://") {
        None => ("dns", raw),
        Some((s, rest)) => {
            let s_low = s.to_ascii_lowercase();
            if s_low == "dns" {
                ("dns", rest)
            } else if LATER_SCHEMES.contains(&s_low.as_str()) {
                return Err(format!(
                    "transport '{s_low}://' in '{raw}' not supported (only dns:// for now)"
                ));
            } else {
                return Err(format!("unknown transport '{s}://' in '{raw}'"));
            }
        }
    };
    let (host, port) = split_port(rest).ok_or_else(|| format!("invalid port in '{raw}'"))?;
    let port = port.unwrap_or(default_port);
    let zones = if host.is_empty() {
        vec![".".to_string()]
    } else if host.contains('/') {
        reverse_zones(host).ok_or_else(|| format!("invalid CIDR '{host}' in '{raw}'"))?
    } else {
        vec![normalize(host).ok_or_else(|| format!("invalid zone '{host}' in '{raw}'"))?]
    };
    Ok(zones
        .into_iter()
        .map(|zone| Key { scheme, zone, port })
        .collect())
}

/// Splits `zone[:port]`; a CIDR (`10.0.0.0/8:53`, `fd00::/8:53`) keeps its
/// colons. `None` when the port is not a number.
fn split_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(slash) = s.find('/') {
        match s[slash..].find(':') {
            Some(c) => (&s[..slash + c], Some(&s[slash + c + 1..])),
            None => (s, None),
        }
    } else if let Some(stripped) = s.strip_prefix('[') {
        let end = stripped.find(']')?;
        let host = &stripped[..end];
        let tail = &stripped[end + 1..];
        (
            host,
            if tail.is_empty() {
                None
            } else {
                Some(tail.strip_prefix(':')?)
            },
        )
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(p.parse().ok()?),
    };
    Some((host, port))
}

/// The reverse zones that cover a CIDR (CoreDNS's `plugin.Host.NormalizeExact`).
fn reverse_zones(cidr: &str) -> Option<Vec<String>> {
    let (ip, bits) = cidr.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let bits: u32 = bits.parse().ok()?;
    match ip {
        IpAddr::V4(v4) => {
            if bits > 32 {
                return None;
            }
            let v = u32::from(v4) & u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            let octets = bits.div_ceil(8);
            let spread = if bits.is_multiple_of(8) {
                1
            } else {
                1u32 << (8 - bits % 8)
            };
            let mut out = Vec::new();
            for k in 0..spread {
                let base = if octets == 0 {
                    v
                } else {
                    v + (k << (32 - octets * 8))
                };
                let bytes = base.to_be_bytes();
                let mut z = String::new();
                for b in bytes[..octets as usize].iter().rev() {
                    z.push_str(&format!("{b}."));
                }
                z.push_str("in-addr.arpa.");
                out.push(z);
            }
            Some(out)
        }
        IpAddr::V6(v6) => {
            if bits > 128 {
                return None;
            }
            let v = u128::from(v6) & u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            let nibbles = bits.div_ceil(4);
            let spread = if bits.is_multiple_of(4) {
                1
            } else {
                1u128 << (4 - bits % 4)
            };
            let mut out = Vec::new();
            for k in 0..spread {
                let base = if nibbles == 0 {
                    v
                } else {
                    v + (k << (128 - nibbles * 4))
                };
                let mut z = String::new();
                for n in (0..nibbles).rev() {
                    let nib = (base >> (124 - n * 4)) & 0xf;
                    z.push_str(&format!("{nib:x}."));
                }
                z.push_str("ip6.arpa.");
                out.push(z);
            }
            Some(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(raw: &str) -> Vec<String> {
        parse_key(raw, 53)
            .unwrap()
            .into_iter()
            .map(|k| k.zone)
            .collect()
    }

    #[test]
    fn keys() {
        let k = &parse_key("dns://Example.ORG:1053", 53).unwrap()[0];
        assert_eq!(
            (k.scheme, k.zone.as_str(), k.port),
            ("dns", "example.org.", 1053)
        );
        let k = &parse_key(".", 5353).unwrap()[0];
        assert_eq!((k.zone.as_str(), k.port), (".", 5353));
        let k = &parse_key(":1053", 53).unwrap()[0];
        assert_eq!((k.zone.as_str(), k.port), (".", 1053));
        assert_eq!(
            parse_key("example.org:x", 53).unwrap_err(),
            "invalid port in 'example.org:x'"
        );
        assert!(
            parse_key("tls://example.org", 53)
                .unwrap_err()
                .contains("not supported")
        );
        assert!(
            parse_key("foo://example.org", 53)
                .unwrap_err()
                .contains("unknown transport")
        );
        assert!(parse_key("a..b", 53).is_err());
    }

    #[test]
    fn cidr_keys() {
        assert_eq!(zones("10.0.0.0/8"), vec!["10.in-addr.arpa."]);
        assert_eq!(zones("10.0.0.0/8:1053")[0], "10.in-addr.arpa.");
        assert_eq!(parse_key("10.0.0.0/8:1053", 53).unwrap()[0].port, 1053);
        assert_eq!(zones("192.168.0.0/16"), vec!["168.192.in-addr.arpa."]);
        assert_eq!(
            zones("10.0.0.0/23"),
            vec!["0.0.10.in-addr.arpa.", "1.0.10.in-addr.arpa."]
        );
        assert_eq!(zones("0.0.0.0/0"), vec!["in-addr.arpa."]);
        assert_eq!(zones("fd00::/8"), vec!["d.f.ip6.arpa."]);
        assert_eq!(
            zones("2001:db8::/31"),
            vec!["8.b.d.0.1.0.0.2.ip6.arpa.", "9.b.d.0.1.0.0.2.ip6.arpa."]
        );
        assert!(parse_key("10.0.0.0/33", 53).is_err());
    }
}
