use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use super::setup::{DEFAULT_RELOAD, DEFAULT_TTL, HostsConfig, parse};
use super::table::{LoadError, Loaded, Rules, Source, Table, reverse_addr};
use super::*;
use crate::dispenser::Dispenser;
use crate::lexer::lex;
use crate::pkg::test::{Stub, query, run, setup as run_setup};
use crate::request::{Transport, name_to_wire};
use crate::setup::BlockInfo;

/// A path that does not exist: setup warns and serves the inline entries.
const NO_FILE: &str = "/nonexistent/nodedns-hosts-test";

fn block() -> BlockInfo {
    BlockInfo {
        zones: vec![".".into()],
        port: 53,
        server_name: Arc::from("dns://:53"),
        bound: Arc::default(),
    }
}

fn parse_text(text: &str) -> Result<HostsConfig, String> {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).map_err(|e| e.to_string())?;
    let mut d = Dispenser::new("hosts", &tokens);
    parse(&mut d, &block()).map_err(|e| e.to_string())
}

fn defaults() -> HostsConfig {
    HostsConfig {
        path: PathBuf::from("/etc/hosts"),
        origins: vec![".".into()],
        inline: Vec::new(),
        ttl: DEFAULT_TTL,
        auto_reverse: true,
        reload: DEFAULT_RELOAD,
        fall: Fall::default(),
    }
}

fn fall(text: &str) -> Fall {
    let file: Arc<str> = Arc::from("Corefile");
    let tokens = lex(&file, text).unwrap();
    let mut d = Dispenser::new("hosts", &tokens);
    assert!(d.next());
    Fall::parse(&mut d).unwrap()
}

#[test]
fn setup_table() {
    let with = |f: &dyn Fn(&mut HostsConfig)| {
        let mut c = defaults();
        f(&mut c);
        Ok(c)
    };
    let cases: Vec<(String, Result<HostsConfig, &str>)> = vec![
        ("hosts".into(), Ok(defaults())),
        (
            format!("hosts {NO_FILE} example.org Example.NET."),
            with(&|c| {
                c.path = NO_FILE.into();
                c.origins = vec!["example.org.".into(), "example.net.".into()];
            }),
        ),
        (
            format!(
                "hosts {NO_FILE} dns://example.org:1053 10.0.0.0/15 192.0.2.0/24 2001:db8::/32"
            ),
            with(&|c| {
                c.path = NO_FILE.into();
                c.origins = vec![
                    "example.org.".into(),
                    "0.10.in-addr.arpa.".into(),
                    "1.10.in-addr.arpa.".into(),
                    "2.0.192.in-addr.arpa.".into(),
                    "8.b.d.0.1.0.0.2.ip6.arpa.".into(),
                ];
            }),
        ),
        (
            "hosts {\n  ttl 60\n  no_reverse\n  reload 1m30s\n  fallthrough example.org\n}".into(),
            with(&|c| {
                c.ttl = 60;
                c.auto_reverse = false;
                c.reload = Duration::from_secs(90);
                c.fall = fall("fallthrough example.org");
            }),
        ),
        (
            "hosts {\n  192.0.2.1 a.example.org b.example.org\n  ::1 localhost\n  fallthrough\n}"
                .into(),
            with(&|c| {
                c.inline = vec![
                    "192.0.2.1 a.example.org b.example.org".into(),
                    "::1 localhost".into(),
                ];
                c.fall = Fall::root();
            }),
        ),
        // An inline line after fallthrough is refused only when it is not an option.
        (
            "hosts {\n  fallthrough\n  ttl 5\n}".into(),
            with(&|c| {
                c.ttl = 5;
                c.fall = Fall::root();
            }),
        ),
        (
            "hosts {\n  reload 0\n}".into(),
            with(&|c| c.reload = Duration::ZERO),
        ),
        (
            "hosts {\n  reload 300ms\n}".into(),
            with(&|c| c.reload = Duration::from_millis(300)),
        ),
        // CoreDNS reads the first word after ttl and ignores the rest.
        (
            "hosts {\n  ttl 65535 ignored\n}".into(),
            with(&|c| c.ttl = 65535),
        ),
        (
            "hosts\nhosts".into(),
            Err("Corefile:2: hosts: this plugin can only be used once per Server Block"),
        ),
        (
            "hosts {\n  fallthrough\n  192.0.2.1 a.example.org\n}".into(),
            Err(
                "Corefile:3: hosts: unknown property '192.0.2.1' (inline host lines must come before fallthrough)",
            ),
        ),
        (
            "hosts {\n  ttl\n}".into(),
            Err("Corefile:2: hosts: ttl needs a number of seconds"),
        ),
        (
            "hosts {\n  ttl 1h\n}".into(),
            Err("Corefile:2: hosts: ttl needs a number of seconds, not '1h'"),
        ),
        (
            "hosts {\n  ttl 0\n}".into(),
            Err("Corefile:2: hosts: ttl must be between 1 and 65535 seconds, not '0'"),
        ),
        (
            "hosts {\n  ttl 65536\n}".into(),
            Err("Corefile:2: hosts: ttl must be between 1 and 65535 seconds, not '65536'"),
        ),
        (
            "hosts {\n  ttl -5\n}".into(),
            Err("Corefile:2: hosts: ttl must be between 1 and 65535 seconds, not '-5'"),
        ),
        (
            "hosts {\n  reload\n}".into(),
            Err("Corefile:2: hosts: reload needs a duration (zero seconds to disable)"),
        ),
        (
            "hosts {\n  reload 5s 10s\n}".into(),
            Err("Corefile:2: hosts: reload needs a duration (zero seconds to disable)"),
        ),
        (
            "hosts {\n  reload 5\n}".into(),
            Err("Corefile:2: hosts: invalid duration for reload '5'"),
        ),
        (
            "hosts {\n  reload -1s\n}".into(),
            Err("Corefile:2: hosts: invalid negative duration for reload '-1s'"),
        ),
        (
            format!("hosts {NO_FILE} a..b"),
            Err("Corefile:1: hosts: invalid zone 'a..b'"),
        ),
        (
            format!("hosts {NO_FILE} 10.0.0.0/33"),
            Err("Corefile:1: hosts: invalid zone '10.0.0.0/33'"),
        ),
        (
            "hosts {\n  fallthrough a..b\n}".into(),
            Err("Corefile:2: hosts: invalid zone 'a..b'"),
        ),
    ];
    for (text, want) in cases {
        let got = parse_text(&text);
        assert_eq!(got, want.map_err(str::to_string), "{text}");
    }
}

