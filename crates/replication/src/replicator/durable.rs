//! The durable replicator: publish appends to a stream's log; drivers
//! deliver from the log to every sink independently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::delivery::driver::{Driver, DriverShared, Start};
use crate::delivery::{
    CheckpointStore, DeadLetterLog, FileCheckpointStore, SinkOptions, SinkSnapshot, WhenFull,
};
use crate::error::{Error, ErrorKind, PublishError, SinkError};
use crate::event::{Assignment, Codec, CodecErrorKind, Encoding, Format, ReplicationEvent};
use crate::log::{LogOptions, LogReader, Recovery, StreamLog};
use crate::record::{EncodedEvents, EventBatch};
use crate::replicator::{Receipt, Replicator};
use crate::sequencer::Sequencer;
use crate::sink::SharedSink;
use crate::stream::{StreamId, validate_name};
use crate::telemetry;
use crate::time::Timestamp;

/// When a publish counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Ack {
    /// When the event is durable under the stream's policy.
    #[default]
    Durable,
    /// When, in addition, every required sink has applied it.
    RequiredSinks,
}

/// Knobs of a [`DurableReplicator`].
#[derive(Clone, Debug)]
pub struct DurableOptions {
    /// Logs go under `data_dir/log/<stream>/`, checkpoints under
    /// `data_dir/checkpoints/`, dead letters under `data_dir/deadletter/`.
    pub data_dir: PathBuf,
    /// The log options of streams not listed in `streams`.
    pub log: LogOptions,
    /// Streams opened at start, with their own options.
    pub streams: Vec<(StreamId, LogOptions)>,
    /// The format the logs store events in (always at the codec's newest
    /// version: the full-fidelity form).
    pub log_format: Format,
    /// When a publish counts as done.
    pub ack: Ack,
    /// The clock that stamps events.
    pub clock: fn() -> Timestamp,
    /// Streams this node keeps as a replica of another node's log (a
    /// standby's): their records come numbered by that log
    /// ([`DurableReplicator::submit_replicated`]). A sink that holds
    /// records this log has not reached yet holds that log's (a backend
    /// the standby shares with its primary): the log does not number after
    /// them, and the sink's driver skips those records for it instead of
    /// dead-lettering them as another log's.
    pub replicas: Vec<StreamId>,
    /// Streams whose log (on disk: not `memory`) keeps every segment from
    /// the moment it opens until the first
    /// [`DurableReplicator::hold_retention`] on it, which then holds
    /// instead: for a reader that keeps state folded from the log (a
    /// dispatcher's queue, a receiver's marks) and takes its hold only
    /// once the node's sinks have started, which can take a while.
    pub held: Vec<StreamId>,
}

impl DurableOptions {
    /// Defaults for a data directory: every stream `fsync`, protobuf in
    /// the log, acknowledged when durable.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            log: LogOptions::default(),
            streams: Vec::new(),
            log_format: Format::Protobuf,
            ack: Ack::Durable,
            clock: Timestamp::now,
            replicas: Vec::new(),
            held: Vec::new(),
        }
    }
}

/// What an operator sees of one stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamSnapshot {
    /// The stream.
    pub stream: String,
    /// Its durability policy.
    pub durability: String,
    /// The last sequence assigned.
    pub last_sequence: u64,
    /// The last sequence acknowledged.
    pub acked: u64,
    /// The last sequence sinks may see.
    pub visible: u64,
    /// Bytes in the log.
    pub log_bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Bytes cut from a damaged tail when the log was opened.
    pub recovery_cut_bytes: u64,
    /// Why the log stopped, if it did.
    pub failure: Option<String>,
}

/// A stream's metric handles.
#[derive(Debug)]
struct StreamMetrics {
    published_events: metrics::Counter,
    published_bytes: metrics::Counter,
    publish_duration: metrics::Histogram,
    log_bytes: metrics::Gauge,
    backpressure: metrics::Gauge,
}

impl StreamMetrics {
    fn new(stream: &StreamId) -> Self {
        let labels = [("stream", stream.as_str().to_owned())];
        let published_events = metrics::counter!(telemetry::PUBLISHED_EVENTS, &labels);
        published_events.increment(0);
        let published_bytes = metrics::counter!(telemetry::PUBLISHED_BYTES, &labels);
        published_bytes.increment(0);
        let backpressure = metrics::gauge!(telemetry::BACKPRESSURE_ACTIVE, &labels);
        backpressure.set(0.0);
        Self {
            published_events,
            published_bytes,
            publish_duration: metrics::histogram!(telemetry::PUBLISH_DURATION, &labels),
            log_bytes: metrics::gauge!(telemetry::LOG_BYTES, &labels),
            backpressure,
        }
    }
}

/// One stream: its log, its sequencer and its drivers.
pub(crate) struct StreamState<E> {
    pub(crate) id: StreamId,
    pub(crate) log: StreamLog<EventBatch<E>>,
    sequencer: tokio::sync::Mutex<Sequencer>,
    /// The last sequence assigned.
    last_assigned: AtomicU64,
    drivers: Mutex<Vec<Arc<DriverShared>>>,
    /// The sequences [`RetentionHold`]s keep segments after.
    holds: Mutex<Vec<Arc<AtomicU64>>>,
    /// Until every sink of the open has its driver, the log keeps every
    /// segment: floors told with only some drivers would let retention
    /// delete what the others need.
    starting: AtomicBool,
    /// The hold of a stream in [`DurableOptions::held`] until the first
    /// [`DurableReplicator::hold_retention`] on it.
    opening_hold: Mutex<Option<Arc<AtomicU64>>>,
    /// Signalled whenever a driver moves.
    advanced: Notify,
    metrics: StreamMetrics,
    /// Hands new drivers to the stream's delivery task.
    drivers_tx: tokio::sync::mpsc::UnboundedSender<crate::sink::BoxFuture<'static, ()>>,
    recovery: Recovery,
    /// Kept as a replica of another node's log ([`DurableOptions::replicas`]).
    pub(crate) replica: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a [`RetentionHold`] needs of its stream.
trait Floors: Send + Sync {
    fn refresh(&self);
    fn release(&self, held: &Arc<AtomicU64>);
}

impl<E: ReplicationEvent> Floors for StreamState<E> {
    fn refresh(&self) {
        self.set_floors();
    }

