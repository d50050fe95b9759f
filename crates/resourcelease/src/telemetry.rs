//! The reference's metrics, under the Prometheus names its dashboard
//! queries (reference §4): `omnirelay.resourcelease.replication.events`
//! becomes `omnirelay_resourcelease_replication_events_total`, its tags
//! `lease.event_type`, `rpc.peer` and `shard.id` become the labels
//! `lease_event_type`, `rpc_peer` and `shard_id`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use omnirelay_replication::{Health, Record, Sink, SinkError, StreamId, Timestamp};

use crate::event::{ResourceLeaseReplicationEvent, SHARD_ID_KEY};

/// Counter: replication events emitted, by `lease_event_type`, `rpc_peer`
/// (when set) and `shard_id` (when set). The reference never set
/// `shard_id` on it (its bug 8); we do.
pub const REPLICATION_EVENTS: &str = "omnirelay_resourcelease_replication_events_total";
/// Histogram, milliseconds: from an event's timestamp to a sink applying
/// it, by the same labels (`shard_id` is the stream, for streams other than
/// `default`).
pub const REPLICATION_LAG_MS: &str = "omnirelay_resourcelease_replication_lag_ms";
/// Histogram, items: pending queue depth samples (the dispatcher).
pub const PENDING_ITEMS: &str = "omnirelay_resourcelease_pending_items";
/// Histogram, leases: active lease count samples (the dispatcher).
pub const ACTIVE_LEASES: &str = "omnirelay_resourcelease_active_leases";
/// Counter: backpressure transitions, by `state` (`active`, `inactive`)
/// (the dispatcher).
pub const BACKPRESSURE_TRANSITIONS: &str =
    "omnirelay_resourcelease_backpressure_transitions_events_total";

/// Buckets of [`REPLICATION_LAG_MS`].
pub const LAG_MS_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    30000.0, 60000.0,
];

/// Buckets of [`PENDING_ITEMS`], [`ACTIVE_LEASES`] and the dispatcher's
/// lease duration (ms): the OpenTelemetry SDK's default histogram
/// boundaries, which the reference's exporter used for them.
pub const REFERENCE_HISTOGRAM_BUCKETS: &[f64] = &[
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

/// Counts an event about to be published (the reference's counter,
/// incremented by the emitter before replication).
pub fn record_published(event: &ResourceLeaseReplicationEvent) {
    let mut labels = vec![("lease_event_type", event.event_type.name().to_owned())];
    if let Some(peer) = event.peer_id.as_deref().filter(|p| !p.trim().is_empty()) {
        labels.push(("rpc_peer", peer.to_owned()));
    }
    if let Some(shard) = event.metadata.get(SHARD_ID_KEY) {
        labels.push(("shard_id", shard.to_owned()));
    }
    metrics::counter!(REPLICATION_EVENTS, &labels).increment(1);
}

/// Describes the reference metrics to the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        REPLICATION_EVENTS,
        Unit::Count,
        "Replication events published by a ResourceLease dispatcher."
    );
    describe_histogram!(
        REPLICATION_LAG_MS,
        Unit::Milliseconds,
        "End-to-end replication lag between event creation and sink application."
    );
    describe_histogram!(
        PENDING_ITEMS,
        Unit::Count,
        "Observed pending queue depth samples."
    );
    describe_histogram!(
        ACTIVE_LEASES,
        Unit::Count,
        "Observed active lease count samples."
    );
    describe_counter!(
        BACKPRESSURE_TRANSITIONS,
        Unit::Count,
        "Backpressure state transitions for the resource lease queue."
    );
}

/// Wraps a sink to record [`REPLICATION_LAG_MS`] for every event it
/// applies, as the reference's checkpointing sink did (here after the
/// apply succeeded, so a failed attempt records nothing).
#[derive(Debug)]
pub struct LagRecording<S> {
    inner: S,
    histograms: Mutex<HashMap<SeriesKey, metrics::Histogram>>,
}

/// One lag series: event type code, peer, stream.
type SeriesKey = (i32, Option<Arc<str>>, StreamId);

impl<S: Sink> LagRecording<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            histograms: Mutex::new(HashMap::new()),
        }
    }

    fn record(&self, batch: &[Record<'_>]) {
        let now = Timestamp::now();
        let mut histograms = self
            .histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for record in batch {
            let header = record.header();
            if header.timestamp > now {
                // A clock ahead of ours: a negative lag, which the
                // reference skips too.
                continue;
            }
            let lag = now
                .saturating_duration_since(header.timestamp)
                .as_secs_f64()
                * 1000.0;
            let peer = header.peer.clone().filter(|p| !p.trim().is_empty());
            let key = (header.kind.code, peer, record.stream().clone());
            let histogram = histograms
                .entry(key)
                .or_insert_with_key(|(_, peer, stream)| {
                    let mut labels = vec![("lease_event_type", header.kind.name.to_owned())];
                    if let Some(peer) = peer {
                        labels.push(("rpc_peer", peer.to_string()));
                    }
                    if stream.as_str() != StreamId::DEFAULT {
                        labels.push(("shard_id", stream.as_str().to_owned()));
                    }
                    metrics::histogram!(REPLICATION_LAG_MS, &labels)
                });
            histogram.record(lag);
        }
    }
}

impl<S: Sink> Sink for LagRecording<S> {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        self.inner.apply(batch).await?;
        self.record(batch);
        Ok(())
    }

    async fn checkpoint(&self, stream: &StreamId) -> Result<Option<u64>, SinkError> {
        self.inner.checkpoint(stream).await
    }

    /// Not recorded: a redriven event is as late as the operator's fix,
    /// not a measure of replication.
    async fn fill_gaps(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        self.inner.fill_gaps(batch).await
    }

    fn health(&self) -> Health {
        self.inner.health()
    }

    async fn close(&self) -> Result<(), SinkError> {
        self.inner.close().await
    }
}
