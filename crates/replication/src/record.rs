//! What a sink receives: a small header and the event's bytes in the sink's
//! encoding; and [`EventBatch`], the shared form of consecutive events from
//! which records are borrowed.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;

use crate::event::{
    Assignment, Codec, CodecError, CodecErrorKind, Encoding, EventKind, Format, ReplicationEvent,
};
use crate::log::LogBatch;
use crate::stream::StreamId;
use crate::time::Timestamp;

/// The fields of a record that sinks need for columns, keys and headers,
/// so that they never re-parse the bytes. The stream is the batch's (see
/// [`Record::stream`]), held once per batch rather than once per event.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecordHeader {
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
    pub fn of<E: ReplicationEvent>(event: &E) -> Self {
        Self {
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
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    header: &'a RecordHeader,
    form: &'a Form,
    index: usize,
}

impl PartialEq for Record<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header
            && self.stream() == other.stream()
            && self.encoding() == other.encoding()
            && self.bytes() == other.bytes()
    }
}

impl Eq for Record<'_> {}

impl<'a> Record<'a> {
    /// The header.
    #[inline]
    pub fn header(&self) -> &'a RecordHeader {
        self.header
    }

    /// Shorthand for `self.header().sequence`.
    #[inline]
    pub fn sequence(&self) -> u64 {
        self.header.sequence
    }

    /// The stream the record belongs to.
    pub fn stream(&self) -> &'a StreamId {
        &self.form.stream
    }

    /// The encoding of [`Record::bytes`].
    pub fn encoding(&self) -> Encoding {
        self.form.encoding
    }

    /// The encoded event.
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        &self.form.buffer[self.form.span(self.index)]
    }

    /// The encoded event as shared bytes (a slice of the batch's buffer:
    /// no copy), for a sink that keeps or sends them on.
    pub fn shared_bytes(&self) -> Bytes {
        self.form.buffer.slice(self.form.span(self.index))
    }

    /// A copy that owns its parts (the bytes are shared, not copied).
    pub fn to_owned(&self) -> OwnedRecord {
        OwnedRecord {
            header: self.header.clone(),
            form: Form::whole(
                self.form.stream.clone(),
                self.form.encoding,
                self.form.buffer.slice(self.form.span(self.index)),
            ),
        }
    }
}

/// A record that owns its parts: what a sink keeps, or what replay yields.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OwnedRecord {
    header: RecordHeader,
    /// A form of exactly this record.
    form: Form,
}

impl OwnedRecord {
    /// A record of `bytes` in `encoding` in `stream`.
    pub fn new(stream: StreamId, header: RecordHeader, encoding: Encoding, bytes: Bytes) -> Self {
        Self {
            header,
            form: Form::whole(stream, encoding, bytes),
        }
    }

    /// The record, borrowed.
    pub fn as_record(&self) -> Record<'_> {
        Record {
            header: &self.header,
            form: &self.form,
            index: 0,
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

    /// The stream the record belongs to.
    pub fn stream(&self) -> &StreamId {
        &self.form.stream
    }

    /// The encoding of [`OwnedRecord::bytes`].
    pub fn encoding(&self) -> Encoding {
        self.form.encoding
    }

    /// The encoded event, shared.
    pub fn bytes(&self) -> &Bytes {
        &self.form.buffer
    }
}

/// Where each event's bytes lie in a [`Form`]'s buffer.
#[derive(Clone, PartialEq, Eq, Debug)]
enum Layout {
    /// One event: the whole buffer (an [`OwnedRecord`]).
    Whole,
    /// The end offset of each event's bytes; each starts where the previous
    /// one ends.
    Ends(Vec<usize>),
}

/// A batch of events of one stream in one encoding: one buffer holding
/// every event's bytes back to back, and for the few events that have no
/// form in this encoding, why.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Form {
    stream: StreamId,
    encoding: Encoding,
    buffer: Bytes,
    layout: Layout,
    /// By index, ascending; an event listed here has no bytes.
    errors: Vec<(usize, CodecError)>,
}

