//! The `nodedns` binary: parse flags, load the Corefile, serve, stop
//! gracefully on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nodedns::cli::{self, Args};
use nodedns::config::{self, Config};
use nodedns::control::{AgentControl, Running};
use nodedns::corefile::Source;
use nodedns::nodelocal::handover::{self, HandoverSocket, Inherited, Kind, Offered};
use nodedns::nodelocal::run::NodeLocal;
use nodedns::server::{Limits, Options, Server, TcpOptions};
use nodedns_admin::{Applied, ApplyError};
use nodedns_plugins::pkg::lifecycle::Lifecycle;
use nodedns_plugins::pkg::output;
use nodedns_plugins::pkg::snapshot;
use nodedns_plugins::setup::StartupWait;
use tokio::net::TcpListener;

/// Served when no Corefile is given or found: a caching forwarder to the
/// node's resolvers (`--resolv-conf`), with prefetch, serve-stale and loop
/// detection.
fn default_corefile(resolv_conf: &Path) -> String {
    format!(
        ". {{\n    errors\n    cache {{\n        prefetch 10 1m 10%\n        serve_stale\n    }}\n    loop\n    forward . {}\n}}\n",
        resolv_conf.display()
    )
}

fn main() -> ExitCode {
    // `nodedns ctl …` is the admin plane's client, with flags of its own.
    if std::env::args().nth(1).as_deref() == Some("ctl") {
        return nodedns_admin::ctl::main(std::env::args().skip(2).collect());
    }
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nodedns: {e}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        print!("{}", cli::HELP);
        return ExitCode::SUCCESS;
    }
    if args.version {
        println!(
            "nodedns-{}\n{}/{}",
            nodedns::VERSION,
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        return ExitCode::SUCCESS;
    }
    if args.plugins {
        println!("Server types:\n  dns\n\nPlugins (chain order):");
        for p in nodedns::registry::compiled() {
            println!("  dns.{p}");
        }
        return ExitCode::SUCCESS;
    }
    // Tracing goes through the bounded stderr queue: a stalled reader
    // costs lines (counted), never a serving thread.
    tracing_subscriber::fmt()
        .with_writer(|| output::stderr().writer())
        // Colour only for a person at a terminal, not for log collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NODEDNS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    raise_nofile_limit();
    let code = match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::stderr().line(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    };
    // What is queued gets a bounded chance to be written; a reader that
    // stalled does not keep the process from exiting.
    output::flush_all(EXIT_FLUSH);
    code
}

/// How long exit waits for queued output to be written.
const EXIT_FLUSH: Duration = Duration::from_secs(2);

/// How long the admin plane may take to close its connections at exit
/// (its own grace is 5 s).
const ADMIN_STOP: Duration = Duration::from_secs(7);

/// How long exit waits for the runtime's remaining tasks.
const RUNTIME_STOP: Duration = Duration::from_secs(2);

/// Raises the soft limit on open descriptors to the hard limit, as the Go
/// runtime does for CoreDNS: connections, upstream sockets and HTTP
/// probes all take one, and the default soft limit (often 1024) is easily
/// reached on a busy node.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "raising the open-file limit failed");
            } else {
                tracing::debug!(from = soft, to = hard, "raised the open-file limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "reading the open-file limit failed"),
    }
}

/// The Corefile the agent reads and re-reads: `-conf`, else `./Corefile`
/// if there is one at start; `None` runs the embedded default.
fn conf_path(args: &Args) -> Option<PathBuf> {
    args.conf.clone().or_else(|| {
        Path::new("Corefile")
            .is_file()
            .then(|| PathBuf::from("Corefile"))
    })
}

/// The directory `import`s are relative to.
fn conf_dir(conf: Option<&Path>) -> &Path {
    conf.and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn load(args: &Args, conf: Option<&Path>) -> anyhow::Result<Config> {
    let (name, text) = match conf {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading Corefile {}", p.display()))?;
            (p.display().to_string(), text)
        }
        None => ("Corefile".to_string(), default_corefile(&args.resolv_conf)),
    };
    let src = Source {
        name: &name,
        text: &text,
        dir: conf_dir(conf),
    };
    // The error already reads `FILE:LINE: message`.
    config::load(&src, args.dns_port).map_err(anyhow::Error::msg)
}

