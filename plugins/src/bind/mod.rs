//! *bind* chooses the addresses a server block listens on, instead of
//! every address of the host. Each argument is an IP address or the name
//! of a network interface, which stands for that interface's addresses
//! (IPv4 and IPv6) when the configuration loads. `except` leaves addresses
//! out. Setup only: *bind* adds nothing to the chain.
//!
//! IPv6 link-local addresses of an interface are skipped (they need a
//! zone, `fe80::1%eth0`, that a plain address cannot carry), as CoreDNS
//! did before it learnt zones.

mod setup;
#[cfg(test)]
mod tests;

pub use setup::{BindConfig, setup};

use std::net::IpAddr;

/// The host's interfaces and their addresses, read once per setup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interfaces {
    by_name: Vec<(String, Vec<IpAddr>)>,
}

impl Interfaces {
    /// Reads the host's interfaces (`getifaddrs`).
    pub fn system() -> Result<Self, String> {
        let mut out = Self::default();
        let list = nix::ifaddrs::getifaddrs().map_err(|e| e.to_string())?;
        for ifa in list {
            let ip = ifa.address.as_ref().and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            });
            out.add(&ifa.interface_name, ip);
        }
        Ok(out)
    }

    /// Records that interface `name` exists and, if given, has address `ip`
    /// (IPv6 link-local addresses are dropped).
    pub fn add(&mut self, name: &str, ip: Option<IpAddr>) {
        let idx = match self.by_name.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                self.by_name.push((name.to_string(), Vec::new()));
                self.by_name.len() - 1
            }
        };
        if let Some(ip) = ip.filter(usable)
            && let Some((_, addrs)) = self.by_name.get_mut(idx)
            && !addrs.contains(&ip)
        {
            addrs.push(ip);
        }
    }

    /// The addresses of interface `name`, or `None` when there is no such
    /// interface.
    pub fn addrs(&self, name: &str) -> Option<&[IpAddr]> {
        self.by_name
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.as_slice())
    }
}

/// Whether a listener can bind `ip` without a zone: not IPv6 link-local.
fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => {
            let seg = v6.segments()[0];
            // fe80::/10 unicast and ff02::/16-style link-local multicast.
            !(v6.is_unicast_link_local() || (seg & 0xff0f) == 0xff02)
        }
    }
}