impl Form {
    fn whole(stream: StreamId, encoding: Encoding, buffer: Bytes) -> Self {
        Self {
            stream,
            encoding,
            buffer,
            layout: Layout::Whole,
            errors: Vec::new(),
        }
    }

    /// How many events.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.layout {
            Layout::Whole => 1,
            Layout::Ends(ends) => ends.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoding.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The `index`-th event's bytes or why it has none.
    #[inline]
    pub fn item(&self, index: usize) -> Option<Result<&[u8], &CodecError>> {
        if index >= self.len() {
            return None;
        }
        if let Some(err) = self.error(index) {
            return Some(Err(err));
        }
        Some(Ok(&self.buffer[self.span(index)]))
    }

    #[inline]
    fn error(&self, index: usize) -> Option<&CodecError> {
        if self.errors.is_empty() {
            return None;
        }
        self.errors
            .binary_search_by_key(&index, |(i, _)| *i)
            .ok()
            .map(|at| &self.errors[at].1)
    }

    /// The bytes of the events in `range` (which must exist).
    fn span_len(&self, range: std::ops::Range<usize>) -> usize {
        if range.is_empty() {
            return 0;
        }
        self.span(range.end - 1).end - self.span(range.start).start
    }

    /// The byte range of the `index`-th event (which must exist).
    #[inline]
    fn span(&self, index: usize) -> std::ops::Range<usize> {
        match &self.layout {
            Layout::Whole => 0..self.buffer.len(),
            Layout::Ends(ends) => {
                let start = if index == 0 { 0 } else { ends[index - 1] };
                start..ends[index]
            }
        }
    }

    fn build<E: 'static>(
        stream: &StreamId,
        events: &[E],
        codec: &dyn Codec<E>,
        encoding: Encoding,
    ) -> Self {
        let mut buffer = Vec::with_capacity(events.len() * 256);
        let mut ends = Vec::with_capacity(events.len());
        let mut errors = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let start = buffer.len();
            if let Err(err) = codec.encode_into(event, encoding, &mut buffer) {
                buffer.truncate(start);
                errors.push((index, err));
            }
            ends.push(buffer.len());
        }
        Self {
            stream: stream.clone(),
            encoding,
            buffer: Bytes::from(buffer),
            layout: Layout::Ends(ends),
            errors,
        }
    }

    /// This form's events in `encoding`: each decoded and encoded again.
    /// An event that does not decode, or has no form in `encoding`, gets
    /// no bytes, and the error says why.
    fn transcode<E: 'static>(&self, codec: &dyn Codec<E>, encoding: Encoding) -> Self {
        let mut buffer = Vec::with_capacity(self.buffer.len() + self.buffer.len() / 2);
        let mut ends = Vec::with_capacity(self.len());
        let mut errors = Vec::new();
        for index in 0..self.len() {
            let start = buffer.len();
            let encoded = match self.item(index) {
                Some(Ok(bytes)) => codec
                    .decode(self.encoding.format, bytes)
                    .and_then(|event| codec.encode_into(&event, encoding, &mut buffer)),
                Some(Err(err)) => Err(err.clone()),
                None => Err(CodecError::new(CodecErrorKind::Malformed, "no such event")),
            };
            if let Err(err) = encoded {
                buffer.truncate(start);
                errors.push((index, err));
            }
            ends.push(buffer.len());
        }
        Self {
            stream: self.stream.clone(),
            encoding,
            buffer: Bytes::from(buffer),
            layout: Layout::Ends(ends),
            errors,
        }
    }
}

/// Events already encoded in a log's encoding and not yet numbered: what
/// a node that receives encoded events appends without decoding them (see
/// [`DurableReplicator::submit_encoded`](crate::DurableReplicator::submit_encoded)).
#[derive(Clone, Debug)]
pub struct EncodedEvents {
    encoding: Encoding,
    buffer: Vec<u8>,
    ends: Vec<usize>,
    kinds: Vec<EventKind>,
    peers: Vec<Option<Arc<str>>>,
}

