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

/// Encoded events appended as they are: numbered and stamped in their
/// bytes, they read back, from the log and in every sink's encoding, as the
/// events decoded and assigned.
#[tokio::test]
async fn encoded_events_appended_without_decoding_read_back_as_the_events_assigned() {
    use omnirelay_replication::{
        DurableOptions, DurableReplicator, EncodedEvents, Format, Replayed, ReplicationEvent,
        Timestamp, WireVersion,
    };
    use omnirelay_resourcelease::{ResourceLeaseItemPayload, proto};

    fn at_noon() -> Timestamp {
        Timestamp::parse("2026-11-28T12:00:00.0000000+00:00").unwrap()
    }
    let dir = tempfile::tempdir().unwrap();
    let options = || DurableOptions {
        clock: at_noon,
        ..DurableOptions::new(dir.path())
    };
    let replicator = DurableReplicator::open(Arc::new(ResourceLeaseCodec), options())
        .await
        .unwrap();
    let sink = MemorySink::new();
    replicator
        .add_sink("json", sink.clone().shared(), Default::default())
        .await
        .unwrap();
    let stream = StreamId::default();
    replicator
        .submit(&stream, enqueue())
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();

    let events: Vec<ResourceLeaseReplicationEvent> = (0..3)
        .map(|i| {
            let mut event = enqueue();
            event.sequence_number = 100 + i;
            event.peer_id = Some(format!("worker-{i}"));
            event.payload = Some(ResourceLeaseItemPayload {
                resource_type: "table".to_owned(),
                resource_id: format!("orders-{i}"),
                partition_key: "p".to_owned(),
                payload_encoding: "json".to_owned(),
                body: b"{}".to_vec(),
                attributes: None,
                request_id: None,
            });
            event.metadata.insert("queue.pending", i.to_string());
            event
        })
        .collect();
    let mut encoded = EncodedEvents::with_capacity(replicator.log_encoding(), 3, 1024);
    for event in &events {
        encoded.push(event.kind(), event.peer(), |out| {
            proto::encode_into(event, WireVersion::V1, out).unwrap();
            proto::append_metadata("added", "yes", out);
            proto::append_schema_version(WireVersion::V2, out);
        });
    }
    let pending = replicator.submit_encoded(&stream, &encoded).await.unwrap();
    assert!(pending.events().is_empty());
    assert_eq!(pending.sequences(), 2..=4);
    pending.durable().await.unwrap();
    replicator.wait_caught_up().await;

    let expected: Vec<ResourceLeaseReplicationEvent> = events
        .iter()
        .zip(2u64..)
        .map(|(event, sequence)| {
            // What the decoded event would be after the same submission.
            let mut event = proto::decode(&proto::encode(event, WireVersion::V1).unwrap()).unwrap();
            event.metadata.insert("added", "yes");
            event.assign(&omnirelay_replication::Assignment {
                stream: &stream,
                sequence,
                timestamp: at_noon(),
            });
            event
        })
        .collect();
    // The sink writes the reference JSON (version 1: no stream field).
    let delivered = decoded(&sink);
    assert_eq!(delivered.len(), 4);
    for (got, want) in delivered[1..].iter().zip(&expected) {
        let want = ResourceLeaseReplicationEvent {
            stream_id: None,
            ..want.clone()
        };
        assert_eq!(got, &want);
    }
    let headers: Vec<_> = sink.records().iter().map(|r| r.header().clone()).collect();
    assert_eq!(headers[3].peer.as_deref(), Some("worker-2"));
    assert_eq!(headers[3].kind.name, "Enqueue");
    replicator.close().await.unwrap();

    // From the log, after a restart, in full fidelity.
    let reopened = DurableReplicator::<ResourceLeaseReplicationEvent>::open(
        Arc::new(ResourceLeaseCodec),
        options(),
    )
    .await
    .unwrap();
    let replayed: Vec<ResourceLeaseReplicationEvent> = reopened
        .replay(&stream, 2, Encoding::new(Format::Json, WireVersion::V2))
        .await
        .unwrap()
        .map(|item| match item.unwrap() {
            Replayed::Record(record) => json::decode(record.bytes()).unwrap(),
            Replayed::Skipped { .. } => panic!("nothing was skipped"),
        })
        .collect();
    assert_eq!(replayed, expected);
    reopened.close().await.unwrap();
}
