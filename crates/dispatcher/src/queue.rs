//! The lease queue as a fold over its events.
//!
//! [`QueueState`] holds pending items (in order), active leases and
//! dead-lettered items. Its `decide_*` methods compute the events an
//! operation causes without changing anything; [`QueueState::apply`] folds
//! one event into the state. A dispatcher appends the decided events to its
//! durable log and then applies them; a restarted dispatcher or a standby
//! applies the log from the start and arrives at the same state.
//!
//! Semantics follow the reference's queue (Hugo `TaskQueue`, reference
//! §3.3–3.5): FIFO leasing, a lease of `lease_duration` that a heartbeat
//! extends only once `heartbeat_interval` has passed since the last
//! effective one, expiry and failure requeue the item with attempt + 1 and
//! the same sequence id, and after `max_delivery_attempts` the item is
//! dead-lettered — kept here, inspectable, redriven or purged by an
//! operator ([`QueueState::decide_redrive`], [`QueueState::decide_purge`]),
//! where the reference drops it. Tokens
//! are fenced: only the current lease of an item can complete, fail or
//! heartbeat it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use omnirelay_replication::Timestamp;
use omnirelay_resourcelease::{
    Metadata, ResourceLeaseErrorInfo as ErrorInfo, ResourceLeaseItemPayload as Payload,
    ResourceLeaseOwnershipHandle as Handle, ResourceLeasePendingItem as Item,
    ResourceLeaseReplicationEvent as Event, ResourceLeaseReplicationEventType as Type,
};
use uuid::Uuid;

/// The error codes the queue answers with (the reference's).
pub mod codes {
    /// The token is not one this dispatcher leased.
    pub const UNKNOWN_TOKEN: &str = "error.resourcelease.unknown_token";
    /// The token's lease ended (expired, completed or failed): fencing.
    pub const LEASE_INACTIVE: &str = "error.taskqueue.lease_inactive";
    /// The queue was drained and takes no new work until a restore.
    pub const DISPOSED: &str = "error.taskqueue.disposed";
    /// The queue holds `capacity` pending items.
    pub const FULL: &str = "error.taskqueue.full";
    /// A lease ran out without a heartbeat.
    pub const LEASE_EXPIRED: &str = "error.taskqueue.lease_expired";
    /// A failure reported without a code.
    pub const FAILED: &str = "error.resourcelease.failed";
    /// A restored item without a last error.
    pub const UNSPECIFIED: &str = "error.unspecified";
    /// The request has no payload.
    pub const PAYLOAD_REQUIRED: &str = "resourcelease.payload.required";
    /// The payload's resource type is blank.
    pub const RESOURCE_TYPE_REQUIRED: &str = "resourcelease.payload.resource_type_required";
    /// The payload has no resource id.
    pub const RESOURCE_ID_REQUIRED: &str = "resourcelease.payload.resource_id_required";
    /// The payload has no partition key.
    pub const PARTITION_KEY_REQUIRED: &str = "resourcelease.payload.partition_key_required";
    /// The payload has no encoding.
    pub const ENCODING_REQUIRED: &str = "resourcelease.payload.encoding_required";
    /// A restored item is invalid (or its sequence id is taken).
    pub const PENDING_ITEM_INVALID: &str = "resourcelease.restore.pending_item_invalid";
    /// A redrive names an item that is not dead-lettered (ours: the
    /// reference keeps no dead letters).
    pub const NOT_DEAD_LETTERED: &str = "resourcelease.redrive.not_dead_lettered";
    /// A purge names an item that is not dead-lettered (ours).
    pub const PURGE_NOT_DEAD_LETTERED: &str = "resourcelease.purge.not_dead_lettered";
    /// A redrive names an item twice (ours).
    pub const REDRIVE_NAMED_TWICE: &str = "resourcelease.redrive.named_twice";
    /// A purge names an item twice (ours).
    pub const PURGE_NAMED_TWICE: &str = "resourcelease.purge.named_twice";
    /// An enqueue finds no sequence id left: a restored item took the
    /// largest (ours: the reference's counter wraps to negative ids).
    pub const SEQUENCE_EXHAUSTED: &str = "resourcelease.enqueue.sequence_exhausted";
}

/// The most items one `DeadLetterPurged` event carries.
pub const PURGE_ITEMS_PER_EVENT: usize = 64;

/// Which dead-lettered items a redrive puts back in the queue, or a purge
/// discards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every one, oldest first.
    All,
    /// These sequence ids, in this order.
    Items(Vec<i64>),
}

/// The metadata keys of the reference's events.
pub mod keys {
    /// Pending items after the operation.
    pub const PENDING: &str = "queue.pending";
    /// Active leases after the operation.
    pub const ACTIVE: &str = "queue.active";
    /// Whether a failed item was to be requeued (`"True"`/`"False"`).
    pub const REQUEUED: &str = "failure.requeued";
    /// Items drained.
    pub const DRAIN_COUNT: &str = "drain.count";
    /// Items restored.
    pub const RESTORE_COUNT: &str = "restore.count";
    /// Dead-lettered items purged by the event (ours, v2).
    pub const PURGE_COUNT: &str = "purge.count";
}

