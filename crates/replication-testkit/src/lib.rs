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