#[test]
fn setup_adds_plugin_and_reload_task() {
    let (out, _) = run_setup("hosts", setup, &format!("hosts {NO_FILE}")).unwrap();
    assert_eq!(out.plugins.len(), 1);
    assert_eq!(out.plugins[0].name(), "hosts");
    assert_eq!(out.tasks.len(), 1, "reload 5s by default");

    let (out, _) = run_setup(
        "hosts",
        setup,
        &format!("hosts {NO_FILE} {{\n reload 0\n}}"),
    )
    .unwrap();
    assert_eq!(out.plugins.len(), 1);
    assert!(out.tasks.is_empty(), "reload 0 starts no task");

    let err = run_setup("hosts", setup, "hosts {\n  ttl x\n}").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Corefile:2: hosts: ttl needs a number of seconds, not 'x'"
    );
}

// === handler ===

const INLINE: &str = "
    192.0.2.1 a.example.org A2.Example.ORG
    192.0.2.2 a.example.org
    2001:db8::1 a.example.org v6only.example.org
    ::ffff:192.0.2.3 mapped.example.org
    fe80::1%eth0 zoned.example.org
    192.0.2.9 outside.example.net";

fn hosts(zones: &str, options: &str) -> Box<dyn Plugin> {
    let text = format!("hosts {NO_FILE} {zones} {{{INLINE}\n{options}\n}}");
    let (mut out, _) = run_setup("hosts", setup, &text).unwrap();
    out.plugins.remove(0)
}

/// What a query gave, reduced to compare in tables.
#[derive(Debug, PartialEq)]
enum Got {
    /// An authoritative NOERROR with these answers (empty: NODATA).
    Answer(Vec<String>),
    /// Passed on to the next plugin.
    Next,
    /// Failed with this rcode; the server writes the reply.
    Fail(ResponseCode),
}

fn ask(p: &dyn Plugin, name: &str, qtype: RecordType) -> Got {
    let out = run(
        p,
        &query(name, qtype),
        Transport::Udp,
        Stub::Rcode(ResponseCode::Refused),
    );
    match out.flow {
        Flow::Next => {
            let m = out.msg.expect("the stub answers");
            assert_eq!(m.metadata.response_code, ResponseCode::Refused);
            Got::Next
        }
        Flow::Fail(rc, _) => {
            assert!(out.msg.is_none());
            Got::Fail(rc)
        }
        Flow::Answered => {
            let m = out.msg.expect("answered");
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(m.metadata.authoritative, "{name}");
            assert_eq!(m.queries.len(), 1);
            assert_eq!(m.queries[0].name().to_string(), name);
            Got::Answer(m.answers.iter().map(ToString::to_string).collect())
        }
        Flow::Drop | Flow::Upstream => panic!("hosts never drops or goes upstream"),
    }
}

