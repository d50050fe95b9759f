//! The sharded replicator decorator.

use crate::error::{Error, ErrorKind, PublishError};
use crate::event::ReplicationEvent;
use crate::replicator::{Receipt, Replicator};
use crate::stream::StreamId;

/// Publishes every event to one shard: it labels the event with the shard
/// id (for resource-lease events, metadata `shard.id`, replacing any value
/// the caller set) and publishes it to the stream of that name, which has a
/// sequence of its own.
///
/// Unlike the reference's `ShardedResourceLeaseReplicator`, whose shards
/// shared the inner hub's single counter, each shard is numbered from 1
/// independently, so a consumer of one shard sees no gaps.
#[derive(Debug, Clone)]
pub struct ShardedReplicator<R> {
    inner: R,
    shard: StreamId,
}

impl<R> ShardedReplicator<R> {
    /// Routes everything published through `inner` to `shard_id` (trimmed).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for a blank shard id or one that is not a valid
    /// [`StreamId`].
    pub fn new(inner: R, shard_id: &str) -> Result<Self, Error> {
        let trimmed = shard_id.trim();
        if trimmed.is_empty() {
            return Err(Error::new(ErrorKind::Config, "shard id must not be blank"));
        }
        Ok(Self {
            inner,
            shard: StreamId::new(trimmed)?,
        })
    }

    /// The shard's stream.
    pub fn shard(&self) -> &StreamId {
        &self.shard
    }

    /// The decorated replicator.
    pub fn inner(&self) -> &R {
        &self.inner
    }
}

impl<E: ReplicationEvent, R: Replicator<E>> Replicator<E> for ShardedReplicator<R> {
    /// Publishes to the shard's stream; the `stream` argument is ignored.
    async fn publish_to(
        &self,
        _stream: &StreamId,
        mut event: E,
    ) -> Result<Receipt, PublishError<E>> {
        event.set_shard(&self.shard);
        self.inner.publish_to(&self.shard, event).await
    }
}
