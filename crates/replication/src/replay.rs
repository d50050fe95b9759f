//! Replay: a stream's records from any sequence, in order, in any encoding.

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ErrorKind};
use crate::event::{Codec, CodecErrorKind, Encoding, ReplicationEvent};
use crate::log::{Damaged, LogReader, Records, TailSlice};
use crate::record::{EventBatch, OwnedRecord};
use crate::stream::StreamId;

/// One step of a [`Replay`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replayed {
    /// The next record, in the requested encoding.
    Record(OwnedRecord),
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
    Log {
        records: Records,
        stream: StreamId,
        /// What a damaged record ending the replay lost, until
        /// [`Replay::skip_damaged`] goes on past it.
        damaged: Option<Box<Damaged>>,
    },
    Slices(
        std::vec::IntoIter<TailSlice<EventBatch<E>>>,
        Option<(TailSlice<EventBatch<E>>, usize)>,
    ),
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
                damaged: None,
            },
            codec,
            encoding,
        }
    }

    pub(crate) fn from_slices(
        slices: Vec<TailSlice<EventBatch<E>>>,
        codec: Arc<dyn Codec<E>>,
        encoding: Encoding,
    ) -> Self {
        Self {
            source: Source::Slices(slices.into_iter(), None),
            codec,
            encoding,
        }
    }

    /// After a damaged record of a sealed segment (or a missing segment)
    /// ended the replay with an error item: the sequences lost with it; the
    /// replay then goes on past them, as a sink's delivery does. `None`
    /// when the replay did not end at such damage (the error stands).
    pub fn skip_damaged(&mut self) -> Option<std::ops::RangeInclusive<u64>> {
        match &mut self.source {
            Source::Log { damaged, .. } => damaged.take().map(|d| d.first..=d.last),
            Source::Slices(..) => None,
        }
    }

    /// The `index`-th event of `batch` in the requested encoding.
    fn form(&self, batch: &EventBatch<E>, index: usize) -> Result<Replayed, Error> {
        let sequence = batch.headers().get(index).map_or(0, |h| h.sequence);
        let form = batch.form(self.codec.as_ref(), self.encoding);
        match batch.record(index, &form) {
            Some(Ok(record)) => Ok(Replayed::Record(record.to_owned())),
            Some(Err(err)) if err.kind() == CodecErrorKind::Unrepresentable => {
                Ok(Replayed::Skipped {
                    sequence,
                    reason: err.to_string(),
                })
            }
            Some(Err(err)) => Err(Error::new(
                ErrorKind::Unsupported,
                format!("sequence {sequence}: {err}"),
            )),
            None => Err(Error::new(
                ErrorKind::Internal,
                format!("sequence {sequence} is not in its batch"),
            )),
        }
    }
}

impl<E: ReplicationEvent> Iterator for Replay<E> {
    type Item = Result<Replayed, Error>;

    /// The next record. A record the codec cannot read is an error item;
    /// replay goes on after it. A damaged log ends the replay after an
    /// error item; damage before the first sequence asked for (between it
    /// and the index entry reading starts at) loses nothing asked for and
    /// is read past.
    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            Source::Slices(slices, current) => loop {
                if let Some((slice, at)) = current
                    && *at < slice.range.end
                {
                    let (batch, index) = (slice.batch.clone(), *at);
                    *at += 1;
                    return Some(self.form(&batch, index));
                }
                let next = slices.next()?;
                let start = next.range.start;
                *current = Some((next, start));
            },
            Source::Log {
                records,
                stream,
                damaged,
            } => {
                if damaged.is_some() {
                    return None;
                }
                let stored = loop {
                    match records.next()? {
                        Ok(stored) => break stored,
                        Err(err) if err.kind() == ErrorKind::Corrupt => {
                            match records.skip_damaged() {
                                // Damage before `from`, on the way there:
                                // nothing asked for was lost.
                                Ok(Some(lost)) if lost.last < lost.first => {}
                                Ok(lost) => {
                                    *damaged = lost.map(Box::new);
                                    return Some(Err(err));
                                }
                                Err(skip_err) => return Some(Err(skip_err)),
                            }
                        }
                        Err(err) => return Some(Err(err)),
                    }
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
                let batch = EventBatch::from_stored(
                    stream,
                    vec![(stored.sequence, stored.timestamp, event, stored.payload)],
                    stored.encoding,
                );
                Some(self.form(&batch, 0))
            }
        }
    }
}
