//! Duplicates: JetStream's message ids inside the window, the high-water
//! mark beyond it.

use std::time::Duration;

use omnirelay_replication::{
    Encoding, ErrorKind, Format, OwnedRecord, Sink, SinkExt, StreamId, WireVersion,
};
use omnirelay_replication_nats::{DEFAULT_STREAM, NatsSink, NatsSinkOptions, StreamSettings};
use omnirelay_replication_testkit::conformance::record;

use crate::support::{Nats, create_default_stream, publish_as_sink, publish_as_writer, stored};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_retried_publishes_are_dropped_by_message_id_and_old_ones_by_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let options = NatsSinkOptions {
        create: Some(StreamSettings {
            duplicate_window: Duration::from_secs(1),
            ..StreamSettings::default()
        }),
        ..NatsSinkOptions::new()
    };
    let stream = StreamId::new("users").unwrap();
    let batch: Vec<_> = (1..=5)
        .map(|s| record(&stream, s, Encoding::JSON_V1))
        .collect();
    let first = NatsSink::connect(std::slice::from_ref(&nats.url), options.clone())
        .await
        .unwrap();
    // A second sink reads its mark (nothing yet) before the first writes:
    // its publishes of the same sequences are retries JetStream drops.
    let stale = NatsSink::connect(std::slice::from_ref(&nats.url), options.clone())
        .await
        .unwrap();
    assert_eq!(stale.checkpoint(&stream).await.unwrap(), None);
    // Another node publishing the same stream id to the subject: its own
    // events under the same sequences (other bytes).
    let other = NatsSink::connect(std::slice::from_ref(&nats.url), options.clone())
        .await
        .unwrap();
    assert_eq!(other.checkpoint(&stream).await.unwrap(), None);
    // And another whose events come in another schema version, whose
    // bytes cannot be compared: the writer tells it from a retry.
    let other_version = NatsSink::connect(
        std::slice::from_ref(&nats.url),
        NatsSinkOptions {
            writer: Some("node-other".to_owned()),
            ..options.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(other_version.checkpoint(&stream).await.unwrap(), None);
    let rolled = NatsSink::connect(
        std::slice::from_ref(&nats.url),
        NatsSinkOptions {
            writer: Some(first.writer().to_owned()),
            ..options.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(rolled.checkpoint(&stream).await.unwrap(), None);
    let others: Vec<_> = batch
        .iter()
        .map(|r| {
            let mut bytes = r.bytes().to_vec();
            bytes.extend_from_slice(b" ");
            OwnedRecord::new(
                stream.clone(),
                r.header().clone(),
                r.encoding(),
                bytes.into(),
            )
        })
        .collect();
    first.apply_owned(&batch).await.unwrap();
    stale.apply_owned(&batch).await.unwrap();
    assert_eq!(
        stale.duplicates(),
        5,
        "duplicate acknowledgements count as success"
    );
    assert_eq!(first.duplicates(), 0);
    let refused = other.apply_owned(&others).await.unwrap_err();
    assert_eq!(
        (refused.kind(), refused.applied_through_sequence()),
        (ErrorKind::Config, None),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("another node publishes the same stream id"),
        "{refused}"
    );
    let version_2: Vec<_> = (1..=5)
        .map(|s| record(&stream, s, Encoding::new(Format::Json, WireVersion::V2)))
        .collect();
    let refused = other_version.apply_owned(&version_2).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Config, "{refused}");
    assert!(refused.to_string().contains("another node"), "{refused}");
    // The same sequences in version 2 from the first sink's node (its
    // schema rolled forward, re-sending inside the window): retries.
    rolled.apply_owned(&version_2).await.unwrap();
    assert_eq!(rolled.duplicates(), 5);

    // Past the duplicate window, a restarted sink skips by its mark.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted = NatsSink::connect(std::slice::from_ref(&nats.url), options)
        .await
        .unwrap();
    assert_eq!(restarted.checkpoint(&stream).await.unwrap(), Some(5));
    restarted.apply_owned(&batch).await.unwrap();
    assert_eq!(restarted.duplicates(), 0, "nothing was even sent");
    let held = stored(&nats.url, DEFAULT_STREAM, "users").await;
    assert_eq!(
        held.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

#[test]
fn configuration_refuses_what_cannot_work() {
    use omnirelay_replication_testkit::config::check;
    check("[replication.sinks.bus]\ntype = \"nats\"\n").unwrap();
    for (settings, at, says) in [
        ("servers = []", "settings.servers", "at least one"),
        (
            "servers = [\"nats://\"]",
            "settings.servers.0",
            "not a NATS server address",
        ),
        ("stream = \"a.b\"", "settings.stream", "not allowed"),
        (
            "subject = \"omnirelay.{stream}.x\"",
            "settings.subject",
            "last token must be {stream}",
        ),
        ("replicas = 2", "settings", "replicas must be 1, 3 or 5"),
        ("user = \"u\"", "settings.password", "go together"),
        (
            "token = \"t\"\nnkey_seed_file = \"user.nk\"",
            "settings",
            "alternatives: give one",
        ),
        (
            "user = \"u\"\npassword = \"p\"\ncredentials_file = \"user.creds\"",
            "settings",
            "alternatives: give one",
        ),
        ("max_outstanding_acks = 0", "settings", "at least 1"),
    ] {
        let text = format!(
            "[replication.sinks.bus]\ntype = \"nats\"\n[replication.sinks.bus.settings]\n{settings}\n"
        );
        let Err(err) = check(&text) else {
            panic!("{settings} was accepted");
        };
        assert!(
            err.contains(&format!("replication.sinks.bus.{at}")) && err.contains(says),
            "{settings}: {err}"
        );
    }
    let err = check(
        "[replication.sinks.one]\ntype = \"nats\"\n[replication.sinks.two]\ntype = \"nats\"\n",
    )
    .unwrap_err();
    assert!(err.contains("would both write the subjects"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_the_stream_is_created_as_configured_and_checked_when_it_exists() {
    use omnirelay_replication_nats::{Retention, Storage};
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let options = NatsSinkOptions {
        stream: "EVENTS".to_owned(),
        create: Some(StreamSettings {
            storage: Storage::Memory,
            retention: Retention::Interest,
            max_age: Duration::from_secs(3600),
            max_bytes: Some(1 << 20),
            duplicate_window: Duration::from_secs(30),
            ..StreamSettings::default()
        }),
        ..NatsSinkOptions::new()
    };
    let sink = NatsSink::connect(std::slice::from_ref(&nats.url), options.clone())
        .await
        .unwrap();
    let stream = StreamId::default();
    assert_eq!(sink.checkpoint(&stream).await.unwrap(), None);
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut created = js.get_stream("EVENTS").await.unwrap();
    let config = created.info().await.unwrap().config.clone();
    assert_eq!(config.subjects, ["omnirelay.replication.>"]);
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::Memory
    );
    assert_eq!(
        config.retention,
        async_nats::jetstream::stream::RetentionPolicy::Interest
    );
    assert_eq!(config.max_bytes, 1 << 20);
    assert_eq!(config.max_age, Duration::from_secs(3600));
    assert_eq!(config.duplicate_window, Duration::from_secs(30));

    // An existing stream that does not take the sink's subjects is a
    // configuration error, not something to retry.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "OTHER".to_owned(),
        subjects: vec!["other.>".to_owned()],
        ..Default::default()
    })
    .await
    .unwrap();
    let wrong = NatsSink::connect(
        std::slice::from_ref(&nats.url),
        NatsSinkOptions {
            stream: "OTHER".to_owned(),
            create: None,
            ..NatsSinkOptions::new()
        },
    )
    .await
    .unwrap();
    let err = wrong.checkpoint(&stream).await.unwrap_err();
    assert_eq!(
        err.kind(),
        omnirelay_replication::ErrorKind::Config,
        "{err}"
    );
    assert!(
        err.to_string().contains("does not take the subjects"),
        "{err}"
    );
}

/// A publish lost in flight while a later one landed (a connection lost
/// mid-pipeline, say): the retry must publish it again, not skip it
/// because the stream's last message is past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_publish_lost_in_flight_is_published_again_though_a_later_one_landed() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(dir.path());
    let options = NatsSinkOptions {
        ack_timeout: Duration::from_millis(500),
        ..NatsSinkOptions::new()
    };
    let stream = StreamId::default();
    let records: Vec<_> = (1..=6)
        .map(|s| record(&stream, s, Encoding::JSON_V1))
        .collect();
    let sink = NatsSink::connect(std::slice::from_ref(&nats.url), options)
        .await
        .unwrap();
    sink.apply_owned(&records[..3]).await.unwrap();
    // Sequence 4 goes out to a server that does not read it, and dies with
    // it: lost, unacknowledged.
    nats.signal("STOP");
    let lost = sink.apply_owned(&records[3..4]).await.unwrap_err();
    assert!(lost.error().is_retryable(), "{lost}");
    nats.kill();
    nats.restart();
    // Sequence 5 landed meanwhile, as the sink's publish in flight after
    // it would.
    publish_as_writer(
        &nats.url,
        "default",
        5,
        Some(4),
        records[4].bytes(),
        Some(sink.writer()),
    )
    .await;
    // The delivery engine retries from 4.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = sink.apply_owned(&records[3..]).await {
        assert!(std::time::Instant::now() < deadline, "never recovered: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held: Vec<u64> = stored(&nats.url, DEFAULT_STREAM, "default")
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(held, [1, 2, 3, 5, 4, 6], "every sequence once, 4 late");
    // A replica fed from the bus gets them in order.
    let replica = omnirelay_replication_testkit::FaultySink::new();
    let mut source = crate::source::source(&nats, "replica", &replica).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while replica.sequences().len() < 6 {
        assert!(std::time::Instant::now() < deadline, "the replica stalled");
        source.poll().await.unwrap();
    }
    assert_eq!(replica.sequences(), [1, 2, 3, 4, 5, 6]);
}

/// A publish the server refuses while a later one, already sent, is
/// stored: the sink reports only what came before the refused one as
/// applied, so the retry sends it again instead of counting it done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_refused_publish_is_not_counted_applied_because_a_later_one_was() {
    use omnirelay_replication::{EventKind, OwnedRecord, RecordHeader, Timestamp};
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    // The stream refuses messages over 600 bytes (the server takes 1 MiB).
    create_default_stream(
        &nats.url,
        async_nats::jetstream::stream::Config {
            max_message_size: 600,
            ..Default::default()
        },
    )
    .await;
    let stream = StreamId::default();
    let mut records: Vec<_> = (1..=6)
        .map(|s| record(&stream, s, Encoding::JSON_V1))
        .collect();
    records[3] = OwnedRecord::new(
        stream.clone(),
        RecordHeader {
            sequence: 4,
            timestamp: Timestamp::MIN,
            kind: EventKind {
                code: 1,
                name: "Enqueue",
            },
            peer: None,
        },
        Encoding::JSON_V1,
        bytes::Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(1000))),
    );
    // Two in flight: 4 and 5 are sent together, 4 refused, 5 stored.
    let sink = NatsSink::connect(
        std::slice::from_ref(&nats.url),
        NatsSinkOptions {
            max_outstanding_acks: 2,
            ..NatsSinkOptions::new()
        },
    )
    .await
    .unwrap();
    let refused = sink.apply_owned(&records).await.unwrap_err();
    assert_eq!(
        refused.applied_through_sequence(),
        Some(3),
        "only what came before 4: {refused}"
    );
    assert_eq!(sink.checkpoint(&stream).await.unwrap(), Some(3));
    // A message the stream refuses for its size is refused for good: a
    // dead letter, not a retry.
    assert_eq!(
        refused.kind(),
        omnirelay_replication::ErrorKind::Rejected,
        "{refused}"
    );
}

/// The same loss, but the sink stopped before its retry: restarted, it
/// finds the hole before the stream's last message and publishes again
/// from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_restarted_sink_publishes_again_from_a_hole_a_lost_publish_left() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let stream = StreamId::default();
    let records: Vec<_> = (1..=420)
        .map(|s| record(&stream, s, Encoding::JSON_V1))
        .collect();
    let first = NatsSink::connect(std::slice::from_ref(&nats.url), NatsSinkOptions::new())
        .await
        .unwrap();
    first.apply_owned(&records[..400]).await.unwrap();
    // 401 was lost in flight, 402..=405 (sent after it) landed; then the
    // sink died. The hole is far back among the messages read back.
    for sequence in 402..=405u64 {
        let at = usize::try_from(sequence).unwrap() - 1;
        publish_as_sink(
            &nats.url,
            "default",
            sequence,
            Some(sequence - 1),
            records[at].bytes(),
        )
        .await;
    }
    let restarted = NatsSink::connect(std::slice::from_ref(&nats.url), NatsSinkOptions::new())
        .await
        .unwrap();
    assert_eq!(
        restarted.checkpoint(&stream).await.unwrap(),
        Some(400),
        "what the stream holds without a hole"
    );
    restarted.apply_owned(&records[400..]).await.unwrap();
    assert_eq!(restarted.duplicates(), 4, "402..=405 were there");
    let held: Vec<u64> = stored(&nats.url, DEFAULT_STREAM, "default")
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let mut expected: Vec<u64> = (1..=400).collect();
    expected.extend([402, 403, 404, 405, 401]);
    expected.extend(406..=420);
    assert_eq!(held, expected);
    // Without a hole, the last message is the mark, as before.
    let again = NatsSink::connect(std::slice::from_ref(&nats.url), NatsSinkOptions::new())
        .await
        .unwrap();
    assert_eq!(again.checkpoint(&stream).await.unwrap(), Some(420));
}

