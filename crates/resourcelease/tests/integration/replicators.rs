//! The reference's replicator unit tests (reference §5), as behaviours of
//! our replicators carrying real resource-lease events.

use std::sync::Arc;

use omnirelay_replication::{
    CompositeReplicator, Encoding, MemoryReplicator, MemoryReplicatorOptions, MemorySink, Record,
    ReplicatorExt, ShardedReplicator, Sink, SinkError, SinkExt, StreamId,
};
use omnirelay_resourcelease::{
    ResourceLeaseCodec, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType, json,
};

fn replicator(starting_sequence: u64) -> MemoryReplicator<ResourceLeaseReplicationEvent> {
    MemoryReplicator::new(
        Arc::new(ResourceLeaseCodec),
        MemoryReplicatorOptions {
            starting_sequence,
            ..Default::default()
        },
    )
}

fn enqueue() -> ResourceLeaseReplicationEvent {
    ResourceLeaseReplicationEvent::new(ResourceLeaseReplicationEventType::Enqueue)
}

fn decoded(sink: &MemorySink) -> Vec<ResourceLeaseReplicationEvent> {
    sink.records()
        .iter()
        .map(|r| json::decode(r.bytes()).unwrap())
        .collect()
}

#[tokio::test]
async fn in_memory_replicator_sequences_and_delivers_events() {
    let r = replicator(0);
    let sink = MemorySink::new();
    r.register_sink("sink", sink.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    r.publish(enqueue()).await.unwrap();
    r.publish(enqueue()).await.unwrap();
    let sequences: Vec<_> = decoded(&sink).iter().map(|e| e.sequence_number).collect();
    assert_eq!(sequences, [1, 2]);
}

#[tokio::test]
async fn in_memory_replicator_ignores_provided_sequence_and_uses_starting_offset() {
    let r = replicator(10);
    let sink = MemorySink::new();
    r.register_sink("sink", sink.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    let mut event = enqueue();
    event.sequence_number = 42;
    r.publish(event).await.unwrap();
    assert_eq!(decoded(&sink)[0].sequence_number, 11);
    assert_eq!(sink.sequences(), [11]);
}

/// A sink that records every event it is asked to apply: not idempotent.
#[derive(Clone, Default)]
struct Recording(Arc<std::sync::Mutex<Vec<i64>>>);

impl Sink for Recording {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        let mut seen = self.0.lock().unwrap();
        seen.extend(
            batch
                .iter()
                .map(|r| json::decode(r.bytes()).unwrap().sequence_number),
        );
        Ok(())
    }
}

#[tokio::test]
async fn checkpointing_sink_deduplicates_sequences() {
    let inner = Recording::default();
    let sink = inner.clone().deduplicating();
    let r = replicator(0);
    // Build records of sequences 5, 5, 6 from real events.
    let scratch = MemorySink::new();
    r.register_sink("scratch", scratch.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    for _ in 0..6 {
        r.publish(enqueue()).await.unwrap();
    }
    let records = scratch.records();
    for seq in [5, 5, 6] {
        sink.apply_owned(std::slice::from_ref(&records[seq - 1]))
            .await
            .unwrap();
    }
    assert_eq!(*inner.0.lock().unwrap(), [5, 6]);
}

#[tokio::test]
async fn sharded_replicator_appends_shard_metadata() {
    let inner = replicator(0);
    let sink = MemorySink::new();
    inner
        .register_sink("sink", sink.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    let sharded = ShardedReplicator::new(inner, "users").unwrap();
    let mut event = enqueue();
    event.metadata.insert("shard.id", "someone-else");
    sharded.publish(event).await.unwrap();
    let events = decoded(&sink);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].metadata.get("shard.id"), Some("users"));
    assert_eq!(sink.records()[0].stream().as_str(), "users");
}

#[tokio::test]
async fn composite_replicator_fans_out() {
    let (left_sink, right_sink) = (MemorySink::new(), MemorySink::new());
    let left = replicator(0);
    left.register_sink("l", left_sink.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    let right = replicator(0);
    right
        .register_sink("r", right_sink.clone().shared(), Encoding::PROTOBUF_V1)
        .unwrap();
    let composite = CompositeReplicator::new([
        ("left".to_owned(), left.shared()),
        ("right".to_owned(), right.shared()),
    ])
    .unwrap();
    let mut event = enqueue();
    event.peer_id = Some("integration-peer".into());
    let outcome = composite
        .publish_all(&StreamId::default(), event.clone())
        .await;
    assert!(outcome.all_accepted());

    let from_left = decoded(&left_sink);
    let from_right: Vec<_> = right_sink
        .records()
        .iter()
        .map(|r| omnirelay_resourcelease::proto::decode(r.bytes()).unwrap())
        .collect();
    assert_eq!(from_left.len(), 1);
    assert_eq!(from_right.len(), 1);
    // The same event reached both, each sequenced by its own replicator.
    for got in [&from_left[0], &from_right[0]] {
        assert_eq!(got.event_type, event.event_type);
        assert_eq!(got.peer_id, event.peer_id);
        assert_eq!(got.sequence_number, 1);
    }
}

#[tokio::test]
async fn v1_sinks_skip_and_count_events_v1_cannot_hold() {
    let r = replicator(0);
    let v1 = MemorySink::new();
    let v2 = MemorySink::new();
    r.register_sink("v1", v1.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    r.register_sink(
        "v2",
        v2.clone().shared(),
        Encoding::new(
            omnirelay_replication::Format::Json,
            omnirelay_resourcelease::version::V2,
        ),
    )
    .unwrap();
    r.publish(ResourceLeaseReplicationEvent::new(
        ResourceLeaseReplicationEventType::LeaseExpired,
    ))
    .await
    .unwrap();
    assert!(v1.is_empty());
    assert_eq!(v2.sequences(), [1]);
    let stats = r.sinks();
    assert_eq!((stats[0].name.as_str(), stats[0].skipped), ("v1", 1));
    let doc = String::from_utf8(v2.records()[0].bytes().to_vec()).unwrap();
    assert!(
        doc.starts_with(r#"{"schemaVersion":2,"sequenceNumber":1,"eventType":"LeaseExpired""#),
        "{doc}"
    );
    assert!(doc.contains(r#""streamId":"default""#), "{doc}");
}
