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

#[test]
fn every_readme_example_loads() {
    for (name, text) in readmes() {
        for (i, example) in corefile_examples(&text).into_iter().enumerate() {
            if let Err(e) = nodedns::config::load_str(&example) {
                panic!(
                    "plugins/src/{name}/README.md example {}: {e}\n{example}",
                    i + 1
                );
            }
        }
    }
}