fn answer(records: &[&str]) -> Got {
    Got::Answer(records.iter().map(|s| s.to_string()).collect())
}

const V6_REVERSE: &str =
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.";

#[test]
fn answers_from_the_table() {
    let p = hosts("example.org", "ttl 300");
    use RecordType::{A, AAAA, MX, PTR};
    let cases: Vec<(&str, RecordType, Got)> = vec![
        (
            "a.example.org.",
            A,
            answer(&[
                "a.example.org. 300 IN A 192.0.2.1",
                "a.example.org. 300 IN A 192.0.2.2",
            ]),
        ),
        // Names match whatever the case; the answer repeats the question's spelling.
        (
            "A.Example.ORG.",
            A,
            answer(&[
                "A.Example.ORG. 300 IN A 192.0.2.1",
                "A.Example.ORG. 300 IN A 192.0.2.2",
            ]),
        ),
        (
            "a2.example.org.",
            A,
            answer(&["a2.example.org. 300 IN A 192.0.2.1"]),
        ),
        (
            "a.example.org.",
            AAAA,
            answer(&["a.example.org. 300 IN AAAA 2001:db8::1"]),
        ),
        // IPv4-mapped IPv6 is IPv4; an IPv6 zone is dropped.
        (
            "mapped.example.org.",
            A,
            answer(&["mapped.example.org. 300 IN A 192.0.2.3"]),
        ),
        ("mapped.example.org.", AAAA, answer(&[])),
        (
            "zoned.example.org.",
            AAAA,
            answer(&["zoned.example.org. 300 IN AAAA fe80::1"]),
        ),
        // NODATA: the name exists, the type does not.
        ("v6only.example.org.", A, answer(&[])),
        ("a.example.org.", MX, answer(&[])),
        // Outside the zones: not ours (the entry was not even loaded).
        ("outside.example.net.", A, Got::Next),
        // In the zones but unknown, and no fallthrough: SERVFAIL, as CoreDNS.
        ("missing.example.org.", A, Got::Fail(ResponseCode::ServFail)),
        (
            "missing.example.org.",
            MX,
            Got::Fail(ResponseCode::ServFail),
        ),
        // PTR is answered outside the zones too.
        (
            "1.2.0.192.in-addr.arpa.",
            PTR,
            answer(&[
                "1.2.0.192.in-addr.arpa. 300 IN PTR a.example.org.",
                "1.2.0.192.in-addr.arpa. 300 IN PTR a2.example.org.",
            ]),
        ),
        (
            "3.2.0.192.IN-ADDR.ARPA.",
            PTR,
            answer(&["3.2.0.192.IN-ADDR.ARPA. 300 IN PTR mapped.example.org."]),
        ),
        (
            V6_REVERSE,
            PTR,
            answer(&[
                &format!("{V6_REVERSE} 300 IN PTR a.example.org."),
                &format!("{V6_REVERSE} 300 IN PTR v6only.example.org."),
            ]),
        ),
        // A PTR miss goes on whatever fallthrough says, as does a PTR
        // query for a name that is not a reverse name.
        ("99.2.0.192.in-addr.arpa.", PTR, Got::Next),
        ("9.2.0.192.in-addr.arpa.", PTR, Got::Next),
        ("a.example.org.", PTR, Got::Next),
    ];
    for (name, qtype, want) in cases {
        assert_eq!(ask(&*p, name, qtype), want, "{name} {qtype}");
    }
}

#[test]
fn default_ttl_and_block_zones() {
    let p = hosts("", "");
    assert_eq!(
        ask(&*p, "outside.example.net.", RecordType::A),
        answer(&["outside.example.net. 3600 IN A 192.0.2.9"])
    );
}

#[test]
fn fallthrough() {
    let p = hosts("example.org", "fallthrough");
    assert_eq!(ask(&*p, "missing.example.org.", RecordType::A), Got::Next);
    // A name that exists is NODATA, not a fallthrough.
    assert_eq!(ask(&*p, "v6only.example.org.", RecordType::A), answer(&[]));
    assert_eq!(
        ask(&*p, "a2.example.org.", RecordType::A),
        answer(&["a2.example.org. 3600 IN A 192.0.2.1"])
    );

    let p = hosts("example.org", "fallthrough sub.example.org");
    assert_eq!(ask(&*p, "x.sub.example.org.", RecordType::A), Got::Next);
    assert_eq!(
        ask(&*p, "missing.example.org.", RecordType::A),
        Got::Fail(ResponseCode::ServFail)
    );
}

