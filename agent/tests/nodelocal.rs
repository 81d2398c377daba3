//! Node-local network setup (`nodedns::nodelocal`) in network namespaces
//! the tests create: links and addresses, nf_tables and iptables rules,
//! idempotent re-syncs, teardown. Needs root; skips with a message
//! otherwise. The `nft`, `iptables` and `ip` binaries only check results
//! (our nf_tables path does not use `nft`).

use std::net::IpAddr;

use nodedns::nodelocal::{FilterBackend, FilterMode, LinkUse, NodeLocalConfig, NodeLocalNet};
use nodedns_tests::netns::{self, Netns, SKIP_NOT_ROOT};

const V4: &str = "169.254.20.10";
const V6: &str = "fd00:dead::a";

fn root() -> bool {
    if netns::is_root() {
        true
    } else {
        eprintln!("{SKIP_NOT_ROOT}");
        false
    }
}

fn config(ips: &[&str], interface: Option<&str>, filter: FilterMode) -> NodeLocalConfig {
    NodeLocalConfig {
        ips: ips.iter().map(|s| s.parse::<IpAddr>().unwrap()).collect(),
        port: 53,
        health_port: 8080,
        interface: interface.map(str::to_string),
        filter,
    }
}

/// The addresses on `link` in `ns` (`ip -j addr`), as "IP/PREFIX".
fn addrs(ns: &Netns, link: &str) -> Vec<String> {
    let out = ns.ip(&["-j", "addr", "show", "dev", link]);
    let Ok(out) = out else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            found.push(format!(
                "{}/{}",
                a["local"].as_str().unwrap(),
                a["prefixlen"].as_u64().unwrap()
            ));
        }
    }
    found
}

/// Sends "hello" from namespace `client` to `ip:port`, where a socket in
/// `server` echoes it; what came back. Every wait is bounded.
fn udp_echo(server: &Netns, client: &Netns, ip: &'static str, port: u16) -> Vec<u8> {
    use std::time::Duration;
    use tokio::net::UdpSocket;
    std::thread::scope(|s| {
        let echo = s.spawn(|| {
            server.run(move || async move {
                let sock = UdpSocket::bind((ip, port)).await.unwrap();
                let mut buf = [0u8; 64];
                let (n, peer) =
                    tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
                        .await
                        .expect("a datagram within 10 s")
                        .unwrap();
                sock.send_to(&buf[..n], peer).await.unwrap();
            })
        });
        let got = client.run(move || async move {
            let sock = UdpSocket::bind("0.0.0.0:0").await.unwrap();
            let mut buf = [0u8; 64];
            // The server may not be bound yet: resend until it answers.
            for _ in 0..50 {
                sock.send_to(b"hello", (ip, port)).await.unwrap();
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await
                {
                    return buf[..n].to_vec();
                }
            }
            Vec::new()
        });
        echo.join().unwrap();
        got
    })
}

fn link_exists(ns: &Netns, link: &str) -> bool {
    ns.ip(&["link", "show", "dev", link]).is_ok()
}

