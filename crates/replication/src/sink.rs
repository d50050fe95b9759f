//! The sink API: where replicated records go.
//!
//! Implement [`Sink`] (one required method, [`Sink::apply`]) with plain
//! `async fn`s; the framework stores sinks as `Arc<dyn DynSink>`, the
//! object-safe twin every `Sink` gets from a blanket impl. Conveniences live
//! in [`SinkExt`].
//!
//! # Contract
//!
//! - A batch holds records of one stream in ascending sequence order.
//! - `apply` returns `Ok` only once every record of the batch is durable in
//!   the sink. On failure it reports, with
//!   [`SinkError::applied_through`], the last record that was durably
//!   applied, if any; delivery resumes after it.
//! - Delivery is at least once: a sink may see records it already applied
//!   (after a crash or a retry) and must ignore them (idempotency). Sinks
//!   that can record a high-water mark atomically with their data report it
//!   from [`Sink::checkpoint`].
//! - Records behind the checkpoint that the sink never took (dead letters
//!   an operator redrives once the cause is fixed) go through
//!   [`Sink::fill_gaps`], which a sink implements only if it can hold them
//!   without mistaking them for a re-send.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::SinkError;
use crate::record::{OwnedRecord, Record};
use crate::stream::StreamId;

pub mod dedup;
pub mod file;
pub mod identity;
pub mod memory;

pub use dedup::Deduplicating;
pub use file::{FileRecovery, FileSink, FileSinkOptions};
pub use identity::FileIdentity;
pub use memory::MemorySink;

/// A boxed, sendable future, the return type of the object-safe twins.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A sink's view of its own health.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum Health {
    /// Working normally.
    #[default]
    Healthy,
    /// Working, with a problem worth reporting.
    Degraded(String),
    /// Not working.
    Unhealthy(String),
}

/// A sink's health as its last apply left it, for sinks that learn it only
/// by trying: healthy after a success, degraded (with the error) after a
/// retryable failure; a refused record says nothing about the backend and
/// changes nothing.
#[derive(Debug, Default)]
pub struct HealthCell(Mutex<Health>);

impl HealthCell {
    /// The health.
    pub fn get(&self) -> Health {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes in the outcome of an apply.
    pub fn record(&self, result: &Result<(), SinkError>) {
        let health = match result {
            Ok(()) => Health::Healthy,
            Err(err) if err.error().is_retryable() => Health::Degraded(err.error().to_string()),
            Err(_) => return,
        };
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = health;
    }
}

/// A destination of replicated records.
pub trait Sink: Send + Sync + 'static {
    /// Applies `batch` (one stream, ascending sequences) durably, ignoring
    /// records at or below what the sink already holds.
    ///
    /// # Errors
    ///
    /// A [`SinkError`] whose kind decides whether delivery retries, with how
    /// far the batch got.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave a prefix of the batch applied; the
    /// framework re-delivers from the sink's checkpoint, which idempotency
    /// makes harmless.
    fn apply(&self, batch: &[Record<'_>]) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The highest sequence of `stream` the sink holds durably, if it keeps
    /// track; delivery resumes after it.
    ///
    /// # Errors
    ///
    /// The backend's failure to answer.
    fn checkpoint(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<u64>, SinkError>> + Send {
        let _ = stream;
        async { Ok(None) }
    }

    /// Applies `batch` (one stream, ascending sequences) durably although
    /// its records may lie at or below the sink's checkpoint: records the
    /// sink never took (it refused them, and they went to its dead
    /// letters) and that an operator now redrives. Records the sink holds
    /// already are ignored, as by [`Sink::apply`]; the checkpoint does not
    /// move back.
    ///
    /// A sink can do this when it keeps each sequence under its own key (a
    /// row, an object) and can tell one it holds from one it lacks. A sink
    /// that keeps only a high-water mark — and so do its readers: a file
    /// read in order, a bus whose consumers drop what is at or below their
    /// mark — cannot: the default refuses with [`ErrorKind::Unsupported`]
    /// and takes nothing.
    ///
    /// # Errors
    ///
    /// As [`Sink::apply`]; [`ErrorKind::Unsupported`] when the sink cannot
    /// take records behind its checkpoint at all.
    ///
    /// [`ErrorKind::Unsupported`]: crate::error::ErrorKind::Unsupported
    fn fill_gaps(
        &self,
        batch: &[Record<'_>],
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = batch;
        async {
            Err(SinkError::new(
                crate::error::ErrorKind::Unsupported,
                "this sink keeps a high-water mark: it cannot take records behind its checkpoint",
            ))
        }
    }

    /// The sink's view of its health.
    fn health(&self) -> Health {
        Health::Healthy
    }

    /// Flushes and releases resources. Records applied before `close`
    /// returns are durable.
    ///
    /// # Errors
    ///
    /// The backend's failure to flush.
    fn close(&self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }
}

/// The object-safe twin of [`Sink`], implemented for every `Sink`.
pub trait DynSink: Send + Sync + 'static {
    /// See [`Sink::apply`].
    fn apply_dyn<'a>(&'a self, batch: &'a [Record<'a>]) -> BoxFuture<'a, Result<(), SinkError>>;
    /// See [`Sink::checkpoint`].
    fn checkpoint_dyn<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<Option<u64>, SinkError>>;
    /// See [`Sink::fill_gaps`].
    fn fill_gaps_dyn<'a>(&'a self, batch: &'a [Record<'a>])
    -> BoxFuture<'a, Result<(), SinkError>>;
    /// See [`Sink::health`].
    fn health_dyn(&self) -> Health;
    /// See [`Sink::close`].
    fn close_dyn(&self) -> BoxFuture<'_, Result<(), SinkError>>;
}

