//! A pre-encoded event for the framework benchmarks: its codec only copies
//! out the bytes it already has, so what is measured is the framework.

use std::sync::Arc;

use bytes::Bytes;
use omnirelay_replication::{
    Assignment, Codec, CodecError, Encoding, EventKind, Format, OwnedRecord, RecordHeader,
    ReplicationEvent, SharedSink, SinkExt, StreamId, Timestamp, WireVersion,
};

/// The size of every benchmark event.
pub(crate) const EVENT_BYTES: usize = 200;

/// An event that is already bytes.
#[derive(Clone, Debug)]
pub(crate) struct RawEvent {
    pub(crate) bytes: Bytes,
    sequence: u64,
    timestamp: Timestamp,
}

impl RawEvent {
    pub(crate) fn new(i: usize) -> Self {
        let mut text = format!("{{\"n\":{i},\"pad\":\"");
        while text.len() < EVENT_BYTES - 2 {
            text.push('x');
        }
        text.push_str("\"}");
        Self {
            bytes: Bytes::from(text),
            sequence: 0,
            timestamp: Timestamp::MIN,
        }
    }
}

impl ReplicationEvent for RawEvent {
    fn kind(&self) -> EventKind {
        EventKind {
            code: 1,
            name: "Raw",
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

/// Hands out the event's bytes in every encoding.
#[derive(Debug, Default)]
pub(crate) struct RawCodec;

impl Codec<RawEvent> for RawCodec {
    fn latest_version(&self) -> WireVersion {
        WireVersion::V1
    }

    fn encode(&self, event: &RawEvent, _encoding: Encoding) -> Result<Bytes, CodecError> {
        Ok(event.bytes.clone())
    }

    fn encode_into(
        &self,
        event: &RawEvent,
        _encoding: Encoding,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        out.extend_from_slice(&event.bytes);
        Ok(())
    }

    fn decode(&self, _format: Format, bytes: &[u8]) -> Result<RawEvent, CodecError> {
        Ok(RawEvent {
            bytes: Bytes::copy_from_slice(bytes),
            sequence: 0,
            timestamp: Timestamp::MIN,
        })
    }
}

/// A reference-shaped JSON event of [`EVENT_BYTES`] bytes, for the sink
/// scenarios (the same text on both sides of a comparison).
pub(crate) fn json_document(sequence: u64) -> String {
    let mut doc = format!(
        r#"{{"sequenceNumber":{sequence},"eventType":"Enqueue","timestamp":"2026-11-28T05:25:01.6823902+00:00","peerId":"worker-1","pad":""#
    );
    while doc.len() < EVENT_BYTES - 2 {
        doc.push('x');
    }
    doc.push_str("\"}");
    doc
}

/// The candidate side of a sink scenario: batches of [`json_records`] of
/// the stream `default`, numbered on, applied to `sink`.
pub(crate) struct SinkSide {
    pub(crate) sink: SharedSink,
    next: u64,
    records: MakeRecords,
}

/// Makes `count` records from sequence `first` on.
pub(crate) type MakeRecords = Box<dyn Fn(u64, usize) -> Vec<OwnedRecord>>;

impl SinkSide {
    pub(crate) fn new(sink: SharedSink) -> Self {
        Self::with_records(
            sink,
            Box::new(|first, count| json_records(&StreamId::default(), first, count)),
        )
    }

    /// A side applying the records `records` makes.
    pub(crate) fn with_records(sink: SharedSink, records: MakeRecords) -> Self {
        Self {
            sink,
            next: 1,
            records,
        }
    }

    /// Applies the next `count` records; `count`.
    pub(crate) fn pass(&mut self, runtime: &tokio::runtime::Runtime, count: usize) -> u64 {
        let records = (self.records)(self.next, count);
        runtime
            .block_on(self.sink.apply_owned(&records))
            .unwrap_or_else(|e| panic!("sink: {e}"));
        self.next += count as u64;
        count as u64
    }
}

/// `count` records of [`json_document`]s of `stream` from `first` on, as a
/// sink receives them.
pub(crate) fn json_records(stream: &StreamId, first: u64, count: usize) -> Vec<OwnedRecord> {
    records(stream, first, count, Encoding::JSON_V1, |sequence| {
        Bytes::from(json_document(sequence))
    })
}

/// `count` enqueue records of `stream` from `first` on in `encoding`, each
/// with the bytes `payload` makes for its sequence, as a sink receives
/// them.
pub(crate) fn records(
    stream: &StreamId,
    first: u64,
    count: usize,
    encoding: Encoding,
    payload: impl Fn(u64) -> Bytes,
) -> Vec<OwnedRecord> {
    let timestamp = Timestamp::now();
    let peer: Arc<str> = Arc::from("worker-1");
    (first..first + count as u64)
        .map(|sequence| {
            let header = RecordHeader {
                sequence,
                timestamp,
                kind: EventKind {
                    code: 1,
                    name: "Enqueue",
                },
                peer: Some(peer.clone()),
            };
            OwnedRecord::new(stream.clone(), header, encoding, payload(sequence))
        })
        .collect()
}

/// A sink that counts what it gets (and touches every record's bytes).
#[derive(Clone, Debug, Default)]
pub(crate) struct Counting(pub(crate) std::sync::Arc<std::sync::atomic::AtomicU64>);

impl omnirelay_replication::Sink for Counting {
    async fn apply(
        &self,
        batch: &[omnirelay_replication::Record<'_>],
    ) -> Result<(), omnirelay_replication::SinkError> {
        let bytes: usize = batch.iter().map(|r| r.bytes().len()).sum();
        std::hint::black_box(bytes);
        self.0
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
