//! The durable replicator: delivery isolation, dead letters, backpressure,
//! retry schedules, restarts and deterministic replay.

use std::sync::Arc;
use std::time::Duration;

use omnirelay_replication::delivery::{CheckpointStore, DeadLetterLog, FileCheckpointStore};
use omnirelay_replication::{
    Ack, BatchOptions, DeliveryMode, Durability, DurableOptions, DurableReplicator, Encoding,
    ErrorKind, Format, LogOptions, MemorySink, Replay, Replayed, RetryPolicy, SinkExt, SinkOptions,
    SinkState, StartFrom, StreamId, WhenFull, WireVersion,
};
use omnirelay_replication_testkit::{FaultySink, Note, NoteCodec};

use crate::support::fixed_clock;

fn options(dir: &std::path::Path, durability: Durability) -> DurableOptions {
    DurableOptions {
        log: LogOptions {
            durability,
            ..LogOptions::default()
        },
        clock: fixed_clock,
        ..DurableOptions::new(dir)
    }
}

async fn open(dir: &std::path::Path, durability: Durability) -> DurableReplicator<Note> {
    DurableReplicator::open(Arc::new(NoteCodec::default()), options(dir, durability))
        .await
        .unwrap()
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

fn sink_options() -> SinkOptions {
    SinkOptions {
        retry: fast_retry(),
        ..SinkOptions::default()
    }
}

/// A required sink's options with a lag budget.
fn required(max_lag_events: u64, when_full: WhenFull) -> SinkOptions {
    SinkOptions {
        mode: DeliveryMode::Required {
            max_lag_events,
            when_full,
        },
        ..sink_options()
    }
}

async fn publish(replicator: &DurableReplicator<Note>, count: usize) -> Vec<u64> {
    let mut pending = Vec::new();
    for i in 0..count {
        pending.push(
            replicator
                .submit(&StreamId::default(), Note::new(&format!("n{i}")))
                .await
                .unwrap(),
        );
    }
    let mut sequences = Vec::new();
    for p in pending {
        sequences.push(p.durable().await.unwrap().sequence);
    }
    sequences
}

/// Waits (polling the snapshots) until `sink` has applied through `through`.
async fn wait_for(replicator: &DurableReplicator<Note>, sink: &str, through: u64) {
    for _ in 0..1000 {
        let snap = replicator.sink_snapshots().await;
        if snap
            .iter()
            .any(|s| s.sink == sink && s.checkpoint >= through)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "sink {sink} never reached {through}: {:?}",
        replicator.sink_snapshots().await
    );
}

#[tokio::test]
async fn publish_is_gap_free_acknowledged_and_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::Fsync).await;
    let sink = MemorySink::new();
    replicator
        .add_sink("memory", sink.clone().shared(), sink_options())
        .await
        .unwrap();
    assert_eq!(publish(&replicator, 50).await, (1..=50).collect::<Vec<_>>());
    replicator.wait_caught_up().await;
    assert_eq!(sink.sequences(), (1..=50).collect::<Vec<_>>());
    let texts: Vec<_> = sink
        .records()
        .iter()
        .map(|r| NoteCodec::text_of(r.bytes()))
        .collect();
    assert_eq!(texts[0], "n0");
    assert_eq!(sink.records()[0].encoding(), Encoding::JSON_V1);
    let streams = replicator.stream_snapshots().await;
    assert_eq!(
        (
            streams[0].stream.as_str(),
            streams[0].last_sequence,
            streams[0].acked
        ),
        ("default", 50, 50)
    );
    replicator.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_sink_never_stalls_the_others_and_catches_up_without_loss_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::Fsync).await;
    let healthy: Vec<_> = (0..3).map(|_| FaultySink::new()).collect();
    let flaky = FaultySink::new();
    for (i, sink) in healthy.iter().enumerate() {
        replicator
            .add_sink(
                &format!("healthy-{i}"),
                sink.clone().shared(),
                sink_options(),
            )
            .await
            .unwrap();
    }
    replicator
        .add_sink("flaky", flaky.clone().shared(), sink_options())
        .await
        .unwrap();

    flaky.fail_with(ErrorKind::Unavailable);
    publish(&replicator, 300).await;
    // During the outage the healthy sinks get everything...
    for i in 0..3 {
        wait_for(&replicator, &format!("healthy-{i}"), 300).await;
    }
    let snapshot = replicator.sink_snapshots().await;
    let flaky_snapshot = snapshot.iter().find(|s| s.sink == "flaky").unwrap();
    assert_eq!(
        flaky_snapshot.checkpoint, 0,
        "nothing applied during the outage"
    );
    assert!(matches!(
        flaky_snapshot.state,
        SinkState::Retrying | SinkState::Failing
    ));
    assert!(flaky_snapshot.retries > 0);
    assert_eq!(flaky_snapshot.lag_events, 300);
    assert!(
        flaky_snapshot
            .last_error
            .as_deref()
            .unwrap()
            .contains("injected failure")
    );
    // ... and nothing twice.
    for sink in &healthy {
        assert_eq!(sink.sequences(), (1..=300).collect::<Vec<_>>());
    }

    flaky.heal();
    replicator.wait_caught_up().await;
    assert_eq!(
        flaky.sequences(),
        (1..=300).collect::<Vec<_>>(),
        "no loss, no duplicates"
    );
    for sink in &healthy {
        assert_eq!(
            sink.sequences().len(),
            300,
            "healthy sinks were not re-sent anything"
        );
    }
    let snapshot = replicator.sink_snapshots().await;
    assert!(
        snapshot
            .iter()
            .all(|s| s.state == SinkState::Healthy && s.lag_events == 0)
    );
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn a_sink_that_cannot_say_its_checkpoint_at_start_is_retried_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::None).await;
    assert_eq!(publish(&replicator, 8).await, (1..=8).collect::<Vec<_>>());
    let sink = FaultySink::new();
    sink.keep_checkpoint(5);
    sink.fail_with(ErrorKind::Unavailable);
    replicator
        .add_sink("down", sink.clone().shared(), sink_options())
        .await
        .expect("a sink whose backend is down does not stop the replicator");
    for _ in 0..200 {
        let snap = replicator.sink_snapshots().await;
        if snap[0].retries >= 2 {
            assert!(matches!(
                snap[0].state,
                SinkState::Retrying | SinkState::Failing
            ));
            assert!(snap[0].last_error.as_deref().unwrap().contains("injected"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        sink.sequences().is_empty(),
        "nothing is sent before the sink says where it is"
    );
    sink.heal();
    wait_for(&replicator, "down", 8).await;
    assert_eq!(
        sink.sequences(),
        [6, 7, 8],
        "delivery resumes after the sink's own checkpoint"
    );
    // A failure that retrying cannot fix stops the sink's start at once.
    let misconfigured = FaultySink::new();
    misconfigured.keep_checkpoint(0);
    misconfigured.fail_with(ErrorKind::Config);
    let err = replicator
        .add_sink("misconfigured", misconfigured.shared(), sink_options())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let names: Vec<String> = replicator
        .sink_snapshots()
        .await
        .into_iter()
        .map(|s| s.sink)
        .collect();
    assert_eq!(names, ["down"], "a sink that cannot start is not added");
    // Nor does it hold up a stream opened later.
    let other = StreamId::new("other").unwrap();
    omnirelay_replication::Replicator::publish_to(&replicator, &other, Note::new("x"))
        .await
        .unwrap();
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn a_stream_opens_only_once_every_sink_can_start_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::None).await;
    let healthy = MemorySink::new();
    replicator
        .add_sink("healthy", healthy.clone().shared(), sink_options())
        .await
        .unwrap();
    let misconfigured = FaultySink::new();
    misconfigured.keep_checkpoint(0);
    misconfigured.fail_with(ErrorKind::Config);
    replicator
        .add_sink(
            "misconfigured",
            misconfigured.clone().shared(),
            sink_options(),
        )
        .await
        .unwrap();
    // Before, the first publish failed and the stream opened regardless,
    // without the sink, which then never got a thing.
    for _ in 0..3 {
        let err = omnirelay_replication::ReplicatorExt::publish(&replicator, Note::new("x"))
            .await
            .unwrap_err();
        assert_eq!(err.error().kind(), ErrorKind::Config, "{err}");
        // Which sink of which stream, among several.
        assert!(
            err.to_string()
                .contains("sink misconfigured (stream default): "),
            "{err}"
        );
    }
    assert!(replicator.sink_snapshots().await.is_empty());
    misconfigured.heal();
    assert_eq!(publish(&replicator, 4).await, [1, 2, 3, 4]);
    wait_for(&replicator, "misconfigured", 4).await;
    wait_for(&replicator, "healthy", 4).await;
    assert_eq!(misconfigured.sequences(), [1, 2, 3, 4]);
    assert_eq!(healthy.len(), 4);
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn a_permanent_failure_dead_letters_exactly_the_poison_event() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::Fsync).await;
    let sink = FaultySink::new();
    sink.poison(7);
    let other = FaultySink::new();
    let opts = SinkOptions {
        batch: BatchOptions {
            max_events: 16,
            ..BatchOptions::default()
        },
        ..sink_options()
    };
    replicator
        .add_sink("picky", sink.clone().shared(), opts.clone())
        .await
        .unwrap();
    replicator
        .add_sink("other", other.clone().shared(), opts)
        .await
        .unwrap();
    publish(&replicator, 20).await;
    replicator.wait_caught_up().await;
    let mut want: Vec<u64> = (1..=20).collect();
    want.retain(|s| *s != 7);
    assert_eq!(sink.sequences(), want);
    assert_eq!(other.sequences(), (1..=20).collect::<Vec<_>>());
    let letters = DeadLetterLog::read_all(&DeadLetterLog::path(
        &dir.path().join("deadletter"),
        "default",
        "picky",
    ))
    .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].sequence, letters[0].error_kind.as_str()),
        (7, "rejected")
    );
    assert_eq!(
        NoteCodec::text_of(&letters[0].payload_bytes().unwrap()),
        "n6"
    );
    let snapshot = replicator.sink_snapshots().await;
    let picky = snapshot.iter().find(|s| s.sink == "picky").unwrap();
    assert_eq!(
        (picky.dead_lettered, picky.applied, picky.checkpoint),
        (1, 19, 20)
    );
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn dead_letters_are_redriven_from_the_log_once_the_sink_is_fixed() {
    use omnirelay_replication::delivery::{RedriveTarget, redrive};
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::Fsync).await;
    let sink = FaultySink::new();
    for poisoned in [3, 7, 8] {
        sink.poison(poisoned);
    }
    replicator
        .add_sink("picky", sink.clone().shared(), sink_options())
        .await
        .unwrap();
    publish(&replicator, 10).await;
    replicator.wait_caught_up().await;
    assert_eq!(sink.sequences(), [1, 2, 4, 5, 6, 9, 10]);
    // The node stops; the operator redrives.
    replicator.close().await.unwrap();
    let target = RedriveTarget {
        data_dir: dir.path(),
        stream: &StreamId::default(),
        sink_name: "picky",
        encoding: sink_options().encoding,
        batch: 2,
    };
    let shared = sink.clone().shared();
    let codec: Arc<dyn omnirelay_replication::Codec<Note>> = Arc::new(NoteCodec::default());

    // Still refused: the letters stay, nothing is archived.
    let refused = redrive(target, &shared, codec.clone()).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Rejected, "{refused}");
    assert!(refused.to_string().contains("from sequence 3"), "{refused}");
    let letters = DeadLetterLog::path(&dir.path().join("deadletter"), "default", "picky");
    assert_eq!(DeadLetterLog::read_all(&letters).unwrap().len(), 3);

    // A line that is not a letter (an edit gone wrong) is not the
    // redrive's to throw away.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&letters)
        .unwrap();
    std::io::Write::write_all(&mut file, b"not a letter\n").unwrap();

    // Fixed: applied in order from the log, the letters archived.
    sink.cure();
    let redriven = redrive(target, &shared, codec.clone()).await.unwrap();
    assert_eq!(redriven.applied, [3, 7, 8]);
    assert!(redriven.missing.is_empty());
    assert_eq!(
        DeadLetterLog::read(&letters).unwrap().unreadable,
        [(1, "not a letter".to_owned())]
    );
    assert_eq!(sink.sequences(), [1, 2, 4, 5, 6, 9, 10, 3, 7, 8]);
    let texts: Vec<String> = sink.records()[7..]
        .iter()
        .map(|r| NoteCodec::text_of(r.bytes()))
        .collect();
    assert_eq!(texts, ["n2", "n6", "n7"], "the events themselves");
    assert!(DeadLetterLog::read_all(&letters).unwrap().is_empty());
    let archive = redriven.archive.unwrap();
    let archived: Vec<u64> = DeadLetterLog::read_all(&archive)
        .unwrap()
        .iter()
        .map(|l| l.sequence)
        .collect();
    assert_eq!(archived, [3, 7, 8]);
    // Nothing left: nothing to do.
    assert_eq!(
        redrive(target, &shared, codec).await.unwrap(),
        Default::default()
    );
}

