//! The dispatcher: the lease queue on a durable replication log.
//!
//! Every operation runs under the queue's lock: decide the events from the
//! state, submit them to the log (they get their sequence and timestamp
//! there), apply them to the state, release the lock, and answer once the
//! log has made them durable. So no mutation happens without its event (a
//! refused submission changes nothing) and no event exists without its
//! mutation (a restart folds the log back into the same state). Publishers
//! share the log's group commit: the lock is not held across the sync. If
//! the log fails to make events durable, it has stopped for good; the
//! dispatcher then refuses every operation (`unavailable`) and a restart
//! rebuilds the state from what the log kept.

use std::sync::{Arc, Mutex as StdMutex, OnceLock};
use std::time::Duration;

use omnirelay_replication::{
    DurableReplicator, Encoding, Error, ErrorKind, Format, PendingPublish, Replayed, RetentionHold,
    StreamId, Timestamp, WireVersion,
};
use omnirelay_resourcelease::{
    ResourceLeaseItemPayload as Payload, ResourceLeaseOwnershipHandle as Handle,
    ResourceLeasePendingItem as Item, ResourceLeaseReplicationEvent as Event,
    ResourceLeaseReplicationEventType as Type, proto, telemetry,
};
use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::backpressure::{Backpressure, BackpressureOptions, BackpressureSignal};
use crate::checkpoint::{self, Checkpoint};
use crate::health::{LeaseHealth, PeerHealth, Release};
use crate::queue::{ErrorStatus, QueueError, QueueOptions, QueueState, keys};

/// Locks `mutex`, also after a panic elsewhere (the data is plain state).
pub(crate) fn lock<T>(mutex: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Gauge: the items the dispatcher holds dead-lettered (label `stream`).
pub const DEAD_LETTERED_ITEMS: &str = "omnirelay_dispatcher_dead_lettered_items";

/// Gauge: the event the queue checkpoint on disk is through (0: none), by
/// `stream`.
pub const CHECKPOINT_SEQUENCE: &str = "omnirelay_dispatcher_checkpoint_sequence";

/// Counter: queue checkpoints that could not be saved, by `stream`.
pub const CHECKPOINT_FAILURES: &str = "omnirelay_dispatcher_checkpoint_failures_total";

/// A dispatcher's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatcherOptions {
    /// The RPC namespace (`{namespace}::enqueue`, …); blank means
    /// `resourcelease`.
    pub namespace: String,
    /// The queue.
    pub queue: QueueOptions,
    /// The replication stream the dispatcher writes (and rebuilds from).
    pub stream: StreamId,
    /// The dispatcher's own backpressure (off when `None`).
    pub backpressure: Option<BackpressureOptions>,
    /// How long a peer may go without a lease or heartbeat and still count
    /// as healthy.
    pub peer_grace: Duration,
    /// How long a peer holding no lease may go without a sign before its
    /// health is forgotten (zero: never).
    pub peer_forget: Duration,
    /// How often the queue checkpoint is saved while the log moves (zero:
    /// never): a restart then folds only the events after it, and
    /// retention may delete the segments before it.
    pub checkpoint_interval: Duration,
}

impl Default for DispatcherOptions {
    fn default() -> Self {
        Self {
            namespace: "resourcelease".to_owned(),
            queue: QueueOptions::default(),
            stream: StreamId::default(),
            backpressure: None,
            peer_grace: Duration::from_secs(30),
            peer_forget: Duration::from_secs(3600),
            checkpoint_interval: Duration::from_secs(10),
        }
    }
}

/// Why an operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The queue refused it (a reference error code).
    #[error("{0}")]
    Queue(QueueError),
    /// The log cannot take events now (it stopped, or a required sink is
    /// over its budget and refuses); nothing changed.
    #[error("replication is unavailable: {0}")]
    Unavailable(String),
    /// The dispatcher is shutting down ([`Dispatcher::stop_waits`]): it
    /// no longer waits for an item to lease or for room in the queue.
    #[error("the dispatcher is shutting down")]
    Stopping,
}

impl From<QueueError> for DispatchError {
    fn from(error: QueueError) -> Self {
        Self::Queue(error)
    }
}

/// What one look at the queue gave a lease call.
enum Attempt<'a> {
    /// An item, leased (boxed: the wait is the common case of a long poll).
    Granted(Box<Lease>),
    /// Nothing to lease: wait for `changed` (an item that may be
    /// leasable; registered before the look), or at most `wake` (a
    /// requeued item's delay) when set.
    Wait {
        changed: std::pin::Pin<Box<tokio::sync::futures::Notified<'a>>>,
        wake: Option<Duration>,
    },
}

/// Held by a lease woken to look for an item, until it looked: if its
/// request is given up before that (dropped), the wake passes on to
/// another waiting lease, which would otherwise sleep beside the item.
struct PassOn<'a>(Option<&'a Notify>);

impl Drop for PassOn<'_> {
    fn drop(&mut self) {
        if let Some(leasable) = self.0 {
            leasable.notify_one();
        }
    }
}

/// What `lease` hands a worker (the reference's lease response).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The lease's token.
    pub handle: Handle,
    /// The item.
    pub item: Item,
    /// Who holds it (`None` when no peer id resolved).
    pub owner: Option<String>,
}

/// Pending and active counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Pending items.
    pub pending: usize,
    /// Active leases.
    pub active: usize,
}

