//! `cache [TTL] [ZONES...] { OPTIONS }`: CoreDNS 1.14's syntax plus
//! nodedns's extensions, parsed into a [`CacheConfig`] (pure, comparable:
//! a reload that leaves it equal keeps the entries).

use std::time::Duration;

use crate::dispenser::{Dispenser, SetupError};
use crate::pkg::zones;

/// CoreDNS's defaults (plugin/cache/setup.go and cache.go).
pub(crate) const DEFAULT_CAPACITY: usize = 9984;
/// Longest a positive answer is cached.
pub(crate) const MAX_SUCCESS_TTL: Duration = Duration::from_secs(3600);
/// Longest a negative answer is cached.
pub(crate) const MAX_DENIAL_TTL: Duration = Duration::from_secs(1800);
/// Shortest TTL an answer is cached with.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(5);
/// Largest TTL a setting may give: 2^31 - 1 s (RFC 2181 8; a TTL with the
/// top bit set means 0 to resolvers).
pub(crate) const MAX_TTL_SECS: u64 = i32::MAX as u64;
/// How long SERVFAIL is cached by default; at most 5 minutes.
pub(crate) const DEFAULT_SERVFAIL: Duration = Duration::from_secs(5);
const MAX_SERVFAIL: Duration = Duration::from_secs(300);
/// prefetch's defaults.
pub(crate) const DEFAULT_PREFETCH_WINDOW: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_PREFETCH_PERCENT: u8 = 10;
/// serve_stale's defaults (RFC 8767 §5 recommends 30 s for both timers).
pub(crate) const DEFAULT_STALE: Duration = Duration::from_secs(3600);
pub(crate) const DEFAULT_STALE_TTL: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_FAILURE_RECHECK: Duration = Duration::from_secs(30);
/// RFC 8767's client response timer: how long `verify` waits upstream.
pub(crate) const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_millis(1800);

/// One of the two caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// Most entries.
    pub capacity: usize,
    /// Longest TTL kept.
    pub max_ttl: Duration,
    /// Shortest TTL kept (shorter ones are raised to it).
    pub min_ttl: Duration,
    /// Zones this tier does not cache (`disable`); `["."]` is everything.
    pub disabled: Vec<String>,
}

/// When stale answers are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleMode {
    /// Answer stale at once, refresh behind.
    Immediate,
    /// Ask upstream first, for up to this long; stale only if that fails.
    Verify(Duration),
}

/// `serve_stale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stale {
    /// How long past expiry an entry may still be served.
    pub duration: Duration,
    /// Immediate or verify.
    pub mode: StaleMode,
    /// The TTL stale answers carry.
    pub response_ttl: Duration,
    /// After a failed refresh, wait this long before trying again.
    pub failure_recheck: Duration,
    /// `serve_stale_policy prefer_positive`.
    pub prefer_positive: bool,
}

/// `prefetch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetch {
    /// Hits needed…
    pub amount: u32,
    /// …with no gap longer than this between them.
    pub window: Duration,
    /// Refresh once this share (percent) of the TTL or less is left.
    pub percent: u8,
}

/// Everything a `cache` line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Zones cached (the block's zones when none are given).
    pub zones: Vec<String>,
    /// Positive answers.
    pub success: Tier,
    /// NXDOMAIN and NODATA.
    pub denial: Tier,
    /// How long SERVFAIL is cached (0: not at all).
    pub servfail: Duration,
    /// `prefetch`, if on.
    pub prefetch: Option<Prefetch>,
    /// `serve_stale`, if on.
    pub stale: Option<Stale>,
    /// Answer with the TTLs as received, not counting down.
    pub keepttl: bool,
    /// Most bytes the entries may take together (0: no byte bound).
    pub max_bytes: usize,
}

impl CacheConfig {
    fn new(zones: Vec<String>) -> Self {
        Self {
            zones,
            success: Tier {
                capacity: DEFAULT_CAPACITY,
                max_ttl: MAX_SUCCESS_TTL,
                min_ttl: MIN_TTL,
                disabled: Vec::new(),
            },
            denial: Tier {
                capacity: DEFAULT_CAPACITY,
                max_ttl: MAX_DENIAL_TTL,
                min_ttl: MIN_TTL,
                disabled: Vec::new(),
            },
            servfail: DEFAULT_SERVFAIL,
            prefetch: None,
            stale: None,
            keepttl: false,
            max_bytes: 0,
        }
    }
}

