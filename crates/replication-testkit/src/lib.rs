//! # omnirelay-replication-testkit
//!
//! Helpers for testing code built on `omnirelay-replication`, used only as
//! a dev-dependency:
//!
//! - [`Note`] and [`NoteCodec`]: a minimal event type and codec with no
//!   schema crate behind them, whose codec counts its encodings.
//! - [`ScriptedSink`]: a sink that records what it applied, fails where a
//!   test script says, and can yield mid-apply to expose races.
//! - [`FaultySink`]: a sink whose failures a test switches on and off.
//! - [`conformance`]: the suite every sink passes against its real backend.
//! - [`config::check`]: validates configuration text against the sink
//!   types linked into the test.
//! - [`process`]: starts the real servers tests need and signals them.
//! - [`nats_auth`]: NATS servers that want credentials (nkey users,
//!   operator mode with JWTs) and what their clients present.
//! - [`oldest_record`]: what retention left of a stream's log.
//! - [`segments`] and [`damage_record`]: a stream's segment files, and one
//!   record's bytes damaged on disk as bit rot would.

#![warn(missing_docs)]

pub mod config;
pub mod conformance;
pub mod event;
pub mod faulty;
pub mod nats_auth;
pub mod process;
pub mod sink;
pub mod tls;

pub use event::{Note, NoteCodec};
pub use faulty::FaultySink;
pub use sink::{ScriptedSink, Step};

/// The first sequence the log of `stream` under `data_dir` still holds (0
/// for an empty log): what retention left.
///
/// # Panics
///
/// When the log cannot be read.
pub fn oldest_record(data_dir: &std::path::Path, stream: &omnirelay_replication::StreamId) -> u64 {
    let dir = omnirelay_replication::DurableReplicator::<Note>::stream_dir(data_dir, stream);
    let mut first = 0;
    omnirelay_replication::log::LogReader::new(&dir)
        .visit_from(1, |record| {
            first = record.sequence;
            std::ops::ControlFlow::Break(())
        })
        .unwrap_or_else(|e| panic!("reading the log under {}: {e}", dir.display()));
    first
}

/// The segment files of the log of `stream` under `data_dir`, oldest
/// first.
///
/// # Panics
///
/// When the log's directory cannot be listed.
pub fn segments(
    data_dir: &std::path::Path,
    stream: &omnirelay_replication::StreamId,
) -> Vec<std::path::PathBuf> {
    let dir = omnirelay_replication::DurableReplicator::<Note>::stream_dir(data_dir, stream);
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    segments
}

/// Damages the record of `sequence` in the segment file `path` (one byte
/// of its payload, so that its checksum no longer holds), walking the
/// frames: a 32-byte header, then `u32 length | u32 CRC32C | u64 sequence
/// | …` (docs/reliability.md).
///
/// # Panics
///
/// When the file cannot be read or written, or does not hold `sequence`.
pub fn damage_record(path: &std::path::Path, sequence: u64) {
    let mut bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut at = 32;
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(std::array::from_fn(|i| bytes[at + i])) as usize;
        if u64::from_le_bytes(std::array::from_fn(|i| bytes[at + 8 + i])) == sequence {
            bytes[at + 8 + 16] ^= 0x55;
            std::fs::write(path, bytes)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            return;
        }
        at += 8 + len;
    }
    panic!("{} holds no record {sequence}", path.display());
}
