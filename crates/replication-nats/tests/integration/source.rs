//! The NATS source: a replica fed from JetStream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::ConnectOptions;
use bytes::Bytes;
use omnirelay_replication::{
    Assignment, Codec, CodecError, Encoding, EventKind, Format, ReplicationEvent, SharedSink,
    SinkExt, StreamId, Timestamp, WireVersion,
};
use omnirelay_replication_nats::{
    HeldAt, NatsSink, NatsSinkOptions, NatsSource, NatsSourceOptions,
};
use omnirelay_replication_testkit::FaultySink;
use omnirelay_replication_testkit::conformance::{self, Backend, record};
use tokio::sync::Mutex;

use crate::support::{Nats, oversized, publish_as_sink, publish_on};

/// An event that is its JSON bytes: the suite's records pass through the
/// bus and the source unchanged.
#[derive(Clone, Debug)]
pub(crate) struct Doc {
    bytes: Bytes,
    sequence: u64,
    timestamp: Timestamp,
}

impl ReplicationEvent for Doc {
    fn kind(&self) -> EventKind {
        EventKind {
            code: 1,
            name: "Doc",
        }
    }

    fn peer(&self) -> Option<&str> {
        None
    }

    fn sequence(&self) -> u64 {
        self.sequence
    }

    fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    fn assign(&mut self, assignment: &Assignment<'_>) {
        self.sequence = assignment.sequence;
        self.timestamp = assignment.timestamp;
    }

    fn set_shard(&mut self, _shard: &StreamId) {}
}

#[derive(Debug)]
pub(crate) struct DocCodec;

impl Codec<Doc> for DocCodec {
    fn latest_version(&self) -> WireVersion {
        WireVersion::V1
    }

    fn encode(&self, doc: &Doc, _encoding: Encoding) -> Result<Bytes, CodecError> {
        Ok(doc.bytes.clone())
    }

    fn decode(&self, _format: Format, bytes: &[u8]) -> Result<Doc, CodecError> {
        Ok(Doc {
            bytes: Bytes::copy_from_slice(bytes),
            sequence: 0,
            timestamp: Timestamp::MIN,
        })
    }
}

/// Polls until a fetch comes back empty.
async fn drain(source: &mut NatsSource<Doc>) -> usize {
    let mut applied = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let polled = source.poll().await.unwrap();
        applied += polled.applied;
        if polled.messages == 0 {
            return applied;
        }
        assert!(Instant::now() < deadline, "the source never drained");
    }
}

pub(crate) async fn source(nats: &Nats, durable: &str, replica: &FaultySink) -> NatsSource<Doc> {
    let mut source = NatsSource::connect(
        std::slice::from_ref(&nats.url),
        ConnectOptions::new(),
        Arc::new(DocCodec),
        NatsSourceOptions {
            wait: Duration::from_millis(200),
            ..NatsSourceOptions::new(durable)
        },
    )
    .await
    .unwrap();
    source.add_sink("replica", replica.clone().shared(), Encoding::JSON_V1);
    source
}

/// The conformance suite through the bus: records go into the NATS sink,
/// and what the backend "holds" is what a source-fed replica that keeps
/// every record it is given (duplicates included) received.
struct Replicated {
    nats: Nats,
    replica: FaultySink,
    source: Mutex<Option<NatsSource<Doc>>>,
}

impl Backend for Replicated {
    async fn open(&self) -> SharedSink {
        NatsSink::connect(
            std::slice::from_ref(&self.nats.url),
            NatsSinkOptions {
                ack_timeout: Duration::from_secs(1),
                ..NatsSinkOptions::new()
            },
        )
        .await
        .unwrap()
        .shared()
    }

    async fn stored(&self, stream: &StreamId) -> Vec<(u64, Vec<u8>)> {
        let mut source = self.source.lock().await;
        if source.is_none() {
            *source = Some(crate::source::source(&self.nats, "conformance", &self.replica).await);
        }
        drain(source.as_mut().unwrap()).await;
        self.replica
            .records()
            .iter()
            .filter(|r| r.stream() == stream)
            .map(|r| (r.sequence(), r.bytes().to_vec()))
            .collect()
    }

    fn poison(&self) -> Option<Bytes> {
        Some(oversized())
    }

    async fn begin_outage(&self) -> bool {
        self.nats.signal("STOP");
        true
    }