    fn release(&self, held: &Arc<AtomicU64>) {
        lock(&self.holds).retain(|h| !Arc::ptr_eq(h, held));
        self.set_floors();
    }
}

/// Keeps a stream's segments after a sequence from retention
/// ([`DurableReplicator::hold_retention`]); dropping it releases them.
pub struct RetentionHold {
    held: Arc<AtomicU64>,
    stream: std::sync::Weak<dyn Floors>,
}

impl RetentionHold {
    /// The sequence after which segments are kept.
    pub fn through(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    /// Lets retention delete what holds nothing after `through` (never
    /// moves back).
    pub fn advance(&self, through: u64) {
        self.held.fetch_max(through, Ordering::AcqRel);
        if let Some(stream) = self.stream.upgrade() {
            stream.refresh();
        }
    }
}

impl Drop for RetentionHold {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.upgrade() {
            stream.release(&self.held);
        }
    }
}

impl std::fmt::Debug for RetentionHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetentionHold")
            .field("through", &self.through())
            .finish_non_exhaustive()
    }
}

impl<E: ReplicationEvent> StreamState<E> {
    /// Called by a driver after it moved: wakes blocked publishers and
    /// tells the log how far the sinks are.
    pub(crate) fn driver_advanced(&self) {
        self.set_floors();
        self.advanced.notify_waiters();
    }

    /// Tells the log how far retention may go: no further than any sink
    /// (`required` ones for the age and size limits) or any hold.
    fn set_floors(&self) {
        if self.starting.load(Ordering::Acquire) {
            return;
        }
        let drivers = lock(&self.drivers);
        let consumed = drivers.iter().map(|d| d.cursor()).min().unwrap_or(0);
        let required = drivers
            .iter()
            .filter(|d| d.options.is_required())
            .map(|d| d.cursor())
            .min()
            .unwrap_or(u64::MAX);
        drop(drivers);
        let held = lock(&self.holds)
            .iter()
            .map(|h| h.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX);
        self.log.set_floors(consumed.min(held), required.min(held));
    }

    /// The first required sink that `count` more events would put over
    /// its budget, with its current lag. A sink that has caught up admits
    /// a submission of any size, so a batch larger than the budget cannot
    /// wait forever.
    fn over_budget(&self, count: u64) -> Option<(String, u64, u64, WhenFull)> {
        let last = self.last_assigned.load(Ordering::Acquire);
        lock(&self.drivers).iter().find_map(|d| {
            let (budget, when_full) = d.budget()?;
            let lag = last.saturating_sub(d.cursor());
            (lag > 0 && lag + count > budget).then(|| (d.sink.clone(), lag, budget, when_full))
        })
    }

    /// Sets the stream's and its sinks' gauges from their current state.
    fn refresh_gauges(&self) {
        let head = self.log.progress().borrow().visible;
        self.metrics.log_bytes.set(self.log.stats().bytes as f64);
        let blocked = self.over_budget(1).is_some();
        self.metrics
            .backpressure
            .set(if blocked { 1.0 } else { 0.0 });
        for driver in lock(&self.drivers).iter() {
            driver.update_gauges(head);
        }
    }

    fn required_caught_up(&self, sequence: u64) -> bool {
        lock(&self.drivers)
            .iter()
            .filter(|d| d.options.is_required())
            .all(|d| d.cursor() >= sequence)
    }
}

struct Registration {
    name: String,
    sink: SharedSink,
    options: SinkOptions,
}

struct Inner<E> {
    codec: Arc<dyn Codec<E>>,
    options: DurableOptions,
    log_encoding: Encoding,
    streams: Mutex<HashMap<StreamId, Arc<StreamState<E>>>>,
    /// Serializes the opening of streams.
    opening: tokio::sync::Mutex<()>,
    sinks: Mutex<Vec<Arc<Registration>>>,
    store: Arc<dyn CheckpointStore>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    seed: AtomicU64,
}

/// The durable replicator. `publish` assigns the stream's next gap-free
/// sequence (recovered from the log after a restart), appends the event to
/// the stream's log and resolves once it is durable under the stream's
/// policy (or, with [`Ack::RequiredSinks`], once every required sink has
/// it too). One driver per stream and sink delivers from the log with its
/// own checkpoint, batching, retries and dead-letter log: one sink's
/// failure never stalls, slows or re-sends to another.
///
/// Cloning gives another handle to the same replicator.
pub struct DurableReplicator<E> {
    inner: Arc<Inner<E>>,
}

impl<E> Clone for DurableReplicator<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<E> std::fmt::Debug for DurableReplicator<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableReplicator")
            .field("data_dir", &self.inner.options.data_dir)
            .finish_non_exhaustive()
    }
}

/// How a submission's events are numbered and stamped.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stamping {
    /// The next sequences and the replicator's clock.
    Assign,
    /// As they come (a replica of another stream); the sequences must
    /// continue the stream.
    Keep,
}

/// A publish whose event is in the log queue; [`PendingPublish::durable`]
/// waits for the acknowledgement.
#[derive(Debug)]
pub struct PendingPublish<E> {
    /// The receipt of the last event of the submission.
    receipt: Receipt,
    /// The events as the log numbered them (`None` for none).
    batch: Option<Arc<EventBatch<E>>>,
    started: std::time::Instant,
    first_sequence: u64,
    stream: Arc<StreamState<E>>,
    ack: Ack,
}