fn run(args: &Args) -> anyhow::Result<()> {
    // Node-local mode runs the Corefile it writes from node-cache's base.
    let mut nodelocal = args
        .nodelocal
        .enabled()
        .then(|| NodeLocal::new(&args.nodelocal, args.conf.as_deref(), args.dns_port));
    let conf = match &mut nodelocal {
        Some(nl) => {
            if let Err(e) = nl.refresh() {
                if !nl.corefile().is_file() {
                    anyhow::bail!("node-local: {e}");
                }
                tracing::error!(
                    "node-local: {e}; running {} as it is",
                    nl.corefile().display()
                );
            }
            Some(nl.corefile().to_path_buf())
        }
        None => conf_path(args),
    };
    // The admin plane's address and token are checked before anything
    // else: a non-loopback address without a token never starts.
    let token = args
        .admin_token_file
        .as_deref()
        .map(nodedns_admin::Token::from_file)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let admin_addr = nodedns_admin::auth::listen_addr(&args.admin, token.is_some())
        .map_err(anyhow::Error::msg)?;
    let mut config = load(args, conf.as_deref())?;
    // A running agent on the handover socket hands over its sockets and
    // cache; without one, addresses another process serves are refused
    // when binding.
    let mut inherited = match &args.handover_socket {
        Some(path) => match handover::takeover(path)
            .with_context(|| format!("handover: taking over through {}", path.display()))?
        {
            Some(i) => {
                tracing::info!(pid = i.pid, "handover: taking over from the running agent");
                i
            }
            None => Inherited::default(),
        },
        None => Inherited::default(),
    };
    restore_caches(args, &inherited, &config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nodedns")
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(async move {
        let opts = Options {
            udp_sockets: args.udp_sockets,
            udp_rcvbuf: args.udp_rcvbuf,
            limits: Limits {
                max_udp_size: args.max_udp_size,
            },
            tcp: TcpOptions {
                idle_timeout: args.tcp_idle_timeout,
                max_conns: args.max_tcp_conns,
                handshake_timeout: args.handshake_timeout,
                max_streams: args.max_http_streams,
            },
            max_inflight: args.max_inflight,
        };
        // Signals are caught from here on, so a stop during start-up is graceful too.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        // SIGUSR1 too, before the agent says it started: its default
        // action would end the process.
        let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
            .context("installing the SIGUSR1 handler")?;
        let life = Lifecycle::new();
        life.set_reporters(std::mem::take(&mut config.services.readiness));
        let net = match &nodelocal {
            Some(nl) => Some(nl.network().await),
            None => None,
        };
        // Bind everything before serving anything: a bad address fails start-up whole.
        let mut http = HttpEndpoints::default();
        if let Some(nl) = &nodelocal
            && !nl.args.metrics_listen_address.is_empty()
        {
            http.extra.push(("prometheus", nl.args.metrics_listen_address.clone()));
        }
        let bound = http.bind_new(&config.services, &mut inherited).await?;
        let admin_listener = match admin_addr {
            Some(addr) => Some(match inherited.take_tcp(addr) {
                Some(l) => {
                    l.set_nonblocking(true)?;
                    TcpListener::from_std(l)?
                }
                None => TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("admin: binding {addr}"))?,
            }),
            None => None,
        };
        let admin_copy = admin_listener.as_ref().and_then(copy_listener);
        // As CoreDNS's blocking OnStartup: kubernetes gets up to its
        // startup_timeout to sync before the server answers.
        tokio::select! {
            () = wait_for_startup(std::mem::take(&mut config.services.startup)) => {}
            _ = term.recv() => {
                tracing::info!("SIGTERM: shutting down");
                return Ok(());
            }
        }
        let server = Server::start(&config, &opts, &mut inherited)?;
        let self_check = Arc::new(nodedns::server::probe::SelfCheck::default());
        self_check.set_targets(server.dns_targets());
        life.set_dns_check(self_check.clone());
        nodedns_plugins::prometheus::set_enabled(&config.enabled);
        nodedns_plugins::reload::set_version(&config.corefile);
        for (service, addr) in http.apply(&config.services, bound, &life).await {
            announce(
                args,
                &format!("listening transport=http service={service} addr={addr}"),
            );
        }
        for (transport, addr) in &server.bound {
            announce(
                args,
                &format!("listening transport={transport} addr={addr}"),
            );
        }
        // The rules go in once the listeners are up, as node-cache's, and
        // before the agent says it started.
        if let Some(net) = &net {
            net.ensure_rules().await;
        }
        if let Some(p) = &args.pidfile {
            std::fs::write(p, format!("{}\n", std::process::id()))
                .with_context(|| format!("writing pidfile {}", p.display()))?;
        }
        let (control, mut changes) = AgentControl::new(running(&config, 1), Arc::clone(&life));
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = match admin_listener {
            Some(listener) => {
                if let Ok(addr) = listener.local_addr() {
                    announce(args, &format!("listening transport=http service=admin addr={addr}"));
                }
                let control: Arc<dyn nodedns_admin::Control> = control.clone();
                Some(tokio::spawn(nodedns_admin::serve(listener, control, token, async move {
                    let _ = admin_stopped.await;
                })))
            }
            None => None,
        };
        life.set_serving();
        announce(args, &format!("nodedns-{} started", nodedns::VERSION));
        if inherited.active() {
            let pid = inherited.pid;
            match tokio::task::spawn_blocking(move || inherited.confirm()).await {
                Ok(Ok(())) => tracing::info!(pid, "handover: the old agent stopped reading; serving alone"),
                Ok(Err(e)) => tracing::warn!(pid, "handover: the old agent did not confirm: {e}"),
                Err(e) => tracing::warn!(pid, "handover: {e}"),
            }
        }
        let (handover_tx, mut handover_rx) = tokio::sync::mpsc::channel::<HandoverRequest>(4);
        let _handover_socket = match &args.handover_socket {
            Some(path) => {
                let (guard, listener) = HandoverSocket::bind(path)
                    .with_context(|| format!("handover: binding {}", path.display()))?;
                listener.set_nonblocking(true)?;
                let listener = tokio::net::UnixListener::from_std(listener)?;
                tokio::spawn(serve_handover(listener, handover_tx));
                Some(guard)
            }
            None => None,
        };
        let mut sync = tokio::time::interval(args.nodelocal.sync_interval);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sync.tick().await;
        let mut config_check = tokio::time::interval(NODELOCAL_CONFIG_CHECK);
        config_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        config_check.tick().await;
        // Plugins' background work (loop's probe, file re-reads) starts once
        // the server answers, as CoreDNS's OnStartup.
        let tasks: Vec<_> = std::mem::take(&mut config.tasks).into_iter().map(tokio::spawn).collect();
        let file_seen = conf.as_ref().map(|_| config.blocks.clone());
        let mut agent = Agent {
            args,
            conf,
            config,
            server,
            http,
            life: Arc::clone(&life),
            tasks,
            version: 1,
            file_seen,
            control: Arc::clone(&control),
            self_check,
        };
        let mut released = None;
        loop {
            let poll = agent.config.services.reload.as_ref().map(nodedns_plugins::reload::next_check);
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                _ = sync.tick(), if net.is_some() => {
                    if let Some(net) = &net {
                        net.sync().await;
                    }
                }
                _ = config_check.tick(), if nodelocal.is_some() => {
                    if let Some(nl) = &mut nodelocal {
                        match nl.refresh() {
                            Ok(true) => agent.reread("node-local", false).await,
                            Ok(false) => {}
                            Err(e) => tracing::error!("node-local: {e}; keeping the running Corefile"),
                        }
                    }
                }
                Some(req) = handover_rx.recv() => match req {
                    HandoverRequest::Offer(reply) => { let _ = reply.send(agent.offer(admin_copy.as_ref())); }
                    HandoverRequest::Release(reply) => { released = Some(reply); break; }
                },
                r = tokio::signal::ctrl_c() => { r.context("installing the SIGINT handler")?; tracing::info!("SIGINT: shutting down"); break; }
                _ = usr1.recv() => agent.reread("SIGUSR1", false).await,
                () = tokio::time::sleep(poll.unwrap_or(Duration::ZERO)), if poll.is_some() => {
                    agent.reread("reload", true).await;
                }
                Some(change) = changes.recv() => {
                    let outcome = agent.apply_admin(change.corefile, change.dry_run, change.if_match).await;
                    let _ = change.reply.send(outcome);
                }
            }
        }
        // Changes asked from now on are refused (503), not left waiting.
        drop(changes);
        life.set_stopping();
        let Agent { config, server, mut http, tasks, .. } = agent;
        if let Some(reply) = released {
            // The successor reads the same sockets: stop reading them,
            // finish what is in flight, close this process's copies.
            stop_serving(server, &mut http, admin_stop, admin_task, tasks, args.shutdown_timeout).await;
            drop(admin_copy);
            let _ = reply.send(());
            announce(args, "nodedns handed over to the new agent; waiting for SIGTERM");
            // The node-local interface and rules are the successor's now:
            // they stay at exit, as does the cache (the successor has it).
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: exiting (handed over)"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: exiting (handed over)"),
            }
            drop(config);
            return Ok(());
        }
        let lameduck = config
            .services
            .health
            .iter()
            .map(|h| h.lameduck)
            .max()
            .unwrap_or_default();
        if !lameduck.is_zero() {
            tracing::info!(?lameduck, "going into lameduck mode");
            tokio::time::sleep(lameduck).await;
        }
        // The admin plane stays up through lame duck and draining (healthz
        // says 503, stats still read); it stops last, within its grace.
        stop_serving(server, &mut http, admin_stop, admin_task, tasks, args.shutdown_timeout).await;
        if let Some(path) = &args.cache_snapshot {
            save_caches(path, &config);
        }
        if let Some(net) = &net {
            if args.nodelocal.skip_teardown {
                tracing::info!("node-local: -skipteardown: leaving the interface and rules");
            } else {
                net.teardown().await;
            }
        }
        if let Some(p) = &args.pidfile {
            remove_pidfile(p);
        }
        drop(config);
        Ok(())
    });
    // Blocking tasks still running (a stuck write, a slow file read) are
    // left behind rather than waited for.
    runtime.shutdown_timeout(RUNTIME_STOP);
    result
}