    async fn end_outage(&self) {
        self.nats.signal("CONT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_source_fed_replica_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Replicated {
        nats: Nats::start(dir.path()),
        replica: FaultySink::new(),
        source: Mutex::new(None),
    };
    let report = conformance::run(&backend).await;
    report.assert_passed();
    assert_eq!(report.passed().len(), 7, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_restarted_source_resumes_and_its_mark_drops_what_sinks_hold() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let sink = NatsSink::connect(std::slice::from_ref(&nats.url), NatsSinkOptions::new())
        .await
        .unwrap();
    let stream = StreamId::default();
    let notes = |range: std::ops::RangeInclusive<u64>| -> Vec<_> {
        range
            .map(|s| record(&stream, s, Encoding::JSON_V1))
            .collect()
    };
    sink.apply_owned(&notes(1..=5)).await.unwrap();

    let replica = FaultySink::new();
    let mut first = source(&nats, "replica", &replica).await;
    assert_eq!(drain(&mut first).await, 5);
    drop(first);
    sink.apply_owned(&notes(6..=8)).await.unwrap();
    let mut restarted = source(&nats, "replica", &replica).await;
    assert_eq!(
        drain(&mut restarted).await,
        3,
        "the durable consumer resumes after 5"
    );
    assert_eq!(replica.sequences(), (1..=8).collect::<Vec<_>>());

    // A new consumer from the start, for a sink that already holds 1..=6:
    // the first six are dropped by the mark, the rest applied.
    let holder = FaultySink::new();
    holder.keep_checkpoint(6);
    let mut fresh = source(&nats, "another", &holder).await;
    assert_eq!(drain(&mut fresh).await, 2);
    assert_eq!(holder.sequences(), [7, 8]);
}

/// A server holding records 1..=`count` of the stream `default`, published
/// by the NATS sink in JSON, version 1.
async fn published(dir: &std::path::Path, count: u64) -> Nats {
    let nats = Nats::start(dir);
    let sink = NatsSink::connect(std::slice::from_ref(&nats.url), NatsSinkOptions::new())
        .await
        .unwrap();
    let stream = StreamId::default();
    let records: Vec<_> = (1..=count)
        .map(|s| record(&stream, s, Encoding::JSON_V1))
        .collect();
    sink.apply_owned(&records).await.unwrap();
    nats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_record_a_sink_refuses_is_skipped_and_the_rest_applied() {
    let dir = tempfile::tempdir().unwrap();
    let nats = published(dir.path(), 5).await;
    let replica = FaultySink::new();
    replica.poison(3);
    let mut source = source(&nats, "replica", &replica).await;
    assert_eq!(drain(&mut source).await, 5, "all five were handled");
    assert_eq!(replica.sequences(), [1, 2, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_source_that_requires_a_version_refuses_older_messages_and_leaves_them() {
    let dir = tempfile::tempdir().unwrap();
    let nats = published(dir.path(), 3).await;
    let replica = FaultySink::new();
    let mut strict = source(&nats, "strict", &replica).await;
    strict.require_version(WireVersion::new(2).unwrap());
    let refused = strict.poll().await.unwrap_err();
    assert!(
        refused.to_string().contains("needs schema version 2"),
        "{refused}"
    );
    assert!(replica.sequences().is_empty());
    // Nothing was acknowledged, and the messages stay on the bus for a
    // reader without the requirement.
    assert_eq!(strict.pending().await.unwrap(), 3);
    let mut lenient = source(&nats, "lenient", &replica).await;
    assert_eq!(drain(&mut lenient).await, 3);
    assert_eq!(replica.sequences(), vec![1, 2, 3]);
}

/// Makes the stream as a sink does, then publishes as a sink would the
/// replication stream `default`'s `(sequence, previous)` messages in that
/// order.
async fn bus_holding(nats: &Nats, messages: &[(u64, Option<u64>)]) {
    let sink = NatsSink::connect(std::slice::from_ref(&nats.url), NatsSinkOptions::new())
        .await
        .unwrap();
    omnirelay_replication::Sink::checkpoint(&sink, &StreamId::default())
        .await
        .unwrap();
    for &(sequence, previous) in messages {
        let body = format!("{{\"sequenceNumber\":{sequence}}}");
        publish_as_sink(&nats.url, "default", sequence, previous, body.as_bytes()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_messages_the_bus_holds_out_of_order_are_applied_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    // 4 was lost and published again after 5; 7 comes from a sink that
    // names no predecessor; 8 never comes.
    bus_holding(
        &nats,
        &[
            (1, Some(0)),
            (2, Some(1)),
            (3, Some(2)),
            (5, Some(4)),
            (4, Some(3)),
            (6, Some(5)),
            (7, None),
            (9, Some(8)),
            (10, Some(9)),
        ],
    )
    .await;
    let replica = FaultySink::new();
    let mut source = NatsSource::connect(
        std::slice::from_ref(&nats.url),
        ConnectOptions::new(),
        Arc::new(DocCodec),
        NatsSourceOptions {
            wait: Duration::from_millis(200),
            reorder_wait: Duration::from_millis(800),
            ..NatsSourceOptions::new("reordering")
        },
    )
    .await
    .unwrap();
    source.add_sink("replica", replica.clone().shared(), Encoding::JSON_V1);
    let started = Instant::now();
    let mut gaps = 0;
    while replica.sequences().len() < 7 {
        let polled = source.poll().await.unwrap();
        gaps += polled.gaps;
        assert!(started.elapsed() < Duration::from_secs(10), "stalled");
    }
    assert_eq!(
        replica.sequences(),
        [1, 2, 3, 4, 5, 6, 7],
        "in order, 9 held"
    );
    let polled = source.poll().await.unwrap();
    if started.elapsed() < Duration::from_millis(700) {
        assert_eq!(polled.held, 2, "9 waits for 8, and 10 behind it");
    }
    while replica.sequences().len() < 9 {
        let polled = source.poll().await.unwrap();
        gaps += polled.gaps;
        assert!(started.elapsed() < Duration::from_secs(10), "stalled");
    }
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(replica.sequences(), [1, 2, 3, 4, 5, 6, 7, 9, 10]);
    assert_eq!(gaps, 1, "the one gap, counted");
    assert_eq!(source.poll().await.unwrap().held, 0);
    assert_eq!(
        source.pending().await.unwrap(),
        0,
        "everything acknowledged"
    );
}

/// A replica that takes no gap, as a standby: a record past the next
/// sequence is refused (retryable) after the ones before it.
#[derive(Clone, Debug, Default)]
struct Contiguous(Arc<std::sync::Mutex<Vec<u64>>>);

impl Contiguous {
    fn sequences(&self) -> Vec<u64> {
        self.0.lock().unwrap().clone()
    }
}

impl omnirelay_replication::Sink for Contiguous {
    async fn checkpoint(
        &self,
        _stream: &StreamId,
    ) -> Result<Option<u64>, omnirelay_replication::SinkError> {
        Ok(self.0.lock().unwrap().last().copied())
    }

    async fn apply(
        &self,
        batch: &[omnirelay_replication::Record<'_>],
    ) -> Result<(), omnirelay_replication::SinkError> {
        let mut applied = self.0.lock().unwrap();
        for record in batch {
            let last = applied.last().copied().unwrap_or(0);
            if record.sequence() <= last {
                continue;
            }
            if record.sequence() != last + 1 {
                return Err(omnirelay_replication::SinkError::new(
                    omnirelay_replication::ErrorKind::Unavailable,
                    format!("a gap from {last} to {}", record.sequence()),
                ));
            }
            applied.push(record.sequence());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_a_replica_that_takes_no_gap_gets_the_predecessor_that_comes_after_reorder_wait() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    // 3 was lost; its sink publishes it again only after the readers'
    // reorder_wait (a primary that stopped before its retry, restarted).
    bus_holding(
        &nats,
        &[(1, Some(0)), (2, Some(1)), (4, Some(3)), (5, Some(4))],
    )
    .await;
    let strict = Contiguous::default();
    let other = FaultySink::new();
    other.keep_checkpoint(0);
    let mut source = NatsSource::connect(
        std::slice::from_ref(&nats.url),
        ConnectOptions::new(),
        Arc::new(DocCodec),
        NatsSourceOptions {
            wait: Duration::from_millis(100),
            reorder_wait: Duration::from_millis(300),
            retry: omnirelay_replication::RetryPolicy {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
                ..omnirelay_replication::RetryPolicy::default()
            },
            ..NatsSourceOptions::new("strict")
        },
    )
    .await
    .unwrap();
    source.add_sink("strict", strict.clone().shared(), Encoding::JSON_V1);
    source.add_sink("other", other.clone().shared(), Encoding::JSON_V1);
    let started = Instant::now();
    let mut refused = 0;
    // Past reorder_wait 4 is offered with the gap and refused, again and
    // again, and each poll returns.
    while started.elapsed() < Duration::from_millis(1200) {
        let polled = tokio::time::timeout(Duration::from_secs(5), source.poll())
            .await
            .expect("a poll returns while a sink refuses the gap")
            .unwrap();
        refused += polled.refused;
        assert_eq!(polled.gaps, 0, "nothing applied with the gap");
    }
    assert!(refused >= 2, "offered again with backoff: {refused}");
    assert!(source.refusing_gap());
    assert_eq!(strict.sequences(), [1, 2]);
    let late = br#"{"sequenceNumber":3}"#;
    publish_as_sink(&nats.url, "default", 3, Some(2), late).await;
    while strict.sequences().len() < 5 {
        let polled = source.poll().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(10), "stalled");
        assert_eq!(polled.gaps, 0);
    }
    assert_eq!(strict.sequences(), [1, 2, 3, 4, 5]);
    assert!(!source.refusing_gap());
    // The other sink, after the refusing one, was not offered the gap.
    assert_eq!(other.sequences(), [1, 2, 3, 4, 5]);
    assert_eq!(source.poll().await.unwrap().held, 0);
    assert_eq!(
        source.pending().await.unwrap(),
        0,
        "everything acknowledged"
    );
}

/// What [`NatsSource::event_at`] found, the event as its bytes.
async fn held_at(source: &NatsSource<Doc>, stream: &StreamId, sequence: u64) -> HeldAt<Bytes> {
    match source.event_at(stream, sequence).await.unwrap() {
        HeldAt::Event(doc) => HeldAt::Event(doc.bytes),
        HeldAt::EndsAt(newest) => HeldAt::EndsAt(newest),
        HeldAt::NotFound(why) => HeldAt::NotFound(why),
    }
}

/// A reader checking its copy of a stream against the bus finds the
/// message of any sequence of its stream among another stream's, says how
/// far the stream goes when asked past its end, finds one published out of
/// order, and says when the bus no longer holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_the_bus_is_read_at_a_sequence_of_one_stream() {
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    let sink = NatsSink::connect(std::slice::from_ref(&nats.url), NatsSinkOptions::new())
        .await
        .unwrap();
    let (ours, theirs) = (StreamId::default(), StreamId::new("other").unwrap());
    for sequence in 1..=40 {
        for stream in [&theirs, &ours] {
            let records = [record(stream, sequence, Encoding::JSON_V1)];
            sink.apply_owned(&records).await.unwrap();
        }
    }
    let reader = source(&nats, "reader", &FaultySink::new()).await;
    for sequence in [1, 2, 17, 39, 40] {
        match held_at(&reader, &ours, sequence).await {
            HeldAt::Event(bytes) => {
                assert_eq!(bytes, record(&ours, sequence, Encoding::JSON_V1).bytes());
            }
            other => panic!("sequence {sequence}: {other:?}"),
        }
    }
    assert!(matches!(
        held_at(&reader, &ours, 41).await,
        HeldAt::EndsAt(40)
    ));
    let nothing = StreamId::new("nothing").unwrap();
    assert!(matches!(
        held_at(&reader, &nothing, 1).await,
        HeldAt::NotFound(_)
    ));
    // The stream's limits removed the first 20 messages.
    async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap())
        .get_stream(omnirelay_replication_nats::DEFAULT_STREAM)
        .await
        .unwrap()
        .purge()
        .sequence(21)
        .await
        .unwrap();
    match held_at(&reader, &ours, 10).await {
        HeldAt::NotFound(why) => assert!(why.contains("does not hold sequence 10"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        held_at(&reader, &ours, 11).await,
        HeldAt::Event(_)
    ));
    drop(sink);

    // 5 000 published again after 5 100, among 6 000: the bisection
    // lands past it and reads on.
    let dir = tempfile::tempdir().unwrap();
    let nats = Nats::start(dir.path());
    bus_holding(&nats, &[]).await;
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let order = (1..=6000u64)
        .filter(|s| *s != 5000)
        .flat_map(|s| std::iter::once(s).chain((s == 5100).then_some(5000)));
    for sequence in order {
        let body = format!("{{\"sequenceNumber\":{sequence}}}");
        publish_on(
            &js,
            "default",
            sequence,
            Some(sequence - 1),
            body.as_bytes(),
            None,
        )
        .await;
    }
    let reader = source(&nats, "reader", &FaultySink::new()).await;
    for sequence in [1, 3000, 4999, 5000, 5001, 5100, 5101, 6000] {
        match held_at(&reader, &ours, sequence).await {
            HeldAt::Event(bytes) => {
                let body = format!("{{\"sequenceNumber\":{sequence}}}");
                assert_eq!(bytes, body.as_bytes());
            }
            other => panic!("sequence {sequence}: {other:?}"),
        }
    }
    assert!(matches!(
        held_at(&reader, &ours, 6001).await,
        HeldAt::EndsAt(6000)
    ));
}
