//! A sink whose failures a test switches on and off.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use omnirelay_replication::{ErrorKind, OwnedRecord, Record, Sink, SinkError, StreamId};
use tokio::sync::watch;

/// Records every record it applies (duplicates included: it is
/// deliberately not idempotent, so tests can see re-sends), and fails,
/// stalls or refuses poison records as the test says.
#[derive(Clone, Debug)]
pub struct FaultySink {
    state: Arc<Mutex<State>>,
    open: Arc<watch::Sender<bool>>,
}

#[derive(Debug, Default)]
struct State {
    applied: Vec<OwnedRecord>,
    failing: Option<ErrorKind>,
    poison: BTreeSet<u64>,
    attempts: Vec<tokio::time::Instant>,
    /// Set: the sink keeps its own checkpoint, starting here.
    checkpoint: Option<u64>,
}

impl Default for FaultySink {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultySink {
    /// A healthy sink.
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            open: Arc::new(watch::Sender::new(true)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every apply fails with `kind` until [`FaultySink::heal`].
    pub fn fail_with(&self, kind: ErrorKind) {
        self.lock().failing = Some(kind);
    }

    /// Stops failing.
    pub fn heal(&self) {
        self.lock().failing = None;
    }

    /// Refuses `sequence` for good ([`ErrorKind::Rejected`]); the records
    /// before it in the batch are applied.
    pub fn poison(&self, sequence: u64) {
        self.lock().poison.insert(sequence);
    }

    /// Accepts every sequence [`FaultySink::poison`] refused (whatever
    /// made the sink refuse them is fixed).
    pub fn cure(&self) {
        self.lock().poison.clear();
    }

    /// Makes the sink keep its own checkpoint (see [`Sink::checkpoint`]),
    /// starting at `mark`; it fails to answer while the sink is failing.
    pub fn keep_checkpoint(&self, mark: u64) {
        self.lock().checkpoint = Some(mark);
    }

    /// Every apply waits until [`FaultySink::release`].
    pub fn stall(&self) {
        self.open.send_replace(false);
    }

    /// Lets stalled applies go on.
    pub fn release(&self) {
        self.open.send_replace(true);
    }

    /// Sequences applied, in order, duplicates included.
    pub fn sequences(&self) -> Vec<u64> {
        self.lock()
            .applied
            .iter()
            .map(OwnedRecord::sequence)
            .collect()
    }

    /// Records applied, in order.
    pub fn records(&self) -> Vec<OwnedRecord> {
        self.lock().applied.clone()
    }

    /// When each apply was attempted (tokio time, so paused-time tests can
    /// check a retry schedule).
    pub fn attempts(&self) -> Vec<tokio::time::Instant> {
        self.lock().attempts.clone()
    }
}

impl Sink for FaultySink {
    async fn checkpoint(&self, _stream: &StreamId) -> Result<Option<u64>, SinkError> {
        let state = self.lock();
        match (state.checkpoint, state.failing) {
            (Some(_), Some(kind)) => Err(SinkError::new(kind, "injected failure")),
            (mark, _) => Ok(mark),
        }
    }

    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        self.lock().attempts.push(tokio::time::Instant::now());
        let mut open = self.open.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = open.wait_for(|open| *open).await;
        let mut state = self.lock();
        if let Some(kind) = state.failing {
            return Err(SinkError::new(kind, "injected failure"));
        }
        let clean = batch
            .iter()
            .take_while(|r| !state.poison.contains(&r.sequence()))
            .count();
        state
            .applied
            .extend(batch[..clean].iter().map(Record::to_owned));
        if let (Some(mark), Some(last)) = (state.checkpoint, clean.checked_sub(1)) {
            state.checkpoint = Some(mark.max(batch[last].sequence()));
        }
        if clean == batch.len() {
            return Ok(());
        }
        let err = SinkError::new(
            ErrorKind::Rejected,
            format!("sequence {} is poison", batch[clean].sequence()),
        );
        Err(match clean.checked_sub(1) {
            Some(last) => err.applied_through(batch[last].sequence()),
            None => err,
        })
    }
}
