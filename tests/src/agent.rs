//! Runs the real `nodedns` binary with a Corefile, on loopback.
//!
//! The binary comes from `NODEDNS_BIN`, else from beside the test
//! executable (`target/<profile>/nodedns`). Start-up waits, under a
//! deadline, for the `listening …` lines and the `started` line the agent
//! prints on stdout. Drop kills the process and, if the test failed,
//! prints what it wrote to stderr.
//!
//! [`AgentBuilder::unread_stdout`] stops reading stdout once the agent has
//! started (the pipe stays open and fills up, as with a supervisor that
//! stalls); [`Agent::resume_stdout`] reads it again.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long start-up may take.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Builder for an [`Agent`].
#[derive(Debug, Clone)]
pub struct AgentBuilder {
    corefile: String,
    args: Vec<String>,
    files: Vec<(String, String)>,
    unread_stdout: bool,
    soft_nofile: Option<u64>,
    env: Vec<(String, String)>,
}

/// A pipe the test stopped reading, kept open.
#[derive(Clone, Default)]
struct Held(Arc<Mutex<Option<Box<dyn Read + Send>>>>);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

/// A running `nodedns`.
#[derive(Debug)]
pub struct Agent {
    child: Option<Child>,
    dir: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    held_stdout: Held,
    /// `(transport, addr)` from the `listening` lines; http lines carry
    /// the service (`http/health`).
    pub listening: Vec<(String, SocketAddr)>,
}

/// The path of the binary under test.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NODEDNS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-… → target/<profile>/nodedns
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    dir.join("nodedns")
}

impl Agent {
    /// An agent that will run `corefile`.
    pub fn corefile(corefile: impl Into<String>) -> AgentBuilder {
        AgentBuilder {
            corefile: corefile.into(),
            args: Vec::new(),
            files: Vec::new(),
            unread_stdout: false,
            soft_nofile: None,
            env: Vec::new(),
        }
    }

    /// The first UDP address it listens on.
    pub fn udp(&self) -> SocketAddr {
        self.addr("udp")
    }
    /// The first TCP address it listens on.
    pub fn tcp(&self) -> SocketAddr {
        self.addr("tcp")
    }
    /// The first address of a listener by transport name (`tls`, `https`).
    pub fn listener(&self, transport: &str) -> SocketAddr {
        self.addr(transport)
    }
    /// The address of an HTTP service (`health`, `ready`, `admin`).
    pub fn http(&self, service: &str) -> SocketAddr {
        self.addr(&format!("http/{service}"))
    }
    /// The admin plane's address.
    pub fn admin(&self) -> SocketAddr {
        self.http("admin")
    }
    fn addr(&self, what: &str) -> SocketAddr {
        self.listening
            .iter()
            .find(|(t, _)| t == what)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("agent does not listen on {what}: {:?}", self.listening))
    }
    /// Lines written to stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().expect("stdout lock").clone()
    }
    /// Waits (at most `within`) for a line on stdout that contains `text`.
    pub async fn wait_stdout(&self, text: &str, within: Duration) -> bool {
        crate::wait_until(within, || {
            let seen = self.stdout().iter().any(|l| l.contains(text));
            async move { seen }
        })
        .await
    }
    /// Lines written to stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().expect("stderr lock").clone()
    }
    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }
    /// Sends a signal.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).expect("pid fits"));
        let _ = nix::sys::signal::kill(pid, sig);
    }
    /// Waits for the process to exit, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    /// A file in the agent's working directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    /// Reads stdout again after [`AgentBuilder::unread_stdout`]: what the
    /// agent writes from now on shows in [`Self::stdout`].
    pub fn resume_stdout(&self) {
        let held = self.held_stdout.0.lock().expect("held lock").take();
        if let Some(r) = held {
            pump(r, Arc::clone(&self.stdout));
        }
    }
}

impl AgentBuilder {
    /// Adds a command-line argument.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    /// Sets an environment variable for the agent.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Stops reading stdout once the agent has started, keeping the pipe
    /// open: it fills and stays full until [`Agent::resume_stdout`].
    pub fn unread_stdout(mut self) -> Self {
        self.unread_stdout = true;
        self
    }
    /// Starts the agent with this soft limit on open files (the hard
    /// limit unchanged).
    pub fn soft_nofile(mut self, n: u64) -> Self {
        self.soft_nofile = Some(n);
        self
    }
    /// Writes a file into the agent's working directory before start
    /// (for `import`, hosts files).
    pub fn file(mut self, name: impl Into<String>, text: impl Into<String>) -> Self {
        self.files.push((name.into(), text.into()));
        self
    }

