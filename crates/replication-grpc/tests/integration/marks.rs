//! The receiver's marks checkpoint: every sender's high-water mark
//! survives a restart even after retention deleted the segments that held
//! the sender's events, a restart reads only the log after the checkpoint,
//! and a checkpoint that cannot be trusted is ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use omnirelay_replication::{
    Durability, DurableOptions, DurableReplicator, LogOptions, MemorySink, Retention, SinkExt,
    SinkOptions, StreamId,
};
use omnirelay_replication_grpc::{Mark, Received, Receiver};
use omnirelay_resourcelease::ResourceLeaseReplicationEventType as Type;
use omnirelay_resourcelease::{ResourceLeaseCodec, ResourceLeaseReplicationEvent};

type Replicator = DurableReplicator<ResourceLeaseReplicationEvent>;

fn event(sequence: u64) -> ResourceLeaseReplicationEvent {
    let mut e = ResourceLeaseReplicationEvent::new(Type::Heartbeat);
    e.sequence_number = i64::try_from(sequence).unwrap();
    e
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("receiver").join("default.marks.json")
}

/// The checkpoint's `through`, once the file exists.
fn checkpoint_through(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(checkpoint_path(dir)).ok()?;
    let file: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    file["through"].as_u64()
}

/// Waits until the checkpoint stands at `through`.
pub(crate) async fn checkpointed(dir: &Path, through: u64) {
    for _ in 0..200 {
        if checkpoint_through(dir) == Some(through) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the checkpoint never reached {through}: {:?}",
        checkpoint_through(dir)
    );
}

/// The first sequence the receiver's log still holds.
fn oldest_held(dir: &Path) -> u64 {
    omnirelay_replication_testkit::oldest_record(dir, &StreamId::default())
}

async fn open(dir: &Path, log: LogOptions) -> (Arc<Replicator>, Receiver) {
    let replicator = Arc::new(
        DurableReplicator::open(
            Arc::new(ResourceLeaseCodec),
            DurableOptions {
                log,
                ..DurableOptions::new(dir)
            },
        )
        .await
        .unwrap(),
    );
    replicator
        .add_sink("memory", MemorySink::new().shared(), SinkOptions::default())
        .await
        .unwrap();
    let receiver = Receiver::open(replicator.clone(), StreamId::default())
        .await
        .unwrap();
    (replicator, receiver)
}

async fn close(replicator: Arc<Replicator>, receiver: Receiver) {
    drop(receiver);
    replicator.close().await.unwrap();
}

fn marks(pairs: &[(&str, u64, u64)]) -> HashMap<String, Mark> {
    pairs
        .iter()
        .map(|&(sender, epoch, sequence)| (sender.to_owned(), Mark { epoch, sequence }))
        .collect()
}

async fn appended(receiver: &Receiver, sender: &str, sequence: u64) -> bool {
    matches!(
        receiver
            .receive(sender, None, event(sequence))
            .await
            .unwrap(),
        Received::Appended(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_whose_events_retention_deleted_is_remembered_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments; every sealed segment the sink consumed may go.
    let log = LogOptions {
        durability: Durability::None,
        segment_max_bytes: 2_000,
        retention: Retention {
            delete_consumed: true,
            max_bytes: Some(1),
            ..Retention::default()
        },
        ..LogOptions::default()
    };
    let (replicator, receiver) = open(dir.path(), log.clone()).await;
    for sequence in 1..=5 {
        assert!(appended(&receiver, "early", sequence).await);
    }
    // Another sender fills segment after segment.
    let mut busy = 0;
    while oldest_held(dir.path()) <= 5 {
        assert!(busy < 5_000, "retention never deleted the early segments");
        for _ in 0..50 {
            busy += 1;
            assert!(appended(&receiver, "busy", busy).await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    close(replicator, receiver).await;

    let (replicator, receiver) = open(dir.path(), log).await;
    assert_eq!(
        receiver.marks().await,
        marks(&[("early", 1, 5), ("busy", 1, busy)])
    );
    assert!(
        !appended(&receiver, "early", 5).await,
        "a re-sent event of a sender only the checkpoint remembers is a duplicate"
    );
    assert!(appended(&receiver, "early", 6).await);
    close(replicator, receiver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_folds_the_log_after_the_checkpoint_and_ignores_one_it_cannot_trust() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogOptions::default();
    let (replicator, receiver) = open(dir.path(), log.clone()).await;
    for sequence in 1..=3 {
        assert!(appended(&receiver, "a", sequence).await);
    }
    for sequence in 1..=2 {
        assert!(appended(&receiver, "b", sequence).await);
    }
    checkpointed(dir.path(), 5).await;
    close(replicator, receiver).await;
    let from_the_log = marks(&[("a", 1, 3), ("b", 1, 2)]);

    // Only the log after the checkpoint is read: what the checkpoint says
    // of the records before it stands (here a sender the log never saw,
    // and none of `a`, whose events are all before it).
    std::fs::write(
        checkpoint_path(dir.path()),
        r#"{"stream":"default","through":4,"senders":{"ghost":{"epoch":2,"sequence":9}}}"#,
    )
    .unwrap();
    let (replicator, receiver) = open(dir.path(), log.clone()).await;
    assert_eq!(
        receiver.marks().await,
        marks(&[("ghost", 2, 9), ("b", 1, 2)])
    );
    close(replicator, receiver).await;

    // Damaged, another stream's, or ahead of the log (a machine crash took
    // records it had folded): the marks come from the whole log.
    for untrusted in [
        "{\"stream\":\"default\",\"thr".to_owned(),
        r#"{"stream":"other","through":5,"senders":{}}"#.to_owned(),
        r#"{"stream":"default","through":6,"senders":{"ghost":{"epoch":2,"sequence":9}}}"#
            .to_owned(),
    ] {
        std::fs::write(checkpoint_path(dir.path()), &untrusted).unwrap();
        let (replicator, receiver) = open(dir.path(), log.clone()).await;
        assert_eq!(receiver.marks().await, from_the_log, "{untrusted}");
        assert!(!appended(&receiver, "a", 3).await, "{untrusted}");
        close(replicator, receiver).await;
    }
}

/// A record damaged on disk after the marks checkpoint (here in the
/// newest segment, with records after it) does not keep the receiver from
/// starting — before, rebuilding the marks stopped at it and the node
/// could not start — its marks come from every record the log still
/// holds, and a re-sent event below them is still a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_reads_the_marks_past_records_lost_to_damage() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogOptions::default();
    let (replicator, receiver) = open(dir.path(), log.clone()).await;
    assert!(appended(&receiver, "a", 1).await);
    checkpointed(dir.path(), 1).await;
    for sequence in 2..=4 {
        assert!(appended(&receiver, "a", sequence).await);
    }
    assert!(appended(&receiver, "b", 1).await);
    close(replicator, receiver).await;
    assert_eq!(
        checkpoint_through(dir.path()),
        Some(1),
        "not past the damage"
    );
    let segment = omnirelay_replication_testkit::segments(dir.path(), &StreamId::default())
        .pop()
        .unwrap();
    // `a`'s event 2, the log's sequence 2.
    omnirelay_replication_testkit::damage_record(&segment, 2);

    let (replicator, receiver) = open(dir.path(), log.clone()).await;
    assert_eq!(receiver.marks().await, marks(&[("a", 1, 4), ("b", 1, 1)]));
    assert!(!appended(&receiver, "a", 4).await, "a duplicate still");
    assert!(appended(&receiver, "a", 5).await);
    close(replicator, receiver).await;
}
