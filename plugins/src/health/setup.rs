//! `health [ADDRESS] [{ lameduck DURATION }]`.

use std::time::Duration;

use crate::dispenser::{Dispenser, SetupError};
use crate::pkg::listen::optional_addr;
use crate::setup::{Controller, HealthConfig};

/// Where `/health` listens when the Corefile does not say (CoreDNS's).
pub const DEFAULT_ADDR: &str = ":8080";

/// Reads every `health` line of a block: the last address and the last
/// lame duck duration win, as in CoreDNS.
pub(super) fn parse(d: &mut Dispenser<'_>) -> Result<HealthConfig, SetupError> {
    let mut config = HealthConfig {
        addr: DEFAULT_ADDR.to_string(),
        lameduck: Duration::ZERO,
    };
    while d.next() {
        if let Some(addr) = optional_addr(d, ":8080")? {
            config.addr = addr;
        }
        while d.next_block() {
            match d.val() {
                "lameduck" => {
                    let args = d.remaining_args();
                    let [dur] = args.as_slice() else {
                        return Err(d.arg_err());
                    };
                    config.lameduck = crate::dispenser::parse_duration(dur).ok_or_else(|| {
                        d.err(format_args!(
                            "unable to parse lameduck duration value: '{dur}'"
                        ))
                    })?;
                }
                other => return Err(d.err(format_args!("unknown property '{other}'"))),
            }
        }
    }
    Ok(config)
}

/// Parses `health` and asks for the endpoint. Several server blocks may
/// name the same address: that is one endpoint, with the longest lame duck.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let config = parse(&mut c.d)?;
    if let Some(same) = c.services.health.iter_mut().find(|h| h.addr == config.addr) {
        same.lameduck = same.lameduck.max(config.lameduck);
    } else {
        c.services.health.push(config);
    }
    Ok(())
}
