//! The plugin manuals are tested: every registered plugin has a README
//! with the required sections, every README belongs to a registered
//! plugin, and every `~~~ corefile` example loads (CoreDNS's
//! `test/readme_test.go`, without ports).

use std::path::PathBuf;

fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/src")
}

fn readmes() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(plugin_dir()).unwrap() {
        let p = e.unwrap().path();
        let readme = p.join("README.md");
        if readme.is_file() {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read_to_string(readme).unwrap()));
        }
    }
    out.sort();
    out
}

/// The `~~~ corefile` blocks of a README.
fn corefile_examples(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start().starts_with("~~~ corefile") => current = Some(String::new()),
            Some(buf) if line.trim_start().starts_with("~~~") => {
                out.push(std::mem::take(buf));
                current = None;
            }
            Some(buf) => {
                buf.push_str(line);
                buf.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_plugin_has_a_readme_and_every_readme_a_plugin() {
    let compiled: Vec<&str> = nodedns::registry::compiled().collect();
    let documented: Vec<String> = readmes().into_iter().map(|(n, _)| n).collect();
    for p in &compiled {
        assert!(
            documented.iter().any(|d| d == p),
            "plugin {p} has no plugins/src/{p}/README.md"
        );
    }
    for d in &documented {
        assert!(
            compiled.contains(&d.as_str()),
            "README for {d}, which is not a registered plugin"
        );
    }
}

#[test]
fn readmes_have_the_required_sections() {
    for (name, text) in readmes() {
        assert!(text.starts_with(&format!("# {name}\n")), "{name}: title");
        for section in ["## Name", "## Description", "## Syntax", "## Examples"] {
            assert!(text.contains(section), "{name}: missing {section}");
        }
        assert!(
            !corefile_examples(&text).is_empty(),
            "{name}: no ~~~ corefile example"
        );
    }
}

/// A directory holding `cert.pem`, `key.pem` and `ca.pem` from a test CA,
/// which the examples' relative names are pointed at (the *tls* examples
/// load their files); removed on drop.
struct TestCerts(PathBuf);

impl TestCerts {
    fn new() -> Self {
        let ca = nodedns_tests::secure_client::TestCa::new();
        let dir = std::env::temp_dir().join(format!("nodedns-readme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = ca.server();
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self(dir)
    }
    fn rewrite(&self, example: &str) -> String {
        let mut out = example.to_string();
        for f in ["cert.pem", "key.pem", "ca.pem"] {
            out = out.replace(&format!(" {f}"), &format!(" {}", self.0.join(f).display()));
        }
        out
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn every_readme_example_loads() {
    let certs = TestCerts::new();
    for (name, text) in readmes() {
        for (i, example) in corefile_examples(&text).into_iter().enumerate() {
            let example = certs.rewrite(&example);
            if let Err(e) = nodedns::config::load_str(&example) {
                panic!(
                    "plugins/src/{name}/README.md example {}: {e}\n{example}",
                    i + 1
                );
            }
        }
    }
}

/// The `~~~ sh` block of the top-level README's "Live reconfiguration".
fn live_reconfiguration_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = readme
        .split("\n## Live reconfiguration\n")
        .nth(1)
        .expect("README has a Live reconfiguration section");
    let section = section.split("\n## ").next().unwrap();
    let block = section
        .split("~~~ sh\n")
        .nth(1)
        .and_then(|b| b.split("~~~").next())
        .expect("a ~~~ sh block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Runs the README's curl, grpcurl and `nodedns ctl` examples, in order,
/// against a live agent (its admin address in place of 127.0.0.1:8053).
/// grpcurl lines are skipped, saying so, where grpcurl is not installed
/// (`.ci/run` installs it).
#[tokio::test]
async fn the_live_reconfiguration_examples_run_against_a_live_agent() {
    use hickory_proto::rr::RecordType;
    use nodedns_tests::{Agent, Client, FakeUpstream};
    let commands = live_reconfiguration_commands();
    assert!(commands.len() >= 10, "{commands:?}");
    let up = FakeUpstream::builder()
        .a("example.org.", "192.0.2.1")
        .start()
        .await;
    let agent = Agent::corefile(format!(
        ".:0 {{\n    bind 127.0.0.1\n    cache 60\n    forward . {up}\n}}\n"
    ))
    .start()
    .await;
    let _ = Client::new(agent.udp())
        .udp("example.org.", RecordType::A)
        .await;
    let admin = agent.admin().to_string();
    let bin = nodedns_tests::agent::binary();
    let have_grpcurl = std::process::Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut ran = 0;
    for line in &commands {
        if line.starts_with("grpcurl") && !have_grpcurl {
            eprintln!("skipped (grpcurl is not installed; .ci/run installs it): {line}");
            continue;
        }
        let cmd = line.replace("127.0.0.1:8053", &admin).replacen(
            "nodedns ctl",
            &format!("{} ctl --admin {admin}", bin.display()),
            1,
        );
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .current_dir(agent.path("."))
                .output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{line}: did not finish within 30 s"))
        .unwrap();
        assert!(
            out.status.success(),
            "{line}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} commands ran");
}
