//! Parser tests: golden Corefiles, imports, snippets, environment, errors.

use std::path::{Path, PathBuf};

use super::*;

fn src(text: &str) -> Vec<ServerBlock> {
    parse(
        &Source {
            name: "Corefile",
            text,
            dir: Path::new("."),
        },
        DEFAULT_PORT,
    )
    .unwrap()
}

fn err(text: &str) -> String {
    parse(
        &Source {
            name: "Corefile",
            text,
            dir: Path::new("."),
        },
        DEFAULT_PORT,
    )
    .unwrap_err()
    .to_string()
}

/// (zones with ports, directive names) of each block.
fn shape(blocks: &[ServerBlock]) -> Vec<(Vec<String>, Vec<String>)> {
    blocks
        .iter()
        .map(|b| {
            (
                b.keys
                    .iter()
                    .map(|k| format!("{}:{}", k.zone, k.port))
                    .collect(),
                b.directives.iter().map(|d| d.name.clone()).collect(),
            )
        })
        .collect()
}

fn golden(name: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/corefiles")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn names(list: &str) -> Vec<String> {
    list.split_whitespace().map(str::to_string).collect()
}

#[test]
fn golden_kubernetes_default() {
    let b = src(&golden("kubernetes-default.Corefile"));
    assert_eq!(
        shape(&b),
        vec![(
            names(".:53"),
            names(
                "errors health ready kubernetes prometheus forward cache loop reload loadbalance"
            )
        )]
    );
    let k = &b[0].directives[3];
    assert_eq!(k.line(), 7);
    let texts: Vec<&str> = k.tokens.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "kubernetes",
            "cluster.local",
            "in-addr.arpa",
            "ip6.arpa",
            "{",
            "pods",
            "insecure",
            "fallthrough",
            "in-addr.arpa",
            "ip6.arpa",
            "ttl",
            "30",
            "}"
        ]
    );
    assert_eq!(b[0].directives[1].tokens.last().unwrap().line, 5);
}

#[test]
fn golden_nodelocaldns() {
    let b = src(&golden("nodelocaldns.Corefile"));
    let common = "errors cache reload loop bind forward prometheus";
    assert_eq!(
        shape(&b),
        vec![
            (
                names("cluster.local.:53"),
                names(&format!("{common} health"))
            ),
            (names("in-addr.arpa.:53"), names(common)),
            (names("ip6.arpa.:53"), names(common)),
            (
                names(".:53"),
                names("errors cache reload loop bind forward prometheus")
            ),
        ]
    );
    let fwd = &b[0].directives[5];
    let texts: Vec<&str> = fwd.tokens.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(
        texts,
        vec![
            "forward",
            ".",
            "__PILLAR__CLUSTER__DNS__",
            "{",
            "force_tcp",
            "}"
        ]
    );
    assert_eq!(b[3].line, 38);
}

#[test]
fn golden_seeds() {
    let cases = [
        (
            "seed-financeflow.Corefile",
            "errors health cache kubernetes forward prometheus log loadbalance",
        ),
        (
            "seed-gamestream.Corefile",
            "errors health cache kubernetes forward prometheus log loadbalance",
        ),
        (
            "seed-healthtech.Corefile",
            "errors health cache kubernetes forward prometheus log loadbalance",
        ),
        (
            "seed-phase2.Corefile",
            "errors health cache kubernetes forward prometheus log loadbalance reload",
        ),
        (
            "seed-week2.Corefile",
            "errors health ready kubernetes prometheus forward cache loop reload loadbalance log",
        ),
        (
            "seed-week4.Corefile",
            "errors health ready kubernetes prometheus forward cache loop reload loadbalance log",
        ),
    ];
    for (file, directives) in cases {
        let b = src(&golden(file));
        assert_eq!(
            shape(&b),
            vec![(names(".:53"), names(directives))],
            "{file}"
        );
        // Every token of a directive is on or after its line, in order.
        for d in &b[0].directives {
            let mut line = d.line();
            for t in &d.tokens {
                assert!(t.line >= line, "{file}: {} out of order", t.text);
                line = t.line;
            }
        }
    }
    let b = src(&golden("seed-week4.Corefile"));
    let cache = b[0].directives.iter().find(|d| d.name == "cache").unwrap();
    assert_eq!(cache.line(), 20);
    assert_eq!(cache.tokens.last().unwrap().line, 25);
}

#[test]
fn every_golden_corefile_is_covered() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/corefiles");
    let count = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "Corefile"))
        })
        .count();
    assert_eq!(
        count, 8,
        "a golden Corefile was added: give it a shape test"
    );
}

#[test]
fn several_keys_ports_and_schemes() {
    let b = src("example.org:1053 dns://Example.NET {\n whoami\n}\n");
    assert_eq!(
        shape(&b),
        vec![(names("example.org.:1053 example.net.:53"), names("whoami"))]
    );
    let b = src("a.example, b.example,\n  c.example {\n whoami\n}\n");
    assert_eq!(
        shape(&b)[0].0,
        names("a.example.:53 b.example.:53 c.example.:53")
    );
    let b = src("10.0.0.0/8 {\n whoami\n}\n");
    assert_eq!(shape(&b)[0].0, names("10.in-addr.arpa.:53"));
}

