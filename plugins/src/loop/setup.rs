//! `loop` takes no arguments; it probes the block's first zone.

use std::sync::Arc;

use crate::dispenser::SetupError;
use crate::pkg::zones;
use crate::setup::Controller;

use super::{Loop, exit_on_loop, probe};

/// Parses `loop` and adds the handler and its probe.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let mut count = 0;
    while c.d.next() {
        count += 1;
        if count > 1 {
            return Err(c.d.err("plugin can only be used once per server block"));
        }
        if c.d.next_arg() {
            return Err(c.d.arg_err());
        }
    }
    let zone = c.block.zones.first().map_or(".", String::as_str);
    let zone =
        zones::to_wire(zone).ok_or_else(|| c.d.err(format_args!("invalid zone '{zone}'")))?;
    let l = Loop::new(zone, Arc::new(exit_on_loop));
    c.spawn_on_start(probe(
        Arc::clone(&l.state),
        l.probe(),
        Arc::clone(&c.block.bound),
    ));
    c.add_plugin(Box::new(l));
    Ok(())
}
