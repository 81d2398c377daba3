//! The `nodedns` binary: parse flags, load the Corefile, serve, stop
//! gracefully on SIGTERM or SIGINT.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nodedns::cli::{self, Args};
use nodedns::config::{self, Config};
use nodedns::corefile::Source;
use nodedns::server::{Limits, Options, Server, TcpOptions};
use nodedns_plugins::pkg::lifecycle::Lifecycle;
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not for log collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NODEDNS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &Args) -> anyhow::Result<Config> {
    let (name, text) = match &args.conf {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading Corefile {}", p.display()))?;
            (p.display().to_string(), text)
        }
        None if Path::new("Corefile").is_file() => {
            let text = std::fs::read_to_string("Corefile").context("reading ./Corefile")?;
            ("Corefile".to_string(), text)
        }
        None => ("Corefile".to_string(), default_corefile(&args.resolv_conf)),
    };
    let dir = args
        .conf
        .as_deref()
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let src = Source {
        name: &name,
        text: &text,
        dir,
    };
    // The error already reads `FILE:LINE: message`.
    config::load(&src, args.dns_port).map_err(anyhow::Error::msg)
}

fn run(args: &Args) -> anyhow::Result<()> {
    let mut config = load(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nodedns")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let opts = Options {
            udp_sockets: args.udp_sockets,
            udp_rcvbuf: args.udp_rcvbuf,
            limits: Limits {
                max_udp_size: args.max_udp_size,
            },
            tcp: TcpOptions {
                idle_timeout: args.tcp_idle_timeout,
                max_conns: args.max_tcp_conns,
            },
            max_inflight: args.max_inflight,
        };
        // Signals are caught from here on, so a stop during start-up is graceful too.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let life = Lifecycle::new();
        life.set_reporters(std::mem::take(&mut config.services.readiness));
        // Bind everything before serving anything: a bad address fails start-up whole.
        let mut http = HttpEndpoints::default();
        let bound = http.bind_new(&config.services).await?;
        let mut server = Server::start(&config, &opts)?;
        for (service, addr) in http.apply(&config.services, bound, &life) {
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
        if let Some(p) = &args.pidfile {
            std::fs::write(p, format!("{}\n", std::process::id()))
                .with_context(|| format!("writing pidfile {}", p.display()))?;
        }
        life.set_serving();
        announce(args, &format!("nodedns-{} started", nodedns::VERSION));
        // Plugins' background work (loop's probe, file re-reads) starts once
        // the server answers, as CoreDNS's OnStartup.
        let mut config_tasks: Vec<_> = std::mem::take(&mut config.tasks).into_iter().map(tokio::spawn).collect();
        let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
            .context("installing the SIGUSR1 handler")?;
        loop {
            let poll = config.services.reload.map(|r| r.interval + jitter(r.jitter));
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                r = tokio::signal::ctrl_c() => { r.context("installing the SIGINT handler")?; tracing::info!("SIGINT: shutting down"); break; }
                _ = usr1.recv() => reload(args, &mut config, &mut server, &mut http, &life, &mut config_tasks, "SIGUSR1").await,
                () = tokio::time::sleep(poll.unwrap_or(Duration::ZERO)), if poll.is_some() => {
                    reload(args, &mut config, &mut server, &mut http, &life, &mut config_tasks, "reload").await;
                }
            }
        }
        life.set_stopping();
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
        server.shutdown(args.shutdown_timeout).await;
        http.stop_all();
        for t in config_tasks {
            t.abort();
        }
        if let Some(p) = &args.pidfile {
            let _ = std::fs::remove_file(p);
        }
        drop(config);
        Ok(())
    })
}