/// The queue's settings; the defaults are the reference's
/// (`TaskQueueOptions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueOptions {
    /// Pending items at most; enqueuers wait beyond it.
    pub capacity: usize,
    /// How long a lease lasts without a heartbeat.
    pub lease_duration: Duration,
    /// The least time between heartbeats that extend a lease; an earlier
    /// heartbeat is accepted and changes nothing.
    pub heartbeat_interval: Duration,
    /// How often expired leases are looked for.
    pub sweep_interval: Duration,
    /// How long a requeued item waits before it can be leased again.
    pub requeue_delay: Duration,
    /// Deliveries of an item at most; a failure or expiry of the last one
    /// dead-letters it.
    pub max_delivery_attempts: u32,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            capacity: 512,
            lease_duration: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(1),
            requeue_delay: Duration::ZERO,
            max_delivery_attempts: 5,
        }
    }
}

/// A pending item and when it may be leased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEntry {
    /// The item (its attempt is the next delivery's), shared with the
    /// copies a checkpoint takes.
    pub item: Arc<Item>,
    /// Not leased before this (a requeue delay).
    pub available_at: Timestamp,
}

/// A granted lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveLease {
    /// The item (its attempt is this delivery's), shared with the copies a
    /// checkpoint takes.
    pub item: Arc<Item>,
    /// The lease's token.
    pub handle: Handle,
    /// Who holds it.
    pub owner: Option<String>,
    /// When it was granted.
    pub granted_at: Timestamp,
    /// When it expires unless a heartbeat extends it.
    pub expires_at: Timestamp,
    /// The last heartbeat that extended it (the grant, at first).
    pub last_heartbeat: Timestamp,
}

/// An item that ran out of attempts or was failed without requeue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The item as it was last delivered, shared with the copies a
    /// checkpoint takes.
    pub item: Arc<Item>,
    /// Why.
    pub error: Option<ErrorInfo>,
    /// When.
    pub at: Timestamp,
}

/// How an operation's refusal maps onto a status (HTTP and gRPC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorStatus {
    /// The request is wrong.
    InvalidArgument,
    /// What it names does not exist.
    NotFound,
    /// The state does not allow it (a fenced token, a drained queue).
    FailedPrecondition,
    /// The queue is full; waiting helps.
    ResourceExhausted,
}

/// A refused operation, with the reference's error code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueError {
    /// The status class.
    pub status: ErrorStatus,
    /// The reference's error code, e.g. `error.taskqueue.lease_inactive`.
    pub code: &'static str,
    /// A message for people.
    pub message: String,
}

impl QueueError {
    fn new(status: ErrorStatus, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for QueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for QueueError {}

/// An event that does not fit the state it is applied to: the stream is
/// not this queue's, or is damaged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionError {
    /// The event's sequence.
    pub sequence: i64,
    /// What did not fit.
    pub message: String,
}

impl std::fmt::Display for ProjectionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "event {}: {}", self.sequence, self.message)
    }
}

impl std::error::Error for ProjectionError {}

/// What a queue holds, counted, with its fingerprint: read without
/// copying the queue (a node's status asks for it every second).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSummary {
    /// Pending items.
    pub pending: usize,
    /// Active leases.
    pub active: usize,
    /// Dead-lettered items.
    pub dead_lettered: usize,
    /// [`QueueState::fingerprint`].
    pub fingerprint: String,
}

/// The events an operation causes, to be made durable and then applied.
pub type Decision = Vec<Event>;

/// The lease queue: pending items in order, active leases, dead letters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueState {
    last_sequence_id: i64,
    pending: VecDeque<PendingEntry>,
    /// Each lease shared with the copies a checkpoint takes (changed as
    /// copy-on-write), so that copying the queue copies pointers.
    active: BTreeMap<Uuid, Arc<ActiveLease>>,
    dead_letters: Vec<DeadLetter>,
    drained: bool,
    held: HeldIds,
    digest: Digest,
}

/// The sequence id of every item a queue holds (pending, leased,
/// dead-lettered), kept as events are applied: whether a token names an
/// item the queue still holds is asked of every stale token, and must not
/// cost a scan of a large queue under its lock. Derived from the rest of
/// the state, so its rendering (a fingerprint's) is its size only.
#[derive(Clone, Default, PartialEq, Eq)]
struct HeldIds(std::collections::HashSet<i64>);

impl std::fmt::Debug for HeldIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} held", self.0.len())
    }
}

fn plus(at: Timestamp, duration: Duration) -> Timestamp {
    let ticks = i64::try_from(duration.as_nanos() / 100).unwrap_or(i64::MAX);
    Timestamp::from_ticks(at.ticks().saturating_add(ticks)).unwrap_or(Timestamp::MAX)
}

fn event(kind: Type, peer: Option<&str>, pending: usize, active: usize) -> Event {
    let mut event = Event::new(kind);
    event.peer_id = peer.filter(|p| !p.is_empty()).map(str::to_owned);
    event.metadata.insert(keys::PENDING, pending.to_string());
    event.metadata.insert(keys::ACTIVE, active.to_string());
    event
}

/// `.NET`'s `bool.ToString()`.
fn dotnet_bool(value: bool) -> &'static str {
    if value { "True" } else { "False" }
}

