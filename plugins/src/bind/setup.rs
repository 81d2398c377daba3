//! `bind ADDRESS|IFACE ... [{ except ADDRESS|IFACE ... }]`; several lines
//! add up, and each line's `except` applies to that line only.

use std::net::IpAddr;

use crate::dispenser::{Dispenser, SetupError};
use crate::setup::Controller;

use super::Interfaces;

/// What *bind* resolved to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindConfig {
    /// The addresses to listen on, in Corefile order, without duplicates.
    pub addrs: Vec<IpAddr>,
    /// Addresses an `except` left out (and no other line brought back).
    pub except: Vec<IpAddr>,
}

/// Reads every `bind` line of a block. Interface names are looked up in
/// what `load` returns, called at most once and only if a name is not an
/// IP address.
pub(super) fn parse(
    d: &mut Dispenser<'_>,
    load: &dyn Fn() -> Result<Interfaces, String>,
) -> Result<BindConfig, SetupError> {
    let mut ifaces = None;
    let mut config = BindConfig::default();
    let mut excepted = Vec::new();
    while d.next() {
        let directive = d.err("");
        let args = d.remaining_args();
        if args.is_empty() {
            return Err(d.err("at least one address or interface name is expected"));
        }
        let mut ips = resolve(d, &args, &mut ifaces, load)?;
        let mut except = Vec::new();
        while d.next_block() {
            match d.val() {
                "except" => {
                    let names = d.remaining_args();
                    if names.is_empty() {
                        return Err(d.err("at least one address or interface must be given to except subdirective"));
                    }
                    except.extend(resolve(d, &names, &mut ifaces, load)?);
                }
                other => return Err(d.err(format_args!("invalid option '{other}'"))),
            }
        }
        ips.retain(|ip| !except.contains(ip));
        if ips.is_empty() {
            return Err(SetupError {
                msg: format!(
                    "{}no address left to bind to in '{}' (interfaces without addresses, or all excepted)",
                    directive.msg,
                    args.join(" ")
                ),
                ..directive
            });
        }
        for ip in ips {
            if !config.addrs.contains(&ip) {
                config.addrs.push(ip);
            }
        }
        excepted.extend(except);
    }
    for ip in excepted {
        if !config.addrs.contains(&ip) && !config.except.contains(&ip) {
            config.except.push(ip);
        }
    }
    Ok(config)
}

/// Turns addresses and interface names into addresses.
fn resolve(
    d: &Dispenser<'_>,
    names: &[String],
    ifaces: &mut Option<Interfaces>,
    load: &dyn Fn() -> Result<Interfaces, String>,
) -> Result<Vec<IpAddr>, SetupError> {
    let mut out = Vec::new();
    for name in names {
        if let Ok(ip) = name.parse::<IpAddr>() {
            out.push(ip);
            continue;
        }
        if name.contains('%') {
            return Err(d.err(format_args!(
                "'{name}': addresses with a zone are not supported (name the interface instead)"
            )));
        }
        let list = match ifaces {
            Some(list) => list,
            None => {
                let list = load()
                    .map_err(|e| d.err(format_args!("failed to get interfaces list: {e}")))?;
                ifaces.insert(list)
            }
        };
        let Some(addrs) = list.addrs(name) else {
            return Err(d.err(format_args!(
                "not a valid IP address or interface name: '{name}'"
            )));
        };
        out.extend_from_slice(addrs);
    }
    Ok(out)
}

/// Parses `bind` and sets the block's listen addresses.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let config = parse(&mut c.d, &Interfaces::system)?;
    if config.addrs.is_empty() {
        return Ok(());
    }
    let bind = c.out.bind.get_or_insert_with(Vec::new);
    for ip in config.addrs {
        if !bind.contains(&ip) {
            bind.push(ip);
        }
    }
    Ok(())
}
