//! The delivery engine: one driver per (stream, sink) that moves records
//! from the log to the sink with batching, retries, dead letters and a
//! persisted checkpoint; and the knobs and snapshots around it.

mod backoff;
mod checkpoint;
mod deadletter;
pub(crate) mod driver;
mod redrive;

use std::time::Duration;

use serde::Serialize;

pub use backoff::{Backoff, RetryPolicy};
pub use checkpoint::{CheckpointStore, FileCheckpointStore, MemoryCheckpointStore};
pub use deadletter::{DeadLetter, DeadLetterLog, LetterFile, ends_a_line};
pub use redrive::{RedriveTarget, Redriven, redrive};

use crate::event::Encoding;
use crate::stream::StreamId;

/// What `publish` does when a required sink is over its lag budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Wait until the sink catches up.
    Block,
    /// Fail at once with [`crate::ErrorKind::Throttled`], handing the event
    /// back.
    Reject,
}

/// How much a sink's lag matters to publishers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Publishers are held back (or refused) while the sink is more than
    /// `max_lag_events` behind, and retention never deletes what it has
    /// not applied.
    Required {
        /// The lag budget, in events.
        max_lag_events: u64,
        /// Block or reject past the budget.
        when_full: WhenFull,
    },
    /// The sink never holds publishers back; if retention (or the memory
    /// ring) drops records it has not applied, it skips ahead and counts
    /// them as discarded.
    BestEffort,
}

/// Where a sink with no checkpoint starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest record held: a new sink receives the whole log.
    #[default]
    Earliest,
    /// Only records published from now on.
    Latest,
    /// Only records after this sequence: [`StartFrom::Latest`] for a sink
    /// added later than the moment it stands for (the log's last sequence
    /// then).
    After(u64),
}

/// Batching of a sink's deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchOptions {
    /// Records per batch at most.
    pub max_events: usize,
    /// Bytes per batch at most (a single larger record still goes alone).
    pub max_bytes: usize,
    /// How long to wait for a batch to fill once there is something to
    /// deliver.
    pub linger: Duration,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            max_events: 512,
            max_bytes: 4 * 1024 * 1024,
            linger: Duration::ZERO,
        }
    }
}

/// How one sink is fed.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkOptions {
    /// The encoding the sink receives (default: reference JSON, version 1).
    pub encoding: Encoding,
    /// Batching.
    pub batch: BatchOptions,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Required or best effort.
    pub mode: DeliveryMode,
    /// Where to start without a checkpoint.
    pub start: StartFrom,
    /// The streams the sink receives (`None`: every stream).
    pub streams: Option<Vec<StreamId>>,
    /// How often the checkpoint is saved at most; a save it holds back is
    /// made once it is over, also when no more records come (and always on
    /// close). A lost checkpoint only causes re-delivery, which sinks
    /// ignore.
    pub checkpoint_interval: Duration,
    /// At most this many records per second go to the sink (to spare a
    /// downstream); `None`: as fast as it takes them. A required sink held
    /// back by its limit holds publishers back past its lag budget.
    pub max_events_per_second: Option<u64>,
}

impl Default for SinkOptions {
    fn default() -> Self {
        Self {
            encoding: Encoding::JSON_V1,
            batch: BatchOptions::default(),
            retry: RetryPolicy::default(),
            mode: DeliveryMode::BestEffort,
            start: StartFrom::Earliest,
            streams: None,
            checkpoint_interval: Duration::from_millis(200),
            max_events_per_second: None,
        }
    }
}

impl SinkOptions {
    /// Whether the sink is required.
    pub fn is_required(&self) -> bool {
        matches!(self.mode, DeliveryMode::Required { .. })
    }

    /// Whether the sink receives `stream`.
    pub fn receives(&self, stream: &StreamId) -> bool {
        self.streams.as_ref().is_none_or(|s| s.contains(stream))
    }
}

/// A driver's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkState {
    /// Delivering normally (or caught up).
    Healthy,
    /// Retrying a transient failure.
    Retrying,
    /// Failing for long enough that an operator should look (five or more
    /// failures in a row).
    Failing,
    /// Stopped (the replicator is closing).
    Stopped,
}

/// What an operator sees of one sink in one stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SinkSnapshot {
    /// The stream.
    pub stream: String,
    /// The sink's name.
    pub sink: String,
    /// The encoding it receives, e.g. `json/v1`.
    pub encoding: String,
    /// Whether it is required.
    pub required: bool,
    /// Its state.
    pub state: SinkState,
    /// The highest sequence it has applied (or skipped past).
    pub checkpoint: u64,
    /// The highest sequence it could have.
    pub head: u64,
    /// `head - checkpoint`.
    pub lag_events: u64,
    /// Age of the oldest record it has not applied, in seconds (0 when
    /// caught up).
    pub lag_seconds: f64,
    /// Records applied.
    pub applied: u64,
    /// Batches applied.
    pub batches: u64,
    /// Retries of failed applies.
    pub retries: u64,
    /// Records sent to the dead-letter log.
    pub dead_lettered: u64,
    /// Records skipped because they have no form in the sink's encoding.
    pub skipped: u64,
    /// Records a best-effort sink never saw because retention dropped them.
    pub discarded: u64,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
}