/// Stops serving: the DNS listeners (what is in flight gets `grace`), the
/// HTTP endpoints, then the admin plane (within [`ADMIN_STOP`]) and the
/// plugins' background tasks.
async fn stop_serving<T>(
    server: Server,
    http: &mut HttpEndpoints,
    admin_stop: tokio::sync::oneshot::Sender<()>,
    admin_task: Option<tokio::task::JoinHandle<T>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    grace: Duration,
) {
    server.shutdown(grace).await;
    http.stop_all().await;
    let _ = admin_stop.send(());
    if let Some(mut task) = admin_task
        && tokio::time::timeout(ADMIN_STOP, &mut task).await.is_err()
    {
        task.abort();
    }
    for t in tasks {
        t.abort();
    }
}

/// What the admin plane reads of a configuration.
fn running(config: &Config, version: u64) -> Running {
    let plugins = nodedns::registry::ORDER
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| config.enabled.iter().any(|e| e.name == *name))
        .map(str::to_string)
        .collect();
    Running {
        corefile: config.corefile.clone(),
        version,
        plugins,
        caches: config.services.caches.clone(),
        upstreams: config.services.upstreams.clone(),
    }
}

/// The running agent: its configuration, the server and HTTP endpoints it
/// runs, and what a change needs. Every change goes through [`Agent::apply`],
/// one at a time (the main loop owns it).
struct Agent<'a> {
    args: &'a Args,
    /// The Corefile re-read on SIGUSR1 and by `reload`; `None`: the
    /// embedded default runs.
    conf: Option<PathBuf>,
    config: Config,
    server: Server,
    http: HttpEndpoints,
    life: Arc<Lifecycle>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The running configuration's version (1 at start, +1 per change).
    version: u64,
    /// What the Corefile expanded to when last read or written: `reload`
    /// applies the file only when it changed since, so a change made
    /// through the admin plane that could not be written back is not
    /// undone by the next check.
    file_seen: Option<Vec<nodedns::corefile::ServerBlock>>,
    control: Arc<AgentControl>,
    /// The DNS-level health check, which follows the listeners.
    self_check: Arc<nodedns::server::probe::SelfCheck>,
}

