//! Server block keys: `[SCHEME://]ZONE[:PORT]`, with CIDR zones expanded
//! to reverse zones, as CoreDNS normalises them.

use std::net::IpAddr;

use nodedns_plugins::pkg::zones::normalize;

/// A server block's transport, from its key's scheme (CoreDNS's
/// `plugin/pkg/transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// `dns://` (or no scheme): UDP and TCP.
    Dns,
    /// `tls://`: DNS over TLS (RFC 7858).
    Tls,
    /// `https://`: DNS over HTTPS (RFC 8484) on HTTP/1.1 and h2.
    Https,
    /// `https3://`: DNS over HTTPS on HTTP/3.
    Https3,
    /// `quic://`: DNS over QUIC (RFC 9250).
    Quic,
    /// `grpc://`: CoreDNS's `coredns.dns.DnsService`.
    Grpc,
}

impl Scheme {
    /// Every scheme, with its spelling.
    const ALL: [(&'static str, Self); 6] = [
        ("dns", Self::Dns),
        ("tls", Self::Tls),
        ("https", Self::Https),
        ("https3", Self::Https3),
        ("quic", Self::Quic),
        ("grpc", Self::Grpc),
    ];

    /// The scheme as written in a key (`tls`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Tls => "tls",
            Self::Https => "https",
            Self::Https3 => "https3",
            Self::Quic => "quic",
            Self::Grpc => "grpc",
        }
    }

    /// The port a key without one gets: CoreDNS's `transport.TLSPort`
    /// (853), `QUICPort` (853), `GRPCPort` (443), `HTTPSPort` (443, also
    /// for `https3`); plain DNS takes `dns_port` (`-dns.port`).
    pub fn default_port(self, dns_port: u16) -> u16 {
        match self {
            Self::Dns => dns_port,
            Self::Tls | Self::Quic => 853,
            Self::Https | Self::Https3 | Self::Grpc => 443,
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One normalised key of a server block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// The transport's scheme.
    pub scheme: Scheme,
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
        None => (Scheme::Dns, raw),
        Some((s, rest)) => match Scheme::ALL
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
        {
            Some((_, scheme)) => (*scheme, rest),
            None => return Err(format!("unknown transport '{s}://' in '{raw}'")),
        },
    };
    let (host, port) = split_port(rest).ok_or_else(|| format!("invalid port in '{raw}'"))?;
    let port = port.unwrap_or(scheme.default_port(default_port));
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
            (Scheme::Dns, "example.org.", 1053)
        );
        let k = &parse_key(".", 5353).unwrap()[0];
        assert_eq!((k.zone.as_str(), k.port), (".", 5353));
        let k = &parse_key(":1053", 53).unwrap()[0];
        assert_eq!((k.zone.as_str(), k.port), (".", 1053));
        assert_eq!(
            parse_key("example.org:x", 53).unwrap_err(),
            "invalid port in 'example.org:x'"
        );
        // CoreDNS's default ports; -dns.port moves only plain DNS's.
        for (raw, scheme, port) in [
            ("tls://example.org", Scheme::Tls, 853),
            ("TLS://.", Scheme::Tls, 853),
            ("quic://.", Scheme::Quic, 853),
            ("https://.", Scheme::Https, 443),
            ("https3://.", Scheme::Https3, 443),
            ("grpc://.", Scheme::Grpc, 443),
            ("tls://.:8853", Scheme::Tls, 8853),
            ("dns://.", Scheme::Dns, 5353),
        ] {
            let k = &parse_key(raw, 5353).unwrap()[0];
            assert_eq!((k.scheme, k.port), (scheme, port), "{raw}");
        }
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
