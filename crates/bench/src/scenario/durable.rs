//! Durable publish under `fsync` against a raw `write` + `fdatasync` loop.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

use omnirelay_replication::log::frame;
use omnirelay_replication::{
    Durability, DurableOptions, DurableReplicator, LogOptions, Retention, StreamId, Timestamp,
};

use crate::scenario::raw::{RawCodec, RawEvent};
use crate::scenario::{Scenario, Side};

/// Log files are trimmed past this size so that a long run does not fill
/// the disk.
const KEEP_BYTES: u64 = 256 * 1024 * 1024;

/// `durable-publish-<batch>`: `batch` events published together with
/// `submit_all` (one append, one `fdatasync`) and awaited, against a
/// minimal hand-written log that frames the same events, writes them and
/// `fdatasync`s them. With a batch of 1, the idle single-event latency.
pub struct DurablePublish {
    name: &'static str,
    batch: usize,
    target: f64,
    runtime: tokio::runtime::Runtime,
    replicator: DurableReplicator<RawEvent>,
    events: Vec<RawEvent>,
    raw_file: File,
    raw_frames: Vec<u8>,
    raw_len: u64,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for DurablePublish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurablePublish")
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl DurablePublish {
    /// A scenario publishing `batch` events per pass.
    ///
    /// # Panics
    ///
    /// If the temporary directory or runtime cannot be created.
    pub fn new(name: &'static str, batch: usize, target: f64) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let runtime = crate::scenario::runtime();
        let options = DurableOptions {
            log: LogOptions {
                durability: Durability::Fsync,
                retention: Retention {
                    max_bytes: Some(KEEP_BYTES),
                    ..Retention::default()
                },
                ..LogOptions::default()
            },
            ..DurableOptions::new(dir.path())
        };
        let replicator = runtime
            .block_on(DurableReplicator::open(Arc::new(RawCodec), options))
            .unwrap_or_else(|e| panic!("open: {e}"));
        let events: Vec<_> = (0..batch).map(RawEvent::new).collect();
        let mut raw_frames = Vec::new();
        for (i, event) in events.iter().enumerate() {
            frame::encode_frame(
                i as u64 + 1,
                Timestamp::now(),
                &event.bytes,
                &mut raw_frames,
            );
        }
        let raw_file =
            File::create(dir.path().join("raw.bin")).unwrap_or_else(|e| panic!("raw file: {e}"));
        Self {
            name,
            batch,
            target,
            runtime,
            replicator,
            events,
            raw_file,
            raw_frames,
            raw_len: 0,
            _dir: dir,
        }
    }
}

impl Scenario for DurablePublish {
    fn name(&self) -> &'static str {
        self.name
    }

    fn unit(&self) -> &'static str {
        "events"
    }

    fn baseline(&self) -> &'static str {
        "frame each event (length + CRC32C) into one buffer, write, fdatasync"
    }

    fn target(&self) -> f64 {
        self.target
    }

    fn pass(&mut self, side: Side) -> u64 {
        match side {
            Side::Baseline => {
                if self.raw_len > KEEP_BYTES {
                    let _ = self.raw_file.set_len(0);
                    self.raw_len = 0;
                }
                // What a minimal hand-written log does: frame each event
                // (length + CRC32C) into one buffer, write it, sync it.
                self.raw_frames.clear();
                let now = Timestamp::now();
                for (i, event) in self.events.iter().enumerate() {
                    frame::encode_frame(i as u64 + 1, now, &event.bytes, &mut self.raw_frames);
                }
                let _ = self.raw_file.write_all(&self.raw_frames);
                let _ = self.raw_file.sync_data();
                self.raw_len += self.raw_frames.len() as u64;
            }
            Side::Candidate => {
                let (replicator, events) = (&self.replicator, &self.events);
                self.runtime.block_on(async {
                    let stream = StreamId::default();
                    if let Ok(pending) = replicator.submit_all(&stream, events.clone()).await {
                        let _ = pending.durable().await;
                    }
                });
            }
        }
        self.batch as u64
    }
}
