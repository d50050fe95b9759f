//! The deduplicating (checkpointing) sink wrapper.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::SinkError;
use crate::record::{Record, RecordHeader};
use crate::sink::{Health, Sink};
use crate::stream::StreamId;

/// Wraps a sink that is not idempotent by itself so that it applies each
/// sequence at most once.
///
/// It keeps, per stream, a global high-water mark and one per peer (the
/// reference's `CheckpointingResourceLeaseReplicationSink` rules): a record
/// is ignored when its sequence is at or below the stream's mark, or at or
/// below its peer's mark. Unlike the reference, marks only move forward
/// (`max`, not assignment), duplicates inside one batch are caught, a
/// partially applied batch advances the marks exactly as far as it got, the
/// marks start from the inner sink's [`Sink::checkpoint`], and concurrent
/// calls are serialized so that a check and its update cannot interleave.
#[derive(Debug)]
pub struct Deduplicating<S> {
    inner: S,
    state: tokio::sync::Mutex<DedupState>,
}

impl<S: Sink> Deduplicating<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            state: tokio::sync::Mutex::new(DedupState::default()),
        }
    }

    /// The wrapped sink.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: Sink> Sink for Deduplicating<S> {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        let mut state = self.state.lock().await;
        let mut fresh = Vec::with_capacity(batch.len());
        for record in batch {
            let stream = record.stream();
            if !state.is_seeded(stream) {
                let mark = self.inner.checkpoint(stream).await?;
                state.seed(stream, mark);
            }
            if state.admit(stream, record.header()) {
                fresh.push(*record);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        match self.inner.apply(&fresh).await {
            Ok(()) => {
                state.commit();
                Ok(())
            }
            Err(err) => {
                state.commit_through(err.applied_through_sequence());
                Err(err)
            }
        }
    }

    async fn checkpoint(&self, stream: &StreamId) -> Result<Option<u64>, SinkError> {
        let known = self.state.lock().await.global(stream);
        match known {
            Some(mark) => Ok(Some(mark)),
            None => self.inner.checkpoint(stream).await,
        }
    }

    /// Passed to the inner sink, past the marks (which hold the records
    /// back): only the inner sink can tell a record it lacks from one it
    /// holds.
    async fn fill_gaps(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        let _serialized = self.state.lock().await;
        self.inner.fill_gaps(batch).await
    }

    fn health(&self) -> Health {
        self.inner.health()
    }

    async fn close(&self) -> Result<(), SinkError> {
        self.inner.close().await
    }
}

/// The bookkeeping of [`Deduplicating`], free of I/O.
///
/// [`DedupState::admit`] decides record by record against the committed
/// marks plus the records admitted since the last commit;
/// [`DedupState::commit`] makes everything admitted permanent and
/// [`DedupState::commit_through`] only what a partial apply reached.
#[derive(Debug, Default)]
pub struct DedupState {
    streams: HashMap<StreamId, Marks>,
    pending: Vec<(StreamId, u64, Option<Arc<str>>)>,
    pending_max: HashMap<StreamId, u64>,
}

#[derive(Debug, Default, Clone)]
struct Marks {
    global: Option<u64>,
    peers: HashMap<Arc<str>, u64>,
}

impl DedupState {
    /// Whether `stream` has been seeded.
    pub fn is_seeded(&self, stream: &StreamId) -> bool {
        self.streams.contains_key(stream)
    }

    /// Starts `stream` at `mark` (what the sink already holds).
    pub fn seed(&mut self, stream: &StreamId, mark: Option<u64>) {
        self.streams.entry(stream.clone()).or_default().global = mark;
    }

    /// The committed global mark of `stream`.
    pub fn global(&self, stream: &StreamId) -> Option<u64> {
        self.streams.get(stream).and_then(|m| m.global)
    }

    /// Whether the record is new: above its stream's mark (counting records
    /// admitted but not yet committed) and above its peer's mark.
    pub fn admit(&mut self, stream: &StreamId, header: &RecordHeader) -> bool {
        let seq = header.sequence;
        let peer = header.peer.as_ref().filter(|p| !p.is_empty());
        let marks = self.streams.get(stream);
        let global = marks
            .and_then(|m| m.global)
            .max(self.pending_max.get(stream).copied());
        let peer_mark = peer.and_then(|p| marks.and_then(|m| m.peers.get(p).copied()));
        if global.is_some_and(|m| seq <= m) || peer_mark.is_some_and(|m| seq <= m) {
            return false;
        }
        self.pending_max.insert(stream.clone(), seq);
        self.pending.push((stream.clone(), seq, peer.cloned()));
        true
    }

    /// Makes every admitted record permanent.
    pub fn commit(&mut self) {
        self.commit_through(Some(u64::MAX));
    }

    /// Makes admitted records up to `through` permanent and forgets the
    /// rest (they were not applied and will be admitted again on retry).
    pub fn commit_through(&mut self, through: Option<u64>) {
        let through = through.unwrap_or(0);
        self.pending_max.clear();
        for (stream, seq, peer) in self.pending.drain(..) {
            if seq > through {
                continue;
            }
            let marks = self.streams.entry(stream).or_default();
            marks.global = Some(marks.global.map_or(seq, |g| g.max(seq)));
            if let Some(peer) = peer {
                let mark = marks.peers.entry(peer).or_insert(seq);
                *mark = (*mark).max(seq);
            }
        }
    }
}
