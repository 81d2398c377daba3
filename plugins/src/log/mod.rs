//! *log* prints one line per query to standard output, in CoreDNS's formats,
//! after the reply is known: `[INFO] 127.0.0.1:40212 - 4242 "A IN
//! example.org. udp 29 false 512" NOERROR qr,aa,rd 68 0.000123s`.
//!
//! Rules are tried in Corefile order and the first whose NAME contains the
//! query's name decides (as CoreDNS's `Logger.ServeDNS`): it logs when its
//! classes match the reply, or when the query took longer than its
//! `minDuration`. The work happens in the response step; the query step only
//! passes the query on.

mod format;
mod setup;
#[cfg(test)]
mod tests;

pub use setup::setup;

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::Message;

use crate::pkg::response::{Type, typify};
use crate::plugin::{Context, Flow, Plugin, Reply};
use crate::request::is_subdomain;

use self::format::{Format, ReplyFacts, reply_facts};

/// Where log lines go: a function given each complete line (with its
/// `[INFO] ` prefix, without the newline). [`stdout`] by default; tests
/// capture lines instead.
pub type Output = Arc<dyn Fn(&str) + Send + Sync>;

/// Writes each line to standard output, as CoreDNS's `clog` does, through
/// the bounded queue of [`crate::pkg::output`]: a stalled reader drops
/// (and counts) lines instead of stalling queries.
pub fn stdout() -> Output {
    Arc::new(|line: &str| crate::pkg::output::stdout().line(line))
}

/// CoreDNS's level prefix for query lines (`clog.Infof`).
const PREFIX: &str = "[INFO] ";

/// The response classes a rule logs (CoreDNS's `response.Class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Classes(u8);

impl Classes {
    /// Every reply.
    pub(crate) const ALL: Self = Self(1);
    /// NOERROR answers and referrals.
    pub(crate) const SUCCESS: Self = Self(2);
    /// NXDOMAIN and NODATA.
    pub(crate) const DENIAL: Self = Self(4);
    /// Everything else, and queries that got no reply from the chain.
    pub(crate) const ERROR: Self = Self(8);

    /// Whether every class in `other` is in `self`.
    pub(crate) fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
    /// Adds `other`.
    pub(crate) fn insert(&mut self, other: Self) {
        self.0 |= other.0;
    }
    /// Whether nothing is set.
    pub(crate) fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// One rule: the names it covers and how it logs them.
#[derive(Debug)]
pub(crate) struct Rule {
    /// The NAME, lower-cased wire form.
    zone: Vec<u8>,
    format: Format,
    classes: Classes,
    /// Zero: off.
    min_duration: Duration,
}

/// The log handler.
pub struct Log {
    rules: Box<[Rule]>,
    out: Output,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("rules", &self.rules).finish()
    }
}

impl Plugin for Log {
    fn name(&self) -> &'static str {
        "log"
    }

    fn query(&self, _cx: &mut Context<'_>) -> Flow {
        Flow::Next
    }

    fn response(&self, cx: &mut Context<'_>) {
        let qname = cx.req.qname_lower();
        let Some(rule) = self.rules.iter().find(|r| is_subdomain(qname, &r.zone)) else {
            return;
        };
        let all = rule.classes.contains(Classes::ALL);
        let facts = if all && !rule.format.needs_reply() {
            None
        } else {
            finished(cx.reply)
        };
        let elapsed = cx.start.elapsed();
        let log = all
            || class_of(cx.reply, facts).is_some_and(|c| rule.classes.contains(c))
            || (!rule.min_duration.is_zero() && elapsed > rule.min_duration);
        if !log {
            return;
        }
        let mut line = String::with_capacity(160);
        line.push_str(PREFIX);
        rule.format.render(&mut line, cx.req, facts, elapsed);
        (self.out)(&line);
    }
}

/// Encodes the reply if needed and reads its rcode, flags and size. `None`
/// when nothing was written (a failure or a drop: CoreDNS then logs
/// `- - 0`).
fn finished(reply: &mut Reply) -> Option<ReplyFacts> {
    if !reply.is_written() {
        return None;
    }
    reply.finish().ok().map(reply_facts)
}

/// The class of the reply as CoreDNS's `response.Classify(Typify(msg))`:
/// no reply is an error; transfers, notifies and updates are in no class
/// but `all`.
fn class_of(reply: &Reply, facts: Option<ReplyFacts>) -> Option<Classes> {
    if facts.is_none() {
        return Some(Classes::ERROR);
    }
    let Ok(msg) = Message::from_vec(reply.wire()) else {
        return Some(Classes::ERROR);
    };
    match typify(&msg) {
        Type::NoError | Type::Delegation => Some(Classes::SUCCESS),
        Type::NameError | Type::NoData => Some(Classes::DENIAL),
        Type::OtherError => Some(Classes::ERROR),
        Type::Meta | Type::Update => None,
    }
}
