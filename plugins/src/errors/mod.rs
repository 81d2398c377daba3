//! *errors* prints the error a query failed with, as CoreDNS does:
//! `[ERROR] plugin/errors: 2 example.org. A: plugin/forward: no healthy upstream`
//! (rcode, name, type, error). `consolidate` batches errors that match a
//! regular expression into one line per period:
//! `[ERROR] plugin/errors: 3 errors like '^read udp' occurred in last 30s`.
//!
//! The work happens in the response step, for queries a later plugin failed
//! with an error (`Flow::Fail` with `Some(error)`); other queries cost one
//! branch. Consolidated counts are printed by a background task per
//! pattern (see `consolidate.rs`), which ends when the handler is dropped;
//! dropping it also prints what is pending, as CoreDNS does on shutdown.

mod consolidate;
mod setup;
#[cfg(test)]
mod tests;

pub use setup::setup;

use std::future::Future;
use std::sync::Arc;

use crate::pkg::names::write_type;
use crate::plugin::{Context, Flow, Plugin};
use crate::request::write_name;

use self::consolidate::{Pattern, flush_task};

/// Where lines go: a function given each complete line (with its level
/// prefix, without the newline). [`stdout`] by default; tests capture lines.
pub type Output = Arc<dyn Fn(&str) + Send + Sync>;

/// Writes each line to standard output, as CoreDNS's `clog` does, through
/// the bounded queue of [`crate::pkg::output`]: a stalled reader drops
/// (and counts) lines instead of stalling queries.
pub fn stdout() -> Output {
    Arc::new(|line: &str| crate::pkg::output::stdout().line(line))
}

/// CoreDNS's plugin prefix (`clog.NewWithPlugin("errors")`).
const PLUGIN_PREFIX: &str = "plugin/errors: ";

/// The level a line is printed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Printed only with CoreDNS's *debug* plugin, which nodedns does not
    /// have: such lines go to the `tracing` debug level instead.
    Debug,
    Info,
    Warning,
    Error,
}

impl Level {
    fn prefix(self) -> &'static str {
        match self {
            Self::Debug => "[DEBUG] ",
            Self::Info => "[INFO] ",
            Self::Warning => "[WARNING] ",
            Self::Error => "[ERROR] ",
        }
    }
}

/// The errors handler.
pub struct Errors {
    shared: Arc<Shared>,
}

/// What the handler and its flush tasks share.
pub(crate) struct Shared {
    /// In Corefile order; an error counts for the first that matches.
    patterns: Box<[Pattern]>,
    out: Output,
}

impl std::fmt::Debug for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Errors")
            .field("patterns", &self.shared.patterns)
            .finish()
    }
}

impl Errors {
    fn new(patterns: Vec<Pattern>, out: Output) -> Self {
        Self {
            shared: Arc::new(Shared {
                patterns: patterns.into_boxed_slice(),
                out,
            }),
        }
    }

    /// The background tasks that print consolidated counts, one per
    /// `consolidate` line. Each holds only a weak reference to the handler
    /// and ends when the handler is dropped.
    pub(crate) fn tasks(&self) -> Vec<impl Future<Output = ()> + Send + 'static + use<>> {
        self.shared
            .patterns
            .iter()
            .enumerate()
            .map(|(i, p)| flush_task(Arc::downgrade(&self.shared), i, p.wake(), p.period()))
            .collect()
    }
}

impl Shared {
    /// Prints `msg` at `level` with the plugin prefix.
    fn emit(&self, level: Level, msg: &str) {
        if level == Level::Debug {
            tracing::debug!(target: "nodedns_plugins::errors", "{msg}");
            return;
        }
        let prefix = level.prefix();
        let mut line = String::with_capacity(prefix.len() + PLUGIN_PREFIX.len() + msg.len());
        line.push_str(prefix);
        line.push_str(PLUGIN_PREFIX);
        line.push_str(msg);
        (self.out)(&line);
    }

    /// Prints pattern `i`'s count, if one is due, and resets it.
    pub(crate) fn flush(&self, i: usize) {
        if let Some(p) = self.patterns.get(i)
            && let Some(summary) = p.take_summary()
        {
            self.emit(p.level(), &summary);
        }
    }

    /// Stops counting and prints every pending count (CoreDNS's
    /// `errorHandler.stop`, run on shutdown); wakes the tasks so they end.
    fn stop(&self) {
        for p in &self.patterns {
            p.close();
        }
        for i in 0..self.patterns.len() {
            self.flush(i);
        }
        for p in &self.patterns {
            p.wake_task();
        }
    }
}

impl Drop for Errors {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl Plugin for Errors {
    fn name(&self) -> &'static str {
        "errors"
    }

    fn query(&self, _cx: &mut Context<'_>) -> Flow {
        Flow::Next
    }

    fn response(&self, cx: &mut Context<'_>) {
        let Some(err) = cx.reply.error() else {
            return;
        };
        let text = err.to_string();
        let mut level = Level::Error;
        for p in &self.shared.patterns {
            if p.matches(&text) {
                if p.consolidate() {
                    return;
                }
                // show_first: the first of a period prints in full, at the
                // pattern's level.
                level = p.level();
                break;
            }
        }
        let mut msg = String::with_capacity(64 + text.len());
        msg.push_str(&u16::from(cx.reply.rcode()).to_string());
        msg.push(' ');
        write_name(&mut msg, cx.req.qname_lower());
        msg.push(' ');
        write_type(&mut msg, cx.req.qtype());
        msg.push_str(": ");
        msg.push_str(&text);
        self.shared.emit(level, &msg);
    }
}
