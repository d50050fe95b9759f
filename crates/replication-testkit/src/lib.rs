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

#![warn(missing_docs)]

pub mod config;
pub mod conformance;
pub mod event;
pub mod faulty;
pub mod process;
pub mod sink;

pub use event::{Note, NoteCodec};
pub use faulty::FaultySink;
pub use sink::{ScriptedSink, Step};