#[tokio::test]
async fn letters_behind_a_high_water_sink_stay_and_the_ones_ahead_are_redriven() {
    use omnirelay_replication::delivery::{RedriveTarget, redrive};
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::Fsync).await;
    // A sink that keeps a high-water mark (it cannot fill gaps) and went
    // on past 3 and 8; 10, the last, it never took.
    let sink = FaultySink::new();
    sink.keep_checkpoint(0);
    for poisoned in [3, 8, 10] {
        sink.poison(poisoned);
    }
    replicator
        .add_sink("marked", sink.clone().shared(), sink_options())
        .await
        .unwrap();
    publish(&replicator, 10).await;
    replicator.wait_caught_up().await;
    replicator.close().await.unwrap();
    assert_eq!(sink.sequences(), [1, 2, 4, 5, 6, 7, 9]);
    sink.cure();
    let target = RedriveTarget {
        data_dir: dir.path(),
        stream: &StreamId::default(),
        sink_name: "marked",
        encoding: sink_options().encoding,
        batch: 512,
    };
    let codec: Arc<dyn omnirelay_replication::Codec<Note>> = Arc::new(NoteCodec::default());
    let redriven = redrive(target, &sink.clone().shared(), codec)
        .await
        .unwrap();
    assert_eq!(redriven.applied, [10]);
    assert_eq!((redriven.behind, redriven.checkpoint), (vec![3, 8], 9));
    assert!(
        redriven.refusal.unwrap().contains("high-water mark"),
        "the sink's reason"
    );
    // Handed to `apply`, the sink would have ignored them (as a file, a
    // bus or a receiver does) and the letters would be gone.
    assert_eq!(sink.sequences(), [1, 2, 4, 5, 6, 7, 9, 10]);
    let letters = DeadLetterLog::path(&dir.path().join("deadletter"), "default", "marked");
    let kept: Vec<u64> = DeadLetterLog::read_all(&letters)
        .unwrap()
        .iter()
        .map(|l| l.sequence)
        .collect();
    assert_eq!(kept, [3, 8]);
    let archived: Vec<u64> = DeadLetterLog::read_all(&redriven.archive.unwrap())
        .unwrap()
        .iter()
        .map(|l| l.sequence)
        .collect();
    assert_eq!(archived, [10]);
}

