//! # omnirelay-replication-sqlite
//!
//! A SQLite sink for `omnirelay-replication` that keeps the reference's
//! (OmniRelay .NET) table layout, so tooling that reads the reference's
//! database reads ours, and a reader that streams the rows back out.
//!
//! Each stream has its own table; the stream `default` writes
//! `ResourceLeaseReplicationEvents`:
//!
//! | column | type | content |
//! |---|---|---|
//! | `sequence_number` | `INTEGER PRIMARY KEY` | the record's sequence |
//! | `event_type` | `INTEGER NOT NULL` | the event type's number |
//! | `timestamp` | `TEXT NOT NULL` | round-trip form, 7 fractional digits, `+00:00` |
//! | `peer_id` | `TEXT NULL` | the peer, or NULL |
//! | `event_json` | `TEXT NOT NULL` | the event in the sink's JSON version |
//!
//! with the index `IX_<table>_EventType` on `event_type`. Each batch is one
//! transaction that also writes the stream's row of
//! `omnirelay_sink_checkpoints`, so what the table holds and the sink's
//! checkpoint never disagree, whatever crashes when. A re-delivered
//! sequence is ignored. The database runs in WAL mode with
//! `synchronous = FULL` by default: a batch is durable when `apply`
//! returns.
//!
//! Linking this crate registers the sink type `sqlite` for configuration:
//!
//! ```toml
//! [replication.sinks.sqlite]
//! type = "sqlite"
//! [replication.sinks.sqlite.settings]
//! path = "replication.db"                    # relative to data_dir
//! table = "ResourceLeaseReplicationEvents"   # the stream `default`
//! ```

#![warn(missing_docs)]

mod factory;
mod reader;
mod sink;
mod table;

pub use factory::{DEFAULT_SINK_TOML, SqliteSinkFactory};
pub use reader::{Row, Rows, SqliteReader};
pub use sink::{SqliteSink, SqliteSinkOptions, Synchronous};
pub use table::{CHECKPOINT_TABLE, DEFAULT_TABLE, validate_table_name};
