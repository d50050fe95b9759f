//! # omnirelay-replication-grpc
//!
//! gRPC for `omnirelay-replication`:
//!
//! - the reference's (OmniRelay .NET) service `omnirelay.dispatcher.
//!   replication.ResourceLeaseReplicatorGrpc/Publish`, which the reference
//!   has a client for and no server: a [`Receiver`] that appends what it
//!   receives to its own durable log and answers once the event is
//!   durable, ignoring re-sent events by each sender's high-water mark;
//! - its streaming successor `omnirelay.replication.v2.Replication`
//!   ([`StreamingService`]): `PublishStream` (batches in, high-water marks
//!   back) and `Subscribe` (a stream's log from any sequence, then live;
//!   the client is [`Subscription`]), and `Snapshot` (the newest snapshot
//!   of a stream's state the node keeps, from a [`SnapshotSource`]; the
//!   client is [`fetch_snapshot`]);
//! - a [`GrpcSink`] that replicates to a receiver over `PublishStream`, or
//!   `Publish` when that is all the receiver has;
//! - [`routes`]: all of a node's services behind its bearer token, ready
//!   to share one port with its HTTP endpoints.
//!
//! Linking this crate registers the sink type `grpc`:
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

/// The generated client and server of `omnirelay.replication.v2`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
pub mod v2 {
    include!(concat!(env!("OUT_DIR"), "/omnirelay.replication.v2.rs"));
}

mod client;
mod factory;
mod marks;
pub mod quarantine;
mod receiver;
mod sink;
mod streaming;
pub mod telemetry;

use std::sync::Arc;

use omnirelay_replication::DurableReplicator;
use omnirelay_resourcelease::ResourceLeaseReplicationEvent;
use tonic::service::interceptor::InterceptedService;

pub use client::{Connection, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, Subscription, fetch_snapshot};
pub use factory::GrpcSinkFactory;
pub use receiver::{
    ANONYMOUS, BatchOutcome, Incoming, Mark, Received, Receiver, ReceiverStats, Sender, Service,
    SubmittedBatch, TokenCheck, bearer_matches, origin, request,
};
pub use sink::{GrpcSink, GrpcSinkOptions, Protocol};
pub use streaming::{Snapshot, SnapshotReader, SnapshotSource, StreamingService};

/// A node's gRPC services, every one refusing (`UNAUTHENTICATED`) calls
/// without `authorization: Bearer <token>` when `token` is set: the
/// version-2 `Subscribe` to its log, and with a `receiver` the reference's
/// `Publish` and the version-2 `PublishStream`. Subscriptions end when
/// `stop` turns true (see [`StreamingService::stopping_on`]). Serve them
/// alone, or on the port of the node's HTTP endpoints with
/// [`tonic::service::Routes::into_axum_router`].
pub fn routes(
    replicator: Arc<DurableReplicator<ResourceLeaseReplicationEvent>>,
    receiver: Option<Arc<Receiver>>,
    token: Option<String>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tonic::service::Routes {
    routes_with(
        StreamingService::new(replicator, receiver.clone()),
        receiver,
        token,
        stop,
    )
}

/// As [`routes`], with the version-2 service given (with its
/// [`StreamingService::with_snapshots`], say).
pub fn routes_with(
    streaming: StreamingService,
    receiver: Option<Arc<Receiver>>,
    token: Option<String>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tonic::service::Routes {
    let check = TokenCheck::new(token);
    let streaming = streaming.stopping_on(stop).server();
    let routes = tonic::service::Routes::new(InterceptedService::new(streaming, check.clone()));
    match receiver {
        Some(receiver) => routes.add_service(InterceptedService::new(receiver.service(), check)),
        None => routes,
    }
}