#[tokio::test]
async fn a_rate_limited_sink_takes_no_more_than_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::None).await;
    let limited = FaultySink::new();
    let free = FaultySink::new();
    let batches = SinkOptions {
        batch: BatchOptions {
            max_events: 100,
            ..BatchOptions::default()
        },
        ..sink_options()
    };
    replicator
        .add_sink(
            "limited",
            limited.clone().shared(),
            SinkOptions {
                max_events_per_second: Some(1000),
                ..batches.clone()
            },
        )
        .await
        .unwrap();
    replicator
        .add_sink("free", free.clone().shared(), batches)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    publish(&replicator, 500).await;
    // The free sink is not held back by its neighbour's limit.
    while free.sequences().len() < 500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        limited.sequences().len() < 500,
        "the limited sink lags behind"
    );
    replicator.wait_caught_up().await;
    // Five batches of 100 at 1000 a second: each is paid for (0.1 s)
    // before the next goes.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(limited.sequences(), (1..=500).collect::<Vec<_>>());
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn a_stalled_required_sink_blocks_publishers_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::None).await;
    let sink = FaultySink::new();
    let opts = required(10, WhenFull::Block);
    replicator
        .add_sink("required", sink.clone().shared(), opts)
        .await
        .unwrap();
    sink.stall();
    let publisher = {
        let replicator = replicator.clone();
        tokio::spawn(async move { publish(&replicator, 100).await })
    };
    // The publisher gets at most the budget (plus the batch in flight) ahead.
    let mut last = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        last = replicator.stream_snapshots().await[0].last_sequence;
    }
    assert!(!publisher.is_finished());
    assert_eq!(
        last, 10,
        "publish runs exactly the budget ahead of a stalled sink"
    );
    sink.release();
    let sequences = publisher.await.unwrap();
    assert_eq!(sequences, (1..=100).collect::<Vec<_>>());
    replicator.wait_caught_up().await;
    assert_eq!(sink.sequences(), (1..=100).collect::<Vec<_>>());
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn a_reject_sink_hands_the_event_back_when_over_budget() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::None).await;
    let sink = FaultySink::new();
    let opts = required(3, WhenFull::Reject);
    replicator
        .add_sink("strict", sink.clone().shared(), opts)
        .await
        .unwrap();
    sink.stall();
    publish(&replicator, 3).await;
    let err = replicator
        .submit(&StreamId::default(), Note::new("refused"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled);
    assert!(err.to_string().contains("\"strict\""), "{err}");
    assert_eq!(err.into_event().unwrap().text, "refused");
    sink.release();
    replicator.wait_caught_up().await;
    publish(&replicator, 1).await;
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn a_batch_larger_than_the_budget_is_admitted_once_the_sink_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::None).await;
    let sink = FaultySink::new();
    let opts = required(5, WhenFull::Block);
    replicator
        .add_sink("required", sink.clone().shared(), opts)
        .await
        .unwrap();
    let batch: Vec<_> = (0..50).map(|i| Note::new(&format!("b{i}"))).collect();
    let pending = replicator
        .submit_all(&StreamId::default(), batch)
        .await
        .unwrap();
    assert_eq!(pending.sequences(), 1..=50);
    pending.durable().await.unwrap();
    let again: Vec<_> = (0..50).map(|i| Note::new(&format!("c{i}"))).collect();
    let pending = replicator
        .submit_all(&StreamId::default(), again)
        .await
        .unwrap();
    assert_eq!(
        pending.sequences(),
        51..=100,
        "waited for the sink, then admitted"
    );
    replicator.wait_caught_up().await;
    assert_eq!(sink.sequences(), (1..=100).collect::<Vec<_>>());
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn acknowledgement_can_wait_for_required_sinks() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = DurableReplicator::open(
        Arc::new(NoteCodec::default()),
        DurableOptions {
            ack: Ack::RequiredSinks,
            ..options(dir.path(), Durability::Fsync)
        },
    )
    .await
    .unwrap();
    let sink = FaultySink::new();
    let opts = required(1000, WhenFull::Block);
    replicator
        .add_sink("required", sink.clone().shared(), opts)
        .await
        .unwrap();
    let receipt = replicator
        .submit(&StreamId::default(), Note::new("a"))
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    assert_eq!(
        sink.sequences(),
        [receipt.sequence],
        "acknowledged only once applied"
    );
    replicator.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn retries_follow_the_policy_and_give_up_into_the_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::Memory).await;
    let sink = FaultySink::new();
    sink.fail_with(ErrorKind::Timeout);
    let opts = SinkOptions {
        retry: RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            multiplier: 3.0,
            max_attempts: Some(5),
            jitter: false,
        },
        ..SinkOptions::default()
    };
    replicator
        .add_sink("slow", sink.clone().shared(), opts)
        .await
        .unwrap();
    publish(&replicator, 1).await;
    replicator.wait_caught_up().await;
    let attempts = sink.attempts();
    assert_eq!(attempts.len(), 5, "max_attempts = 5");
    let gaps: Vec<u128> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(
        gaps,
        [100, 300, 900, 1000],
        "initial 100 ms × 3 per attempt, capped at 1 s"
    );
    let snap = &replicator.sink_snapshots().await[0];
    assert_eq!(
        (snap.retries, snap.dead_lettered, snap.checkpoint),
        (5, 1, 1)
    );
    let letters = DeadLetterLog::read_all(&DeadLetterLog::path(
        &dir.path().join("deadletter"),
        "default",
        "slow",
    ))
    .unwrap();
    assert_eq!(letters[0].error_kind, "timeout");
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn a_restart_resumes_numbering_and_delivery_from_the_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FaultySink::new();
    {
        let replicator = open(dir.path(), Durability::Fsync).await;
        replicator
            .add_sink("s", sink.clone().shared(), sink_options())
            .await
            .unwrap();
        publish(&replicator, 30).await;
        replicator.wait_caught_up().await;
        replicator.close().await.unwrap();
    }
    let replicator = open(dir.path(), Durability::Fsync).await;
    replicator
        .add_sink("s", sink.clone().shared(), sink_options())
        .await
        .unwrap();
    assert_eq!(publish(&replicator, 5).await, (31..=35).collect::<Vec<_>>());
    replicator.wait_caught_up().await;
    assert_eq!(
        sink.sequences(),
        (1..=35).collect::<Vec<_>>(),
        "nothing re-sent after a clean close"
    );
    // A new sink starts from the oldest record and gets the whole log.
    let late = MemorySink::new();
    replicator
        .add_sink("late", late.clone().shared(), sink_options())
        .await
        .unwrap();
    replicator.wait_caught_up().await;
    assert_eq!(late.sequences(), (1..=35).collect::<Vec<_>>());
    // ... unless it asks for new records only.
    let fresh = MemorySink::new();
    let latest = SinkOptions {
        start: StartFrom::Latest,
        ..sink_options()
    };
    replicator
        .add_sink("fresh", fresh.clone().shared(), latest.clone())
        .await
        .unwrap();
    // So does one that says it holds nothing (`Some(0)`, a new receiver):
    // nothing saved says it ever had anything.
    let empty = FaultySink::new();
    empty.keep_checkpoint(0);
    replicator
        .add_sink("empty", empty.clone().shared(), latest)
        .await
        .unwrap();
    // One added late, as of an earlier moment, gets what came after it
    // (and never more than the log has).
    let (after, beyond) = (MemorySink::new(), MemorySink::new());
    for (name, sink, sequence) in [("after", &after, 33), ("beyond", &beyond, 1000)] {
        let options = SinkOptions {
            start: StartFrom::After(sequence),
            ..sink_options()
        };
        replicator
            .add_sink(name, sink.clone().shared(), options)
            .await
            .unwrap();
    }
    publish(&replicator, 1).await;
    replicator.wait_caught_up().await;
    assert_eq!(fresh.sequences(), [36]);
    assert_eq!(empty.sequences(), [36]);
    assert_eq!(after.sequences(), [34, 35, 36]);
    assert_eq!(beyond.sequences(), [36]);
    replicator.close().await.unwrap();
}

