use std::sync::Arc;

use omnirelay_replication::{
    CompositeReplicator, Encoding, ErrorKind, Format, MemorySink, Replicator, ReplicatorExt,
    ShardedReplicator, SinkExt, StreamId, WireVersion,
};
use omnirelay_replication_testkit::{Note, ScriptedSink, Step};

use crate::support::{fixed_clock, replicator};

/// `<version>|<format>|<sequence>|<text>` of an encoded note.
fn text(record: &omnirelay_replication::OwnedRecord) -> String {
    let full = String::from_utf8(record.bytes().to_vec()).unwrap();
    let parts: Vec<&str> = full.splitn(7, '|').collect();
    format!("{}|{}|{}|{}", parts[0], parts[1], parts[2], parts[6])
}

#[tokio::test]
async fn sequences_per_stream_from_one_and_stamps_the_clock() {
    let (replicator, _) = replicator(0);
    let sink = MemorySink::new();
    replicator
        .register_sink("memory", sink.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    let a = replicator
        .publish(Note::new("a").with_sequence(42))
        .await
        .unwrap();
    let b = replicator.publish(Note::new("b")).await.unwrap();
    let users = StreamId::new("users").unwrap();
    let c = replicator.publish_to(&users, Note::new("c")).await.unwrap();

    assert_eq!((a.sequence, b.sequence, c.sequence), (1, 2, 1));
    assert_eq!(a.stream.as_str(), "default");
    assert_eq!(c.stream, users);
    assert_eq!(a.timestamp, fixed_clock());
    let records = sink.records();
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.stream().as_str().to_owned(), r.sequence(), text(r)))
        .collect();
    assert_eq!(
        seen,
        [
            ("default".into(), 1, "1|json|1|a".into()),
            ("default".into(), 2, "1|json|2|b".into()),
            ("users".into(), 1, "1|json|1|c".into()),
        ]
    );
    assert_eq!(records[0].header().timestamp, fixed_clock());
}

