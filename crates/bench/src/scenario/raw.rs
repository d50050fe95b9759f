//! A pre-encoded event for the framework benchmarks: its codec only copies
//! out the bytes it already has, so what is measured is the framework.

use bytes::Bytes;
use omnirelay_replication::{
    Assignment, Codec, CodecError, Encoding, EventKind, Format, ReplicationEvent, StreamId,
    Timestamp, WireVersion,
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
