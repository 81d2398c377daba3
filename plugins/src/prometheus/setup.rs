//! `prometheus [ADDRESS]`, once per server block.

use crate::dispenser::{Dispenser, SetupError};
use crate::pkg::listen::check_listen_addr;
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
        let args = d.remaining_args();
        match args.as_slice() {
            [] => {}
            [addr] => {
                check_listen_addr(addr).map_err(|why| {
                    d.err(format_args!(
                        "invalid address '{addr}': {why} (want HOST:PORT, such as :9153)"
                    ))
                })?;
                config.addr.clone_from(addr);
            }
            _ => return Err(d.arg_err()),
        }
        if d.next_block() {
            return Err(d.unsupported());
        }
    }
    Ok(config)
}

/// Parses `prometheus` and asks for the endpoint; blocks naming the same
/// address share one endpoint.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let config = parse(&mut c.d)?;
    if !c.services.prometheus.contains(&config) {
        c.services.prometheus.push(config);
    }
    Ok(())
}
