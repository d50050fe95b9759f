//! The SQLite sink against a raw `rusqlite` loop writing the same rows.

use std::sync::Arc;

use omnirelay_replication::{SinkExt, Timestamp};
use omnirelay_replication_sqlite::{SqliteSink, SqliteSinkOptions, Synchronous};

use crate::scenario::raw::{SinkSide, json_document};
use crate::scenario::{Scenario, Side};

/// Rows per batch (the sink's default batch size).
const BATCH: usize = 512;

/// `sqlite-sink`: batches of 512 JSON events applied by the SQLite sink
/// (one transaction per batch, with its checkpoint row), against a
/// `rusqlite` connection with the same pragmas inserting the same rows
/// into the same table layout, one transaction per batch. Both run WAL with
/// `synchronous = NORMAL`: with `FULL` each side pays one `fsync` per batch
/// and the shared disk's `fsync` latency (which also depends on what the
/// other side left dirty) swamps the difference being measured.
pub struct SqliteSinkScenario {
    runtime: tokio::runtime::Runtime,
    candidate: SinkSide,
    raw: Arc<std::sync::Mutex<rusqlite::Connection>>,
    raw_next: i64,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for SqliteSinkScenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSinkScenario").finish_non_exhaustive()
    }
}

impl SqliteSinkScenario {
    /// Two databases in a temporary directory.
    ///
    /// # Panics
    ///
    /// If the directory, runtime or raw database cannot be created.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let runtime = crate::scenario::runtime();
        let options = SqliteSinkOptions {
            synchronous: Synchronous::Normal,
            ..SqliteSinkOptions::new(dir.path().join("sink.db"))
        };
        let sink = SqliteSink::new(options)
            .unwrap_or_else(|e| panic!("sqlite sink: {e}"))
            .shared();
        let raw = rusqlite::Connection::open(dir.path().join("raw.db"))
            .and_then(|c| {
                c.pragma_update(None, "journal_mode", "WAL")?;
                c.pragma_update(None, "synchronous", "NORMAL")?;
                c.execute_batch(
                    "CREATE TABLE events (sequence_number INTEGER PRIMARY KEY, event_type INTEGER NOT NULL,
                        timestamp TEXT NOT NULL, peer_id TEXT NULL, event_json TEXT NOT NULL);
                     CREATE INDEX IX_events_EventType ON events (event_type);",
                )?;
                Ok(c)
            })
            .unwrap_or_else(|e| panic!("raw database: {e}"));
        Self {
            runtime,
            candidate: SinkSide::new(sink),
            raw: Arc::new(std::sync::Mutex::new(raw)),
            raw_next: 1,
            _dir: dir,
        }
    }

    /// The baseline's batch, on a blocking thread as the sink's is.
    fn raw_batch(&mut self) {
        let first = self.raw_next;
        let raw = self.raw.clone();
        let insert = move || -> rusqlite::Result<()> {
            let c = raw
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let timestamp = Timestamp::now().to_round_trip_string();
            c.execute_batch("BEGIN IMMEDIATE")?;
            {
                let mut statement = c.prepare_cached(
                    "INSERT INTO events (sequence_number, event_type, timestamp, peer_id, event_json)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for sequence in first..first + BATCH as i64 {
                    let doc = json_document(sequence as u64);
                    statement
                        .execute(rusqlite::params![sequence, 1, timestamp, "worker-1", doc])?;
                }
            }
            c.execute_batch("COMMIT")
        };
        let task = self.runtime.spawn_blocking(insert);
        self.runtime
            .block_on(task)
            .unwrap_or_else(|e| panic!("raw insert task: {e}"))
            .unwrap_or_else(|e| panic!("raw insert: {e}"));
        self.raw_next += BATCH as i64;
    }
}

impl Default for SqliteSinkScenario {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario for SqliteSinkScenario {
    fn name(&self) -> &'static str {
        "sqlite-sink"
    }

    fn unit(&self) -> &'static str {
        "events"
    }

    fn baseline(&self) -> &'static str {
        "rusqlite inserting the same rows (WAL, synchronous NORMAL), one transaction per 512"
    }

    fn target(&self) -> f64 {
        0.8
    }

    fn pass(&mut self, side: Side) -> u64 {
        match side {
            Side::Baseline => self.raw_batch(),
            Side::Candidate => {
                self.candidate.pass(&self.runtime, BATCH);
            }
        }
        BATCH as u64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::scenario::raw::EVENT_BYTES;

    #[test]
    fn both_sides_store_the_same_rows() {
        let mut scenario = SqliteSinkScenario::new();
        for _ in 0..3 {
            assert_eq!(scenario.pass(Side::Baseline), BATCH as u64);
            assert_eq!(scenario.pass(Side::Candidate), BATCH as u64);
        }
        let dir = scenario._dir.path().to_owned();
        let rows = |db: &str, table: &str| -> Vec<(i64, i64, String, String)> {
            let c = rusqlite::Connection::open(dir.join(db)).unwrap();
            let mut s = c
                .prepare(&format!(
                    "SELECT sequence_number, event_type, peer_id, event_json FROM {table} ORDER BY sequence_number"
                ))
                .unwrap();
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let raw = rows("raw.db", "events");
        let sink = rows("sink.db", "ResourceLeaseReplicationEvents");
        assert_eq!(raw.len(), 3 * BATCH);
        assert_eq!(raw, sink);
        assert_eq!(raw[0].3.len(), EVENT_BYTES);
    }
}
