//! *minimal* trims positive answers to what the client asked for: a
//! NOERROR reply with an answer keeps its answer section and loses its
//! authority and additional sections. The OPT record (EDNS0) stays, as
//! it does in CoreDNS's *minimal*. Referrals, negative answers, errors and
//! zone transfers pass unchanged.

mod setup;
#[cfg(test)]
mod tests;

pub use setup::setup;

use crate::pkg::response::editable_noerror;
use crate::pkg::response::{Type, typify};
use crate::plugin::{Context, Flow, Plugin};

/// The minimal handler.
#[derive(Debug, Default)]
pub struct Minimal;

impl Plugin for Minimal {
    fn name(&self) -> &'static str {
        "minimal"
    }

    fn query(&self, _cx: &mut Context<'_>) -> Flow {
        Flow::Next
    }

    fn response(&self, cx: &mut Context<'_>) {
        let Some(m) = editable_noerror(cx) else {
            return;
        };
        if m.authorities.is_empty() && m.additionals.is_empty() {
            return;
        }
        if typify(m) == Type::NoError {
            m.authorities.clear();
            m.additionals.clear();
        }
    }
}