impl<S: Sink> DynSink for S {
    fn apply_dyn<'a>(&'a self, batch: &'a [Record<'a>]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.apply(batch))
    }

    fn checkpoint_dyn<'a>(
        &'a self,
        stream: &'a StreamId,
    ) -> BoxFuture<'a, Result<Option<u64>, SinkError>> {
        Box::pin(self.checkpoint(stream))
    }

    fn fill_gaps_dyn<'a>(
        &'a self,
        batch: &'a [Record<'a>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.fill_gaps(batch))
    }

    fn health_dyn(&self) -> Health {
        self.health()
    }

    fn close_dyn(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(self.close())
    }
}

/// A shared, type-erased sink.
pub type SharedSink = Arc<dyn DynSink>;

impl Sink for SharedSink {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        (**self).apply_dyn(batch).await
    }

    async fn checkpoint(&self, stream: &StreamId) -> Result<Option<u64>, SinkError> {
        (**self).checkpoint_dyn(stream).await
    }

    async fn fill_gaps(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        (**self).fill_gaps_dyn(batch).await
    }

    fn health(&self) -> Health {
        (**self).health_dyn()
    }

    async fn close(&self) -> Result<(), SinkError> {
        (**self).close_dyn().await
    }
}

/// Conveniences for every [`Sink`].
pub trait SinkExt: Sink + Sized {
    /// Type-erases the sink for registration with a replicator.
    fn shared(self) -> SharedSink {
        Arc::new(self)
    }

    /// Wraps the sink so that it sees each sequence at most once per stream
    /// and peer; see [`Deduplicating`].
    fn deduplicating(self) -> Deduplicating<Self> {
        Deduplicating::new(self)
    }

    /// Applies records held as [`OwnedRecord`]s (replayed, or read back
    /// from a dead-letter log).
    ///
    /// # Errors
    ///
    /// As [`Sink::apply`].
    fn apply_owned(
        &self,
        records: &[OwnedRecord],
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        async move {
            let borrowed: Vec<Record<'_>> = records.iter().map(OwnedRecord::as_record).collect();
            self.apply(&borrowed).await
        }
    }
}

impl<S: Sink> SinkExt for S {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn health_follows_the_backend_not_refused_records() {
        let cell = HealthCell::default();
        assert_eq!(cell.get(), Health::Healthy);
        cell.record(&Err(SinkError::new(ErrorKind::Unavailable, "down")));
        assert!(matches!(cell.get(), Health::Degraded(ref why) if why.contains("down")));
        cell.record(&Err(SinkError::new(ErrorKind::Rejected, "poison")));
        assert!(
            matches!(cell.get(), Health::Degraded(_)),
            "a refusal changes nothing"
        );
        cell.record(&Ok(()));
        assert_eq!(cell.get(), Health::Healthy);
    }
}
