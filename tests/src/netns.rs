//! Network namespaces for tests that change links, addresses and
//! packet-filter rules (node-local setup): nothing outside the namespaces
//! the test creates is touched.
//!
//! - [`Netns::new`] creates a uniquely named namespace
//!   (`nodedns-<pid>-<n>`) with `lo` up; dropping it deletes it, and with
//!   it every link, address and rule inside.
//! - [`veth`] connects two namespaces with a veth pair and addresses.
//! - [`Netns::exec`] / [`Netns::ip`] run a command inside;
//!   [`Netns::command`] builds one to spawn (the agent binary).
//! - [`Netns::run`] runs async code on a thread that entered the namespace
//!   (a current-thread tokio runtime): netlink sockets it opens and
//!   processes it spawns live in the namespace.
//!
//! All of it needs root: check [`is_root`] first and skip the test with a
//! clear message when it is false.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Whether this process may create network namespaces (runs as root).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The message tests print when they skip for lack of root.
pub const SKIP_NOT_ROOT: &str = "skipping: needs root (network namespaces)";

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Deleted on drop (false for [`Netns::attach`]).
    owned: bool,
}

fn check(what: &str, out: io::Result<Output>) -> io::Result<Output> {
    let out = out?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn ip_cmd(args: &[&str]) -> io::Result<Output> {
    check(
        &format!("ip {}", args.join(" ")),
        Command::new("ip").args(args).stdin(Stdio::null()).output(),
    )
}

impl Netns {
    /// A new namespace with `lo` up.
    pub fn new() -> io::Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "nodedns-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip_cmd(&["netns", "add", &name])?;
        let ns = Self { name, owned: true };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on a namespace another handle owns (not deleted on drop):
    /// for code running inside [`Netns::run`].
    pub fn attach(name: &str) -> Self {
        Self {
            name: name.to_string(),
            owned: false,
        }
    }

    /// Its name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS`; an error when it fails.
    pub fn ip(&self, args: &[&str]) -> io::Result<Output> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip_cmd(&all)
    }

    /// A command that runs `program` inside this namespace (`ip netns exec
    /// NAME program`), to add arguments to and spawn (e.g. the agent
    /// binary); standard input is null.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// `ip netns exec NAME ARGS` (any exit status).
    pub fn exec(&self, args: &[&str]) -> io::Result<Output> {
        let Some((program, rest)) = args.split_first() else {
            return Err(io::Error::other("exec: no program"));
        };
        self.command(program).args(rest).output()
    }

    /// `ip netns exec NAME ARGS`: its standard output; an error when it
    /// fails.
    pub fn exec_ok(&self, args: &[&str]) -> io::Result<String> {
        let out = check(&args.join(" "), self.exec(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f()` to completion on a new thread that entered this
    /// namespace, in a current-thread tokio runtime; what it returns, or
    /// its panic, comes back here.
    pub fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = self.path();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f())
        });
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its links, addresses and rules.
        if self.owned {
            let _ = ip_cmd(&["netns", "del", &self.name]);
        }
    }
}

/// Connects `a` and `b` with a veth pair, `link_a` in `a` and `link_b` in
/// `b`, both up, with these addresses (CIDR, e.g. `10.0.0.1/24`,
/// `fd00::1/64`; IPv6 ones without duplicate address detection).
pub fn veth(
    a: &Netns,
    link_a: &str,
    addrs_a: &[&str],
    b: &Netns,
    link_b: &str,
    addrs_b: &[&str],
) -> io::Result<()> {
    a.ip(&[
        "link", "add", link_a, "type", "veth", "peer", "name", link_b, "netns", &b.name,
    ])?;
    for (ns, link, addrs) in [(a, link_a, addrs_a), (b, link_b, addrs_b)] {
        for addr in addrs {
            if addr.contains(':') {
                ns.ip(&["addr", "add", addr, "dev", link, "nodad"])?;
            } else {
                ns.ip(&["addr", "add", addr, "dev", link])?;
            }
        }
        ns.ip(&["link", "set", link, "up"])?;
    }
    Ok(())
}
