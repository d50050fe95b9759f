//! What a sink receives: a small header and the event's bytes in the sink's
//! encoding.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use crate::event::{Codec, CodecError, Encoding, EventKind, Format, ReplicationEvent};
use crate::stream::StreamId;
use crate::time::Timestamp;

/// The fields of a record that sinks need for columns, keys and headers,
/// so that they never re-parse the bytes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecordHeader {
    /// The stream the record belongs to.
    pub stream: StreamId,
    /// Its gap-free position in the stream, from 1.
    pub sequence: u64,
    /// When the replicator accepted it.
    pub timestamp: Timestamp,
    /// The event type.
    pub kind: EventKind,
    /// The peer that caused the event, if any.
    pub peer: Option<Arc<str>>,
}

impl RecordHeader {
    /// The header of an event a replicator has stamped.
    pub fn of<E: ReplicationEvent>(stream: StreamId, event: &E) -> Self {
        Self {
            stream,
            sequence: event.sequence(),
            timestamp: event.timestamp(),
            kind: event.kind(),
            peer: event.peer().map(Arc::from),
        }
    }
}

/// One sequenced event in one encoding. Cloning is cheap: the header and
/// the bytes are shared.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    header: Arc<RecordHeader>,
    encoding: Encoding,
    bytes: Bytes,
}

impl Record {
    /// A record of `bytes` in `encoding`.
    pub fn new(header: Arc<RecordHeader>, encoding: Encoding, bytes: Bytes) -> Self {
        Self {
            header,
            encoding,
            bytes,
        }
    }

    /// The header.
    pub fn header(&self) -> &RecordHeader {
        &self.header
    }

    /// Shorthand for `self.header().sequence`.
    pub fn sequence(&self) -> u64 {
        self.header.sequence
    }

    /// Shorthand for `self.header().stream`.
    pub fn stream(&self) -> &StreamId {
        &self.header.stream
    }

    /// The encoding of [`Record::bytes`].
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The encoded event.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// A sequenced event with each of its encodings computed at most once and
/// shared by every sink that writes it.
#[derive(Debug)]
pub struct EncodedEvent<E> {
    event: E,
    header: Arc<RecordHeader>,
    /// JSON and protobuf at versions 1 and 2, readable without a lock.
    common: [OnceLock<Result<Bytes, CodecError>>; 4],
    /// Any other encoding.
    other: Mutex<Vec<(Encoding, Result<Bytes, CodecError>)>>,
}

fn common_slot(encoding: Encoding) -> Option<usize> {
    let format = match encoding.format {
        Format::Json => 0,
        Format::Protobuf => 2,
    };
    match encoding.version.get() {
        1 => Some(format),
        2 => Some(format + 1),
        _ => None,
    }
}

impl<E> EncodedEvent<E> {
    /// The event.
    pub fn event(&self) -> &E {
        &self.event
    }

    /// The shared header.
    pub fn header(&self) -> &Arc<RecordHeader> {
        &self.header
    }

    /// Takes the event back.
    pub fn into_event(self) -> E {
        self.event
    }
}

impl<E: ReplicationEvent> EncodedEvent<E> {
    /// Wraps an event a replicator has stamped.
    pub fn new(stream: StreamId, event: E) -> Self {
        let header = Arc::new(RecordHeader::of(stream, &event));
        Self {
            event,
            header,
            common: Default::default(),
            other: Mutex::new(Vec::new()),
        }
    }

    /// Records that the event's form in `encoding` is `bytes` (read back
    /// from the log, say), so that it is not encoded again.
    pub fn seed(&self, encoding: Encoding, bytes: Bytes) {
        if let Some(slot) = common_slot(encoding) {
            let _ = self.common[slot].set(Ok(bytes));
            return;
        }
        let mut other = self
            .other
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !other.iter().any(|(e, _)| *e == encoding) {
            other.push((encoding, Ok(bytes)));
        }
    }

    /// The record in `encoding`, encoding the event on first use only.
    ///
    /// # Errors
    ///
    /// The codec's error, also remembered, so a failing encoding is not
    /// retried for every sink.
    pub fn record(&self, codec: &dyn Codec<E>, encoding: Encoding) -> Result<Record, CodecError> {
        let bytes = self.bytes(codec, encoding)?;
        Ok(Record::new(self.header.clone(), encoding, bytes))
    }

    /// The event's bytes in `encoding`, encoding it on first use only.
    ///
    /// # Errors
    ///
    /// As [`EncodedEvent::record`].
    pub fn bytes(&self, codec: &dyn Codec<E>, encoding: Encoding) -> Result<Bytes, CodecError> {
        match common_slot(encoding) {
            Some(slot) => self.common[slot]
                .get_or_init(|| codec.encode(&self.event, encoding))
                .clone(),
            None => {
                let mut other = self
                    .other
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match other.iter().find(|(e, _)| *e == encoding) {
                    Some((_, result)) => result.clone(),
                    None => {
                        let result = codec.encode(&self.event, encoding);
                        other.push((encoding, result.clone()));
                        result
                    }
                }
            }
        }
    }
}
