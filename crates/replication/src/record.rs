//! What a sink receives: a small header and the event's bytes in the sink's
//! encoding.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::event::{Codec, CodecError, Encoding, EventKind, ReplicationEvent};
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
    forms: Mutex<Vec<(Encoding, Result<Bytes, CodecError>)>>,
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
}

impl<E: ReplicationEvent> EncodedEvent<E> {
    /// Wraps an event a replicator has stamped.
    pub fn new(stream: StreamId, event: E) -> Self {
        let header = Arc::new(RecordHeader::of(stream, &event));
        Self {
            event,
            header,
            forms: Mutex::new(Vec::with_capacity(2)),
        }
    }

    /// Records that the event's form in `encoding` is `bytes` (read back
    /// from the log, say), so that it is not encoded again.
    pub fn seed(&self, encoding: Encoding, bytes: Bytes) {
        let mut forms = self
            .forms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !forms.iter().any(|(e, _)| *e == encoding) {
            forms.push((encoding, Ok(bytes)));
        }
    }

    /// The record in `encoding`, encoding the event on first use only.
    ///
    /// # Errors
    ///
    /// The codec's error, also remembered, so a failing encoding is not
    /// retried for every sink.
    pub fn record(&self, codec: &dyn Codec<E>, encoding: Encoding) -> Result<Record, CodecError> {
        let mut forms = self
            .forms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bytes = match forms.iter().find(|(e, _)| *e == encoding) {
            Some((_, result)) => result.clone(),
            None => {
                let result = codec.encode(&self.event, encoding);
                forms.push((encoding, result.clone()));
                result
            }
        }?;
        Ok(Record::new(self.header.clone(), encoding, bytes))
    }
}