/// The dispatcher. See the module documentation.
pub struct Dispatcher {
    /// `None`: replication off (events are numbered here and go nowhere).
    replicator: Option<Arc<DurableReplicator<Event>>>,
    /// Keeps retention from deleting what a restart folds: the stream
    /// after the last queue checkpoint saved.
    retention: Option<RetentionHold>,
    /// The last event folded into the queue (moved under its lock).
    folded_through: std::sync::atomic::AtomicU64,
    /// The last sequence numbered without replication.
    unreplicated: std::sync::atomic::AtomicU64,
    options: DispatcherOptions,
    state: Mutex<QueueState>,
    /// Wakes waiting leasers: one per item that became leasable, every
    /// one when more changed (a restore, a drain, which refuses them, a
    /// requeue after a delay, which they set a timer for). Idle workers
    /// long-polling are not all woken by each request, nor by each item.
    leasable: Notify,
    /// Wakes waiting enqueuers when room may have come (an item leased, a
    /// drain, backpressure released).
    room: Notify,
    /// Set once the log failed to make events durable.
    failed: OnceLock<String>,
    /// Set once no request may wait any more ([`Dispatcher::stop_waits`]).
    stopping: std::sync::atomic::AtomicBool,
    backpressure: StdMutex<Backpressure>,
    health: StdMutex<LeaseHealth>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn stats_of(state: &QueueState) -> QueueStats {
    QueueStats {
        pending: state.pending_count(),
        active: state.active_count(),
    }
}

impl Dispatcher {
    /// Opens the dispatcher on `replicator`: the queue is rebuilt from its
    /// last checkpoint (`DATA_DIR/dispatcher/<stream>.queue.json`) and the
    /// stream's events after it, or from the whole stream, then the expiry
    /// sweep starts, and a checkpoint is saved every
    /// [`DispatcherOptions::checkpoint_interval`] while the log moves. The
    /// dispatcher holds every segment after its last checkpoint from
    /// retention; list the stream in
    /// [`DurableOptions::held`](omnirelay_replication::DurableOptions::held)
    /// so that none goes before this, while the sinks start.
    ///
    /// # Errors
    ///
    /// The log cannot be read, no longer begins with the queue's first
    /// event or has a hole, or holds an event that does not fit the queue
    /// (another writer's stream, or damage): [`ErrorKind::Corrupt`] naming
    /// the sequence.
    pub async fn open(
        replicator: Arc<DurableReplicator<Event>>,
        options: DispatcherOptions,
    ) -> Result<Arc<Self>, Error> {
        let rebuilt = rebuild(&replicator, &options).await?;
        Self::start(Some(replicator), options, rebuilt)
    }

    /// A dispatcher with replication off, as the reference runs without a
    /// replicator: the same queue and RPC, events numbered and applied but
    /// kept nowhere (nothing survives a restart; nothing can follow it).
    /// For embedding, tests, and as the baseline of the benchmark.
    ///
    /// # Errors
    ///
    /// Invalid backpressure settings.
    pub fn unreplicated(options: DispatcherOptions) -> Result<Arc<Self>, Error> {
        let empty = Rebuilt {
            state: QueueState::new(),
            through: 0,
            hold: None,
        };
        Self::start(None, options, empty)
    }

    fn start(
        replicator: Option<Arc<DurableReplicator<Event>>>,
        mut options: DispatcherOptions,
        rebuilt: Rebuilt,
    ) -> Result<Arc<Self>, Error> {
        if options.namespace.trim().is_empty() {
            options.namespace = "resourcelease".to_owned();
        }
        options.namespace = options.namespace.trim().to_owned();
        if let Some(backpressure) = &options.backpressure {
            backpressure
                .validate()
                .map_err(|e| Error::new(ErrorKind::Config, format!("backpressure.{e}")))?;
        }
        let Rebuilt {
            state,
            through,
            hold,
        } = rebuilt;
        let dead_letters = state.dead_letters().len();
        // The checkpoint is kept beside the log's files.
        let keeper = replicator
            .clone()
            .filter(|_| hold.is_some() && !options.checkpoint_interval.is_zero());
        let dispatcher = Arc::new(Self {
            replicator,
            retention: hold,
            folded_through: std::sync::atomic::AtomicU64::new(through),
            unreplicated: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(state),
            leasable: Notify::new(),
            room: Notify::new(),
            failed: OnceLock::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            backpressure: StdMutex::new(Backpressure::new(options.backpressure.clone())),
            health: StdMutex::new(LeaseHealth::new(options.peer_grace, options.peer_forget)),
            options,
        });
        dispatcher.count_dead_letters(dead_letters);
        tokio::spawn(Self::sweep_loop(Arc::downgrade(&dispatcher)));
        if let Some(replicator) = keeper {
            tokio::spawn(keep_checkpoint(
                Arc::downgrade(&dispatcher),
                replicator,
                through,
            ));
        }
        Ok(dispatcher)
    }

    /// The settings.
    pub fn options(&self) -> &DispatcherOptions {
        &self.options
    }

    /// A copy of the queue as it stands.
    pub async fn snapshot(&self) -> QueueState {
        self.state.lock().await.clone()
    }

    /// The queue's counts and fingerprint, without copying it.
    pub async fn summary(&self) -> crate::QueueSummary {
        self.state.lock().await.summary()
    }

    /// Pending and active counts.
    pub async fn stats(&self) -> QueueStats {
        stats_of(&*self.state.lock().await)
    }

