//! The reference's metrics: names, labels, and when they are recorded.

use std::sync::Arc;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use omnirelay_replication::{
    Encoding, ErrorKind, MemoryReplicator, MemoryReplicatorOptions, MemorySink, Record,
    ReplicatorExt, ShardedReplicator, Sink, SinkError, SinkExt, Timestamp,
};
use omnirelay_resourcelease::telemetry::{self, LagRecording};
use omnirelay_resourcelease::{
    ResourceLeaseCodec, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType,
};

/// Every series of `name`: its labels (sorted) and value.
fn series(snapshotter: &Snapshotter, name: &str) -> Vec<(Vec<String>, DebugValue)> {
    let mut out: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == name)
        .map(|(key, _, _, value)| {
            let mut labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            (labels, value)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn event(
    kind: ResourceLeaseReplicationEventType,
    peer: Option<&str>,
) -> ResourceLeaseReplicationEvent {
    let mut event = ResourceLeaseReplicationEvent::new(kind);
    event.peer_id = peer.map(str::to_owned);
    event
}

/// Stamps events two seconds ago.
fn two_seconds_ago() -> Timestamp {
    Timestamp::from_unix_millis(Timestamp::now().unix_millis() - 2_000).unwrap()
}

/// Stamps events an hour ahead (a skewed clock).
fn an_hour_ahead() -> Timestamp {
    Timestamp::from_unix_millis(Timestamp::now().unix_millis() + 3_600_000).unwrap()
}

/// Fails every apply.
struct Down;

impl Sink for Down {
    async fn apply(&self, _batch: &[Record<'_>]) -> Result<(), SinkError> {
        Err(SinkError::new(ErrorKind::Unavailable, "down"))
    }
}

#[test]
fn the_events_counter_has_the_reference_labels_and_shard_id() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        telemetry::record_published(&event(
            ResourceLeaseReplicationEventType::Enqueue,
            Some("peer-a"),
        ));
        telemetry::record_published(&event(
            ResourceLeaseReplicationEventType::Enqueue,
            Some("peer-a"),
        ));
        // A blank peer carries no rpc_peer label.
        telemetry::record_published(&event(
            ResourceLeaseReplicationEventType::LeaseGranted,
            Some("  "),
        ));
        let mut sharded = event(ResourceLeaseReplicationEventType::Completed, None);
        sharded
            .metadata
            .insert("shard.id".to_owned(), "users".to_owned());
        telemetry::record_published(&sharded);
    });
    assert_eq!(
        series(&snapshotter, telemetry::REPLICATION_EVENTS),
        [
            (
                vec![
                    "lease_event_type=Completed".to_owned(),
                    "shard_id=users".to_owned()
                ],
                DebugValue::Counter(1)
            ),
            (
                vec![
                    "lease_event_type=Enqueue".to_owned(),
                    "rpc_peer=peer-a".to_owned()
                ],
                DebugValue::Counter(2)
            ),
            (
                vec!["lease_event_type=LeaseGranted".to_owned()],
                DebugValue::Counter(1)
            ),
        ]
    );
}

#[tokio::test]
async fn lag_is_recorded_after_a_successful_apply_and_never_negative() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let past = MemoryReplicator::new(
        Arc::new(ResourceLeaseCodec),
        MemoryReplicatorOptions {
            clock: two_seconds_ago,
            ..Default::default()
        },
    );
    let future = MemoryReplicator::new(
        Arc::new(ResourceLeaseCodec),
        MemoryReplicatorOptions {
            clock: an_hour_ahead,
            ..Default::default()
        },
    );
    // Handles are taken as events arrive, so everything runs under the
    // recorder; the replicators deliver inline on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);
    past.register_sink(
        "ok",
        LagRecording::new(MemorySink::new()).shared(),
        Encoding::JSON_V1,
    )
    .unwrap();
    past.register_sink("down", LagRecording::new(Down).shared(), Encoding::JSON_V1)
        .unwrap();
    future
        .register_sink(
            "ok",
            LagRecording::new(MemorySink::new()).shared(),
            Encoding::JSON_V1,
        )
        .unwrap();
    let _ = past
        .publish(event(
            ResourceLeaseReplicationEventType::Heartbeat,
            Some("peer-a"),
        ))
        .await;
    let sharded = ShardedReplicator::new(past, "users").unwrap();
    let _ = sharded
        .publish(event(ResourceLeaseReplicationEventType::Heartbeat, None))
        .await;
    let _ = future
        .publish(event(
            ResourceLeaseReplicationEventType::Heartbeat,
            Some("peer-b"),
        ))
        .await;
    let lags = series(&snapshotter, telemetry::REPLICATION_LAG_MS);
    let labels: Vec<_> = lags.iter().map(|(labels, _)| labels.clone()).collect();
    assert_eq!(
        labels,
        [
            vec![
                "lease_event_type=Heartbeat".to_owned(),
                "rpc_peer=peer-a".to_owned()
            ],
            vec![
                "lease_event_type=Heartbeat".to_owned(),
                "shard_id=users".to_owned()
            ],
        ],
        "the failing sink and the clock ahead record nothing"
    );
    for (labels, value) in lags {
        let DebugValue::Histogram(samples) = value else {
            panic!("{labels:?} is not a histogram");
        };
        assert_eq!(
            samples.len(),
            1,
            "{labels:?}: one sample, from the sink that applied it"
        );
        let ms = samples[0].into_inner();
        assert!((2_000.0..60_000.0).contains(&ms), "{labels:?}: lag {ms} ms");
    }
}