/// Another node publishing the same stream id to the subject while this
/// sink was failing: the mark the sink reads again after the failure is
/// the other writer's newest message, past what this sink had
/// acknowledged. The sink refuses it instead of taking the other node's
/// records for its own and skipping its records up to there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_sink_refuses_a_mark_another_writer_moved_while_it_failed() {
    let (refused, held) = mark_moved_while_failing(Some("node-other")).await;
    let refused = refused.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Config, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("published by another writer (node-other)"),
        "{refused}"
    );
    assert_eq!(
        held,
        (1..=9).collect::<Vec<_>>(),
        "the other node's are there"
    );
}

/// The same with the other sink writing as this one's node (a standby
/// that took its primary's name, publishing the primary's log): the same
/// writer, so the mark it moved is this log's, and the sink carries on
/// after it instead of refusing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_sink_takes_a_mark_its_own_node_moved_while_it_failed() {
    let (retried, held) = mark_moved_while_failing(None).await;
    retried.unwrap();
    assert_eq!(held, (1..=9).collect::<Vec<_>>(), "each once");
}

/// A sink writing as `node-a` publishes 1..=3, fails on 4..=5; a second
/// sink writing as `other` (`None`: as `node-a` too) reads the mark and
/// publishes on to 9; the first sink retries 4..=5: its outcome, and the
/// sequences the subject holds.
async fn mark_moved_while_failing(
    other: Option<&str>,
) -> (Result<(), omnirelay_replication::SinkError>, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let stream = StreamId::new("shared").unwrap();
    let options = |writer: &str| NatsSinkOptions {
        ack_timeout: Duration::from_millis(500),
        writer: Some(writer.to_owned()),
        ..NatsSinkOptions::new()
    };
    let records = |range: std::ops::RangeInclusive<u64>| -> Vec<OwnedRecord> {
        range
            .map(|s| record(&stream, s, Encoding::JSON_V1))
            .collect()
    };
    let ours = NatsSink::connect(std::slice::from_ref(&nats.url), options("node-a"))
        .await
        .unwrap();
    assert_eq!(ours.writer(), "node-a");
    ours.apply_owned(&records(1..=3)).await.unwrap();
    nats.signal("STOP");
    let failed = ours.apply_owned(&records(4..=5)).await.unwrap_err();
    nats.signal("CONT");
    assert!(failed.error().is_retryable(), "{failed}");
    // The other sink, reading the subject's mark, publishes on.
    let theirs = NatsSink::connect(
        std::slice::from_ref(&nats.url),
        options(other.unwrap_or("node-a")),
    )
    .await
    .unwrap();
    let mark = theirs.checkpoint(&stream).await.unwrap().unwrap();
    theirs.apply_owned(&records(mark + 1..=9)).await.unwrap();
    let retried = ours.apply_owned(&records(4..=5)).await;
    let held = stored(&nats.url, DEFAULT_STREAM, "shared")
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    (retried, held)
}