    fn check(&self) -> Result<(), DispatchError> {
        match self.failed.get() {
            Some(why) => Err(DispatchError::Unavailable(why.clone())),
            None => Ok(()),
        }
    }

    /// From now on, a request that would wait — a lease with nothing to
    /// lease, an enqueue held back by a full queue or by backpressure — is
    /// refused with [`DispatchError::Stopping`] instead, and so is every
    /// one waiting now; what needs no wait is served as before. A node
    /// calls it when it starts shutting down, so that long polls (which
    /// a client may hold open without a deadline) do not keep it from
    /// stopping, while the requests in flight finish.
    pub fn stop_waits(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake_all();
    }

    /// Wakes every waiting request, to look again (and find the dispatcher
    /// stopping or failed).
    fn wake_all(&self) {
        self.leasable.notify_waiters();
        self.room.notify_waiters();
    }

    /// Stops serving for `why`: every request is refused from now on, and
    /// those waiting are woken to be.
    fn fail_for_good(&self, why: String) -> DispatchError {
        let _ = self.failed.set(why.clone());
        self.wake_all();
        DispatchError::Unavailable(why)
    }

    /// Whether a request may wait (see [`Dispatcher::stop_waits`]). Checked
    /// after the wait's `Notified` is made, so that a stop in between
    /// still wakes it.
    fn may_wait(&self) -> Result<(), DispatchError> {
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(DispatchError::Stopping);
        }
        Ok(())
    }

    /// Submits `events` (decided under `state`'s lock) and applies them as
    /// the log numbered them; returns them with the wait for durability.
    async fn commit(
        &self,
        state: &mut MutexGuard<'_, QueueState>,
        mut events: Vec<Event>,
    ) -> Result<Committed, DispatchError> {
        if events.is_empty() {
            return Ok(Committed::Local(events));
        }
        let committed = match &self.replicator {
            Some(replicator) => Committed::Replicated(
                replicator
                    .submit_all(&self.options.stream, events)
                    .await
                    .map_err(|parts| DispatchError::Unavailable(parts.error.to_string()))?,
            ),
            None => {
                let count = events.len() as u64;
                let first = self
                    .unreplicated
                    .fetch_add(count, std::sync::atomic::Ordering::Relaxed)
                    + 1;
                let timestamp = Timestamp::now();
                for (offset, event) in events.iter_mut().enumerate() {
                    event.sequence_number =
                        i64::try_from(first + offset as u64).unwrap_or(i64::MAX);
                    event.timestamp = timestamp;
                    event.stream_id = Some(self.options.stream.as_str().to_owned());
                }
                Committed::Local(events)
            }
        };
        let applied = committed.events();
        let (mut letters_moved, mut room) = (false, false);
        // Items leasable now (one waiting lease woken for each), or a
        // change every waiting lease looks at again.
        let (mut leasable, mut every) = (0usize, false);
        let at_once = self.options.queue.requeue_delay.is_zero();
        for (offset, event) in applied.iter().enumerate() {
            match event.event_type {
                Type::Enqueue => leasable += 1,
                // A redrive's item is leasable at once.
                Type::Requeued if at_once || event.ownership.is_none() => leasable += 1,
                Type::Requeued | Type::RestoreSnapshot => every = true,
                Type::LeaseGranted => room = true,
                Type::DrainSnapshot => (every, room) = (true, true),
                _ => {}
            }
            letters_moved |= matches!(
                event.event_type,
                Type::DeadLettered | Type::DeadLetterPurged
            ) || (event.event_type == Type::Requeued && event.ownership.is_none());
            telemetry::record_published(event);
            let granted = event
                .ownership
                .and_then(|handle| state.lease(&handle))
                .map(|lease| lease.granted_at);
            let outcome = state.apply(event, &self.options.queue);
            let previous = offset.checked_sub(1).map(|i| &applied[i]);
            self.observe(event, previous, granted);
            if let Err(error) = outcome {
                // Decided from this very state: only a bug gets here. The
                // log has the events, the state does not: stop serving.
                let why = format!("the queue fell out of step with its log: {error}");
                tracing::error!(%why);
                return Err(self.fail_for_good(why));
            }
        }
        if let Some(event) = applied.last() {
            self.folded_through.store(
                u64::try_from(event.sequence_number).unwrap_or(0),
                std::sync::atomic::Ordering::Release,
            );
        }
        if letters_moved {
            self.count_dead_letters(state.dead_letters().len());
        }
        self.evaluate_backpressure(state.pending_count());
        if every {
            self.leasable.notify_waiters();
        } else {
            for _ in 0..leasable {
                self.leasable.notify_one();
            }
        }
        if room {
            self.room.notify_waiters();
        }
        Ok(committed)
    }

    fn count_dead_letters(&self, count: usize) {
        metrics::gauge!(DEAD_LETTERED_ITEMS, "stream" => self.options.stream.as_str().to_owned())
            .set(count as f64);
    }

