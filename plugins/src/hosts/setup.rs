//! `hosts [FILE [ZONES...]] { INLINE | ttl | no_reverse | reload | fallthrough }`,
//! parsed as CoreDNS's `plugin/hosts/setup.go` parses it.
//!
//! A block line whose first word is not an option is an inline hosts
//! line, until `fallthrough` is seen; after it, such a line is an error.
//! The file is read once here and then re-read by a background task when
//! its modification time or size changes.

use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::MissedTickBehavior;

use crate::dispenser::{Dispenser, SetupError, parse_duration};
use crate::pkg::fall::Fall;
use crate::pkg::zones;
use crate::setup::{BlockInfo, Controller};

use super::Hosts;
use super::table::{Loaded, MAX_FILE_SIZE, Rules, Source, Stamp, Table};

/// CoreDNS's default hosts file.
pub(crate) const DEFAULT_PATH: &str = "/etc/hosts";
/// CoreDNS's default TTL (`newOptions` in hostsfile.go).
pub(crate) const DEFAULT_TTL: u32 = 3600;
/// CoreDNS's default reload period.
pub(crate) const DEFAULT_RELOAD: Duration = Duration::from_secs(5);

/// The plugin's configuration, as the Corefile says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostsConfig {
    /// The hosts file (relative paths are relative to the current directory).
    pub(crate) path: PathBuf,
    /// Zones served, normalised (`example.org.`).
    pub(crate) origins: Vec<String>,
    /// Inline hosts lines from the block, in order.
    pub(crate) inline: Vec<String>,
    /// TTL of every record.
    pub(crate) ttl: u32,
    /// Whether PTR records are made from the entries.
    pub(crate) auto_reverse: bool,
    /// How often the file is checked; zero disables.
    pub(crate) reload: Duration,
    /// Where a miss falls through.
    pub(crate) fall: Fall,
}

impl HostsConfig {
    fn new(block: &BlockInfo) -> Self {
        Self {
            path: PathBuf::from(DEFAULT_PATH),
            origins: block.zones.clone(),
            inline: Vec::new(),
            ttl: DEFAULT_TTL,
            auto_reverse: true,
            reload: DEFAULT_RELOAD,
            fall: Fall::default(),
        }
    }
}

/// Parses `hosts` and adds the handler; the file re-read runs as a
/// background task when `reload` is not zero.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let config = parse(&mut c.d, c.block)?;
    let (hosts, reloader) = build(&config);
    c.add_plugin(Box::new(hosts));
    if let Some(task) = reloader {
        c.spawn_on_start(task);
    }
    Ok(())
}

/// Tokens to config. Only side effect: a warning when FILE is missing or
/// is a directory (as CoreDNS).
pub(crate) fn parse(d: &mut Dispenser<'_>, block: &BlockInfo) -> Result<HostsConfig, SetupError> {
    let mut cfg = HostsConfig::new(block);
    let mut seen = false;
    while d.next() {
        if seen {
            return Err(d.err("this plugin can only be used once per Server Block"));
        }
        seen = true;

        let mut args = d.remaining_args().into_iter();
        if let Some(file) = args.next() {
            cfg.path = PathBuf::from(file);
            check_file(d, &cfg)?;
        }
        let zone_args: Vec<String> = args.collect();
        if !zone_args.is_empty() {
            cfg.origins.clear();
            for z in &zone_args {
                let expanded = zones::normalize_exact(z)
                    .ok_or_else(|| d.err(format_args!("invalid zone '{z}'")))?;
                cfg.origins.extend(expanded);
            }
        }

        while d.next_block() {
            match d.val() {
                "fallthrough" => cfg.fall = Fall::parse(d)?,
                "no_reverse" => cfg.auto_reverse = false,
                "ttl" => cfg.ttl = parse_ttl(d)?,
                "reload" => cfg.reload = parse_reload(d)?,
                other => {
                    if cfg.fall.is_set() {
                        return Err(d.err(format_args!(
                            "unknown property '{other}' (inline host lines must come before fallthrough)"
                        )));
                    }
                    let mut line = other.to_string();
                    for a in d.remaining_args() {
                        line.push(' ');
                        line.push_str(&a);
                    }
                    cfg.inline.push(line);
                }
            }
        }
    }
    Ok(cfg)
}

/// `ttl SECONDS`: 1 to 65535. Words after the first are ignored, as CoreDNS does.
fn parse_ttl(d: &mut Dispenser<'_>) -> Result<u32, SetupError> {
    let args = d.remaining_args();
    let Some(first) = args.first() else {
        return Err(d.err("ttl needs a number of seconds"));
    };
    let n: i64 = first
        .parse()
        .map_err(|_| d.err(format_args!("ttl needs a number of seconds, not '{first}'")))?;
    match u32::try_from(n) {
        Ok(ttl @ 1..=65535) => Ok(ttl),
        _ => Err(d.err(format_args!(
            "ttl must be between 1 and 65535 seconds, not '{first}'"
        ))),
    }
}

