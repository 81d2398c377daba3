//! *loadbalance* shuffles the A, AAAA and MX records of NOERROR replies,
//! as CoreDNS's `round_robin` policy does. In each section CNAMEs come
//! first (stub resolvers such as glibc want them before the addresses),
//! then other records in their order, then the shuffled addresses, then
//! the shuffled MX records. With `prefer`, addresses inside the preferred
//! subnets then move ahead of the others in the answer and additional
//! sections. Error replies and zone transfers pass unchanged.

mod setup;
#[cfg(test)]
mod tests;

pub use setup::{Cidr, LoadBalanceConfig, setup};

use std::net::IpAddr;

use hickory_proto::rr::{RData, Record, RecordType};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::pkg::response::editable_noerror;
use crate::plugin::{Context, Flow, Plugin};

/// The loadbalance handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalance {
    prefer: Vec<Cidr>,
}

impl LoadBalance {
    /// A handler for `config`.
    pub fn new(config: &LoadBalanceConfig) -> Self {
        Self {
            prefer: config.prefer.clone(),
        }
    }
}

impl Plugin for LoadBalance {
    fn name(&self) -> &'static str {
        "loadbalance"
    }

    fn query(&self, _cx: &mut Context<'_>) -> Flow {
        Flow::Next
    }

    fn response(&self, cx: &mut Context<'_>) {
        let Some(m) = editable_noerror(cx) else {
            return;
        };
        let mut rng = rand::rng();
        round_robin(&mut m.answers, &mut rng);
        round_robin(&mut m.authorities, &mut rng);
        round_robin(&mut m.additionals, &mut rng);
        if !self.prefer.is_empty() {
            prefer(&mut m.answers, &self.prefer);
            prefer(&mut m.additionals, &self.prefer);
        }
    }
}

/// Where `round_robin` puts a record: CNAMEs, the rest, addresses, MX.
fn round_robin_rank(r: &Record) -> u8 {
    match r.record_type() {
        RecordType::CNAME => 0,
        RecordType::A | RecordType::AAAA => 2,
        RecordType::MX => 3,
        _ => 1,
    }
}

/// CoreDNS's `roundRobin`: group a section (stable), then shuffle the
/// addresses and the MX records among themselves.
pub(crate) fn round_robin<R: Rng + ?Sized>(records: &mut [Record], rng: &mut R) {
    if records.len() < 2 {
        return;
    }
    records.sort_by_key(round_robin_rank);
    let addr_start = records.partition_point(|r| round_robin_rank(r) < 2);
    let mx_start = records.partition_point(|r| round_robin_rank(r) < 3);
    records[addr_start..mx_start].shuffle(rng);
    records[mx_start..].shuffle(rng);
}

fn address(r: &Record) -> Option<IpAddr> {
    match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

/// CoreDNS's `reorderPreferredSubnets` on one section: CNAMEs, then the
/// addresses in the first preferred subnet, the second, …, then the other
/// addresses (each group keeps its order), then MX, then the rest.
pub(crate) fn prefer(records: &mut [Record], subnets: &[Cidr]) {
    if records.len() < 2 {
        return;
    }
    records.sort_by_key(|r| match r.record_type() {
        RecordType::CNAME => (0, 0),
        RecordType::A | RecordType::AAAA => {
            let rank = address(r)
                .and_then(|ip| subnets.iter().position(|s| s.contains(ip)))
                .unwrap_or(subnets.len());
            (1, rank)
        }
        RecordType::MX => (2, 0),
        _ => (3, 0),
    });
}