#[tokio::test]
async fn starting_sequence_offsets_every_stream() {
    let (replicator, _) = replicator(10);
    let sink = MemorySink::new();
    replicator
        .register_sink("memory", sink.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    let receipt = replicator
        .publish(Note::new("a").with_sequence(42))
        .await
        .unwrap();
    assert_eq!(receipt.sequence, 11);
    assert_eq!(sink.sequences(), [11]);
}

#[tokio::test]
async fn encodes_each_encoding_once_and_shares_it() {
    let (replicator, codec) = replicator(0);
    let sinks: Vec<_> = (0..3).map(|_| MemorySink::new()).collect();
    for (i, sink) in sinks.iter().enumerate() {
        replicator
            .register_sink(
                format!("json-{i}"),
                sink.clone().shared(),
                Encoding::JSON_V1,
            )
            .unwrap();
    }
    let proto = MemorySink::new();
    replicator
        .register_sink(
            "proto-v2",
            proto.clone().shared(),
            Encoding::new(Format::Protobuf, WireVersion::V2),
        )
        .unwrap();
    replicator.publish(Note::new("a")).await.unwrap();

    assert_eq!(
        codec.encodings(),
        2,
        "one JSON v1 and one protobuf v2 encoding"
    );
    let first = sinks[0].records()[0].bytes().clone();
    for sink in &sinks[1..] {
        // Same allocation, not merely equal bytes.
        assert_eq!(sink.records()[0].bytes().as_ptr(), first.as_ptr());
    }
    assert_eq!(text(&proto.records()[0]), "2|protobuf|1|a");
}

#[tokio::test]
async fn one_failing_sink_does_not_stop_the_others() {
    let (replicator, _) = replicator(0);
    let failing = ScriptedSink::scripted([Step::Fail(ErrorKind::Unavailable)]);
    let healthy = MemorySink::new();
    replicator
        .register_sink("failing", failing.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    replicator
        .register_sink("healthy", healthy.clone().shared(), Encoding::JSON_V1)
        .unwrap();

    let err = replicator.publish(Note::new("a")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(err.to_string().contains("sink \"failing\""), "{err}");
    assert!(
        err.into_event().is_none(),
        "the event reached a sink: not handed back"
    );
    replicator.publish(Note::new("b")).await.unwrap();

    assert_eq!(healthy.sequences(), [1, 2]);
    assert_eq!(failing.sequences(), [2]);
    let stats = replicator.sinks();
    assert_eq!((stats[0].applied, stats[0].failed), (1, 1));
    assert_eq!((stats[1].applied, stats[1].failed), (2, 0));
}

#[tokio::test]
async fn events_without_a_form_in_the_sink_version_are_skipped_and_counted() {
    let (replicator, _) = replicator(0);
    let v1 = MemorySink::new();
    let v2 = MemorySink::new();
    replicator
        .register_sink("v1", v1.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    replicator
        .register_sink(
            "v2",
            v2.clone().shared(),
            Encoding::new(Format::Json, WireVersion::V2),
        )
        .unwrap();
    let mut future_kind = Note::new("new");
    future_kind.kind = Note::V2_ONLY_KIND;
    replicator.publish(future_kind).await.unwrap();
    replicator.publish(Note::new("old")).await.unwrap();

    assert_eq!(v1.sequences(), [2]);
    assert_eq!(v2.sequences(), [1, 2]);
    let stats = replicator.sinks();
    assert_eq!(
        (stats[0].applied, stats[0].skipped, stats[0].failed),
        (1, 1, 0)
    );
    assert_eq!((stats[1].applied, stats[1].skipped), (2, 0));
}

#[tokio::test]
async fn sink_names_are_unique() {
    let (replicator, _) = replicator(0);
    replicator
        .register_sink("a", MemorySink::new().shared(), Encoding::JSON_V1)
        .unwrap();
    let err = replicator
        .register_sink("a", MemorySink::new().shared(), Encoding::JSON_V1)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_reach_sinks_in_sequence_order() {
    let (replicator, _) = replicator(0);
    let replicator = Arc::new(replicator);
    let sink = ScriptedSink::new().yielding();
    replicator
        .register_sink("s", sink.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let replicator = replicator.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    replicator
                        .publish(Note::new(&format!("{t}-{i}")))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(sink.sequences(), (1..=400).collect::<Vec<_>>());
}

#[tokio::test]
async fn sharded_stamps_the_shard_and_numbers_each_shard_alone() {
    let (inner, _) = replicator(0);
    let sink = MemorySink::new();
    inner
        .register_sink("memory", sink.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    let inner = inner.shared();
    let users = ShardedReplicator::new(inner.clone(), "  users ").unwrap();
    let orders = ShardedReplicator::new(inner.clone(), "orders").unwrap();

    let a = users.publish(Note::new("a")).await.unwrap();
    let b = orders.publish(Note::new("b")).await.unwrap();
    let c = users.publish(Note::new("c")).await.unwrap();

    assert_eq!((a.stream.as_str(), a.sequence), ("users", 1));
    assert_eq!((b.stream.as_str(), b.sequence), ("orders", 1));
    assert_eq!((c.stream.as_str(), c.sequence), ("users", 2));
    assert_eq!(users.shard().as_str(), "users");
    for blank in ["", "   "] {
        let Err(err) = ShardedReplicator::new(inner.clone(), blank) else {
            panic!("blank shard id {blank:?} accepted");
        };
        assert_eq!(err.kind(), ErrorKind::Config);
    }
}

#[tokio::test]
async fn composite_delivers_once_to_each_member_and_reports_each_outcome() {
    let (left, _) = replicator(0);
    let (right, _) = replicator(100);
    let left_sink = MemorySink::new();
    let right_sink = ScriptedSink::scripted([Step::Fail(ErrorKind::Rejected)]);
    left.register_sink("l", left_sink.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    right
        .register_sink("r", right_sink.clone().shared(), Encoding::JSON_V1)
        .unwrap();
    let composite = CompositeReplicator::new([
        ("left".to_owned(), left.shared()),
        ("right".to_owned(), right.shared()),
    ])
    .unwrap();

    let outcome = composite
        .publish_all(&StreamId::default(), Note::new("a"))
        .await;
    assert!(!outcome.all_accepted());
    assert_eq!(outcome.outcomes[0].0, "left");
    assert_eq!(outcome.outcomes[0].1.as_ref().unwrap().sequence, 1);
    assert_eq!(
        outcome.outcomes[1].1.as_ref().unwrap_err().kind(),
        ErrorKind::Rejected
    );
    // Both members got the event exactly once; the right one's sink failed.
    assert_eq!(left_sink.sequences(), [1]);
    assert_eq!(right_sink.batches(), 1);

    let receipt = composite.publish(Note::new("b")).await.unwrap();
    assert_eq!(receipt.sequence, 2, "the first member's receipt");
    assert_eq!(left_sink.sequences(), [1, 2]);
    assert_eq!(right_sink.sequences(), [102]);

    let err = CompositeReplicator::<Note>::new([]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test]
async fn composite_failure_names_every_member() {
    let (left, _) = replicator(0);
    left.register_sink(
        "l",
        ScriptedSink::scripted([Step::Fail(ErrorKind::Timeout)]).shared(),
        Encoding::JSON_V1,
    )
    .unwrap();
    let (right, _) = replicator(0);
    let composite = CompositeReplicator::new([
        ("left".to_owned(), left.shared()),
        ("right".to_owned(), right.shared()),
    ])
    .unwrap();
    let err = composite.publish(Note::new("a")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let message = err.to_string();
    assert!(message.contains("left: timeout"), "{message}");
    assert!(message.contains("right: accepted as 1"), "{message}");
    assert!(err.into_event().is_none(), "one member accepted it");
}

/// A batch's form holds every event's bytes back to back; the events with
/// no form in that encoding are errors, the rest are unaffected; records
/// own their bytes without copying; consecutive events of one peer share
/// its name.
#[test]
fn a_batch_form_holds_each_event_and_the_reasons_for_the_missing_ones() {
    use omnirelay_replication::{Codec, CodecErrorKind, EventBatch, ReplicationEvent};

    let json_v2 = Encoding::new(Format::Json, WireVersion::V2);
    use omnirelay_replication_testkit::NoteCodec;

    let stream = StreamId::new("users").unwrap();
    let mut notes: Vec<Note> = ["a", "bb", "ccc", "dddd"].map(Note::new).into();
    notes[1].kind = Note::V2_ONLY_KIND;
    for (i, note) in notes.iter_mut().enumerate() {
        note.peer = Some("worker-1".to_owned());
        note.assign(&omnirelay_replication::Assignment {
            stream: &stream,
            sequence: 10 + i as u64,
            timestamp: fixed_clock(),
        });
    }
    let codec = NoteCodec::default();
    let batch = EventBatch::new(&stream, notes.clone());
    let form = batch.form(&codec, Encoding::JSON_V1);
    assert_eq!(form.len(), 4);
    for (i, note) in notes.iter().enumerate() {
        let record = batch.record(i, &form).unwrap();
        if i == 1 {
            assert_eq!(record.unwrap_err().kind(), CodecErrorKind::Unrepresentable);
            continue;
        }
        let record = record.unwrap();
        let alone = codec.encode(note, Encoding::JSON_V1).unwrap();
        assert_eq!(record.bytes(), &alone[..], "event {i}");
        assert_eq!(record.stream(), &stream);
        assert_eq!(record.sequence(), 10 + i as u64);
        assert_eq!(
            record.shared_bytes().as_ptr(),
            record.bytes().as_ptr(),
            "shared, not copied"
        );
        let owned = record.to_owned();
        assert_eq!(owned.as_record(), record);
        assert_eq!(
            owned.bytes().as_ptr(),
            record.bytes().as_ptr(),
            "shared, not copied"
        );
    }
    assert!(batch.record(4, &form).is_none());
    let peers: Vec<_> = batch
        .headers()
        .iter()
        .map(|h| h.peer.clone().unwrap())
        .collect();
    assert!(peers.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));

    // Read back from a log: the stored bytes are the form, in one buffer.
    let payloads: Vec<_> = notes
        .iter()
        .map(|n| codec.encode(n, json_v2).unwrap())
        .collect();
    let stored = notes
        .iter()
        .zip(&payloads)
        .enumerate()
        .map(|(i, (n, bytes))| (20 + i as u64, fixed_clock(), n.clone(), bytes.clone()))
        .collect();
    let read = EventBatch::from_stored(&stream, stored, json_v2);
    let encodings = codec.encodings();
    let form = read.form(&codec, json_v2);
    assert_eq!(
        codec.encodings(),
        encodings,
        "the stored form is not re-encoded"
    );
    for (i, payload) in payloads.iter().enumerate() {
        let record = read.record(i, &form).unwrap().unwrap();
        assert_eq!(record.sequence(), 20 + i as u64);
        assert_eq!(record.bytes(), &payload[..]);
    }
}