/// Parses the block's `cache` (once per block, as CoreDNS).
pub(crate) fn parse(
    d: &mut Dispenser<'_>,
    block_zones: &[String],
) -> Result<CacheConfig, SetupError> {
    let mut out = None;
    while d.next() {
        if out.is_some() {
            return Err(d.err("plugin can only be used once per server block"));
        }
        let mut args = d.remaining_args().into_iter().peekable();
        let mut ttl = None;
        if let Some(first) = args.peek()
            && let Ok(n) = first.parse::<u64>()
        {
            if n == 0 {
                return Err(d.err("cache TTL can not be zero or negative"));
            }
            if n > MAX_TTL_SECS {
                return Err(d.err(format_args!(
                    "cache TTL {n} is too large (at most {MAX_TTL_SECS})"
                )));
            }
            ttl = Some(Duration::from_secs(n));
            args.next();
        }
        let mut zs = Vec::new();
        for z in args {
            zs.push(zones::normalize(&z).ok_or_else(|| d.err(format_args!("invalid zone '{z}'")))?);
        }
        if zs.is_empty() {
            zs = block_zones.to_vec();
        }
        let mut cfg = CacheConfig::new(zs);
        if let Some(t) = ttl {
            cfg.success.max_ttl = t;
            cfg.denial.max_ttl = t;
            // A cap below the minimum lowers the minimum, as CoreDNS does.
            cfg.success.min_ttl = cfg.success.min_ttl.min(t);
            cfg.denial.min_ttl = cfg.denial.min_ttl.min(t);
        }
        while d.next_block() {
            option(d, &mut cfg)?;
        }
        out = Some(cfg);
    }
    out.ok_or_else(|| d.err("missing cache directive"))
}

fn option(d: &mut Dispenser<'_>, cfg: &mut CacheConfig) -> Result<(), SetupError> {
    match d.val() {
        what @ ("success" | "denial") => {
            let args = d.remaining_args();
            if args.is_empty() || args.len() > 3 {
                return Err(d.arg_err());
            }
            let tier = if what == "success" {
                &mut cfg.success
            } else {
                &mut cfg.denial
            };
            let cap: usize = args[0]
                .parse()
                .map_err(|_| d.err(format_args!("{what}: invalid capacity '{}'", args[0])))?;
            if cap == 0 {
                return Err(d.err(format_args!("{what}: capacity must be at least 1")));
            }
            tier.capacity = cap;
            if let Some(t) = args.get(1) {
                tier.max_ttl = secs(d, what, t)?;
                if tier.max_ttl.is_zero() {
                    return Err(d.err(format_args!("{what}: TTL can not be zero")));
                }
            }
            if let Some(t) = args.get(2) {
                tier.min_ttl = secs(d, what, t)?;
            }
            if tier.min_ttl > tier.max_ttl {
                return Err(d.err(format_args!("{what}: MINTTL is larger than TTL")));
            }
        }
        "prefetch" => {
            let args = d.remaining_args();
            if args.is_empty() || args.len() > 3 {
                return Err(d.arg_err());
            }
            let amount: u32 = args[0]
                .parse()
                .map_err(|_| d.err(format_args!("prefetch: invalid amount '{}'", args[0])))?;
            if amount == 0 {
                return Err(d.err("prefetch: amount must be at least 1"));
            }
            let mut p = Prefetch {
                amount,
                window: DEFAULT_PREFETCH_WINDOW,
                percent: DEFAULT_PREFETCH_PERCENT,
            };
            for a in &args[1..] {
                if let Some(pct) = a.strip_suffix('%') {
                    let n: u8 = pct
                        .parse()
                        .map_err(|_| d.err(format_args!("prefetch: invalid percentage '{a}'")))?;
                    if !(10..=90).contains(&n) {
                        return Err(d.err(format_args!(
                            "prefetch: percentage {n}% is outside [10%, 90%]"
                        )));
                    }
                    p.percent = n;
                } else {
                    p.window = crate::dispenser::parse_duration(a)
                        .filter(|w| !w.is_zero())
                        .ok_or_else(|| d.err(format_args!("prefetch: invalid duration '{a}'")))?;
                }
            }
            cfg.prefetch = Some(p);
        }
        "serve_stale" => {
            let args = d.remaining_args();
            let mut s = cfg.stale.unwrap_or(Stale {
                duration: DEFAULT_STALE,
                mode: StaleMode::Immediate,
                response_ttl: DEFAULT_STALE_TTL,
                failure_recheck: DEFAULT_FAILURE_RECHECK,
                prefer_positive: false,
            });
            let mut it = args.iter();
            let mut next = it.next();
            if let Some(a) = next
                && a != "immediate"
                && a != "verify"
            {
                s.duration = dur(d, "serve_stale", a)?;
                next = it.next();
            }
            let rest: Vec<&String> = it.collect();
            match next.map(String::as_str) {
                None => {}
                Some("immediate") => {
                    if rest.len() > 2 {
                        return Err(d.arg_err());
                    }
                    if let Some(t) = rest.first() {
                        s.response_ttl = response_ttl(d, t)?;
                    }
                    if let Some(t) = rest.get(1) {
                        s.failure_recheck = dur(d, "serve_stale", t)?;
                    }
                }
                Some("verify") => {
                    if rest.len() > 3 {
                        return Err(d.arg_err());
                    }
                    let mut timeout = DEFAULT_VERIFY_TIMEOUT;
                    if let Some(t) = rest.first() {
                        timeout = dur(d, "serve_stale", t)?;
                        if timeout.is_zero() {
                            return Err(d.err("serve_stale: verify timeout must be above 0"));
                        }
                    }
                    if let Some(t) = rest.get(1) {
                        s.response_ttl = response_ttl(d, t)?;
                    }
                    if let Some(t) = rest.get(2) {
                        s.failure_recheck = dur(d, "serve_stale", t)?;
                    }
                    s.mode = StaleMode::Verify(timeout);
                }
                Some(other) => {
                    return Err(d.err(format_args!(
                        "serve_stale: invalid refresh mode '{other}' (immediate or verify)"
                    )));
                }
            }
            cfg.stale = Some(s);
        }
        "serve_stale_policy" => {
            let p = d.arg("policy")?;
            if p != "prefer_positive" {
                return Err(d.err(format_args!("serve_stale_policy: unknown policy '{p}'")));
            }
            d.no_more_args()?;
            match &mut cfg.stale {
                Some(s) => s.prefer_positive = true,
                None => {
                    return Err(
                        d.err("serve_stale_policy needs serve_stale (write serve_stale first)")
                    );
                }
            }
        }
        "servfail" => {
            d.arg("DURATION")?;
            let t = d.duration()?;
            d.no_more_args()?;
            if t > MAX_SERVFAIL {
                return Err(
                    d.err("servfail: caching SERVFAIL responses over 5 minutes is not permitted")
                );
            }
            cfg.servfail = t;
        }
        "disable" => {
            let what = d.arg("success|denial")?.to_string();
            let mut zs: Vec<String> = Vec::new();
            for z in d.remaining_args() {
                zs.push(
                    zones::normalize(&z)
                        .ok_or_else(|| d.err(format_args!("disable: invalid zone '{z}'")))?,
                );
            }
            if zs.is_empty() {
                zs = cfg.zones.clone();
            }
            match what.as_str() {
                "success" => cfg.success.disabled.extend(zs),
                "denial" => cfg.denial.disabled.extend(zs),
                other => {
                    return Err(d.err(format_args!(
                        "disable: unknown type '{other}' (success or denial)"
                    )));
                }
            }
        }
        "keepttl" => {
            d.no_more_args()?;
            cfg.keepttl = true;
        }
        "max_bytes" => {
            let v = d.arg("SIZE")?;
            cfg.max_bytes =
                size(v).ok_or_else(|| d.err(format_args!("max_bytes: invalid size '{v}'")))?;
            d.no_more_args()?;
        }
        _ => return Err(d.unsupported()),
    }
    Ok(())
}

