//! # omnirelay-replication-grpc
//!
//! gRPC for `omnirelay-replication`, starting with the reference's
//! (OmniRelay .NET) service `omnirelay.dispatcher.replication.
//! ResourceLeaseReplicatorGrpc/Publish`, which the reference has a client
//! for and no server: a [`Receiver`] that appends what it receives to its
//! own durable log and answers once the event is durable, ignoring re-sent
//! events by each sender's high-water mark, and a [`GrpcSink`] that
//! publishes to it. Linking this crate registers the sink type `grpc`:
//!
//! ```toml
//! [replication.sinks.replica]
//! type = "grpc"
//! [replication.sinks.replica.settings]
//! url = "http://replica.internal:7421"
//! sender = "dispatcher-eu-1"
//! ```

#![warn(missing_docs)]

/// The generated client and server of the reference's service.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
pub mod generated {
    include!(concat!(
        env!("OUT_DIR"),
        "/omnirelay.dispatcher.replication.rs"
    ));
}

mod factory;
mod receiver;
mod sink;

pub use factory::GrpcSinkFactory;
pub use receiver::{
    ANONYMOUS, Mark, Received, Receiver, ReceiverStats, Service, TokenCheck, origin, request,
};
pub use sink::{GrpcSink, GrpcSinkOptions};
