//! # omnirelay-dispatcher
//!
//! The resource-lease dispatcher (the reference's
//! `ResourceLeaseDispatcherComponent`) rebuilt on `omnirelay-replication`.
//!
//! The queue is event-sourced: every operation first *decides* the events
//! it causes from the current [`QueueState`] (without changing it), the
//! events go to the durable log, and only then are they *applied* to the
//! state with [`QueueState::apply`] — the same fold that rebuilds the state
//! from the log after a restart or on a standby. So the log alone
//! determines the queue: pending, leased and dead-lettered items.
//!
//! The events are the reference's (`Enqueue`, `LeaseGranted`, `Completed`
//! then `Heartbeat`, `Failed`, `DrainSnapshot`, `RestoreSnapshot`, with the
//! reference's metadata) plus, in schema version 2, what the reference
//! never emitted: `LeaseExpired`, `Requeued`, `DeadLettered`, and the items
//! of snapshots. A version-1 reader sees exactly the reference's stream.

#![warn(missing_docs)]

pub mod backpressure;
pub mod checkpoint;
pub mod health;
pub mod http;
pub mod queue;
mod service;
pub mod settings;
pub mod standby;

pub use backpressure::{BackpressureOptions, BackpressureSignal};
pub use health::PeerHealth;
pub use queue::{
    ActiveLease, DeadLetter, Decision, ErrorStatus, PendingEntry, ProjectionError, QueueError,
    QueueOptions, QueueState, QueueSummary, Selection,
};
pub use service::{
    CHECKPOINT_FAILURES, CHECKPOINT_SEQUENCE, DEAD_LETTERED_ITEMS, DispatchError, Dispatcher,
    DispatcherOptions, Lease, QueueStats,
};
pub use standby::{FeedHolds, PRIMARY_QUIET, Standby, StandbyFeed, StandbyStatus};

/// Describes the dispatcher's and the standby's own gauges to the
/// installed recorder (help texts in the exposition).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        DEAD_LETTERED_ITEMS,
        Unit::Count,
        "Items the dispatcher holds dead-lettered."
    );
    describe_gauge!(
        CHECKPOINT_SEQUENCE,
        "The event the queue checkpoint on disk is through (0: none)."
    );
    describe_counter!(
        CHECKPOINT_FAILURES,
        Unit::Count,
        "Queue checkpoints that could not be saved."
    );
    describe_gauge!(
        standby::LAG_EVENTS,
        Unit::Count,
        "Events the standby is behind its primary (absent while unknown)."
    );
    describe_gauge!(
        standby::CONNECTED,
        "1 while the standby's subscription to its primary (or the bus) is open."
    );
    describe_gauge!(standby::PROMOTED, "1 once the standby was promoted.");
}