/// A TTL in whole seconds, at most [`MAX_TTL_SECS`].
fn secs(d: &Dispenser<'_>, what: &str, v: &str) -> Result<Duration, SetupError> {
    let n = v
        .parse::<u64>()
        .map_err(|_| d.err(format_args!("{what}: invalid TTL '{v}'")))?;
    if n > MAX_TTL_SECS {
        return Err(d.err(format_args!(
            "{what}: TTL {n} is too large (at most {MAX_TTL_SECS})"
        )));
    }
    Ok(Duration::from_secs(n))
}

/// serve_stale's RESPONSE_TTL: a duration that is a valid TTL.
fn response_ttl(d: &Dispenser<'_>, v: &str) -> Result<Duration, SetupError> {
    let t = dur(d, "serve_stale", v)?;
    if t.as_secs() > MAX_TTL_SECS {
        return Err(d.err(format_args!(
            "serve_stale: response TTL '{v}' is too large (at most {MAX_TTL_SECS}s)"
        )));
    }
    Ok(t)
}

fn dur(d: &Dispenser<'_>, what: &str, v: &str) -> Result<Duration, SetupError> {
    crate::dispenser::parse_duration(v)
        .ok_or_else(|| d.err(format_args!("{what}: invalid duration '{v}'")))
}

/// `4096`, `512k`, `64M`, `1G` (powers of 1024).
fn size(v: &str) -> Option<usize> {
    let (num, mult) = match v.as_bytes().last()? {
        b'k' | b'K' => (&v[..v.len() - 1], 1usize << 10),
        b'm' | b'M' => (&v[..v.len() - 1], 1 << 20),
        b'g' | b'G' => (&v[..v.len() - 1], 1 << 30),
        _ => (v, 1),
    };
    let n: usize = num.parse().ok()?;
    n.checked_mul(mult).filter(|b| *b > 0)
}
