//! # omnirelay-replication
//!
//! A framework for replicating ordered events: services publish events,
//! replicators sequence them per stream and deliver them to pluggable sinks,
//! and anyone can read them back. The framework is generic over the event
//! type; it knows nothing of the resource-lease dispatcher, whose schema
//! lives in `omnirelay-resourcelease`.
//!
//! ## A short tour
//!
//! - [`ReplicationEvent`] is what the framework needs from an event type
//!   (its kind and peer, and a way to stamp the sequence, timestamp and
//!   shard); [`Codec`] encodes it in each [`Encoding`] (a [`Format`] at a
//!   [`WireVersion`]; version 1 is the reference format).
//! - A [`Replicator`] accepts events: [`MemoryReplicator`] sequences them
//!   per [`StreamId`] and delivers them to sinks; [`ShardedReplicator`] and
//!   [`CompositeReplicator`] decorate replicators.
//! - A [`Sink`] applies batches of [`Record`]s (a [`RecordHeader`] plus the
//!   bytes in the sink's encoding, encoded once per event and shared).
//!   [`MemorySink`] keeps them in memory; [`Deduplicating`] makes any sink
//!   idempotent.
//! - Every failure carries an [`ErrorKind`] that decides whether it is
//!   retried.
//!
//! ```
//! use std::sync::Arc;
//! # use omnirelay_replication::*;
//! # #[derive(Clone)] struct Note { seq: u64, at: Timestamp }
//! # impl ReplicationEvent for Note {
//! #     fn kind(&self) -> EventKind { EventKind { code: 1, name: "Note" } }
//! #     fn peer(&self) -> Option<&str> { None }
//! #     fn sequence(&self) -> u64 { self.seq }
//! #     fn timestamp(&self) -> Timestamp { self.at }
//! #     fn assign(&mut self, a: &Assignment<'_>) { self.seq = a.sequence; self.at = a.timestamp; }
//! #     fn set_shard(&mut self, _: &StreamId) {}
//! # }
//! # struct NoteCodec;
//! # impl Codec<Note> for NoteCodec {
//! #     fn latest_version(&self) -> WireVersion { WireVersion::V1 }
//! #     fn encode(&self, n: &Note, _: Encoding) -> Result<bytes::Bytes, CodecError> {
//! #         Ok(n.seq.to_string().into())
//! #     }
//! #     fn decode(&self, _: Format, _: &[u8]) -> Result<Note, CodecError> {
//! #         Err(CodecError::new(CodecErrorKind::Malformed, "write-only"))
//! #     }
//! # }
//! # let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! # runtime.block_on(async {
//! let replicator = MemoryReplicator::new(Arc::new(NoteCodec), Default::default());
//! let sink = MemorySink::new();
//! replicator.register_sink("memory", sink.clone().shared(), Encoding::JSON_V1)?;
//!
//! let note = Note { seq: 42, at: Timestamp::MIN };
//! let receipt = replicator.publish(note.clone()).await.map_err(|e| e.into_error())?;
//! replicator.publish(note).await.map_err(|e| e.into_error())?;
//!
//! assert_eq!(receipt.sequence, 1); // the caller's 42 is ignored
//! assert_eq!(sink.sequences(), [1, 2]);
//! # Ok::<(), Error>(())
//! # }).unwrap();
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod delivery;
pub mod error;
pub mod event;
pub mod log;
pub mod node;
pub mod record;
pub mod replay;
pub mod replicator;
pub mod sequencer;
pub mod sink;
pub mod stream;
pub mod telemetry;
pub mod time;

pub use delivery::{
    BatchOptions, DeliveryMode, RetryPolicy, SinkOptions, SinkSnapshot, SinkState, StartFrom,
    WhenFull,
};
pub use error::{BoxError, Error, ErrorKind, PublishError, SinkError};
pub use event::{
    Assignment, Codec, CodecError, CodecErrorKind, Encoding, EventKind, Format, ReplicationEvent,
    WireVersion,
};
pub use log::{Durability, LogOptions, Retention};
pub use record::{EncodedEvents, EventBatch, Form, OwnedRecord, Record, RecordHeader};
pub use replay::{Replay, Replayed};
pub use replicator::{
    Ack, CompositeOutcome, CompositeReplicator, DurableOptions, DurableReplicator, DynReplicator,
    MemoryReplicator, MemoryReplicatorOptions, MemorySinkStats, PendingPublish, Receipt,
    Replicator, ReplicatorExt, RetentionHold, ShardedReplicator, SharedReplicator, StreamSnapshot,
};
pub use sequencer::Sequencer;
pub use sink::{
    BoxFuture, Deduplicating, DynSink, FileIdentity, FileSink, FileSinkOptions, Health, HealthCell,
    MemorySink, SharedSink, Sink, SinkExt,
};
pub use stream::{StreamId, validate_name};
pub use time::{Timestamp, TimestampError, TimestampText};