/// The checkpoint interval holds a save back, never forever: once the
/// stream goes quiet, the last delivered sequence is saved when the
/// interval is over, without waiting for the next event or a shutdown.
#[tokio::test]
async fn a_quiet_stream_saves_its_last_checkpoint_once_the_interval_is_over() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::Fsync).await;
    let sink = MemorySink::new();
    let options = SinkOptions {
        checkpoint_interval: Duration::from_millis(300),
        ..sink_options()
    };
    replicator
        .add_sink("s", sink.clone().shared(), options)
        .await
        .unwrap();
    // Two bursts within one interval: the second is delivered when a save
    // is not yet due.
    publish(&replicator, 3).await;
    replicator.wait_caught_up().await;
    publish(&replicator, 2).await;
    replicator.wait_caught_up().await;
    assert_eq!(sink.sequences(), (1..=5).collect::<Vec<_>>());
    let store = FileCheckpointStore::new(&dir.path().join("checkpoints"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let saved = loop {
        let saved = store.load(&StreamId::default(), "s").unwrap();
        if saved == Some(5) || std::time::Instant::now() > deadline {
            break saved;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(saved, Some(5), "saved while the replicator still runs");
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn sinks_of_another_version_skip_events_they_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::Fsync).await;
    let v1 = MemorySink::new();
    let v2 = MemorySink::new();
    replicator
        .add_sink("v1", v1.clone().shared(), sink_options())
        .await
        .unwrap();
    let v2_options = SinkOptions {
        encoding: Encoding::new(Format::Json, WireVersion::V2),
        ..sink_options()
    };
    replicator
        .add_sink("v2", v2.clone().shared(), v2_options)
        .await
        .unwrap();
    let mut future = Note::new("v2 only");
    future.kind = Note::V2_ONLY_KIND;
    replicator
        .submit(&StreamId::default(), future)
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    publish(&replicator, 1).await;
    replicator.wait_caught_up().await;
    assert_eq!(v1.sequences(), [2]);
    assert_eq!(v2.sequences(), [1, 2]);
    let snap = replicator.sink_snapshots().await;
    let v1_snap = snap.iter().find(|s| s.sink == "v1").unwrap();
    assert_eq!(
        (v1_snap.skipped, v1_snap.checkpoint, v1_snap.lag_events),
        (1, 2, 0)
    );
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn a_best_effort_sink_behind_the_memory_ring_skips_ahead_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = DurableReplicator::open(
        Arc::new(NoteCodec::default()),
        DurableOptions {
            log: LogOptions {
                durability: Durability::Memory,
                tail_max_events: 8,
                ..LogOptions::default()
            },
            ..options(dir.path(), Durability::Memory)
        },
    )
    .await
    .unwrap();
    let sink = FaultySink::new();
    replicator
        .add_sink("lossy", sink.clone().shared(), sink_options())
        .await
        .unwrap();
    sink.stall();
    publish(&replicator, 40).await;
    sink.release();
    replicator.wait_caught_up().await;
    let got = sink.sequences();
    let snap = &replicator.sink_snapshots().await[0];
    assert_eq!(got.last(), Some(&40));
    assert!(snap.discarded > 0, "{snap:?}");
    assert_eq!(
        got.len() as u64 + snap.discarded,
        40,
        "everything either applied or counted"
    );
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn replaying_a_log_twice_gives_byte_identical_output() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::Fsync).await;
    publish(&replicator, 25).await;
    let mut future = Note::new("v2 only");
    future.kind = Note::V2_ONLY_KIND;
    replicator
        .submit(&StreamId::default(), future)
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    let online: Vec<_> = replicator
        .replay(&StreamId::default(), 1, Encoding::JSON_V1)
        .await
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    replicator.close().await.unwrap();
    let codec = Arc::new(NoteCodec::default());
    let render = |from| {
        Replay::open(
            dir.path(),
            &StreamId::default(),
            from,
            codec.clone(),
            Encoding::JSON_V1,
        )
        .unwrap()
        .map(|r| match r.unwrap() {
            Replayed::Record(record) => record.bytes().to_vec(),
            Replayed::Skipped { sequence, .. } => format!("skipped {sequence}").into_bytes(),
        })
        .collect::<Vec<_>>()
    };
    let first = render(1);
    assert_eq!(first, render(1));
    assert_eq!(first.len(), 26);
    assert_eq!(first[25], b"skipped 26");
    assert_eq!(render(20).len(), 7);
    let online: Vec<_> = online
        .into_iter()
        .map(|r| match r {
            Replayed::Record(record) => record.bytes().to_vec(),
            Replayed::Skipped { sequence, .. } => format!("skipped {sequence}").into_bytes(),
        })
        .collect();
    assert_eq!(online, first, "the running and the offline replay agree");
}

#[tokio::test]
async fn waiting_for_visible_records_follows_the_stream_and_ends_when_it_closes() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = Arc::new(open(dir.path(), Durability::Fsync).await);
    let stream = StreamId::default();
    publish(&replicator, 3).await;
    assert_eq!(replicator.wait_visible_beyond(&stream, 0).await.unwrap(), 3);
    let waiting = {
        let replicator = replicator.clone();
        let stream = stream.clone();
        tokio::spawn(async move { replicator.wait_visible_beyond(&stream, 3).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "nothing beyond 3 is visible yet");
    publish(&replicator, 2).await;
    let visible = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!((4..=5).contains(&visible), "woke at {visible}");
    let closed = {
        let replicator = replicator.clone();
        let stream = stream.clone();
        tokio::spawn(async move { replicator.wait_visible_beyond(&stream, 5).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    replicator.close().await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
}

#[tokio::test]
async fn a_replica_keeps_the_sequences_and_times_it_is_given_and_refuses_gaps() {
    let primary_dir = tempfile::tempdir().unwrap();
    let primary = open(primary_dir.path(), Durability::Fsync).await;
    publish(&primary, 5).await;
    let stream = StreamId::default();
    let source: Vec<Note> = primary
        .replay(&stream, 1, Encoding::JSON_V1)
        .await
        .unwrap()
        .map(|item| match item.unwrap() {
            Replayed::Record(record) => {
                let mut note = omnirelay_replication::Codec::decode(
                    &NoteCodec::default(),
                    Format::Json,
                    record.bytes(),
                )
                .unwrap();
                note.sequence = record.sequence();
                note.timestamp = omnirelay_replication::Timestamp::from_unix_millis(
                    1_700_000_000_000 + record.sequence() as i64,
                )
                .unwrap();
                note
            }
            Replayed::Skipped { .. } => unreachable!(),
        })
        .collect();
    primary.close().await.unwrap();

    let replica_dir = tempfile::tempdir().unwrap();
    let replica = open(replica_dir.path(), Durability::Fsync).await;
    // Not the next sequence: refused, nothing appended.
    let refused = replica
        .submit_replicated(&stream, source[1..3].to_vec())
        .await
        .unwrap_err();
    assert_eq!(refused.error.kind(), ErrorKind::Rejected);
    assert_eq!(refused.event.unwrap().len(), 2);
    assert_eq!(replica.last_sequence(&stream), 0);
    replica
        .submit_replicated(&stream, source[..3].to_vec())
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    // A gap inside a batch is refused too.
    let gap = vec![source[3].clone(), source[4].clone(), source[4].clone()];
    assert!(replica.submit_replicated(&stream, gap).await.is_err());
    let receipt = replica
        .submit_replicated(&stream, source[3..].to_vec())
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    assert_eq!(receipt.sequence, 5);
    assert_eq!(receipt.timestamp, source[4].timestamp);
    let copied: Vec<(u64, omnirelay_replication::Timestamp)> = replica
        .replay(&stream, 1, Encoding::JSON_V1)
        .await
        .unwrap()
        .map(|item| match item.unwrap() {
            Replayed::Record(record) => (record.sequence(), record.header().timestamp),
            Replayed::Skipped { .. } => unreachable!(),
        })
        .collect();
    assert_eq!(
        copied,
        source
            .iter()
            .map(|n| (n.sequence, n.timestamp))
            .collect::<Vec<_>>()
    );
    // Afterwards, local publishing goes on from there.
    assert_eq!(publish(&replica, 1).await, vec![6]);
    replica.close().await.unwrap();
}

#[tokio::test]
async fn encoded_events_are_refused_by_a_codec_that_cannot_stamp_them_or_in_another_encoding() {
    use omnirelay_replication::{EncodedEvents, EventKind};
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::None).await;
    let stream = StreamId::default();
    let kind = EventKind {
        code: 1,
        name: "Note",
    };
    let push = |encoded: &mut EncodedEvents| {
        encoded.push(kind, Some("peer"), |out| out.extend_from_slice(b"{}"));
    };
    // The log's encoding, but the test codec has no way to stamp bytes.
    let mut encoded = EncodedEvents::with_capacity(replicator.log_encoding(), 1, 2);
    push(&mut encoded);
    assert_eq!(encoded.len(), 1);
    let refused = replicator
        .submit_encoded(&stream, &encoded)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Unsupported, "{refused}");
    // Not the log's encoding.
    let other = if replicator.log_encoding() == Encoding::JSON_V1 {
        Encoding::PROTOBUF_V1
    } else {
        Encoding::JSON_V1
    };
    let mut encoded = EncodedEvents::with_capacity(other, 1, 2);
    push(&mut encoded);
    let refused = replicator
        .submit_encoded(&stream, &encoded)
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Rejected, "{refused}");
    // Neither took a sequence: the next event is the first.
    let receipt = replicator
        .submit(&stream, Note::new("after"))
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    assert_eq!(receipt.sequence, 1);
    replicator.close().await.unwrap();
}

fn oldest_held(dir: &std::path::Path) -> u64 {
    omnirelay_replication_testkit::oldest_record(dir, &StreamId::default())
}

/// Publishes one event at a time until retention deleted a segment
/// holding records after `floor` or 1.5 s passed; returns the oldest
/// record held then.
async fn retention_settles(
    replicator: &DurableReplicator<Note>,
    dir: &std::path::Path,
    floor: u64,
) -> u64 {
    // Retention runs on the log's writer thread, at most every 500 ms.
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        publish(replicator, 1).await;
        if oldest_held(dir) > floor + 1 {
            break;
        }
    }
    oldest_held(dir)
}

#[tokio::test]
async fn a_retention_hold_keeps_the_segments_after_it_until_moved_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = DurableReplicator::open(
        Arc::new(NoteCodec::default()),
        DurableOptions {
            log: LogOptions {
                durability: Durability::None,
                segment_max_bytes: 1_000,
                retention: omnirelay_replication::Retention {
                    delete_consumed: true,
                    max_bytes: Some(1),
                    ..Default::default()
                },
                ..LogOptions::default()
            },
            clock: fixed_clock,
            ..DurableOptions::new(dir.path())
        },
    )
    .await
    .unwrap();
    let memory = MemorySink::new();
    replicator
        .add_sink("memory", memory.clone().shared(), sink_options())
        .await
        .unwrap();
    let stream = StreamId::default();
    let hold = replicator.hold_retention(&stream, 40).await.unwrap();
    publish(&replicator, 200).await;
    wait_for(&replicator, "memory", 200).await;
    // The sink consumed everything and the size limit is one byte: only
    // the hold keeps segments, those holding 41 and after.
    let oldest = retention_settles(&replicator, dir.path(), 40).await;
    assert!(oldest > 1, "retention never ran");
    assert!(oldest <= 41, "a held record was deleted: oldest {oldest}");
    hold.advance(150);
    assert_eq!(hold.through(), 150);
    hold.advance(100);
    assert_eq!(hold.through(), 150, "a hold never moves back");
    let oldest = retention_settles(&replicator, dir.path(), 150).await;
    assert!(
        (42..=151).contains(&oldest),
        "moved on, the hold keeps 151 on only: oldest {oldest}"
    );
    drop(hold);
    let oldest = retention_settles(&replicator, dir.path(), 151).await;
    assert!(oldest > 151, "released, nothing is held: oldest {oldest}");
    replicator.close().await.unwrap();
}