    /// Lease health from an applied event (`previous`: the event before it
    /// in the same decision; `granted`: when the lease it ends began).
    fn observe(&self, event: &Event, previous: Option<&Event>, granted: Option<Timestamp>) {
        let now = event.timestamp;
        let sequence_id = event.ownership.map_or(0, |h| h.sequence_id);
        let mut health = lock(&self.health);
        if event.event_type == Type::DrainSnapshot {
            health.forget_items();
            return;
        }
        let Some(peer) = event.peer_id.as_deref() else {
            return;
        };
        match event.event_type {
            Type::LeaseGranted => health.assigned(peer, sequence_id, now),
            Type::Completed => {
                health.released(
                    peer,
                    sequence_id,
                    granted.unwrap_or(now),
                    Release::Completed,
                    now,
                );
            }
            // Without ownership, a redrive: no lease of the peer ended.
            Type::Requeued if event.ownership.is_some() => {
                health.released(peer, sequence_id, now, Release::Requeued, now);
            }
            Type::DeadLettered => {
                let disconnected = previous.is_some_and(|p| {
                    p.event_type == Type::Failed && p.metadata.get(keys::REQUEUED) == Some("False")
                });
                let outcome = if disconnected {
                    Release::Disconnected
                } else {
                    Release::DeadLettered
                };
                health.released(peer, sequence_id, now, outcome, now);
            }
            _ => {}
        }
    }

    /// Re-evaluates backpressure at `pending` items; wakes waiters on a
    /// transition.
    fn evaluate_backpressure(&self, pending: usize) {
        let changed =
            lock(&self.backpressure).evaluate(pending, std::time::Instant::now(), Timestamp::now());
        if changed {
            self.room.notify_waiters();
        }
    }

    /// Whether backpressure holds enqueuers now.
    pub fn backpressure_active(&self) -> bool {
        lock(&self.backpressure).is_active()
    }

    /// The latest backpressure transition (`None` before the first).
    pub fn backpressure_signals(&self) -> tokio::sync::watch::Receiver<Option<BackpressureSignal>> {
        lock(&self.backpressure).signals()
    }

    /// Every peer's lease health now.
    pub fn lease_health(&self) -> Vec<PeerHealth> {
        lock(&self.health).snapshot(Timestamp::now())
    }

    /// Waits until `committed` is durable.
    async fn durable(&self, committed: Committed) -> Result<(), DispatchError> {
        let Committed::Replicated(pending) = committed else {
            return Ok(());
        };
        pending
            .durable()
            .await
            .map(|_| ())
            .map_err(|error| self.fail_for_good(format!("the replication log stopped: {error}")))
    }

    /// Enqueues `payload` on behalf of `peer`; waits while the queue is
    /// full or backpressure holds enqueuers back. Returns the counts after
    /// it.
    ///
    /// # Errors
    ///
    /// An invalid payload, a drained queue, replication unavailable, or
    /// [`DispatchError::Stopping`] instead of waiting for room.
    pub async fn enqueue(
        &self,
        payload: Payload,
        peer: Option<&str>,
    ) -> Result<QueueStats, DispatchError> {
        let enqueued = self.enqueue_until(payload, peer, None).await?;
        enqueued.ok_or_else(|| DispatchError::Unavailable("no room came".to_owned()))
    }

    /// Enqueues `payload` on behalf of `peer`, waiting up to `within` for
    /// room (a full queue, or backpressure holding enqueuers back); `None`
    /// when none came, and then nothing was enqueued. As with
    /// [`Dispatcher::lease_within`], the bound is on the wait only: an item
    /// enqueued in time is answered once its event is durable.
    ///
    /// # Errors
    ///
    /// As [`Dispatcher::enqueue`].
    pub async fn enqueue_within(
        &self,
        payload: Payload,
        peer: Option<&str>,
        within: Duration,
    ) -> Result<Option<QueueStats>, DispatchError> {
        let deadline = tokio::time::Instant::now() + within.min(Duration::from_secs(24 * 3600));
        self.enqueue_until(payload, peer, Some(deadline)).await
    }

