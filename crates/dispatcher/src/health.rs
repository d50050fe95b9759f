//! Lease health per peer (the reference's `PeerLeaseHealthTracker`):
//! assignments, heartbeats, disconnects and reassignments, with the
//! reference's `omnirelay_peer_lease_*` metrics.
//!
//! A peer is healthy while it was seen (a lease granted to it, a
//! heartbeat or a completion) within the grace period and has not disconnected since (a
//! failure without requeue). A reassignment is pending from a peer's lease
//! that ended with its item requeued (a failure with requeue, or expiry)
//! until that item is leased again. Health is kept in memory: it describes
//! the peers this node talks to, not the queue, so it is not in the log.
//!
//! A peer holding nothing (no lease, no reassignment pending) and without
//! a sign for the forget period is forgotten: workers come and go under
//! new names (a pod per deployment), and the reference, which keeps every
//! peer it ever saw, counts each one gone as unhealthy for good.

use std::collections::BTreeMap;
use std::time::Duration;

use omnirelay_replication::Timestamp;

/// The reference's peer metrics, in Prometheus form.
pub mod metrics_names {
    /// Healthy peers (gauge).
    pub const HEALTHY: &str = "omnirelay_peer_lease_healthy";
    /// Unhealthy peers (gauge).
    pub const UNHEALTHY: &str = "omnirelay_peer_lease_unhealthy";
    /// Reassignments pending over all peers (gauge).
    pub const PENDING_REASSIGNMENTS: &str = "omnirelay_peer_lease_pending_reassignments";
    /// Leases granted, by `rpc_peer`.
    pub const ASSIGNMENTS: &str = "omnirelay_peer_lease_assignments_leases_total";
    /// Heartbeats, by `rpc_peer`.
    pub const HEARTBEATS: &str = "omnirelay_peer_lease_heartbeats_signals_total";
    /// Disconnects (failures without requeue), by `rpc_peer`.
    pub const DISCONNECTS: &str = "omnirelay_peer_lease_disconnects_signals_total";
    /// How long completed leases were held, by `rpc_peer` (ms).
    pub const DURATION_MS: &str = "omnirelay_peer_lease_duration_ms";
}

/// One peer's lease health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerHealth {
    /// The peer.
    pub peer: String,
    /// When it was last seen (a lease or a heartbeat).
    pub last_seen: Timestamp,
    /// When it last disconnected, if ever.
    pub last_disconnect: Option<Timestamp>,
    /// Leases it holds.
    pub active_assignments: usize,
    /// Its leases that ended with the item requeued, not yet leased again.
    pub pending_reassignments: usize,
    /// Seen within the grace period and not disconnected since.
    pub healthy: bool,
}

/// The tracker. Times come from the caller.
#[derive(Clone, Debug, Default)]
pub struct LeaseHealth {
    peers: BTreeMap<String, PeerHealth>,
    /// Items requeued from a peer's lease, by sequence id: that peer.
    requeued_from: BTreeMap<i64, String>,
    grace: Duration,
    /// Zero: never forget.
    forget: Duration,
}

impl LeaseHealth {
    /// A tracker that calls a peer unhealthy after `grace` without a sign,
    /// and forgets one holding nothing after `forget` without a sign (zero:
    /// never, as the reference).
    pub fn new(grace: Duration, forget: Duration) -> Self {
        Self {
            grace,
            forget,
            ..Self::default()
        }
    }

    fn peer(&mut self, peer: &str, now: Timestamp) -> &mut PeerHealth {
        self.peers.entry(peer.to_owned()).or_insert_with(|| {
            // A new peer's signal counters start at zero, so that a
            // rate or increase over them counts its first signal.
            for name in [metrics_names::HEARTBEATS, metrics_names::DISCONNECTS] {
                metrics::counter!(name, "rpc_peer" => peer.to_owned()).increment(0);
            }
            PeerHealth {
                peer: peer.to_owned(),
                last_seen: now,
                last_disconnect: None,
                active_assignments: 0,
                pending_reassignments: 0,
                healthy: true,
            }
        })
    }