/// `reload DURATION`: a Go duration; `0` disables.
fn parse_reload(d: &mut Dispenser<'_>) -> Result<Duration, SetupError> {
    let args = d.remaining_args();
    let [arg] = args.as_slice() else {
        return Err(d.err("reload needs a duration (zero seconds to disable)"));
    };
    if let Some(rest) = arg.strip_prefix('-')
        && parse_duration(rest).is_some_and(|v| !v.is_zero())
    {
        return Err(d.err(format_args!("invalid negative duration for reload '{arg}'")));
    }
    let unsigned = arg.strip_prefix(['+', '-']).unwrap_or(arg);
    parse_duration(unsigned)
        .ok_or_else(|| d.err(format_args!("invalid duration for reload '{arg}'")))
}

/// Warns when the file is missing or a directory; refuses one that cannot
/// be looked at (CoreDNS: "unable to access hosts file").
fn check_file(d: &Dispenser<'_>, cfg: &HostsConfig) -> Result<(), SetupError> {
    match std::fs::metadata(&cfg.path) {
        Ok(meta) if meta.is_dir() => {
            tracing::warn!(path = %cfg.path.display(), "hosts file is a directory");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %cfg.path.display(), "hosts file does not exist");
            Ok(())
        }
        Err(e) => Err(d.err(format_args!(
            "unable to access hosts file '{}': {e}",
            cfg.path.display()
        ))),
    }
}

/// Config to handler: parses the inline lines, reads the file once, and
/// returns the re-read task when `reload` is on.
pub(crate) fn build(
    cfg: &HostsConfig,
) -> (Hosts, Option<impl Future<Output = ()> + Send + 'static>) {
    let origins: Vec<Vec<u8>> = cfg
        .origins
        .iter()
        .filter_map(|z| zones::to_wire(z))
        .collect();
    let rules = Rules {
        origins: origins.clone(),
        auto_reverse: cfg.auto_reverse,
    };
    let inline = Table::parse(cfg.inline.join("\n").as_bytes(), &rules).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "inline hosts entries refused");
        Table::default()
    });
    let source = Arc::new(Source {
        path: cfg.path.clone(),
        rules,
        inline,
        max_size: MAX_FILE_SIZE,
    });
    let (first, stamp) = match source.load(None) {
        Ok(Loaded::Table(t, stamp)) => {
            super::metrics::file_read(
                &source.path().display().to_string(),
                t.len(),
                stamp.modified(),
            );
            (t, Some(stamp))
        }
        Ok(Loaded::Refused(e, stamp)) => {
            tracing::error!(error = %e, "hosts file refused");
            (source.inline_only(), Some(stamp))
        }
        Ok(Loaded::Unchanged) => (source.inline_only(), None),
        Err(e) => {
            tracing::debug!(error = %e, "hosts file not read");
            (source.inline_only(), None)
        }
    };
    tracing::debug!(path = %source.path().display(), entries = first.len(), "hosts table loaded");
    let table = Arc::new(ArcSwap::from_pointee(first));
    let task = (!cfg.reload.is_zero())
        .then(|| reload_loop(Arc::downgrade(&table), source, cfg.reload, stamp));
    let hosts = Hosts {
        origins,
        fall: cfg.fall.clone(),
        ttl: cfg.ttl,
        table,
    };
    (hosts, task)
}

/// Re-reads the file every `every` when its stamp changed, and swaps the
/// table in. Ends when the plugin (the only strong owner of the table) is
/// dropped.
async fn reload_loop(
    table: Weak<ArcSwap<Table>>,
    source: Arc<Source>,
    every: Duration,
    mut last: Option<Stamp>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate; the file was read at setup.
    tick.tick().await;
    loop {
        tick.tick().await;
        if table.strong_count() == 0 {
            return;
        }
        let src = Arc::clone(&source);
        let prev = last.clone();
        let loaded = match tokio::task::spawn_blocking(move || src.load(prev.as_ref())).await {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = %e, "reading the hosts file failed");
                continue;
            }
        };
        let new = match loaded {
            Ok(Loaded::Unchanged) => continue,
            Ok(Loaded::Table(t, stamp)) => {
                super::metrics::file_read(
                    &source.path().display().to_string(),
                    t.len(),
                    stamp.modified(),
                );
                last = Some(stamp);
                t
            }
            Ok(Loaded::Refused(e, stamp)) => {
                last = Some(stamp);
                tracing::error!(error = %e, "hosts file refused");
                continue;
            }
            // A missing file keeps the entries last read, as CoreDNS.
            Err(e) => {
                tracing::debug!(error = %e, "hosts file not read");
                continue;
            }
        };
        let Some(table) = table.upgrade() else {
            return;
        };
        tracing::debug!(path = %source.path().display(), entries = new.len(), "hosts file re-read");
        table.store(Arc::new(new));
    }
}
