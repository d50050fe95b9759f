//! Backlog drain after an outage: a node restarts with 100 000 events in
//! its log that a sink never got, and the sink catches up from disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use omnirelay_replication::{BatchOptions, DurableReplicator, SinkExt as _, SinkOptions};

use crate::scenario::raw::{Counting, RawCodec};
use crate::scenario::replay::{raw_scan, unsynced, write_log};
use crate::scenario::{Scenario, Side};

const EVENTS: usize = 100_000;

/// `backlog-drain`: opening the log (recovery checks its tail) and
/// delivering all 100 000 events to a new sink (batches of 512, read back
/// from the segments: nothing is in memory after a restart), until it has
/// caught up, then closing; against reading the same segments in 256 KiB
/// buffers and checking each frame's CRC. Reported, no target.
pub struct BacklogDrain {
    runtime: tokio::runtime::Runtime,
    data_dir: PathBuf,
    log_dir: PathBuf,
    passes: u64,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for BacklogDrain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BacklogDrain").finish_non_exhaustive()
    }
}

impl BacklogDrain {
    /// Writes the backlog.
    ///
    /// # Panics
    ///
    /// If the log cannot be written.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let log_dir = write_log(dir.path(), EVENTS);
        Self {
            runtime: crate::scenario::runtime(),
            data_dir: dir.path().to_owned(),
            log_dir,
            passes: 0,
            _dir: dir,
        }
    }

    fn drain(&mut self) -> u64 {
        // A sink of a new name has no checkpoint: it starts at the oldest
        // record, so the whole log is its backlog.
        self.passes += 1;
        let name = format!("drain-{}", self.passes);
        let data_dir = self.data_dir.clone();
        self.runtime.block_on(async move {
            let replicator = DurableReplicator::open(Arc::new(RawCodec), unsynced(&data_dir))
                .await
                .unwrap_or_else(|e| panic!("open: {e}"));
            let counting = Counting::default();
            let options = SinkOptions {
                batch: BatchOptions {
                    max_events: 512,
                    ..BatchOptions::default()
                },
                ..SinkOptions::default()
            };
            replicator
                .add_sink(&name, counting.clone().shared(), options)
                .await
                .unwrap_or_else(|e| panic!("add sink: {e}"));
            replicator.wait_caught_up().await;
            let _ = replicator.close().await;
            counting.0.load(Ordering::Relaxed)
        })
    }
}

impl Default for BacklogDrain {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario for BacklogDrain {
    fn name(&self) -> &'static str {
        "backlog-drain"
    }

    fn unit(&self) -> &'static str {
        "events"
    }

    fn baseline(&self) -> &'static str {
        "sequential 256 KiB reads + CRC32C of every frame of the same segments"
    }

    fn target(&self) -> f64 {
        0.0
    }

    fn pass(&mut self, side: Side) -> u64 {
        match side {
            Side::Baseline => std::hint::black_box(raw_scan(&self.log_dir)),
            Side::Candidate => self.drain(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_get_through_the_whole_backlog_every_pass() {
        let mut scenario = BacklogDrain::new();
        assert_eq!(scenario.pass(Side::Baseline), EVENTS as u64);
        assert_eq!(scenario.pass(Side::Candidate), EVENTS as u64);
        assert_eq!(
            scenario.pass(Side::Candidate),
            EVENTS as u64,
            "a second pass drains it all again"
        );
    }
}