#[test]
fn brace_less_single_block() {
    let b = src(".:1053\nwhoami\nlog\n");
    assert_eq!(shape(&b), vec![(names(".:1053"), names("whoami log"))]);
}

#[test]
fn a_corefile_without_server_blocks_is_refused() {
    for text in ["", "\n\n", "# nothing\n", "(snip) {\n  whoami\n}\n"] {
        let e = err(text);
        assert!(
            e.starts_with("Corefile:1: no server blocks"),
            "{text:?}: {e}"
        );
    }
}

#[test]
fn comments_and_quotes() {
    let b = src(". { # the root\n  log . \"{remote} {name}\" # custom\n  # whoami\n}\n");
    let log = &b[0].directives[0];
    let texts: Vec<&str> = log.tokens.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(texts, vec!["log", ".", "{remote} {name}"]);
    assert_eq!(b[0].directives.len(), 1);
}

#[test]
fn environment_variables() {
    let home = std::env::var("HOME").unwrap_or_default();
    let b =
        src(". {\n hosts {$HOME} {env.HOME} {%HOME%} {$NODEDNS_SURELY_UNSET_VAR}x {notenv}\n}\n");
    let texts: Vec<&str> = b[0].directives[0]
        .tokens
        .iter()
        .map(|t| t.text.as_str())
        .collect();
    assert_eq!(texts, vec!["hosts", &home, &home, &home, "x", "{notenv}"]);
}

#[test]
fn snippets() {
    let b = src(
        "(common) {\n  errors\n  log\n}\n.:1053 {\n  import common\n  whoami\n}\nexample.org:1053 {\n  import common\n}\n",
    );
    assert_eq!(
        shape(&b),
        vec![
            (names(".:1053"), names("errors log whoami")),
            (names("example.org.:1053"), names("errors log"))
        ]
    );
    // Imported tokens keep the lines where the snippet wrote them.
    assert_eq!(b[0].directives[0].line(), 2);
    assert!(
        err("(a) {\n errors\n}\n(a) {\n log\n}\n")
            .contains("Corefile:4: redeclaration of snippet 'a'")
    );
    assert!(err("(a) {\n import a\n}\n. {\n import a\n}\n").contains("import loop"));
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("nodedns-corefile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn imports_files_and_globs() {
    let dir = TempDir::new("import");
    std::fs::create_dir_all(dir.0.join("conf.d")).unwrap();
    std::fs::write(dir.0.join("common.conf"), "errors\nlog\n").unwrap();
    std::fs::write(
        dir.0.join("conf.d/a.server"),
        "a.example:1053 {\n  whoami\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.0.join("conf.d/b.server"),
        "b.example:1053 {\n  import ../common.conf\n  whoami\n}\n",
    )
    .unwrap();
    let text = ".:1053 {\n  import common.conf\n  whoami\n}\nimport conf.d/*.server\nimport nothing/*.here\n";
    let blocks = parse(
        &Source {
            name: "Corefile",
            text,
            dir: &dir.0,
        },
        DEFAULT_PORT,
    )
    .unwrap();
    assert_eq!(
        shape(&blocks),
        vec![
            (names(".:1053"), names("errors log whoami")),
            (names("a.example.:1053"), names("whoami")),
            (names("b.example.:1053"), names("errors log whoami")),
        ]
    );
    // Tokens from a file name that file in errors.
    let errors = &blocks[0].directives[0].tokens[0];
    assert!(errors.file.ends_with("common.conf"), "{}", errors.file);
    assert_eq!(errors.line, 1);
    let missing = parse(
        &Source {
            name: "Corefile",
            text: ". {\n import missing.conf\n}\n",
            dir: &dir.0,
        },
        DEFAULT_PORT,
    )
    .unwrap_err()
    .to_string();
    assert!(
        missing.starts_with("Corefile:2: import: file to import not found"),
        "{missing}"
    );
    // A file importing itself is a loop, stopped by depth.
    std::fs::write(dir.0.join("self.conf"), "import self.conf\n").unwrap();
    let looped = parse(
        &Source {
            name: "Corefile",
            text: ". {\n import self.conf\n}\n",
            dir: &dir.0,
        },
        DEFAULT_PORT,
    )
    .unwrap_err()
    .to_string();
    assert!(looped.contains("import loop"), "{looped}");
}

#[test]
fn errors_name_the_line() {
    let cases = [
        (". {\n whoami\n", "Corefile:1: unclosed '{': missing '}'"),
        (". {\n whoami\n}\n}\n", "Corefile:4: unexpected '}'"),
        (
            ". {\n hosts {\n}\n",
            "Corefile:1: unclosed '{': missing '}'",
        ),
        (
            "foo://. {\n whoami\n}\n",
            "Corefile:1: unknown transport 'foo://' in 'foo://.'",
        ),
        (".:x {\n whoami\n}\n", "Corefile:1: invalid port in '.:x'"),
        (
            ". {\n}\n\nexample.org\nwhoami\n",
            "Corefile:4: expected '{' to open the server block",
        ),
        (
            ". {\n import\n}\n",
            "Corefile:2: import: missing file or snippet name",
        ),
        (
            ". {\n log \"unterminated\n}\n",
            "Corefile:2: unterminated quoted string",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(err(text), want, "{text:?}");
    }
}
