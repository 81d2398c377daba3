//! The `process_*` metrics of Prometheus's Go and Rust clients, read from
//! `/proc/self` on each scrape (the `prometheus` crate's own collector
//! would add the `procfs` crate for the same few numbers). Anything that
//! cannot be read is left out of the scrape rather than failing it.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, Opts};

/// Clock ticks per second in `/proc/self/stat` (`USER_HZ`): 100 on every
/// Linux architecture nodedns builds for.
const USER_HZ: f64 = 100.0;

/// Collects the process metrics when the registry is gathered.
pub(super) struct ProcessCollector {
    descs: Vec<Desc>,
    cpu: Counter,
    rss: IntGauge,
    vsize: IntGauge,
    fds: IntGauge,
    max_fds: IntGauge,
    start: Gauge,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl ProcessCollector {
    pub(super) fn new() -> Self {
        let cpu = Counter::with_opts(opts(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ));
        let rss = IntGauge::with_opts(opts(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        ));
        let vsize = IntGauge::with_opts(opts(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        ));
        let fds = IntGauge::with_opts(opts("process_open_fds", "Number of open file descriptors."));
        let max_fds = IntGauge::with_opts(opts(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        ));
        let start = Gauge::with_opts(opts(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        ));
        // Construction fails only for an invalid name, and these are
        // literals (built by the unit tests).
        let (Ok(cpu), Ok(rss), Ok(vsize), Ok(fds), Ok(max_fds), Ok(start)) =
            (cpu, rss, vsize, fds, max_fds, start)
        else {
            unreachable!("invariant: process metric names are well-formed")
        };
        if let Some(t) = start_time() {
            start.set(t);
        }
        let mut descs = Vec::new();
        for c in [&cpu as &dyn Collector, &rss, &vsize, &fds, &max_fds, &start] {
            descs.extend(c.desc().into_iter().cloned());
        }
        Self {
            descs,
            cpu,
            rss,
            vsize,
            fds,
            max_fds,
            start,
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        if let Some(total) = cpu_seconds() {
            // A counter only goes up: add what was spent since the last scrape.
            let delta = total - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
            out.extend(self.cpu.collect());
        }
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let kb = |key: &str| status.as_deref().and_then(|s| status_kb(s, key));
        if let Some(v) = kb("VmRSS:") {
            self.rss.set(v.saturating_mul(1024));
            out.extend(self.rss.collect());
        }
        if let Some(v) = kb("VmSize:") {
            self.vsize.set(v.saturating_mul(1024));
            out.extend(self.vsize.collect());
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory's own descriptor is one of the entries.
            let n = dir.count().saturating_sub(1);
            self.fds.set(i64::try_from(n).unwrap_or(i64::MAX));
            out.extend(self.fds.collect());
        }
        if let Ok((soft, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            self.max_fds.set(i64::try_from(soft).unwrap_or(i64::MAX));
            out.extend(self.max_fds.collect());
        }
        if self.start.get() > 0.0 {
            out.extend(self.start.collect());
        }
        out
    }
}

/// User plus system CPU time of the whole process, in seconds.
fn cpu_seconds() -> Option<f64> {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(u.user_time()) + secs(u.system_time()))
}

/// A `KEY: N kB` line of `/proc/self/status`.
pub(super) fn status_kb(status: &str, key: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// When the process started, in seconds since the epoch: its start in
/// ticks after boot (`/proc/self/stat`) plus the boot time (`/proc/stat`).
fn start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    start_from(&stat, &boot)
}

/// [`start_time`] from the two files' text.
pub(super) fn start_from(stat: &str, boot: &str) -> Option<f64> {
    // The command name, field 2, is in parentheses and may hold spaces:
    // fields are counted after its closing one, from field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let ticks: f64 = rest.split_whitespace().nth(22 - 3)?.parse().ok()?;
    let btime: f64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime + ticks / USER_HZ)
}
