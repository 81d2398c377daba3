//! `whoami` takes no arguments.

use crate::dispenser::SetupError;
use crate::setup::Controller;

use super::Whoami;

/// Parses `whoami` and adds the handler.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    while c.d.next() {
        if c.d.next_arg() {
            return Err(c.d.arg_err());
        }
    }
    c.add_plugin(Box::new(Whoami));
    Ok(())
}
