//! The plugin order: one list, as CoreDNS's `plugin.cfg`. A Corefile's
//! directives run in this order whatever order the file lists them in.
//! Names without a setup are CoreDNS plugins nodedns does not have yet:
//! a Corefile that uses one is refused with a clear error.

use nodedns_plugins as p;
use nodedns_plugins::SetupFn;

/// CoreDNS 1.14's plugin.cfg order, with nodedns's setups where they exist.
pub const ORDER: &[(&str, Option<SetupFn>)] = &[
    ("root", None),
    ("metadata", None),
    ("geoip", None),
    ("cancel", None),
    ("tls", Some(p::tls::setup)),
    ("quic", None),
    ("timeouts", None),
    ("multisocket", None),
    ("reload", Some(p::reload::setup)),
    ("nsid", None),
    ("bufsize", None),
    ("bind", Some(p::bind::setup)),
    ("debug", None),
    ("trace", None),
    ("ready", Some(p::ready::setup)),
    ("health", Some(p::health::setup)),
    ("pprof", None),
    ("prometheus", Some(p::prometheus::setup)),
    ("errors", Some(p::errors::setup)),
    ("log", Some(p::log::setup)),
    ("dnstap", None),
    ("local", None),
    ("dns64", None),
    ("acl", None),
    ("any", Some(p::any::setup)),
    ("chaos", Some(p::chaos::setup)),
    ("loadbalance", Some(p::loadbalance::setup)),
    ("tsig", None),
    ("cache", Some(p::cache::setup)),
    ("rewrite", None),
    ("header", None),
    ("dnssec", None),
    ("autopath", None),
    ("minimal", Some(p::minimal::setup)),
    ("template", None),
    ("transfer", None),
    ("hosts", Some(p::hosts::setup)),
    ("route53", None),
    ("azure", None),
    ("clouddns", None),
    ("k8s_external", None),
    ("kubernetes", Some(p::kubernetes::setup)),
    ("file", None),
    ("auto", None),
    ("secondary", None),
    ("etcd", None),
    ("loop", Some(p::r#loop::setup)),
    ("forward", Some(p::forward::setup)),
    ("grpc", None),
    ("erratic", None),
    ("whoami", Some(p::whoami::setup)),
    ("on", None),
    ("sign", None),
    ("view", None),
];

/// Plugins nodedns has, in chain order.
pub fn compiled() -> impl Iterator<Item = &'static str> {
    ORDER.iter().filter(|(_, s)| s.is_some()).map(|(n, _)| *n)
}

/// Where a directive stands: `Some(Some(setup))` compiled,
/// `Some(None)` a CoreDNS plugin not in nodedns yet, `None` unknown.
pub fn lookup(name: &str) -> Option<Option<SetupFn>> {
    ORDER.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_has_no_duplicates() {
        let mut seen = std::collections::HashSet::new();
        for (n, _) in ORDER {
            assert!(seen.insert(n), "{n} listed twice");
        }
    }

    #[test]
    fn foundation_plugins_are_compiled() {
        let have: Vec<_> = compiled().collect();
        for want in [
            "whoami",
            "log",
            "errors",
            "health",
            "ready",
            "bind",
            "hosts",
            "loadbalance",
            "any",
            "minimal",
            "chaos",
            "prometheus",
            "kubernetes",
        ] {
            assert!(have.contains(&want), "{want} missing");
        }
        assert!(
            lookup("rewrite") == Some(None),
            "known to CoreDNS, not built yet"
        );
        assert!(lookup("nonesuch").is_none());
    }
}