/// `nft list table inet nodedns` (None when there is no such table).
fn nft_table(ns: &Netns) -> Option<String> {
    let out = ns
        .exec(&["nft", "list", "table", "inet", "nodedns"])
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Our lines in `iptables-save` / `ip6tables-save`.
fn iptables_rules(ns: &Netns, save: &str) -> Vec<String> {
    ns.exec_ok(&[save])
        .unwrap()
        .lines()
        .filter(|l| l.contains("NodeLocal DNS Cache"))
        .map(str::to_string)
        .collect()
}

#[test]
fn addresses_both_families_on_the_dummy_or_lo_then_removed() {
    if !root() {
        return;
    }
    let ns = Netns::new().unwrap();
    let net = std::sync::Arc::new(NodeLocalNet::new(config(
        &[V4, V6],
        Some("nodelocaldns"),
        FilterMode::Off,
    )));
    let n = net.clone();
    let using = ns.run(move || async move {
        for _ in 0..5 {
            n.ensure_interface().await.unwrap();
        }
        n.link_use().await.unwrap()
    });
    // A kernel with a dummy driver gets the dummy; one without (as these
    // machines) the loopback.
    let link = match &using {
        LinkUse::CreatedDummy(name) => {
            assert_eq!(name, "nodelocaldns");
            "nodelocaldns"
        }
        LinkUse::Existing(name) => {
            assert_eq!(name, "lo");
            assert!(!link_exists(&ns, "nodelocaldns"));
            "lo"
        }
        other => panic!("unexpected {other:?}"),
    };
    let got = addrs(&ns, link);
    for want in [format!("{V4}/32"), format!("{V6}/128")] {
        assert_eq!(
            got.iter().filter(|a| **a == want).count(),
            1,
            "{want} once in {got:?}"
        );
    }
    let n = net.clone();
    ns.run(move || async move { n.teardown().await.unwrap() });
    if using.is_dummy() {
        assert!(!link_exists(&ns, "nodelocaldns"));
    } else {
        let got = addrs(&ns, "lo");
        assert!(got.contains(&"127.0.0.1/8".to_string()), "{got:?}");
        assert!(
            !got.iter().any(|a| a.starts_with(V4) || a.starts_with(V6)),
            "{got:?}"
        );
    }
}

#[test]
fn named_existing_link_gets_the_addresses_and_keeps_its_own() {
    if !root() {
        return;
    }
    let a = Netns::new().unwrap();
    let b = Netns::new().unwrap();
    netns::veth(&a, "nl-a", &["10.9.0.1/24"], &b, "nl-b", &["10.9.0.2/24"]).unwrap();
    // 10.9.0.1/32 is not there; 169.254.20.10/32 is put there beforehand
    // by someone else: it must stay after teardown.
    a.ip(&["addr", "add", "169.254.20.11/32", "dev", "nl-a"])
        .unwrap();
    let net = std::sync::Arc::new(NodeLocalNet::new(config(
        &[V4, "169.254.20.11", V6],
        Some("nl-a"),
        FilterMode::Off,
    )));
    let n = net.clone();
    let using = a.run(move || async move {
        n.ensure_interface().await.unwrap();
        n.ensure_interface().await.unwrap();
        n.link_use().await.unwrap()
    });
    assert_eq!(using, LinkUse::Existing("nl-a".into()));
    let got = addrs(&a, "nl-a");
    for want in [
        "10.9.0.1/24".to_string(),
        format!("{V4}/32"),
        "169.254.20.11/32".into(),
        format!("{V6}/128"),
    ] {
        assert!(got.contains(&want), "{want} in {got:?}");
    }
    // Reachable from the other namespace over the veth.
    b.ip(&["route", "add", "169.254.20.10/32", "via", "10.9.0.1"])
        .unwrap();
    assert_eq!(udp_echo(&a, &b, V4, 5353), b"hello");

    // Someone removes one of ours: the next ensure puts it back.
    a.ip(&["addr", "del", &format!("{V4}/32"), "dev", "nl-a"])
        .unwrap();
    let n = net.clone();
    a.run(move || async move { n.ensure_interface().await.unwrap() });
    assert!(addrs(&a, "nl-a").contains(&format!("{V4}/32")));

    let n = net.clone();
    a.run(move || async move { n.teardown().await.unwrap() });
    let got = addrs(&a, "nl-a");
    assert!(link_exists(&a, "nl-a"), "an existing link is never deleted");
    assert!(got.contains(&"10.9.0.1/24".to_string()), "{got:?}");
    assert!(
        got.contains(&"169.254.20.11/32".to_string()),
        "not ours: {got:?}"
    );
    assert!(!got.contains(&format!("{V4}/32")), "{got:?}");
    assert!(!got.contains(&format!("{V6}/128")), "{got:?}");
}

const NFT_V4_LINE: &str =
    "ip daddr 169.254.20.10 tcp dport 53 notrack comment \"NodeLocal DNS Cache: skip conntrack\"";
const NFT_V6_LINE: &str =
    "ip6 saddr fd00:dead::a udp sport 53 accept comment \"NodeLocal DNS Cache: allow DNS traffic\"";

fn count_rules(table: &str) -> usize {
    table
        .lines()
        .filter(|l| l.contains("NodeLocal DNS Cache"))
        .count()
}

#[test]
fn nftables_rules_installed_idempotent_repaired_and_torn_down() {
    if !root() {
        return;
    }
    let ns = Netns::new().unwrap();
    let net = std::sync::Arc::new(NodeLocalNet::new(config(
        &[V4, V6],
        None,
        FilterMode::Nftables,
    )));
    let n = net.clone();
    ns.run(move || async move { n.ensure_rules().await.unwrap() });
    let first = nft_table(&ns).expect("table inet nodedns");
    assert_eq!(count_rules(&first), 24, "{first}");
    assert!(first.contains(NFT_V4_LINE), "{first}");
    assert!(first.contains(NFT_V6_LINE), "{first}");
    assert!(
        first.contains("type filter hook prerouting priority raw"),
        "{first}"
    );
    assert!(
        first.contains("type filter hook input priority filter"),
        "{first}"
    );

    // Five more syncs: exactly the same table.
    let n = net.clone();
    ns.run(move || async move {
        for _ in 0..5 {
            n.ensure_rules().await.unwrap();
        }
        assert_eq!(n.filter_backend().await, Some(FilterBackend::Nftables));
    });
    assert_eq!(nft_table(&ns).unwrap(), first);

    // Someone deletes a rule and adds one of theirs: the next sync puts
    // back exactly our set.
    let listing = ns
        .exec_ok(&[
            "nft",
            "-a",
            "list",
            "chain",
            "inet",
            "nodedns",
            "raw-prerouting",
        ])
        .unwrap();
    let handle = listing
        .lines()
        .find(|l| l.contains("notrack"))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap()
        .trim()
        .to_string();
    ns.exec_ok(&[
        "nft",
        "delete",
        "rule",
        "inet",
        "nodedns",
        "raw-prerouting",
        "handle",
        &handle,
    ])
    .unwrap();
    ns.exec_ok(&[
        "nft",
        "add",
        "rule",
        "inet",
        "nodedns",
        "filter-input",
        "tcp",
        "dport",
        "99",
        "drop",
    ])
    .unwrap();
    assert_eq!(count_rules(&nft_table(&ns).unwrap()), 23);
    let n = net.clone();
    ns.run(move || async move { n.ensure_rules().await.unwrap() });
    assert_eq!(nft_table(&ns).unwrap(), first);

    // Teardown removes the table; a second teardown, after the table is
    // gone, does not fail.
    let n = net.clone();
    ns.run(move || async move { n.teardown().await.unwrap() });
    assert_eq!(nft_table(&ns), None);
    let n = net.clone();
    ns.run(move || async move {
        n.ensure_rules().await.unwrap();
    });
    ns.exec_ok(&["nft", "delete", "table", "inet", "nodedns"])
        .unwrap();
    let n = net.clone();
    ns.run(move || async move { n.teardown().await.unwrap() });
    assert_eq!(nft_table(&ns), None);
}

#[test]
fn auto_mode_uses_nftables_where_the_kernel_has_it() {
    if !root() {
        return;
    }
    let ns = Netns::new().unwrap();
    let net = std::sync::Arc::new(NodeLocalNet::new(config(&[V4], None, FilterMode::Auto)));
    let n = net.clone();
    let backend = ns.run(move || async move {
        n.ensure_rules().await.unwrap();
        n.filter_backend().await
    });
    assert_eq!(backend, Some(FilterBackend::Nftables));
    assert_eq!(count_rules(&nft_table(&ns).unwrap()), 12);
    assert!(iptables_rules(&ns, "iptables-save").is_empty());
    let n = net.clone();
    ns.run(move || async move { n.teardown().await.unwrap() });
    assert_eq!(nft_table(&ns), None);
}

#[test]
fn iptables_rules_installed_idempotent_repaired_and_torn_down() {
    if !root() {
        return;
    }
    let ns = Netns::new().unwrap();
    let net = std::sync::Arc::new(NodeLocalNet::new(config(
        &[V4, V6],
        None,
        FilterMode::Iptables,
    )));
    let n = net.clone();
    ns.run(move || async move { n.ensure_rules().await.unwrap() });
    let v4 = iptables_rules(&ns, "iptables-save");
    let v6 = iptables_rules(&ns, "ip6tables-save");
    assert_eq!(v4.len(), 12, "{v4:#?}");
    assert_eq!(v6.len(), 12, "{v6:#?}");
    assert!(
        v4.contains(
            &"-A PREROUTING -d 169.254.20.10/32 -p tcp -m tcp --dport 53 -m comment --comment \"NodeLocal DNS Cache: skip conntrack\" -j NOTRACK"
                .to_string()
        ),
        "{v4:#?}"
    );
    assert!(
        v6.contains(
            &"-A OUTPUT -s fd00:dead::a/128 -p tcp -m tcp --sport 8080 -m comment --comment \"NodeLocal DNS Cache: skip conntrack\" -j NOTRACK"
                .to_string()
        ),
        "{v6:#?}"
    );
    assert_eq!(nft_table(&ns), None, "no nf_tables table in iptables mode");

    let n = net.clone();
    ns.run(move || async move {
        for _ in 0..5 {
            n.ensure_rules().await.unwrap();
        }
    });
    assert_eq!(iptables_rules(&ns, "iptables-save"), v4);
    assert_eq!(iptables_rules(&ns, "ip6tables-save"), v6);

    // A rule removed by someone else comes back with the next sync.
    let del = [
        "iptables",
        "-t",
        "raw",
        "-D",
        "PREROUTING",
        "-p",
        "udp",
        "-d",
        V4,
        "--dport",
        "53",
        "-j",
        "NOTRACK",
        "-m",
        "comment",
        "--comment",
        "NodeLocal DNS Cache: skip conntrack",
    ];
    ns.exec_ok(&del).unwrap();
    assert_eq!(iptables_rules(&ns, "iptables-save").len(), 11);
    let n = net.clone();
    ns.run(move || async move { n.ensure_rules().await.unwrap() });
    assert_eq!(iptables_rules(&ns, "iptables-save").len(), 12);

    // Teardown after someone deleted a rule, and with one rule twice:
    // everything of ours goes, nothing fails.
    ns.exec_ok(&del).unwrap();
    let mut dup = del;
    dup[3] = "-I";
    ns.exec_ok(&dup).unwrap();
    ns.exec_ok(&dup).unwrap();
    let n = net.clone();
    ns.run(move || async move { n.teardown().await.unwrap() });
    assert!(iptables_rules(&ns, "iptables-save").is_empty());
    assert!(iptables_rules(&ns, "ip6tables-save").is_empty());
}

#[test]
fn a_link_that_cannot_be_set_up_is_an_error_counted_in_the_metric() {
    use nodedns::nodelocal::{ErrorType, error_count};
    if !root() {
        return;
    }
    let ns = Netns::new().unwrap();
    // Longer than IFNAMSIZ: the kernel refuses the lookup or the creation.
    let net = std::sync::Arc::new(NodeLocalNet::new(config(
        &[V4],
        Some("a-name-far-too-long-for-a-link"),
        FilterMode::Off,
    )));
    let before = error_count(ErrorType::InterfaceAdd) + error_count(ErrorType::InterfaceCheck);
    let n = net.clone();
    let r = ns.run(move || async move { n.ensure_interface().await });
    assert!(r.is_err(), "{r:?}");
    let after = error_count(ErrorType::InterfaceAdd) + error_count(ErrorType::InterfaceCheck);
    assert!(after > before, "{before} -> {after}");
    let text = nodedns_plugins::pkg::metrics::render();
    assert!(
        text.contains("coredns_nodecache_setup_errors_total{errortype=\"nftables\"}"),
        "{text}"
    );
    // Nothing was set up, so teardown has nothing to undo.
    let n = net.clone();
    ns.run(move || async move { n.teardown().await.unwrap() });
}

/// DNS traffic to the local IP, from another namespace over a veth, is
/// not tracked once the rules are in (a probe table counts untracked
/// packets to port 53), with either backend.
fn traffic_skips_conntrack(filter: FilterMode) {
    let a = Netns::new().unwrap();
    let b = Netns::new().unwrap();
    netns::veth(&a, "nl-a", &["10.9.0.1/24"], &b, "nl-b", &["10.9.0.2/24"]).unwrap();
    b.ip(&["route", "add", "169.254.20.10/32", "via", "10.9.0.1"])
        .unwrap();
    a.exec_ok(&[
        "nft",
        "add table inet probe; \
         add chain inet probe in { type filter hook input priority 10; }; \
         add rule inet probe in udp dport 53 ct state untracked counter; \
         add rule inet probe in udp dport 53 ct state new counter",
    ])
    .unwrap();
    let net = std::sync::Arc::new(NodeLocalNet::new(config(&[V4], Some("nl-a"), filter)));
    let n = net.clone();
    a.run(move || async move {
        n.ensure_interface().await.unwrap();
        n.ensure_rules().await.unwrap();
    });
    assert_eq!(udp_echo(&a, &b, V4, 53), b"hello");
    let probe = a
        .exec_ok(&["nft", "list", "table", "inet", "probe"])
        .unwrap();
    let counted = |state: &str| {
        probe
            .lines()
            .find(|l| l.contains(&format!("ct state {state}")))
            .and_then(|l| l.split("packets ").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {state} counter in {probe}"))
    };
    assert!(counted("untracked") >= 1, "{probe}");
    assert_eq!(counted("new"), 0, "{probe}");
    let n = net.clone();
    a.run(move || async move { n.teardown().await.unwrap() });
}

#[test]
fn traffic_skips_conntrack_with_nftables() {
    if !root() {
        return;
    }
    traffic_skips_conntrack(FilterMode::Nftables);
}

#[test]
fn traffic_skips_conntrack_with_iptables() {
    if !root() {
        return;
    }
    traffic_skips_conntrack(FilterMode::Iptables);
}
