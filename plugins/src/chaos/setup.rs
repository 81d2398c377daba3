//! `chaos [VERSION] [AUTHORS...]`, once per server block.

use crate::dispenser::{Dispenser, SetupError};
use crate::setup::Controller;

use super::{Chaos, hostname};

/// Who `authors.bind` names when the Corefile does not say. CoreDNS
/// answers with the GitHub handles of its maintainers; nodedns has no such
/// list, so it names its authors as a whole.
pub const DEFAULT_AUTHORS: &[&str] = &["The nodedns authors"];

/// `nodedns-<version>`, what `version.bind` says when the Corefile does
/// not (CoreDNS: `CoreDNS-<version>`).
pub fn default_version() -> String {
    concat!("nodedns-", env!("CARGO_PKG_VERSION")).to_string()
}

/// What `chaos` answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosConfig {
    /// The answer to `version.bind` and `version.server`.
    pub version: String,
    /// The answers to `authors.bind`: sorted, without duplicates.
    pub authors: Vec<String>,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        Self {
            version: default_version(),
            authors: DEFAULT_AUTHORS.iter().map(|a| (*a).to_string()).collect(),
        }
    }
}

/// Reads `chaos [VERSION] [AUTHORS...]`. Authors given on the line replace
/// the default list (sorted, duplicates dropped, as CoreDNS does).
pub(super) fn parse(d: &mut Dispenser<'_>) -> Result<ChaosConfig, SetupError> {
    let mut config = ChaosConfig::default();
    let mut seen = false;
    while d.next() {
        if seen {
            return Err(d.err("this plugin can only be used once per Server Block"));
        }
        seen = true;
        let mut args = d.remaining_args().into_iter();
        if let Some(version) = args.next() {
            config.version = version;
        }
        let mut authors: Vec<String> = args.collect();
        if !authors.is_empty() {
            authors.sort();
            authors.dedup();
            config.authors = authors;
        }
        if d.next_block() {
            return Err(d.err(format_args!("unknown property '{}'", d.val())));
        }
    }
    Ok(config)
}

/// Parses `chaos` and adds the handler.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let config = parse(&mut c.d)?;
    c.add_plugin(Box::new(Chaos::new(&config, &hostname())));
    Ok(())
}
