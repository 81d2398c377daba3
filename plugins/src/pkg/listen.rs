//! Listen addresses of HTTP endpoints (`health`, `ready`, `prometheus`).

use crate::dispenser::{Dispenser, SetupError};

/// Checks a listen address as Go's `net.SplitHostPort` does (`HOST:PORT`,
/// `[IPv6]:PORT`, `:PORT`), and that the port is a number.
pub fn check_listen_addr(addr: &str) -> Result<(), &'static str> {
    let port = if let Some(rest) = addr.strip_prefix('[') {
        let (_, after) = rest.split_once(']').ok_or("missing ']' in address")?;
        after.strip_prefix(':').ok_or("missing port in address")?
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or("missing port in address")?;
        if host.contains(':') {
            return Err("too many colons in address (write IPv6 as [ADDRESS]:PORT)");
        }
        port
    };
    if port.is_empty() {
        return Err("missing port in address");
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
        return Err("invalid port");
    }
    Ok(())
}

/// Reads the rest of a `PLUGIN [ADDRESS]` line: `None` when no address is
/// given, else the address, checked as [`check_listen_addr`] (`example`
/// names a valid one in the error).
pub fn optional_addr(d: &mut Dispenser<'_>, example: &str) -> Result<Option<String>, SetupError> {
    let args = d.remaining_args();
    match args.as_slice() {
        [] => Ok(None),
        [addr] => {
            check_listen_addr(addr).map_err(|why| {
                d.err(format_args!(
                    "invalid address '{addr}': {why} (want HOST:PORT, such as {example})"
                ))
            })?;
            Ok(Some(addr.clone()))
        }
        _ => Err(d.arg_err()),
    }
}
