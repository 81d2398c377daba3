//! The gRPC half of the admin plane (tonic): `nodedns.admin.v1.Admin`
//! (`admin/proto/nodedns/admin/v1/admin.proto`) with the REST operations
//! plus the server-streaming `WatchStats`, and server reflection in both
//! its `v1` and `v1alpha` versions (grpcurl 1.8 asks `v1alpha`), so
//! `grpcurl -plaintext HOST:PORT list` works without the proto.
//!
//! Errors map as REST's do: invalid Corefile or request →
//! `INVALID_ARGUMENT` (with the line in the `nodedns-error-line`
//! metadata), stale `if_match` → `FAILED_PRECONDITION`, agent busy →
//! `UNAVAILABLE`, a message over the body cap → `OUT_OF_RANGE` (tonic's
//! code for it), too many `WatchStats` streams → `RESOURCE_EXHAUSTED`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tonic::codegen::tokio_stream::Stream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status};

use crate::rest::check_cache_target;
use crate::serve::stopped;
use crate::{ApplyError, BadRequest, CacheEntry, CacheStats, Control, QueryStats, Stats, Upstream};

/// The code generated from `admin.proto` (messages, server and client).
#[allow(
    missing_docs,
    unreachable_pub,
    unused_qualifications,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("nodedns.admin.v1");

    /// The encoded `FileDescriptorSet` of `admin.proto`, as reflection
    /// serves it.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));
}

/// The gRPC service name, as reflection lists it.
pub const SERVICE_NAME: &str = "nodedns.admin.v1.Admin";

/// Metadata key that carries the Corefile line of an invalid config.
pub const LINE_METADATA: &str = "nodedns-error-line";

/// `WatchStats` interval when the request leaves it at 0.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest `WatchStats` interval: faster polling is load, not insight.
pub const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Longest `WatchStats` interval.
pub const MAX_WATCH_INTERVAL: Duration = Duration::from_secs(3600);

/// The gRPC routes (Admin and both reflection versions) as an axum
/// router, to merge with the REST one on the same port.
pub(crate) fn routes(
    control: Arc<dyn Control>,
    max_message: usize,
    max_watchers: usize,
    stop: watch::Receiver<bool>,
) -> axum::Router {
    let admin = pb::admin_server::AdminServer::new(AdminService {
        control,
        watchers: Arc::new(Semaphore::new(max_watchers)),
        max_watchers,
        stop,
    })
    .max_decoding_message_size(max_message);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
    };
    let v1 = reflection()
        .build_v1()
        .expect("invariant: admin.proto's descriptor set is valid (tests check it)")
        .max_decoding_message_size(max_message);
    let v1alpha = reflection()
        .build_v1alpha()
        .expect("invariant: admin.proto's descriptor set is valid (tests check it)")
        .max_decoding_message_size(max_message);
    tonic::service::Routes::new(admin)
        .add_service(v1)
        .add_service(v1alpha)
        .into_axum_router()
}

