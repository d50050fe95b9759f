//! What a sink receives: a small header and the event's bytes in the sink's
//! encoding; and [`EventBatch`], the shared form of consecutive events from
//! which records are borrowed.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;

use crate::event::{Assignment, Codec, CodecError, Encoding, EventKind, Format, ReplicationEvent};
use crate::log::LogBatch;
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

/// One sequenced event in one encoding, as a sink sees it: borrowed from
/// the batch the delivery engine holds, so handing a batch of records to a
/// sink costs no allocation and no reference counting. A sink that keeps
/// records takes an [`OwnedRecord`] with [`Record::to_owned`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Record<'a> {
    header: &'a RecordHeader,
    encoding: Encoding,
    bytes: &'a Bytes,
}

impl<'a> Record<'a> {
    /// A record of `bytes` in `encoding`.
    pub fn new(header: &'a RecordHeader, encoding: Encoding, bytes: &'a Bytes) -> Self {
        Self {
            header,
            encoding,
            bytes,
        }
    }

    /// The header.
    pub fn header(&self) -> &'a RecordHeader {
        self.header
    }

    /// Shorthand for `self.header().sequence`.
    pub fn sequence(&self) -> u64 {
        self.header.sequence
    }

    /// Shorthand for `self.header().stream`.
    pub fn stream(&self) -> &'a StreamId {
        &self.header.stream
    }

    /// The encoding of [`Record::bytes`].
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The encoded event.
    pub fn bytes(&self) -> &'a Bytes {
        self.bytes
    }

    /// A copy that owns its parts (the bytes are shared, not copied).
    pub fn to_owned(&self) -> OwnedRecord {
        OwnedRecord {
            header: self.header.clone(),
            encoding: self.encoding,
            bytes: self.bytes.clone(),
        }
    }
}

/// A record that owns its parts: what a sink keeps, or what replay yields.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OwnedRecord {
    header: RecordHeader,
    encoding: Encoding,
    bytes: Bytes,
}

impl OwnedRecord {
    /// A record of `bytes` in `encoding`.
    pub fn new(header: RecordHeader, encoding: Encoding, bytes: Bytes) -> Self {
        Self {
            header,
            encoding,
            bytes,
        }
    }

    /// The record, borrowed.
    pub fn as_record(&self) -> Record<'_> {
        Record::new(&self.header, self.encoding, &self.bytes)
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

    /// The encoding of [`OwnedRecord::bytes`].
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The encoded event.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// A batch of events in one encoding: for each event its bytes (slices of
/// one buffer) or why it has no form there.
#[derive(Debug)]
pub struct Form {
    items: Vec<Result<Bytes, CodecError>>,
}

impl Form {
    /// The `index`-th event's bytes or error.
    pub fn item(&self, index: usize) -> Option<&Result<Bytes, CodecError>> {
        self.items.get(index)
    }

    fn build<E: 'static>(events: &[E], codec: &dyn Codec<E>, encoding: Encoding) -> Self {
        Self {
            items: codec.encode_batch(events, encoding),
        }
    }
}

/// Consecutive events of one stream, stamped by a replicator, with each
/// encoding computed at most once for the whole batch and shared by every
/// sink that writes it. Sinks borrow [`Record`]s from it.
#[derive(Debug)]
pub struct EventBatch<E> {
    events: Vec<E>,
    headers: Vec<RecordHeader>,
    /// JSON and protobuf at versions 1 and 2, readable without a lock.
    common: [OnceLock<Arc<Form>>; 4],
    /// Any other encoding.
    other: Mutex<Vec<(Encoding, Arc<Form>)>>,
    /// The encoding the log stores, once [`EventBatch::prepare_log`] ran.
    logged: OnceLock<Arc<Form>>,
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

impl<E> EventBatch<E> {
    /// The events.
    pub fn events(&self) -> &[E] {
        &self.events
    }

