//! `ready [ADDRESS] [{ monitor continuously }]`, once per server block.

use crate::dispenser::{Dispenser, SetupError};
use crate::pkg::listen::optional_addr;
use crate::setup::{Controller, ReadyConfig};

/// Where `/ready` listens when the Corefile does not say (CoreDNS's).
pub const DEFAULT_ADDR: &str = ":8181";

/// Reads the block's `ready` line (only one is allowed, as in CoreDNS).
pub(super) fn parse(d: &mut Dispenser<'_>) -> Result<ReadyConfig, SetupError> {
    let mut config = ReadyConfig {
        addr: DEFAULT_ADDR.to_string(),
    };
    let mut seen = false;
    while d.next() {
        if seen {
            return Err(d.err("this plugin can only be used once per Server Block"));
        }
        seen = true;
        if let Some(addr) = optional_addr(d, ":8181")? {
            config.addr = addr;
        }
        while d.next_block() {
            match d.val() {
                "monitor" => {
                    let args = d.remaining_args();
                    let [kind] = args.as_slice() else {
                        return Err(d.arg_err());
                    };
                    match kind.as_str() {
                        // What nodedns always does: ask every plugin on every request.
                        "continuously" => {}
                        "until-ready" => {
                            return Err(d.err(
                                "monitor type 'until-ready' not supported (nodedns always monitors continuously)",
                            ));
                        }
                        other => {
                            return Err(d.err(format_args!("monitor type '{other}' not supported")));
                        }
                    }
                }
                other => return Err(d.err(format_args!("unknown property '{other}'"))),
            }
        }
    }
    Ok(config)
}

/// Parses `ready` and asks for the endpoint; blocks naming the same
/// address share one endpoint.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let config = parse(&mut c.d)?;
    if !c.services.ready.contains(&config) {
        c.services.ready.push(config);
    }
    Ok(())
}