    /// A lease of item `sequence_id` granted to `peer`.
    pub fn assigned(&mut self, peer: &str, sequence_id: i64, now: Timestamp) {
        if let Some(previous) = self.requeued_from.remove(&sequence_id)
            && let Some(state) = self.peers.get_mut(&previous)
        {
            state.pending_reassignments = state.pending_reassignments.saturating_sub(1);
        }
        let state = self.peer(peer, now);
        state.active_assignments += 1;
        state.last_seen = now;
        metrics::counter!(metrics_names::ASSIGNMENTS, "rpc_peer" => peer.to_owned()).increment(1);
    }

    /// A heartbeat from `peer`.
    pub fn heartbeat(&mut self, peer: &str, now: Timestamp) {
        self.peer(peer, now).last_seen = now;
        metrics::counter!(metrics_names::HEARTBEATS, "rpc_peer" => peer.to_owned()).increment(1);
    }

    /// `peer`'s lease of item `sequence_id`, granted at `granted_at`, ended:
    /// completed, requeued (failure with requeue, or expiry), or not
    /// (a failure without requeue: a disconnect).
    pub fn released(
        &mut self,
        peer: &str,
        sequence_id: i64,
        granted_at: Timestamp,
        outcome: Release,
        now: Timestamp,
    ) {
        let state = self.peer(peer, now);
        state.active_assignments = state.active_assignments.saturating_sub(1);
        match outcome {
            Release::Completed => {
                // A completion is the peer's sign of life, as a heartbeat.
                state.last_seen = now;
                let held = now.saturating_duration_since(granted_at);
                metrics::histogram!(metrics_names::DURATION_MS, "rpc_peer" => peer.to_owned())
                    .record(held.as_secs_f64() * 1000.0);
            }
            Release::Requeued => {
                state.pending_reassignments += 1;
                self.requeued_from.insert(sequence_id, peer.to_owned());
            }
            Release::Disconnected => {
                state.last_disconnect = Some(now);
                metrics::counter!(metrics_names::DISCONNECTS, "rpc_peer" => peer.to_owned())
                    .increment(1);
            }
            Release::DeadLettered => {}
        }
    }

    /// Items left the queue (a drain): no reassignment is pending for them.
    pub fn forget_items(&mut self) {
        for peer in std::mem::take(&mut self.requeued_from).values() {
            if let Some(state) = self.peers.get_mut(peer) {
                state.pending_reassignments = 0;
            }
        }
    }

    /// Every peer's health at `now`, after forgetting the peers gone for
    /// the forget period; also sets the gauges.
    pub fn snapshot(&mut self, now: Timestamp) -> Vec<PeerHealth> {
        let forget = self.forget;
        if !forget.is_zero() {
            let quiet = |at: Timestamp| now.saturating_duration_since(at) > forget;
            self.peers.retain(|_, state| {
                state.active_assignments > 0
                    || state.pending_reassignments > 0
                    || !quiet(state.last_seen)
                    || state.last_disconnect.is_some_and(|d| !quiet(d))
            });
        }
        let grace = self.grace;
        let mut healthy = 0usize;
        let mut pending = 0usize;
        for state in self.peers.values_mut() {
            let seen = now.saturating_duration_since(state.last_seen) <= grace;
            let disconnected = state.last_disconnect.is_some_and(|d| d >= state.last_seen);
            state.healthy = seen && !disconnected;
            healthy += usize::from(state.healthy);
            pending += state.pending_reassignments;
        }
        metrics::gauge!(metrics_names::HEALTHY).set(healthy as f64);
        metrics::gauge!(metrics_names::UNHEALTHY).set((self.peers.len() - healthy) as f64);
        metrics::gauge!(metrics_names::PENDING_REASSIGNMENTS).set(pending as f64);
        self.peers.values().cloned().collect()
    }
}

/// How a lease ended, for [`LeaseHealth::released`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Completed.
    Completed,
    /// Its item went back to the queue.
    Requeued,
    /// Failed without requeue.
    Disconnected,
    /// Dead-lettered after its last attempt.
    DeadLettered,
}
