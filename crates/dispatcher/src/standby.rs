//! A standby: follows a primary dispatcher's stream over gRPC `Subscribe`,
//! or takes it from a feed (the NATS source, through [`Standby::feed`]),
//! into its own log (same sequences, same timestamps) and keeps the queue's
//! projection current; promoted, it becomes a dispatcher with that state.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use omnirelay_replication::{
    DurableReplicator, Encoding, Error, ErrorKind, Format, Record, Replayed, Sink, SinkError,
    StreamId, Timestamp, WireVersion,
};
use omnirelay_replication_grpc::{Connection, Subscription};
use omnirelay_resourcelease::{ResourceLeaseReplicationEvent as Event, proto};
use tokio::sync::{Mutex, watch};

use crate::checkpoint::{self, Checkpoint};
use crate::queue::QueueState;
use crate::service::{Dispatcher, DispatcherOptions, lock};

/// The gauge of a standby's lag behind its primary, in events.
pub const LAG_EVENTS: &str = "omnirelay_dispatcher_standby_lag_events";

/// The gauge of whether a standby's subscription to its primary (or its
/// source) is open: 1 or 0.
pub const CONNECTED: &str = "omnirelay_dispatcher_standby_connected";

/// The gauge of whether a standby was promoted: 0 while it follows, 1
/// once it serves as the dispatcher.
pub const PROMOTED: &str = "omnirelay_dispatcher_standby_promoted";

/// How long after its primary's newest event a standby fed from the bus
/// (which cannot see whether the primary serves) takes the primary for
/// stopped by default: before, a promotion is refused unless forced. The
/// same 10 s in which a standby following its primary itself notices a
/// primary whose host went away.
pub const PRIMARY_QUIET: Duration = Duration::from_secs(10);

/// Where a standby stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StandbyStatus {
    /// The primary it follows.
    pub following: String,
    /// Whether its subscription is open.
    pub connected: bool,
    /// The last sequence of the primary's stream in its own log.
    pub applied: u64,
    /// The primary's newest sequence, as last reported; `None` until the
    /// primary (or the source feeding the standby) has said where its
    /// stream stands since the standby started.
    pub primary_head: Option<u64>,
    /// The last failure to follow, if the subscription is down.
    pub last_error: Option<String>,
    /// Whether it was promoted (and follows no more).
    pub promoted: bool,
    /// When the primary's log stamped the newest event applied (the last
    /// in the standby's log): a standby fed from the bus takes its primary
    /// for stopped only a while ([`PRIMARY_QUIET`] by default) after it.
    pub last_written: Option<Timestamp>,
}

impl StandbyStatus {
    /// Events the standby is behind the primary (as last reported);
    /// `None` while the primary's newest sequence is unknown: a standby
    /// that has not heard from its primary cannot tell how far behind it
    /// is. 0 once promoted.
    pub fn lag_events(&self) -> Option<u64> {
        if self.promoted {
            // It serves the stream now: nothing to be behind.
            return Some(0);
        }
        self.primary_head
            .map(|head| head.saturating_sub(self.applied))
    }
}

/// What a fed standby's source holds at the standby's last sequence: see
/// [`Standby::check_feed`].
#[derive(Clone, Debug, PartialEq)]
pub enum FeedHolds {
    /// The event there.
    Event(Box<Event>),
    /// Nothing that far: the source's stream ends at this sequence.
    EndsAt(u64),
    /// Not known, and why (the source no longer holds it): nothing to
    /// compare with.
    Unknown(String),
}

/// Where a standby is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Following,
    /// [`Standby::stop_following`].
    Stopped,
    Promoted,
}

/// A standby dispatcher. See the module documentation.
pub struct Standby {
    replicator: Arc<DurableReplicator<Event>>,
    /// Keeps retention from deleting what a restart folds: its stream
    /// after its last queue checkpoint (see [`Dispatcher::open`]), until it
    /// is promoted and the dispatcher it becomes holds it.
    retention: StdMutex<Option<omnirelay_replication::RetentionHold>>,
    /// Held while a queue checkpoint is taken and saved; a promotion
    /// takes it, so that no checkpoint of the standby lands after the
    /// promoted dispatcher's.
    saving: Arc<Mutex<()>>,
    /// A followed event did not fold (the queue is part-applied): nothing
    /// it holds is worth a checkpoint.
    unsound: std::sync::atomic::AtomicBool,
    options: DispatcherOptions,
    state: Mutex<QueueState>,
    status: StdMutex<StandbyStatus>,
    phase: watch::Sender<Phase>,
    /// Its log is known to be a copy of its source's stream (empty, or
    /// checked).
    checked: watch::Sender<bool>,
    /// Its log was found not to be a copy of its source's stream.
    diverged: std::sync::atomic::AtomicBool,
    follower: StdMutex<Option<tokio::task::JoinHandle<()>>>,
    /// It follows the primary itself ([`Standby::open`]), not a feed.
    direct: bool,
    /// Fed: how long after the primary's newest event the primary is taken
    /// for stopped.
    quiet: Duration,
    /// Fed: the primary's stream as the source reported it.
    head: StdMutex<HeadWatch>,
    promoted: tokio::sync::OnceCell<Arc<Dispatcher>>,
    /// Set by [`Standby::stop_waits`]: the dispatcher it becomes stops its
    /// waits too (a lock, so that a promotion racing it is not missed).
    stopping_waits: StdMutex<bool>,
}

