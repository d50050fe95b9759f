//! Replay: a stream's records from any sequence, in order, in any encoding.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ErrorKind};
use crate::event::{Codec, CodecErrorKind, Encoding, ReplicationEvent};
use crate::log::{LogReader, Records};
use crate::record::{EncodedEvent, Record};
use crate::stream::StreamId;

/// One step of a [`Replay`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replayed {
    /// The next record, in the requested encoding.
    Record(Record),
    /// A record with no form in the requested encoding (an event type the
    /// version lacks), left out.
    Skipped {
        /// Its sequence.
        sequence: u64,
        /// Why.
        reason: String,
    },
}

/// Reads a stream's records in order. Replaying the same log gives the
/// same records, byte for byte.
pub struct Replay<E> {
    source: Source<E>,
    codec: Arc<dyn Codec<E>>,
    encoding: Encoding,
}

enum Source<E> {
    Log { records: Records, stream: StreamId },
    Events(std::vec::IntoIter<Arc<EncodedEvent<E>>>),
}

impl<E> std::fmt::Debug for Replay<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl<E: ReplicationEvent> Replay<E> {
    /// Replays the log of `stream` under `data_dir` (as written by a
    /// [`crate::DurableReplicator`]), read-only and without a lock: it
    /// works beside a running writer.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] if the stream has no log there.
    pub fn open(
        data_dir: &Path,
        stream: &StreamId,
        from: u64,
        codec: Arc<dyn Codec<E>>,
        encoding: Encoding,
    ) -> Result<Self, Error> {
        let dir = crate::replicator::DurableReplicator::<E>::stream_dir(data_dir, stream);
        if !dir.is_dir() {
            return Err(Error::new(
                ErrorKind::Config,
                format!("stream {stream} has no log in {}", data_dir.display()),
            ));
        }
        Ok(Self::from_reader(
            LogReader::new(&dir),
            stream.clone(),
            from,
            codec,
            encoding,
        ))
    }

    pub(crate) fn from_reader(
        reader: LogReader,
        stream: StreamId,
        from: u64,
        codec: Arc<dyn Codec<E>>,
        encoding: Encoding,
    ) -> Self {
        Self {
            source: Source::Log {
                records: reader.records_from(from.max(1)),
                stream,
            },
            codec,
            encoding,
        }
    }

    pub(crate) fn from_events(
        events: Vec<Arc<EncodedEvent<E>>>,
        codec: Arc<dyn Codec<E>>,
        encoding: Encoding,
    ) -> Self {
        Self {
            source: Source::Events(events.into_iter()),
            codec,
            encoding,
        }
    }

    fn form(&self, event: &EncodedEvent<E>) -> Result<Replayed, Error> {
        let sequence = event.header().sequence;
        match event.record(self.codec.as_ref(), self.encoding) {
            Ok(record) => Ok(Replayed::Record(record)),
            Err(err) if err.kind() == CodecErrorKind::Unrepresentable => Ok(Replayed::Skipped {
                sequence,
                reason: err.to_string(),
            }),
            Err(err) => Err(Error::new(
                ErrorKind::Unsupported,
                format!("sequence {sequence}: {err}"),
            )),
        }
    }
}

impl<E: ReplicationEvent> Iterator for Replay<E> {
    type Item = Result<Replayed, Error>;

    /// The next record. A record the codec cannot read is an error item;
    /// replay goes on after it. A damaged log ends the replay after an
    /// error item.
    fn next(&mut self) -> Option<Self::Item> {
        let encoded = match &mut self.source {
            Source::Events(events) => events.next()?,
            Source::Log { records, stream } => {
                let stored = match records.next()? {
                    Ok(stored) => stored,
                    Err(err) => return Some(Err(err)),
                };
                let event = match self.codec.decode(stored.encoding.format, &stored.payload) {
                    Ok(event) => event,
                    Err(err) => {
                        return Some(Err(Error::new(
                            ErrorKind::Unsupported,
                            format!("sequence {}: {err}", stored.sequence),
                        )));
                    }
                };
                let encoded = EncodedEvent::new(stream.clone(), event);
                encoded.seed(stored.encoding, stored.payload);
                Arc::new(encoded)
            }
        };
        Some(self.form(&encoded))
    }
}