/// `nodedns.admin.v1.Admin` over a [`Control`].
struct AdminService {
    control: Arc<dyn Control>,
    /// Bounds the `WatchStats` streams open at once.
    watchers: Arc<Semaphore>,
    max_watchers: usize,
    /// Turns `true` when the admin plane stops: streams end.
    stop: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn get_config(
        &self,
        _: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::Config>, Status> {
        let view = self.control.config();
        Ok(Response::new(pb::Config {
            corefile: view.corefile,
            version: view.version,
        }))
    }

    async fn apply_config(
        &self,
        request: Request<pb::ApplyConfigRequest>,
    ) -> Result<Response<pb::ApplyConfigResponse>, Status> {
        let r = request.into_inner();
        let control = self.control.clone();
        // As in REST: an apply that has begun finishes even if the client
        // goes away.
        let applied =
            tokio::spawn(async move { control.apply(r.corefile, r.dry_run, r.if_match).await })
                .await
                .map_err(|_| {
                    Status::internal(
                        "admin: applying the Corefile failed unexpectedly; the agent log says why",
                    )
                })?
                .map_err(apply_status)?;
        Ok(Response::new(pb::ApplyConfigResponse {
            version: applied.version,
            persisted: applied.persisted,
        }))
    }

    async fn get_stats(
        &self,
        _: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::Stats>, Status> {
        Ok(Response::new(self.control.stats().into()))
    }

    type WatchStatsStream = WatchStream;

    async fn watch_stats(
        &self,
        request: Request<pb::WatchStatsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let every = watch_interval(request.get_ref().interval_ms)?;
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "admin: {} WatchStats streams are open, the most allowed; close one",
                self.max_watchers
            ))
        })?;
        // One message in flight: a slow reader makes the task wait and
        // ticks are skipped, never queued.
        let (tx, rx) = mpsc::channel(1);
        let control = self.control.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    // The client went away: the stream was dropped.
                    () = tx.closed() => break,
                    () = stopped(&mut stop) => break,
                    _ = tick.tick() => {
                        let stats: pb::Stats = control.stats().into();
                        tokio::select! {
                            sent = tx.send(stats) => if sent.is_err() { break },
                            () = stopped(&mut stop) => break,
                        }
                    }
                }
            }
        });
        Ok(Response::new(WatchStream {
            rx,
            _permit: permit,
        }))
    }

    async fn list_cache(
        &self,
        request: Request<pb::ListCacheRequest>,
    ) -> Result<Response<pb::ListCacheResponse>, Status> {
        let r = request.into_inner();
        let (name, rtype) = (r.name.as_deref(), r.r#type.as_deref());
        check_cache_target(name, rtype).map_err(bad_request)?;
        let entries = self
            .control
            .cache_entries(name, rtype)
            .map_err(bad_request)?;
        Ok(Response::new(pb::ListCacheResponse {
            entries: entries.into_iter().map(Into::into).collect(),
        }))
    }

    async fn purge_cache(
        &self,
        request: Request<pb::PurgeCacheRequest>,
    ) -> Result<Response<pb::PurgeCacheResponse>, Status> {
        let r = request.into_inner();
        let (name, rtype) = (r.name.as_deref(), r.r#type.as_deref());
        check_cache_target(name, rtype).map_err(bad_request)?;
        let removed = self.control.cache_purge(name, rtype).map_err(bad_request)?;
        Ok(Response::new(pb::PurgeCacheResponse { removed }))
    }

    async fn list_upstreams(
        &self,
        _: Request<pb::ListUpstreamsRequest>,
    ) -> Result<Response<pb::ListUpstreamsResponse>, Status> {
        Ok(Response::new(pb::ListUpstreamsResponse {
            upstreams: self
                .control
                .upstreams()
                .into_iter()
                .map(Into::into)
                .collect(),
        }))
    }

    async fn list_plugins(
        &self,
        _: Request<pb::ListPluginsRequest>,
    ) -> Result<Response<pb::ListPluginsResponse>, Status> {
        Ok(Response::new(pb::ListPluginsResponse {
            plugins: self.control.plugins(),
        }))
    }

    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::AgentStatus>, Status> {
        let not_ready = self.control.not_ready();
        Ok(Response::new(pb::AgentStatus {
            healthy: self.control.healthy(),
            ready: not_ready.is_empty(),
            not_ready,
        }))
    }
}

/// The `WatchStats` response stream. Dropping it (the client went away)
/// ends the task that feeds it and frees its watcher slot.
pub struct WatchStream {
    rx: mpsc::Receiver<pb::Stats>,
    _permit: OwnedSemaphorePermit,
}

impl Stream for WatchStream {
    type Item = Result<pb::Stats, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|m| m.map(Ok))
    }
}

fn watch_interval(ms: u32) -> Result<Duration, Status> {
    if ms == 0 {
        return Ok(DEFAULT_WATCH_INTERVAL);
    }
    let every = Duration::from_millis(ms.into());
    if !(MIN_WATCH_INTERVAL..=MAX_WATCH_INTERVAL).contains(&every) {
        return Err(Status::invalid_argument(format!(
            "admin: interval_ms {ms} is outside {}..={} (0 means {})",
            MIN_WATCH_INTERVAL.as_millis(),
            MAX_WATCH_INTERVAL.as_millis(),
            DEFAULT_WATCH_INTERVAL.as_millis()
        )));
    }
    Ok(every)
}

fn bad_request(e: BadRequest) -> Status {
    Status::invalid_argument(e.0)
}

/// [`ApplyError`] as a gRPC status (the inverse is [`status_apply_error`]).
fn apply_status(e: ApplyError) -> Status {
    match e {
        ApplyError::Invalid { message, line } => {
            let mut metadata = MetadataMap::new();
            if let Some(line) = line {
                metadata.insert(LINE_METADATA, MetadataValue::from(line));
            }
            Status::with_metadata(Code::InvalidArgument, message, metadata)
        }
        e @ ApplyError::VersionMismatch { .. } => Status::failed_precondition(e.to_string()),
        ApplyError::Unavailable(m) => Status::unavailable(m),
    }
}

