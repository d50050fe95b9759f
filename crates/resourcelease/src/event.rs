//! The resource-lease replication event and its parts.

use std::fmt;

use omnirelay_replication::{
    Assignment, EventKind, ReplicationEvent, StreamId, Timestamp, WireVersion,
};
use uuid::Uuid;

/// The type of a replication event. Numbers 1–7 are the reference's enum
/// (it has no 0 member); 8–11 exist from schema version 2 on.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[repr(i32)]
pub enum ResourceLeaseReplicationEventType {
    /// An item was enqueued.
    Enqueue = 1,
    /// A lease was granted on an item.
    LeaseGranted = 2,
    /// A lease holder's heartbeat (the reference emits it only after
    /// `Completed`).
    Heartbeat = 3,
    /// A leased item was completed.
    Completed = 4,
    /// A leased item failed (requeued or not, see `failure.requeued`).
    Failed = 5,
    /// The pending items were drained.
    DrainSnapshot = 6,
    /// Pending items were restored.
    RestoreSnapshot = 7,
    /// A lease expired without a heartbeat (version 2).
    LeaseExpired = 8,
    /// An item went back to the queue for another attempt (version 2):
    /// after a failure or an expiry (with the ended lease's ownership), or
    /// a dead-lettered item redriven by an operator (without ownership).
    Requeued = 9,
    /// An item ran out of attempts or was failed without requeue and was
    /// moved to the dead-letter list (version 2).
    DeadLettered = 10,
    /// Dead-lettered items were discarded by an operator (version 2):
    /// the event carries them, so the log keeps what was dropped.
    DeadLetterPurged = 11,
}

impl ResourceLeaseReplicationEventType {
    /// Every type, in number order.
    pub const ALL: [Self; 11] = [
        Self::Enqueue,
        Self::LeaseGranted,
        Self::Heartbeat,
        Self::Completed,
        Self::Failed,
        Self::DrainSnapshot,
        Self::RestoreSnapshot,
        Self::LeaseExpired,
        Self::Requeued,
        Self::DeadLettered,
        Self::DeadLetterPurged,
    ];

    /// The wire number.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The type of a wire number, if it is known.
    pub fn from_code(code: i64) -> Option<Self> {
        Self::ALL.into_iter().find(|t| i64::from(t.code()) == code)
    }

    /// The type as the replication framework sees it.
    pub const fn kind(self) -> EventKind {
        EventKind {
            code: self.code(),
            name: self.name(),
        }
    }

    /// The exact (PascalCase) name, as JSON writes it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Enqueue => "Enqueue",
            Self::LeaseGranted => "LeaseGranted",
            Self::Heartbeat => "Heartbeat",
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::DrainSnapshot => "DrainSnapshot",
            Self::RestoreSnapshot => "RestoreSnapshot",
            Self::LeaseExpired => "LeaseExpired",
            Self::Requeued => "Requeued",
            Self::DeadLettered => "DeadLettered",
            Self::DeadLetterPurged => "DeadLetterPurged",
        }
    }

    /// The type of a name in any letter case.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// The first schema version that has this type.
    pub const fn since(self) -> WireVersion {
        match self {
            Self::LeaseExpired | Self::Requeued | Self::DeadLettered | Self::DeadLetterPurged => {
                WireVersion::V2
            }
            _ => WireVersion::V1,
        }
    }

    /// Whether events of this type carry a snapshot of pending items
    /// (in version 2).
    pub const fn is_snapshot(self) -> bool {
        matches!(self, Self::DrainSnapshot | Self::RestoreSnapshot)
    }
}

impl fmt::Display for ResourceLeaseReplicationEventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A string map with keys compared without regard to ASCII case, as the
/// reference's `OrdinalIgnoreCase` dictionaries: inserting `Shard.Id`
/// replaces `shard.id`. It iterates (and serializes) in ordinal key order,
/// the canonical order where the reference's is unspecified.
///
/// Kept as a vector sorted by key: metadata holds a few entries (every
/// event its queue counts, many items a few attributes), for which one
/// small allocation beats a tree's node of room for eleven (about 540
/// bytes per map, on every event and queued item).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Metadata(Vec<(String, String)>);

