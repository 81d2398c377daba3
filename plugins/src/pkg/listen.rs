//! Listen addresses of HTTP endpoints (`health`, `ready`).

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
