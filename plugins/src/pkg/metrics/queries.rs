//! Every query the server finishes, by rcode and type, whatever plugins
//! its block runs: what the admin plane's `GET /v1/stats` reports. One
//! per-thread add per query (see [`super::striped`]); the per-block,
//! per-label families are the *prometheus* plugin's.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use super::striped::Striped;

/// CoreDNS's monitored query types (`vars/monitor.go`); others are "other".
pub const TYPES: [&str; 20] = [
    "A", "AAAA", "CNAME", "DNSKEY", "DS", "MX", "NSEC3", "NSEC", "NS", "PTR", "RRSIG", "SOA",
    "SRV", "TXT", "HTTPS", "SVCB", "IXFR", "AXFR", "ANY", "other",
];

/// The index of a query type in [`TYPES`].
#[inline]
pub fn type_index(qtype: u16) -> usize {
    match qtype {
        1 => 0,
        28 => 1,
        5 => 2,
        48 => 3,
        43 => 4,
        15 => 5,
        50 => 6,
        47 => 7,
        2 => 8,
        12 => 9,
        46 => 10,
        6 => 11,
        33 => 12,
        16 => 13,
        65 => 14,
        64 => 15,
        251 => 16,
        252 => 17,
        255 => 18,
        _ => 19,
    }
}

/// The header's rcodes (four bits) and, last, "dropped" (nothing sent).
const OUTCOMES: usize = 17;
const DROPPED: usize = 16;
/// Rcode names as CoreDNS writes them (miekg/dns's `RcodeToString`, else
/// `RCODE<n>`), for the rcodes counted at a fixed index.
pub const RCODES: [&str; 24] = [
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "YXDOMAIN",
    "YXRRSET",
    "NXRRSET",
    "NOTAUTH",
    "NOTZONE",
    "DSOTYPENI",
    "RCODE12",
    "RCODE13",
    "RCODE14",
    "RCODE15",
    "BADSIG",
    "BADKEY",
    "BADTIME",
    "BADMODE",
    "BADNAME",
    "BADALG",
    "BADTRUNC",
    "BADCOOKIE",
];

static COUNTS: LazyLock<Striped<{ OUTCOMES * TYPES.len() }>> = LazyLock::new(Striped::new);

/// Counts a query answered with the header's `rcode` (its low four bits).
#[inline]
pub fn answered(rcode: u8, qtype: u16) {
    COUNTS.add(
        usize::from(rcode & 0x0f) * TYPES.len() + type_index(qtype),
        1,
    );
}

/// Counts a query that got no reply (dropped at a limit or by a plugin).
#[inline]
pub fn dropped(qtype: u16) {
    COUNTS.add(DROPPED * TYPES.len() + type_index(qtype), 1);
}

/// Totals since start: every query, by rcode name (`dropped` for none
/// sent) and by type name; only what occurred is listed.
pub fn totals() -> (u64, BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let counts = COUNTS.snapshot();
    let mut total = 0;
    let mut by_rcode = BTreeMap::new();
    let mut by_type = BTreeMap::new();
    for (i, n) in counts.into_iter().enumerate().filter(|(_, n)| *n > 0) {
        let (outcome, t) = (i / TYPES.len(), i % TYPES.len());
        total += n;
        let rc = if outcome == DROPPED {
            "dropped"
        } else {
            RCODES.get(outcome).copied().unwrap_or("dropped")
        };
        *by_rcode.entry(rc.to_string()).or_default() += n;
        *by_type.entry(TYPES[t].to_string()).or_default() += n;
    }
    (total, by_rcode, by_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_rcode_and_type() {
        let (t0, r0, y0) = totals();
        answered(0, 1);
        answered(0, 1);
        answered(3, 28);
        answered(0x12, 65_000);
        dropped(1);
        let (t1, r1, y1) = totals();
        let grew = |m1: &BTreeMap<String, u64>, m0: &BTreeMap<String, u64>, k: &str| {
            m1.get(k).copied().unwrap_or(0) - m0.get(k).copied().unwrap_or(0)
        };
        assert_eq!(t1 - t0, 5);
        assert_eq!(grew(&r1, &r0, "NOERROR"), 2);
        assert_eq!(grew(&r1, &r0, "NXDOMAIN"), 1);
        assert_eq!(grew(&r1, &r0, "SERVFAIL"), 1, "the header's four bits");
        assert_eq!(grew(&r1, &r0, "dropped"), 1);
        assert_eq!(grew(&y1, &y0, "A"), 3);
        assert_eq!(grew(&y1, &y0, "AAAA"), 1);
        assert_eq!(grew(&y1, &y0, "other"), 1);
    }
}
