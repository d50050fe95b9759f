//! Replicators: where services publish events.
//!
//! A replicator accepts an event, assigns it the next sequence of its stream
//! and a timestamp, and delivers it. [`Replicator::publish_to`] returns a
//! [`Receipt`] once the event is accepted under the replicator's guarantee.
//! Decorators compose: [`ShardedReplicator`] routes to a shard's stream,
//! [`CompositeReplicator`] fans one event out to several replicators.

use std::future::Future;
use std::sync::Arc;

use crate::error::PublishError;
use crate::event::ReplicationEvent;
use crate::sink::BoxFuture;
use crate::stream::StreamId;
use crate::time::Timestamp;

pub mod composite;
pub mod durable;
pub mod memory;
pub mod sharded;

pub use composite::{CompositeOutcome, CompositeReplicator};
pub use durable::{
    Ack, DurableOptions, DurableReplicator, PendingPublish, PublishErrorParts, RetentionHold,
    StreamSnapshot,
};
pub use memory::{MemoryReplicator, MemoryReplicatorOptions, MemorySinkStats};
pub use sharded::ShardedReplicator;

/// Proof that an event was accepted: where it went and the position and
/// time the replicator assigned.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Receipt {
    /// The stream.
    pub stream: StreamId,
    /// The event's sequence in the stream.
    pub sequence: u64,
    /// The timestamp the replicator stamped.
    pub timestamp: Timestamp,
}

/// Accepts events for replication.
pub trait Replicator<E: ReplicationEvent>: Send + Sync + 'static {
    /// Publishes `event` to `stream`. Any sequence or timestamp the event
    /// carries is overwritten.
    ///
    /// # Errors
    ///
    /// A [`PublishError`] whose kind says whether a retry may help; it hands
    /// the event back when the event was not consumed.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a dropped publish may or may not have been accepted.
    fn publish_to(
        &self,
        stream: &StreamId,
        event: E,
    ) -> impl Future<Output = Result<Receipt, PublishError<E>>> + Send;
}

/// The object-safe twin of [`Replicator`], implemented for every
/// `Replicator`.
pub trait DynReplicator<E>: Send + Sync + 'static {
    /// See [`Replicator::publish_to`].
    fn publish_to_dyn<'a>(
        &'a self,
        stream: &'a StreamId,
        event: E,
    ) -> BoxFuture<'a, Result<Receipt, PublishError<E>>>;
}

impl<E: ReplicationEvent, R: Replicator<E>> DynReplicator<E> for R {
    fn publish_to_dyn<'a>(
        &'a self,
        stream: &'a StreamId,
        event: E,
    ) -> BoxFuture<'a, Result<Receipt, PublishError<E>>> {
        Box::pin(self.publish_to(stream, event))
    }
}

/// A shared, type-erased replicator.
pub type SharedReplicator<E> = Arc<dyn DynReplicator<E>>;

impl<E: ReplicationEvent> Replicator<E> for SharedReplicator<E> {
    async fn publish_to(&self, stream: &StreamId, event: E) -> Result<Receipt, PublishError<E>> {
        (**self).publish_to_dyn(stream, event).await
    }
}

/// Conveniences for every [`Replicator`].
pub trait ReplicatorExt<E: ReplicationEvent>: Replicator<E> + Sized {
    /// Publishes `event` to the stream `default`.
    ///
    /// # Errors
    ///
    /// As [`Replicator::publish_to`].
    fn publish(&self, event: E) -> impl Future<Output = Result<Receipt, PublishError<E>>> + Send {
        async move { self.publish_to(&StreamId::default(), event).await }
    }

    /// Type-erases the replicator.
    fn shared(self) -> SharedReplicator<E> {
        Arc::new(self)
    }
}

impl<E: ReplicationEvent, R: Replicator<E>> ReplicatorExt<E> for R {}