/// The Corefile line a status carries in [`LINE_METADATA`], if any.
pub fn status_line(status: &Status) -> Option<u32> {
    status
        .metadata()
        .get(LINE_METADATA)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

// === conversions between the Control types and the messages ===

impl From<Stats> for pb::Stats {
    fn from(s: Stats) -> Self {
        Self {
            queries: Some(pb::QueryStats {
                total: s.queries.total,
                by_rcode: s.queries.by_rcode.into_iter().collect(),
                by_type: s.queries.by_type.into_iter().collect(),
            }),
            cache: Some(pb::CacheStats {
                hits: s.cache.hits,
                misses: s.cache.misses,
                prefetches: s.cache.prefetches,
                stale: s.cache.stale,
                entries: s.cache.entries,
            }),
            upstreams: s.upstreams.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::Stats> for Stats {
    fn from(s: pb::Stats) -> Self {
        let q = s.queries.unwrap_or_default();
        let c = s.cache.unwrap_or_default();
        Self {
            queries: QueryStats {
                total: q.total,
                by_rcode: q.by_rcode.into_iter().collect(),
                by_type: q.by_type.into_iter().collect(),
            },
            cache: CacheStats {
                hits: c.hits,
                misses: c.misses,
                prefetches: c.prefetches,
                stale: c.stale,
                entries: c.entries,
            },
            upstreams: s.upstreams.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<Upstream> for pb::Upstream {
    fn from(u: Upstream) -> Self {
        Self {
            address: u.address,
            healthy: u.healthy,
            fails: u.fails,
            rtt_ms: u.rtt_ms,
            pooled: u.pooled,
        }
    }
}

impl From<pb::Upstream> for Upstream {
    fn from(u: pb::Upstream) -> Self {
        Self {
            address: u.address,
            healthy: u.healthy,
            fails: u.fails,
            rtt_ms: u.rtt_ms,
            pooled: u.pooled,
        }
    }
}

impl From<CacheEntry> for pb::CacheEntry {
    fn from(e: CacheEntry) -> Self {
        Self {
            name: e.name,
            r#type: e.rtype,
            ttl: e.ttl,
            stale: e.stale,
        }
    }
}

impl From<pb::CacheEntry> for CacheEntry {
    fn from(e: pb::CacheEntry) -> Self {
        Self {
            name: e.name,
            rtype: e.r#type,
            ttl: e.ttl,
            stale: e.stale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `routes` relies on this to `expect` the reflection builders.
    #[test]
    fn descriptor_set_builds_both_reflection_versions() {
        let builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        };
        assert!(builder().build_v1().is_ok());
        assert!(builder().build_v1alpha().is_ok());
    }

    #[test]
    fn intervals() {
        assert_eq!(watch_interval(0).unwrap(), DEFAULT_WATCH_INTERVAL);
        assert_eq!(watch_interval(100).unwrap(), MIN_WATCH_INTERVAL);
        assert_eq!(watch_interval(3_600_000).unwrap(), MAX_WATCH_INTERVAL);
        assert_eq!(
            watch_interval(99).unwrap_err().code(),
            Code::InvalidArgument
        );
        assert_eq!(
            watch_interval(3_600_001).unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn apply_errors_map_to_codes() {
        let s = apply_status(ApplyError::Invalid {
            message: "Corefile:2: cache: bad".into(),
            line: Some(2),
        });
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "Corefile:2: cache: bad");
        assert_eq!(status_line(&s), Some(2));
        let s = apply_status(ApplyError::VersionMismatch {
            expected: 1,
            running: 2,
        });
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(status_line(&s), None);
        let s = apply_status(ApplyError::Unavailable("stopping".into()));
        assert_eq!(s.code(), Code::Unavailable);
    }

    #[test]
    fn stats_round_trip() {
        let mut stats = Stats::default();
        stats.queries.total = 7;
        stats.queries.by_rcode.insert("NOERROR".into(), 7);
        stats.cache.hits = 3;
        stats.upstreams.push(Upstream {
            address: "192.0.2.1:53".into(),
            healthy: true,
            fails: 1,
            rtt_ms: 0.5,
            pooled: 2,
        });
        let back: Stats = pb::Stats::from(stats.clone()).into();
        assert_eq!(back, stats);
    }
}
