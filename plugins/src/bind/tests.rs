use std::cell::Cell;
use std::net::IpAddr;

use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;
use crate::pkg::test::setup as run_setup;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn fake() -> Interfaces {
    let mut i = Interfaces::default();
    i.add("eth0", None);
    i.add("eth0", Some(ip("192.0.2.10")));
    i.add("eth0", Some(ip("fe80::1")));
    i.add("eth0", Some(ip("2001:db8::10")));
    i.add("eth0", Some(ip("192.0.2.10")));
    i.add("dummy0", None);
    i
}

fn parse_text(
    text: &str,
    load: &dyn Fn() -> Result<Interfaces, String>,
) -> Result<BindConfig, String> {
    let file: std::sync::Arc<str> = std::sync::Arc::from("Corefile");
    let tokens = lex(&file, text).map_err(|e| e.to_string())?;
    setup::parse(&mut Dispenser::new("bind", &tokens), load).map_err(|e| e.to_string())
}

fn cfg(addrs: &[&str], except: &[&str]) -> BindConfig {
    BindConfig {
        addrs: addrs.iter().map(|a| ip(a)).collect(),
        except: except.iter().map(|a| ip(a)).collect(),
    }
}

#[test]
fn interfaces_skip_ipv6_link_local() {
    let i = fake();
    assert_eq!(
        i.addrs("eth0"),
        Some(&[ip("192.0.2.10"), ip("2001:db8::10")][..])
    );
    assert_eq!(i.addrs("dummy0"), Some(&[][..]));
    assert_eq!(i.addrs("eth1"), None);
    let mut j = Interfaces::default();
    j.add("x", Some(ip("169.254.20.10")));
    j.add("x", Some(ip("ff02::1")));
    assert_eq!(
        j.addrs("x"),
        Some(&[ip("169.254.20.10")][..]),
        "IPv4 link-local stays"
    );
}

#[test]
fn parse_table() {
    let cases: Vec<(&str, Result<BindConfig, &str>)> = vec![
        ("bind 192.0.2.1", Ok(cfg(&["192.0.2.1"], &[]))),
        ("bind 192.0.2.1 ::5", Ok(cfg(&["192.0.2.1", "::5"], &[]))),
        (
            "bind 192.0.2.1\nbind ::1 192.0.2.1",
            Ok(cfg(&["192.0.2.1", "::1"], &[])),
        ),
        (
            "bind 192.0.2.1 eth0",
            Ok(cfg(&["192.0.2.1", "192.0.2.10", "2001:db8::10"], &[])),
        ),
        (
            "bind eth0 {\n  except 192.0.2.10\n}",
            Ok(cfg(&["2001:db8::10"], &["192.0.2.10"])),
        ),
        (
            "bind eth0 {\n}",
            Ok(cfg(&["192.0.2.10", "2001:db8::10"], &[])),
        ),
        (
            "bind 192.0.2.1\nbind eth0 {\n  except 192.0.2.1 192.0.2.10\n}",
            Ok(cfg(&["192.0.2.1", "2001:db8::10"], &["192.0.2.10"])),
        ),
        (
            "bind",
            Err("Corefile:1: bind: at least one address or interface name is expected"),
        ),
        (
            "bind {\n  except 192.0.2.1\n}",
            Err("Corefile:1: bind: at least one address or interface name is expected"),
        ),
        (
            "bind 1.2.3.invalid",
            Err("Corefile:1: bind: not a valid IP address or interface name: '1.2.3.invalid'"),
        ),
        (
            "bind ::1 192.0.2.1\nbind noone",
            Err("Corefile:2: bind: not a valid IP address or interface name: 'noone'"),
        ),
        (
            "bind 192.0.2.1 {\n  except noone\n}",
            Err("Corefile:2: bind: not a valid IP address or interface name: 'noone'"),
        ),
        (
            "bind fe80::1%eth0",
            Err(
                "Corefile:1: bind: 'fe80::1%eth0': addresses with a zone are not supported (name the interface instead)",
            ),
        ),
        (
            "bind eth0 {\n  except\n}",
            Err(
                "Corefile:2: bind: at least one address or interface must be given to except subdirective",
            ),
        ),
        (
            "bind eth0 {\n  exclude 192.0.2.10\n}",
            Err("Corefile:2: bind: invalid option 'exclude'"),
        ),
        (
            "bind 192.0.2.1\nbind eth0 {\n  except eth0\n}",
            Err(
                "Corefile:2: bind: no address left to bind to in 'eth0' (interfaces without addresses, or all excepted)",
            ),
        ),
        (
            "bind dummy0",
            Err(
                "Corefile:1: bind: no address left to bind to in 'dummy0' (interfaces without addresses, or all excepted)",
            ),
        ),
    ];
    for (text, want) in cases {
        let loads = Cell::new(0);
        let load = || {
            loads.set(loads.get() + 1);
            Ok(fake())
        };
        assert_eq!(
            parse_text(text, &load),
            want.map_err(str::to_string),
            "{text}"
        );
        assert!(
            loads.get() <= 1,
            "{text}: interfaces read {} times",
            loads.get()
        );
        let ip_only = text
            .split_whitespace()
            .filter(|t| !["bind", "except", "{", "}"].contains(t))
            .all(|t| t.parse::<IpAddr>().is_ok());
        if ip_only {
            assert_eq!(
                loads.get(),
                0,
                "{text}: addresses alone need no interface list"
            );
        }
    }
}

#[test]
fn interface_list_failure_is_reported() {
    let load = || Err("permission denied".to_string());
    assert_eq!(
        parse_text("bind 192.0.2.1 eth0", &load),
        Err("Corefile:1: bind: failed to get interfaces list: permission denied".to_string())
    );
    assert_eq!(
        parse_text("bind 192.0.2.1", &load),
        Ok(cfg(&["192.0.2.1"], &[]))
    );
}

#[test]
fn setup_sets_listen_addresses() {
    let (out, _) = run_setup("bind", setup, "bind 127.0.0.1 ::1\nbind 127.0.0.1").unwrap();
    assert!(out.plugins.is_empty(), "bind adds no handler");
    assert_eq!(out.bind, Some(vec![ip("127.0.0.1"), ip("::1")]));

    // `lo` exists on every Linux host.
    let (out, _) = run_setup("bind", setup, "bind lo").unwrap();
    let addrs = out.bind.unwrap();
    assert!(addrs.contains(&ip("127.0.0.1")), "{addrs:?}");
    assert!(addrs.iter().all(IpAddr::is_loopback), "{addrs:?}");

    // `lo` may have no IPv6 address: then only the error text can be checked.
    match run_setup(
        "bind",
        setup,
        "bind lo {\n  except 127.0.0.1\n}\nbind 192.0.2.1",
    ) {
        Ok((out, _)) => {
            let addrs = out.bind.unwrap();
            assert!(
                !addrs.contains(&ip("127.0.0.1")) && addrs.contains(&ip("192.0.2.1")),
                "{addrs:?}"
            );
        }
        Err(e) => assert!(
            e.to_string()
                .starts_with("Corefile:1: bind: no address left to bind to in 'lo'"),
            "{e}"
        ),
    }
    let err = run_setup("bind", setup, "bind no-such-interface-here").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Corefile:1: bind: not a valid IP address or interface name: 'no-such-interface-here'"
    );
}