/// A sink that takes 1.5 s to say it holds everything through 200 (a
/// backend slow to connect), and then takes every batch.
struct SlowToAnswer;

impl omnirelay_replication::Sink for SlowToAnswer {
    async fn checkpoint(
        &self,
        _stream: &StreamId,
    ) -> Result<Option<u64>, omnirelay_replication::SinkError> {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        Ok(Some(200))
    }

    async fn apply(
        &self,
        _batch: &[omnirelay_replication::Record<'_>],
    ) -> Result<(), omnirelay_replication::SinkError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_held_stream_keeps_every_segment_from_its_open_to_its_hold() {
    let dir = tempfile::tempdir().unwrap();
    let open = |retention| {
        DurableReplicator::open(
            Arc::new(NoteCodec::default()),
            DurableOptions {
                log: LogOptions {
                    // The writer thread wakes every 10 ms, retention with it.
                    durability: Durability::Interval(Duration::from_millis(10)),
                    segment_max_bytes: 1_000,
                    retention,
                    ..LogOptions::default()
                },
                clock: fixed_clock,
                held: vec![StreamId::default()],
                ..DurableOptions::new(dir.path())
            },
        )
    };
    let first = open(omnirelay_replication::Retention::default())
        .await
        .unwrap();
    publish(&first, 200).await;
    first.close().await.unwrap();
    // Reopened (which opens the stream) under a retention that deletes
    // every sealed segment no required sink needs; then a sink that takes
    // 1.5 s to say where it is, and only then the hold, as a node does.
    let replicator = open(omnirelay_replication::Retention {
        max_bytes: Some(1),
        ..Default::default()
    })
    .await
    .unwrap();
    replicator
        .add_sink("slow", SlowToAnswer.shared(), sink_options())
        .await
        .unwrap();
    // Before, the log applied retention while the sink started, before
    // the hold existed, and deleted what the hold was taken for.
    assert_eq!(oldest_held(dir.path()), 1, "deleted while the sink started");
    let hold = replicator
        .hold_retention(&StreamId::default(), 0)
        .await
        .unwrap();
    assert_eq!(
        retention_settles(&replicator, dir.path(), 0).await,
        1,
        "deleted under the hold"
    );
    drop(hold);
    let oldest = retention_settles(&replicator, dir.path(), 1).await;
    assert!(oldest > 1, "released, nothing is held: oldest {oldest}");
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn a_lingering_sink_waits_for_a_fuller_batch_and_a_full_one_goes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Every append is visible at once: without a linger, each is a batch.
    let replicator = open(dir.path(), Durability::None).await;
    let lingering = |max_events, linger| SinkOptions {
        batch: BatchOptions {
            max_events,
            linger,
            ..BatchOptions::default()
        },
        ..sink_options()
    };
    let patient = FaultySink::new();
    let full = FaultySink::new();
    replicator
        .add_sink(
            "patient",
            patient.clone().shared(),
            lingering(64, Duration::from_millis(600)),
        )
        .await
        .unwrap();
    // A linger far longer than the test: only a full batch gets it sent.
    replicator
        .add_sink(
            "full",
            full.clone().shared(),
            lingering(3, Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    for _ in 0..3 {
        publish(&replicator, 1).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    wait_for(&replicator, "full", 3).await;
    assert_eq!(full.sequences(), [1, 2, 3]);
    assert_eq!(full.attempts().len(), 1, "the three in one full batch");
    wait_for(&replicator, "patient", 3).await;
    assert_eq!(
        patient.attempts().len(),
        1,
        "events published 40 ms apart wait for each other"
    );
    // Short of a full batch, the long linger holds the fourth.
    publish(&replicator, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(full.sequences(), [1, 2, 3]);
    wait_for(&replicator, "patient", 4).await;
    assert_eq!(patient.attempts().len(), 2);
    replicator.close().await.unwrap();
}

/// A sink that keeps its own checkpoint can outlive the log: a `memory`
/// log restarted, or a data directory lost, while the sink (a file, a
/// database, a bus) still holds what the log's earlier life wrote. The
/// stream's numbering continues after the sink, so the new events reach it
/// instead of being taken for what it already has; a persistent log keeps
/// that numbering across its own restarts.
#[tokio::test]
async fn numbering_continues_after_a_sink_that_outlived_the_log() {
    for durability in [Durability::Memory, Durability::Fsync] {
        let sink = MemorySink::new();
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        for (round, dir) in dirs.iter().enumerate() {
            let replicator = open(dir.path(), durability).await;
            replicator
                .add_sink("kept", sink.clone().shared(), sink_options())
                .await
                .unwrap();
            // A sink with no checkpoint of its own starts where the log
            // does: nothing before it counts as lost to it.
            let fresh = FaultySink::new();
            replicator
                .add_sink("fresh", fresh.clone().shared(), sink_options())
                .await
                .unwrap();
            let first = 1 + 20 * round as u64;
            assert_eq!(
                publish(&replicator, 20).await,
                (first..first + 20).collect::<Vec<_>>(),
                "{durability}: round {round} continues after what the sink holds"
            );
            replicator.wait_caught_up().await;
            assert_eq!(
                fresh.sequences(),
                (first..first + 20).collect::<Vec<_>>(),
                "{durability}"
            );
            let snapshots = replicator.sink_snapshots().await;
            let fresh = snapshots.iter().find(|s| s.sink == "fresh").unwrap();
            assert_eq!(fresh.discarded, 0, "{durability}: round {round}");
            replicator.close().await.unwrap();
        }
        assert_eq!(
            sink.sequences(),
            (1..=40).collect::<Vec<_>>(),
            "{durability}"
        );
        if durability.is_persistent() {
            // The log that started after 20 reopens there, and reads back.
            let replicator = open(dirs[1].path(), durability).await;
            // A sink added now starts where the log did: 1..=20 were never
            // in this log, so none of it counts as lost to it.
            let added = FaultySink::new();
            replicator
                .add_sink("added", added.clone().shared(), sink_options())
                .await
                .unwrap();
            assert_eq!(publish(&replicator, 1).await, [41]);
            replicator.wait_caught_up().await;
            assert_eq!(added.sequences(), (21..=41).collect::<Vec<_>>());
            let snapshots = replicator.sink_snapshots().await;
            let added = snapshots.iter().find(|s| s.sink == "added").unwrap();
            assert_eq!(added.discarded, 0, "{durability}: reopened");
            let stored: Vec<u64> = replicator
                .replay(&StreamId::default(), 1, Encoding::JSON_V1)
                .await
                .unwrap()
                .map(|r| match r.unwrap() {
                    Replayed::Record(record) => record.sequence(),
                    Replayed::Skipped { sequence, .. } => sequence,
                })
                .collect();
            assert_eq!(stored, (21..=41).collect::<Vec<_>>());
            replicator.close().await.unwrap();
        }
    }
}

/// A sink whose checkpoint is past the last record of a log that holds
/// records (a machine crash lost the log's last records after the sink
/// had them, or another node writes the same stream to the sink): the
/// log's records with those sequences are not the sink's, so they are
/// dead-lettered, never skipped as if the sink had them, and never
/// refused by the log; delivery goes on after them.
/// Notes numbered and stamped as another node's log did.
fn numbered(range: std::ops::RangeInclusive<u64>) -> Vec<Note> {
    range
        .map(|sequence| {
            let mut note = Note::new(&format!("n{sequence}"));
            note.sequence = sequence;
            note.timestamp = omnirelay_replication::Timestamp::from_unix_millis(
                1_700_000_000_000 + i64::try_from(sequence).unwrap(),
            )
            .unwrap();
            note
        })
        .collect()
}

#[tokio::test]
async fn a_replica_keeps_its_primarys_numbering_beside_a_sink_ahead_of_it() {
    // A standby sharing a backend with its primary (one archive, one bus
    // subject): the sink holds the primary's records 1..=5 before the
    // standby's log has any. Before, the log numbered after the sink's 5,
    // so a standby following from its log's next sequence skipped the
    // primary's 1..=5 in silence (or, with its stream open already, the
    // records went to the sink's dead letters as another log's).
    for opened_first in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let stream = StreamId::default();
        let replicator = DurableReplicator::open(
            Arc::new(NoteCodec::default()),
            DurableOptions {
                replicas: vec![stream.clone()],
                ..options(dir.path(), Durability::None)
            },
        )
        .await
        .unwrap();
        if opened_first {
            replicator.open_stream(&stream).await.unwrap();
        }
        let shared = FaultySink::new();
        shared.keep_checkpoint(5);
        replicator
            .add_sink("archive", shared.clone().shared(), sink_options())
            .await
            .unwrap();
        let own = MemorySink::new();
        replicator
            .add_sink("own", own.clone().shared(), sink_options())
            .await
            .unwrap();
        assert_eq!(
            replicator.last_sequence(&stream),
            0,
            "opened first: {opened_first}"
        );
        replicator
            .submit_replicated(&stream, numbered(1..=8))
            .await
            .unwrap()
            .durable()
            .await
            .unwrap();
        wait_for(&replicator, "archive", 8).await;
        wait_for(&replicator, "own", 8).await;
        assert_eq!(
            shared.sequences(),
            [6, 7, 8],
            "opened first: {opened_first}"
        );
        assert_eq!(own.len(), 8);
        let snapshots = replicator.sink_snapshots().await;
        assert!(
            snapshots.iter().all(|s| s.dead_lettered == 0),
            "{snapshots:?}"
        );
        replicator.close().await.unwrap();
    }
}

#[tokio::test]
async fn records_a_sink_holds_from_another_log_are_dead_lettered_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    // A checkpoint in the node's store ahead of the log.
    {
        let replicator = open(dir.path(), Durability::Fsync).await;
        assert_eq!(publish(&replicator, 5).await, (1..=5).collect::<Vec<_>>());
        replicator.close().await.unwrap();
    }
    FileCheckpointStore::new(&dir.path().join("checkpoints"))
        .save(&StreamId::default(), "saved", 9)
        .unwrap();
    let saved = FaultySink::new();
    // A sink that keeps its own checkpoint, ahead too.
    let kept = FaultySink::new();
    kept.keep_checkpoint(12);
    let replicator = open(dir.path(), Durability::Fsync).await;
    for (name, sink) in [("saved", &saved), ("kept", &kept)] {
        replicator
            .add_sink(name, sink.clone().shared(), sink_options())
            .await
            .unwrap();
    }
    assert_eq!(publish(&replicator, 10).await, (6..=15).collect::<Vec<_>>());
    replicator.wait_caught_up().await;
    assert_eq!(saved.sequences(), (10..=15).collect::<Vec<_>>());
    assert_eq!(kept.sequences(), (13..=15).collect::<Vec<_>>());
    let snapshots = replicator.sink_snapshots().await;
    for (name, letters) in [("saved", 6..=9), ("kept", 6..=12)] {
        let snapshot = snapshots.iter().find(|s| s.sink == name).unwrap();
        assert_eq!(
            (snapshot.dead_lettered, snapshot.checkpoint),
            (letters.clone().count() as u64, 15),
            "{name}"
        );
        let dead = DeadLetterLog::read_all(&DeadLetterLog::path(
            &dir.path().join("deadletter"),
            "default",
            name,
        ))
        .unwrap();
        assert_eq!(
            dead.iter().map(|l| l.sequence).collect::<Vec<_>>(),
            letters.collect::<Vec<_>>(),
            "{name}"
        );
        assert!(
            dead.iter()
                .all(|l| l.error_kind == "config" && l.error.contains("from another log")),
            "{name}: {dead:?}"
        );
    }
    replicator.close().await.unwrap();
}

#[tokio::test]
async fn retry_now_ends_a_failing_sinks_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let replicator = open(dir.path(), Durability::None).await;
    let sink = FaultySink::new();
    sink.fail_with(ErrorKind::Unavailable);
    // Ten minutes between attempts: only `retry_now` brings the next one
    // within the test.
    let patient = SinkOptions {
        retry: RetryPolicy {
            initial: Duration::from_secs(600),
            max: Duration::from_secs(600),
            jitter: false,
            ..RetryPolicy::default()
        },
        ..SinkOptions::default()
    };
    replicator
        .add_sink("patient", sink.clone().shared(), patient)
        .await
        .unwrap();
    let other = MemorySink::new();
    replicator
        .add_sink("other", other.clone().shared(), sink_options())
        .await
        .unwrap();
    publish(&replicator, 3).await;
    wait_for(&replicator, "other", 3).await;
    // Nothing waits to retry: nothing to wake.
    assert_eq!(replicator.retry_now(None, Some("other")).unwrap(), []);
    let err = replicator.retry_now(None, Some("nope")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("no sink named \"nope\""), "{err}");
    let elsewhere = StreamId::new("elsewhere").unwrap();
    let err = replicator
        .retry_now(Some(&elsewhere), Some("patient"))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");

    // The backend is fixed; the sink would wait out its ten minutes.
    sink.heal();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let woken = loop {
        let woken = replicator.retry_now(None, None).unwrap();
        if !woken.is_empty() {
            break woken;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sink never waited to retry: {:?}",
            replicator.sink_snapshots().await
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(woken, [(StreamId::default(), "patient".to_owned())]);
    wait_for(&replicator, "patient", 3).await;
    assert_eq!(sink.sequences(), [1, 2, 3]);
    assert_eq!(
        replicator
            .retry_now(Some(&StreamId::default()), Some("patient"))
            .unwrap(),
        [],
        "healthy again: not waiting"
    );
    replicator.close().await.unwrap();
}

/// A record damaged on disk in a sealed segment (a bad sector, a stray
/// write) is lost, but no more: a sink reading the log gets every other
/// record, the lost one is dead-lettered as `corrupt`, and a redrive keeps
/// its letter (the log cannot give the event back).
#[tokio::test]
async fn a_record_damaged_in_a_sealed_segment_is_dead_lettered_and_the_rest_delivered() {
    use omnirelay_replication::delivery::{RedriveTarget, redrive};
    let dir = tempfile::tempdir().unwrap();
    let open_small = || {
        DurableReplicator::open(
            Arc::new(NoteCodec::default()),
            DurableOptions {
                log: LogOptions {
                    durability: Durability::None,
                    segment_max_bytes: 2_000,
                    ..LogOptions::default()
                },
                clock: fixed_clock,
                ..DurableOptions::new(dir.path())
            },
        )
    };
    let replicator = open_small().await.unwrap();
    publish(&replicator, 200).await;
    replicator.close().await.unwrap();
    let segments = omnirelay_replication_testkit::segments(dir.path(), &StreamId::default());
    assert!(segments.len() >= 3, "{segments:?}");
    let first_of_second: u64 = segments[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let hit = first_of_second + 2;
    omnirelay_replication_testkit::damage_record(&segments[1], hit);

    // A sink added now reads the whole log from the files.
    let replicator = open_small().await.unwrap();
    let late = MemorySink::new();
    replicator
        .add_sink("late", late.clone().shared(), sink_options())
        .await
        .unwrap();
    if tokio::time::timeout(Duration::from_secs(30), replicator.wait_caught_up())
        .await
        .is_err()
    {
        panic!("stuck: {:?}", replicator.sink_snapshots().await);
    }
    let want: Vec<u64> = (1..=200).filter(|s| *s != hit).collect();
    assert_eq!(late.sequences(), want);
    let letters_path = DeadLetterLog::path(&dir.path().join("deadletter"), "default", "late");
    let letters = DeadLetterLog::read_all(&letters_path).unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(
        (
            letter.sequence,
            letter.error_kind.as_str(),
            letter.event_type.as_str()
        ),
        (hit, "corrupt", "unreadable")
    );
    assert!(
        letter.error.contains("checksum mismatch")
            && letter
                .error
                .contains(&format!("sequences {hit}..={hit} cannot be read")),
        "{}",
        letter.error
    );
    let snapshot = replicator.sink_snapshots().await;
    let late_snapshot = snapshot.iter().find(|s| s.sink == "late").unwrap();
    assert_eq!(
        (
            late_snapshot.dead_lettered,
            late_snapshot.checkpoint,
            late_snapshot.state
        ),
        (1, 200, SinkState::Healthy)
    );
    replicator.close().await.unwrap();

    // A replay (`log replay`, a standby's `Subscribe`) stops at the lost
    // record, after the ones before it: a copy with a silent hole would be
    // wrong. One from the next sequence on reads the rest, though reading
    // starts at an index entry before the damage.
    let replay = |from| {
        Replay::open(
            dir.path(),
            &StreamId::default(),
            from,
            Arc::new(NoteCodec::default()),
            Encoding::JSON_V1,
        )
        .unwrap()
        .map(|r| match r {
            Ok(Replayed::Record(record)) => Ok(record.sequence()),
            Ok(Replayed::Skipped { sequence, .. }) => Ok(sequence),
            Err(err) => Err(err.kind()),
        })
        .collect::<Vec<_>>()
    };
    let mut until_damage: Vec<_> = (1..hit).map(Ok).collect();
    until_damage.push(Err(ErrorKind::Corrupt));
    assert_eq!(replay(1), until_damage);
    assert_eq!(replay(hit + 1), (hit + 1..=200).map(Ok).collect::<Vec<_>>());
    // Asked to, a replay goes on past the loss, which it names.
    let mut past = Replay::open(
        dir.path(),
        &StreamId::default(),
        1,
        Arc::new(NoteCodec::default()),
        Encoding::JSON_V1,
    )
    .unwrap();
    assert_eq!(past.by_ref().filter(Result::is_ok).count() as u64, hit - 1);
    assert_eq!(past.skip_damaged(), Some(hit..=hit));
    assert_eq!(past.skip_damaged(), None, "once");
    assert_eq!(past.filter(Result::is_ok).count() as u64, 200 - hit);

    // The log cannot give the event back: its letter stays, the others
    // are not held up by it.
    let redriven = redrive(
        RedriveTarget {
            data_dir: dir.path(),
            stream: &StreamId::default(),
            sink_name: "late",
            encoding: sink_options().encoding,
            batch: 16,
        },
        &late.clone().shared(),
        Arc::new(NoteCodec::default()),
    )
    .await
    .unwrap();
    assert_eq!((redriven.applied, redriven.missing), (vec![], vec![hit]));
    assert_eq!(DeadLetterLog::read_all(&letters_path).unwrap().len(), 1);
}

/// A replica begun after a snapshot of its source's state: its first
/// record is the one after the snapshot, its sinks (a best-effort one and
/// a required one, started before it began) count nothing before it as
/// missed, it remembers where it began across a restart, and a stream
/// that numbered a record cannot begin again.
#[tokio::test]
async fn a_replica_begun_after_a_snapshot_numbers_on_from_it_and_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamId::default();
    let open_replica = || {
        DurableReplicator::open(
            Arc::new(NoteCodec::default()),
            DurableOptions {
                replicas: vec![stream.clone()],
                ..options(dir.path(), Durability::Fsync)
            },
        )
    };
    let replicator = open_replica().await.unwrap();
    let (loose, strict) = (MemorySink::new(), MemorySink::new());
    replicator
        .add_sink("loose", loose.clone().shared(), sink_options())
        .await
        .unwrap();
    replicator
        .add_sink(
            "strict",
            strict.clone().shared(),
            required(1_000, WhenFull::Block),
        )
        .await
        .unwrap();
    replicator.begin_after(&stream, 10).await.unwrap();
    assert_eq!(
        (
            replicator.last_sequence(&stream),
            replicator.started_after(&stream)
        ),
        (10, 10)
    );
    // Not the record after the snapshot: refused.
    assert!(
        replicator
            .submit_replicated(&stream, numbered(1..=3))
            .await
            .is_err()
    );
    replicator
        .submit_replicated(&stream, numbered(11..=13))
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    wait_for(&replicator, "loose", 13).await;
    wait_for(&replicator, "strict", 13).await;
    assert_eq!((loose.len(), strict.len()), (3, 3));
    let snapshots = replicator.sink_snapshots().await;
    assert!(
        snapshots
            .iter()
            .all(|s| s.discarded == 0 && s.dead_lettered == 0),
        "{snapshots:?}"
    );
    let again = replicator.begin_after(&stream, 20).await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Rejected, "{again}");
    replicator.close().await.unwrap();

    let replicator = open_replica().await.unwrap();
    replicator.open_stream(&stream).await.unwrap();
    assert_eq!(
        (
            replicator.last_sequence(&stream),
            replicator.started_after(&stream)
        ),
        (13, 10)
    );
    replicator.close().await.unwrap();
}