impl Agent<'_> {
    /// What a successor gets: copies of every listening socket (DNS,
    /// HTTP endpoints, the admin plane) and the caches.
    fn offer(&self, admin: Option<&std::os::fd::OwnedFd>) -> HandoverOffer {
        let (mut sockets, served) = self.server.offer();
        sockets.extend(self.http.offer());
        if let Some(fd) = admin
            && let Ok(copy) = fd.try_clone()
            && let Ok(addr) = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(
                std::os::fd::AsRawFd::as_raw_fd(fd),
            )
            && let Some(addr) = sockaddr(&addr)
        {
            sockets.push(Offered {
                kind: Kind::Tcp,
                addr,
                fd: copy,
            });
        }
        (sockets, served, self.config.services.caches.clone())
    }

    /// Re-reads the Corefile (SIGUSR1; `reload`, which passes
    /// `only_if_changed`) and applies it if its configuration (imports and
    /// snippets expanded) differs from the running one.
    async fn reread(&mut self, why: &'static str, only_if_changed: bool) {
        let Some(path) = self.conf.clone() else {
            tracing::info!(
                trigger = why,
                "reload: running the embedded default; nothing to re-read"
            );
            return;
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return refuse(why, &format!("reading {}: {e}", path.display())),
        };
        let name = path.display().to_string();
        let src = Source {
            name: &name,
            text: &text,
            dir: conf_dir(Some(&path)),
        };
        // Compare what the Corefile expands to, not its text: an edit in an
        // imported file is a change, a comment-only edit is not.
        let blocks = match nodedns::corefile::parse(&src, self.args.dns_port) {
            Ok(b) => b,
            Err(e) => return refuse(why, &e.to_string()),
        };
        if only_if_changed && self.file_seen.as_ref() == Some(&blocks) {
            return;
        }
        if blocks == self.config.blocks {
            tracing::debug!(trigger = why, "reload: configuration unchanged");
            self.file_seen = Some(blocks);
            return;
        }
        if self.apply(&name, &text, why, false).await.is_ok() {
            self.file_seen = Some(blocks);
        }
    }

    /// A change from the admin plane: checked against `if_match`, applied
    /// (or only validated), and written back to the Corefile.
    async fn apply_admin(
        &mut self,
        text: String,
        dry_run: bool,
        if_match: Option<u64>,
    ) -> Result<Applied, ApplyError> {
        if let Some(expected) = if_match.filter(|v| *v != self.version) {
            return Err(ApplyError::VersionMismatch {
                expected,
                running: self.version,
            });
        }
        let applied = self.apply("Corefile", &text, "admin", dry_run).await?;
        if dry_run {
            return Ok(applied);
        }
        let persisted = match &self.conf {
            Some(path) => match persist(path, &text) {
                Ok(()) => {
                    self.file_seen = Some(self.config.blocks.clone());
                    true
                }
                Err(e) => {
                    tracing::warn!(
                        file = %path.display(),
                        "admin: the new configuration runs but was not written back: {e:#}"
                    );
                    false
                }
            },
            None => false,
        };
        Ok(Applied {
            persisted,
            ..applied
        })
    }

    /// The one way a configuration changes: build it beside the running
    /// one, bind what it adds, swap. Refused (logged, counted in
    /// `coredns_reload_failed_total`, the running one untouched) when it
    /// does not load or cannot be bound. With `dry_run` it is only built.
    async fn apply(
        &mut self,
        name: &str,
        text: &str,
        why: &'static str,
        dry_run: bool,
    ) -> Result<Applied, ApplyError> {
        let src = Source {
            name,
            text,
            dir: conf_dir(self.conf.as_deref()),
        };
        let invalid = |e: nodedns_plugins::dispenser::SetupError| ApplyError::Invalid {
            message: e.to_string(),
            line: (e.line > 0).then_some(e.line),
        };
        let unchanged = Applied {
            version: self.version,
            persisted: false,
        };
        let outcome: Result<Option<Config>, ApplyError> = async {
            let blocks = nodedns::corefile::parse(&src, self.args.dns_port).map_err(invalid)?;
            if blocks == self.config.blocks {
                // Nothing to rebuild (it loads: it runs); the text
                // (comments, layout) is the operator's and is kept.
                if !dry_run {
                    self.config.corefile = text.to_string();
                }
                return Ok(None);
            }
            let mut new = config::load_with(&src, self.args.dns_port, self.config.carry.clone())
                .map_err(invalid)?;
            if dry_run {
                return Ok(None);
            }
            // New health, ready and prometheus addresses are bound first: one
            // that fails refuses the change before anything changed.
            let bound = self
                .http
                .bind_new(&new.services, &mut Inherited::default())
                .await
                .map_err(|e| ApplyError::Invalid {
                    message: format!("{e:#}"),
                    line: None,
                })?;
            // The running configuration serves while the new one syncs.
            wait_for_startup(std::mem::take(&mut new.services.startup)).await;
            let added = self.server.reload(&new).map_err(|e| ApplyError::Invalid {
                message: format!("{e:#}"),
                line: None,
            })?;
            self.self_check.set_targets(self.server.dns_targets());
            for (transport, addr) in added {
                announce(
                    self.args,
                    &format!("listening transport={transport} addr={addr}"),
                );
            }
            for (service, addr) in self.http.apply(&new.services, bound, &self.life).await {
                announce(
                    self.args,
                    &format!("listening transport=http service={service} addr={addr}"),
                );
            }
            for t in self.tasks.drain(..) {
                t.abort();
            }
            self.tasks
                .extend(std::mem::take(&mut new.tasks).into_iter().map(tokio::spawn));
            self.life
                .set_reporters(std::mem::take(&mut new.services.readiness));
            nodedns_plugins::prometheus::set_enabled(&new.enabled);
            new.corefile = text.to_string();
            Ok(Some(new))
        }
        .await;
        match outcome {
            Ok(None) => {
                if !dry_run {
                    self.control.publish(running(&self.config, self.version));
                }
                Ok(unchanged)
            }
            Ok(Some(new)) => {
                self.config = new;
                self.version += 1;
                nodedns_plugins::reload::set_version(&self.config.corefile);
                self.control.publish(running(&self.config, self.version));
                tracing::info!(trigger = why, version = self.version, "reloaded");
                announce(self.args, "nodedns reloaded");
                Ok(Applied {
                    version: self.version,
                    persisted: false,
                })
            }
            Err(e) => {
                if !dry_run {
                    refuse(why, &e.to_string());
                }
                Err(e)
            }
        }
    }
}