    async fn enqueue_until(
        &self,
        payload: Payload,
        peer: Option<&str>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<QueueStats>, DispatchError> {
        loop {
            self.check()?;
            let notified = self.room.notified();
            if !self.backpressure_active() {
                let mut state = self.state.lock().await;
                match state.decide_enqueue(payload.clone(), peer, &self.options.queue) {
                    Ok(events) => {
                        let committed = self.commit(&mut state, events).await?;
                        let stats = stats_of(&state);
                        drop(state);
                        self.durable(committed).await?;
                        // The reference samples these on enqueue responses only.
                        metrics::histogram!(telemetry::PENDING_ITEMS).record(stats.pending as f64);
                        metrics::histogram!(telemetry::ACTIVE_LEASES).record(stats.active as f64);
                        return Ok(Some(stats));
                    }
                    Err(error) if error.status == ErrorStatus::ResourceExhausted => {}
                    Err(error) => return Err(error.into()),
                }
            }
            // Backpressure, or a full queue: wait for a change.
            self.may_wait()?;
            match deadline {
                None => notified.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Leases the next available item to `owner`, waiting for one (a long
    /// poll: drop the future to give up; see [`Dispatcher::lease_within`]
    /// for a bounded wait).
    ///
    /// # Errors
    ///
    /// A drained queue, replication unavailable, or
    /// [`DispatchError::Stopping`] instead of waiting for an item.
    pub async fn lease(&self, owner: Option<&str>) -> Result<Lease, DispatchError> {
        loop {
            if let Some(lease) = self.lease_until(owner, None).await? {
                return Ok(lease);
            }
        }
    }

    /// Leases the next available item to `owner`, waiting up to `within`
    /// for one; `None` when none came. The bound is on the wait only: an
    /// item granted in time is returned once its event is durable, however
    /// long that takes. (Dropping a [`Dispatcher::lease`] future at a
    /// deadline could drop it after the grant: the item would stay leased
    /// to nobody until the lease expired.)
    ///
    /// # Errors
    ///
    /// A drained queue, replication unavailable, or
    /// [`DispatchError::Stopping`] instead of waiting for an item.
    pub async fn lease_within(
        &self,
        owner: Option<&str>,
        within: Duration,
    ) -> Result<Option<Lease>, DispatchError> {
        let deadline = tokio::time::Instant::now() + within.min(Duration::from_secs(24 * 3600));
        self.lease_until(owner, Some(deadline)).await
    }

    /// Leases the next available item to `owner`, waiting for one until
    /// `deadline` (`None`: none, and it never answers `None`).
    async fn lease_until(
        &self,
        owner: Option<&str>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<Lease>, DispatchError> {
        let mut woken = PassOn(None);
        loop {
            let attempt = self.try_lease(owner).await;
            // It looked.
            woken.0 = None;
            let (changed, wake) = match attempt? {
                Attempt::Granted(lease) => return Ok(Some(*lease)),
                Attempt::Wait { changed, wake } => (changed, wake),
            };
            self.may_wait()?;
            let wait = match deadline {
                None => wake,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    Some(wake.map_or(left, |wake| wake.min(left)))
                }
            };
            let notified = match wait {
                Some(wait) => tokio::time::timeout(wait, changed).await.is_ok(),
                None => {
                    changed.await;
                    true
                }
            };
            if notified {
                woken.0 = Some(&self.leasable);
            }
        }
    }

    /// Grants `owner` the next available item if there is one, and waits
    /// until the grant is durable (not to be cancelled once it granted);
    /// otherwise says what to wait for.
    async fn try_lease(&self, owner: Option<&str>) -> Result<Attempt<'_>, DispatchError> {
        self.check()?;
        // Registered before the look: an item that comes after it wakes
        // this lease or another waiting one.
        let mut changed = Box::pin(self.leasable.notified());
        changed.as_mut().enable();
        let mut state = self.state.lock().await;
        let now = Timestamp::now();
        if let Some(events) = state.decide_lease(owner, now)? {
            let committed = self.commit(&mut state, events).await?;
            let granted = committed
                .events()
                .first()
                .and_then(|e| e.ownership)
                .and_then(|handle| state.lease(&handle).cloned());
            drop(state);
            self.durable(committed).await?;
            let lease = granted.ok_or_else(|| {
                DispatchError::Unavailable("the granted lease vanished".to_owned())
            })?;
            return Ok(Attempt::Granted(Box::new(Lease {
                handle: lease.handle,
                item: Item::clone(&lease.item),
                owner: lease.owner,
            })));
        }
        // Nothing now: wait for a change, or for a requeued item's delay
        // to pass.
        let wake = state
            .next_available(now)
            .map(|at| at.saturating_duration_since(now));
        Ok(Attempt::Wait { changed, wake })
    }

    /// Completes the lease `handle`: `Completed`, then `Heartbeat`.
    ///
    /// # Errors
    ///
    /// A token that is not the item's current lease; replication
    /// unavailable.
    pub async fn complete(&self, handle: &Handle) -> Result<(), DispatchError> {
        self.check()?;
        let mut state = self.state.lock().await;
        let events = state.decide_complete(handle)?;
        let committed = self.commit(&mut state, events).await?;
        drop(state);
        self.durable(committed).await
    }

    /// A heartbeat on the lease `handle` (no event; see
    /// [`QueueState::heartbeat`]). Returns whether it extended the lease.
    ///
    /// # Errors
    ///
    /// A token that is not the item's current lease.
    pub async fn heartbeat(&self, handle: &Handle) -> Result<bool, DispatchError> {
        self.check()?;
        let mut state = self.state.lock().await;
        let now = Timestamp::now();
        let extended = state.heartbeat(handle, now, &self.options.queue)?;
        if let Some(owner) = state.lease(handle).and_then(|l| l.owner.as_deref()) {
            lock(&self.health).heartbeat(owner, now);
        }
        Ok(extended)
    }

    /// Fails the lease `handle`: `Failed`, then `Requeued` (attempts left
    /// and `requeue`) or `DeadLettered`.
    ///
    /// # Errors
    ///
    /// A token that is not the item's current lease; replication
    /// unavailable.
    pub async fn fail(
        &self,
        handle: &Handle,
        reason: Option<&str>,
        code: Option<&str>,
        requeue: bool,
    ) -> Result<(), DispatchError> {
        self.check()?;
        let mut state = self.state.lock().await;
        let events = state.decide_fail(handle, reason, code, requeue, &self.options.queue)?;
        let committed = self.commit(&mut state, events).await?;
        drop(state);
        self.durable(committed).await
    }

    /// Drains the pending items: they are returned (and in the
    /// `DrainSnapshot` event), and the queue takes no new work until a
    /// restore.
    ///
    /// # Errors
    ///
    /// A queue already drained; replication unavailable.
    pub async fn drain(&self) -> Result<Vec<Item>, DispatchError> {
        self.check()?;
        let mut state = self.state.lock().await;
        let events = state.decide_drain()?;
        let committed = self.commit(&mut state, events).await?;
        drop(state);
        let items = committed
            .events()
            .iter()
            .flat_map(|e| e.items.iter().cloned())
            .collect();
        self.durable(committed).await?;
        Ok(items)
    }

    /// Restores `items` (from another node's drain); returns how many.
    ///
    /// # Errors
    ///
    /// An invalid item or a sequence id already here; replication
    /// unavailable.
    pub async fn restore(
        &self,
        items: Vec<Item>,
        peer: Option<&str>,
    ) -> Result<usize, DispatchError> {
        self.check()?;
        let count = items.len();
        let mut state = self.state.lock().await;
        let events = state.decide_restore(items, peer)?;
        let committed = self.commit(&mut state, events).await?;
        drop(state);
        self.durable(committed).await?;
        Ok(count)
    }

    /// Puts dead-lettered items back in the queue (see
    /// [`QueueState::decide_redrive`]); returns them as they now stand,
    /// once their `Requeued` events are durable. `peer` is who asked.
    ///
    /// # Errors
    ///
    /// A drained queue, an item that is not dead-lettered, too little room
    /// (nothing is redriven then); replication unavailable.
    pub async fn redrive(
        &self,
        which: &crate::queue::Selection,
        peer: Option<&str>,
    ) -> Result<Vec<Item>, DispatchError> {
        self.change_dead_letters("redriven", peer, |state| {
            state.decide_redrive(which, peer, &self.options.queue)
        })
        .await
    }

    /// Discards dead-lettered items for good (see
    /// [`QueueState::decide_purge`]); returns them, once their
    /// `DeadLetterPurged` events are durable. `peer` is who asked.
    ///
    /// # Errors
    ///
    /// An item that is not dead-lettered (nothing is purged then);
    /// replication unavailable.
    pub async fn purge(
        &self,
        which: &crate::queue::Selection,
        peer: Option<&str>,
    ) -> Result<Vec<Item>, DispatchError> {
        self.change_dead_letters("purged", peer, |state| state.decide_purge(which, peer))
            .await
    }

    /// Commits what `decide` makes of the dead letters; returns the items
    /// its events carry, once durable, and logs them as `done`.
    async fn change_dead_letters(
        &self,
        done: &str,
        peer: Option<&str>,
        decide: impl FnOnce(&QueueState) -> Result<crate::Decision, QueueError>,
    ) -> Result<Vec<Item>, DispatchError> {
        self.check()?;
        let mut state = self.state.lock().await;
        let events = decide(&state)?;
        let committed = self.commit(&mut state, events).await?;
        drop(state);
        let items: Vec<Item> = committed
            .events()
            .iter()
            .flat_map(|e| e.items.iter().cloned())
            .collect();
        self.durable(committed).await?;
        if !items.is_empty() {
            let ids: Vec<i64> = items.iter().map(|i| i.sequence_id).collect();
            tracing::info!(peer = peer.unwrap_or_default(), items = ?ids, "dead-lettered items {done}");
        }
        Ok(items)
    }

    /// The dead-lettered items.
    pub async fn dead_letters(&self) -> Vec<crate::queue::DeadLetter> {
        self.state.lock().await.dead_letters().to_vec()
    }

    /// At most `limit` dead-lettered items after the first `offset`
    /// ([`QueueState::dead_letters_page`]), and how many there are.
    pub async fn dead_letters_page(
        &self,
        offset: usize,
        limit: Option<usize>,
    ) -> (Vec<crate::queue::DeadLetter>, usize) {
        let state = self.state.lock().await;
        let page = state.dead_letters_page(offset, limit).to_vec();
        (page, state.dead_letters().len())
    }

    /// Expires overdue leases every `sweep_interval` until the dispatcher
    /// is dropped.
    async fn sweep_loop(dispatcher: std::sync::Weak<Self>) {
        let interval = match dispatcher.upgrade() {
            Some(d) => d
                .options
                .queue
                .sweep_interval
                .max(Duration::from_millis(10)),
            None => return,
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(dispatcher) = dispatcher.upgrade() else {
                return;
            };
            if dispatcher.check().is_err() {
                return;
            }
            if let Err(error) = dispatcher.sweep().await {
                tracing::warn!(%error, "lease expiry sweep failed; retrying next tick");
            }
            // A transition the cooldown deferred happens here at the latest.
            let pending = dispatcher.state.lock().await.pending_count();
            dispatcher.evaluate_backpressure(pending);
            let _ = dispatcher.lease_health();
        }
    }

    /// Expires every lease overdue now.
    ///
    /// # Errors
    ///
    /// Replication unavailable.
    pub async fn sweep(&self) -> Result<usize, DispatchError> {
        self.check()?;
        let mut state = self.state.lock().await;
        let events = state.decide_sweep(Timestamp::now(), &self.options.queue);
        let expired = events.len() / 2;
        let committed = self.commit(&mut state, events).await?;
        drop(state);
        self.durable(committed).await?;
        Ok(expired)
    }
}

/// Events numbered and applied; replicated ones on their way to
/// durability.
enum Committed {
    Replicated(PendingPublish<Event>),
    /// Replication off: numbered here, kept nowhere.
    Local(Vec<Event>),
}

impl Committed {
    fn events(&self) -> &[Event] {
        match self {
            Self::Replicated(pending) => pending.events(),
            Self::Local(events) => events,
        }
    }
}

/// What keeps a queue checkpoint: a dispatcher, or a standby until it is
/// promoted.
pub(crate) trait Checkpointed: Send + Sync + 'static {
    /// Its settings (the stream, the interval).
    fn settings(&self) -> &DispatcherOptions;

    /// The queue and the last event folded into it, taken under the
    /// queue's lock (where it is exactly the fold of the stream through
    /// that event), if [`worth_saving`] after the checkpoint through
    /// `saved`; [`Taken::Stop`] once nothing it holds is worth saving
    /// (out of step with its log, promoted).
    fn take(&self, saved: u64) -> impl std::future::Future<Output = Taken> + Send;

    /// Held while a checkpoint is taken and saved, by whoever must not
    /// race a save (a promotion).
    fn saving(&self) -> Option<Arc<Mutex<()>>>;

    /// The checkpoint through `through` is saved: retention may delete
    /// what it covers.
    fn saved(&self, through: u64);
}

impl Checkpointed for Dispatcher {
    fn settings(&self) -> &DispatcherOptions {
        &self.options
    }

    async fn take(&self, saved: u64) -> Taken {
        let state = self.state.lock().await;
        // Out of step with its log: nothing it holds is worth saving.
        if self.failed.get().is_some() {
            return Taken::Stop;
        }
        let through = self
            .folded_through
            .load(std::sync::atomic::Ordering::Acquire);
        Taken::take(&state, through, saved)
    }

    fn saving(&self) -> Option<Arc<Mutex<()>>> {
        None
    }

    fn saved(&self, through: u64) {
        if let Some(hold) = &self.retention {
            hold.advance(through);
        }
    }
}

/// What [`Checkpointed::take`] took.
pub(crate) enum Taken {
    /// Nothing more to save, ever.
    Stop,
    /// Not worth saving yet.
    Skip,
    /// This.
    Checkpoint(Checkpoint),
}

impl Taken {
    /// `state`, folded through `through`, if [`worth_saving`] after the
    /// checkpoint through `saved`.
    pub(crate) fn take(state: &QueueState, through: u64, saved: u64) -> Self {
        if !worth_saving(state, through, saved) {
            return Self::Skip;
        }
        Self::Checkpoint(Checkpoint {
            through,
            state: state.clone(),
        })
    }
}

/// Whether a checkpoint of `state` through `through` is worth its cost
/// after the one through `saved`: it moved, by at least one event per 16
/// items the queue holds. Copying the queue holds its lock (its items
/// are shared, so a million take about 60 ms here) and writing it takes
/// a while: a large queue with little traffic is saved less often, and a
/// restart folds the few events after it.
fn worth_saving(state: &QueueState, through: u64, saved: u64) -> bool {
    let items = state.pending_count() + state.active_count() + state.dead_letters().len();
    through > saved && (through - saved).saturating_mul(16) >= items as u64
}

/// Saves the queue checkpoint of `owner` every `checkpoint_interval`
/// while the log moves, and lets retention delete what it covers; ends
/// with its owner or the log. A checkpoint is saved once the log is
/// durable through its event (under `interval`, synced: a checkpoint
/// never claims what a machine crash could take from the log).
pub(crate) async fn keep_checkpoint<T: Checkpointed>(
    owner: std::sync::Weak<T>,
    replicator: Arc<DurableReplicator<Event>>,
    mut saved: u64,
) {
    let Some((stream, every)) = owner.upgrade().map(|o| {
        let settings = o.settings();
        (settings.stream.clone(), settings.checkpoint_interval)
    }) else {
        return;
    };
    let path = checkpoint::path(replicator.data_dir(), &stream);
    let mut failing = false;
    loop {
        if replicator
            .wait_visible_beyond(&stream, saved)
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(every).await;
        let Some(taken) = owner.upgrade() else {
            return;
        };
        let _saving = match taken.saving() {
            Some(saving) => Some(saving.lock_owned().await),
            None => None,
        };
        let checkpoint = match taken.take(saved).await {
            Taken::Stop => return,
            Taken::Skip => continue,
            Taken::Checkpoint(checkpoint) => checkpoint,
        };
        drop(taken);
        if replicator
            .wait_visible_beyond(&stream, checkpoint.through - 1)
            .await
            .is_err()
        {
            return;
        }
        let through = checkpoint.through;
        let written = {
            let (path, stream) = (path.clone(), stream.clone());
            tokio::task::spawn_blocking(move || checkpoint.save(&path, &stream))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        match written {
            Ok(()) => {
                saved = through;
                metrics::gauge!(CHECKPOINT_SEQUENCE, "stream" => stream.as_str().to_owned())
                    .set(through as f64);
                let Some(owner) = owner.upgrade() else {
                    return;
                };
                owner.saved(through);
                if std::mem::take(&mut failing) {
                    tracing::info!(%stream, "the queue checkpoint is saved again");
                }
            }
            Err(error) => {
                metrics::counter!(CHECKPOINT_FAILURES, "stream" => stream.as_str().to_owned())
                    .increment(1);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(
                        path = %path.display(), %error,
                        "the queue checkpoint cannot be saved; retention keeps the log after the last one"
                    );
                }
            }
        }
    }
}

/// How often a rebuild says how far it got.
const REBUILD_PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A queue rebuilt from its stream.
pub(crate) struct Rebuilt {
    pub(crate) state: QueueState,
    /// The last event folded into it (0 for none).
    pub(crate) through: u64,
    /// Keeps retention from deleting what a restart needs: the stream
    /// after the checkpoint it was rebuilt from, or all of it. `None` for
    /// a `memory` log (no files).
    pub(crate) hold: Option<RetentionHold>,
}

/// The queue folded from the stream's log: from its checkpoint on when
/// there is a usable one, from the queue's first event otherwise (the
/// stream's first record, or the first after the records its sinks held
/// when its log started empty).
///
/// # Errors
///
/// [`ErrorKind::Corrupt`] for a log that no longer holds the events the
/// queue needs from there on, or has a hole: the queue it would give is
/// not the one served.
pub(crate) async fn rebuild(
    replicator: &DurableReplicator<Event>,
    options: &DispatcherOptions,
) -> Result<Rebuilt, Error> {
    let stream = &options.stream;
    replicator.open_stream(stream).await?;
    // Only files are deleted (a `memory` ring must stay free to evict),
    // and only files keep a checkpoint company.
    let persistent = replicator.log_reader(stream).is_some();
    let hold = match persistent {
        true => Some(replicator.hold_retention(stream, 0).await?),
        false => None,
    };
    let started = replicator.started_after(stream);
    let last = replicator.last_sequence(stream);
    let checkpoint = match persistent {
        true => usable_checkpoint(replicator.data_dir(), stream, started, last),
        false => None,
    };
    if checkpoint.is_none()
        && persistent
        && checkpoint::begun_from_checkpoint(replicator.data_dir(), stream, started)
    {
        // A standby begun from its primary's queue checkpoint: the events
        // before its log's first are in that checkpoint only.
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "the log of stream {stream} began after event {started}, from its primary's \
                 queue checkpoint through it (it was begun as a standby), and no usable queue \
                 checkpoint is left: the queue cannot be rebuilt without the events before {}. \
                 Put the checkpoint back from a copy, or begin a standby anew on an empty data \
                 directory",
                started + 1
            ),
        ));
    }
    metrics::gauge!(CHECKPOINT_SEQUENCE, "stream" => stream.as_str().to_owned())
        .set(checkpoint.as_ref().map_or(0.0, |c| c.through as f64));
    let (state, from) = match checkpoint {
        Some(checkpoint) => (checkpoint.state, checkpoint.through),
        None => (QueueState::new(), started),
    };
    if let Some(hold) = &hold {
        hold.advance(from);
    }
    let replay = replicator
        .replay(
            stream,
            from + 1,
            Encoding::new(Format::Protobuf, WireVersion::V2),
        )
        .await?;
    let queue = options.queue.clone();
    let stream = stream.clone();
    tokio::task::spawn_blocking(move || {
        let mut state = state;
        // A long log takes a while: say how far it got every few seconds.
        let mut said = std::time::Instant::now();
        let mut next = from + 1;
        for item in replay {
            let record = match item? {
                Replayed::Record(record) => record,
                Replayed::Skipped { sequence, .. } => {
                    next = sequence + 1;
                    continue;
                }
            };
            if record.sequence() != next {
                return Err(missing(&stream, started + 1, next, record.sequence()));
            }
            next += 1;
            // The clock is read once per 4 096 events, not per event.
            if record.sequence() % 4096 == 0 && said.elapsed() >= REBUILD_PROGRESS_EVERY {
                said = std::time::Instant::now();
                tracing::info!(
                    %stream,
                    sequence = record.sequence(),
                    last,
                    "rebuilding the queue from the log"
                );
            }
            let event = proto::decode(record.bytes()).map_err(|e| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "event {} is not a resource-lease event: {e}",
                        record.sequence()
                    ),
                )
            })?;
            state.apply(&event, &queue).map_err(|e| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("the log does not fold into a queue: {e}"),
                )
            })?;
        }
        Ok(Rebuilt {
            state,
            through: next - 1,
            hold,
        })
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, format!("rebuilding the queue: {e}")))?
}

