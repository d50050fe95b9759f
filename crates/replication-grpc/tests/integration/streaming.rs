//! The version-2 service over a real socket: the sink's fallback to the
//! reference's `Publish`, and `Subscribe` from any sequence, then live.

use std::sync::Arc;
use std::time::Duration;

use omnirelay_replication::{Encoding, ErrorKind, SinkExt as _, StreamId};
use omnirelay_replication_grpc::{Connection, Subscription, origin};
use omnirelay_resourcelease::json;

use crate::publish::{Node, fixtures, record};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_falls_back_to_publish_when_the_receiver_has_no_stream() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::serve(dir.path(), None, false).await;
    let records: Vec<_> = fixtures().iter().map(|(b, e)| record(b, e)).collect();
    let sink = node.sink("old-peer");
    assert!(!sink.is_unary(), "auto tries the stream first");
    sink.apply_owned(&records).await.unwrap();
    assert!(sink.is_unary(), "and remembers the receiver lacks it");
    node.replicator.wait_caught_up().await;
    assert_eq!(node.received().len(), 8);
    node.stop().await;
}

/// Collects subscription batches until `count` records arrived.
async fn take(subscription: &mut Subscription, count: usize) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while out.len() < count {
        let batch = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("the subscription went quiet")
            .unwrap()
            .expect("the subscription ended");
        assert!(batch.head >= batch.records.last().map_or(0, |r| r.sequence));
        out.extend(
            batch
                .records
                .into_iter()
                .map(|r| (r.sequence, r.payload.to_vec())),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_returns_the_log_from_a_sequence_in_order_then_follows_it_live() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path()).await;
    let records: Vec<_> = fixtures().iter().map(|(b, e)| record(b, e)).collect();
    node.sink("a").apply_owned(&records).await.unwrap();
    let connection = Connection::new(node.url.clone());
    let stream = StreamId::default();

    let mut from_five = Subscription::open(&connection, &stream, 5, Encoding::JSON_V1)
        .await
        .unwrap();
    let got = take(&mut from_five, 4).await;
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![5, 6, 7, 8]
    );
    for (sequence, payload) in &got {
        let event = json::decode(payload).unwrap();
        assert_eq!(event.sequence_number as u64, *sequence);
        assert_eq!(
            event.metadata.get(origin::SEQUENCE),
            Some(sequence.to_string().as_str()),
            "the log's sequence {sequence} came from the sender's {sequence}"
        );
    }
    // A follower waiting past the head gets events as they are appended.
    let mut ahead = Subscription::open(&connection, &stream, 10, Encoding::PROTOBUF_V1)
        .await
        .unwrap();
    node.sink("b").apply_owned(&records[..3]).await.unwrap();
    let live = take(&mut from_five, 3).await;
    assert_eq!(
        live.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![9, 10, 11]
    );
    assert_eq!(
        json::decode(&live[0].1)
            .unwrap()
            .metadata
            .get(origin::SENDER),
        Some("b")
    );
    let ahead = take(&mut ahead, 2).await;
    assert_eq!(
        ahead.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![10, 11]
    );
    let event = omnirelay_resourcelease::proto::decode(&ahead[0].1).unwrap();
    assert_eq!(event.sequence_number, 10);

    // The last two, then live; and a follower past the head is told the
    // head at once.
    let mut last_two = Subscription::open_last(&connection, &stream, 2, Encoding::JSON_V1)
        .await
        .unwrap();
    assert_eq!(
        take(&mut last_two, 2)
            .await
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        vec![10, 11]
    );
    let mut beyond = Subscription::open(&connection, &stream, 50, Encoding::JSON_V1)
        .await
        .unwrap();
    let greeting = beyond.next().await.unwrap().unwrap();
    assert!(greeting.records.is_empty());
    assert_eq!(greeting.head, 11);

    // An unknown stream is refused, not created.
    let err = Subscription::open(
        &connection,
        &StreamId::new("nope").unwrap(),
        1,
        Encoding::JSON_V1,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("NotFound"), "{err}");
    assert!(!dir.path().join("log").join("nope").exists());

    // Stopping the node ends its subscriptions cleanly.
    let stopping = tokio::spawn(node.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), from_five.next())
        .await
        .unwrap();
    assert!(matches!(end, Ok(None)), "{end:?}");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the node stopped with a follower attached")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_a_token_configured_refuses_calls_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with_token(dir.path(), Some("s3cret")).await;
    let records: Vec<_> = fixtures().iter().map(|(b, e)| record(b, e)).collect();
    node.sink_with_token("a", Some("s3cret"))
        .apply_owned(&records[..2])
        .await
        .unwrap();
    let stream = StreamId::default();
    for token in [None, Some("wrong")] {
        let mut connection = Connection::new(node.url.clone());
        connection.token = token.map(str::to_owned);
        let refused = Subscription::open(&connection, &stream, 1, Encoding::JSON_V1)
            .await
            .unwrap_err();
        assert_eq!(
            refused.kind(),
            ErrorKind::Unavailable,
            "{token:?}: {refused}"
        );
        assert!(refused.to_string().contains("Unauthenticated"), "{refused}");
    }
    let mut connection = Connection::new(node.url.clone());
    connection.token = Some("s3cret".to_owned());
    let mut subscription = Subscription::open(&connection, &stream, 1, Encoding::JSON_V1)
        .await
        .unwrap();
    assert_eq!(take(&mut subscription, 2).await.len(), 2);
    drop(subscription);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_is_a_retryable_timeout_for_either_protocol() {
    use omnirelay_replication_grpc::{GrpcSink, GrpcSinkOptions, Protocol};
    // Accepts connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            held.push(connection);
        }
    });
    let records: Vec<_> = fixtures().iter().map(|(b, e)| record(b, e)).collect();
    for protocol in [Protocol::Stream, Protocol::Unary] {
        let sink = GrpcSink::new(GrpcSinkOptions {
            url: url.clone(),
            sender: "a".to_owned(),
            timeout: Duration::from_millis(300),
            token: None,
            ca_pem: None,
            protocol,
            writer: None,
        })
        .unwrap();
        let started = std::time::Instant::now();
        let err = sink.apply_owned(&records[..2]).await.unwrap_err();
        assert!(err.kind().is_retryable(), "{protocol:?}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{protocol:?}: the deadline held"
        );
    }
    silent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_not_there_is_named_as_refusing_and_a_bare_address_refused() {
    use omnirelay_replication::ErrorKind;
    use omnirelay_replication_grpc::{GrpcSink, GrpcSinkOptions, Protocol};
    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = |url: String| GrpcSinkOptions {
        url,
        sender: "a".to_owned(),
        timeout: Duration::from_secs(5),
        token: None,
        ca_pem: None,
        protocol: Protocol::Stream,
        writer: None,
    };
    let records: Vec<_> = fixtures().iter().map(|(b, e)| record(b, e)).collect();
    let sink = GrpcSink::new(options(format!("http://127.0.0.1:{port}"))).unwrap();
    let err = sink.apply_owned(&records[..1]).await.unwrap_err();
    assert!(err.kind().is_retryable(), "{err}");
    // Not only the transport's "tcp connect error": why it failed.
    assert!(err.to_string().contains("Connection refused"), "{err}");
    // Without its scheme, an address is a mistake to fix, not to retry.
    let err = GrpcSink::new(options(format!("127.0.0.1:{port}"))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string()
            .contains(&format!("http://127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_pipelined_in_messages_and_lands_whole_and_in_order() {
    use omnirelay_replication::WireVersion;
    use omnirelay_resourcelease::{
        ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType,
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path()).await;
    let records: Vec<_> = (1..=3000i64)
        .map(|sequence| {
            let mut event =
                ResourceLeaseReplicationEvent::new(ResourceLeaseReplicationEventType::Heartbeat);
            event.sequence_number = sequence;
            event.peer_id = Some(format!("worker-{}", sequence % 7));
            let bytes = bytes::Bytes::from(
                omnirelay_resourcelease::proto::encode(&event, WireVersion::V1).unwrap(),
            );
            record(&bytes, &event)
        })
        .collect();
    let sink = node.sink("bulk");
    sink.apply_owned(&records).await.unwrap();
    // A retry of an overlapping range adds nothing.
    sink.apply_owned(&records[2500..]).await.unwrap();
    node.replicator.wait_caught_up().await;
    let received = node.received();
    assert_eq!(received.len(), 3000);
    for (i, event) in received.iter().enumerate() {
        let sent = i as i64 + 1;
        assert_eq!(event.sequence_number, sent);
        assert_eq!(
            event.metadata.get(origin::SEQUENCE),
            Some(sent.to_string().as_str())
        );
        assert_eq!(
            event.peer_id.as_deref(),
            Some(format!("worker-{}", sent % 7).as_str())
        );
    }
    let marks = node.receiver.marks().await;
    assert_eq!(marks["bulk"].sequence, 3000);
    node.stop().await;
}

/// The events of `replicator`'s default stream from 1, in full fidelity.
async fn replayed(
    replicator: &omnirelay_replication::DurableReplicator<
        omnirelay_resourcelease::ResourceLeaseReplicationEvent,
    >,
) -> Vec<omnirelay_resourcelease::ResourceLeaseReplicationEvent> {
    use omnirelay_replication::{Format, Replayed, WireVersion};
    replicator
        .replay(
            &StreamId::default(),
            1,
            Encoding::new(Format::Json, WireVersion::V2),
        )
        .await
        .unwrap()
        .map(|item| match item.unwrap() {
            Replayed::Record(record) => json::decode(record.bytes()).unwrap(),
            Replayed::Skipped { .. } => panic!("nothing was skipped"),
        })
        .collect()
}

/// The events of `node`'s log from 1 in full fidelity, with the receiver's
/// own timestamp (its clock) left out.
async fn logged(node: &Node) -> Vec<omnirelay_resourcelease::ResourceLeaseReplicationEvent> {
    let mut events = replayed(&node.replicator).await;
    for event in &mut events {
        event.timestamp = omnirelay_replication::Timestamp::MIN;
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_events_appended_as_they_came_equal_the_same_events_decoded() {
    use omnirelay_replication::{EventKind, Format, OwnedRecord, RecordHeader, WireVersion};
    use omnirelay_resourcelease::{
        ResourceLeaseItemPayload, ResourceLeasePendingItem, ResourceLeaseReplicationEvent,
        ResourceLeaseReplicationEventType, codec,
    };
    let events: Vec<ResourceLeaseReplicationEvent> = (1..=6i64)
        .map(|sequence| {
            let payload = ResourceLeaseItemPayload {
                resource_type: "table".to_owned(),
                resource_id: format!("orders-{sequence}"),
                partition_key: "p".to_owned(),
                payload_encoding: "json".to_owned(),
                body: b"{}".to_vec(),
                attributes: None,
                request_id: None,
            };
            let mut event = if sequence == 5 {
                // Snapshot items are left to decoding: its batch is decoded.
                let mut drain = ResourceLeaseReplicationEvent::new(
                    ResourceLeaseReplicationEventType::DrainSnapshot,
                );
                drain.items.push(ResourceLeasePendingItem {
                    payload: payload.clone(),
                    attempt: 2,
                    enqueued_at: omnirelay_replication::Timestamp::now(),
                    last_error: None,
                    sequence_id: 9,
                    last_ownership_token: None,
                });
                drain
            } else {
                let mut enqueue =
                    ResourceLeaseReplicationEvent::new(ResourceLeaseReplicationEventType::Enqueue);
                enqueue.payload = Some(payload);
                enqueue.peer_id = Some(format!("worker-{}", sequence % 2));
                enqueue
            };
            event.sequence_number = sequence;
            // A key the receiver's origin replaces, in another case.
            event
                .metadata
                .insert("Replication.Origin.Sender", "spoofed");
            event.metadata.insert("queue.pending", sequence.to_string());
            event
        })
        .collect();
    let records = |format: Format| -> Vec<OwnedRecord> {
        let encoding = Encoding::new(format, WireVersion::V2);
        events
            .iter()
            .map(|event| {
                let header = RecordHeader {
                    sequence: event.sequence_number as u64,
                    timestamp: event.timestamp,
                    kind: EventKind {
                        code: event.event_type.code(),
                        name: event.event_type.name(),
                    },
                    peer: None,
                };
                let mut bytes = codec::encode(event, encoding).unwrap();
                if format == Format::Protobuf && event.sequence_number == 2 {
                    // Another sender's form of the same instant: the
                    // receiver renders the origin timestamp again.
                    use prost::Message as _;
                    let mut message =
                        omnirelay_resourcelease::proto::pb::ResourceLeaseReplicationEventMessage::decode(
                            bytes.as_slice(),
                        )
                        .unwrap();
                    message.timestamp = message.timestamp.replace("+00:00", "Z");
                    bytes = message.encode_to_vec();
                }
                OwnedRecord::new(StreamId::default(), header, encoding, bytes.into())
            })
            .collect()
    };
    let (as_sent, decoding) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (as_sent, decoding) = (
        Node::start(as_sent.path()).await,
        Node::start(decoding.path()).await,
    );
    // Protobuf to one receiver (appended as it came, but for the batch with
    // the snapshot), JSON to the other (always decoded); batches of three.
    for (node, format) in [(&as_sent, Format::Protobuf), (&decoding, Format::Json)] {
        let sink = node.sink("origin");
        let records = records(format);
        sink.apply_owned(&records[..3]).await.unwrap();
        sink.apply_owned(&records[3..]).await.unwrap();
    }
    let (got, want) = (logged(&as_sent).await, logged(&decoding).await);
    assert_eq!(got.len(), 6);
    assert_eq!(got, want);
    for (event, sequence) in got.iter().zip(1..) {
        assert_eq!(event.sequence_number, sequence);
        assert_eq!(event.metadata.get(origin::SENDER), Some("origin"));
        assert_eq!(
            event.metadata.get(origin::SEQUENCE),
            Some(sequence.to_string().as_str())
        );
    }
    assert_eq!(got[4].items.len(), 1);
    // The first batch was appended as it came: the log holds the bytes sent,
    // with what the receiver stamps after them.
    let sent = records(Format::Protobuf);
    let stored: Vec<bytes::Bytes> = as_sent
        .replicator
        .replay(
            &StreamId::default(),
            1,
            Encoding::new(Format::Protobuf, WireVersion::V2),
        )
        .await
        .unwrap()
        .take(3)
        .map(|item| match item.unwrap() {
            omnirelay_replication::Replayed::Record(record) => record.bytes().clone(),
            omnirelay_replication::Replayed::Skipped { .. } => panic!("nothing was skipped"),
        })
        .collect();
    for (stored, sent) in stored.iter().zip(&sent) {
        assert!(stored.starts_with(sent.bytes()), "not appended as it came");
    }
    as_sent.stop().await;
    decoding.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_log_stores_json_decodes_protobuf_events_and_appends_them_in_order() {
    use omnirelay_replication::{DurableOptions, DurableReplicator, Format, WireVersion};
    use omnirelay_replication_grpc::{Incoming, Receiver};
    use omnirelay_resourcelease::{
        ResourceLeaseCodec, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType, proto,
    };
    let dir = tempfile::tempdir().unwrap();
    let open = || async {
        std::sync::Arc::new(
            DurableReplicator::open(
                std::sync::Arc::new(ResourceLeaseCodec),
                DurableOptions {
                    log_format: Format::Json,
                    ..DurableOptions::new(dir.path())
                },
            )
            .await
            .unwrap(),
        )
    };
    let replicator = open().await;
    let receiver = Receiver::open(replicator.clone(), StreamId::default())
        .await
        .unwrap();
    let incoming: Vec<Incoming> = (1..=3u64)
        .map(|sequence| {
            let mut event =
                ResourceLeaseReplicationEvent::new(ResourceLeaseReplicationEventType::Heartbeat);
            event.peer_id = Some(format!("worker-{sequence}"));
            Incoming::Protobuf {
                sequence,
                payload: proto::encode(&event, WireVersion::V1).unwrap().into(),
            }
        })
        .collect();
    let outcome = receiver
        .submit_incoming(
            &omnirelay_replication_grpc::Sender::named("json-log", None),
            incoming,
        )
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    assert_eq!((outcome.appended, outcome.high_water), (3, 3));
    let logged = replayed(&replicator).await;
    assert_eq!(logged.len(), 3);
    for (event, sequence) in logged.iter().zip(1..) {
        assert_eq!(event.sequence_number, sequence);
        assert_eq!(
            event.peer_id.as_deref(),
            Some(format!("worker-{sequence}").as_str())
        );
        assert_eq!(event.metadata.get(origin::SENDER), Some("json-log"));
        assert_eq!(
            event.metadata.get(origin::SEQUENCE),
            Some(sequence.to_string().as_str())
        );
    }
    replicator.close().await.unwrap();
    // Restarted, its marks come back from the JSON log (decoded).
    let replicator = open().await;
    let receiver = Receiver::open(replicator.clone(), StreamId::default())
        .await
        .unwrap();
    assert_eq!(receiver.marks().await["json-log"].sequence, 3);
    replicator.close().await.unwrap();
}

/// A heartbeat numbered `sequence` in `stream`, as a sink gets it.
fn on_stream(stream: &str, sequence: i64) -> omnirelay_replication::OwnedRecord {
    use omnirelay_resourcelease::{
        ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType,
    };
    let mut event =
        ResourceLeaseReplicationEvent::new(ResourceLeaseReplicationEventType::Heartbeat);
    event.sequence_number = sequence;
    event.peer_id = Some(format!("{stream}-{sequence}"));
    let bytes = bytes::Bytes::from(
        omnirelay_resourcelease::proto::encode(&event, omnirelay_replication::WireVersion::V1)
            .unwrap(),
    );
    let record = record(&bytes, &event);
    omnirelay_replication::OwnedRecord::new(
        StreamId::new(stream).unwrap(),
        record.header().clone(),
        record.encoding(),
        bytes,
    )
}

/// One sink carries every stream of its node, each numbered on its own:
/// each goes to the receiver under a sender name of its own (the stream
/// `default` under the sender's, another as `<sender>/<stream>`), so one
/// stream's numbering never hides another's events as duplicates, over
/// either protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stream_of_a_sink_has_its_own_mark_at_the_receiver() {
    for v2 in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::serve(dir.path(), None, v2).await;
        let sink = node.sink("edge");
        let batches = [
            ("default", 1..=10),
            ("orders", 1..=5),
            ("default", 11..=12),
            ("orders", 6..=8),
            // A retry of each adds nothing.
            ("orders", 4..=8),
            ("default", 12..=12),
        ];
        for (stream, range) in batches {
            let records: Vec<_> = range.map(|s| on_stream(stream, s)).collect();
            sink.apply_owned(&records).await.unwrap();
        }
        node.replicator.wait_caught_up().await;
        let received: Vec<(String, String)> = node
            .received()
            .iter()
            .map(|e| {
                (
                    e.metadata.get(origin::SENDER).unwrap().to_owned(),
                    e.peer_id.clone().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = (1..=10)
            .map(|s| ("edge".to_owned(), format!("default-{s}")))
            .chain((1..=5).map(|s| ("edge/orders".to_owned(), format!("orders-{s}"))))
            .chain((11..=12).map(|s| ("edge".to_owned(), format!("default-{s}"))))
            .chain((6..=8).map(|s| ("edge/orders".to_owned(), format!("orders-{s}"))))
            .collect();
        assert_eq!(received, expected, "v2 {v2}");
        let marks = node.receiver.marks().await;
        assert_eq!(
            (marks["edge"].sequence, marks["edge/orders"].sequence),
            (12, 8),
            "v2 {v2}"
        );
        node.stop().await;
    }
}

fn heartbeats(range: std::ops::RangeInclusive<i64>) -> Vec<omnirelay_replication::OwnedRecord> {
    range.map(|s| on_stream("default", s)).collect()
}

/// Two writers (nodes) under one sender name: the receiver keeps one mark
/// per name, so the second one's events below the first one's mark would
/// be dropped as duplicates, in silence. The second is refused instead (a
/// permanent error: the delivery engine dead-letters its events), unless
/// it restarts its numbering, as a node whose log was lost does; then the
/// first is refused. The writer behind a name survives a restart of the
/// receiver. Senders that do not say who they are are not checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_under_one_sender_name_is_refused_not_dropped() {
    for v2 in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::serve(dir.path(), None, v2).await;
        let (a, b) = (
            node.sink_as("edge", "node-a"),
            node.sink_as("edge", "node-b"),
        );
        a.apply_owned(&heartbeats(1..=10)).await.unwrap();
        let refused = b.apply_owned(&heartbeats(3..=5)).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Rejected, "v2 {v2}: {refused}");
        assert!(
            refused
                .to_string()
                .contains("in use by another writer (node-a"),
            "{refused}"
        );
        a.apply_owned(&heartbeats(11..=12)).await.unwrap();
        // The other writer restarts its numbering: it takes the name over.
        b.apply_owned(&heartbeats(1..=2)).await.unwrap();
        let refused = a.apply_owned(&heartbeats(13..=13)).await.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Rejected, "v2 {v2}: {refused}");
        // A sender that does not say who it is: not checked.
        node.sink("edge")
            .apply_owned(&heartbeats(3..=3))
            .await
            .unwrap();
        node.replicator.wait_caught_up().await;
        let peers: Vec<String> = node
            .received()
            .iter()
            .map(|e| e.peer_id.clone().unwrap())
            .collect();
        let expected: Vec<String> = (1..=12)
            .chain(1..=3)
            .map(|s| format!("default-{s}"))
            .collect();
        assert_eq!(peers, expected, "v2 {v2}");
        // Saved with the marks (every second while the log moves), the
        // writer behind the name outlives a restart of the receiver.
        let marks = dir.path().join("receiver/default.marks.json");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&marks).is_ok_and(|m| m.contains("node-b")) {
            assert!(std::time::Instant::now() < deadline, "no marks saved");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        node.stop().await;
        let node = Node::serve(dir.path(), None, v2).await;
        let refused = node
            .sink_as("edge", "node-a")
            .apply_owned(&heartbeats(4..=4))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Rejected, "v2 {v2}: {refused}");
        node.sink_as("edge", "node-b")
            .apply_owned(&heartbeats(4..=4))
            .await
            .unwrap();
        node.replicator.wait_caught_up().await;
        assert_eq!(
            node.replicator.last_sequence(&StreamId::default()),
            16,
            "v2 {v2}"
        );
        let received = node.received();
        assert_eq!(
            received.len(),
            1,
            "v2 {v2}: only b's event after the restart"
        );
        assert_eq!(received[0].peer_id.as_deref(), Some("default-4"));
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_resumes_after_what_the_receiver_has_under_its_name() {
    use omnirelay_replication::Sink as _;

    for v2 in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::serve(dir.path(), None, v2).await;
        let stream = StreamId::default();
        let a = node.sink_as("edge", "node-a");
        assert_eq!(
            a.checkpoint(&stream).await.unwrap(),
            v2.then_some(0),
            "v2 {v2}: the receiver holds nothing of the name"
        );
        a.apply_owned(&heartbeats(1..=5)).await.unwrap();
        // Another instance under the name (a restart; a standby that took
        // its primary's name): it starts after what the receiver has,
        // where it would otherwise send from 1, which the receiver takes
        // for a restarted numbering and appends again. A receiver without
        // `PublishStream` (the reference's) cannot say.
        let again = node.sink_as("edge", "node-a");
        assert_eq!(
            again.checkpoint(&stream).await.unwrap(),
            v2.then_some(5),
            "v2 {v2}"
        );
        // Another writer under the name is refused by the receiver: its
        // sink cannot say (its events are refused as they come).
        assert_eq!(
            node.sink_as("edge", "node-b")
                .checkpoint(&stream)
                .await
                .unwrap(),
            None,
            "v2 {v2}"
        );
        // Asking appends nothing.
        again.apply_owned(&heartbeats(6..=6)).await.unwrap();
        node.replicator.wait_caught_up().await;
        assert_eq!(node.replicator.last_sequence(&stream), 6, "v2 {v2}");
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_lost_its_data_is_filled_again_from_the_senders_log() {
    use omnirelay_replication::{
        DurableOptions, DurableReplicator, ReplicatorExt as _, SinkOptions,
    };
    use omnirelay_resourcelease::ResourceLeaseCodec;

    let sender_dir = tempfile::tempdir().unwrap();
    let open = |node: &Node| {
        let sink = node.sink_as("edge", "node-a").shared();
        let dir = sender_dir.path().to_owned();
        async move {
            let sender =
                DurableReplicator::open(Arc::new(ResourceLeaseCodec), DurableOptions::new(dir))
                    .await
                    .unwrap();
            let options = SinkOptions {
                encoding: Encoding::PROTOBUF_V1,
                ..SinkOptions::default()
            };
            sender.add_sink("up", sink, options).await.unwrap();
            sender
        }
    };
    let events: Vec<_> = fixtures().into_iter().map(|(_, e)| e).take(4).collect();
    let first = tempfile::tempdir().unwrap();
    let node = Node::start(first.path()).await;
    let sender = open(&node).await;
    for event in &events[..3] {
        sender.publish(event.clone()).await.unwrap();
    }
    sender.wait_caught_up().await;
    sender.close().await.unwrap();
    assert_eq!(node.received().len(), 3);
    node.stop().await;

    // The receiver's disk is replaced: it holds nothing of the sender,
    // whose saved checkpoint says it was given 3.
    let second = tempfile::tempdir().unwrap();
    let node = Node::start(second.path()).await;
    let sender = open(&node).await;
    sender.publish(events[3].clone()).await.unwrap();
    sender.wait_caught_up().await;
    sender.close().await.unwrap();
    let origins: Vec<Option<String>> = node
        .received()
        .iter()
        .map(|e| e.metadata.get(origin::SEQUENCE).map(ToString::to_string))
        .collect();
    let expected: Vec<Option<String>> = (1..=4).map(|s| Some(s.to_string())).collect();
    assert_eq!(origins, expected, "filled again, then the new one");
    node.stop().await;
}

/// A snapshot source that holds one snapshot of the default stream.
#[derive(Debug)]
struct Held(omnirelay_replication_grpc::Snapshot);

impl omnirelay_replication_grpc::SnapshotSource for Held {
    fn snapshot(
        &self,
        stream: &StreamId,
    ) -> Result<Option<omnirelay_replication_grpc::SnapshotReader>, omnirelay_replication::Error>
    {
        Ok((*stream == StreamId::default()).then(|| {
            omnirelay_replication_grpc::SnapshotReader::from_bytes(
                self.0.through,
                self.0.data.clone(),
            )
        }))
    }
}

/// `Snapshot` sends a node's snapshot whole, over several messages when it
/// is large, behind the node's token; a stream without one, or a node that
/// keeps none, is `None`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_sends_what_the_node_keeps_in_chunks_behind_its_token() {
    use omnirelay_replication_grpc::{Snapshot, StreamingService, fetch_snapshot, routes_with};
    let dir = tempfile::tempdir().unwrap();
    let replicator = Arc::new(
        omnirelay_replication::DurableReplicator::open(
            Arc::new(omnirelay_resourcelease::ResourceLeaseCodec),
            omnirelay_replication::DurableOptions::new(dir.path()),
        )
        .await
        .unwrap(),
    );
    // Over two and a half messages of 1 MiB, no two bytes alike in a row.
    let data: Vec<u8> = (0..(5 << 19) + 7).map(|i: u32| (i % 251) as u8).collect();
    let held = Snapshot { through: 42, data };
    let serve = |held: Option<Snapshot>, token: Option<&str>| {
        let replicator = replicator.clone();
        let token = token.map(str::to_owned);
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let mut streaming = StreamingService::new(replicator, None);
            if let Some(held) = held {
                streaming = streaming.with_snapshots(Arc::new(Held(held)));
            }
            let routes = routes_with(streaming, None, token, stopped);
            tokio::spawn(async move {
                // Served until the test ends.
                let _serving = stop;
                tonic::transport::Server::builder()
                    .add_routes(routes)
                    .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                    .await
            });
            url
        }
    };
    let url = serve(Some(held.clone()), Some("s3cret")).await;
    let mut connection = Connection::new(url);
    let stream = StreamId::default();
    for token in [None, Some("wrong")] {
        connection.token = token.map(str::to_owned);
        let refused = fetch_snapshot(&connection, &stream).await.unwrap_err();
        assert!(refused.to_string().contains("Unauthenticated"), "{refused}");
    }
    connection.token = Some("s3cret".to_owned());
    let got = fetch_snapshot(&connection, &stream).await.unwrap();
    assert_eq!(got.as_ref(), Some(&held));
    let other = StreamId::new("other").unwrap();
    assert_eq!(fetch_snapshot(&connection, &other).await.unwrap(), None);
    // A node that keeps none, and one without the service (a reference
    // receiver, or a release before `Snapshot`).
    let bare = Connection::new(serve(None, None).await);
    assert_eq!(fetch_snapshot(&bare, &stream).await.unwrap(), None);
    // An empty snapshot is one empty chunk.
    let empty = Snapshot {
        through: 7,
        data: Vec::new(),
    };
    let nothing = Connection::new(serve(Some(empty.clone()), None).await);
    assert_eq!(
        fetch_snapshot(&nothing, &stream).await.unwrap(),
        Some(empty)
    );
    let old_dir = tempfile::tempdir().unwrap();
    let old = Node::serve(old_dir.path(), None, false).await;
    let unserved = fetch_snapshot(&Connection::new(old.url.clone()), &stream).await;
    assert_eq!(unserved.unwrap(), None);
    old.stop().await;
}

/// `Subscribe` from before the sequence a log began after (a standby begun
/// from its primary's checkpoint) is refused, also while the log holds
/// nothing yet (before, it answered empty batches as fast as it could);
/// from the next sequence it follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_before_where_a_log_began_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path()).await;
    let stream = StreamId::new("begun").unwrap();
    node.replicator.begin_after(&stream, 10).await.unwrap();
    let connection = Connection::new(node.url.clone());
    let mut early = Subscription::open(&connection, &stream, 1, Encoding::JSON_V1)
        .await
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), early.next())
        .await
        .expect("no answer")
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Rejected, "{refused}");
    assert!(
        refused.to_string().contains("began after sequence 10"),
        "{refused}"
    );
    let mut from_next = Subscription::open(&connection, &stream, 11, Encoding::JSON_V1)
        .await
        .unwrap();
    let greeting = from_next.next().await.unwrap().unwrap();
    assert_eq!((greeting.head, greeting.records.len()), (10, 0));
    drop((early, from_next));
    node.stop().await;
}
