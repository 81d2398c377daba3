//! Mnemonics for record types, classes and rcodes exactly as CoreDNS prints
//! them (miekg/dns's `TypeToString`, `ClassToString`, `RcodeToString`), so
//! `log` and `errors` lines match CoreDNS's byte for byte. Unknown values
//! print as miekg does: `TYPE65280`, `CLASS42`, and a bare number for rcodes.
//!
//! hickory's `Display` differs (`Unknown(65280)`, `Non-Existent Domain`),
//! hence these tables.

use std::fmt::Write as _;

/// miekg/dns's name for a record type, if it has one.
pub(crate) fn type_name(t: u16) -> Option<&'static str> {
    Some(match t {
        0 => "None",
        1 => "A",
        2 => "NS",
        3 => "MD",
        4 => "MF",
        5 => "CNAME",
        6 => "SOA",
        7 => "MB",
        8 => "MG",
        9 => "MR",
        10 => "NULL",
        12 => "PTR",
        13 => "HINFO",
        14 => "MINFO",
        15 => "MX",
        16 => "TXT",
        17 => "RP",
        18 => "AFSDB",
        19 => "X25",
        20 => "ISDN",
        21 => "RT",
        23 => "NSAP-PTR",
        24 => "SIG",
        25 => "KEY",
        26 => "PX",
        27 => "GPOS",
        28 => "AAAA",
        29 => "LOC",
        30 => "NXT",
        31 => "EID",
        32 => "NIMLOC",
        33 => "SRV",
        34 => "ATMA",
        35 => "NAPTR",
        36 => "KX",
        37 => "CERT",
        39 => "DNAME",
        41 => "OPT",
        42 => "APL",
        43 => "DS",
        44 => "SSHFP",
        45 => "IPSECKEY",
        46 => "RRSIG",
        47 => "NSEC",
        48 => "DNSKEY",
        49 => "DHCID",
        50 => "NSEC3",
        51 => "NSEC3PARAM",
        52 => "TLSA",
        53 => "SMIMEA",
        55 => "HIP",
        56 => "NINFO",
        57 => "RKEY",
        58 => "TALINK",
        59 => "CDS",
        60 => "CDNSKEY",
        61 => "OPENPGPKEY",
        62 => "CSYNC",
        63 => "ZONEMD",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        100 => "UINFO",
        101 => "UID",
        102 => "GID",
        103 => "UNSPEC",
        104 => "NID",
        105 => "L32",
        106 => "L64",
        107 => "LP",
        108 => "EUI48",
        109 => "EUI64",
        128 => "NXNAME",
        249 => "TKEY",
        250 => "TSIG",
        251 => "IXFR",
        252 => "AXFR",
        253 => "MAILB",
        254 => "MAILA",
        255 => "ANY",
        256 => "URI",
        257 => "CAA",
        258 => "AVC",
        260 => "AMTRELAY",
        261 => "RESINFO",
        32768 => "TA",
        32769 => "DLV",
        65535 => "Reserved",
        _ => return None,
    })
}

/// Writes a record type as CoreDNS prints it (`A`, `TYPE65280`).
pub(crate) fn write_type(out: &mut String, t: u16) {
    match type_name(t) {
        Some(n) => out.push_str(n),
        None => {
            let _ = write!(out, "TYPE{t}");
        }
    }
}

/// Writes a class as CoreDNS prints it (`IN`, `CH`, `CLASS42`).
pub(crate) fn write_class(out: &mut String, c: u16) {
    let name = match c {
        1 => "IN",
        2 => "CS",
        3 => "CH",
        4 => "HS",
        254 => "NONE",
        255 => "ANY",
        _ => {
            let _ = write!(out, "CLASS{c}");
            return;
        }
    };
    out.push_str(name);
}

/// Rcode mnemonics as CoreDNS prints them (16 prints as BADSIG, as miekg does).
const RCODES: &[(u16, &str)] = &[
    (0, "NOERROR"),
    (1, "FORMERR"),
    (2, "SERVFAIL"),
    (3, "NXDOMAIN"),
    (4, "NOTIMP"),
    (5, "REFUSED"),
    (6, "YXDOMAIN"),
    (7, "YXRRSET"),
    (8, "NXRRSET"),
    (9, "NOTAUTH"),
    (10, "NOTZONE"),
    (11, "DSOTYPENI"),
    (16, "BADSIG"),
    (17, "BADKEY"),
    (18, "BADTIME"),
    (19, "BADMODE"),
    (20, "BADNAME"),
    (21, "BADALG"),
    (22, "BADTRUNC"),
    (23, "BADCOOKIE"),
];

/// The mnemonic of an rcode, if it has one.
pub(crate) fn rcode_name(rcode: u16) -> Option<&'static str> {
    RCODES.iter().find(|(c, _)| *c == rcode).map(|(_, n)| *n)
}

/// The rcode of a mnemonic (case-insensitive), as Corefiles spell them.
pub(crate) fn rcode_from_name(name: &str) -> Option<u16> {
    RCODES
        .iter()
        .find(|(_, n)| n.eq_ignore_ascii_case(name))
        .map(|(c, _)| *c)
}

/// Writes an rcode as CoreDNS prints it (`NOERROR`, `SERVFAIL`, `12`).
pub(crate) fn write_rcode(out: &mut String, rcode: u16) {
    match rcode_name(rcode) {
        Some(n) => out.push_str(n),
        None => {
            let _ = write!(out, "{rcode}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(f: impl Fn(&mut String)) -> String {
        let mut out = String::new();
        f(&mut out);
        out
    }

    #[test]
    fn as_miekg_prints_them() {
        assert_eq!(s(|o| write_type(o, 1)), "A");
        assert_eq!(s(|o| write_type(o, 23)), "NSAP-PTR");
        assert_eq!(s(|o| write_type(o, 65)), "HTTPS");
        assert_eq!(s(|o| write_type(o, 11)), "TYPE11");
        assert_eq!(s(|o| write_type(o, 65280)), "TYPE65280");
        assert_eq!(s(|o| write_class(o, 1)), "IN");
        assert_eq!(s(|o| write_class(o, 3)), "CH");
        assert_eq!(s(|o| write_class(o, 42)), "CLASS42");
        assert_eq!(s(|o| write_rcode(o, 3)), "NXDOMAIN");
        assert_eq!(s(|o| write_rcode(o, 16)), "BADSIG");
        assert_eq!(s(|o| write_rcode(o, 12)), "12");
    }
}