impl std::fmt::Debug for Standby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standby")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Standby {
    /// Opens the standby on its own `replicator` (its queue rebuilt from
    /// its log) and starts following `primary` from the sequence after its
    /// log's last.
    ///
    /// # Errors
    ///
    /// As [`Dispatcher::open`].
    pub async fn open(
        replicator: Arc<DurableReplicator<Event>>,
        options: DispatcherOptions,
        primary: Connection,
    ) -> Result<Arc<Self>, Error> {
        let standby = Self::build(replicator, options, &primary.url, None).await?;
        let follower = tokio::spawn(Self::follow(Arc::downgrade(&standby), primary));
        *lock(&standby.follower) = Some(follower);
        Ok(standby)
    }

    /// Opens the standby on its own `replicator` (its queue rebuilt from
    /// its log) without following anything itself: the primary's stream
    /// comes in through [`Standby::feed`], and whoever feeds it reports how
    /// the primary stands with [`Standby::report_upstream`]. `following`
    /// names the source in its status. Since a feed cannot show whether
    /// the primary still serves, a promotion within `quiet` of the
    /// primary's newest event is unsafe ([`Standby::promotion_hazard`];
    /// [`PRIMARY_QUIET`] by default).
    ///
    /// # Errors
    ///
    /// As [`Dispatcher::open`].
    pub async fn open_fed(
        replicator: Arc<DurableReplicator<Event>>,
        options: DispatcherOptions,
        following: &str,
        quiet: Duration,
    ) -> Result<Arc<Self>, Error> {
        Self::build(replicator, options, following, Some(quiet)).await
    }

    /// A standby on `replicator` (its queue rebuilt from its log) that
    /// follows nothing yet: fed, with its `quiet` period, or (`None`)
    /// following the primary itself.
    async fn build(
        replicator: Arc<DurableReplicator<Event>>,
        options: DispatcherOptions,
        following: &str,
        fed: Option<Duration>,
    ) -> Result<Arc<Self>, Error> {
        let crate::service::Rebuilt {
            state,
            hold,
            through,
        } = crate::service::rebuild(&replicator, &options).await?;
        let applied = replicator.last_sequence(&options.stream);
        // The checkpoint is kept beside the log's files.
        let keeper =
            (hold.is_some() && !options.checkpoint_interval.is_zero()).then(|| replicator.clone());
        let last_written = last_written(&replicator, &options.stream, applied).await?;
        let stream = options.stream.as_str().to_owned();
        metrics::gauge!(CONNECTED, "stream" => stream.clone()).set(0.0);
        metrics::gauge!(PROMOTED, "stream" => stream).set(0.0);
        let standby = Arc::new(Self {
            status: StdMutex::new(StandbyStatus {
                following: following.to_owned(),
                applied,
                last_written,
                ..StandbyStatus::default()
            }),
            replicator,
            retention: StdMutex::new(hold),
            saving: Arc::new(Mutex::new(())),
            unsound: std::sync::atomic::AtomicBool::new(false),
            options,
            state: Mutex::new(state),
            phase: watch::Sender::new(Phase::Following),
            checked: watch::Sender::new(applied == 0),
            diverged: std::sync::atomic::AtomicBool::new(false),
            follower: StdMutex::new(None),
            direct: fed.is_none(),
            quiet: fed.unwrap_or_default(),
            head: StdMutex::new(HeadWatch::default()),
            promoted: tokio::sync::OnceCell::new(),
            stopping_waits: StdMutex::new(false),
        });
        if let Some(replicator) = keeper {
            tokio::spawn(crate::service::keep_checkpoint(
                Arc::downgrade(&standby),
                replicator,
                through,
            ));
        }
        Ok(standby)
    }

    /// A sink that appends the primary's stream to this standby: give it
    /// the records of its stream in protobuf at schema version 2 (full
    /// fidelity) with the primary's sequences, e.g. as a sink of the NATS
    /// source. Its checkpoint is the standby's last sequence (of any other
    /// stream: everything, so that it is never sent one); records at or
    /// below it are ignored. A record past the next sequence is refused
    /// with a retryable error and the gap in the status: a standby never
    /// skips part of the stream. After promotion it refuses everything.
    pub fn feed(self: &Arc<Self>) -> StandbyFeed {
        StandbyFeed(Arc::downgrade(self))
    }

    /// Reports, for a standby fed from elsewhere, whether its source is
    /// reachable, the primary's newest sequence if known, and the last
    /// failure to read it. A newest sequence higher than every one
    /// reported before (the first report sets where the stream stands)
    /// shows the primary still writing: it starts the quiet period again
    /// ([`Standby::promotion_hazard`]).
    pub fn report_upstream(&self, connected: bool, head: Option<u64>, error: Option<String>) {
        if let Some(head) = head {
            lock(&self.head).report(head);
        }
        self.set_status(|s| {
            s.connected = connected;
            if head.is_some() {
                s.primary_head = head;
            }
            if error.is_some() || connected {
                s.last_error = error;
            }
        });
    }

    /// The stream it follows.
    pub fn stream(&self) -> &StreamId {
        &self.options.stream
    }

    /// Whether it was promoted.
    pub fn is_promoted(&self) -> bool {
        *self.phase.borrow() == Phase::Promoted
    }

    /// Returns once it is promoted (at once if it was): it follows no more
    /// from then on.
    pub async fn wait_promoted(&self) {
        let mut phase = self.phase.subscribe();
        // The sender lives as long as `self`: it cannot be dropped here.
        let _ = phase.wait_for(|phase| *phase == Phase::Promoted).await;
    }

    /// Whether its log is known to be a copy of its source's stream: see
    /// [`Standby::wait_log_checked`].
    pub fn is_log_checked(&self) -> bool {
        *self.checked.borrow()
    }

    /// Returns once its log is known to be a copy of its source's stream
    /// (at once for an empty log; else once the primary, or the source
    /// through [`Standby::check_feed`], holds the log's last event, or
    /// cannot show it: retention), or once it is promoted. Until then its
    /// log may hold events its primary never had (a former primary's):
    /// sinks it shares with its primary, a bus subject say, must not get
    /// them, so its node starts its sinks only then.
    pub async fn wait_log_checked(&self) {
        let mut checked = self.checked.subscribe();
        tokio::select! {
            // The sender lives as long as `self`.
            _ = checked.wait_for(|checked| *checked) => {}
            () = self.wait_promoted() => {}
        }
    }

    /// Moves a standby that follows to [`Phase::Stopped`].
    fn stop(&self) {
        self.phase.send_if_modified(|phase| {
            let following = *phase == Phase::Following;
            if following {
                *phase = Phase::Stopped;
            }
            following
        });
    }

    /// Stops following its primary, without promoting it, and returns once
    /// its follower has ended (an append in progress finishes first): what
    /// to do before closing its log when shutting a standby down, since
    /// the follower keeps it alive until then. It keeps its log and queue
    /// and can still be promoted; it does not follow again. A fed standby
    /// has no follower of its own: its feed refuses everything from then
    /// on (stop whatever feeds it).
    pub async fn stop_following(&self) {
        self.stop();
        let follower = lock(&self.follower).take();
        if let Some(follower) = follower {
            let _ = follower.await;
        }
        self.set_status(|s| s.connected = false);
    }

    /// Where it stands.
    pub fn status(&self) -> StandbyStatus {
        lock(&self.status).clone()
    }

    /// A copy of the queue as the stream so far determines it.
    pub async fn snapshot(&self) -> QueueState {
        self.state.lock().await.clone()
    }

    /// The queue's counts and fingerprint, without copying it.
    pub async fn summary(&self) -> crate::QueueSummary {
        self.state.lock().await.summary()
    }

    /// At most `limit` dead-lettered items after the first `offset` of the
    /// queue as the stream so far determines it
    /// ([`QueueState::dead_letters_page`]), and how many there are.
    pub async fn dead_letters_page(
        &self,
        offset: usize,
        limit: Option<usize>,
    ) -> (Vec<crate::DeadLetter>, usize) {
        let state = self.state.lock().await;
        let page = state.dead_letters_page(offset, limit).to_vec();
        (page, state.dead_letters().len())
    }

    /// The dispatcher it became, once promoted.
    pub fn dispatcher(&self) -> Option<Arc<Dispatcher>> {
        self.promoted.get().cloned()
    }

    /// Why promoting it now would be unsafe, if it would: while it still
    /// follows its primary itself, the primary is serving (two
    /// dispatchers serving one queue diverge); while it is behind the
    /// primary's stream (as last reported), or has not learned where that
    /// stream stands since it started (it never reached its primary or its
    /// source), promoting it would lose the events it has not applied;
    /// fed (from the bus), within its quiet period ([`Standby::open_fed`])
    /// of the primary's newest event (as the primary's log stamped it) or
    /// of the last report showing the primary's stream grown (by this
    /// host's clock, which a primary's clock running behind cannot
    /// shorten), the primary may still be serving; its log found not to be
    /// a copy of its primary's stream, it would serve a queue that
    /// diverged from its primary's. `None` once promoted.
    pub fn promotion_hazard(&self) -> Option<String> {
        let status = self.status();
        if status.promoted {
            return None;
        }
        if self.diverged.load(std::sync::atomic::Ordering::Relaxed) {
            return Some(format!(
                "its log is not a copy of its primary's stream, so it does not follow it \
                 ({}): promoted, it would serve a queue that diverged from its primary's (force \
                 the promotion only to serve this log as it is)",
                status.last_error.as_deref().unwrap_or("stopped following")
            ));
        }
        if self.direct && status.connected {
            return Some(format!(
                "it is still connected to its primary {}, which is serving: stop the primary \
                 first (two dispatchers serving one queue diverge; a primary whose host went \
                 away is noticed within 10 s)",
                status.following
            ));
        }
        let Some(lag) = status.lag_events() else {
            let source = if self.direct { "primary" } else { "source" };
            let why = match &status.last_error {
                Some(error) => format!("it cannot reach it: {error}"),
                None => format!("it has not reached its {source} yet"),
            };
            return Some(format!(
                "it has not learned how far its primary's stream goes since it started ({why}): \
                 it has applied it through sequence {}, and promoted now it would lose whatever \
                 the primary wrote after that (bring the {source} back so that it catches up; \
                 force the promotion only if the primary's stream is lost for good)",
                status.applied
            ));
        };
        if lag == 0 && !self.direct {
            let written = status.last_written.map(|written| {
                let since = Timestamp::now().saturating_duration_since(written);
                let what = format!(
                    "its primary wrote sequence {} {:.1} s ago",
                    status.applied,
                    since.as_secs_f64()
                );
                (since, what)
            });
            let grew = lock(&self.head).grew.map(|(head, seen)| {
                let since = seen.elapsed();
                let what = format!(
                    "the primary's stream grew to sequence {head} {:.1} s ago (by this host's clock)",
                    since.as_secs_f64()
                );
                (since, what)
            });
            if let Some((_, what)) = written
                .into_iter()
                .chain(grew)
                .find(|(since, _)| *since < self.quiet)
            {
                return Some(format!(
                    "{what}, so it may still be serving: stop the primary first (two dispatchers \
                     serving one queue diverge; a standby fed from the bus takes its primary for \
                     stopped {:.1} s after its newest event and after its stream last grew: \
                     services.standby.primary_quiet_ms)",
                    self.quiet.as_secs_f64()
                ));
            }
        }
        (lag > 0).then(|| {
            let remedy = match (&status.last_error, status.connected) {
                (Some(error), _) => format!("it cannot follow on: {error}"),
                (None, true) => {
                    "it is catching up: promote it again once its lagEvents is 0".to_owned()
                }
                (None, false) => "bring its source back so that it catches up".to_owned(),
            };
            format!(
                "it has applied the primary's stream through sequence {} of {}: promoted now, \
                 it would lose the {lag} events after it ({remedy})",
                status.applied,
                status.applied + lag
            )
        })
    }

    /// [`Standby::promote`] once it is safe ([`Standby::promotion_hazard`]
    /// is `None`), waiting up to `wait` for that (the subscription to a
    /// primary just stopped takes a moment to end; a standby fed from the
    /// bus catches up).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with the hazard when it is still there
    /// after `wait` (an hour at most), or once [`Standby::stop_waits`]
    /// was called while it waits; as [`Standby::promote`].
    pub async fn promote_when_safe(&self, wait: Duration) -> Result<Arc<Dispatcher>, Error> {
        let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(3600));
        while let Some(hazard) = self.promotion_hazard() {
            if *lock(&self.stopping_waits) {
                return Err(Error::new(
                    ErrorKind::Rejected,
                    format!("not promoted: the standby is shutting down ({hazard})"),
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "not promoted: {hazard}; or force the promotion (omnirelay promote --force)"
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.promote().await
    }

    /// Stops following and starts serving as a dispatcher with the queue
    /// the followed stream determines, whatever
    /// [`Standby::promotion_hazard`] says. Promoting again returns the
    /// same dispatcher.
    ///
    /// # Errors
    ///
    /// The dispatcher cannot open on the standby's log.
    pub async fn promote(&self) -> Result<Arc<Dispatcher>, Error> {
        let dispatcher = self.promote_once().await?;
        if *lock(&self.stopping_waits) {
            dispatcher.stop_waits();
        }
        Ok(dispatcher)
    }

    /// [`Dispatcher::stop_waits`] of the dispatcher it became, or will
    /// become if promoted from now on, and a promotion waiting until it is
    /// safe ([`Standby::promote_when_safe`]) is refused: a node shutting
    /// down calls it.
    pub fn stop_waits(&self) {
        let mut stopping = lock(&self.stopping_waits);
        *stopping = true;
        if let Some(dispatcher) = self.promoted.get() {
            dispatcher.stop_waits();
        }
    }

    async fn promote_once(&self) -> Result<Arc<Dispatcher>, Error> {
        self.promoted
            .get_or_try_init(|| async {
                self.phase.send_replace(Phase::Promoted);
                let follower = lock(&self.follower).take();
                if let Some(follower) = follower {
                    let _ = follower.await;
                }
                // A checkpoint being saved lands before the dispatcher
                // reads it; none is taken after (the phase says promoted).
                let _saving = self.saving.lock().await;
                // A feed's append in progress finishes first.
                let _fed = self.state.lock().await;
                let dispatcher =
                    Dispatcher::open(self.replicator.clone(), self.options.clone()).await?;
                lock(&self.retention).take();
                // It follows no more (a forced promotion may have left
                // the subscription open until now).
                // Its lag is 0 from now on (the gauge too), and a failure
                // to follow is history.
                self.set_status(|s| {
                    s.promoted = true;
                    s.connected = false;
                    s.last_error = None;
                });
                metrics::gauge!(PROMOTED, "stream" => self.options.stream.as_str().to_owned())
                    .set(1.0);
                tracing::info!("standby promoted: serving as the dispatcher");
                Ok(dispatcher)
            })
            .await
            .cloned()
    }

    /// Changes the status, and its gauges with it (the lag's appears once
    /// the lag is known).
    fn set_status(&self, change: impl FnOnce(&mut StandbyStatus)) {
        let mut status = lock(&self.status);
        change(&mut status);
        let stream = self.options.stream.as_str().to_owned();
        if let Some(lag) = status.lag_events() {
            metrics::gauge!(LAG_EVENTS, "stream" => stream.clone()).set(lag as f64);
        }
        metrics::gauge!(CONNECTED, "stream" => stream).set(f64::from(u8::from(status.connected)));
    }

    /// Follows the primary until promoted, reconnecting with backoff.
    async fn follow(standby: std::sync::Weak<Self>, primary: Connection) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(this) = standby.upgrade() else {
                return;
            };
            let mut phase = this.phase.subscribe();
            if *phase.borrow() != Phase::Following {
                return;
            }
            let outcome = this.follow_once(&primary, &mut phase).await;
            if *phase.borrow() != Phase::Following {
                return;
            }
            let why = match outcome {
                Ok(()) => "the primary ended the subscription".to_owned(),
                Err(error) if error.kind() == ErrorKind::Corrupt => {
                    // Following on would diverge: stop, and say why.
                    tracing::error!(primary = %primary.url, %error, "standby stopped following");
                    this.set_status(|s| {
                        s.connected = false;
                        s.last_error = Some(format!("stopped following: {error}"));
                    });
                    return;
                }
                Err(error) => error.to_string(),
            };
            tracing::warn!(primary = %primary.url, %why, "standby lost its primary; reconnecting");
            this.set_status(|s| {
                s.connected = false;
                s.last_error = Some(why);
            });
            drop(this);
            // Full jitter, up to 5 s.
            let wait = backoff.mul_f64(fastrand::f64());
            backoff = (backoff * 2).min(Duration::from_secs(5));
            let mut phase = match standby.upgrade() {
                Some(this) => this.phase.subscribe(),
                None => return,
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = phase.wait_for(|phase| *phase != Phase::Following) => return,
            }
        }
    }

    /// One subscription, until it ends or `phase` leaves
    /// [`Phase::Following`] (between appends, never inside one): from the
    /// log's last event, which the primary must hold too (a log that
    /// diverged from its primary's is not followed), then on after it.
    async fn follow_once(
        &self,
        primary: &Connection,
        phase: &mut watch::Receiver<Phase>,
    ) -> Result<(), Error> {
        let stream = &self.options.stream;
        let last = self.replicator.last_sequence(stream);
        let encoding = Encoding::new(Format::Protobuf, WireVersion::V2);
        let mut check = (last > 0).then_some(last);
        let stopped = async |phase: &mut watch::Receiver<Phase>| {
            // The sender lives as long as `self`.
            let _ = phase.wait_for(|phase| *phase != Phase::Following).await;
        };
        let mut subscription = tokio::select! {
            subscription = Subscription::open(primary, stream, last.max(1), encoding) => subscription?,
            () = stopped(phase) => return Ok(()),
        };
        self.set_status(|s| {
            s.connected = true;
            s.last_error = None;
        });
        loop {
            let next = tokio::select! {
                next = subscription.next() => next,
                () = stopped(phase) => return Ok(()),
            };
            let batch = match next {
                Ok(Some(batch)) => batch,
                Ok(None) => return Ok(()),
                // A new standby of a primary whose log no longer holds
                // the stream's first event (retention deleted what its
                // queue checkpoint covers): it begins from that checkpoint.
                Err(error) if error.kind() == ErrorKind::Rejected && self.is_new() => {
                    let checkpoint = self.primary_checkpoint(primary, &error).await?;
                    // What follows the checkpoint, taken before the standby
                    // begins from it: a later checkpoint of the primary's
                    // (and the retention after it) meanwhile refuses this
                    // subscription, and the standby, still new, tries
                    // again, rather than begin after a gap.
                    subscription =
                        Subscription::open(primary, stream, checkpoint.through + 1, encoding)
                            .await?;
                    let first = tokio::select! {
                        next = subscription.next() => next?,
                        () = stopped(phase) => return Ok(()),
                    };
                    let Some(first) = first else {
                        return Ok(());
                    };
                    self.begin_from(checkpoint).await?;
                    first
                }
                // The primary no longer holds it (retention): nothing to
                // compare with.
                Err(error) if check.is_some() && error.kind() == ErrorKind::Rejected => {
                    tracing::warn!(
                        %error,
                        sequence = last,
                        "cannot check that the primary holds this standby's last event; following on after it"
                    );
                    check = None;
                    self.checked.send_replace(true);
                    subscription = Subscription::open(primary, stream, last + 1, encoding).await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            self.set_status(|s| s.primary_head = Some(batch.head));
            let mut records = &batch.records[..];
            if let Some(own) = check {
                if batch.head < own {
                    return Err(self.diverged(format!(
                        "this standby's log holds sequence {own}, but its primary's stream ends \
                         at sequence {}",
                        batch.head
                    )));
                }
                let Some((first, rest)) = records.split_first() else {
                    continue;
                };
                self.check_same(own, first).await?;
                check = None;
                self.checked.send_replace(true);
                records = rest;
            }
            if records.is_empty() {
                continue;
            }
            let events = records
                .iter()
                .map(|record| {
                    let mut event = decode_followed(record)?;
                    event.sequence_number = i64::try_from(record.sequence).unwrap_or(i64::MAX);
                    Ok(event)
                })
                .collect::<Result<Vec<_>, Error>>()?;
            self.append(stream, events).await?;
        }
    }

    /// Whether its log never numbered a record (nor began after any).
    fn is_new(&self) -> bool {
        let stream = &self.options.stream;
        self.replicator.last_sequence(stream) == 0 && self.replicator.started_after(stream) == 0
    }

    /// The primary's queue checkpoint, to begin this new standby from:
    /// the primary's log was `refused` the start of its stream.
    async fn primary_checkpoint(
        &self,
        primary: &Connection,
        refused: &Error,
    ) -> Result<Checkpoint, Error> {
        let stream = &self.options.stream;
        let snapshot = omnirelay_replication_grpc::fetch_snapshot(primary, stream)
            .await?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "{refused}, and the primary keeps no queue checkpoint to begin from \
                         (services.dispatcher.checkpoint_interval_ms = 0 there?): start this \
                         standby on a copy of the primary's data directory"
                    ),
                )
            })?;
        Checkpoint::from_bytes(&snapshot.data, stream)
            .ok()
            .filter(|checkpoint| checkpoint.through == snapshot.through && checkpoint.through > 0)
            .ok_or_else(|| {
                // The primary saves another in a while.
                Error::new(
                    ErrorKind::Unavailable,
                    "the primary's queue checkpoint cannot be used to begin from",
                )
            })
    }

    /// Begins this new standby from its primary's `checkpoint`: kept as
    /// its own, its log begins after the checkpoint's event, and its queue
    /// is the checkpoint's.
    async fn begin_from(&self, checkpoint: Checkpoint) -> Result<(), Error> {
        let stream = &self.options.stream;
        let through = checkpoint.through;
        // No checkpoint of this standby's own is being saved, and nothing
        // is appended or promoted meanwhile.
        let _saving = self.saving.lock().await;
        let mut state = self.state.lock().await;
        if *self.phase.borrow() != Phase::Following || !self.is_new() {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "the standby changed while it was to begin from its primary's queue checkpoint",
            ));
        }
        // The checkpoint and the mark that the log began from it first: a
        // crash before the log begins leaves a checkpoint past an empty log,
        // which the next start sets aside (the standby is new again).
        let data_dir = self.replicator.data_dir().to_owned();
        let checkpoint = {
            let stream = stream.clone();
            tokio::task::spawn_blocking(move || {
                checkpoint.save(&checkpoint::path(&data_dir, &stream), &stream)?;
                checkpoint::mark_begun(&data_dir, &stream, through)?;
                Ok::<_, std::io::Error>(checkpoint)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot keep the primary's queue checkpoint: {e}"),
                )
            })?
        };
        self.replicator.begin_after(stream, through).await?;
        *state = checkpoint.state;
        self.set_status(|s| s.applied = through);
        self.checked.send_replace(true);
        tracing::info!(
            %stream, through,
            "the primary's log no longer holds its stream's start: this standby begins from its queue checkpoint"
        );
        Ok(())
    }

    /// The error of a log found diverged from its source's stream (`why`),
    /// remembered for [`Standby::promotion_hazard`].
    fn diverged(&self, why: String) -> Error {
        self.diverged
            .store(true, std::sync::atomic::Ordering::Relaxed);
        diverged_error(why)
    }

    /// Checks that the primary's record `theirs` is the event this
    /// standby's log holds at sequence `own`.
    async fn check_same(
        &self,
        own: u64,
        theirs: &omnirelay_replication_grpc::v2::StreamRecord,
    ) -> Result<(), Error> {
        if theirs.sequence != own {
            return Err(self.diverged(format!(
                "its primary holds another event at sequence {own} than this standby's log"
            )));
        }
        self.holds_same(own, decode_followed(theirs)?, "its primary")
            .await
    }

    /// Checks that `theirs`, what `source` holds at sequence `own`, is the
    /// event this standby's log holds there.
    async fn holds_same(&self, own: u64, theirs: Event, source: &str) -> Result<(), Error> {
        let stream = &self.options.stream;
        let mine = match record_at(&self.replicator, stream, own).await? {
            Some((_, bytes)) => proto::decode(&bytes).map_err(|e| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("this standby's own sequence {own} is undecodable: {e}"),
                )
            })?,
            None => return Ok(()),
        };
        // Who wrote it and under which numbering may differ; what
        // happened may not.
        let same = |mut event: Event| {
            event.sequence_number = 0;
            event.node_id = None;
            event.stream_id = None;
            event
        };
        if same(mine) != same(theirs) {
            return Err(self.diverged(format!(
                "{source} holds another event at sequence {own} than this standby's log"
            )));
        }
        Ok(())
    }

    /// Checks, before a fed standby takes its feed, that its source holds
    /// the event its log holds at its last sequence (`appliedSequence` in
    /// [`Standby::status`]); `held` is what the source holds there: what a
    /// standby following its primary itself checks each time it
    /// subscribes. A log that is not a copy of the source's stream (a
    /// former primary's events that never reached the bus, or a log that
    /// followed another bus) stops it: [`ErrorKind::Corrupt`], also in its
    /// status (`stopped following: …`), and its feed refuses everything
    /// from then on. What the source no longer holds passes (logged).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Corrupt`]: the log diverged from the source's stream
    /// (the standby stopped); another kind: the log cannot be read now
    /// (check again).
    pub async fn check_feed(&self, held: FeedHolds) -> Result<(), Error> {
        let own = self.replicator.last_sequence(&self.options.stream);
        let checked = match held {
            _ if own == 0 => Ok(()),
            FeedHolds::Event(theirs) => self.holds_same(own, *theirs, "its source").await,
            FeedHolds::EndsAt(head) if head < own => Err(self.diverged(format!(
                "this standby's log holds sequence {own}, but its source's stream ends at \
                 sequence {head}"
            ))),
            FeedHolds::EndsAt(_) => Ok(()),
            FeedHolds::Unknown(why) => {
                tracing::warn!(
                    sequence = own,
                    why,
                    "cannot check that the source holds this standby's last event; following on after it"
                );
                Ok(())
            }
        };
        match &checked {
            Ok(()) => {
                self.checked.send_replace(true);
            }
            // Diverged (or its own log is unreadable there): following on
            // would not make a copy.
            Err(error) if error.kind() == ErrorKind::Corrupt => {
                tracing::error!(%error, "standby stopped following");
                self.stop();
                self.set_status(|s| {
                    s.connected = false;
                    s.last_error = Some(format!("stopped following: {error}"));
                });
            }
            // Its log could not be read now: to be checked again.
            Err(_) => {}
        }
        checked
    }

    /// Appends followed events to the own log, then to the projection.
    async fn append(&self, stream: &StreamId, events: Vec<Event>) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        self.append_locked(&mut state, stream, events).await
    }

    async fn append_locked(
        &self,
        state: &mut QueueState,
        stream: &StreamId,
        events: Vec<Event>,
    ) -> Result<(), Error> {
        let applied = events.clone();
        let pending = self
            .replicator
            .submit_replicated(stream, events)
            .await
            .map_err(|parts| parts.error)?;
        pending.durable().await?;
        for event in &applied {
            state.apply(event, &self.options.queue).map_err(|e| {
                self.unsound
                    .store(true, std::sync::atomic::Ordering::Release);
                Error::new(
                    ErrorKind::Corrupt,
                    format!("the primary's stream does not fold into a queue: {e}"),
                )
            })?;
        }
        if let Some(last) = applied.last() {
            self.set_status(|s| {
                s.applied = u64::try_from(last.sequence_number).unwrap_or(0);
                s.last_written = Some(last.timestamp);
            });
        }
        Ok(())
    }

    /// What [`StandbyFeed`] applies: the records after the log's last, in
    /// order and without a gap.
    async fn apply_fed(&self, records: &[Record<'_>]) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        // Checked under the lock promotion takes before opening the
        // dispatcher: nothing is appended after that.
        match *self.phase.borrow() {
            Phase::Following => {}
            Phase::Promoted => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "the standby was promoted: it follows no more",
                ));
            }
            Phase::Stopped => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "the standby stopped following",
                ));
            }
        }
        let stream = &self.options.stream;
        let mut last = self.replicator.last_sequence(stream);
        let mut events = Vec::new();
        let mut gap = None;
        for record in records.iter().filter(|r| r.stream() == stream) {
            let sequence = record.sequence();
            if sequence <= last {
                continue;
            }
            if sequence != last + 1 {
                gap = Some(format!(
                    "the followed stream skips from sequence {last} to {sequence}: \
                     the source no longer holds what lies between, or never got it \
                     (a sink that refuses an event, e.g. one over a NATS server's \
                     max_payload, dead-letters it: see `omnirelay deadletter list` \
                     on the primary)"
                ));
                break;
            }
            let encoding = record.encoding();
            if encoding != Encoding::new(Format::Protobuf, WireVersion::V2) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("a standby takes protobuf v2 records, not {encoding}"),
                ));
            }
            let mut event = proto::decode(record.bytes()).map_err(|e| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("followed sequence {sequence} is undecodable: {e}"),
                )
            })?;
            event.sequence_number = i64::try_from(sequence).unwrap_or(i64::MAX);
            events.push(event);
            last = sequence;
        }
        if !events.is_empty() {
            self.append_locked(&mut state, stream, events).await?;
        }
        match gap {
            Some(gap) => {
                tracing::error!(%stream, "{gap}");
                self.set_status(|s| s.last_error = Some(gap.clone()));
                Err(Error::new(ErrorKind::Unavailable, gap))
            }
            None => Ok(()),
        }
    }
}