impl Metadata {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where `key` (exactly) is, or would go.
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// Where a key equal to `key` without regard to ASCII case is.
    fn find_any_case(&self, key: &str) -> Option<usize> {
        match self.find(key) {
            Ok(index) => Some(index),
            Err(_) => self.0.iter().position(|(k, _)| k.eq_ignore_ascii_case(key)),
        }
    }

    /// The value of `key`, matched without regard to ASCII case.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.find_any_case(key)
            .map(|index| self.0[index].1.as_str())
    }

    /// Sets `key` to `value`, replacing any key equal to it without regard
    /// to ASCII case.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let key = key.into();
        let value = value.into();
        match self.find(&key) {
            Ok(index) => self.0[index].1 = value,
            Err(_) => {
                if let Some(other_case) = self.find_any_case(&key) {
                    self.0.remove(other_case);
                }
                let (Ok(index) | Err(index)) = self.find(&key);
                self.0.insert(index, (key, value));
            }
        }
    }

    /// Removes `key` (any case), returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let index = self.find_any_case(key)?;
        Some(self.0.remove(index).1)
    }

    /// Entries in ordinal key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Self::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for Metadata {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

/// The lease fencing token: which delivery of which item a lease is for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ResourceLeaseOwnershipHandle {
    /// The item's per-queue enqueue number, from 1, kept across requeue and
    /// restore.
    pub sequence_id: i64,
    /// The delivery attempt, from 1.
    pub attempt: i32,
    /// A fresh id for every lease grant.
    pub lease_id: Uuid,
}

/// A work item.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct ResourceLeaseItemPayload {
    /// What kind of resource the item is about (required, not blank).
    pub resource_type: String,
    /// Which resource (required).
    pub resource_id: String,
    /// The partition key (required).
    pub partition_key: String,
    /// How the body is encoded, free text such as `json` (required).
    pub payload_encoding: String,
    /// The body.
    pub body: Vec<u8>,
    /// Attributes; the dispatcher always writes them (`{}` when empty).
    pub attributes: Option<Metadata>,
    /// An opaque request id.
    pub request_id: Option<String>,
}

/// A failure, as carried by `Failed` events and by the previous attempt's
/// error on a lease.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct ResourceLeaseErrorInfo {
    /// The message.
    pub message: String,
    /// The error code, e.g. `error.resourcelease.failed`.
    pub code: Option<String>,
}

/// A pending work item in a drain or restore snapshot (version 2; the
/// reference RPC's `PendingItemDto`).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct ResourceLeasePendingItem {
    /// The item.
    pub payload: ResourceLeaseItemPayload,
    /// Its delivery attempt, from 1.
    pub attempt: i32,
    /// When it was first enqueued.
    pub enqueued_at: Timestamp,
    /// The previous attempt's failure.
    pub last_error: Option<ResourceLeaseErrorInfo>,
    /// Its enqueue number.
    pub sequence_id: i64,
    /// The token of its last lease.
    pub last_ownership_token: Option<ResourceLeaseOwnershipHandle>,
}

/// One replication event of the resource-lease dispatcher.
///
/// The fields up to `metadata` are the reference's, in its order; the rest
/// exist from schema version 2 on and are dropped by a version-1 writer.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct ResourceLeaseReplicationEvent {
    /// The event's position in its stream (0 before sequencing).
    pub sequence_number: i64,
    /// What happened.
    pub event_type: ResourceLeaseReplicationEventType,
    /// When the replicator accepted the event.
    pub timestamp: Timestamp,
    /// The lease the event is about.
    pub ownership: Option<ResourceLeaseOwnershipHandle>,
    /// The peer that caused the event.
    pub peer_id: Option<String>,
    /// The work item.
    pub payload: Option<ResourceLeaseItemPayload>,
    /// The failure, or the previous attempt's failure.
    pub error: Option<ResourceLeaseErrorInfo>,
    /// Free-form metadata (`queue.pending`, `queue.active`,
    /// `failure.requeued`, `drain.count`, `restore.count`, `shard.id`).
    pub metadata: Metadata,
    /// Version 2: the replication stream (shard) of the event.
    pub stream_id: Option<String>,
    /// Version 2: the node that emitted the event.
    pub node_id: Option<String>,
    /// Version 2: the items of a `DrainSnapshot` or `RestoreSnapshot`.
    pub items: Vec<ResourceLeasePendingItem>,
}