/// Checks a payload as the reference does, and fills in what it always
/// writes (attributes, `{}` when empty).
///
/// # Errors
///
/// The reference's code of the first missing field.
pub fn normalize_payload(mut payload: Payload) -> Result<Payload, QueueError> {
    let missing = |code, what: &str| {
        Err(QueueError::new(
            ErrorStatus::InvalidArgument,
            code,
            format!("the payload's {what} is required"),
        ))
    };
    if payload.resource_type.trim().is_empty() {
        return missing(codes::RESOURCE_TYPE_REQUIRED, "resourceType");
    }
    if payload.resource_id.is_empty() {
        return missing(codes::RESOURCE_ID_REQUIRED, "resourceId");
    }
    if payload.partition_key.is_empty() {
        return missing(codes::PARTITION_KEY_REQUIRED, "partitionKey");
    }
    if payload.payload_encoding.is_empty() {
        return missing(codes::ENCODING_REQUIRED, "payloadEncoding");
    }
    payload.attributes.get_or_insert_with(Metadata::new);
    Ok(payload)
}

impl QueueState {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pending items, in leasing order.
    pub fn pending(&self) -> impl ExactSizeIterator<Item = &PendingEntry> {
        self.pending.iter()
    }

    /// Active leases, by lease id.
    pub fn active(&self) -> impl ExactSizeIterator<Item = &ActiveLease> {
        self.active.values().map(|lease| &**lease)
    }

    /// The lease `handle` names, if it is the item's current one.
    pub fn lease(&self, handle: &Handle) -> Option<&ActiveLease> {
        self.active
            .get(&handle.lease_id)
            .map(|lease| &**lease)
            .filter(|lease| lease.handle == *handle)
    }