/// The primary's stream as a fed standby's source reported it.
#[derive(Debug, Default)]
struct HeadWatch {
    /// The highest head reported.
    highest: Option<u64>,
    /// The head and when (by this host's clock) a report last showed it
    /// higher than every report before; the first report, which may be a
    /// backlog, shows nothing new.
    grew: Option<(u64, Instant)>,
}

impl HeadWatch {
    fn report(&mut self, head: u64) {
        match self.highest {
            Some(highest) if head <= highest => {}
            Some(_) => {
                self.highest = Some(head);
                self.grew = Some((head, Instant::now()));
            }
            None => self.highest = Some(head),
        }
    }
}

/// When the primary's log stamped sequence `last` of `stream` (kept as it
/// came in the standby's log); `None` for an empty stream.
async fn last_written(
    replicator: &DurableReplicator<Event>,
    stream: &StreamId,
    last: u64,
) -> Result<Option<Timestamp>, Error> {
    Ok(record_at(replicator, stream, last)
        .await?
        .map(|(timestamp, _)| timestamp))
}

/// The record of `stream` at `sequence` in the standby's own log (in
/// protobuf at version 2): its timestamp and bytes; `None` for 0 or a
/// sequence it does not hold.
async fn record_at(
    replicator: &DurableReplicator<Event>,
    stream: &StreamId,
    sequence: u64,
) -> Result<Option<(Timestamp, Vec<u8>)>, Error> {
    if sequence == 0 {
        return Ok(None);
    }
    let replay = replicator
        .replay(
            stream,
            sequence,
            Encoding::new(Format::Protobuf, WireVersion::V2),
        )
        .await?;
    tokio::task::spawn_blocking(move || {
        for item in replay {
            if let Replayed::Record(record) = item? {
                return Ok((record.sequence() == sequence)
                    .then(|| (record.header().timestamp, record.bytes().to_vec())));
            }
        }
        Ok(None)
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Unavailable, format!("reading the log: {e}")))?
}

