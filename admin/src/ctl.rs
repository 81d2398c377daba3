//! `nodedns ctl`: the admin plane's command-line client.
//!
//! It speaks gRPC through the client generated from `admin.proto`: the
//! messages are typed at both ends by one schema, errors arrive as codes
//! (the Corefile line of an invalid config in metadata), and every run
//! exercises the same service operators script against. `-o json` prints
//! the REST API's JSON shapes, so scripts can move between the two.
//!
//! The connection is one cleartext HTTP/2 connection (hyper), opened with
//! a deadline; each call has one too.

use std::future::Future;
use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{self, HeaderValue, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::net::TcpStream;
use tonic::Code;

use crate::auth::{DEFAULT_ADDR, Token, TokenError};
use crate::grpc::{pb, status_line};
use crate::rest::{CacheList, PluginList, Purged, UpstreamList};
use crate::{Applied, CacheEntry, ConfigView, Stats, Upstream};

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer accepted (a big cache listing).
const MAX_ANSWER: usize = 64 * 1024 * 1024;
/// Largest Corefile sent: the admin plane refuses more than 1 MiB.
const MAX_COREFILE: u64 = 1024 * 1024;

/// `nodedns ctl --help`.
pub const HELP: &str = "\
Usage: nodedns ctl [flags] COMMAND

Commands:
  stats                         query, cache and upstream counters
  config get                    print the running Corefile
  config apply FILE [--dry-run] validate and apply a Corefile (FILE - reads stdin)
  cache list [NAME [TYPE]]      cached entries, with seconds left
  cache flush [NAME [TYPE]]     purge every cache, one name, or one RRset
  upstreams                     forward targets: health, fails, RTT, pooled connections
  plugins                       the running plugin chain, in order
  status                        liveness and readiness (exit 1 when not both)

Flags (one or two dashes):
  --admin ADDR                  admin plane address (default 127.0.0.1:8053; :PORT means 127.0.0.1:PORT)
  --admin-token-file FILE       send the bearer token in FILE
  -o, --output table|json       output format (default table; json has the REST API's shapes)
  --dry-run                     with config apply: validate only
  -h, --help                    this text
";

/// Why a `ctl` command failed. Displayed after `nodedns ctl: `.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtlError {
    /// Bad command line (exit 2).
    #[error("{0} (see nodedns ctl --help)")]
    Usage(String),
    /// `--admin-token-file` could not be used.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Nothing answers at the address.
    #[error(
        "cannot connect to the admin plane at {addr}: {source} (is nodedns running with --admin {addr}?)"
    )]
    Connect {
        /// `--admin`.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Connected, but HTTP/2 or the call did not finish in time.
    #[error("the admin plane at {addr} did not answer within {after:?}")]
    Timeout {
        /// `--admin`.
        addr: String,
        /// The deadline.
        after: Duration,
    },
    /// The admin plane refused or failed the call.
    #[error("{what}: {message}")]
    Call {
        /// The command.
        what: &'static str,
        /// The gRPC code.
        code: Code,
        /// What the admin plane said, with a hint where one helps.
        message: String,
        /// The Corefile line of an invalid config, when the status has one.
        line: Option<u32>,
    },
    /// `config apply` was refused: the Corefile is invalid.
    #[error("config apply: {message}")]
    Invalid {
        /// `Corefile:LINE: …`.
        message: String,
        /// The line, when known.
        line: Option<u32>,
    },
    /// `status`: the agent is not healthy or not ready.
    #[error("{0}")]
    NotReady(String),
    /// The Corefile to apply could not be read.
    #[error("reading {}: {source}", path.display())]
    ReadFile {
        /// `FILE` (`-` for stdin).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing the output failed (a closed pipe).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

impl CtlError {
    /// The process exit code: 2 for a bad command line, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// `nodedns ctl …`: `args` are those after `ctl`. Prints to stdout, errors
/// to stderr as `nodedns ctl: …`. Starts its own single-threaded runtime,
/// so call it outside any tokio runtime.
pub fn main(args: Vec<String>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nodedns ctl: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    let result = runtime.block_on(run(args, &mut out));
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodedns ctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs one `ctl` command, writing what it prints to `out`.
pub async fn run(args: Vec<String>, out: &mut impl Write) -> Result<(), CtlError> {
    let cmd = parse(args)?;
    let Some(action) = cmd.action else {
        out.write_all(HELP.as_bytes())?;
        return Ok(());
    };
    let token = match &cmd.token_file {
        Some(path) => Some(Token::from_file(path)?),
        None => None,
    };
    // Read the file before connecting: a typo in FILE should not need a
    // running agent to be reported.
    let corefile = match &action {
        Action::Apply { file, .. } => Some(read_corefile(file)?),
        _ => None,
    };
    let channel = Channel::connect(&cmd.addr, token.as_ref()).await?;
    let mut client = pb::admin_client::AdminClient::with_origin(channel, origin(&cmd.addr)?)
        .max_decoding_message_size(MAX_ANSWER);
    let addr = cmd.addr.as_str();
    let json = cmd.json;
    match action {
        Action::Stats => {
            let stats: Stats = call(addr, "stats", client.get_stats(pb::GetStatsRequest {}))
                .await?
                .into();
            if json {
                print_json(out, &stats)?;
            } else {
                print_stats(out, &stats)?;
            }
        }
        Action::ConfigGet => {
            let c = call(
                addr,
                "config get",
                client.get_config(pb::GetConfigRequest {}),
            )
            .await?;
            if json {
                print_json(
                    out,
                    &ConfigView {
                        corefile: c.corefile,
                        version: c.version,
                    },
                )?;
            } else {
                out.write_all(c.corefile.as_bytes())?;
            }
        }
        Action::Apply { dry_run, .. } => {
            let request = pb::ApplyConfigRequest {
                corefile: corefile.unwrap_or_default(),
                dry_run,
                if_match: None,
            };
            let applied = match call(addr, "config apply", client.apply_config(request)).await {
                Ok(a) => Applied {
                    version: a.version,
                    persisted: a.persisted,
                },
                Err(CtlError::Call {
                    code: Code::InvalidArgument,
                    message,
                    line,
                    ..
                }) => return Err(invalid(message, line)),
                Err(e) => return Err(e),
            };
            if json {
                print_json(out, &applied)?;
            } else if dry_run {
                writeln!(
                    out,
                    "valid: the Corefile would apply (version {} runs, unchanged)",
                    applied.version
                )?;
            } else if applied.persisted {
                writeln!(
                    out,
                    "applied: version {} runs, written to the -conf file",
                    applied.version
                )?;
            } else {
                writeln!(
                    out,
                    "applied: version {} runs (not written back: no writable -conf file)",
                    applied.version
                )?;
            }
        }
        Action::CacheList { name, rtype } => {
            let r = call(
                addr,
                "cache list",
                client.list_cache(pb::ListCacheRequest {
                    name,
                    r#type: rtype,
                }),
            )
            .await?;
            let entries: Vec<CacheEntry> = r.entries.into_iter().map(Into::into).collect();
            if json {
                print_json(out, &CacheList { entries })?;
            } else if entries.is_empty() {
                writeln!(out, "no cached entries")?;
            } else {
                let rows = entries
                    .iter()
                    .map(|e| {
                        vec![
                            e.name.clone(),
                            e.rtype.clone(),
                            e.ttl.to_string(),
                            yes_no(e.stale).into(),
                        ]
                    })
                    .collect::<Vec<_>>();
                table(out, &["NAME", "TYPE", "TTL", "STALE"], &rows)?;
            }
        }
        Action::CacheFlush { name, rtype } => {
            let what = match (&name, &rtype) {
                (None, _) => "every cache".to_string(),
                (Some(n), None) => n.clone(),
                (Some(n), Some(t)) => format!("{n} {t}"),
            };
            let r = call(
                addr,
                "cache flush",
                client.purge_cache(pb::PurgeCacheRequest {
                    name,
                    r#type: rtype,
                }),
            )
            .await?;
            if json {
                print_json(out, &Purged { removed: r.removed })?;
            } else {
                writeln!(out, "removed {} entries ({what})", r.removed)?;
            }
        }
        Action::Upstreams => {
            let r = call(
                addr,
                "upstreams",
                client.list_upstreams(pb::ListUpstreamsRequest {}),
            )
            .await?;
            let upstreams: Vec<Upstream> = r.upstreams.into_iter().map(Into::into).collect();
            if json {
                print_json(out, &UpstreamList { upstreams })?;
            } else {
                print_upstreams(out, &upstreams)?;
            }
        }
        Action::Plugins => {
            let r = call(
                addr,
                "plugins",
                client.list_plugins(pb::ListPluginsRequest {}),
            )
            .await?;
            if json {
                print_json(out, &PluginList { plugins: r.plugins })?;
            } else {
                for p in &r.plugins {
                    writeln!(out, "{p}")?;
                }
            }
        }
        Action::Status => {
            let s = call(addr, "status", client.get_status(pb::GetStatusRequest {})).await?;
            if json {
                print_json(
                    out,
                    &StatusJson {
                        healthy: s.healthy,
                        ready: s.ready,
                        not_ready: &s.not_ready,
                    },
                )?;
            } else {
                writeln!(out, "healthy: {}", yes_no(s.healthy))?;
                if s.ready {
                    writeln!(out, "ready: yes")?;
                } else {
                    writeln!(out, "ready: no ({})", s.not_ready.join(", "))?;
                }
            }
            if !s.healthy {
                return Err(CtlError::NotReady(
                    "status: the agent is not healthy".into(),
                ));
            }
            if !s.ready {
                return Err(CtlError::NotReady(format!(
                    "status: not ready: {}",
                    s.not_ready.join(", ")
                )));
            }
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct StatusJson<'a> {
    healthy: bool,
    ready: bool,
    not_ready: &'a [String],
}

/// The Corefile's line, in the message unless it already says it.
fn invalid(message: String, line: Option<u32>) -> CtlError {
    let message = match line {
        Some(l) if !message.contains(&format!(":{l}:")) => format!("{message} (line {l})"),
        _ => message,
    };
    CtlError::Invalid { message, line }
}

// === command line ===

#[derive(Debug, PartialEq, Eq)]
enum Action {
    Stats,
    ConfigGet,
    Apply {
        file: PathBuf,
        dry_run: bool,
    },
    CacheList {
        name: Option<String>,
        rtype: Option<String>,
    },
    CacheFlush {
        name: Option<String>,
        rtype: Option<String>,
    },
    Upstreams,
    Plugins,
    Status,
}

#[derive(Debug)]
struct Command {
    addr: String,
    token_file: Option<PathBuf>,
    json: bool,
    /// `None` for `--help`.
    action: Option<Action>,
}

fn parse(args: Vec<String>) -> Result<Command, CtlError> {
    let usage = |m: String| CtlError::Usage(m);
    let mut addr = DEFAULT_ADDR.to_string();
    let mut token_file = None;
    let mut json = false;
    let mut help = false;
    let mut dry_run = false;
    let mut words = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        // `-` alone is a word: stdin for `config apply -`.
        let flag = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(f) if !f.is_empty() => f,
            _ => {
                words.push(arg);
                continue;
            }
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let mut value = |what: &str| match &inline {
            Some(v) => Ok(v.clone()),
            None => it
                .next()
                .ok_or_else(|| usage(format!("flag -{name} needs {what}"))),
        };
        match name {
            "admin" => addr = value("an address")?,
            "admin-token-file" => token_file = Some(PathBuf::from(value("a file")?)),
            "o" | "output" => {
                json = match value("a format")?.as_str() {
                    "json" => true,
                    "table" => false,
                    other => {
                        return Err(usage(format!(
                            "flag -{name}: unknown format '{other}' (table or json)"
                        )));
                    }
                }
            }
            "dry-run" => {
                dry_run = match inline.as_deref() {
                    None | Some("true" | "1") => true,
                    Some("false" | "0") => false,
                    Some(v) => {
                        return Err(usage(format!("flag -{name}: invalid boolean '{v}'")));
                    }
                }
            }
            "h" | "help" => help = true,
            _ => return Err(usage(format!("unknown flag '{arg}'"))),
        }
    }
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let owned = |s: Option<&&str>| s.map(|s| (*s).to_string());
    if help {
        return Ok(Command {
            addr,
            token_file,
            json,
            action: None,
        });
    }
    let action = match words.as_slice() {
        ["stats"] => Action::Stats,
        ["config", "get"] => Action::ConfigGet,
        ["config", "apply", file] => Action::Apply {
            file: PathBuf::from(file),
            dry_run,
        },
        ["config", "apply"] => return Err(usage("config apply needs a FILE (- for stdin)".into())),
        ["cache", "list", rest @ ..] if rest.len() <= 2 => Action::CacheList {
            name: owned(rest.first()),
            rtype: owned(rest.get(1)),
        },
        ["cache", "flush", rest @ ..] if rest.len() <= 2 => Action::CacheFlush {
            name: owned(rest.first()),
            rtype: owned(rest.get(1)),
        },
        ["upstreams"] => Action::Upstreams,
        ["plugins"] => Action::Plugins,
        ["status"] => Action::Status,
        [] => return Err(usage("no command".into())),
        _ => return Err(usage(format!("unknown command '{}'", words.join(" ")))),
    };
    if dry_run && !matches!(action, Action::Apply { .. }) {
        return Err(usage("--dry-run goes with config apply".into()));
    }
    Ok(Command {
        addr: client_addr(&addr),
        token_file,
        json,
        action: Some(action),
    })
}

/// `--admin` as a place to connect to: the agent's `:PORT` (every
/// address) is reached on 127.0.0.1; `http://` is tolerated.
fn client_addr(addr: &str) -> String {
    let addr = addr.trim();
    let addr = addr.strip_prefix("http://").unwrap_or(addr);
    let addr = addr.trim_end_matches('/');
    match addr.strip_prefix(':') {
        Some(port) => format!("127.0.0.1:{port}"),
        None => addr.to_string(),
    }
}

fn origin(addr: &str) -> Result<Uri, CtlError> {
    format!("http://{addr}")
        .parse()
        .map_err(|_| CtlError::Usage(format!("invalid --admin address '{addr}'")))
}

fn read_corefile(file: &Path) -> Result<String, CtlError> {
    let err = |source| CtlError::ReadFile {
        path: file.to_path_buf(),
        source,
    };
    let mut raw = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .lock()
            .take(MAX_COREFILE + 1)
            .read_to_end(&mut raw)
            .map_err(err)?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_COREFILE + 1).read_to_end(&mut raw))
            .map_err(err)?;
    }
    if raw.len() as u64 > MAX_COREFILE {
        return Err(err(std::io::Error::other(format!(
            "larger than the admin plane's limit of {MAX_COREFILE} bytes"
        ))));
    }
    String::from_utf8(raw).map_err(|_| err(std::io::Error::other("not UTF-8 text")))
}

// === the connection ===

/// One cleartext HTTP/2 connection to the admin plane, for the clients
/// generated from `admin.proto` (and tonic-reflection's): it adds the
/// bearer token to every request.
///
/// ```no_run
/// # async fn demo() -> Result<(), nodedns_admin::ctl::CtlError> {
/// use nodedns_admin::ctl::Channel;
/// use nodedns_admin::grpc::pb::{GetStatsRequest, admin_client::AdminClient};
/// let channel = Channel::connect("127.0.0.1:8053", None).await?;
/// let mut client = AdminClient::with_origin(channel, "http://127.0.0.1:8053".parse().unwrap());
/// let stats = client.get_stats(GetStatsRequest {}).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Channel {
    send: SendRequest<tonic::body::Body>,
    authorization: Option<HeaderValue>,
}

impl Channel {
    /// Connects to `addr` (`HOST:PORT`) within [`CONNECT_TIMEOUT`].
    pub async fn connect(addr: &str, token: Option<&Token>) -> Result<Self, CtlError> {
        let timeout = || CtlError::Timeout {
            addr: addr.to_string(),
            after: CONNECT_TIMEOUT,
        };
        let connect = async {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(|source| CtlError::Connect {
                    addr: addr.to_string(),
                    source,
                })?;
            let _ = stream.set_nodelay(true);
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| CtlError::Connect {
                    addr: addr.to_string(),
                    source: std::io::Error::other(e),
                })
        };
        let (send, conn) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| timeout())??;
        // The connection runs beside the calls; it ends when the last
        // `SendRequest` is dropped or the server closes it.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            send,
            authorization: token.map(Token::header_value),
        })
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Channel {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(auth) = &self.authorization {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        Box::pin(self.send.send_request(request))
    }
}

