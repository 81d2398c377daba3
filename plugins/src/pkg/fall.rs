//! Fallthrough: which names a plugin passes on when it has no answer
//! (CoreDNS's `plugin/pkg/fall`).

use crate::dispenser::{Dispenser, SetupError};
use crate::pkg::zones;
use crate::request::is_subdomain;

/// The zones a plugin falls through for. Empty: never.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fall {
    zones: Vec<Vec<u8>>,
}

impl Fall {
    /// Falls through for every name (`fallthrough` with no zones).
    pub fn root() -> Self {
        Self {
            zones: vec![vec![0]],
        }
    }

    /// Whether a (lower-cased wire form) name falls through.
    pub fn through(&self, qname: &[u8]) -> bool {
        self.zones.iter().any(|z| is_subdomain(qname, z))
    }

    /// Whether fallthrough is on for anything.
    pub fn is_set(&self) -> bool {
        !self.zones.is_empty()
    }

    /// Reads `fallthrough [ZONES...]` from the current line: no zones means
    /// every name.
    pub fn parse(d: &mut Dispenser<'_>) -> Result<Self, SetupError> {
        let args = d.remaining_args();
        if args.is_empty() {
            return Ok(Self::root());
        }
        let mut out = Vec::with_capacity(args.len());
        for a in &args {
            out.push(zones::to_wire(a).ok_or_else(|| d.err(format_args!("invalid zone '{a}'")))?);
        }
        Ok(Self { zones: out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispenser::Token;
    use std::sync::Arc;

    #[test]
    fn through() {
        let f: Arc<str> = Arc::from("Corefile");
        let t = vec![
            Token::new("fallthrough", &f, 1),
            Token::new("in-addr.arpa", &f, 1),
            Token::new("example.org.", &f, 1),
        ];
        let mut d = Dispenser::new("hosts", &t);
        d.next();
        let fall = Fall::parse(&mut d).unwrap();
        assert!(fall.through(&zones::to_wire("1.0.0.10.in-addr.arpa.").unwrap()));
        assert!(fall.through(&zones::to_wire("a.example.org.").unwrap()));
        assert!(!fall.through(&zones::to_wire("example.net.").unwrap()));
        assert!(Fall::root().through(&zones::to_wire("anything.").unwrap()));
        assert!(!Fall::default().through(&zones::to_wire("anything.").unwrap()));
    }
}
