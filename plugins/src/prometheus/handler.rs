//! The chain entry *prometheus* adds to its block: CoreDNS's metrics
//! handler. Its `query` step asks the driver to report how the query ends
//! (the driver calls [`Plugin::finished`] once the reply is final or the
//! query is dropped), so only blocks with *prometheus* count anything.

use std::sync::OnceLock;

use super::dns::{self, Sink};
use crate::plugin::{Context, End, Flow, Plugin};

/// A zone in lower-cased wire form, and its sink.
type ZoneSink = (Box<[u8]>, &'static Sink);

/// The block's metrics: a sink per zone of the block, resolved when the
/// chain is built.
pub struct Metrics {
    /// Each zone of the block.
    zones: Box<[ZoneSink]>,
    /// The `plugin` label index of each plugin in the chain, made on the
    /// first report (the chain is not complete while setup runs).
    plugins: OnceLock<Box<[u8]>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("zones", &self.zones.len())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics for a block called `server` (CoreDNS's server label) with
    /// these zones; also makes the server's sink for dropped queries.
    pub fn new(server: &str, zones: &[String]) -> Self {
        let mut list: Vec<ZoneSink> = zones
            .iter()
            .filter_map(|z| {
                let wire = crate::pkg::zones::to_wire(z)?;
                Some((wire.into_boxed_slice(), dns::sink(server, z)))
            })
            .collect();
        if list.is_empty() {
            list.push((Box::from(&[0u8][..]), dns::sink(server, ".")));
        }
        dns::dropped_sink(server);
        Self {
            zones: list.into_boxed_slice(),
            plugins: OnceLock::new(),
        }
    }

    /// The sink of the zone that routed the query (CoreDNS: the longest of
    /// the block's zones the name is in); the block's first zone if none
    /// is (it cannot happen: the router chose the block by that zone).
    #[inline]
    fn sink(&self, zone: &[u8]) -> &'static Sink {
        match &*self.zones {
            [(_, only)] => only,
            many => many
                .iter()
                .find(|(z, _)| **z == *zone)
                .or(many.first())
                .map_or_else(|| dns::sink("", "."), |(_, s)| *s),
        }
    }

    /// The `plugin` label index of the chain's plugin `at`.
    #[inline]
    fn plugin(&self, end: &End<'_>) -> usize {
        let Some(at) = end.by else { return 0 };
        let table = self.plugins.get_or_init(|| {
            end.chain
                .iter()
                .map(|p| u8::try_from(dns::plugin_index(p.name())).unwrap_or(0))
                .collect()
        });
        table.get(at).map_or(0, |i| usize::from(*i))
    }
}

impl Plugin for Metrics {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn query(&self, cx: &mut Context<'_>) -> Flow {
        cx.reply.report_to(cx.next.at);
        Flow::Next
    }

    fn finished(&self, cx: &mut Context<'_>, end: &End<'_>) {
        let sink = self.sink(cx.zone);
        sink.record(cx.req, end.rcode, self.plugin(end), end.size);
        // The duration ends when the reply is sent: the listener records
        // it then (once per batch of replies).
        cx.reply.defer_timing(sink, cx.start);
    }
}