    /// Dead-lettered items, oldest first.
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }

    /// At most `limit` dead-lettered items (`None`: all) after the first
    /// `offset`, oldest first.
    pub fn dead_letters_page(&self, offset: usize, limit: Option<usize>) -> &[DeadLetter] {
        let start = offset.min(self.dead_letters.len());
        let end = limit.map_or(self.dead_letters.len(), |limit| {
            start.saturating_add(limit).min(self.dead_letters.len())
        });
        &self.dead_letters[start..end]
    }

    /// Pending items.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Active leases.
    pub fn active_count(&self) -> usize {
        self.active.len()
    }

    /// Whether the queue was drained (and takes no new work until a
    /// restore).
    pub fn is_drained(&self) -> bool {
        self.drained
    }

    /// A fingerprint of what the queue holds (every pending item, every
    /// lease, every dead letter, the last sequence id given, whether it is
    /// drained), as 16 hex digits: equal queues have equal fingerprints,
    /// so a standby's projection can be compared with its primary's
    /// without shipping either. What heartbeats change (a lease's expiry)
    /// is left out, since a standby never sees them, and so is the order
    /// of the pending items. Kept as events are applied: reading it costs
    /// nothing however large the queue. Stable within one build, not a
    /// format.
    pub fn fingerprint(&self) -> String {
        let parts = (
            self.last_sequence_id,
            self.drained,
            (
                self.pending.len(),
                self.active.len(),
                self.dead_letters.len(),
            ),
            (self.digest.pending, self.digest.active, self.digest.dead),
        );
        format!("{:016x}", Digest::hash(&parts))
    }

    /// Its counts and fingerprint.
    pub fn summary(&self) -> QueueSummary {
        QueueSummary {
            pending: self.pending.len(),
            active: self.active.len(),
            dead_lettered: self.dead_letters.len(),
            fingerprint: self.fingerprint(),
        }
    }

    /// A state from its parts (a checkpoint's).
    pub(crate) fn from_parts(
        last_sequence_id: i64,
        pending: Vec<PendingEntry>,
        active: Vec<ActiveLease>,
        dead_letters: Vec<DeadLetter>,
        drained: bool,
    ) -> Self {
        // Through the helpers every change goes through, which keep the
        // held ids and the digest.
        let mut state = Self {
            last_sequence_id,
            drained,
            ..Self::default()
        };
        for entry in pending {
            state.push_pending(entry);
        }
        for lease in active {
            state.insert_active(lease);
        }
        for letter in dead_letters {
            state.push_dead_letter(letter);
        }
        state
    }

    /// Whether the queue holds the item of `sequence_id`: pending, leased
    /// or dead-lettered.
    pub fn holds(&self, sequence_id: i64) -> bool {
        self.held.0.contains(&sequence_id)
    }

    /// The sequence id the last enqueued (or restored) item got.
    pub fn last_sequence_id(&self) -> i64 {
        self.last_sequence_id
    }

    /// When the next active lease expires, if any does.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.active.values().map(|l| l.expires_at).min()
    }

    /// When the next pending item becomes available, if one is waiting
    /// out a requeue delay.
    pub fn next_available(&self, now: Timestamp) -> Option<Timestamp> {
        self.pending
            .iter()
            .map(|p| p.available_at)
            .filter(|at| *at > now)
            .min()
    }

    fn open(&self) -> Result<(), QueueError> {
        if self.drained {
            Err(QueueError::new(
                ErrorStatus::FailedPrecondition,
                codes::DISPOSED,
                "the queue was drained; restore items to reopen it",
            ))
        } else {
            Ok(())
        }
    }

    /// The lease `handle` names, or the reference's refusal: a token of
    /// an item that moved on (its lease expired, or it was requeued) is
    /// inactive; any other is unknown.
    fn current(&self, handle: &Handle) -> Result<&ActiveLease, QueueError> {
        if let Some(lease) = self.lease(handle) {
            return Ok(lease);
        }
        Err(if self.holds(handle.sequence_id) {
            QueueError::new(
                ErrorStatus::FailedPrecondition,
                codes::LEASE_INACTIVE,
                format!(
                    "the lease {} of item {} is no longer active",
                    handle.lease_id, handle.sequence_id
                ),
            )
        } else {
            QueueError::new(
                ErrorStatus::NotFound,
                codes::UNKNOWN_TOKEN,
                "Lease token was not found.",
            )
        })
    }

    /// `enqueue`: an `Enqueue` event for `payload` from `peer`.
    ///
    /// # Errors
    ///
    /// An invalid payload; a drained queue; no sequence id left after the
    /// last one given ([`ErrorStatus::FailedPrecondition`]); a full queue
    /// ([`ErrorStatus::ResourceExhausted`]: wait and decide again).
    pub fn decide_enqueue(
        &self,
        payload: Payload,
        peer: Option<&str>,
        options: &QueueOptions,
    ) -> Result<Decision, QueueError> {
        let payload = normalize_payload(payload)?;
        self.open()?;
        if self.last_sequence_id == i64::MAX {
            return Err(QueueError::new(
                ErrorStatus::FailedPrecondition,
                codes::SEQUENCE_EXHAUSTED,
                format!(
                    "no sequence id is left after {} (a restored item's): this queue takes no new items",
                    i64::MAX
                ),
            ));
        }
        if self.pending.len() >= options.capacity {
            return Err(QueueError::new(
                ErrorStatus::ResourceExhausted,
                codes::FULL,
                "the queue is full",
            ));
        }
        let mut out = event(
            Type::Enqueue,
            peer,
            self.pending.len() + 1,
            self.active.len(),
        );
        out.payload = Some(payload);
        Ok(vec![out])
    }

    /// `lease`: a `LeaseGranted` event for the first pending item available
    /// at `now`, owned by `owner`; `None` when there is none.
    ///
    /// # Errors
    ///
    /// A drained queue.
    pub fn decide_lease(
        &self,
        owner: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<Decision>, QueueError> {
        self.open()?;
        let Some(entry) = self.pending.iter().find(|p| p.available_at <= now) else {
            return Ok(None);
        };
        let mut out = event(
            Type::LeaseGranted,
            owner,
            self.pending.len() - 1,
            self.active.len() + 1,
        );
        out.ownership = Some(Handle {
            sequence_id: entry.item.sequence_id,
            attempt: entry.item.attempt,
            lease_id: Uuid::new_v4(),
        });
        out.payload = Some(entry.item.payload.clone());
        out.error.clone_from(&entry.item.last_error);
        Ok(Some(vec![out]))
    }

    /// `complete`: `Completed` then `Heartbeat` (the reference's pair).
    ///
    /// # Errors
    ///
    /// A token that is not the item's current lease.
    pub fn decide_complete(&self, handle: &Handle) -> Result<Decision, QueueError> {
        let lease = self.current(handle)?;
        let (pending, active) = (self.pending.len(), self.active.len() - 1);
        let owner = lease.owner.as_deref();
        let mut completed = event(Type::Completed, owner, pending, active);
        completed.ownership = Some(lease.handle);
        completed.payload = Some(lease.item.payload.clone());
        let mut heartbeat = event(Type::Heartbeat, owner, pending, active);
        heartbeat.ownership = Some(lease.handle);
        Ok(vec![completed, heartbeat])
    }

    /// `heartbeat`: extends the lease to `now + lease_duration` if
    /// `heartbeat_interval` passed since the last effective heartbeat
    /// (else nothing changes). No event: the reference emits none, and
    /// expiry is recomputed from the grant after a restart.
    ///
    /// # Errors
    ///
    /// A token that is not the item's current lease.
    pub fn heartbeat(
        &mut self,
        handle: &Handle,
        now: Timestamp,
        options: &QueueOptions,
    ) -> Result<bool, QueueError> {
        self.current(handle)?;
        let Some(lease) = self.active.get_mut(&handle.lease_id) else {
            return Ok(false);
        };
        if now.saturating_duration_since(lease.last_heartbeat) < options.heartbeat_interval {
            return Ok(false);
        }
        let lease = Arc::make_mut(lease);
        lease.last_heartbeat = now;
        lease.expires_at = plus(now, options.lease_duration);
        Ok(true)
    }

    /// What follows the end of a lease that did not complete: the item back
    /// in the queue with attempt + 1 (`Requeued`), or, when `requeue` is
    /// false or the attempts are spent, in the dead letters
    /// (`DeadLettered`). `pending`/`active` are the counts before.
    fn after_failure(
        lease: &ActiveLease,
        error: &ErrorInfo,
        requeue: bool,
        counts: (usize, usize),
        options: &QueueOptions,
    ) -> (Event, usize) {
        let (pending, active) = counts;
        let next_attempt = lease.item.attempt.saturating_add(1);
        let again = requeue
            && u32::try_from(next_attempt).is_ok_and(|a| a <= options.max_delivery_attempts);
        let mut item = Item::clone(&lease.item);
        item.last_error = Some(error.clone());
        item.last_ownership_token = Some(lease.handle);
        let (kind, pending) = if again {
            item.attempt = next_attempt;
            (Type::Requeued, pending + 1)
        } else {
            (Type::DeadLettered, pending)
        };
        let mut out = event(kind, lease.owner.as_deref(), pending, active);
        out.ownership = Some(lease.handle);
        out.error = Some(error.clone());
        out.items = vec![item];
        (out, pending)
    }

    /// `fail`: `Failed` (metadata `failure.requeued`), then `Requeued` or
    /// `DeadLettered`.
    ///
    /// # Errors
    ///
    /// A token that is not the item's current lease.
    pub fn decide_fail(
        &self,
        handle: &Handle,
        reason: Option<&str>,
        code: Option<&str>,
        requeue: bool,
        options: &QueueOptions,
    ) -> Result<Decision, QueueError> {
        let lease = self.current(handle)?;
        let error = ErrorInfo {
            message: reason
                .filter(|r| !r.is_empty())
                .unwrap_or("lease failed")
                .to_owned(),
            code: Some(
                code.filter(|c| !c.is_empty())
                    .unwrap_or(codes::FAILED)
                    .to_owned(),
            ),
        };
        let counts = (self.pending.len(), self.active.len() - 1);
        let (then, pending) = Self::after_failure(lease, &error, requeue, counts, options);
        let mut failed = event(Type::Failed, lease.owner.as_deref(), pending, counts.1);
        failed.ownership = Some(lease.handle);
        failed.payload = Some(lease.item.payload.clone());
        failed.error = Some(error);
        failed.metadata.insert(keys::REQUEUED, dotnet_bool(requeue));
        Ok(vec![failed, then])
    }

    /// The expiry sweep at `now`: for each lease past its expiry (soonest
    /// first), `LeaseExpired` then `Requeued` or `DeadLettered`.
    pub fn decide_sweep(&self, now: Timestamp, options: &QueueOptions) -> Decision {
        let mut expired: Vec<&ActiveLease> =
            self.active().filter(|l| l.expires_at <= now).collect();
        expired.sort_by_key(|l| (l.expires_at, l.handle.lease_id));
        let (mut pending, mut active) = (self.pending.len(), self.active.len());
        let mut out = Vec::with_capacity(expired.len() * 2);
        for lease in expired {
            active -= 1;
            let error = ErrorInfo {
                message: "Lease expired without heartbeat.".to_owned(),
                code: Some(codes::LEASE_EXPIRED.to_owned()),
            };
            let (then, after) =
                Self::after_failure(lease, &error, true, (pending, active), options);
            let mut gone = event(Type::LeaseExpired, lease.owner.as_deref(), after, active);
            gone.ownership = Some(lease.handle);
            gone.payload = Some(lease.item.payload.clone());
            gone.error = Some(error);
            pending = after;
            out.push(gone);
            out.push(then);
        }
        out
    }

    /// `drain`: a `DrainSnapshot` holding every pending item (version 2;
    /// the reference's event has only `drain.count`). The queue then takes
    /// no new work until a restore.
    ///
    /// # Errors
    ///
    /// A queue already drained.
    pub fn decide_drain(&self) -> Result<Decision, QueueError> {
        self.open()?;
        let mut out = event(Type::DrainSnapshot, None, 0, self.active.len());
        out.metadata
            .insert(keys::DRAIN_COUNT, self.pending.len().to_string());
        out.items = self.pending.iter().map(|p| Item::clone(&p.item)).collect();
        Ok(vec![out])
    }

    /// `restore`: a `RestoreSnapshot` holding `items` (nothing for none).
    /// Items keep their sequence id, attempt, enqueue time, last error and
    /// last token; an item without a last error gets the reference's
    /// `error.unspecified` "restored pending item". Reopens a drained
    /// queue.
    ///
    /// # Errors
    ///
    /// An invalid item, or a sequence id already in this queue.
    pub fn decide_restore(
        &self,
        items: Vec<Item>,
        peer: Option<&str>,
    ) -> Result<Decision, QueueError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut seen = std::collections::HashSet::with_capacity(items.len());
        let mut restored = Vec::with_capacity(items.len());
        for (index, mut item) in items.into_iter().enumerate() {
            let invalid = |why: String| {
                QueueError::new(
                    ErrorStatus::InvalidArgument,
                    codes::PENDING_ITEM_INVALID,
                    format!("items[{index}]: {why}"),
                )
            };
            item.payload = normalize_payload(std::mem::take(&mut item.payload))
                .map_err(|e| invalid(e.message))?;
            if item.sequence_id < 1 {
                return Err(invalid(format!(
                    "sequenceId {} is not positive",
                    item.sequence_id
                )));
            }
            if item.attempt < 1 {
                return Err(invalid(format!("attempt {} is not positive", item.attempt)));
            }
            if self.holds(item.sequence_id) || !seen.insert(item.sequence_id) {
                return Err(invalid(format!(
                    "sequenceId {} is already in the queue",
                    item.sequence_id
                )));
            }
            item.last_error.get_or_insert_with(|| ErrorInfo {
                message: "restored pending item".to_owned(),
                code: Some(codes::UNSPECIFIED.to_owned()),
            });
            restored.push(item);
        }
        let mut out = event(
            Type::RestoreSnapshot,
            peer,
            self.pending.len() + restored.len(),
            self.active.len(),
        );
        out.metadata
            .insert(keys::RESTORE_COUNT, restored.len().to_string());
        out.items = restored;
        Ok(vec![out])
    }

    /// `redrive`: one `Requeued` event (without ownership: no lease ended)
    /// per chosen dead-lettered item, which goes back to the end of the
    /// queue, available at once, with a fresh set of attempts (attempt 1),
    /// its sequence id, and its last error and token. `peer` is who asked.
    ///
    /// # Errors
    ///
    /// A drained queue; a sequence id that is not dead-lettered
    /// ([`ErrorStatus::NotFound`]) or named twice
    /// ([`ErrorStatus::InvalidArgument`]); more items than the queue has
    /// room for ([`ErrorStatus::ResourceExhausted`]): nothing is redriven.
    pub fn decide_redrive(
        &self,
        which: &Selection,
        peer: Option<&str>,
        options: &QueueOptions,
    ) -> Result<Decision, QueueError> {
        self.open()?;
        let chosen =
            self.select_dead_letters(which, codes::NOT_DEAD_LETTERED, codes::REDRIVE_NAMED_TWICE)?;
        let room = options.capacity.saturating_sub(self.pending.len());
        if chosen.len() > room {
            return Err(QueueError::new(
                ErrorStatus::ResourceExhausted,
                codes::FULL,
                format!(
                    "the queue has room for {room} more pending items, not {}; nothing was redriven",
                    chosen.len()
                ),
            ));
        }
        let mut pending = self.pending.len();
        Ok(chosen
            .into_iter()
            .map(|letter| {
                pending += 1;
                let mut out = event(Type::Requeued, peer, pending, self.active.len());
                let mut item = Item::clone(&letter.item);
                item.attempt = 1;
                out.items = vec![item];
                out
            })
            .collect())
    }

    /// `purge`: `DeadLetterPurged` events carrying the chosen dead-lettered
    /// items (as they were, up to [`PURGE_ITEMS_PER_EVENT`] per event, so
    /// that no event outgrows what a bus or a follower takes), which leave
    /// the dead letters for good; no event when there are none. A drained
    /// queue may be purged. `peer` is who asked.
    ///
    /// # Errors
    ///
    /// A sequence id that is not dead-lettered ([`ErrorStatus::NotFound`])
    /// or named twice ([`ErrorStatus::InvalidArgument`]): nothing is purged.
    pub fn decide_purge(
        &self,
        which: &Selection,
        peer: Option<&str>,
    ) -> Result<Decision, QueueError> {
        let chosen = self.select_dead_letters(
            which,
            codes::PURGE_NOT_DEAD_LETTERED,
            codes::PURGE_NAMED_TWICE,
        )?;
        Ok(chosen
            .chunks(PURGE_ITEMS_PER_EVENT)
            .map(|letters| {
                let mut out = event(
                    Type::DeadLetterPurged,
                    peer,
                    self.pending.len(),
                    self.active.len(),
                );
                out.metadata
                    .insert(keys::PURGE_COUNT, letters.len().to_string());
                out.items = letters.iter().map(|d| Item::clone(&d.item)).collect();
                out
            })
            .collect())
    }

    /// The dead letters `which` names, in its order (`missing`, `twice`:
    /// the error codes for an id that is not dead-lettered, or is named
    /// more than once).
    fn select_dead_letters(
        &self,
        which: &Selection,
        missing: &'static str,
        twice: &'static str,
    ) -> Result<Vec<&DeadLetter>, QueueError> {
        let ids = match which {
            Selection::All => return Ok(self.dead_letters.iter().collect()),
            Selection::Items(ids) => ids,
        };
        let mut letters = std::collections::HashMap::with_capacity(self.dead_letters.len());
        for letter in &self.dead_letters {
            letters.entry(letter.item.sequence_id).or_insert(letter);
        }
        let mut seen = std::collections::BTreeSet::new();
        ids.iter()
            .map(|&id| {
                if !seen.insert(id) {
                    return Err(QueueError::new(
                        ErrorStatus::InvalidArgument,
                        twice,
                        format!("item {id} is named twice: name each item once"),
                    ));
                }
                letters.get(&id).copied().ok_or_else(|| {
                    QueueError::new(
                        ErrorStatus::NotFound,
                        missing,
                        format!("item {id} is not dead-lettered"),
                    )
                })
            })
            .collect()
    }

    /// Folds `event` into the state.
    ///
    /// # Errors
    ///
    /// The event does not fit (a lease of an item that is not pending, the
    /// end of a lease that is not active, an event without what it needs).
    pub fn apply(&mut self, event: &Event, options: &QueueOptions) -> Result<(), ProjectionError> {
        let at = event.timestamp;
        let wrong = |message: String| ProjectionError {
            sequence: event.sequence_number,
            message,
        };
        let handle = || {
            event
                .ownership
                .ok_or_else(|| wrong(format!("{} without ownership", event.event_type.name())))
        };
        let first_item = || {
            event
                .items
                .first()
                .cloned()
                .map(Arc::new)
                .ok_or_else(|| wrong(format!("{} without its item", event.event_type.name())))
        };
        match event.event_type {
            Type::Enqueue => {
                let payload = event
                    .payload
                    .clone()
                    .ok_or_else(|| wrong("Enqueue without payload".to_owned()))?;
                // Past the largest id the reference's counter wraps; ours
                // refuses such an enqueue, but a stream that has one (the
                // reference's, or ours before that refusal) folds as it
                // was served.
                self.last_sequence_id = self.last_sequence_id.wrapping_add(1);
                self.push_pending(PendingEntry {
                    item: Arc::new(Item {
                        payload,
                        attempt: 1,
                        enqueued_at: at,
                        last_error: None,
                        sequence_id: self.last_sequence_id,
                        last_ownership_token: None,
                    }),
                    available_at: at,
                });
            }
            Type::LeaseGranted => {
                let handle = handle()?;
                let entry = self
                    .pending
                    .iter()
                    .position(|p| p.item.sequence_id == handle.sequence_id)
                    .and_then(|index| self.remove_pending(index))
                    .ok_or_else(|| wrong(format!("item {} is not pending", handle.sequence_id)))?;
                let mut item = entry.item;
                if item.attempt != handle.attempt {
                    Arc::make_mut(&mut item).attempt = handle.attempt;
                }
                self.insert_active(ActiveLease {
                    item,
                    owner: event.peer_id.clone(),
                    granted_at: at,
                    expires_at: plus(at, options.lease_duration),
                    last_heartbeat: at,
                    handle,
                });
            }
            // A failed or expired lease's item comes back with the event
            // after it (`Requeued`, `DeadLettered`).
            Type::Completed | Type::Failed | Type::LeaseExpired => {
                let handle = handle()?;
                self.remove_active(&handle.lease_id)
                    .ok_or_else(|| wrong(format!("lease {} is not active", handle.lease_id)))?;
            }
            // The reference's heartbeat events follow `Completed`; live
            // heartbeats are not events.
            Type::Heartbeat => {}
            Type::Requeued => {
                let item = first_item()?;
                let available_at = if event.ownership.is_none() {
                    // A redrive: no lease ended; the item leaves the dead
                    // letters.
                    let index = self
                        .dead_letters
                        .iter()
                        .position(|d| d.item.sequence_id == item.sequence_id)
                        .ok_or_else(|| {
                            wrong(format!("item {} is not dead-lettered", item.sequence_id))
                        })?;
                    self.remove_dead_letter(index);
                    at
                } else {
                    plus(at, options.requeue_delay)
                };
                self.push_pending(PendingEntry { item, available_at });
            }
            Type::DeadLettered => {
                let item = first_item()?;
                self.push_dead_letter(DeadLetter {
                    item,
                    error: event.error.clone(),
                    at,
                });
            }
            Type::DeadLetterPurged => {
                // All or nothing, as decided.
                let dead: std::collections::BTreeSet<i64> = self
                    .dead_letters
                    .iter()
                    .map(|d| d.item.sequence_id)
                    .collect();
                let mut purged = std::collections::BTreeSet::new();
                for item in &event.items {
                    if !dead.contains(&item.sequence_id) || !purged.insert(item.sequence_id) {
                        return Err(wrong(format!(
                            "item {} is not dead-lettered (or is purged twice)",
                            item.sequence_id
                        )));
                    }
                }
                let (letters, mut gone) = (std::mem::take(&mut self.dead_letters), Vec::new());
                for letter in letters {
                    if purged.contains(&letter.item.sequence_id) {
                        gone.push(letter);
                    } else {
                        self.dead_letters.push(letter);
                    }
                }
                for letter in &gone {
                    self.forget(&letter.item);
                    self.digest.dead = self.digest.dead.wrapping_sub(Digest::dead_letter(letter));
                }
            }
            Type::DrainSnapshot => {
                for entry in std::mem::take(&mut self.pending) {
                    self.forget(&entry.item);
                }
                self.digest.pending = 0;
                self.drained = true;
            }
            Type::RestoreSnapshot => {
                for item in &event.items {
                    self.last_sequence_id = self.last_sequence_id.max(item.sequence_id);
                    self.push_pending(PendingEntry {
                        item: Arc::new(item.clone()),
                        available_at: at,
                    });
                }
                self.drained = false;
            }
        }
        Ok(())
    }

    // Every change to the items the queue holds goes through these, which
    // keep `held` and `digest` with them.

    fn push_pending(&mut self, entry: PendingEntry) {
        self.held.0.insert(entry.item.sequence_id);
        self.digest.pending = self.digest.pending.wrapping_add(Digest::pending(&entry));
        self.pending.push_back(entry);
    }

    fn remove_pending(&mut self, index: usize) -> Option<PendingEntry> {
        let entry = self.pending.remove(index)?;
        self.forget(&entry.item);
        self.digest.pending = self.digest.pending.wrapping_sub(Digest::pending(&entry));
        Some(entry)
    }

    fn insert_active(&mut self, lease: ActiveLease) {
        self.held.0.insert(lease.item.sequence_id);
        self.digest.active = self.digest.active.wrapping_add(Digest::lease(&lease));
        self.active.insert(lease.handle.lease_id, Arc::new(lease));
    }

    fn remove_active(&mut self, lease_id: &Uuid) -> Option<Arc<ActiveLease>> {
        let lease = self.active.remove(lease_id)?;
        self.forget(&lease.item);
        self.digest.active = self.digest.active.wrapping_sub(Digest::lease(&lease));
        Some(lease)
    }

    fn push_dead_letter(&mut self, letter: DeadLetter) {
        self.held.0.insert(letter.item.sequence_id);
        self.digest.dead = self.digest.dead.wrapping_add(Digest::dead_letter(&letter));
        self.dead_letters.push(letter);
    }

    fn remove_dead_letter(&mut self, index: usize) -> DeadLetter {
        let letter = self.dead_letters.remove(index);
        self.forget(&letter.item);
        self.digest.dead = self.digest.dead.wrapping_sub(Digest::dead_letter(&letter));
        letter
    }

    fn forget(&mut self, item: &Item) {
        self.held.0.remove(&item.sequence_id);
    }
}