/// A retried publish whose first copy the stream's limits already removed:
/// JetStream still calls it a duplicate, and with nothing left to compare
/// with, the sink counts it as the retry it is (not an error retried until
/// the duplicate window passes and the message is stored twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_duplicate_whose_first_copy_is_gone_counts_as_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    create_default_stream(
        &nats.url,
        async_nats::jetstream::stream::Config {
            max_messages: 2,
            ..Default::default()
        },
    )
    .await;
    let options = NatsSinkOptions {
        create: None,
        ..NatsSinkOptions::new()
    };
    let stream = StreamId::new("limited").unwrap();
    let batch: Vec<_> = (1..=4)
        .map(|s| record(&stream, s, Encoding::JSON_V1))
        .collect();
    let first = NatsSink::connect(std::slice::from_ref(&nats.url), options.clone())
        .await
        .unwrap();
    let stale = NatsSink::connect(std::slice::from_ref(&nats.url), options)
        .await
        .unwrap();
    assert_eq!(stale.checkpoint(&stream).await.unwrap(), None);
    first.apply_owned(&batch).await.unwrap();
    let held = stored(&nats.url, DEFAULT_STREAM, "limited").await;
    assert_eq!(held.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [3, 4]);
    stale.apply_owned(&batch[..1]).await.unwrap();
    assert_eq!(stale.duplicates(), 1);
    let held = stored(&nats.url, DEFAULT_STREAM, "limited").await;
    assert_eq!(held.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [3, 4]);
}