impl<E> std::fmt::Debug for StreamState<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamState")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<E: ReplicationEvent> PendingPublish<E> {
    /// The sequence and timestamp assigned (for a batch, to its last
    /// event).
    pub fn receipt(&self) -> &Receipt {
        &self.receipt
    }

    /// The sequences assigned.
    pub fn sequences(&self) -> std::ops::RangeInclusive<u64> {
        self.first_sequence..=self.receipt.sequence
    }

    /// The events as submitted, numbered and stamped (the log's own, not a
    /// copy); none for [`DurableReplicator::submit_encoded`].
    pub fn events(&self) -> &[E] {
        self.batch.as_deref().map_or(&[], EventBatch::events)
    }

    /// Waits until the event is acknowledged.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] if the log stops (an fsync failure) or closes
    /// first.
    pub async fn durable(self) -> Result<Receipt, Error> {
        self.stream.log.wait_acked(self.receipt.sequence).await?;
        self.stream
            .metrics
            .publish_duration
            .record(self.started.elapsed().as_secs_f64());
        if self.ack == Ack::RequiredSinks {
            loop {
                let notified = self.stream.advanced.notified();
                if self.stream.required_caught_up(self.receipt.sequence) {
                    break;
                }
                notified.await;
            }
        }
        Ok(self.receipt)
    }
}