impl EncodedEvents {
    /// Room for `events` events of `bytes` bytes in all, in `encoding`.
    pub fn with_capacity(encoding: Encoding, events: usize, bytes: usize) -> Self {
        Self {
            encoding,
            buffer: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(events),
            kinds: Vec::with_capacity(events),
            peers: Vec::with_capacity(events),
        }
    }

    /// Adds an event of type `kind` caused by `peer`, whose bytes `write`
    /// appends to the buffer it is given (it must append exactly one event
    /// the codec decodes).
    pub fn push(&mut self, kind: EventKind, peer: Option<&str>, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.buffer);
        self.ends.push(self.buffer.len());
        self.kinds.push(kind);
        // Events of a batch mostly come from a few peers: consecutive
        // events of one peer share its name.
        let peer = peer.map(|peer| match self.peers.last() {
            Some(Some(last)) if **last == *peer => last.clone(),
            _ => Arc::from(peer),
        });
        self.peers.push(peer);
    }

    /// The encoding.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `index`-th event's bytes.
    fn item(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.buffer[start..self.ends[index]]
    }
}

/// Consecutive events of one stream, stamped by a replicator, with each
/// encoding computed at most once for the whole batch and shared by every
/// sink that writes it. Sinks borrow [`Record`]s from it.
#[derive(Debug)]
pub struct EventBatch<E> {
    stream: StreamId,
    events: Vec<E>,
    headers: Vec<RecordHeader>,
    /// JSON and protobuf at versions 1 and 2, readable without a lock.
    common: [OnceLock<Arc<Form>>; 4],
    /// Any other encoding.
    other: Mutex<Vec<Arc<Form>>>,
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
    /// The stream.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// The events as submitted; empty for a batch submitted already
    /// encoded ([`EventBatch::from_encoded`]), whose events exist only as
    /// bytes.
    pub fn events(&self) -> &[E] {
        &self.events
    }

    /// The headers, one per event.
    pub fn headers(&self) -> &[RecordHeader] {
        &self.headers
    }