/// The metadata key the sharded replicator sets.
pub const SHARD_ID_KEY: &str = "shard.id";

impl ResourceLeaseReplicationEvent {
    /// A new event of `event_type`, unsequenced and stamped now (the
    /// reference's `Create`).
    pub fn new(event_type: ResourceLeaseReplicationEventType) -> Self {
        Self {
            sequence_number: 0,
            event_type,
            timestamp: Timestamp::now(),
            ownership: None,
            peer_id: None,
            payload: None,
            error: None,
            metadata: Metadata::new(),
            stream_id: None,
            node_id: None,
            items: Vec::new(),
        }
    }
}

impl ReplicationEvent for ResourceLeaseReplicationEvent {
    fn kind(&self) -> EventKind {
        self.event_type.kind()
    }

    fn peer(&self) -> Option<&str> {
        self.peer_id.as_deref()
    }

    fn sequence(&self) -> u64 {
        u64::try_from(self.sequence_number).unwrap_or(0)
    }

    fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    fn assign(&mut self, assignment: &Assignment<'_>) {
        // Sequencers stay within i64 (see `Sequencer::MAX`).
        self.sequence_number = i64::try_from(assignment.sequence).unwrap_or(i64::MAX);
        self.timestamp = assignment.timestamp;
        self.stream_id = Some(assignment.stream.as_str().to_owned());
    }

    fn set_shard(&mut self, shard: &StreamId) {
        self.metadata.insert(SHARD_ID_KEY, shard.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip_names_and_codes() {
        for t in ResourceLeaseReplicationEventType::ALL {
            assert_eq!(
                ResourceLeaseReplicationEventType::from_code(t.code().into()),
                Some(t)
            );
            assert_eq!(
                ResourceLeaseReplicationEventType::from_name(t.name()),
                Some(t)
            );
            let lower = t.name().to_ascii_lowercase();
            assert_eq!(
                ResourceLeaseReplicationEventType::from_name(&lower),
                Some(t)
            );
        }
        assert_eq!(ResourceLeaseReplicationEventType::from_code(0), None);
        assert_eq!(ResourceLeaseReplicationEventType::from_code(12), None);
        assert_eq!(
            ResourceLeaseReplicationEventType::LeaseExpired.since(),
            WireVersion::V2
        );
        assert_eq!(
            ResourceLeaseReplicationEventType::RestoreSnapshot.since(),
            WireVersion::V1
        );
    }

    #[test]
    fn metadata_keys_ignore_ascii_case() {
        let mut m = Metadata::from([("Shard.Id", "a"), ("queue.pending", "1")]);
        assert_eq!(m.get("shard.id"), Some("a"));
        m.insert("shard.id", "b");
        assert_eq!(m.len(), 2);
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [("queue.pending", "1"), ("shard.id", "b")]
        );
        assert_eq!(m.remove("SHARD.ID").as_deref(), Some("b"));
        assert_eq!(m.get("shard.id"), None);
    }

    #[test]
    fn assignment_overwrites_sequence_timestamp_and_stream() {
        let mut e = ResourceLeaseReplicationEvent::new(ResourceLeaseReplicationEventType::Enqueue);
        e.sequence_number = 42;
        let at = Timestamp::from_unix_millis(0).unwrap();
        let users = StreamId::new("users").unwrap();
        e.assign(&Assignment {
            stream: &users,
            sequence: 11,
            timestamp: at,
        });
        assert_eq!((e.sequence_number, e.timestamp), (11, at));
        assert_eq!(e.stream_id.as_deref(), Some("users"));
        e.metadata.insert("SHARD.ID", "old");
        e.set_shard(&StreamId::new("users").unwrap());
        assert_eq!(e.metadata.get(SHARD_ID_KEY), Some("users"));
        assert_eq!(e.metadata.len(), 1);
    }
}