impl<E: ReplicationEvent> DurableReplicator<E> {
    /// Opens the replicator: every stream listed in the options and every
    /// stream already on disk, each recovered from its log.
    ///
    /// # Errors
    ///
    /// What opening a log reports (another process holds it, I/O errors).
    pub async fn open(codec: Arc<dyn Codec<E>>, options: DurableOptions) -> Result<Self, Error> {
        let log_encoding = Encoding::new(options.log_format, codec.latest_version());
        let store: Arc<dyn CheckpointStore> = Arc::new(FileCheckpointStore::new(
            &options.data_dir.join("checkpoints"),
        ));
        let replicator = Self {
            inner: Arc::new(Inner {
                codec,
                log_encoding,
                streams: Mutex::new(HashMap::new()),
                opening: tokio::sync::Mutex::new(()),
                sinks: Mutex::new(Vec::new()),
                store,
                shutdown: watch::Sender::new(false),
                tasks: Mutex::new(Vec::new()),
                seed: AtomicU64::new(0x5EED),
                options,
            }),
        };
        let mut streams: Vec<StreamId> = replicator
            .inner
            .options
            .streams
            .iter()
            .map(|(s, _)| s.clone())
            .collect();
        let log_dir = replicator.inner.options.data_dir.join("log");
        if let Ok(entries) = std::fs::read_dir(&log_dir) {
            for entry in entries.flatten() {
                if let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| StreamId::new(n).ok())
                    && !streams.contains(&id)
                {
                    streams.push(id);
                }
            }
        }
        for id in streams {
            replicator.stream(&id).await?;
        }
        let gauges = tokio::spawn(refresh_gauges(
            Arc::downgrade(&replicator.inner),
            replicator.inner.shutdown.subscribe(),
        ));
        lock(&replicator.inner.tasks).push(gauges);
        Ok(replicator)
    }

    /// The encoding the log stores: the configured format at the codec's
    /// latest version.
    pub fn log_encoding(&self) -> Encoding {
        self.inner.log_encoding
    }

    /// A reader of the files of `stream`'s log, which reads the records as
    /// stored, without decoding them; `None` for `memory` durability (no
    /// files) or a stream that is not open.
    pub fn log_reader(&self, stream: &StreamId) -> Option<LogReader> {
        lock(&self.inner.streams).get(stream)?.log.reader()
    }

    /// The data directory (the logs, checkpoints and dead letters under it).
    pub fn data_dir(&self) -> &Path {
        &self.inner.options.data_dir
    }

    /// The directory of a stream's log.
    pub fn stream_dir(data_dir: &Path, stream: &StreamId) -> PathBuf {
        data_dir.join("log").join(stream.as_str())
    }

    fn log_options(&self, stream: &StreamId) -> LogOptions {
        self.inner
            .options
            .streams
            .iter()
            .find(|(s, _)| s == stream)
            .map_or_else(|| self.inner.options.log.clone(), |(_, o)| o.clone())
    }

    /// Opens (and recovers) `stream`'s log now, rather than on its first
    /// publish: to replay it, or to feed sinks what it already holds.
    ///
    /// # Errors
    ///
    /// The log's failure to open or recover.
    pub async fn open_stream(&self, stream: &StreamId) -> Result<(), Error> {
        self.stream(stream).await.map(|_| ())
    }

    /// Where `stream`'s log began numbering: 0 for a log whose first record
    /// is 1, `N` for one that started empty after records its sinks held
    /// (its files lost, or `memory`: see [`StreamLog::start_after`]), which
    /// it remembers across restarts. 0 for a stream that is not open.
    pub fn started_after(&self, stream: &StreamId) -> u64 {
        lock(&self.inner.streams)
            .get(stream)
            .map_or(0, |state| state.log.started_after())
    }

    /// Makes `stream`'s log, which never numbered a record, begin after
    /// `last`: a replica starting from a snapshot of its source's state
    /// through `last`, when the source's log no longer holds what comes
    /// before. Its first record is then `last + 1`
    /// ([`DurableReplicator::submit_replicated`]), it remembers that
    /// across restarts ([`DurableReplicator::started_after`]), and its
    /// sinks count nothing at or below `last` as missed. Opens the stream
    /// if it is not open.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] once the stream holds or numbered a record;
    /// the log's failure to open or to write where it begins.
    pub async fn begin_after(&self, stream: &StreamId, last: u64) -> Result<(), Error> {
        let state = self.stream(stream).await?;
        let mut sequencer = state.sequencer.lock().await;
        if sequencer.last() != 0 || state.log.last_sequence() != 0 {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "stream {stream} already numbered records (through {}): it cannot begin after {last}",
                    sequencer.last().max(state.log.last_sequence())
                ),
            ));
        }
        let log = state.clone();
        tokio::task::spawn_blocking(move || log.log.start_after(last))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, "log task failed").with_source(e))??;
        *sequencer = Sequencer::starting_after(last);
        state.last_assigned.store(last, Ordering::Release);
        Ok(())
    }

    /// Waits until `stream` has records beyond `sequence` that readers may
    /// see (what sinks are given: under `interval`, only what is synced);
    /// returns the highest such sequence. With [`DurableReplicator::replay`]
    /// this follows a stream live.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] once the stream's log stops or closes; the
    /// log's failure to open.
    pub async fn wait_visible_beyond(
        &self,
        stream: &StreamId,
        sequence: u64,
    ) -> Result<u64, Error> {
        self.stream(stream)
            .await?
            .log
            .wait_visible_beyond(sequence)
            .await
    }

    /// Keeps retention from deleting the segments of `stream` that hold
    /// records after `through` (as a `required` sink at `through` would),
    /// until the hold is moved on or dropped: for a reader that keeps
    /// state folded from the log and checkpoints it, so that what it has
    /// not folded yet stays readable.
    ///
    /// # Errors
    ///
    /// The log's failure to open.
    pub async fn hold_retention(
        &self,
        stream: &StreamId,
        through: u64,
    ) -> Result<RetentionHold, Error> {
        let held = Arc::new(AtomicU64::new(through));
        let state = self.stream_holding(stream, Some(&held)).await?;
        let state: Arc<dyn Floors> = state;
        Ok(RetentionHold {
            held,
            stream: Arc::downgrade(&state),
        })
    }

    /// The stream's state, opening (and recovering) its log on first use.
    async fn stream(&self, id: &StreamId) -> Result<Arc<StreamState<E>>, Error> {
        self.stream_holding(id, None).await
    }

    /// [`Self::stream`], with `hold` among its retention holds: from
    /// before its log can delete anything when this opens it.
    async fn stream_holding(
        &self,
        id: &StreamId,
        hold: Option<&Arc<AtomicU64>>,
    ) -> Result<Arc<StreamState<E>>, Error> {
        let held = |state: &Arc<StreamState<E>>| {
            if let Some(hold) = hold {
                let mut holds = lock(&state.holds);
                holds.push(hold.clone());
                if let Some(opening) = lock(&state.opening_hold).take() {
                    holds.retain(|h| !Arc::ptr_eq(h, &opening));
                }
                drop(holds);
                state.set_floors();
            }
            state.clone()
        };
        if let Some(state) = lock(&self.inner.streams).get(id) {
            return Ok(held(state));
        }
        let _opening = self.inner.opening.lock().await;
        if let Some(state) = lock(&self.inner.streams).get(id) {
            return Ok(held(state));
        }
        let options = self.log_options(id);
        let dir = Self::stream_dir(&self.inner.options.data_dir, id);
        let (encoding, stream_id, store_dir) = (
            self.inner.log_encoding,
            id.clone(),
            self.inner.options.data_dir.join("checkpoints"),
        );
        let persistent = options.durability.is_persistent();
        let (log, recovery, highest_checkpoint) = tokio::task::spawn_blocking(move || {
            let (log, recovery) = StreamLog::open(&dir, stream_id.clone(), encoding, options)?;
            // Retention deletes nothing until the sinks and holds are
            // known (at the end of the open): sinks that take long to
            // start must not leave a window without the holds.
            log.set_floors(0, 0);
            let highest = if persistent {
                highest_checkpoint(&store_dir, &stream_id)
            } else {
                0
            };
            Ok::<_, Error>((log, recovery, highest))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "log open task failed").with_source(e))??;
        let mut last = recovery.last_sequence;
        let replica = self.inner.options.replicas.contains(id);
        let registrations: Vec<_> = lock(&self.inner.sinks)
            .iter()
            .filter(|registration| registration.options.receives(id))
            .cloned()
            .collect();
        // Each sink's own checkpoint, asked once: here when the log is
        // empty, else when its driver starts.
        let mut answers: Vec<Option<Result<Option<u64>, SinkError>>> =
            registrations.iter().map(|_| None).collect();
        if last == 0 && !replica {
            // A log that never numbered a record, while sinks hold records
            // of the stream: a `memory` log restarted, or the node's files
            // lost. Its numbering continues after them, so that no new
            // record takes a sequence a sink already holds (and skips). A
            // sink that cannot answer now is checked when it does.
            let mut ahead = highest_checkpoint;
            for (registration, answer) in registrations.iter().zip(&mut answers) {
                let said = registration.sink.checkpoint_dyn(id).await;
                // Past any sequence a log hands out: the sink wants none.
                if let Ok(Some(mark)) = said
                    && mark <= Sequencer::MAX
                {
                    ahead = ahead.max(mark);
                }
                *answer = Some(said);
            }
            if ahead > 0 {
                log.start_after(ahead)?;
                tracing::warn!(
                    stream = %id, sink = ahead,
                    "the stream's log is empty and a sink holds records of it; numbering continues after the sink"
                );
                last = ahead;
            }
        }
        let (drivers_tx, drivers_rx) = tokio::sync::mpsc::unbounded_channel();
        // Taken at once when the opener holds the stream itself; nothing to
        // keep without files (a `memory` ring must stay free to evict).
        let opening_hold = (persistent && hold.is_none() && self.inner.options.held.contains(id))
            .then(|| Arc::new(AtomicU64::new(0)));
        let state = Arc::new(StreamState {
            metrics: StreamMetrics::new(id),
            drivers_tx,
            id: id.clone(),
            log,
            sequencer: tokio::sync::Mutex::new(Sequencer::starting_after(last)),
            last_assigned: AtomicU64::new(last),
            drivers: Mutex::new(Vec::new()),
            holds: Mutex::new(hold.iter().copied().chain(&opening_hold).cloned().collect()),
            starting: AtomicBool::new(true),
            opening_hold: Mutex::new(opening_hold),
            advanced: Notify::new(),
            recovery,
            replica,
        });
        // Where every sink starts, before the stream opens: a sink that
        // cannot work (misconfigured, or its backend holds another node's
        // stream) keeps the stream closed, so that no publish is accepted
        // that the sink would never get.
        let mut starts = Vec::with_capacity(registrations.len());
        for (registration, answer) in registrations.iter().zip(answers) {
            match self.driver_start(&state, registration, answer).await {
                Ok(start) => starts.push(start),
                Err(err) => {
                    let log = state.clone();
                    if let Ok(Err(closed)) =
                        tokio::task::spawn_blocking(move || log.log.close()).await
                    {
                        tracing::warn!(stream = %id, error = %closed, "closing the log of a stream that could not open");
                    }
                    return Err(err);
                }
            }
        }
        lock(&self.inner.streams).insert(id.clone(), state.clone());
        let delivery = tokio::spawn(run_drivers(drivers_rx, self.inner.shutdown.subscribe()));
        lock(&self.inner.tasks).push(delivery);
        let launched = registrations
            .iter()
            .zip(starts)
            .try_for_each(|(registration, start)| self.launch_driver(&state, registration, start));
        state.starting.store(false, Ordering::Release);
        state.set_floors();
        launched.map(|()| state)
    }

    /// Adds a sink: it receives every stream its options select, now and
    /// as streams open, from its checkpoint on.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for a duplicate or invalid name; the sink's
    /// error if it cannot say where it stands.
    pub async fn add_sink(
        &self,
        name: &str,
        sink: SharedSink,
        options: SinkOptions,
    ) -> Result<(), Error> {
        validate_name("sink name", name)?;
        let registration = Arc::new(Registration {
            name: name.to_owned(),
            sink,
            options,
        });
        {
            let mut sinks = lock(&self.inner.sinks);
            if sinks.iter().any(|s| s.name == name) {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("a sink named {name:?} is already registered"),
                ));
            }
            sinks.push(registration.clone());
        }
        let streams: Vec<_> = lock(&self.inner.streams)
            .values()
            .filter(|state| registration.options.receives(&state.id))
            .cloned()
            .collect();
        // Where it starts in every stream before it starts in any: a sink
        // that cannot work is not added at all.
        let mut starts = Vec::with_capacity(streams.len());
        for state in &streams {
            match self.driver_start(state, &registration, None).await {
                Ok(start) => starts.push(start),
                Err(err) => {
                    lock(&self.inner.sinks).retain(|s| !Arc::ptr_eq(s, &registration));
                    return Err(err);
                }
            }
        }
        for (state, start) in streams.iter().zip(starts) {
            self.launch_driver(state, &registration, start)?;
        }
        Ok(())
    }

    /// Where `registration`'s driver of `state` starts: the sink's answer
    /// (`answered`, or asked now), else its saved checkpoint.
    async fn driver_start(
        &self,
        state: &Arc<StreamState<E>>,
        registration: &Registration,
        answered: Option<Result<Option<u64>, SinkError>>,
    ) -> Result<Start, Error> {
        Driver::<E>::starting_cursor(
            &registration.sink,
            answered,
            self.checkpoint_store(state).as_ref(),
            state,
            &registration.name,
            registration.options.start,
        )
        .await
    }

    /// The store of saved sink checkpoints, for a persistent log.
    fn checkpoint_store(&self, state: &StreamState<E>) -> Option<Arc<dyn CheckpointStore>> {
        state
            .log
            .options()
            .durability
            .is_persistent()
            .then(|| self.inner.store.clone())
    }

    /// Starts `registration`'s driver of `state` at `start`.
    fn launch_driver(
        &self,
        state: &Arc<StreamState<E>>,
        registration: &Registration,
        start: Start,
    ) -> Result<(), Error> {
        let store = self.checkpoint_store(state);
        let shared = Arc::new(DriverShared::new(
            state.id.clone(),
            registration.name.clone(),
            registration.options.clone(),
            start.cursor,
        ));
        lock(&state.drivers).push(shared.clone());
        state.driver_advanced();
        let dead_letters = DeadLetterLog::new(DeadLetterLog::path(
            &self.inner.options.data_dir.join("deadletter"),
            state.id.as_str(),
            &registration.name,
        ));
        let driver = Driver {
            stream: state.clone(),
            shared,
            sink: registration.sink.clone(),
            codec: self.inner.codec.clone(),
            store,
            dead_letters: Arc::new(Mutex::new(dead_letters)),
            shutdown: self.inner.shutdown.subscribe(),
            seed: self.inner.seed.fetch_add(1, Ordering::Relaxed),
            conflict_through: 0,
            held_through: 0,
        };
        if state.drivers_tx.send(Box::pin(driver.run(start))).is_err() {
            return Err(Error::new(ErrorKind::Closed, "the replicator is closed"));
        }
        Ok(())
    }

    /// Assigns the event its sequence and queues it in the stream's log;
    /// the returned [`PendingPublish`] resolves once it is acknowledged.
    /// Waits (or, for a `reject` sink, fails) while a required sink is over
    /// its lag budget.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Throttled`] with the event handed back when a required
    /// sink with `when_full = reject` is over budget; the codec's error if
    /// the event cannot be encoded; [`ErrorKind::Closed`] once the log
    /// stopped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe until the event is queued; once `submit` returns, the
    /// event is in the log's queue.
    pub async fn submit(
        &self,
        stream: &StreamId,
        event: E,
    ) -> Result<PendingPublish<E>, PublishError<E>> {
        self.submit_all(stream, vec![event]).await.map_err(|err| {
            let event = err.event.and_then(|mut events| events.pop());
            PublishError::new(err.error, event)
        })
    }

    /// Submits consecutive events at once: they get consecutive sequences
    /// and share one append (and, under `fsync`, one sync). All or none are
    /// queued.
    ///
    /// # Errors
    ///
    /// As [`DurableReplicator::submit`]; on error every event is handed
    /// back.
    ///
    /// # Cancel safety
    ///
    /// As [`DurableReplicator::submit`].
    pub async fn submit_all(
        &self,
        stream: &StreamId,
        events: Vec<E>,
    ) -> Result<PendingPublish<E>, PublishErrorParts<Vec<E>>> {
        self.submit_stamped(stream, events, Stamping::Assign).await
    }

    /// Appends events another node's stream already numbered and stamped,
    /// keeping their sequences and timestamps: a replica that follows a
    /// stream this way has the same log, sequence for sequence. The events
    /// must continue the stream: the first carries the sequence after the
    /// stream's last, and the rest follow without gaps.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] with every event handed back when the
    /// sequences do not continue the stream; otherwise as
    /// [`DurableReplicator::submit_all`].
    ///
    /// # Cancel safety
    ///
    /// As [`DurableReplicator::submit`].
    pub async fn submit_replicated(
        &self,
        stream: &StreamId,
        events: Vec<E>,
    ) -> Result<PendingPublish<E>, PublishErrorParts<Vec<E>>> {
        self.submit_stamped(stream, events, Stamping::Keep).await
    }

    /// The last sequence assigned in `stream` (0 for an empty or unknown
    /// stream).
    pub fn last_sequence(&self, stream: &StreamId) -> u64 {
        lock(&self.inner.streams)
            .get(stream)
            .map_or(0, |state| state.last_assigned.load(Ordering::Acquire))
    }

    /// Appends events received already encoded in the log's encoding (see
    /// [`EncodedEvents`]), numbered and stamped in their bytes by the
    /// codec's [`Codec::stamp_encoded`], without decoding them: what a
    /// receiving node does with events it only passes on. Sinks that write
    /// another encoding get the events decoded from the log's bytes, and
    /// [`PendingPublish::events`] is empty. Otherwise as
    /// [`DurableReplicator::submit_all`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Rejected`] when the events are not in the log's
    /// encoding, or the codec cannot stamp them ([`ErrorKind::Unsupported`]
    /// for a codec that cannot stamp at all); otherwise as
    /// [`DurableReplicator::submit`].
    ///
    /// # Cancel safety
    ///
    /// As [`DurableReplicator::submit`].
    pub async fn submit_encoded(
        &self,
        stream: &StreamId,
        events: &EncodedEvents,
    ) -> Result<PendingPublish<E>, Error> {
        let started = std::time::Instant::now();
        if events.encoding() != self.inner.log_encoding {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "events encoded in {} cannot be appended to a log of {}",
                    events.encoding(),
                    self.inner.log_encoding
                ),
            ));
        }
        let count = events.len() as u64;
        let state = self.admit(stream, count).await?;
        if count == 0 {
            return Ok(self.nothing_submitted(stream, state, started));
        }
        let sequencer = state.sequencer.lock().await;
        let first = Self::next_sequences(&sequencer, count)?;
        let timestamp = (self.inner.options.clock)();
        let batch =
            EventBatch::from_encoded(stream, events, self.inner.codec.as_ref(), first, timestamp)
                .map_err(|(index, err)| {
                let kind = match err.kind() {
                    CodecErrorKind::Unsupported => ErrorKind::Unsupported,
                    _ => ErrorKind::Rejected,
                };
                Error::new(
                    kind,
                    format!("event {index} of the submission cannot be stamped: {err}"),
                )
            })?;
        self.append_locked(stream, &state, sequencer, batch, started, timestamp)
            .await
            .map_err(|(error, _)| error)
    }

    /// The stream's state, once no required sink would be over its lag
    /// budget with `count` more events: waits while one is, or fails at
    /// once for one whose `when_full` is `reject`.
    async fn admit(&self, stream: &StreamId, count: u64) -> Result<Arc<StreamState<E>>, Error> {
        let state = self.stream(stream).await?;
        loop {
            let notified = state.advanced.notified();
            let Some((sink, lag, budget, when_full)) = state.over_budget(count) else {
                break;
            };
            state.metrics.backpressure.set(1.0);
            if when_full == WhenFull::Reject {
                return Err(Error::new(
                    ErrorKind::Throttled,
                    format!(
                        "required sink {sink:?} of stream {stream} is {lag} events behind (budget {budget})"
                    ),
                ));
            }
            notified.await;
        }
        Ok(state)
    }

    /// The answer to an empty submission: nothing to wait for.
    fn nothing_submitted(
        &self,
        stream: &StreamId,
        state: Arc<StreamState<E>>,
        started: std::time::Instant,
    ) -> PendingPublish<E> {
        let last = state.last_assigned.load(Ordering::Acquire);
        PendingPublish {
            started,
            receipt: Receipt {
                stream: stream.clone(),
                sequence: last,
                timestamp: (self.inner.options.clock)(),
            },
            batch: None,
            first_sequence: last + 1,
            stream: state,
            ack: self.inner.options.ack,
        }
    }

    /// The first of the next `count` sequences.
    fn next_sequences(sequencer: &Sequencer, count: u64) -> Result<u64, Error> {
        let first = sequencer.last() + 1;
        if first + count - 1 > Sequencer::MAX {
            return Err(Error::new(
                ErrorKind::Internal,
                "sequence space of the stream is exhausted",
            ));
        }
        Ok(first)
    }

    async fn submit_stamped(
        &self,
        stream: &StreamId,
        mut events: Vec<E>,
        stamping: Stamping,
    ) -> Result<PendingPublish<E>, PublishErrorParts<Vec<E>>> {
        let started = std::time::Instant::now();
        let count = events.len() as u64;
        let state = match self.admit(stream, count).await {
            Ok(state) => state,
            Err(error) => {
                return Err(PublishErrorParts {
                    error,
                    event: Some(events),
                });
            }
        };
        if count == 0 {
            return Ok(self.nothing_submitted(stream, state, started));
        }
        let sequencer = state.sequencer.lock().await;
        let first = match Self::next_sequences(&sequencer, count) {
            Ok(first) => first,
            Err(error) => {
                return Err(PublishErrorParts {
                    error,
                    event: Some(events),
                });
            }
        };
        let timestamp = (self.inner.options.clock)();
        if stamping == Stamping::Keep
            && let Some((i, event)) = events
                .iter()
                .enumerate()
                .find(|(i, event)| event.sequence() != first + *i as u64)
        {
            let error = Error::new(
                ErrorKind::Rejected,
                format!(
                    "stream {stream} expects sequence {} next, not {}",
                    first + i as u64,
                    event.sequence()
                ),
            );
            return Err(PublishErrorParts {
                error,
                event: Some(events),
            });
        }
        for (i, event) in events.iter_mut().enumerate() {
            let timestamp = match stamping {
                Stamping::Assign => timestamp,
                Stamping::Keep => event.timestamp(),
            };
            event.assign(&Assignment {
                stream,
                sequence: first + i as u64,
                timestamp,
            });
        }
        // A replicated submission's receipt has its last event's time.
        let timestamp = events.last().map_or(timestamp, ReplicationEvent::timestamp);
        let batch = EventBatch::new(stream, events);
        if let Err((index, err)) =
            batch.prepare_log(self.inner.codec.as_ref(), self.inner.log_encoding)
        {
            let error = Error::new(
                ErrorKind::Rejected,
                format!("event {index} of the submission cannot be encoded for the log: {err}"),
            );
            return Err(PublishErrorParts {
                error,
                event: Some(batch.into_events()),
            });
        }
        self.append_locked(stream, &state, sequencer, batch, started, timestamp)
            .await
            .map_err(|(error, batch)| PublishErrorParts {
                error,
                event: Some(
                    Arc::try_unwrap(batch)
                        .map(EventBatch::into_events)
                        .unwrap_or_default(),
                ),
            })
    }

    /// Appends `batch`, numbered from the sequencer's next sequence, to the
    /// stream's log and advances the sequencer past it; the log hands the
    /// batch back when it refuses it.
    async fn append_locked(
        &self,
        stream: &StreamId,
        state: &Arc<StreamState<E>>,
        mut sequencer: tokio::sync::MutexGuard<'_, Sequencer>,
        batch: EventBatch<E>,
        started: std::time::Instant,
        timestamp: Timestamp,
    ) -> Result<PendingPublish<E>, (Error, Arc<EventBatch<E>>)> {
        let first = batch.first_sequence();
        let count = batch.len() as u64;
        let batch = Arc::new(batch);
        let bytes = match state.log.append(batch.clone()).await {
            Ok(bytes) => bytes,
            Err((error, returned)) => {
                drop(batch);
                return Err((error, returned));
            }
        };
        for _ in 0..count {
            let _ = sequencer.advance();
        }
        let last = first + count - 1;
        state.last_assigned.store(last, Ordering::Release);
        drop(sequencer);
        state.metrics.published_events.increment(count);
        state.metrics.published_bytes.increment(bytes as u64);
        Ok(PendingPublish {
            started,
            receipt: Receipt {
                stream: stream.clone(),
                sequence: last,
                timestamp,
            },
            batch: Some(batch),
            first_sequence: first,
            stream: state.clone(),
            ack: self.inner.options.ack,
        })
    }

    /// Every sink's snapshot in every stream.
    pub async fn sink_snapshots(&self) -> Vec<SinkSnapshot> {
        let streams: Vec<_> = lock(&self.inner.streams).values().cloned().collect();
        let mut out = Vec::new();
        for state in streams {
            let head = state.log.progress().borrow().visible;
            out.extend(lock(&state.drivers).iter().map(|d| d.snapshot(head)));
        }
        out.sort_by(|a, b| (&a.stream, &a.sink).cmp(&(&b.stream, &b.sink)));
        out
    }

    /// Ends the backoff of every sink (of `stream`, and named `sink`, when
    /// given) that waits out one before retrying, so that it tries again
    /// now: for an operator who fixed what the sink failed on. Returns
    /// the stream and name of each sink it woke, in order; a sink that is
    /// not waiting is left alone.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] when no sink matches `stream` and `sink`.
    pub fn retry_now(
        &self,
        stream: Option<&StreamId>,
        sink: Option<&str>,
    ) -> Result<Vec<(StreamId, String)>, Error> {
        let streams: Vec<_> = lock(&self.inner.streams)
            .values()
            .filter(|state| stream.is_none_or(|s| *s == state.id))
            .cloned()
            .collect();
        let mut matched = false;
        let mut woken = Vec::new();
        for state in streams {
            for driver in lock(&state.drivers)
                .iter()
                .filter(|d| sink.is_none_or(|name| d.sink == name))
            {
                matched = true;
                if driver.retry_now() {
                    woken.push((state.id.clone(), driver.sink.clone()));
                }
            }
        }
        if !matched {
            let what = match (stream, sink) {
                (Some(stream), Some(sink)) => format!("no sink {sink:?} in stream {stream}"),
                (None, Some(sink)) => format!("no sink named {sink:?}"),
                (Some(stream), None) => format!("stream {stream} has no sinks"),
                (None, None) => "no sinks".to_owned(),
            };
            return Err(Error::new(ErrorKind::Config, what));
        }
        woken.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        Ok(woken)
    }

    /// Every stream's snapshot.
    pub async fn stream_snapshots(&self) -> Vec<StreamSnapshot> {
        let streams: Vec<_> = lock(&self.inner.streams).values().cloned().collect();
        let mut out: Vec<_> = streams
            .iter()
            .map(|state| {
                let progress = *state.log.progress().borrow();
                let stats = state.log.stats();
                StreamSnapshot {
                    stream: state.id.as_str().to_owned(),
                    durability: state.log.options().durability.to_string(),
                    last_sequence: state.last_assigned.load(Ordering::Acquire),
                    acked: progress.acked,
                    visible: progress.visible,
                    log_bytes: stats.bytes,
                    segments: stats.segments,
                    recovery_cut_bytes: state.recovery.cut_bytes,
                    failure: state.log.failure().map(|e| e.to_string()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.stream.cmp(&b.stream));
        out
    }

    /// The streams whose log stopped for good (an I/O error: see
    /// [`StreamLog::failure`](crate::log::StreamLog::failure)), each with
    /// why, in stream order: a node with any is unhealthy until restarted.
    pub fn stopped_streams(&self) -> Vec<(StreamId, Error)> {
        let mut out: Vec<_> = lock(&self.inner.streams)
            .values()
            .filter_map(|state| Some((state.id.clone(), state.log.failure()?)))
            .collect();
        out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        out
    }

    /// What recovery found when `stream`'s log was opened.
    pub async fn recovery(&self, stream: &StreamId) -> Option<Recovery> {
        lock(&self.inner.streams)
            .get(stream)
            .map(|s| s.recovery.clone())
    }

    /// Waits until every sink of every stream has applied (or skipped past)
    /// everything submitted so far (or the stream's log stopped).
    pub async fn wait_caught_up(&self) {
        let streams: Vec<_> = lock(&self.inner.streams).values().cloned().collect();
        for state in streams {
            loop {
                let notified = state.advanced.notified();
                let target = state.last_assigned.load(Ordering::Acquire);
                let behind = lock(&state.drivers).iter().any(|d| d.cursor() < target);
                if !behind || state.log.failure().is_some() {
                    break;
                }
                // Drivers signal when they move; poll too, in case the log
                // became visible without anyone moving.
                let _ = tokio::time::timeout(std::time::Duration::from_millis(100), notified).await;
            }
        }
    }

    /// Reads `stream` from `from` on, in order, each record in `encoding`.
    /// Deterministic: the same log gives the same records.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for a stream that is not open.
    pub async fn replay(
        &self,
        stream: &StreamId,
        from: u64,
        encoding: Encoding,
    ) -> Result<crate::replay::Replay<E>, Error> {
        let state = lock(&self.inner.streams)
            .get(stream)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::Config, format!("stream {stream} is not open")))?;
        match state.log.reader() {
            Some(reader) => Ok(crate::replay::Replay::from_reader(
                reader,
                stream.clone(),
                from,
                self.inner.codec.clone(),
                encoding,
            )),
            None => {
                let mut slices = Vec::new();
                let mut next = from.max(1);
                while let crate::log::TailRead::Slices(batch) =
                    state.log.read_tail(next, 4096, usize::MAX)
                {
                    if let Some(last) = batch.last() {
                        next = last.batch.first_sequence() + last.range.end as u64;
                    }
                    slices.extend(batch);
                }
                Ok(crate::replay::Replay::from_slices(
                    slices,
                    self.inner.codec.clone(),
                    encoding,
                ))
            }
        }
    }

    /// Stops the drivers (saving their checkpoints), closes the sinks and
    /// syncs and closes every log.
    ///
    /// # Errors
    ///
    /// The first failure: a log that had stopped, or a sink that could not
    /// close.
    pub async fn close(&self) -> Result<(), Error> {
        self.inner.shutdown.send_replace(true);
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.inner.tasks));
        for task in tasks {
            let _ = task.await;
        }
        let mut first_error = None;
        let registrations: Vec<_> = lock(&self.inner.sinks).clone();
        for registration in registrations {
            if let Err(err) = registration.sink.close_dyn().await {
                first_error.get_or_insert(err.into_error());
            }
        }
        let streams: Vec<_> = lock(&self.inner.streams).values().cloned().collect();
        for state in streams {
            let closed = tokio::task::spawn_blocking(move || state.log.close()).await;
            if let Ok(Err(err)) = closed {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl<E: ReplicationEvent> Replicator<E> for DurableReplicator<E> {
    async fn publish_to(&self, stream: &StreamId, event: E) -> Result<Receipt, PublishError<E>> {
        let pending = self.submit(stream, event).await?;
        pending
            .durable()
            .await
            .map_err(|e| PublishError::new(e, None))
    }
}

/// A failed [`DurableReplicator::submit_all`]: the reason, and the events
/// handed back.
#[derive(Debug)]
pub struct PublishErrorParts<T> {
    /// Why.
    pub error: Error,
    /// The events, when none was queued.
    pub event: Option<T>,
}

impl<T> std::fmt::Display for PublishErrorParts<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "publish failed: {}", self.error)
    }
}

