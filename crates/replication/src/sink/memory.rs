//! The in-memory sink.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::SinkError;
use crate::record::{OwnedRecord, Record};
use crate::sink::Sink;
use crate::stream::StreamId;

/// Keeps records in memory: for tests, embedding and "recent events" views.
///
/// Idempotent by high-water mark: a record at or below the highest sequence
/// already applied for its stream is ignored. With a capacity it keeps only
/// the newest records (a ring), the high-water marks are kept regardless.
/// Cloning gives another handle to the same records.
#[derive(Clone, Debug, Default)]
pub struct MemorySink {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    records: VecDeque<OwnedRecord>,
    capacity: Option<usize>,
    high_water: HashMap<StreamId, u64>,
}

impl MemorySink {
    /// An unbounded sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink that keeps at most the `capacity` newest records (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        let sink = Self::default();
        sink.lock().capacity = Some(capacity.max(1));
        sink
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The records held, oldest first.
    pub fn records(&self) -> Vec<OwnedRecord> {
        self.lock().records.iter().cloned().collect()
    }

    /// The sequences held, oldest first.
    pub fn sequences(&self) -> Vec<u64> {
        self.lock()
            .records
            .iter()
            .map(OwnedRecord::sequence)
            .collect()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Sink for MemorySink {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        let mut inner = self.lock();
        for record in batch {
            let mark = inner.high_water.entry(record.stream().clone()).or_insert(0);
            if record.sequence() <= *mark {
                continue;
            }
            *mark = record.sequence();
            if inner.capacity.is_some_and(|cap| inner.records.len() >= cap) {
                inner.records.pop_front();
            }
            inner.records.push_back(record.to_owned());
        }
        Ok(())
    }

    async fn checkpoint(&self, stream: &StreamId) -> Result<Option<u64>, SinkError> {
        Ok(self.lock().high_water.get(stream).copied())
    }
}
