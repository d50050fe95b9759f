//! Replay of a log against a raw sequential read + CRC loop over the same
//! files.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use omnirelay_replication::log::{LogReader, frame};
use omnirelay_replication::{Durability, DurableOptions, DurableReplicator, LogOptions, StreamId};

use crate::scenario::raw::{RawCodec, RawEvent};
use crate::scenario::{Scenario, Side};

const EVENTS: usize = 100_000;

/// `replay`: visiting every record of a 100 000-event log with
/// `LogReader::visit_from` (framing, CRC, sequence continuity and timestamp
/// checked, each payload borrowed), against reading the same files in
/// 256 KiB buffers and checking each frame's CRC.
pub struct Replay {
    log_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay").finish_non_exhaustive()
    }
}

/// Writes `events` raw events to the stream `default` of a log in `dir`
/// (durability `none`); the stream's directory.
///
/// # Panics
///
/// If the log cannot be written.
pub(crate) fn write_log(dir: &Path, events: usize) -> PathBuf {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    runtime.block_on(async {
        let replicator = DurableReplicator::open(Arc::new(RawCodec), unsynced(dir))
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
        let stream = StreamId::default();
        let mut last = None;
        for i in 0..events {
            last = replicator.submit(&stream, RawEvent::new(i)).await.ok();
        }
        if let Some(last) = last {
            let _ = last.durable().await;
        }
        let _ = replicator.close().await;
    });
    DurableReplicator::<RawEvent>::stream_dir(dir, &StreamId::default())
}

/// A log in `dir` with durability `none`.
pub(crate) fn unsynced(dir: &Path) -> DurableOptions {
    DurableOptions {
        log: LogOptions {
            durability: Durability::None,
            ..LogOptions::default()
        },
        ..DurableOptions::new(dir)
    }
}

/// Reads every segment of the stream in `log_dir` in 256 KiB buffers and
/// checks each frame's CRC; the frames read.
pub(crate) fn raw_scan(log_dir: &Path) -> u64 {
    let mut count = 0;
    let mut segments: Vec<_> = std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    for path in segments {
        let Ok(file) = File::open(path) else { continue };
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut header = [0u8; frame::SEGMENT_HEADER_LEN];
        if reader.read_exact(&mut header).is_err() {
            continue;
        }
        let mut body = Vec::new();
        loop {
            let mut head = [0u8; frame::FRAME_HEADER_LEN];
            if reader.read_exact(&mut head).is_err() {
                break;
            }
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            body.resize(len, 0);
            if reader.read_exact(&mut body).is_err() || crc32c::crc32c(&body) != crc {
                break;
            }
            count += 1;
        }
    }
    count
}

impl Replay {
    /// Writes the log to replay.
    ///
    /// # Panics
    ///
    /// If the log cannot be written.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        Self {
            log_dir: write_log(dir.path(), EVENTS),
            _dir: dir,
        }
    }
}

impl Default for Replay {
    fn default() -> Self {
        Self::new()
    }
}

impl Scenario for Replay {
    fn name(&self) -> &'static str {
        "replay"
    }

    fn unit(&self) -> &'static str {
        "events"
    }

    fn baseline(&self) -> &'static str {
        "sequential 256 KiB reads + CRC32C of every frame"
    }

    fn target(&self) -> f64 {
        0.8
    }

    fn pass(&mut self, side: Side) -> u64 {
        match side {
            Side::Baseline => std::hint::black_box(raw_scan(&self.log_dir)),
            Side::Candidate => LogReader::new(&self.log_dir)
                .visit_from(1, |record| {
                    std::hint::black_box(record.payload);
                    std::ops::ControlFlow::Continue(())
                })
                .unwrap_or(0),
        }
    }
}
