//! `loadbalance [round_robin | weighted WEIGHTFILE] { prefer CIDR... }`.
//! Only `round_robin` is implemented; `weighted` is refused.

use std::fmt;
use std::net::IpAddr;

use crate::dispenser::{Dispenser, SetupError};
use crate::setup::Controller;

use super::LoadBalance;

/// The default (and only implemented) policy.
const ROUND_ROBIN: &str = "round_robin";
/// CoreDNS's weighted policy, not implemented here.
const WEIGHTED: &str = "weighted";

/// A subnet: `192.0.2.0/24`, `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network address, host bits cleared.
    pub addr: IpAddr,
    /// The prefix length.
    pub len: u8,
}

impl Cidr {
    /// Parses `ADDRESS/LEN` (host bits are cleared, as Go's `ParseCIDR`).
    pub fn parse(s: &str) -> Option<Self> {
        let (ip, len) = s.split_once('/')?;
        let ip: IpAddr = ip.parse().ok()?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let len: u8 = len.parse().ok()?;
        let cidr = match ip {
            IpAddr::V4(v4) if len <= 32 => Self {
                addr: IpAddr::V4((u32::from(v4) & mask32(len)).into()),
                len,
            },
            IpAddr::V6(v6) if len <= 128 => Self {
                addr: IpAddr::V6((u128::from(v6) & mask128(len)).into()),
                len,
            },
            _ => return None,
        };
        Some(cidr)
    }

    /// Whether `ip` is inside. An IPv4-mapped IPv6 address counts as IPv4,
    /// as in Go's `IPNet.Contains`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask32(self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask128(self.len) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

/// What `loadbalance` does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadBalanceConfig {
    /// Subnets whose addresses go first, in this order (`prefer`).
    pub prefer: Vec<Cidr>,
}

/// Reads every `loadbalance` line of a block; `prefer` subnets accumulate.
pub(super) fn parse(d: &mut Dispenser<'_>) -> Result<LoadBalanceConfig, SetupError> {
    let mut config = LoadBalanceConfig::default();
    while d.next() {
        let args = d.remaining_args();
        match args.first().map(String::as_str) {
            None => {}
            Some(ROUND_ROBIN) => {
                if let Some(extra) = args.get(1) {
                    return Err(d.err(format_args!("unknown property '{extra}' for {ROUND_ROBIN}")));
                }
            }
            Some(WEIGHTED) => {
                return Err(d.err(format_args!(
                    "policy '{WEIGHTED}' not supported (use {ROUND_ROBIN}, optionally with prefer)"
                )));
            }
            Some(other) => return Err(d.err(format_args!("unknown policy '{other}'"))),
        }
        while d.next_block() {
            match d.val() {
                "prefer" => {
                    let cidrs = d.remaining_args();
                    if cidrs.is_empty() {
                        return Err(d.err("prefer needs at least one CIDR"));
                    }
                    for c in &cidrs {
                        let cidr = Cidr::parse(c)
                            .ok_or_else(|| d.err(format_args!("invalid CIDR '{c}'")))?;
                        config.prefer.push(cidr);
                    }
                }
                other => return Err(d.err(format_args!("unknown property '{other}'"))),
            }
        }
    }
    Ok(config)
}

/// Parses `loadbalance` and adds the handler.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let config = parse(&mut c.d)?;
    c.add_plugin(Box::new(LoadBalance::new(&config)));
    Ok(())
}
