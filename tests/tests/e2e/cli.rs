//! The command line: CoreDNS's flags, errors with FILE:LINE and a
//! non-zero exit, the embedded default.

use std::process::Command;

use nodedns_tests::Agent;
use nodedns_tests::agent::binary;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary())
        .args(args)
        .output()
        .expect("run nodedns");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plugins_lists_the_chain_order() {
    let (ok, out, _) = run(&["-plugins"]);
    assert!(ok);
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("dns."))
        .collect();
    assert_eq!(
        names,
        vec![
            "tls",
            "reload",
            "bind",
            "ready",
            "health",
            "prometheus",
            "errors",
            "log",
            "any",
            "chaos",
            "loadbalance",
            "cache",
            "minimal",
            "hosts",
            "kubernetes",
            "loop",
            "forward",
            "whoami"
        ]
    );
    let (ok2, out2, _) = run(&["--plugins"]);
    assert!(ok2);
    assert_eq!(out, out2);
}

#[test]
fn version_and_help() {
    let (ok, out, _) = run(&["-version"]);
    assert!(ok);
    assert!(out.starts_with("nodedns-"), "{out}");
    let (ok, out, _) = run(&["--help"]);
    assert!(ok);
    assert!(
        out.contains("-conf FILE")
            && out.contains("--admin ADDR")
            && out.contains("--admin-token-file")
            && out.contains("nodedns ctl"),
        "{out}"
    );
    let (ok, _, err) = run(&["-nonesuch"]);
    assert!(!ok);
    assert!(err.contains("unknown flag"), "{err}");
}

#[tokio::test]
async fn bad_corefiles_exit_non_zero_naming_the_line() {
    let cases = [
        (
            ".:0 {\n    whoami\n    nonesuch\n}\n",
            "Corefile:3: unknown directive 'nonesuch'",
        ),
        (".:0 {\n    whoami\n", "Corefile:1: unclosed '{'"),
        (
            ".:0 {\n    hosts {\n        ttl x\n    }\n}\n",
            "Corefile:3: hosts:",
        ),
        (
            ".:0 {\n    rewrite name a b\n}\n",
            "Corefile:2: rewrite: plugin not supported yet",
        ),
        (
            ".:0 {\n    whoami\n}\n.:0 {\n    whoami\n}\n",
            "Corefile:4: cannot serve dns://.:0",
        ),
    ];
    for (corefile, want) in cases {
        let (status, stderr) = Agent::corefile(corefile).start_fails().await;
        assert!(!status.success(), "{corefile:?} should fail");
        assert!(
            stderr.contains(want),
            "{corefile:?}: want {want:?} in {stderr:?}"
        );
        assert!(stderr.contains("/Corefile:"), "names the file: {stderr}");
    }
}

#[tokio::test]
async fn a_port_in_use_fails_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (status, stderr) =
        Agent::corefile(format!(".:{port} {{\n    bind 127.0.0.1\n    whoami\n}}\n"))
            .start_fails()
            .await;
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("binding 127.0.0.1:{port}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn pidfile_and_dns_port() {
    let port = nodedns_tests::free_port();
    let agent = Agent::corefile(". {\n    bind 127.0.0.1\n    whoami\n}\n")
        .arg("-dns.port")
        .arg(port.to_string())
        .arg("-pidfile")
        .arg("nodedns.pid")
        .start()
        .await;
    assert_eq!(
        agent.udp().port(),
        port,
        "-dns.port applies to keys without a port"
    );
    let pid = std::fs::read_to_string(agent.path("nodedns.pid")).unwrap();
    assert_eq!(pid.trim(), agent.pid().to_string());
}

#[tokio::test]
async fn embedded_default_forwards_to_resolv_conf() {
    let up = nodedns_tests::FakeUpstream::builder()
        .a("www.example.org.", "192.0.2.1")
        .start()
        .await;
    let port = nodedns_tests::free_port();
    let dir = std::env::temp_dir().join(format!("nodedns-default-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {}\n", up.addr)).unwrap();
    let mut child = tokio::process::Command::new(binary())
        .args(["-dns.port", &port.to_string(), "--resolv-conf"])
        .arg(&resolv)
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let c = nodedns_tests::Client::new(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let ok = nodedns_tests::wait_until(std::time::Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(c.server).await.is_ok()
    })
    .await;
    assert!(ok, "the default config listens on -dns.port");
    let m = c
        .udp("www.example.org.", hickory_proto::rr::RecordType::A)
        .await;
    assert_eq!(
        m.answers.len(),
        1,
        "forwarded to the resolv.conf upstream: {m:?}"
    );
    assert_eq!(
        up.count("www.example.org.", hickory_proto::rr::RecordType::A),
        1
    );
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn quiet_prints_no_start_up_lines() {
    let port = nodedns_tests::free_port();
    let dir = std::env::temp_dir().join(format!("nodedns-quiet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Corefile"),
        format!(".:{port} {{\n    bind 127.0.0.1\n    whoami\n}}\n"),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(binary())
        .args(["-quiet", "-conf", "Corefile"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let c = nodedns_tests::Client::new(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let up = nodedns_tests::wait_until(std::time::Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(c.server).await.is_ok()
    })
    .await;
    assert!(up, "serves");
    let m = c
        .udp("example.org.", hickory_proto::rr::RecordType::A)
        .await;
    assert_eq!(m.additionals.len(), 2);
    let _ = child.kill().await;
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ctl_is_routed_to_the_admin_client() {
    let (ok, out, err) = run(&["ctl", "--help"]);
    assert!(ok, "{err}");
    assert!(out.contains("config apply"), "{out}");
    // Nothing listens on port 1: the error names the address.
    let (ok, _, err) = run(&["ctl", "--admin", "127.0.0.1:1", "stats"]);
    assert!(!ok);
    assert!(err.contains("127.0.0.1:1"), "{err}");
}