    /// How many events.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// Takes the events back (none for a batch submitted encoded).
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
        // Events of a batch mostly come from a few peers: consecutive
        // events of one peer share its name.
        let mut last_peer: Option<Arc<str>> = None;
        let headers = events
            .iter()
            .map(|event| {
                let peer = event.peer().map(|peer| match &last_peer {
                    Some(last) if **last == *peer => last.clone(),
                    _ => {
                        let peer: Arc<str> = Arc::from(peer);
                        last_peer = Some(peer.clone());
                        peer
                    }
                });
                RecordHeader {
                    sequence: event.sequence(),
                    timestamp: event.timestamp(),
                    kind: event.kind(),
                    peer,
                }
            })
            .collect();
        Self {
            stream: stream.clone(),
            events,
            headers,
            common: Default::default(),
            other: Mutex::new(Vec::new()),
            logged: OnceLock::new(),
        }
    }

    /// A batch of events read back from a log: each is stamped with its
    /// stored sequence and timestamp (whatever the codec restored), and the
    /// stored bytes are kept as the batch's form in `encoding` (copied into
    /// one buffer, unless there is only one).
    pub fn from_stored(
        stream: &StreamId,
        stored: Vec<(u64, Timestamp, E, Bytes)>,
        encoding: Encoding,
    ) -> Self {
        let mut events = Vec::with_capacity(stored.len());
        let mut ends = Vec::with_capacity(stored.len());
        let mut payloads = Vec::with_capacity(stored.len());
        let mut end = 0;
        for (sequence, timestamp, mut event, payload) in stored {
            event.assign(&Assignment {
                stream,
                sequence,
                timestamp,
            });
            events.push(event);
            end += payload.len();
            ends.push(end);
            payloads.push(payload);
        }
        let buffer = match <[Bytes; 1]>::try_from(payloads) {
            Ok([one]) => one,
            Err(payloads) => Bytes::from(payloads.concat()),
        };
        let batch = Self::new(stream, events);
        batch.set_form(Arc::new(Form {
            stream: stream.clone(),
            encoding,
            buffer,
            layout: Layout::Ends(ends),
            errors: Vec::new(),
        }));
        batch
    }

    /// A batch of `encoded` events numbered from `first` and stamped
    /// `timestamp` by the codec, in their bytes: the batch's form in their
    /// encoding, which is the log's. It has no events (see
    /// [`EventBatch::events`]); other encodings are made by decoding the
    /// bytes.
    ///
    /// # Errors
    ///
    /// The first event the codec cannot stamp, with its index.
    pub fn from_encoded(
        stream: &StreamId,
        encoded: &EncodedEvents,
        codec: &dyn Codec<E>,
        first: u64,
        timestamp: Timestamp,
    ) -> Result<Self, (usize, CodecError)> {
        let count = encoded.len();
        let mut buffer = Vec::with_capacity(encoded.buffer.len() + count * 64);
        let mut ends = Vec::with_capacity(count);
        let mut headers = Vec::with_capacity(count);
        for index in 0..count {
            let sequence = first + index as u64;
            let assignment = Assignment {
                stream,
                sequence,
                timestamp,
            };
            codec
                .stamp_encoded(
                    encoded.item(index),
                    encoded.encoding,
                    &assignment,
                    &mut buffer,
                )
                .map_err(|err| (index, err))?;
            ends.push(buffer.len());
            headers.push(RecordHeader {
                sequence,
                timestamp,
                kind: encoded.kinds[index],
                peer: encoded.peers[index].clone(),
            });
        }
        let batch = Self {
            stream: stream.clone(),
            events: Vec::new(),
            headers,
            common: Default::default(),
            other: Mutex::new(Vec::new()),
            logged: OnceLock::new(),
        };
        let form = Arc::new(Form {
            stream: stream.clone(),
            encoding: encoded.encoding,
            buffer: Bytes::from(buffer),
            layout: Layout::Ends(ends),
            errors: Vec::new(),
        });
        batch.set_form(form.clone());
        let _ = batch.logged.set(form);
        Ok(batch)
    }

    fn set_form(&self, form: Arc<Form>) {
        if let Some(slot) = common_slot(form.encoding) {
            let _ = self.common[slot].set(form);
            return;
        }
        let mut other = self.other.lock().unwrap_or_else(PoisonError::into_inner);
        if !other.iter().any(|f| f.encoding == form.encoding) {
            other.push(form);
        }
    }

    /// The batch in `encoding`, encoding it on first use only (for a batch
    /// submitted encoded, by decoding the log's form).
    pub fn form(&self, codec: &dyn Codec<E>, encoding: Encoding) -> Arc<Form> {
        let build = || {
            Arc::new(match self.logged.get() {
                Some(logged) if self.events.len() < self.headers.len() => {
                    logged.transcode(codec, encoding)
                }
                _ => Form::build(&self.stream, &self.events, codec, encoding),
            })
        };
        if let Some(slot) = common_slot(encoding) {
            return self.common[slot].get_or_init(build).clone();
        }
        let mut other = self.other.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(form) = other.iter().find(|f| f.encoding == encoding) {
            return form.clone();
        }
        let form = build();
        other.push(form.clone());
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
        if let Some((index, err)) = form.errors.first() {
            return Err((*index, err.clone()));
        }
        let _ = self.logged.set(form);
        Ok(())
    }

    /// The `index`-th event in `form` (which must be this batch's form in
    /// some encoding), or why it has no form there.
    pub fn record<'a>(
        &'a self,
        index: usize,
        form: &'a Form,
    ) -> Option<Result<Record<'a>, &'a CodecError>> {
        let header = self.headers.get(index)?;
        if index >= form.len() {
            return None;
        }
        Some(match form.error(index) {
            Some(err) => Err(err),
            None => Ok(Record {
                header,
                form,
                index,
            }),
        })
    }
}

impl<E: ReplicationEvent> LogBatch for EventBatch<E> {
    fn first_sequence(&self) -> u64 {
        EventBatch::first_sequence(self)
    }

    fn len(&self) -> usize {
        self.headers.len()
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

    fn payloads_len(&self, range: std::ops::Range<usize>) -> usize {
        self.logged.get().map_or(0, |form| form.span_len(range))
    }
}