/// Writes `text` over the Corefile atomically: a temporary file beside it
/// (beside the link's target when it is a symlink, so the link stays),
/// synced, given the old file's permissions, then renamed over it.
fn persist(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let target = std::fs::canonicalize(path)?;
    let dir = target.parent().unwrap_or(Path::new("."));
    let file_name = target
        .file_name()
        .map_or_else(|| "Corefile".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{file_name}.nodedns-{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        if let Ok(meta) = std::fs::metadata(&target) {
            f.set_permissions(meta.permissions())?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Prints a start-up line to stdout (tests and operators read these),
/// through the bounded queue, so a stalled reader cannot stall a reload.
fn announce(args: &Args, line: &str) {
    if !args.quiet {
        output::stdout().line(line);
    }
}

/// The `health`, `ready` and `prometheus` endpoints that are up, by service and the
/// address the Corefile gives (so `:0` keeps the port it got).
#[derive(Default)]
struct HttpEndpoints {
    up: Vec<HttpEndpoint>,
    /// Endpoints asked for outside the Corefile (node-cache's
    /// `-metrics-listen-address`).
    extra: Vec<(&'static str, String)>,
}

struct HttpEndpoint {
    service: &'static str,
    addr: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    /// A copy of its listener, for a successor ([`handover`]).
    copy: Option<(SocketAddr, std::os::fd::OwnedFd)>,
}

/// How long a stopped HTTP endpoint may take to close its connections
/// before its task is aborted.
const HTTP_STOP: Duration = Duration::from_secs(2);

impl HttpEndpoint {
    /// Stops accepting and closes every connection, keep-alive ones
    /// included (at most [`HTTP_STOP`]).
    async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(HTTP_STOP, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// An endpoint bound and not serving yet.
type Bound = (&'static str, String, TcpListener);

impl HttpEndpoints {
    /// The endpoints a configuration asks for, once each.
    fn wanted(&self, services: &nodedns_plugins::setup::Services) -> Vec<(&'static str, String)> {
        let mut want: Vec<(&'static str, String)> = Vec::new();
        let all = services
            .health
            .iter()
            .map(|h| ("health", &h.addr))
            .chain(services.ready.iter().map(|r| ("ready", &r.addr)))
            .chain(services.prometheus.iter().map(|p| ("prometheus", &p.addr)))
            .chain(self.extra.iter().map(|(s, a)| (*s, a)));
        for (service, addr) in all {
            if !want.iter().any(|(s, a)| *s == service && a == addr) {
                want.push((service, addr.clone()));
            }
        }
        want
    }

    /// Binds the endpoints `services` asks for that are not up yet. Nothing
    /// serves on them until [`Self::apply`]; dropping the result unbinds
    /// them (a refused reload).
    async fn bind_new(
        &self,
        services: &nodedns_plugins::setup::Services,
        inherited: &mut Inherited,
    ) -> anyhow::Result<Vec<Bound>> {
        let mut bound = Vec::new();
        for (service, addr) in self.wanted(services) {
            if self
                .up
                .iter()
                .any(|e| e.service == service && e.addr == addr)
            {
                continue;
            }
            let listener = match take_http(&addr, inherited) {
                Some(l) => l,
                None => bind_http(&addr)
                    .await
                    .with_context(|| format!("{service}: binding {addr}"))?,
            };
            bound.push((service, addr, listener));
        }
        Ok(bound)
    }

    /// Serves the newly bound endpoints and stops those `services` no
    /// longer asks for (their connections closed when this returns).
    /// Returns the new ones' addresses, to announce.
    async fn apply(
        &mut self,
        services: &nodedns_plugins::setup::Services,
        bound: Vec<Bound>,
        life: &Arc<Lifecycle>,
    ) -> Vec<(&'static str, SocketAddr)> {
        let want = self.wanted(services);
        let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.up)
            .into_iter()
            .partition(|e| want.iter().any(|(s, a)| *s == e.service && *a == e.addr));
        self.up = kept;
        for e in gone {
            tracing::info!(service = e.service, addr = %e.addr, "no longer serving");
            e.stop().await;
        }
        let mut started = Vec::new();
        for (service, addr, listener) in bound {
            let Ok(local) = listener.local_addr() else {
                continue;
            };
            let copy = copy_listener(&listener).map(|fd| (local, fd));
            let life = Arc::clone(life);
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let task = match service {
                "health" => tokio::spawn(nodedns_plugins::health::serve(listener, life, stopped)),
                "prometheus" => tokio::spawn(nodedns_plugins::prometheus::serve(listener, stopped)),
                _ => tokio::spawn(nodedns_plugins::ready::serve(listener, life, stopped)),
            };
            self.up.push(HttpEndpoint {
                service,
                addr,
                stop,
                task,
                copy,
            });
            started.push((service, local));
        }
        started
    }

    async fn stop_all(&mut self) {
        for e in self.up.drain(..) {
            e.stop().await;
        }
    }

    /// Copies of the listeners, for a successor.
    fn offer(&self) -> Vec<Offered> {
        self.up
            .iter()
            .filter_map(|e| {
                let (addr, fd) = e.copy.as_ref()?;
                Some(Offered {
                    kind: Kind::Tcp,
                    addr: *addr,
                    fd: fd.try_clone().ok()?,
                })
            })
            .collect()
    }
}

/// A listener a predecessor handed over for an HTTP endpoint's address
/// (`:8080` is every address, as [`bind_http`] binds it).
fn take_http(addr: &str, inherited: &mut Inherited) -> Option<TcpListener> {
    let candidates = match every_address(addr) {
        Some(port) => port.ok()?.to_vec(),
        None => vec![addr.parse().ok()?],
    };
    let l = candidates.into_iter().find_map(|a| inherited.take_tcp(a))?;
    l.set_nonblocking(true).ok()?;
    TcpListener::from_std(l).ok()
}

/// `:PORT` (every address): IPv6's wildcard (dual-stack), then IPv4's.
/// `None` for an address with a host.
fn every_address(addr: &str) -> Option<std::io::Result<[SocketAddr; 2]>> {
    let port = addr.strip_prefix(':')?;
    Some(
        port.parse::<u16>()
            .map(|port| {
                [
                    SocketAddr::from(([0u16; 8], port)),
                    SocketAddr::from(([0u8; 4], port)),
                ]
            })
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("invalid port in '{addr}'"),
                )
            }),
    )
}

/// A copy of a listening socket (the same socket), for a successor.
fn copy_listener(l: &TcpListener) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::AsFd as _;
    l.as_fd().try_clone_to_owned().ok()
}

/// What the handover thread asks of the main loop.
enum HandoverRequest {
    /// The sockets, the addresses served, and the caches to snapshot.
    Offer(tokio::sync::oneshot::Sender<HandoverOffer>),
    /// The successor serves: stop reading the shared sockets.
    Release(tokio::sync::oneshot::Sender<()>),
}

type HandoverOffer = (
    Vec<Offered>,
    Vec<(Kind, SocketAddr)>,
    Vec<Arc<dyn nodedns_plugins::pkg::inspect::CacheInspect>>,
);

/// Serves the handover socket, one successor at a time (the exchange is
/// blocking I/O with timeouts, run on the blocking pool). Ends once a
/// successor serves and this agent released its sockets.
async fn serve_handover(
    listener: tokio::net::UnixListener,
    tx: tokio::sync::mpsc::Sender<HandoverRequest>,
) {
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                // Out of descriptors, say: try again shortly.
                tracing::warn!("handover: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(conn) = conn
            .into_std()
            .and_then(|c| c.set_nonblocking(false).map(|()| c))
        else {
            continue;
        };
        let asks = tx.clone();
        let offered = tokio::task::spawn_blocking(move || {
            handover::offer(conn, || {
                let (reply, answer) = tokio::sync::oneshot::channel();
                if asks.blocking_send(HandoverRequest::Offer(reply)).is_err() {
                    return (Vec::new(), Vec::new(), Vec::new());
                }
                let Ok((sockets, served, caches)) = answer.blocking_recv() else {
                    return (Vec::new(), Vec::new(), Vec::new());
                };
                (sockets, served, encode_caches(&caches))
            })
        })
        .await;
        match offered {
            Ok(Ok(conn)) => {
                let (reply, done) = tokio::sync::oneshot::channel();
                if tx.send(HandoverRequest::Release(reply)).await.is_err() {
                    return;
                }
                let _ = done.await;
                match tokio::task::spawn_blocking(move || handover::released(conn)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("handover: telling the new agent: {e}"),
                    Err(e) => tracing::warn!("handover: {e}"),
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    "handover: the new agent went away before serving; still serving: {e}"
                );
            }
            Err(e) => tracing::warn!("handover: {e}"),
        }
    }
}

/// Binds an HTTP endpoint: `:8080` means every address.
/// Starts what a configuration waits for ([`StartupWait`]) and waits until
/// each is ready or its timeout has passed, logging as CoreDNS does: every
/// 500 ms while waiting, a warning for each that timed out.
async fn wait_for_startup(waits: Vec<StartupWait>) {
    if waits.is_empty() {
        return;
    }
    let started = tokio::time::Instant::now();
    let mut pending = Vec::with_capacity(waits.len());
    for w in waits {
        (w.start)();
        pending.push((w.ready, w.timeout, w.waiting, w.gave_up));
    }
    let mut check = tokio::time::interval(Duration::from_millis(100));
    let mut next_log = started + Duration::from_millis(500);
    loop {
        check.tick().await;
        let now = tokio::time::Instant::now();
        pending.retain(|(ready, timeout, _, gave_up)| {
            if ready.ready() {
                return false;
            }
            if now.duration_since(started) >= *timeout {
                tracing::warn!("{gave_up}");
                return false;
            }
            true
        });
        if pending.is_empty() {
            return;
        }
        if now >= next_log {
            next_log += Duration::from_millis(500);
            for (_, _, waiting, _) in &pending {
                tracing::info!("{waiting}");
            }
        }
    }
}

async fn bind_http(addr: &str) -> std::io::Result<TcpListener> {
    if let Some(both) = every_address(addr) {
        let [v6, v4] = both?;
        return match TcpListener::bind(v6).await {
            Ok(l) => Ok(l),
            Err(_) => TcpListener::bind(v4).await,
        };
    }
    TcpListener::bind(addr).await
}

/// How often node-local mode re-reads its base Corefile and the kube-dns
/// ConfigMap.
const NODELOCAL_CONFIG_CHECK: Duration = Duration::from_secs(2);

fn sockaddr(s: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

/// Removes the pidfile if it is still this process's (a successor may have
/// written its own there).
fn remove_pidfile(p: &Path) {
    let mine = std::fs::read_to_string(p).is_ok_and(|t| t.trim() == std::process::id().to_string());
    if mine {
        let _ = std::fs::remove_file(p);
    }
}

/// Fills the caches from the predecessor's snapshot, else from
/// `--cache-snapshot`.
fn restore_caches(args: &Args, inherited: &Inherited, config: &Config) {
    let caches = &config.services.caches;
    let limits = snapshot::Limits::default();
    let result = if !inherited.snapshot.is_empty() {
        snapshot::decode_slice(&inherited.snapshot, caches, &limits).map(|s| ("the predecessor", s))
    } else if let Some(path) = args.cache_snapshot.as_deref().filter(|p| p.exists()) {
        snapshot::load(path, caches, &limits).map(|s| ("--cache-snapshot", s))
    } else {
        return;
    };
    match result {
        Ok((from, summary)) => tracing::info!(from, ?summary, "caches restored"),
        Err(e) => tracing::warn!("cache snapshot not loaded: {e}"),
    }
}

fn encode_caches(caches: &[Arc<dyn nodedns_plugins::pkg::inspect::CacheInspect>]) -> Vec<u8> {
    let (bytes, saved) = snapshot::encode_to_vec(caches);
    tracing::info!(?saved, "handover: cache snapshot made");
    bytes
}

/// Writes the caches to `--cache-snapshot` at exit.
fn save_caches(path: &Path, config: &Config) {
    match snapshot::save(path, &config.services.caches) {
        Ok(summary) => tracing::info!(path = %path.display(), ?summary, "caches saved"),
        Err(e) => tracing::warn!(path = %path.display(), "caches not saved: {e}"),
    }
}

/// Logs and counts a refused reload; the running config keeps serving.
fn refuse(why: &str, error: &str) {
    nodedns_plugins::reload::count_failure();
    tracing::error!(
        trigger = why,
        "reload refused, keeping the running config: {error}"
    );
    output::stderr().line(&format!("[ERROR] reload refused: {error}"));
}