/// One call with [`CALL_TIMEOUT`]; a status becomes a [`CtlError::Call`]
/// with a hint where the fix is known.
async fn call<T>(
    addr: &str,
    what: &'static str,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CtlError> {
    let status = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(r)) => return Ok(r.into_inner()),
        Ok(Err(s)) => s,
        Err(_) => {
            return Err(CtlError::Timeout {
                addr: addr.to_string(),
                after: CALL_TIMEOUT,
            });
        }
    };
    let mut message = status.message().to_string();
    if status.code() == Code::Unauthenticated {
        message.push_str(" (pass the agent's token with --admin-token-file)");
    }
    Err(CtlError::Call {
        what,
        code: status.code(),
        message,
        line: status_line(&status),
    })
}

// === output ===

fn print_json(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Columns aligned by two spaces, as kubectl prints them.
fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| -> std::io::Result<()> {
        let mut text = String::new();
        for (cell, width) in cells.zip(&widths) {
            text.push_str(cell);
            for _ in cell.chars().count()..*width + 2 {
                text.push(' ');
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&mut header.iter().copied())?;
    for row in rows {
        line(&mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

fn print_stats(out: &mut impl Write, s: &Stats) -> std::io::Result<()> {
    let c = &s.cache;
    writeln!(out, "queries: {}", s.queries.total)?;
    writeln!(
        out,
        "cache: {} entries, {} hits, {} misses, {} prefetches, {} stale",
        c.entries, c.hits, c.misses, c.prefetches, c.stale
    )?;
    let counts = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect::<Vec<_>>()
    };
    if !s.queries.by_rcode.is_empty() {
        writeln!(out)?;
        table(out, &["RCODE", "COUNT"], &counts(&s.queries.by_rcode))?;
    }
    if !s.queries.by_type.is_empty() {
        writeln!(out)?;
        table(out, &["TYPE", "COUNT"], &counts(&s.queries.by_type))?;
    }
    writeln!(out)?;
    print_upstreams(out, &s.upstreams)
}

fn print_upstreams(out: &mut impl Write, upstreams: &[Upstream]) -> std::io::Result<()> {
    if upstreams.is_empty() {
        return writeln!(out, "no forward upstreams");
    }
    let rows = upstreams
        .iter()
        .map(|u| {
            vec![
                u.address.clone(),
                yes_no(u.healthy).into(),
                u.fails.to_string(),
                format!("{:.2}", u.rtt_ms),
                u.pooled.to_string(),
            ]
        })
        .collect::<Vec<_>>();
    table(
        out,
        &["UPSTREAM", "HEALTHY", "FAILS", "RTT_MS", "POOLED"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, CtlError> {
        parse(args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn commands() {
        let c = p(&["stats"]).unwrap();
        assert_eq!(c.action.unwrap(), Action::Stats);
        assert_eq!(c.addr, DEFAULT_ADDR);
        assert!(!c.json);
        let c = p(&["-admin", ":9000", "-o", "json", "config", "get"]).unwrap();
        assert_eq!(c.addr, "127.0.0.1:9000");
        assert!(c.json);
        assert_eq!(c.action.unwrap(), Action::ConfigGet);
        let c = p(&[
            "config",
            "apply",
            "Corefile",
            "--dry-run",
            "--admin=[::1]:1",
        ])
        .unwrap();
        assert_eq!(
            c.action.unwrap(),
            Action::Apply {
                file: "Corefile".into(),
                dry_run: true
            }
        );
        assert_eq!(c.addr, "[::1]:1");
        let c = p(&["config", "apply", "-"]).unwrap();
        assert!(
            matches!(c.action.unwrap(), Action::Apply { ref file, dry_run: false } if file == Path::new("-"))
        );
        let c = p(&["cache", "list", "a.", "AAAA", "--output=table"]).unwrap();
        assert_eq!(
            c.action.unwrap(),
            Action::CacheList {
                name: Some("a.".into()),
                rtype: Some("AAAA".into())
            }
        );
        let c = p(&["cache", "flush"]).unwrap();
        assert_eq!(
            c.action.unwrap(),
            Action::CacheFlush {
                name: None,
                rtype: None
            }
        );
        let c = p(&["--admin-token-file", "/t", "upstreams"]).unwrap();
        assert_eq!(c.token_file, Some(PathBuf::from("/t")));
        assert!(p(&["-h"]).unwrap().action.is_none());
        assert!(p(&["stats", "--help"]).unwrap().action.is_none());
        assert_eq!(p(&["plugins"]).unwrap().action, Some(Action::Plugins));
        assert_eq!(p(&["status"]).unwrap().action, Some(Action::Status));
    }

    #[test]
    fn usage_errors() {
        for bad in [
            &[][..],
            &["stat"],
            &["config"],
            &["config", "apply"],
            &["config", "apply", "a", "b"],
            &["cache", "list", "a.", "A", "extra"],
            &["stats", "--dry-run"],
            &["stats", "-o", "yaml"],
            &["stats", "--admin"],
            &["stats", "--bogus"],
            &["config", "apply", "f", "--dry-run=maybe"],
        ] {
            let e = p(bad).unwrap_err();
            assert!(matches!(e, CtlError::Usage(_)), "{bad:?}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        table(
            &mut out,
            &["NAME", "TYPE"],
            &[
                vec!["www.example.org.".into(), "A".into()],
                vec!["é.".into(), "AAAA".into()],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME              TYPE\nwww.example.org.  A\né.                AAAA\n"
        );
    }

    #[test]
    fn invalid_names_the_line_once() {
        let e = invalid("Corefile:2: cache: bad".into(), Some(2));
        assert_eq!(e.to_string(), "config apply: Corefile:2: cache: bad");
        let e = invalid("cache: bad".into(), Some(2));
        assert_eq!(e.to_string(), "config apply: cache: bad (line 2)");
    }
}