#[test]
fn no_reverse() {
    let p = hosts("example.org", "no_reverse");
    assert_eq!(
        ask(&*p, "1.2.0.192.in-addr.arpa.", RecordType::PTR),
        Got::Next
    );
    assert_eq!(ask(&*p, V6_REVERSE, RecordType::PTR), Got::Next);
    assert_eq!(
        ask(&*p, "a2.example.org.", RecordType::A),
        answer(&["a2.example.org. 3600 IN A 192.0.2.1"])
    );
}

#[test]
fn reverse_names() {
    let w = |s: &str| name_to_wire(s).unwrap();
    let v4 = |a, b, c, d| Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
    assert_eq!(
        reverse_addr(&w("1.2.0.192.in-addr.arpa.")),
        v4(192, 0, 2, 1)
    );
    assert_eq!(
        reverse_addr(&w("255.0.0.0.in-addr.arpa.")),
        v4(0, 0, 0, 255)
    );
    assert_eq!(
        reverse_addr(&w(V6_REVERSE)),
        Some(IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap()))
    );
    // ::ffff:192.0.2.1 in ip6.arpa is the IPv4 address, as Go prints it.
    let mapped = "1.0.2.0.0.0.0.c.f.f.f.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.";
    assert_eq!(reverse_addr(&w(mapped)), v4(192, 0, 2, 1));
    for bad in [
        "2.0.192.in-addr.arpa.",
        "1.1.2.0.192.in-addr.arpa.",
        "01.2.0.192.in-addr.arpa.",
        "256.2.0.192.in-addr.arpa.",
        "a.2.0.192.in-addr.arpa.",
        "in-addr.arpa.",
        "arpa.",
        ".",
        "1.2.0.192.example.org.",
        "10.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
        "g.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
        "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
    ] {
        assert_eq!(reverse_addr(&w(bad)), None, "{bad}");
    }
}

// === file ===

/// A file under the temp dir that is removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &[u8]) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "nodedns-hosts-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const FILE: &str = "\
# comment line
127.0.0.1\tlocalhost localhost.localdomain   # trailing comment
192.0.2.10   www.example.org  web.example.org\tWWW2.example.org
192.0.2.11   www.example.org\r
not-an-ip    bad.example.org
192.0.2.300  bad.example.org
192.0.2.12
192.0.2.13   #commented.example.org
192.0.2.14   a..b.example.org ok.example.org
2001:db8::10 www.example.org
   \t
";

fn rules(zones: &[&str], auto_reverse: bool) -> Rules {
    Rules {
        origins: zones.iter().map(|z| name_to_wire(z).unwrap()).collect(),
        auto_reverse,
    }
}

#[test]
fn parses_hosts_text() {
    let t = Table::parse(FILE.as_bytes(), &rules(&["."], true)).unwrap();
    let get = |n: &str| {
        t.lookup(&name_to_wire(n).unwrap())
            .cloned()
            .unwrap_or_default()
    };
    let v4 = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    assert_eq!(get("localhost").v4, vec![v4("127.0.0.1")]);
    assert_eq!(get("localhost.localdomain").v4, vec![v4("127.0.0.1")]);
    assert_eq!(
        get("www.example.org").v4,
        vec![v4("192.0.2.10"), v4("192.0.2.11")]
    );
    assert_eq!(
        get("www.example.org").v6,
        vec!["2001:db8::10".parse::<Ipv6Addr>().unwrap()]
    );
    assert_eq!(get("web.example.org").v4, vec![v4("192.0.2.10")]);
    assert_eq!(get("www2.example.org").v4, vec![v4("192.0.2.10")]);
    assert_eq!(get("ok.example.org").v4, vec![v4("192.0.2.14")]);
    for absent in [
        "bad.example.org",
        "commented.example.org",
        "a..b.example.org",
    ] {
        assert!(
            t.lookup(&name_to_wire(absent).unwrap_or_default())
                .is_none(),
            "{absent}"
        );
    }
    let names = |ip: &str| -> Vec<Vec<u8>> {
        t.names_for(ip.parse().unwrap())
            .iter()
            .map(|n| n.to_vec())
            .collect()
    };
    assert_eq!(
        names("192.0.2.10"),
        vec![
            name_to_wire("www.example.org").unwrap(),
            name_to_wire("web.example.org").unwrap(),
            name_to_wire("www2.example.org").unwrap()
        ]
    );
    assert!(names("192.0.2.12").is_empty());
    // 8 address records and as many reverse records.
    assert_eq!(t.len(), 16);

    let t = Table::parse(FILE.as_bytes(), &rules(&["example.org."], false)).unwrap();
    assert!(t.lookup(&name_to_wire("localhost").unwrap()).is_none());
    assert!(t.names_for("192.0.2.10".parse().unwrap()).is_empty());
    assert_eq!(t.len(), 6);
}

