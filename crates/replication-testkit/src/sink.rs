//! A sink driven by a test script.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use omnirelay_replication::{ErrorKind, OwnedRecord, Record, Sink, SinkError};

/// What a [`ScriptedSink`] does with the next batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Applies the whole batch.
    Apply,
    /// Applies the first `n` records, then fails with `kind`.
    ApplyThenFail(usize, ErrorKind),
    /// Applies nothing and fails with `kind`.
    Fail(ErrorKind),
}

/// Records every record it applies, in order, duplicates included (it is
/// deliberately not idempotent), and follows a script of [`Step`]s, one per
/// batch; when the script runs out it applies everything. Cloning gives
/// another handle to the same state.
#[derive(Clone, Debug, Default)]
pub struct ScriptedSink {
    state: Arc<Mutex<State>>,
    yield_mid_apply: bool,
}

#[derive(Debug, Default)]
struct State {
    applied: Vec<OwnedRecord>,
    script: VecDeque<Step>,
    batches: usize,
}

impl ScriptedSink {
    /// A sink that applies everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sink that follows `script`, one step per batch.
    pub fn scripted(script: impl IntoIterator<Item = Step>) -> Self {
        let sink = Self::default();
        sink.lock().script = script.into_iter().collect();
        sink
    }

    /// The same sink, yielding to the runtime in the middle of every apply
    /// so that concurrent callers interleave.
    #[must_use]
    pub fn yielding(mut self) -> Self {
        self.yield_mid_apply = true;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// How many batches `apply` was called with.
    pub fn batches(&self) -> usize {
        self.lock().batches
    }
}

impl Sink for ScriptedSink {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        let step = {
            let mut state = self.lock();
            state.batches += 1;
            state.script.pop_front().unwrap_or(Step::Apply)
        };
        if self.yield_mid_apply {
            tokio::task::yield_now().await;
        }
        let (take, failure) = match step {
            Step::Apply => (batch.len(), None),
            Step::ApplyThenFail(n, kind) => (n.min(batch.len()), Some(kind)),
            Step::Fail(kind) => (0, Some(kind)),
        };
        self.lock()
            .applied
            .extend(batch[..take].iter().map(Record::to_owned));
        match failure {
            None => Ok(()),
            Some(kind) => {
                let err = SinkError::new(kind, "scripted failure");
                Err(
                    match take.checked_sub(1).map(|last| batch[last].sequence()) {
                        Some(seq) => err.applied_through(seq),
                        None => err,
                    },
                )
            }
        }
    }
}