/// Every second: the gauges that change without any event (lag grows while
/// a sink is stuck; the log grows; backpressure clears).
async fn refresh_gauges<E: ReplicationEvent>(
    inner: std::sync::Weak<Inner<E>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => {}
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let streams: Vec<_> = lock(&inner.streams).values().cloned().collect();
        for state in streams {
            state.refresh_gauges();
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// The delivery task of one stream: every driver of the stream (one per
/// sink) runs in it, each with its own cursor, retries and sink, polled
/// independently, so that a sink waiting on I/O never holds up another,
/// and a published batch wakes one task rather than one per sink.
async fn run_drivers(
    mut new_drivers: tokio::sync::mpsc::UnboundedReceiver<crate::sink::BoxFuture<'static, ()>>,
    mut shutdown: watch::Receiver<bool>,
) {
    use futures::StreamExt as _;
    let mut drivers = futures::stream::FuturesUnordered::new();
    // Drivers stop by themselves on shutdown; this task then ends with the
    // last of them.
    let mut stopping = *shutdown.borrow();
    loop {
        if stopping && drivers.is_empty() {
            return;
        }
        tokio::select! {
            added = new_drivers.recv() => match added {
                Some(driver) => drivers.push(driver),
                None => stopping = true,
            },
            Some(()) = drivers.next(), if !drivers.is_empty() => {}
            changed = shutdown.changed(), if !stopping => {
                stopping = changed.is_err() || *shutdown.borrow();
            }
        }
    }
}

/// The highest checkpoint any sink saved for `stream`.
fn highest_checkpoint(store_dir: &Path, stream: &StreamId) -> u64 {
    let store = FileCheckpointStore::new(store_dir);
    let Ok(entries) = std::fs::read_dir(store_dir.join(stream.as_str())) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".json")?.to_owned();
            store.load(stream, &name).ok().flatten()
        })
        .max()
        .unwrap_or(0)
}
