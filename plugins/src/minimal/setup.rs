//! `minimal` takes no arguments and no block.

use crate::dispenser::{Dispenser, SetupError};
use crate::setup::Controller;

use super::Minimal;

/// Reads every `minimal` line of a block: none may have arguments.
pub(super) fn parse(d: &mut Dispenser<'_>) -> Result<(), SetupError> {
    while d.next() {
        if d.next_arg() {
            return Err(d.arg_err());
        }
    }
    Ok(())
}

/// Parses `minimal` and adds the handler.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    parse(&mut c.d)?;
    c.add_plugin(Box::new(Minimal));
    Ok(())
}