    /// The headers, one per event.
    pub fn headers(&self) -> &[RecordHeader] {
        &self.headers
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Takes the events back.
    pub fn into_events(self) -> Vec<E> {
        self.events
    }

    /// The first sequence.
    pub fn first_sequence(&self) -> u64 {
        self.headers.first().map_or(0, |h| h.sequence)
    }
}

impl<E: ReplicationEvent> EventBatch<E> {
    /// A batch of events a replicator has stamped (each event's own
    /// sequence and timestamp go into its header).
    pub fn new(stream: &StreamId, events: Vec<E>) -> Self {
        let headers = events
            .iter()
            .map(|e| RecordHeader::of(stream.clone(), e))
            .collect();
        Self::with_headers(events, headers)
    }

    /// A batch of events read back from a log: each is stamped with its
    /// stored sequence and timestamp (whatever the codec restored), and the
    /// stored bytes are kept as its form in `encoding`.
    pub fn from_stored(
        stream: &StreamId,
        stored: Vec<(u64, Timestamp, E, Bytes)>,
        encoding: Encoding,
    ) -> Self {
        let mut events = Vec::with_capacity(stored.len());
        let mut payloads = Vec::with_capacity(stored.len());
        for (sequence, timestamp, mut event, payload) in stored {
            event.assign(&Assignment {
                stream,
                sequence,
                timestamp,
            });
            events.push(event);
            payloads.push(Ok(payload));
        }
        let batch = Self::new(stream, events);
        batch.set_form(encoding, Arc::new(Form { items: payloads }));
        batch
    }

    fn with_headers(events: Vec<E>, headers: Vec<RecordHeader>) -> Self {
        Self {
            events,
            headers,
            common: Default::default(),
            other: Mutex::new(Vec::new()),
            logged: OnceLock::new(),
        }
    }

    fn set_form(&self, encoding: Encoding, form: Arc<Form>) {
        if let Some(slot) = common_slot(encoding) {
            let _ = self.common[slot].set(form);
            return;
        }
        let mut other = self.other.lock().unwrap_or_else(PoisonError::into_inner);
        if !other.iter().any(|(e, _)| *e == encoding) {
            other.push((encoding, form));
        }
    }

    /// The batch in `encoding`, encoding it on first use only.
    pub fn form(&self, codec: &dyn Codec<E>, encoding: Encoding) -> Arc<Form> {
        if let Some(slot) = common_slot(encoding) {
            return self.common[slot]
                .get_or_init(|| Arc::new(Form::build(&self.events, codec, encoding)))
                .clone();
        }
        let mut other = self.other.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, form)) = other.iter().find(|(e, _)| *e == encoding) {
            return form.clone();
        }
        let form = Arc::new(Form::build(&self.events, codec, encoding));
        other.push((encoding, form.clone()));
        form
    }

    /// Encodes the batch in the log's encoding, so that it can be appended.
    ///
    /// # Errors
    ///
    /// The first event the codec cannot encode, with its index.
    pub fn prepare_log(
        &self,
        codec: &dyn Codec<E>,
        encoding: Encoding,
    ) -> Result<(), (usize, CodecError)> {
        let form = self.form(codec, encoding);
        if let Some((index, Err(err))) = form.items.iter().enumerate().find(|(_, r)| r.is_err()) {
            return Err((index, err.clone()));
        }
        let _ = self.logged.set(form);
        Ok(())
    }

    /// The `index`-th event in `encoding` (from `form`, which must be this
    /// batch's form in that encoding).
    pub fn record<'a>(
        &'a self,
        index: usize,
        encoding: Encoding,
        form: &'a Form,
    ) -> Option<Result<Record<'a>, &'a CodecError>> {
        let header = self.headers.get(index)?;
        Some(match form.item(index)? {
            Ok(bytes) => Ok(Record::new(header, encoding, bytes)),
            Err(err) => Err(err),
        })
    }
}

impl<E: ReplicationEvent> LogBatch for EventBatch<E> {
    fn first_sequence(&self) -> u64 {
        EventBatch::first_sequence(self)
    }

    fn len(&self) -> usize {
        self.events.len()
    }

    fn timestamp(&self, index: usize) -> Timestamp {
        self.headers
            .get(index)
            .map_or(Timestamp::MIN, |h| h.timestamp)
    }

    fn payload(&self, index: usize) -> &[u8] {
        match self.logged.get().and_then(|f| f.item(index)) {
            Some(Ok(bytes)) => bytes,
            _ => &[],
        }
    }
}
