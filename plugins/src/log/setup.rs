//! `log [NAMES...] [FORMAT] { class CLASSES... ; minDuration [DURATION] }`,
//! parsed as CoreDNS's `logParse`: with two or more arguments, the last is
//! the FORMAT when it holds a `{`; every NAME gets a rule of its own with the
//! same format and block settings. The directive may repeat.

use std::time::Duration;

use crate::dispenser::{Dispenser, SetupError};
use crate::request::name_to_wire;
use crate::setup::Controller;

use super::format::{COMBINED, COMMON, Format, Label};
use super::{Classes, Log, Output, Rule, stdout};

/// `minDuration` with no argument (CoreDNS's `DefaultMinDuration`).
pub(crate) const DEFAULT_MIN_DURATION: Duration = Duration::from_millis(100);

/// The parsed directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogConfig {
    /// In Corefile order; the first that covers a name decides.
    pub(crate) rules: Vec<RuleConfig>,
}

/// One rule as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleConfig {
    /// The NAME, fully qualified (`example.org.`).
    pub(crate) name: String,
    /// The name in lower-cased wire form.
    pub(crate) zone: Vec<u8>,
    /// The format, `{common}` and `{combined}` expanded.
    pub(crate) format: String,
    /// Classes to log; `all` when none was given.
    pub(crate) classes: Classes,
    /// Zero when not set.
    pub(crate) min_duration: Duration,
}

/// Parses `log` and adds the handler.
pub fn setup(c: &mut Controller<'_>) -> Result<(), SetupError> {
    let config = parse(&mut c.d)?;
    c.add_plugin(Box::new(config.build(stdout())));
    Ok(())
}

impl LogConfig {
    /// The handler, writing lines to `out`.
    pub(crate) fn build(&self, out: Output) -> Log {
        let rules = self
            .rules
            .iter()
            .map(|r| Rule {
                zone: r.zone.clone(),
                format: Format::parse(&r.format),
                classes: r.classes,
                min_duration: r.min_duration,
            })
            .collect();
        Log { rules, out }
    }
}

/// Reads every `log` line of the block.
pub(crate) fn parse(d: &mut Dispenser<'_>) -> Result<LogConfig, SetupError> {
    let mut rules = Vec::new();
    while d.next() {
        let mut args = d.remaining_args();
        let mut format = COMMON.to_string();
        if args.len() >= 2
            && let Some(last) = args.pop_if(|a| a.contains('{'))
        {
            format = match last.as_str() {
                "{common}" => COMMON.to_string(),
                "{combined}" => COMBINED.to_string(),
                _ => last,
            };
        }
        if Format::parse(&format).uses(Label::Local) {
            return Err(d.err(
                "placeholder {local} not supported: plugins are not told the server's own address",
            ));
        }
        if args.is_empty() {
            args.push(".".to_string());
        }
        let mut names = Vec::with_capacity(args.len());
        for a in args {
            if a.contains(['{', '}']) {
                // CoreDNS takes a lone `log {combined}` as a NAME and then
                // logs nothing at all; say so instead.
                return Err(d.err(format_args!(
                    "'{a}' is not a name; a FORMAT comes after at least one NAME, as in 'log . {a}'"
                )));
            }
            let zone = name_to_wire(&a).ok_or_else(|| d.err(format_args!("invalid name '{a}'")))?;
            let name = if a.ends_with('.') { a } else { format!("{a}.") };
            names.push((name, zone));
        }
        let mut classes = Classes::default();
        let mut min_duration = Duration::ZERO;
        while d.next_block() {
            match d.val() {
                "class" => {
                    let list = d.remaining_args();
                    if list.is_empty() {
                        return Err(d.arg_err());
                    }
                    for cl in &list {
                        classes.insert(class_from_str(cl).ok_or_else(|| {
                            d.err(format_args!(
                                "invalid class '{cl}': want all, success, denial or error"
                            ))
                        })?);
                    }
                }
                "minDuration" => {
                    min_duration = match d.remaining_args().len() {
                        0 => DEFAULT_MIN_DURATION,
                        1 => d.duration()?,
                        _ => return Err(d.arg_err()),
                    };
                }
                _ => return Err(d.unsupported()),
            }
        }
        if classes.is_empty() {
            classes = Classes::ALL;
        }
        for (name, zone) in names {
            rules.push(RuleConfig {
                name,
                zone,
                format: format.clone(),
                classes,
                min_duration,
            });
        }
    }
    Ok(LogConfig { rules })
}

/// CoreDNS's `response.ClassFromString`.
fn class_from_str(s: &str) -> Option<Classes> {
    Some(match s {
        "all" => Classes::ALL,
        "success" => Classes::SUCCESS,
        "denial" => Classes::DENIAL,
        "error" => Classes::ERROR,
        _ => return None,
    })
}
