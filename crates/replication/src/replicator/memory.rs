//! The in-memory sequencing replicator.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::error::{Error, ErrorKind, PublishError};
use crate::event::{Assignment, Codec, CodecErrorKind, Encoding, ReplicationEvent};
use crate::record::EventBatch;
use crate::replicator::{Receipt, Replicator};
use crate::sequencer::Sequencer;
use crate::sink::SharedSink;
use crate::stream::StreamId;
use crate::time::Timestamp;

/// Knobs of a [`MemoryReplicator`].
#[derive(Clone, Debug)]
pub struct MemoryReplicatorOptions {
    /// Every stream's first sequence is `starting_sequence + 1`.
    pub starting_sequence: u64,
    /// The clock that stamps accepted events.
    pub clock: fn() -> Timestamp,
}

impl Default for MemoryReplicatorOptions {
    fn default() -> Self {
        Self {
            starting_sequence: 0,
            clock: Timestamp::now,
        }
    }
}

/// Sequences events per stream and delivers each one directly to every
/// registered sink, with no durable log.
///
/// This is the framework's counterpart of the reference's
/// `InMemoryResourceLeaseReplicator`, without its defects: sinks of a stream
/// receive events in sequence order (a stream's publishes are serialized),
/// every sink is tried even when another fails, and each encoding is
/// produced once per event and shared. It keeps nothing across restarts and
/// does not retry: a sink that fails misses that event. For at-least-once
/// delivery use the durable replicator.
///
/// An event with no form in a sink's encoding is skipped for that sink and
/// counted ([`MemorySinkStats::skipped`]).
pub struct MemoryReplicator<E> {
    codec: Arc<dyn Codec<E>>,
    options: MemoryReplicatorOptions,
    sinks: RwLock<Arc<[Arc<Registered>]>>,
    streams: Mutex<HashMap<StreamId, Arc<tokio::sync::Mutex<Sequencer>>>>,
}

struct Registered {
    name: String,
    sink: SharedSink,
    encoding: Encoding,
    applied: AtomicU64,
    failed: AtomicU64,
    skipped: AtomicU64,
}

/// Delivery counters of one sink of a [`MemoryReplicator`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MemorySinkStats {
    /// The name the sink was registered under.
    pub name: String,
    /// The encoding it receives.
    pub encoding: Encoding,
    /// Events it applied.
    pub applied: u64,
    /// Events it failed to apply.
    pub failed: u64,
    /// Events skipped because they have no form in its encoding.
    pub skipped: u64,
}

impl<E: ReplicationEvent> MemoryReplicator<E> {
    /// A replicator with no sinks, encoding with `codec`.
    pub fn new(codec: Arc<dyn Codec<E>>, options: MemoryReplicatorOptions) -> Self {
        Self {
            codec,
            options,
            sinks: RwLock::new(Arc::from(Vec::new())),
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// Adds a sink that receives every event published from now on, in
    /// `encoding`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] if a sink of that name is already registered.
    pub fn register_sink(
        &self,
        name: impl Into<String>,
        sink: SharedSink,
        encoding: Encoding,
    ) -> Result<(), Error> {
        let name = name.into();
        let mut sinks = self.sinks.write().unwrap_or_else(PoisonError::into_inner);
        if sinks.iter().any(|s| s.name == name) {
            return Err(Error::new(
                ErrorKind::Config,
                format!("a sink named {name:?} is already registered"),
            ));
        }
        let mut next: Vec<_> = sinks.iter().cloned().collect();
        next.push(Arc::new(Registered {
            name,
            sink,
            encoding,
            applied: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }));
        *sinks = Arc::from(next);
        Ok(())
    }

    /// The delivery counters of every sink, in registration order.
    pub fn sinks(&self) -> Vec<MemorySinkStats> {
        self.sink_list()
            .iter()
            .map(|s| MemorySinkStats {
                name: s.name.clone(),
                encoding: s.encoding,
                applied: s.applied.load(Ordering::Relaxed),
                failed: s.failed.load(Ordering::Relaxed),
                skipped: s.skipped.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn sink_list(&self) -> Arc<[Arc<Registered>]> {
        self.sinks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn sequencer(&self, stream: &StreamId) -> Arc<tokio::sync::Mutex<Sequencer>> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams
            .entry(stream.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Sequencer::starting_after(
                    self.options.starting_sequence,
                )))
            })
            .clone()
    }

    async fn deliver(&self, batch: &EventBatch<E>) -> Vec<(String, Error)> {
        let sinks = self.sink_list();
        let deliveries = sinks.iter().map(|registered| async move {
            let form = batch.form(self.codec.as_ref(), registered.encoding);
            let record = match batch.record(0, &form) {
                Some(Ok(record)) => record,
                Some(Err(err)) if err.kind() == CodecErrorKind::Unrepresentable => {
                    registered.skipped.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Some(Err(err)) => {
                    registered.failed.fetch_add(1, Ordering::Relaxed);
                    return Some((registered.name.clone(), Error::from(err.clone())));
                }
                None => return None,
            };
            match registered
                .sink
                .as_ref()
                .apply_dyn(std::slice::from_ref(&record))
                .await
            {
                Ok(()) => {
                    registered.applied.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Err(err) => {
                    registered.failed.fetch_add(1, Ordering::Relaxed);
                    Some((registered.name.clone(), err.into_error()))
                }
            }
        });
        futures::future::join_all(deliveries)
            .await
            .into_iter()
            .flatten()
            .collect()
    }
}

impl<E: ReplicationEvent> Replicator<E> for MemoryReplicator<E> {
    async fn publish_to(
        &self,
        stream: &StreamId,
        mut event: E,
    ) -> Result<Receipt, PublishError<E>> {
        let sequencer = self.sequencer(stream);
        // Held until every sink has the event, so that sinks of a stream see
        // its events in sequence order.
        let mut sequencer = sequencer.lock().await;
        let sequence = match sequencer.advance() {
            Ok(sequence) => sequence,
            Err(err) => return Err(PublishError::new(err, Some(event))),
        };
        let assignment = Assignment {
            stream,
            sequence,
            timestamp: (self.options.clock)(),
        };
        event.assign(&assignment);
        let encoded = EventBatch::new(stream, vec![event]);
        let failures = self.deliver(&encoded).await;
        drop(sequencer);
        let Some((_, first)) = failures.first() else {
            return Ok(Receipt {
                stream: assignment.stream.clone(),
                sequence,
                timestamp: assignment.timestamp,
            });
        };
        let detail = failures
            .iter()
            .map(|(name, err)| format!("sink {name:?}: {err}"))
            .collect::<Vec<_>>()
            .join("; ");
        let error = Error::new(
            first.kind(),
            format!(
                "sequence {sequence} of stream {stream} was not applied by every sink: {detail}"
            ),
        );
        // The other sinks have the event: handing it back would invite a
        // re-publish under a new sequence.
        Err(PublishError::new(error, None))
    }
}

impl<E> fmt::Debug for MemoryReplicator<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReplicator")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registered")
            .field("name", &self.name)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}
