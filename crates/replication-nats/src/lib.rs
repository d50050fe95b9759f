//! # omnirelay-replication-nats
//!
//! NATS JetStream as the message bus of `omnirelay-replication`: a sink
//! that publishes each record to a JetStream stream, one subject per
//! replication stream (`omnirelay.replication.<stream>` by default), with
//! `Nats-Msg-Id: <stream>:<sequence>` so that JetStream drops retried
//! publishes, and the schema version and event type as headers.
//!
//! Linking this crate registers the sink type `nats`:
//!
//! ```toml
//! [replication.sinks.bus]
//! type = "nats"
//! [replication.sinks.bus.settings]
//! servers = ["nats://127.0.0.1:4222"]
//! stream = "OMNIRELAY_REPLICATION"
//! subject = "omnirelay.replication.{stream}"
//! ```

#![warn(missing_docs)]

mod auth;
mod diagnose;
mod factory;
mod follow;
mod sink;
mod source;
mod subject;

pub use auth::{NatsCredentials, trust_authority};
pub use diagnose::TlsTrust;
pub use factory::NatsSinkFactory;
pub use follow::FollowUrl;
pub use sink::{NatsSink, NatsSinkOptions, Retention, Storage, StreamSettings};
pub use source::{HeldAt, NatsSource, NatsSourceOptions, Polled};
pub use subject::{
    DEFAULT_STREAM, DEFAULT_SUBJECT, header, validate_stream_name, validate_subject_template,
};