#[test]
fn garbage_never_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let alphabet = b"0123456789abcdef.:%# \t\r\nxyz\xff";
    for len in 0..400usize {
        let text: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                alphabet[(seed % alphabet.len() as u64) as usize]
            })
            .collect();
        let _ = Table::parse(&text, &rules(&["."], true));
    }
}

#[test]
fn file_and_inline_merge_file_first() {
    let f = TempFile::new("merge", b"192.0.2.20 www.example.org\n# nothing else\n");
    let text = format!(
        "hosts {} {{\n  192.0.2.21 www.example.org\n  192.0.2.22 inline.example.org\n}}",
        f.path()
    );
    let (mut out, _) = run_setup("hosts", setup, &text).unwrap();
    let p = out.plugins.remove(0);
    assert_eq!(
        ask(&*p, "www.example.org.", RecordType::A),
        answer(&[
            "www.example.org. 3600 IN A 192.0.2.20",
            "www.example.org. 3600 IN A 192.0.2.21"
        ])
    );
    assert_eq!(
        ask(&*p, "inline.example.org.", RecordType::A),
        answer(&["inline.example.org. 3600 IN A 192.0.2.22"])
    );
}

#[test]
fn refuses_large_files_and_keeps_stamp() {
    let f = TempFile::new("large", b"192.0.2.30 big.example.org\n");
    let mut src = Source {
        path: f.0.clone(),
        rules: rules(&["."], true),
        inline: Table::default(),
        max_size: 8,
    };
    let Ok(Loaded::Refused(LoadError::TooLarge { max: 8, .. }, stamp)) = src.load(None) else {
        panic!("not refused");
    };
    assert!(matches!(src.load(Some(&stamp)), Ok(Loaded::Unchanged)));
    src.max_size = 1 << 20;
    let Ok(Loaded::Table(t, _)) = src.load(None) else {
        panic!("not loaded");
    };
    assert_eq!(t.len(), 2);
    src.path = PathBuf::from(NO_FILE);
    assert!(matches!(src.load(None), Err(LoadError::Io { .. })));
}

#[tokio::test]
async fn reload_picks_up_a_changed_file() {
    let f = TempFile::new("reload", b"192.0.2.40 r.example.org\n");
    let text = format!("hosts {} {{\n  reload 50ms\n  fallthrough\n}}", f.path());
    let (mut out, _) = run_setup("hosts", setup, &text).unwrap();
    let p = out.plugins.remove(0);
    let task = tokio::spawn(out.tasks.remove(0));
    assert_eq!(
        ask(&*p, "r.example.org.", RecordType::A),
        answer(&["r.example.org. 3600 IN A 192.0.2.40"])
    );
    // Read once: the entries (name and reverse) and the file's time.
    let entries = || {
        metrics::ENTRIES
            .with_label_values(&[&f.0.display().to_string()])
            .get()
    };
    assert_eq!(entries(), 2);
    assert!(metrics::RELOAD_TIME.get() > 1e9);

    // A different size, so the change shows even with coarse timestamps.
    std::fs::write(
        &f.0,
        b"192.0.2.41 r.example.org\n192.0.2.42 s.example.org\n",
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if ask(&*p, "s.example.org.", RecordType::A)
            == answer(&["s.example.org. 3600 IN A 192.0.2.42"])
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ask(&*p, "r.example.org.", RecordType::A),
        answer(&["r.example.org. 3600 IN A 192.0.2.41"])
    );
    assert_eq!(entries(), 4, "the re-read set coredns_hosts_entries");

    // A deleted file keeps the entries last read, as CoreDNS.
    drop(f);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ask(&*p, "s.example.org.", RecordType::A),
        answer(&["s.example.org. 3600 IN A 192.0.2.42"])
    );

    // Dropping the plugin ends the task.
    drop(p);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the reload task ends when the plugin is dropped")
        .unwrap();
}