/// Prints a start-up line to stdout (tests and operators read these).
fn announce(args: &Args, line: &str) {
    if !args.quiet {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// The `health` and `ready` endpoints that are up, by service and the
/// address the Corefile gives (so `:0` keeps the port it got).
#[derive(Default)]
struct HttpEndpoints {
    up: Vec<HttpEndpoint>,
}

struct HttpEndpoint {
    service: &'static str,
    addr: String,
    task: tokio::task::JoinHandle<()>,
}

/// An endpoint bound and not serving yet.
type Bound = (&'static str, String, TcpListener);

impl HttpEndpoints {
    /// The endpoints a configuration asks for, once each.
    fn wanted(services: &nodedns_plugins::setup::Services) -> Vec<(&'static str, String)> {
        let mut want: Vec<(&'static str, String)> = Vec::new();
        let all = services
            .health
            .iter()
            .map(|h| ("health", &h.addr))
            .chain(services.ready.iter().map(|r| ("ready", &r.addr)));
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
    ) -> anyhow::Result<Vec<Bound>> {
        let mut bound = Vec::new();
        for (service, addr) in Self::wanted(services) {
            if self
                .up
                .iter()
                .any(|e| e.service == service && e.addr == addr)
            {
                continue;
            }
            let listener = bind_http(&addr)
                .await
                .with_context(|| format!("{service}: binding {addr}"))?;
            bound.push((service, addr, listener));
        }
        Ok(bound)
    }

    /// Serves the newly bound endpoints and stops those `services` no
    /// longer asks for. Returns the new ones' addresses, to announce.
    fn apply(
        &mut self,
        services: &nodedns_plugins::setup::Services,
        bound: Vec<Bound>,
        life: &Arc<Lifecycle>,
    ) -> Vec<(&'static str, SocketAddr)> {
        let want = Self::wanted(services);
        self.up.retain(|e| {
            let keep = want.iter().any(|(s, a)| *s == e.service && *a == e.addr);
            if !keep {
                tracing::info!(service = e.service, addr = %e.addr, "no longer serving");
                e.task.abort();
            }
            keep
        });
        let mut started = Vec::new();
        for (service, addr, listener) in bound {
            let Ok(local) = listener.local_addr() else {
                continue;
            };
            let life = Arc::clone(life);
            let task = match service {
                "health" => tokio::spawn(nodedns_plugins::health::serve(listener, life)),
                _ => tokio::spawn(nodedns_plugins::ready::serve(listener, life)),
            };
            self.up.push(HttpEndpoint {
                service,
                addr,
                task,
            });
            started.push((service, local));
        }
        started
    }

    fn stop_all(&mut self) {
        for e in self.up.drain(..) {
            e.task.abort();
        }
    }
}

/// Binds an HTTP endpoint: `:8080` means every address.
async fn bind_http(addr: &str) -> std::io::Result<TcpListener> {
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("invalid port in '{addr}'"),
            )
        })?;
        match TcpListener::bind(SocketAddr::from(([0u16; 8], port))).await {
            Ok(l) => return Ok(l),
            Err(_) => return TcpListener::bind(SocketAddr::from(([0u8; 4], port))).await,
        }
    }
    TcpListener::bind(addr).await
}

/// A random duration in `[0, 2 * jitter)`, less `jitter`: spreads reload
/// checks over `interval ± jitter`, returned as the part to add.
fn jitter(jitter: Duration) -> Duration {
    let span = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand_below(span))
}

fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    h.finish() % n
}

/// Re-reads the Corefile and, if it changed and loads, applies it live.
/// A bad Corefile, or an address it cannot bind, is logged and the running
/// one keeps serving.
async fn reload(
    args: &Args,
    config: &mut Config,
    server: &mut Server,
    http: &mut HttpEndpoints,
    life: &Arc<Lifecycle>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
    why: &str,
) {
    let path = match &args.conf {
        Some(p) => p.clone(),
        None if Path::new("Corefile").is_file() => std::path::PathBuf::from("Corefile"),
        None => {
            tracing::info!(
                trigger = why,
                "reload: running the embedded default; nothing to re-read"
            );
            return;
        }
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(trigger = why, error = %e, "reload: reading {} failed; keeping the running config", path.display());
            return;
        }
    };
    if text == config.corefile {
        tracing::debug!(trigger = why, "reload: Corefile unchanged");
        return;
    }
    let name = path.display().to_string();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let src = Source {
        name: &name,
        text: &text,
        dir,
    };
    let mut new = match config::load_with(&src, args.dns_port, config.carry.clone()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                trigger = why,
                "reload refused, keeping the running config: {e}"
            );
            eprintln!("[ERROR] reload refused: {e}");
            return;
        }
    };
    // New health and ready addresses are bound first: one that fails
    // refuses the reload before anything changed.
    let bound = match http.bind_new(&new.services).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(trigger = why, error = %e, "reload refused, keeping the running config");
            eprintln!("[ERROR] reload refused: {e:#}");
            return;
        }
    };
    let added = match server.reload(&new) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(trigger = why, error = %e, "reload refused, keeping the running config");
            eprintln!("[ERROR] reload refused: {e:#}");
            return;
        }
    };
    for (transport, addr) in added {
        announce(
            args,
            &format!("listening transport={transport} addr={addr}"),
        );
    }
    for (service, addr) in http.apply(&new.services, bound, life) {
        announce(
            args,
            &format!("listening transport=http service={service} addr={addr}"),
        );
    }
    for t in tasks.drain(..) {
        t.abort();
    }
    tasks.extend(std::mem::take(&mut new.tasks).into_iter().map(tokio::spawn));
    life.set_reporters(std::mem::take(&mut new.services.readiness));
    *config = new;
    tracing::info!(trigger = why, "reloaded");
    announce(args, "nodedns reloaded");
}