/// What [`QueueState::fingerprint`] is made of: per part of the queue, the
/// wrapping sum of a hash of each element in it, moved as elements come
/// and go, so that reading it costs nothing however large the queue.
/// Heartbeats, which are not events (a standby never sees them), change
/// no element's hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Digest {
    pending: u64,
    active: u64,
    dead: u64,
}

impl Digest {
    /// FNV-1a (64 bits; the same in every process of one build, where
    /// std's hasher is seeded per process) of `value`, mixed (MurmurHash3's
    /// finalizer) so that sums of hashes of similar elements spread.
    fn hash(value: &impl std::hash::Hash) -> u64 {
        struct Fnv(u64);
        impl std::hash::Hasher for Fnv {
            fn finish(&self) -> u64 {
                self.0
            }
            fn write(&mut self, bytes: &[u8]) {
                for byte in bytes {
                    self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
        value.hash(&mut hasher);
        let mut x = std::hash::Hasher::finish(&hasher);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }

    fn pending(entry: &PendingEntry) -> u64 {
        Self::hash(&(1u8, &*entry.item, entry.available_at))
    }

    fn lease(lease: &ActiveLease) -> u64 {
        Self::hash(&(
            2u8,
            &*lease.item,
            lease.handle,
            &lease.owner,
            lease.granted_at,
        ))
    }

    fn dead_letter(letter: &DeadLetter) -> u64 {
        Self::hash(&(3u8, &*letter.item, &letter.error, letter.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue, its events numbered and timed as a log would, with the
    /// state kept as events apply checked against the state built from
    /// its parts after each one.
    struct Run {
        state: QueueState,
        options: QueueOptions,
        sequence: i64,
        now: Timestamp,
    }

    impl Run {
        fn commit(&mut self, events: Decision) -> Vec<Event> {
            let mut applied = Vec::new();
            for mut event in events {
                self.sequence += 1;
                event.sequence_number = self.sequence;
                event.timestamp = self.now;
                self.state.apply(&event, &self.options).unwrap();
                let state = &self.state;
                let rebuilt = QueueState::from_parts(
                    state.last_sequence_id,
                    state.pending.iter().cloned().collect(),
                    state.active().cloned().collect(),
                    state.dead_letters.clone(),
                    state.drained,
                );
                let what = event.event_type.name();
                assert_eq!(state.digest, rebuilt.digest, "after {what}");
                assert_eq!(state.held, rebuilt.held, "after {what}");
                assert_eq!(state.fingerprint(), rebuilt.fingerprint(), "after {what}");
                applied.push(event);
            }
            applied
        }

        fn enqueue(&mut self, id: &str) {
            let payload = Payload {
                resource_type: "lakehouse.catalog".to_owned(),
                resource_id: id.to_owned(),
                partition_key: "p".to_owned(),
                payload_encoding: "json".to_owned(),
                ..Payload::default()
            };
            let events = self
                .state
                .decide_enqueue(payload, Some("seeder"), &self.options);
            self.commit(events.unwrap());
        }

        fn lease(&mut self) -> Handle {
            let events = self
                .state
                .decide_lease(Some("w"), self.now)
                .unwrap()
                .unwrap();
            self.commit(events)[0].ownership.unwrap()
        }

        fn fail(&mut self, handle: &Handle, requeue: bool) {
            let events = self
                .state
                .decide_fail(handle, None, None, requeue, &self.options)
                .unwrap();
            self.commit(events);
        }
    }

    #[test]
    fn what_is_kept_as_events_apply_is_what_the_queue_holds() {
        let mut run = Run {
            state: QueueState::new(),
            options: QueueOptions::default(),
            sequence: 0,
            now: Timestamp::from_ticks(639_000_000_000_000_000).unwrap(),
        };
        for id in ["a", "b", "c", "d"] {
            run.enqueue(id);
        }
        let first = run.lease();
        run.fail(&first, true);
        let second = run.lease();
        let before = run.state.fingerprint();
        let completed = run.state.decide_complete(&second).unwrap();
        run.commit(completed);
        assert_ne!(run.state.fingerprint(), before, "a completion changes it");

        // A heartbeat moves a lease's expiry, which a standby never sees.
        let third = run.lease();
        let before = run.state.fingerprint();
        run.now = Timestamp::from_ticks(run.now.ticks() + 60 * 10_000_000).unwrap();
        let options = run.options.clone();
        assert!(run.state.heartbeat(&third, run.now, &options).unwrap());
        assert_eq!(
            run.state.fingerprint(),
            before,
            "a heartbeat does not change it"
        );
        run.now = Timestamp::from_ticks(run.now.ticks() + 60 * 10_000_000).unwrap();
        let expired = run.state.decide_sweep(run.now, &run.options);
        assert_eq!(expired.len(), 2, "expired and requeued");
        run.commit(expired);

        let fourth = run.lease();
        run.fail(&fourth, false);
        let redriven = run
            .state
            .decide_redrive(&Selection::All, None, &run.options)
            .unwrap();
        run.commit(redriven);
        let fifth = run.lease();
        run.fail(&fifth, false);
        assert_eq!(run.state.dead_letters().len(), 1);
        let purged = run.state.decide_purge(&Selection::All, None).unwrap();
        run.commit(purged);
        assert!(!run.state.holds(fifth.sequence_id));

        let drained = run.state.decide_drain().unwrap();
        let items = run.commit(drained).remove(0).items;
        assert!(!items.is_empty());
        assert!(items.iter().all(|item| !run.state.holds(item.sequence_id)));
        let restored = run.state.decide_restore(items.clone(), None).unwrap();
        run.commit(restored);
        assert!(items.iter().all(|item| run.state.holds(item.sequence_id)));
    }
}
