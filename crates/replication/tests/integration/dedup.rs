use std::sync::Arc;

use omnirelay_replication::sink::dedup::DedupState;
use omnirelay_replication::{ErrorKind, MemorySink, Sink, SinkExt, StreamId};
use omnirelay_replication_testkit::{ScriptedSink, Step};
use proptest::prelude::*;

use crate::support::record;

#[tokio::test]
async fn applies_5_5_6_as_5_6() {
    let inner = ScriptedSink::new();
    let sink = inner.clone().deduplicating();
    for seq in [5, 5, 6] {
        sink.apply_owned(&[record("default", seq, Some("peer-a"))])
            .await
            .unwrap();
    }
    assert_eq!(inner.sequences(), [5, 6]);
    assert_eq!(
        sink.checkpoint(&StreamId::default()).await.unwrap(),
        Some(6)
    );
}

#[tokio::test]
async fn drops_duplicates_inside_a_batch_and_late_lower_sequences() {
    let inner = ScriptedSink::new();
    let sink = inner.clone().deduplicating();
    let batch = [3, 4, 4, 5, 2].map(|s| record("default", s, None));
    sink.apply_owned(&batch).await.unwrap();
    sink.apply_owned(&[record("default", 1, None)])
        .await
        .unwrap();
    assert_eq!(inner.sequences(), [3, 4, 5]);
}

#[tokio::test]
async fn keeps_marks_per_stream_and_per_peer() {
    let inner = ScriptedSink::new();
    let sink = inner.clone().deduplicating();
    sink.apply_owned(&[record("a", 7, Some("p"))])
        .await
        .unwrap();
    sink.apply_owned(&[record("b", 7, Some("p"))])
        .await
        .unwrap();
    sink.apply_owned(&[record("a", 7, Some("q"))])
        .await
        .unwrap();
    assert_eq!(inner.sequences(), [7, 7]);
}

#[tokio::test]
async fn a_partial_apply_advances_exactly_as_far_as_it_got() {
    let inner = ScriptedSink::scripted([Step::ApplyThenFail(2, ErrorKind::Unavailable)]);
    let sink = inner.clone().deduplicating();
    let batch = [1, 2, 3, 4].map(|s| record("default", s, None));
    let err = sink.apply_owned(&batch).await.unwrap_err();
    assert_eq!(err.applied_through_sequence(), Some(2));
    assert_eq!(
        sink.checkpoint(&StreamId::default()).await.unwrap(),
        Some(2)
    );
    // The retry of the whole batch applies only what is missing.
    sink.apply_owned(&batch).await.unwrap();
    assert_eq!(inner.sequences(), [1, 2, 3, 4]);
}

#[tokio::test]
async fn a_failed_apply_does_not_advance() {
    let inner = ScriptedSink::scripted([Step::Fail(ErrorKind::Timeout)]);
    let sink = inner.clone().deduplicating();
    assert!(
        sink.apply_owned(&[record("default", 1, None)])
            .await
            .is_err()
    );
    sink.apply_owned(&[record("default", 1, None)])
        .await
        .unwrap();
    assert_eq!(inner.sequences(), [1]);
}

#[tokio::test]
async fn starts_from_the_inner_sinks_checkpoint() {
    let memory = MemorySink::new();
    memory
        .apply_owned(&[record("default", 1, None), record("default", 2, None)])
        .await
        .unwrap();
    let sink = memory.clone().deduplicating();
    assert_eq!(
        sink.checkpoint(&StreamId::default()).await.unwrap(),
        Some(2)
    );
    sink.apply_owned(&[2, 3].map(|s| record("default", s, None)))
        .await
        .unwrap();
    assert_eq!(memory.sequences(), [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_overlapping_applies_apply_each_sequence_once() {
    let inner = ScriptedSink::new().yielding();
    let sink = Arc::new(inner.clone().deduplicating());
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let sink = sink.clone();
            tokio::spawn(async move {
                for start in (t % 4..40).step_by(3) {
                    let batch: Vec<_> = (start + 1..=start + 3)
                        .map(|s| record("default", s, Some("p")))
                        .collect();
                    sink.apply_owned(&batch).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut seen = inner.sequences();
    let total = seen.len();
    seen.dedup();
    assert_eq!(total, seen.len(), "a sequence was applied twice");
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

proptest! {
    /// Whatever order and repetition records arrive in, the admitted
    /// sequences of a stream strictly increase and every admitted one is
    /// above everything committed before it.
    #[test]
    fn admitted_sequences_strictly_increase(seqs in prop::collection::vec(1u64..50, 0..100)) {
        let mut state = DedupState::default();
        let stream = StreamId::default();
        state.seed(&stream, None);
        let mut admitted = Vec::new();
        for seq in seqs {
            let rec = record("default", seq, Some("p"));
            if state.admit(rec.stream(), rec.header()) {
                admitted.push(seq);
            }
            state.commit();
        }
        prop_assert!(admitted.windows(2).all(|w| w[0] < w[1]));
        prop_assert_eq!(state.global(&stream), admitted.last().copied());
    }

    #[test]
    fn commit_through_keeps_only_the_applied_prefix(n in 1u64..20, through in 0u64..25) {
        let mut state = DedupState::default();
        let stream = StreamId::default();
        state.seed(&stream, None);
        for seq in 1..=n {
            prop_assert!(state.admit(&stream, record("default", seq, None).header()));
        }
        state.commit_through(Some(through));
        let expected = if through == 0 { None } else { Some(through.min(n)) };
        prop_assert_eq!(state.global(&stream), expected);
        // What was not committed is admitted again.
        prop_assert_eq!(state.admit(&stream, record("default", n, None).header()), through < n);
    }
}

#[tokio::test]
async fn memory_sink_is_idempotent_and_bounded_when_asked() {
    let ring = MemorySink::with_capacity(2);
    ring.apply_owned(&[1, 2, 3, 3, 2].map(|s| record("default", s, None)))
        .await
        .unwrap();
    assert_eq!(ring.sequences(), [2, 3]);
    assert_eq!(
        ring.checkpoint(&StreamId::default()).await.unwrap(),
        Some(3)
    );
    assert_eq!(
        ring.checkpoint(&StreamId::new("other").unwrap())
            .await
            .unwrap(),
        None
    );
}