/// A record the primary sent, decoded.
fn decode_followed(record: &omnirelay_replication_grpc::v2::StreamRecord) -> Result<Event, Error> {
    proto::decode(&record.payload).map_err(|e| {
        Error::new(
            ErrorKind::Corrupt,
            format!("primary sent sequence {} undecodable: {e}", record.sequence),
        )
    })
}

/// A standby whose log is not a prefix of its primary's stream: following
/// on would skip the primary's events (or apply them on top of others).
fn diverged_error(why: String) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!(
            "{why}: its log is not a copy of the primary's stream (a former primary's events \
             that never reached this one, or a standby that followed another primary further); \
             start this standby on an empty data directory to follow this primary"
        ),
    )
}

/// The sink of a fed standby; see [`Standby::feed`].
#[derive(Clone, Debug)]
pub struct StandbyFeed(std::sync::Weak<Standby>);

impl StandbyFeed {
    fn standby(&self) -> Result<Arc<Standby>, SinkError> {
        self.0
            .upgrade()
            .ok_or_else(|| SinkError::new(ErrorKind::Unavailable, "the standby is closed"))
    }
}

impl Sink for StandbyFeed {
    async fn apply(&self, batch: &[Record<'_>]) -> Result<(), SinkError> {
        let standby = self.standby()?;
        let result = standby.apply_fed(batch).await;
        result.map_err(|error| {
            let through = standby.replicator.last_sequence(&standby.options.stream);
            SinkError::from(error).applied_through(
                batch
                    .iter()
                    .map(Record::sequence)
                    .take_while(|s| *s <= through)
                    .last(),
            )
        })
    }

    async fn checkpoint(&self, stream: &StreamId) -> Result<Option<u64>, SinkError> {
        let standby = self.standby()?;
        Ok(Some(if *stream == standby.options.stream {
            standby.replicator.last_sequence(stream)
        } else {
            u64::MAX
        }))
    }
}

impl crate::service::Checkpointed for Standby {
    fn settings(&self) -> &DispatcherOptions {
        &self.options
    }

    async fn take(&self, saved: u64) -> crate::service::Taken {
        let state = self.state.lock().await;
        if *self.phase.borrow() != Phase::Following
            || self.unsound.load(std::sync::atomic::Ordering::Acquire)
        {
            return crate::service::Taken::Stop;
        }
        // Moved under the queue's lock; read before the copy, so that the
        // status is not held while the queue is copied.
        let applied = lock(&self.status).applied;
        crate::service::Taken::take(&state, applied, saved)
    }

    fn saving(&self) -> Option<Arc<Mutex<()>>> {
        Some(self.saving.clone())
    }

    fn saved(&self, through: u64) {
        if let Some(hold) = lock(&self.retention).as_ref() {
            hold.advance(through);
        }
    }
}
