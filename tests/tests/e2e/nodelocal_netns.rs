//! Node-local mode for real, inside network namespaces the tests create:
//! the agent holds 169.254.20.10 (and a ClusterIP) on its interface,
//! installs its packet-filter rules (nftables or iptables), answers
//! clients in a second namespace over a veth pair, keeps its setup
//! through the periodic sync, tears it down at exit unless
//! `-skipteardown`, hands over to a successor without losing a query, and
//! runs the golden `nodelocaldns.Corefile` against a fake kube-dns found
//! through `k8s://` endpoints. Nothing outside the namespaces is touched;
//! without root the tests skip.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use nix::sys::signal::Signal;
use nodedns_tests::client::query;
use nodedns_tests::load::{Streamed, udp_stream};
use nodedns_tests::netns::{Netns, SKIP_NOT_ROOT, is_root, veth};
use nodedns_tests::{Agent, wait_until};

const LOCAL_IP: &str = "169.254.20.10";
const CLUSTER_IP: &str = "10.96.0.10";

/// Two namespaces: `node` (the agent) and `pod` (a client), joined by a
/// veth pair; `pod` routes the node-local addresses over it.
fn node_and_pod() -> Option<(Netns, Netns)> {
    if !is_root() {
        eprintln!("{SKIP_NOT_ROOT}");
        return None;
    }
    let node = Netns::new().expect("netns");
    let pod = Netns::new().expect("netns");
    veth(
        &node,
        "veth-node",
        &["10.200.0.1/24"],
        &pod,
        "veth-pod",
        &["10.200.0.2/24"],
    )
    .expect("veth");
    for ip in [LOCAL_IP, CLUSTER_IP] {
        pod.ip(&["route", "add", &format!("{ip}/32"), "via", "10.200.0.1"])
            .expect("route");
    }
    Some((node, pod))
}

/// One UDP query from inside `ns` (a thread that entered it), with a
/// deadline; `None` when nothing came back.
async fn ask_from(ns: PathBuf, server: SocketAddr, name: String) -> Option<Message> {
    let wire = query(&name, RecordType::A).to_vec().expect("encode");
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let answer = (|| {
            let f = std::fs::File::open(&ns).ok()?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            let s = UdpSocket::bind("0.0.0.0:0").ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.send_to(&wire, server).ok()?;
            let mut buf = [0u8; 1500];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            Message::from_vec(&buf[..n]).ok()
        })();
        let _ = tx.send(answer);
    });
    rx.await.ok().flatten()
}

fn hosts_corefile() -> String {
    format!(
        ".:53 {{\n    bind {LOCAL_IP} {CLUSTER_IP}\n    hosts {{\n        10.1.2.3 svc.test\n    }}\n    health {LOCAL_IP}:8080\n}}\n"
    )
}

fn addrs(ns: &Netns) -> String {
    ns.exec_ok(&["ip", "-o", "addr"]).unwrap_or_default()
}