/// The queue checkpoint of `stream` if the log it was saved beside is
/// this one (the log, which began after `started`, holds through `last`).
/// One that cannot be used is reported and removed, so that a log that
/// grows past it later is not taken for the one it came from.
fn usable_checkpoint(
    data_dir: &std::path::Path,
    stream: &StreamId,
    started: u64,
    last: u64,
) -> Option<Checkpoint> {
    let path = checkpoint::path(data_dir, stream);
    let why = match Checkpoint::load(&path, stream) {
        Ok(None) => return None,
        Ok(Some(checkpoint)) => {
            match checkpoint::unusable_beside(checkpoint.through, started, last) {
                None => return Some(checkpoint),
                Some(why) => why,
            }
        }
        Err(why) => why,
    };
    tracing::warn!(
        path = %path.display(), why,
        "the queue checkpoint cannot be used; folding the stream from its first event"
    );
    if let Err(error) = std::fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), %error, "cannot remove the queue checkpoint");
    }
    None
}

/// The refusal of a log whose queue begins at `first` and whose next
/// record is `found` where `expected` should be.
fn missing(stream: &StreamId, first: u64, expected: u64, found: u64) -> Error {
    let gone = if found == expected + 1 {
        format!("event {expected} is")
    } else {
        format!("events {expected} to {} are", found - 1)
    };
    let jump = if expected == first {
        format!("begins at event {found}, not {first}")
    } else {
        format!("goes from event {} to {found}", expected - 1)
    };
    Error::new(
        ErrorKind::Corrupt,
        format!(
            "the log of stream {stream} {jump}: {gone} gone (deleted from the \
             log's directory; by retention, before this version held a \
             dispatcher's stream; or by retention up to a queue checkpoint \
             that is gone or unusable now), and the queue cannot be rebuilt \
             without them"
        ),
    )
}
