//! `errors [stdout] { consolidate DURATION REGEXP [LEVEL] [show_first] }`,
//! parsed as CoreDNS's `errorsParse`. Once per server block. `stacktrace`
//! (a Go panic-recovery knob) is refused.

use std::time::Duration;

use regex::Regex;

use crate::dispenser::{Dispenser, SetupError, parse_duration};
use crate::setup::Controller;

use super::consolidate::Pattern;
use super::{Errors, Level, Output, stdout};

/// The longest REGEXP CoreDNS accepts in `consolidate`.
pub(crate) const MAX_REGEXP_LEN: usize = 10_000;
/// How many `consolidate` lines a block may have (each has a task).
pub(crate) const MAX_PATTERNS: usize = 256;

/// The parsed directive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ErrorsConfig {
    /// `consolidate` lines, in order.
    pub(crate) patterns: Vec<PatternConfig>,
}

/// One `consolidate` line.
#[derive(Debug, Clone)]
pub(crate) struct PatternConfig {
    pub(crate) period: Duration,
    pub(crate) regex: Regex,
    pub(crate) level: Level,
    pub(crate) show_first: bool,
}

impl PartialEq for PatternConfig {
    fn eq(&self, other: &Self) -> bool {
        self.period == other.period
            && self.regex.as_str() == other.regex.as_str()
            && self.level == other.level
            && self.show_first == other.show_first
    }
}

impl Eq for PatternConfig {}

/// Parses `errors`, adds the handler, and hands its flush tasks (one per
/// `consolidate` line) to the server to run while this config serves.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let config = parse(&mut c.d)?;
    let errors = config.build(stdout());
    for task in errors.tasks() {
        c.spawn_on_start(task);
    }
    c.add_plugin(Box::new(errors));
    Ok(())
}

impl ErrorsConfig {
    /// The handler, writing lines to `out`. Starts nothing.
    pub(crate) fn build(&self, out: Output) -> Errors {
        let patterns = self
            .patterns
            .iter()
            .map(|p| Pattern::new(p.regex.clone(), p.period, p.level, p.show_first))
            .collect();
        Errors::new(patterns, out)
    }
}

/// Reads the `errors` directive of a block.
pub(crate) fn parse(d: &mut Dispenser<'_>) -> Result<ErrorsConfig, SetupError> {
    let mut config = ErrorsConfig::default();
    let mut seen = false;
    while d.next() {
        if seen {
            return Err(d.err("this plugin can only be used once per Server Block"));
        }
        seen = true;
        let args = d.remaining_args();
        match args.as_slice() {
            [] => {}
            [out] if out == "stdout" => {}
            [out] => {
                return Err(d.err(format_args!(
                    "invalid log file '{out}': errors are printed to stdout only"
                )));
            }
            _ => return Err(d.arg_err()),
        }
        while d.next_block() {
            match d.val() {
                "consolidate" => {
                    if config.patterns.len() == MAX_PATTERNS {
                        return Err(d.err(format_args!(
                            "too many consolidate lines (at most {MAX_PATTERNS})"
                        )));
                    }
                    config.patterns.push(parse_consolidate(d)?);
                }
                _ => return Err(d.unsupported()),
            }
        }
    }
    Ok(config)
}

/// `consolidate DURATION REGEXP [LEVEL] [show_first]`.
fn parse_consolidate(d: &mut Dispenser<'_>) -> Result<PatternConfig, SetupError> {
    let args = d.remaining_args();
    let (period, re, rest) = match args.as_slice() {
        [period, re, rest @ ..] if rest.len() <= 2 => (period, re, rest),
        _ => return Err(d.arg_err()),
    };
    let period =
        parse_duration(period).ok_or_else(|| d.err(format_args!("invalid duration '{period}'")))?;
    if re.chars().count() > MAX_REGEXP_LEN {
        return Err(d.err(format_args!(
            "REGEXP is longer than {MAX_REGEXP_LEN} characters"
        )));
    }
    let regex = Regex::new(re).map_err(|e| {
        // regex's syntax errors span lines (pattern, caret, reason): keep the reason.
        let e = e.to_string();
        let reason = e.lines().last().unwrap_or_default().trim();
        let reason = reason.strip_prefix("error: ").unwrap_or(reason);
        d.err(format_args!("invalid REGEXP '{re}': {reason}"))
    })?;
    let mut level = Level::Error;
    let mut show_first = false;
    match rest {
        [] => {}
        [flag] if flag == "show_first" => show_first = true,
        [lvl] => level = parse_level(d, lvl)?,
        [lvl, flag] => {
            level = parse_level(d, lvl)?;
            if flag != "show_first" {
                return Err(d.err(format_args!(
                    "unknown argument in consolidate: {flag} (want show_first)"
                )));
            }
            show_first = true;
        }
        _ => return Err(d.arg_err()),
    }
    Ok(PatternConfig {
        period,
        regex,
        level,
        show_first,
    })
}

fn parse_level(d: &Dispenser<'_>, s: &str) -> Result<Level, SetupError> {
    Ok(match s {
        "warning" => Level::Warning,
        "error" => Level::Error,
        "info" => Level::Info,
        "debug" => Level::Debug,
        _ => {
            return Err(d.err(format_args!(
                "unknown log level argument in consolidate: {s} (want warning, error, info or debug)"
            )));
        }
    })
}
