//! Resume, create-only writes, the reader, outages under load, and
//! configuration.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;
use omnirelay_replication::{
    BatchOptions, DurableOptions, DurableReplicator, Encoding, ErrorKind, MemorySink, OwnedRecord,
    ReplicatorExt as _, RetryPolicy, Sink, SinkExt, SinkOptions, StreamId,
};
use omnirelay_replication_objectstore::{
    CHECKPOINT_NAME, Layout, ObjectReader, ObjectSinkOptions, ObjectStoreSink,
};
use omnirelay_replication_testkit::conformance::record;
use omnirelay_resourcelease::{
    ResourceLeaseCodec, ResourceLeaseReplicationEvent, ResourceLeaseReplicationEventType, json,
};

use crate::conformance::stored;
use crate::support::{Moto, local};

fn records(stream: &StreamId, range: std::ops::RangeInclusive<u64>) -> Vec<OwnedRecord> {
    range
        .map(|s| record(stream, s, Encoding::JSON_V1))
        .collect()
}

/// The same sequences with other bodies: a write that overwrote would show.
fn impostors(stream: &StreamId, range: std::ops::RangeInclusive<u64>) -> Vec<OwnedRecord> {
    range
        .map(|s| {
            let real = record(stream, s, Encoding::JSON_V1);
            OwnedRecord::new(
                stream.clone(),
                real.header().clone(),
                Encoding::JSON_V1,
                Bytes::from(format!(r#"{{"sequenceNumber":{s},"impostor":true}}"#)),
            )
        })
        .collect()
}

async fn default_prefix_restart_overwrites_nothing(
    store: Arc<dyn ObjectStore>,
    options: ObjectSinkOptions,
) {
    assert_eq!(options.prefix, "resourcelease/");
    let stream = StreamId::default();
    let first = ObjectStoreSink::new(store.clone(), options.clone()).unwrap();
    first.apply_owned(&records(&stream, 1..=5)).await.unwrap();
    let before = stored(store.as_ref(), "resourcelease/").await;
    assert_eq!(before.len(), 5);

    // A restart resumes after 5 (the reference restarted at 1 and
    // overwrote every object).
    let restarted = ObjectStoreSink::new(store.clone(), options.clone()).unwrap();
    assert_eq!(restarted.checkpoint(&stream).await.unwrap(), Some(5));
    restarted
        .apply_owned(&impostors(&stream, 1..=5))
        .await
        .unwrap();
    let mut batch = impostors(&stream, 4..=5);
    batch.extend(records(&stream, 6..=7));
    restarted.apply_owned(&batch).await.unwrap();
    let after = stored(store.as_ref(), "resourcelease/").await;
    assert_eq!(&after[..5], &before[..], "objects 1..=5 are untouched");
    assert_eq!(
        after.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7]
    );

    // Without the checkpoint object (a prefix the reference wrote), the
    // highest key is the mark.
    store
        .delete(&ObjectPath::from(format!(
            "resourcelease/{CHECKPOINT_NAME}"
        )))
        .await
        .unwrap();
    let reference = ObjectStoreSink::new(store.clone(), options.clone()).unwrap();
    assert_eq!(reference.checkpoint(&stream).await.unwrap(), Some(7));
    // Even a sink misled into writing again from 1 (a checkpoint object
    // saying 0) cannot overwrite: writes are create-only.
    store
        .put(
            &ObjectPath::from(format!("resourcelease/{CHECKPOINT_NAME}")),
            r#"{"stream":"default","sequence":0,"updated_at":""}"#.into(),
        )
        .await
        .unwrap();
    let misled = ObjectStoreSink::new(store.clone(), options).unwrap();
    assert_eq!(misled.checkpoint(&stream).await.unwrap(), None);
    // Other events under sequences the prefix holds (another log's) are
    // refused, not taken for written: that lost them in silence.
    let err = misled
        .apply_owned(&impostors(&stream, 1..=7))
        .await
        .unwrap_err();
    assert_eq!(err.error().kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string().contains("already holds other events"),
        "{err}"
    );
    assert_eq!(err.applied_through_sequence(), None);
    // The same events again (a retry, a standby writing the same stream)
    // are written already.
    misled.apply_owned(&records(&stream, 1..=8)).await.unwrap();
    let last = stored(store.as_ref(), "resourcelease/").await;
    assert_eq!(&last[..7], &after[..], "nothing was overwritten");
    assert_eq!(last.len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_the_default_prefix_resumes_and_overwrites_nothing_locally() {
    let dir = tempfile::tempdir().unwrap();
    let (store, options) = local(dir.path(), Layout::PerEvent);
    default_prefix_restart_overwrites_nothing(store, options).await;
    // The reference's file layout: one file per event under the prefix.
    assert!(
        dir.path()
            .join("resourcelease/00000000000000000007.json")
            .is_file()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_restart_with_the_default_prefix_resumes_and_overwrites_nothing_on_s3() {
    let moto = Moto::start();
    moto.create_bucket("resume");
    let store = moto.store("resume", Duration::from_secs(5));
    default_prefix_restart_overwrites_nothing(store.clone(), ObjectSinkOptions::new()).await;
    let head = store
        .head(&ObjectPath::from("resourcelease/00000000000000000003.json"))
        .await
        .unwrap();
    assert!(head.size > 0);
    let got = store
        .get(&ObjectPath::from("resourcelease/00000000000000000003.json"))
        .await
        .unwrap();
    assert_eq!(
        got.attributes
            .get(&object_store::Attribute::ContentType)
            .map(|v| v.as_ref()),
        Some("application/json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_reads_events_and_segments_from_any_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (store, per_event) = local(dir.path(), Layout::PerEvent);
    let stream = StreamId::new("users").unwrap();
    assert_eq!(per_event.prefix_for("users"), "resourcelease/users/");
    ObjectStoreSink::new(store.clone(), per_event.clone())
        .unwrap()
        .apply_owned(&records(&stream, 1..=4))
        .await
        .unwrap();
    let segments = ObjectSinkOptions {
        layout: Layout::Segment,
        ..per_event
    };
    let sink = ObjectStoreSink::new(store.clone(), segments).unwrap();
    sink.apply_owned(&records(&stream, 3..=9)).await.unwrap();
    sink.apply_owned(&records(&stream, 10..=12)).await.unwrap();
    let reader = ObjectReader::new(store.clone(), "resourcelease/users/").unwrap();
    let read: Vec<(u64, Bytes)> = reader
        .events_from(3)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        read.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (3..=12).collect::<Vec<_>>()
    );
    let expected = records(&stream, 3..=12);
    for ((_, bytes), record) in read.iter().zip(&expected) {
        assert_eq!(&bytes[..], &record.bytes()[..]);
    }
    // The default stream's prefix does not see the stream nested under it.
    let default = ObjectReader::new(store, "resourcelease/").unwrap();
    assert!(default.keys().await.unwrap().is_empty());
}

/// A durable replicator in `dir` delivering to an object-store sink on
/// `store` (in `batch`es, retried every 50 to 200 ms) and to a memory sink.
async fn s3_and_memory(
    dir: &std::path::Path,
    store: Arc<dyn ObjectStore>,
    batch: BatchOptions,
) -> (DurableReplicator<ResourceLeaseReplicationEvent>, MemorySink) {
    let replicator =
        DurableReplicator::open(Arc::new(ResourceLeaseCodec), DurableOptions::new(dir))
            .await
            .unwrap();
    let retry = RetryPolicy {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        ..RetryPolicy::default()
    };
    replicator
        .add_sink(
            "s3",
            ObjectStoreSink::new(store, ObjectSinkOptions::new())
                .unwrap()
                .shared(),
            SinkOptions {
                retry,
                batch,
                ..SinkOptions::default()
            },
        )
        .await
        .unwrap();
    let memory = MemorySink::new();
    replicator
        .add_sink("memory", memory.clone().shared(), SinkOptions::default())
        .await
        .unwrap();
    (replicator, memory)
}

/// A server refusing the sink's credentials holds the sink back,
/// retrying: the node publishes, its other sinks deliver, nothing goes to
/// the dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_retried_not_dead_lettered() {
    // The bucket's creation is the one request taken unchecked.
    let moto = Moto::start_checking_credentials_after(1);
    moto.create_bucket("guarded");
    let store = moto.store("guarded", Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    let (replicator, memory) = s3_and_memory(dir.path(), store, BatchOptions::default()).await;
    for _ in 0..3 {
        let event =
            ResourceLeaseReplicationEvent::new(ResourceLeaseReplicationEventType::Heartbeat);
        replicator.publish(event).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let s3 = loop {
        let snapshots = replicator.sink_snapshots().await;
        let s3 = snapshots.into_iter().find(|s| s.sink == "s3").unwrap();
        if s3.retries >= 3 && memory.len() == 3 {
            break s3;
        }
        assert!(std::time::Instant::now() < deadline, "{s3:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((s3.dead_lettered, s3.checkpoint), (0, 0), "{s3:?}");
    let error = s3.last_error.unwrap_or_default();
    assert!(
        error.starts_with("unavailable") && error.contains("403 Forbidden"),
        "{error}"
    );
    replicator.close().await.unwrap();
}

/// Publishes resource-lease events through a durable replicator to an S3
/// sink and a memory sink; stops the S3 server mid-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_an_unresponsive_s3_server_stalls_only_its_sink_and_loses_nothing() {
    let moto = Moto::start();
    moto.create_bucket("events");
    let store = moto.store("events", Duration::from_millis(500));
    let dir = tempfile::tempdir().unwrap();
    let batch = BatchOptions {
        max_events: 64,
        ..BatchOptions::default()
    };
    let (replicator, memory) = s3_and_memory(dir.path(), store.clone(), batch).await;
    let publish = |n: usize| {
        let replicator = &replicator;
        async move {
            for i in 0..n {
                let mut event = ResourceLeaseReplicationEvent::new(
                    ResourceLeaseReplicationEventType::Heartbeat,
                );
                event.peer_id = Some(format!("worker-{}", i % 3));
                replicator.publish(event).await.unwrap();
            }
        }
    };
    publish(100).await;
    moto.signal("STOP");
    publish(100).await;
    // The memory sink keeps up while S3 is stopped.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while memory.len() < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the memory sink stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its own sink retries meanwhile.
    let retries = || async {
        replicator
            .sink_snapshots()
            .await
            .into_iter()
            .find(|s| s.sink == "s3")
            .unwrap()
            .retries
    };
    while retries().await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the s3 sink never retried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    moto.signal("CONT");
    publish(50).await;
    tokio::time::timeout(Duration::from_secs(60), replicator.wait_caught_up())
        .await
        .expect("the s3 sink catches up");
    replicator.close().await.unwrap();

    let held = stored(store.as_ref(), "resourcelease/").await;
    assert_eq!(
        held.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=250).collect::<Vec<_>>(),
        "every event exactly once"
    );
    for (sequence, body) in &held {
        let event = json::decode(body).unwrap();
        assert_eq!(event.sequence_number as u64, *sequence);
    }
    assert_eq!(memory.len(), 250);
}

fn validate(text: &str) -> Result<(), String> {
    omnirelay_replication_testkit::config::check(text).map(|_| ())
}

#[test]
fn configuration_refuses_what_cannot_work() {
    validate(
        r#"
[replication.sinks.archive]
type = "object_store"
[replication.sinks.archive.settings]
backend = "s3"
bucket = "b"
endpoint = "http://127.0.0.1:9000"
access_key_id = "a"
secret_access_key = "s"
layout = "segment"
"#,
    )
    .unwrap();
    for (settings, at, says) in [
        (r#"backend = "s3""#, "settings.bucket", "is required"),
        (
            r#"prefix = "/abs/""#,
            "settings.prefix",
            "must not start with '/'",
        ),
        (r#"prefix = "a/../b/""#, "settings.prefix", "'..'"),
        (
            r#"endpoint = "127.0.0.1:9000""#,
            "settings.endpoint",
            "http:// or https://",
        ),
        (
            r#"access_key_id = "a""#,
            "settings.secret_access_key",
            "go together",
        ),
        (r#"layout = "tar""#, "settings.layout", "unknown variant"),
        (
            "[replication.sinks.archive.settings.prefixes]\nusers = \"x/\"\norders = \"x/\"",
            "settings.prefixes",
            "would share the prefix",
        ),
    ] {
        let text = format!(
            "[replication.sinks.archive]\ntype = \"object_store\"\n[replication.sinks.archive.settings]\n{settings}\n"
        );
        let err = validate(&text).unwrap_err();
        assert!(
            err.contains(&format!("replication.sinks.archive.{at}")) && err.contains(says),
            "{settings}: {err}"
        );
    }
    let err = validate(
        r#"
[replication.sinks.one]
type = "object_store"
[replication.sinks.two]
type = "object_store"
"#,
    )
    .unwrap_err();
    assert!(
        err.contains("would both write the objects under objects/resourcelease/"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_checkpoint_object_falls_back_to_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (store, options) = local(dir.path(), Layout::Segment);
    let stream = StreamId::default();
    ObjectStoreSink::new(store.clone(), options.clone())
        .unwrap()
        .apply_owned(&records(&stream, 1..=6))
        .await
        .unwrap();
    // A crash left a torn checkpoint object.
    std::fs::write(
        dir.path().join("resourcelease").join(CHECKPOINT_NAME),
        b"{\"stream\":\"def",
    )
    .unwrap();
    let restarted = ObjectStoreSink::new(store.clone(), options).unwrap();
    assert_eq!(restarted.checkpoint(&stream).await.unwrap(), Some(6));
    restarted
        .apply_owned(&records(&stream, 5..=8))
        .await
        .unwrap();
    assert_eq!(
        stored(store.as_ref(), "resourcelease/")
            .await
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_configured_with_one_prefix_lose_nothing_in_silence() {
    use omnirelay_replication::WireVersion;
    use omnirelay_replication::config::{self, SinkRegistry};
    use omnirelay_replication::delivery::DeadLetterLog;

    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("objects");
    let node = |name: &str| {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "data_dir = \"{}\"\n[replication.log]\ndurability = \"none\"\n[replication.sinks.archive]\ntype = \"object_store\"\n[replication.sinks.archive.settings]\nroot = \"{}\"\n",
                dir.path().join(name).display(),
                objects.display()
            ),
        )
        .unwrap();
        async move {
            config::load_with(Some(&file), &[])
                .unwrap()
                .validate(&SinkRegistry::discovered(), WireVersion::V1)
                .unwrap()
                .build(Arc::new(ResourceLeaseCodec))
                .await
                .unwrap()
        }
    };
    // Each publishes three events with its own peer id, interleaved.
    async fn publish(replicator: &DurableReplicator<ResourceLeaseReplicationEvent>, peer: &str) {
        let mut event =
            ResourceLeaseReplicationEvent::new(ResourceLeaseReplicationEventType::Heartbeat);
        event.peer_id = Some(peer.to_owned());
        for _ in 0..3 {
            replicator.publish(event.clone()).await.unwrap();
        }
        replicator.wait_caught_up().await;
    }
    let a = node("a").await;
    let b = node("b").await;
    publish(&a, "a").await;
    publish(&b, "b").await;
    publish(&a, "a").await;
    publish(&b, "b").await;
    a.close().await.unwrap();
    b.close().await.unwrap();

    // Every event of each node is in the prefix, or in that node's dead
    // letters: none taken for another node's object.
    let store: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&objects).unwrap());
    let held = stored(store.as_ref(), "resourcelease/").await;
    for name in ["a", "b"] {
        let letters = DeadLetterLog::read_all(&DeadLetterLog::path(
            &dir.path().join(name).join("deadletter"),
            "default",
            "archive",
        ))
        .unwrap();
        let archived = held
            .iter()
            .filter(|(_, body)| {
                serde_json::from_slice::<serde_json::Value>(body).unwrap()["peerId"] == name
            })
            .count();
        assert_eq!(
            archived + letters.len(),
            6,
            "node {name}: {archived} archived, {} dead-lettered",
            letters.len()
        );
        assert!(
            letters.iter().all(|l| l.error_kind == "config"),
            "{letters:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redriven_events_behind_the_checkpoint_fill_their_gaps_in_both_layouts() {
    for layout in [Layout::PerEvent, Layout::Segment] {
        let dir = tempfile::tempdir().unwrap();
        let (store, options) = local(dir.path(), layout);
        let stream = StreamId::default();
        let sink = ObjectStoreSink::new(store.clone(), options).unwrap();
        // 3, 6 and 7 went to the dead letters; the sink went on.
        for range in [1..=2, 4..=5, 8..=9] {
            sink.apply_owned(&records(&stream, range)).await.unwrap();
        }
        let reader = ObjectReader::new(store.clone(), "resourcelease/").unwrap();
        let read = || async {
            let read: Vec<(u64, Bytes)> = reader
                .events_from(1)
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            read.into_iter().map(|(s, _)| s).collect::<Vec<u64>>()
        };
        // `apply` takes them for re-sends.
        sink.apply_owned(&records(&stream, 3..=3)).await.unwrap();
        assert_eq!(read().await, [1, 2, 4, 5, 8, 9], "{layout:?}");
        let fill = |range| {
            let (sink, stream) = (sink.clone(), stream.clone());
            async move {
                let owned = records(&stream, range);
                let borrowed: Vec<_> = owned.iter().map(OwnedRecord::as_record).collect();
                sink.fill_gaps(&borrowed).await
            }
        };
        let gaps: Vec<OwnedRecord> = [3, 6, 7]
            .iter()
            .map(|&s| record(&stream, s, Encoding::JSON_V1))
            .collect();
        let borrowed: Vec<_> = gaps.iter().map(OwnedRecord::as_record).collect();
        sink.fill_gaps(&borrowed).await.unwrap();
        assert_eq!(read().await, (1..=9).collect::<Vec<_>>(), "{layout:?}");
        // Again, and with held events around them: nothing twice.
        fill(2..=7).await.unwrap();
        assert_eq!(read().await, (1..=9).collect::<Vec<_>>(), "{layout:?}");
        assert_eq!(
            sink.checkpoint(&stream).await.unwrap(),
            Some(9),
            "{layout:?}"
        );
        // Beyond the checkpoint, the rest is applied as usual.
        fill(9..=10).await.unwrap();
        assert_eq!(read().await, (1..=10).collect::<Vec<_>>(), "{layout:?}");
    }
}
