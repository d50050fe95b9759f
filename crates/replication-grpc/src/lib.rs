//! # omnirelay-replication-grpc
//!
//! gRPC for `omnirelay-replication`, starting with the reference's
//! (OmniRelay .NET) service `omnirelay.dispatcher.replication.
//! ResourceLeaseReplicatorGrpc/Publish`, which the reference has a client
//! for and no server: a [`Receiver`] that appends what it receives to its
//! own durable log and answers once the event is durable, ignoring re-sent
//! events by each sender's high-water mark, and a [`GrpcSink`] that
//! publishes to it.

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

mod receiver;
mod sink;

pub use receiver::{ANONYMOUS, Mark, Received, Receiver, ReceiverStats, Service, origin, request};
pub use sink::{GrpcSink, GrpcSinkOptions};