fn nft_rules(ns: &Netns) -> usize {
    // Our table only (iptables-nft's tables show `policy accept` too).
    ns.exec_ok(&["nft", "list", "table", "inet", "nodedns"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("NodeLocal DNS Cache"))
        .count()
}

fn iptables_rules(ns: &Netns) -> usize {
    ns.exec_ok(&["iptables-save"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("NodeLocal DNS Cache"))
        .count()
}

fn node_local(filter: &str) -> nodedns_tests::agent::AgentBuilder {
    node_local_with(hosts_corefile(), filter)
}

fn node_local_with(base: String, filter: &str) -> nodedns_tests::agent::AgentBuilder {
    Agent::corefile("")
        .file("Corefile.base", base)
        .arg("-localip")
        .arg(format!("{LOCAL_IP},{CLUSTER_IP}"))
        .arg("-basecorefile")
        .arg("Corefile.base")
        .arg("-metrics-listen-address=")
        .arg("--packet-filter")
        .arg(filter)
}

#[tokio::test]
async fn a_pod_reaches_the_link_local_address_and_teardown_removes_everything() {
    let Some((node, pod)) = node_and_pod() else {
        return;
    };
    let pod_path = pod.path();
    let node_ref = &node;
    for filter in ["nftables", "iptables"] {
        let pod_path = pod_path.clone();
        let ns_name = node_ref.name().to_string();
        let (before_exit, after_exit) = node_ref.run(move || async move {
            let mut agent = node_local(filter)
                .arg("-syncinterval")
                .arg("1")
                .start()
                .await;
            for server in [LOCAL_IP, CLUSTER_IP] {
                let m = ask_from(
                    pod_path.clone(),
                    format!("{server}:53").parse().unwrap(),
                    "svc.test.".into(),
                )
                .await
                .unwrap_or_else(|| panic!("no answer from {server} ({filter})"));
                assert_eq!(m.metadata.response_code, ResponseCode::NoError);
                assert_eq!(m.answers.len(), 1, "{m:?}");
            }
            let status =
                nodedns_tests::http_get(format!("{LOCAL_IP}:8080").parse().unwrap(), "/health")
                    .await;
            assert_eq!(status.map(|s| s.0), Some(200), "DNS-level health");
            let ns = Netns::attach(&ns_name);
            let before = (addrs(&ns), nft_rules(&ns), iptables_rules(&ns));
            agent.signal(Signal::SIGTERM);
            assert!(
                agent
                    .wait_exit(Duration::from_secs(10))
                    .await
                    .expect("exit")
                    .success()
            );
            let after = (addrs(&ns), nft_rules(&ns), iptables_rules(&ns));
            (before, after)
        });
        assert!(
            before_exit.0.contains(LOCAL_IP) && before_exit.0.contains(CLUSTER_IP),
            "{filter}: {}",
            before_exit.0
        );
        match filter {
            "nftables" => assert_eq!(before_exit.1, 24, "{filter}: nft rules (12 per address)"),
            _ => assert_eq!(
                before_exit.2, 24,
                "{filter}: iptables rules (12 per address)"
            ),
        }
        assert!(
            !after_exit.0.contains(LOCAL_IP),
            "{filter}: address left: {}",
            after_exit.0
        );
        assert_eq!((after_exit.1, after_exit.2), (0, 0), "{filter}: rules left");
    }
}

#[tokio::test]
async fn skipteardown_leaves_the_setup_and_the_sync_puts_back_what_is_removed() {
    let Some((node, _pod)) = node_and_pod() else {
        return;
    };
    let ns_name = node.name().to_string();
    node.run(move || async move {
        let ns = Netns::attach(&ns_name);
        let mut agent = node_local("nftables")
            .env("NODEDNS_LOG", "info,nodedns=debug")
            .arg("-syncinterval")
            .arg("1")
            .arg("-skipteardown")
            .start()
            .await;
        let installed = nft_rules(&ns);
        assert!(installed >= 12, "{installed}");
        // Several syncs later: the same rules, not duplicated.
        let synced = wait_until(Duration::from_secs(10), || {
            let n = agent
                .stderr()
                .iter()
                .filter(|l| l.contains("node-local: synced the interface"))
                .count();
            async move { n >= 3 }
        })
        .await;
        assert!(synced, "{:?}", agent.stderr());
        assert_eq!(
            nft_rules(&ns),
            installed,
            "the periodic sync duplicated rules"
        );
        // Someone removes the address and the table: both come back.
        ns.exec_ok(&["nft", "delete", "table", "inet", "nodedns"])
            .expect("delete table");
        let _ = ns.exec(&["ip", "addr", "del", &format!("{LOCAL_IP}/32"), "dev", "lo"]);
        let _ = ns.exec(&[
            "ip",
            "addr",
            "del",
            &format!("{LOCAL_IP}/32"),
            "dev",
            "nodelocaldns",
        ]);
        let back = wait_until(Duration::from_secs(5), || {
            let ok = nft_rules(&ns) == installed && addrs(&ns).contains(LOCAL_IP);
            async move { ok }
        })
        .await;
        assert!(
            back,
            "not put back: {} rules, {}",
            nft_rules(&ns),
            addrs(&ns)
        );
        agent.signal(Signal::SIGTERM);
        assert!(
            agent
                .wait_exit(Duration::from_secs(10))
                .await
                .expect("exit")
                .success()
        );
        assert_eq!(nft_rules(&ns), installed, "-skipteardown removed the rules");
        assert!(
            addrs(&ns).contains(LOCAL_IP),
            "-skipteardown removed the address"
        );
    });
}

/// Names a rollout test warms, then streams.
const WARM: usize = 100;

fn warm_name(i: usize) -> String {
    format!("w{}.example.org.", i % WARM)
}

#[tokio::test]
async fn a_rollout_on_the_link_local_address_loses_nothing_and_keeps_the_rules() {
    let Some((node, pod)) = node_and_pod() else {
        return;
    };
    let ns_name = node.name().to_string();
    let pod_path = pod.path();
    node.run(move || async move {
        let ns = Netns::attach(&ns_name);
        let sock = std::env::temp_dir().join(format!(
            "nodedns-netns-handover-{}.sock",
            std::process::id()
        ));
        let up = nodedns_tests::FakeUpstream::builder()
            .ttl(600)
            .wildcard_a("192.0.2.1")
            .start()
            .await;
        let base = format!(
            ".:53 {{\n    bind {LOCAL_IP} {CLUSTER_IP}\n    cache 600\n    forward . {}\n}}\n",
            up.addr
        );
        let old = node_local_with(base.clone(), "nftables")
            .arg("--handover-socket")
            .arg(sock.display().to_string())
            .start()
            .await;
        for i in 0..WARM {
            let m = ask_from(
                pod_path.clone(),
                format!("{LOCAL_IP}:53").parse().unwrap(),
                warm_name(i),
            )
            .await;
            assert_eq!(m.map(|m| m.answers.len()), Some(1));
        }
        let asked = |up: &nodedns_tests::FakeUpstream| {
            (0..WARM)
                .map(|i| up.count(&warm_name(i), RecordType::A))
                .sum::<usize>()
        };
        assert_eq!(asked(&up), WARM);
        let rules = nft_rules(&ns);
        let stop = Arc::new(AtomicBool::new(false));
        let load = udp_stream(
            format!("{LOCAL_IP}:53").parse().unwrap(),
            3000,
            stop.clone(),
            Some(pod_path.clone()),
            warm_name,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let new = node_local_with(base, "nftables")
            .arg("--handover-socket")
            .arg(sock.display().to_string())
            .start()
            .await;
        assert!(
            old.wait_stdout("handed over", Duration::from_secs(10))
                .await
        );
        let mut old = old;
        old.signal(Signal::SIGTERM);
        assert!(
            old.wait_exit(Duration::from_secs(10))
                .await
                .expect("old exits")
                .success()
        );
        // The old agent left the rules and the address to the new one.
        assert_eq!(nft_rules(&ns), rules, "rules changed during the rollout");
        assert!(addrs(&ns).contains(LOCAL_IP));
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let Streamed {
            sent,
            answered,
            failed,
        } = load.join().expect("load");
        assert_eq!(failed, 0, "error answers during the rollout");
        assert!(sent > 2000, "sent only {sent}");
        assert_eq!(answered, sent, "queries lost during the rollout");
        assert_eq!(
            asked(&up),
            WARM,
            "the new agent's answers for warmed names went upstream"
        );
        drop(new);
        let _ = std::fs::remove_file(&sock);
    });
}

/// The golden `nodelocaldns.Corefile`, unchanged, as the DaemonSet runs
/// it: `__PILLAR__` values from flags, env and the kube-dns ConfigMap, the
/// cluster zone forwarded over TCP to kube-dns's pods found through
/// `k8s://` endpoints that change during the test, queried from a pod's
/// namespace at 169.254.20.10 and at the ClusterIP.
#[tokio::test]
async fn the_golden_nodelocaldns_corefile_follows_kube_dns_endpoints() {
    use nodedns_tests::kubeapi::{Endpoint, EndpointSlice, FakeKubeApi};
    use nodedns_tests::{FakeUpstream, http_get};
    let Some((node, pod)) = node_and_pod() else {
        return;
    };
    let pod_path = pod.path();
    node.run(move || async move {
        let kube_dns: Vec<FakeUpstream> = {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(FakeUpstream::builder().wildcard_a("10.0.0.1").start().await);
            }
            v
        };
        let outside = FakeUpstream::builder()
            .a("www.example.org.", "192.0.2.1")
            .start()
            .await;
        let slice = |i: usize, ready: bool| {
            let up = &kube_dns[i];
            let mut e = Endpoint::new(&up.addr.ip().to_string());
            if !ready {
                e = e.not_ready();
            }
            EndpointSlice::new("kube-system", "kube-dns", &format!("kube-dns-{i}"))
                .endpoint(e)
                .port("dns", "UDP", up.addr.port())
                .port("dns-tcp", "TCP", up.addr.port())
        };
        let api = FakeKubeApi::start().await;
        api.apply(slice(0, true));
        api.apply(slice(1, true));
        let dir = std::env::temp_dir().join(format!("nodedns-golden-nl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("kube-dns")).expect("dir");
        std::fs::write(
            dir.join("kube-dns").join("upstreamNameservers"),
            format!(r#"["{}"]"#, outside.addr),
        )
        .expect("cm");
        let kubeconfig = std::fs::read_to_string(api.kubeconfig(&dir)).expect("kubeconfig");
        let golden = include_str!("../../corefiles/nodelocaldns.Corefile");
        let agent = Agent::corefile("")
            .file("Corefile.base", golden)
            .file("kubeconfig", kubeconfig)
            .env("KUBECONFIG", "kubeconfig")
            .arg("-localip")
            .arg(format!("{LOCAL_IP},{CLUSTER_IP}"))
            .arg("-basecorefile")
            .arg("Corefile.base")
            .arg("-upstreamsvc")
            .arg("k8s://kube-system/kube-dns")
            .arg("-kubednscm")
            .arg(dir.join("kube-dns").display().to_string())
            .start()
            .await;
        let written = std::fs::read_to_string(agent.path("Corefile")).expect("written");
        assert!(
            written.contains("forward . k8s://kube-system/kube-dns {"),
            "{written}"
        );
        assert!(
            written.contains(&format!("forward . {}", outside.addr)),
            "{written}"
        );
        let ask = |server: &str, name: String| {
            let server: SocketAddr = format!("{server}:53").parse().expect("addr");
            ask_from(pod_path.clone(), server, name)
        };
        let queries = |up: &FakeUpstream| up.udp_queries() + up.tcp_queries();
        // The cluster zone spreads over both ready pods, over TCP.
        for i in 0..40 {
            let server = if i % 2 == 0 { LOCAL_IP } else { CLUSTER_IP };
            let m = ask(server, format!("q{i}.svc.cluster.local."))
                .await
                .expect("answer");
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
        }
        assert!(queries(&kube_dns[0]) > 0 && queries(&kube_dns[1]) > 0);
        assert_eq!(
            kube_dns[0].udp_queries() + kube_dns[1].udp_queries(),
            0,
            "force_tcp"
        );
        assert_eq!(queries(&kube_dns[2]), 0);
        // Everything else goes to the ConfigMap's upstream.
        let m = ask(LOCAL_IP, "www.example.org.".into())
            .await
            .expect("answer");
        assert_eq!(m.answers.len(), 1);
        assert_eq!(outside.count("www.example.org.", RecordType::A), 1);
        // kube-dns rolls: pod 0 is no longer ready, pod 2 appears.
        api.apply(slice(0, false));
        api.apply(slice(2, true));
        let mut n = 100;
        let pods = &kube_dns;
        let moved =
            wait_until(Duration::from_secs(10), || {
                n += 1;
                let name = format!("q{n}.svc.cluster.local.");
                let before0 = queries(&pods[0]);
                let fut = ask(LOCAL_IP, name);
                async move {
                    fut.await.is_some() && queries(&pods[0]) == before0 && queries(&pods[2]) > 0
                }
            })
            .await;
        assert!(
            moved,
            "traffic did not follow the endpoints: {:?}",
            agent.stderr()
        );
        let before0 = queries(&kube_dns[0]);
        for i in 200..230 {
            let m = ask(CLUSTER_IP, format!("q{i}.svc.cluster.local."))
                .await
                .expect("answer");
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        }
        assert_eq!(
            queries(&kube_dns[0]),
            before0,
            "a not-ready pod got queries"
        );
        // Health is DNS-level; metrics carry node-cache's setup counter.
        let health = http_get(format!("{LOCAL_IP}:8080").parse().expect("addr"), "/health").await;
        assert_eq!(health.map(|h| h.0), Some(200));
        let metrics = http_get("127.0.0.1:9253".parse().expect("addr"), "/metrics")
            .await
            .expect("metrics");
        assert!(
            metrics
                .1
                .contains("coredns_nodecache_setup_errors_total{errortype=\"nftables\"} 0")
        );
        let setup = http_get("127.0.0.1:9353".parse().expect("addr"), "/metrics")
            .await
            .expect("9353");
        assert!(setup.1.contains("coredns_nodecache_setup_errors_total"));
        drop(agent);
        let _ = std::fs::remove_dir_all(&dir);
    });
}
