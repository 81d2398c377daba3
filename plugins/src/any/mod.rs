//! *any*: being written.

use crate::dispenser::SetupError;
use crate::setup::Controller;

/// Parses the directive (not built yet).
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    c.d.next();
    Err(c.d.err("not supported yet"))
}