    /// Starts the agent and waits until it has bound every socket.
    pub async fn start(self) -> Agent {
        match self.spawn().await {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts the agent expecting it to fail: returns its exit status and stderr.
    pub async fn start_fails(self) -> (ExitStatus, String) {
        self.exits(None).await
    }

    /// Starts the agent, sends it `sig` once its stderr has a line with
    /// `text` (before it has started serving, say), and returns its exit
    /// status and stderr. Panics when `text` does not show within 10 s.
    pub async fn signalled_when(
        self,
        text: &str,
        sig: nix::sys::signal::Signal,
    ) -> (ExitStatus, String) {
        self.exits(Some((text, sig))).await
    }

    async fn exits(self, signal: Option<(&str, nix::sys::signal::Signal)>) -> (ExitStatus, String) {
        let dir = self.prepare();
        let mut child = Command::new(binary())
            .arg("-conf")
            .arg(dir.join("Corefile"))
            // A port of its own for the admin plane (tests run side by
            // side); a test's own `--admin` comes later and wins.
            .args(["--admin", "127.0.0.1:0"])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nodedns");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        pump(child.stderr.take().expect("stderr"), Arc::clone(&stderr));
        if let Some((text, sig)) = signal {
            let seen = crate::wait_until(Duration::from_secs(10), || {
                let found = stderr
                    .lock()
                    .expect("stderr lock")
                    .iter()
                    .any(|l| l.contains(text));
                async move { found }
            })
            .await;
            if !seen {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no line with {text:?} within 10 s: {:?}",
                    stderr.lock().expect("stderr lock")
                );
            }
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
            let _ = nix::sys::signal::kill(pid, sig);
        }
        let deadline = Instant::now() + START_DEADLINE;
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("nodedns did not exit within {START_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let _ = std::fs::remove_dir_all(&dir);
        // The pump thread ends at EOF, which follows exit; give it a moment.
        let _eof = crate::wait_until(Duration::from_secs(5), || {
            let n = Arc::strong_count(&stderr);
            async move { n == 1 }
        })
        .await;
        let text = stderr.lock().expect("stderr lock").join("\n");
        (status, text)
    }

    fn prepare(&self) -> PathBuf {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("nodedns-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("Corefile"), &self.corefile).expect("write Corefile");
        for (name, text) in &self.files {
            std::fs::write(dir.join(name), text).expect("write file");
        }
        dir
    }

    async fn spawn(self) -> Result<Agent, String> {
        let dir = self.prepare();
        let mut cmd = match self.soft_nofile {
            // The shell lowers its soft limit and becomes nodedns (same PID).
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -S -n {n} && exec \"$0\" \"$@\""))
                    .arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let mut child = cmd
            .arg("-conf")
            .arg(dir.join("Corefile"))
            // A port of its own for the admin plane (tests run side by
            // side); a test's own `--admin` comes later and wins.
            .args(["--admin", "127.0.0.1:0"])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", binary().display()))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let held_stdout = Held::default();
        let out = child.stdout.take().expect("stdout");
        if self.unread_stdout {
            pump_until_started(out, Arc::clone(&stdout), held_stdout.clone());
        } else {
            pump(out, Arc::clone(&stdout));
        }
        pump(child.stderr.take().expect("stderr"), Arc::clone(&stderr));
        let mut agent = Agent {
            child: Some(child),
            dir,
            stdout,
            stderr,
            held_stdout,
            listening: Vec::new(),
        };
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let lines = agent.stdout();
            if lines
                .iter()
                .any(|l| l.starts_with("nodedns-") && l.ends_with(" started"))
            {
                agent.listening = lines.iter().filter_map(|l| parse_listening(l)).collect();
                return Ok(agent);
            }
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "nodedns exited during start-up ({status}); stderr:\n{}",
                    agent.stderr().join("\n")
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "nodedns did not start within {START_DEADLINE:?}; stderr:\n{}",
                    agent.stderr().join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `listening transport=udp addr=127.0.0.1:5353` → ("udp", addr);
/// `listening transport=http service=health addr=…` → ("http/health", addr).
fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = line.strip_prefix("listening ")?;
    let mut transport = None;
    let mut service = None;
    let mut addr = None;
    for kv in rest.split_whitespace() {
        match kv.split_once('=')? {
            ("transport", v) => transport = Some(v.to_string()),
            ("service", v) => service = Some(v.to_string()),
            ("addr", v) => addr = v.parse().ok(),
            _ => {}
        }
    }
    let t = match service {
        Some(s) => format!("{}/{s}", transport?),
        None => transport?,
    };
    Some((t, addr?))
}

/// Copies lines from a pipe into `into` until EOF; the thread holds its
/// clone of `into` until then, so a strong count of 1 means EOF was seen.
fn pump<R: Read + Send + 'static>(r: R, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            into.lock().expect("lines lock").push(line);
        }
        drop(into);
    });
}

/// Like [`pump`] up to and including the `started` line; then stops
/// reading and parks the still-open pipe in `held`.
fn pump_until_started<R: Read + Send + 'static>(r: R, into: Arc<Mutex<Vec<String>>>, held: Held) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end_matches('\n').to_string();
            let started = l.starts_with("nodedns-") && l.ends_with(" started");
            into.lock().expect("lines lock").push(l);
            if started {
                *held.0.lock().expect("held lock") = Some(Box::new(reader));
                return;
            }
        }
    });
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop(self.held_stdout.0.lock().map(|mut h| h.take()));
        if std::thread::panicking() {
            eprintln!("--- nodedns stderr ---\n{}", self.stderr().join("\n"));
            eprintln!("--- nodedns stdout ---\n{}", self.stdout().join("\n"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
