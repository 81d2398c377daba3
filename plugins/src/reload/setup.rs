//! `reload [INTERVAL] [JITTER]`, CoreDNS's defaults and bounds.

use std::time::Duration;

use crate::dispenser::SetupError;
use crate::setup::{Controller, ReloadConfig};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_JITTER: Duration = Duration::from_secs(15);
const MIN_INTERVAL: Duration = Duration::from_secs(2);
const MIN_JITTER: Duration = Duration::from_secs(1);

/// Parses `reload` (setup only: the agent does the checking).
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let mut cfg = None;
    while c.d.next() {
        if cfg.is_some() {
            return Err(c.d.err("plugin can only be used once per server block"));
        }
        let args = c.d.remaining_args();
        if args.len() > 2 {
            return Err(c.d.arg_err());
        }
        let dur = |v: &str| {
            crate::dispenser::parse_duration(v)
                .ok_or_else(|| c.d.err(format_args!("invalid duration '{v}'")))
        };
        let interval = args
            .first()
            .map(|a| dur(a))
            .transpose()?
            .unwrap_or(DEFAULT_INTERVAL);
        let mut jitter = args
            .get(1)
            .map(|a| dur(a))
            .transpose()?
            .unwrap_or(DEFAULT_JITTER);
        if interval < MIN_INTERVAL {
            return Err(c.d.err(format_args!(
                "interval value must be greater or equal to {MIN_INTERVAL:?}"
            )));
        }
        if jitter < MIN_JITTER {
            return Err(c.d.err(format_args!(
                "jitter value must be greater or equal to {MIN_JITTER:?}"
            )));
        }
        // As CoreDNS: jitter at most half the interval.
        jitter = jitter.min(interval / 2);
        cfg = Some(ReloadConfig { interval, jitter });
    }
    // Several blocks may say `reload`; the shortest interval wins.
    if let Some(new) = cfg {
        c.services.reload = Some(match c.services.reload {
            Some(old) if old.interval <= new.interval => old,
            _ => new,
        });
    }
    Ok(())
}
