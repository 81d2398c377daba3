//! resolv.conf as an upstream list: `nameserver` lines, port 53. nodedns
//! re-reads the file when it changes (CoreDNS reads it once).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// Largest resolv.conf read.
const MAX_BYTES: u64 = 1 << 20;

/// The nameservers of a resolv.conf-style file.
pub(super) fn read(path: &Path) -> std::io::Result<Vec<SocketAddr>> {
    let meta = std::fs::metadata(path)?;
    if meta.len() > MAX_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "file larger than 1 MiB",
        ));
    }
    Ok(parse(&std::fs::read_to_string(path)?))
}

/// The `nameserver` addresses of resolv.conf text. Scoped IPv6 addresses
/// (`fe80::1%eth0`) are skipped. Beyond glibc, `IP:PORT` and `[IPv6]:PORT`
/// are read too, so a resolver on another port can be named.
pub(super) fn parse(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        let addr = match word.parse::<IpAddr>() {
            Ok(ip) => Some(SocketAddr::new(ip, 53)),
            Err(_) => word.parse::<SocketAddr>().ok(),
        };
        if let Some(a) = addr
            && !out.contains(&a)
        {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers() {
        let got = parse(
            "# c\nsearch svc.cluster.local\nnameserver 10.0.0.10\nnameserver ::1 # x\nnameserver bogus\noptions ndots:5\nnameserver 10.0.0.10\nnameserver 127.0.0.1:5353\n",
        );
        let want: Vec<SocketAddr> = ["10.0.0.10:53", "[::1]:53", "127.0.0.1:5353"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }
}
