//! `prometheus [ADDRESS]`, once per server block.

use crate::dispenser::{Dispenser, SetupError};
use crate::pkg::listen::optional_addr;
use crate::setup::{Controller, PrometheusConfig};

/// Where `/metrics` listens when the Corefile does not say (CoreDNS's).
pub const DEFAULT_ADDR: &str = "localhost:9153";

/// Reads the block's `prometheus` line (only one is allowed, as in
/// CoreDNS). It takes no options: a block may be given, but only empty.
pub(super) fn parse(d: &mut Dispenser<'_>) -> Result<PrometheusConfig, SetupError> {
    let mut config = PrometheusConfig {
        addr: DEFAULT_ADDR.to_string(),
    };
    let mut seen = false;
    while d.next() {
        if seen {
            return Err(d.err("this plugin can only be used once per Server Block"));
        }
        seen = true;
        if let Some(addr) = optional_addr(d, ":9153")? {
            config.addr = addr;
        }
        if d.next_block() {
            return Err(d.unsupported());
        }
    }
    Ok(config)
}

/// Parses `prometheus`, asks for the endpoint (blocks naming the same
/// address share one) and adds the block's metrics to its chain.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let config = parse(&mut c.d)?;
    if !c.services.prometheus.contains(&config) {
        c.services.prometheus.push(config);
    }
    let metrics = super::handler::Metrics::new(&c.block.server_name, &c.block.zones);
    c.add_plugin(Box::new(metrics));
    Ok(())
}
