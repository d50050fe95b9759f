//! One driver: the task that feeds one sink from one stream's log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::delivery::{
    Backoff, CheckpointStore, DeadLetter, DeadLetterLog, DeliveryMode, SinkOptions, SinkSnapshot,
    SinkState, StartFrom,
};
use crate::error::{Error, ErrorKind, SinkError};
use crate::event::{Codec, CodecErrorKind, EventKind, ReplicationEvent};
use crate::log::{BatchReader, Damaged, StoredRecord, TailRead};
use crate::log::{LogBatch, TailSlice};
use crate::record::{EventBatch, Record, RecordHeader};
use crate::replicator::durable::StreamState;
use crate::sequencer::Sequencer;
use crate::sink::SharedSink;
use crate::stream::StreamId;
use crate::telemetry;
use crate::time::Timestamp;

/// What the replicator sees of a driver.
#[derive(Debug)]
pub(crate) struct DriverShared {
    pub(crate) stream: StreamId,
    pub(crate) sink: String,
    pub(crate) options: SinkOptions,
    /// The highest sequence applied or skipped past.
    pub(crate) cursor: AtomicU64,
    counters: Mutex<Counters>,
    metrics: DriverMetrics,
    /// Bumped to cut a retry's backoff short ([`DriverShared::retry_now`]).
    retry_now: watch::Sender<u64>,
    /// Whether the driver waits out a retry's backoff now.
    retry_waiting: AtomicBool,
}

/// The driver's metric handles, registered once (and at zero, so that
/// every series exists from the start).
#[derive(Debug)]
struct DriverMetrics {
    sent: metrics::Counter,
    retries: metrics::Counter,
    dead_lettered: metrics::Counter,
    discarded_retention: metrics::Counter,
    discarded_unrepresentable: metrics::Counter,
    lag_events: metrics::Gauge,
    lag_seconds: metrics::Gauge,
}

impl DriverMetrics {
    fn new(stream: &StreamId, sink: &str) -> Self {
        let labels = [
            ("stream", stream.as_str().to_owned()),
            ("sink", sink.to_owned()),
        ];
        let discarded = |reason: &'static str| {
            let mut with_reason = labels.to_vec();
            with_reason.push(("reason", reason.to_owned()));
            let counter = metrics::counter!(telemetry::SINK_DISCARDED_EVENTS, &with_reason);
            counter.increment(0);
            counter
        };
        let counter = |name: &'static str| {
            let counter = metrics::counter!(name, &labels);
            counter.increment(0);
            counter
        };
        Self {
            sent: counter(telemetry::SINK_SENT_EVENTS),
            retries: counter(telemetry::SINK_RETRIES),
            dead_lettered: counter(telemetry::SINK_DEAD_LETTERED_EVENTS),
            discarded_retention: discarded(telemetry::REASON_RETENTION),
            discarded_unrepresentable: discarded(telemetry::REASON_UNREPRESENTABLE),
            lag_events: metrics::gauge!(telemetry::SINK_LAG_EVENTS, &labels),
            lag_seconds: metrics::gauge!(telemetry::SINK_LAG_SECONDS, &labels),
        }
    }

    fn error(stream: &StreamId, sink: &str, kind: &'static str) {
        let labels = [
            ("stream", stream.as_str().to_owned()),
            ("sink", sink.to_owned()),
            ("kind", kind.to_owned()),
        ];
        metrics::counter!(telemetry::SINK_ERRORS, &labels).increment(1);
    }
}

#[derive(Debug)]
struct Counters {
    state: SinkState,
    applied: u64,
    batches: u64,
    retries: u64,
    dead_lettered: u64,
    skipped: u64,
    discarded: u64,
    last_error: Option<String>,
    last_error_kind: Option<&'static str>,
    /// The last sequence of the failed attempt (none: no records were
    /// being applied, e.g. the checkpoint could not be read).
    failed_through: Option<u64>,
    oldest_pending: Option<Timestamp>,
}

impl DriverShared {
    pub(crate) fn new(stream: StreamId, sink: String, options: SinkOptions, cursor: u64) -> Self {
        Self {
            metrics: DriverMetrics::new(&stream, &sink),
            stream,
            sink,
            options,
            cursor: AtomicU64::new(cursor),
            counters: Mutex::new(Counters {
                state: SinkState::Healthy,
                applied: 0,
                batches: 0,
                retries: 0,
                dead_lettered: 0,
                skipped: 0,
                discarded: 0,
                last_error: None,
                last_error_kind: None,
                failed_through: None,
                oldest_pending: None,
            }),
            retry_now: watch::Sender::new(0),
            retry_waiting: AtomicBool::new(false),
        }
    }

    /// Ends the backoff the driver waits out before its next attempt, if
    /// it waits in one (an operator who fixed the sink's backend need not
    /// wait up to the policy's longest delay); `true` when it did.
    pub(crate) fn retry_now(&self) -> bool {
        let waiting = self.retry_waiting.load(Ordering::Acquire);
        if waiting {
            self.retry_now.send_modify(|n| *n = n.wrapping_add(1));
        }
        waiting
    }

    fn counters(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Acquire)
    }

    /// The lag budget, if the sink is required.
    pub(crate) fn budget(&self) -> Option<(u64, crate::delivery::WhenFull)> {
        match self.options.mode {
            DeliveryMode::Required {
                max_lag_events,
                when_full,
            } => Some((max_lag_events, when_full)),
            DeliveryMode::BestEffort => None,
        }
    }

    /// Sets the lag gauges from a snapshot.
    pub(crate) fn update_gauges(&self, head: u64) -> SinkSnapshot {
        let snapshot = self.snapshot(head);
        self.metrics.lag_events.set(snapshot.lag_events as f64);
        self.metrics.lag_seconds.set(snapshot.lag_seconds);
        snapshot
    }

    pub(crate) fn snapshot(&self, head: u64) -> SinkSnapshot {
        let c = self.counters();
        let checkpoint = self.cursor();
        let lag_events = head.saturating_sub(checkpoint);
        let lag_seconds = match (lag_events, c.oldest_pending) {
            (0, _) | (_, None) => 0.0,
            (_, Some(oldest)) => Timestamp::now()
                .saturating_duration_since(oldest)
                .as_secs_f64(),
        };
        SinkSnapshot {
            stream: self.stream.as_str().to_owned(),
            sink: self.sink.clone(),
            encoding: self.options.encoding.to_string(),
            required: self.options.is_required(),
            state: c.state,
            checkpoint,
            head,
            lag_events,
            lag_seconds,
            applied: c.applied,
            batches: c.batches,
            retries: c.retries,
            dead_lettered: c.dead_lettered,
            skipped: c.skipped,
            discarded: c.discarded,
            last_error: c.last_error.clone(),
        }
    }
}

/// Everything a driver task owns.
pub(crate) struct Driver<E> {
    pub(crate) stream: Arc<StreamState<E>>,
    pub(crate) shared: Arc<DriverShared>,
    pub(crate) sink: SharedSink,
    pub(crate) codec: Arc<dyn Codec<E>>,
    pub(crate) store: Option<Arc<dyn CheckpointStore>>,
    pub(crate) dead_letters: Arc<Mutex<DeadLetterLog>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) seed: u64,
    /// The sink says it holds the stream through this sequence, past what
    /// the log had numbered when it said so: its records up to here are
    /// another log's (a machine crash lost the log's last records, or
    /// another node writes the same stream to it). The log's own records
    /// with these sequences are dead-lettered, never taken for the sink's.
    pub(crate) conflict_through: u64,
    /// The same for a replica's stream ([`DurableOptions::replicas`]): the
    /// sink's records up to here are the log's own, written from the
    /// primary's; the log's records up to here are skipped for it.
    ///
    /// [`DurableOptions::replicas`]: crate::DurableOptions::replicas
    pub(crate) held_through: u64,
}

/// A run of records to deliver.
enum Piece<E> {
    /// Records of an event batch (from the tail, or decoded from disk).
    Slice(TailSlice<EventBatch<E>>),
    /// A stored record the codec cannot read: straight to the dead letters.
    Unreadable(StoredRecord, Error),
    /// Records lost to damage in a sealed segment of the log: each is
    /// dead-lettered (without its bytes).
    Damaged(Damaged, Timestamp),
}

impl<E> Piece<E> {
    fn first(&self) -> (u64, Timestamp) {
        match self {
            Self::Slice(s) => {
                let h = &s.batch.headers()[s.range.start];
                (h.sequence, h.timestamp)
            }
            Self::Unreadable(r, _) => (r.sequence, r.timestamp),
            Self::Damaged(d, seen) => (d.first, *seen),
        }
    }

    fn last_sequence(&self) -> u64 {
        match self {
            Self::Slice(s) => s.batch.first_sequence() + s.range.end as u64 - 1,
            Self::Unreadable(r, _) => r.sequence,
            Self::Damaged(d, _) => d.last,
        }
    }
}

/// Where a new driver starts.
#[derive(Debug)]
pub(crate) struct Start {
    pub(crate) cursor: u64,
    /// The sink keeps its own checkpoint but could not say it yet: the
    /// driver asks again before delivering.
    needs_sink_checkpoint: Option<Error>,
    /// See [`Driver::conflict_through`].
    conflict_through: u64,
    /// See [`Driver::held_through`].
    held_through: u64,
}

impl Start {
    fn at(cursor: u64) -> Self {
        Self {
            cursor,
            needs_sink_checkpoint: None,
            conflict_through: 0,
            held_through: 0,
        }
    }

    /// The start, kept within what `stream` has numbered: a checkpoint
    /// past it is not the log's (see [`Driver::conflict_through`]).
    fn within<E: ReplicationEvent>(mut self, stream: &StreamState<E>, sink: &str) -> Self {
        // A log that started after a sink's records has nothing before
        // that for any sink: none of it counts as missed.
        self.cursor = self.cursor.max(stream.log.started_after());
        let last = stream.log.last_sequence();
        // Past any sequence a log hands out: the sink wants none.
        if self.cursor > last && self.cursor <= Sequencer::MAX && stream.replica {
            tracing::info!(
                stream = %stream.id, sink, checkpoint = self.cursor, log = last,
                "a sink of a replica holds records the log has not reached yet; they are skipped for it"
            );
            self.held_through = self.cursor;
            self.cursor = last;
        } else if self.cursor > last && self.cursor <= Sequencer::MAX {
            tracing::error!(
                stream = %stream.id, sink, checkpoint = self.cursor, log = last,
                "a sink holds records past the log's last; the log's records up to its checkpoint go to its dead letters"
            );
            self.conflict_through = self.cursor;
            self.cursor = last;
        }
        self
    }
}

/// Why the driver stops delivering a batch.
enum Stop {
    Shutdown,
}

/// Where a sink that answered `mark` starts: after its mark when it holds
/// records; from the log's start when it holds none (`Some(0)`) but the
/// `saved` checkpoint says it applied some (it lost them); at `otherwise`
/// (the saved checkpoint, or per [`StartFrom`]) when it never had any or
/// does not keep track (`None`).
fn sink_start(
    mark: Option<u64>,
    saved: Option<u64>,
    otherwise: u64,
    stream: &StreamId,
    sink: &str,
) -> u64 {
    match (mark, saved) {
        (Some(mark), _) if mark > 0 => mark,
        (Some(_), Some(saved)) if saved > 0 => {
            tracing::warn!(
                %stream, sink, saved,
                "the sink holds none of the records it applied (its store was lost or replaced); delivering them again from the start of the log"
            );
            0
        }
        _ => otherwise,
    }
}

impl<E: ReplicationEvent> Driver<E> {
    /// Resolves where to start: the sink's own checkpoint if it keeps one,
    /// else the saved one, else per [`StartFrom`]. A sink that says it
    /// holds nothing (`Some(0)`) starts per [`StartFrom`] when it never
    /// had anything, and from the log's start when the saved checkpoint
    /// says it had: it lost what it held (a receiver's disk replaced), and
    /// is filled again as far as the log goes. A sink that cannot
    /// answer yet (a retryable error: its backend is down) does not stop
    /// the replicator: the driver starts from the saved position and asks
    /// the sink again, with backoff, before it delivers anything
    /// ([`Start::needs_sink_checkpoint`]). Any other error is returned.
    /// `answered` is the sink's answer when the caller already asked.
    pub(crate) async fn starting_cursor(
        sink: &SharedSink,
        answered: Option<Result<Option<u64>, SinkError>>,
        store: Option<&Arc<dyn CheckpointStore>>,
        stream: &StreamState<E>,
        sink_name: &str,
        start: StartFrom,
    ) -> Result<Start, Error> {
        let answer = match answered {
            Some(answer) => answer,
            None => sink.checkpoint_dyn(&stream.id).await,
        };
        // `Some`: the sink could not answer yet.
        let (mark, unanswered) = match answer {
            Ok(Some(mark)) if mark > 0 => return Ok(Start::at(mark).within(stream, sink_name)),
            Ok(mark) => (mark, None),
            // A sink that cannot work (misconfigured, say) stops the start.
            Err(e) if !e.error().is_retryable() => {
                return Err(e
                    .into_error()
                    .about(format_args!("sink {sink_name} (stream {})", stream.id)));
            }
            Err(e) => (None, Some(e.into_error())),
        };
        let saved = match store {
            Some(store) => store.load(&stream.id, sink_name).map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot read the checkpoint of sink {sink_name}"),
                )
                .with_source(e)
            })?,
            None => None,
        };
        let otherwise = saved.unwrap_or_else(|| match start {
            StartFrom::Earliest => 0,
            StartFrom::Latest => stream.log.last_sequence(),
            StartFrom::After(sequence) => sequence.min(stream.log.last_sequence()),
        });
        let fallback = sink_start(mark, saved, otherwise, &stream.id, sink_name);
        Ok(Start {
            cursor: fallback,
            needs_sink_checkpoint: unanswered,
            conflict_through: 0,
            held_through: 0,
        }
        .within(stream, sink_name))
    }

    /// Asks the sink for its checkpoint until it answers (the first
    /// attempt failed with `first`); `Err` on shutdown.
    async fn resolve_sink_checkpoint(&mut self, first: Error) -> Result<(), Stop> {
        let mut backoff = Backoff::new(self.shared.options.retry, self.seed);
        let mut error = first;
        loop {
            self.note_error(&error);
            self.shared.counters().retries += 1;
            self.shared.metrics.retries.increment(1);
            // Nothing to dead-letter here: past the policy's attempts,
            // keep asking at the longest delay.
            let delay = backoff.next_delay().unwrap_or_else(|| {
                Backoff::ceiling(&self.shared.options.retry, backoff.failures())
            });
            self.set_state(if backoff.failures() >= 5 {
                SinkState::Failing
            } else {
                SinkState::Retrying
            });
            self.backoff(delay).await?;
            match self.sink.checkpoint_dyn(&self.stream.id).await {
                Ok(mark) => {
                    // Read again only for a sink that says it holds
                    // nothing (unreadable: as if nothing was saved).
                    let saved = match (mark, &self.store) {
                        (Some(0), Some(store)) => store
                            .load(&self.stream.id, &self.shared.sink)
                            .unwrap_or(None),
                        _ => None,
                    };
                    let cursor = sink_start(
                        mark,
                        saved,
                        self.shared.cursor(),
                        &self.stream.id,
                        &self.shared.sink,
                    );
                    let start = Start::at(cursor).within(&self.stream, &self.shared.sink);
                    self.conflict_through = start.conflict_through;
                    self.held_through = start.held_through;
                    self.heal(start.cursor);
                    return Ok(());
                }
                Err(e) => error = e.into_error(),
            }
        }
    }

    pub(crate) async fn run(mut self, start: Start) {
        self.conflict_through = start.conflict_through;
        self.held_through = start.held_through;
        if let Some(error) = start.needs_sink_checkpoint
            && self.resolve_sink_checkpoint(error).await.is_err()
        {
            self.set_state(SinkState::Stopped);
            return;
        }
        let mut cursor = self.shared.cursor();
        let mut saved = cursor;
        let mut last_save = Instant::now();
        // With a rate limit: when the records delivered so far are paid for.
        let mut paced_until: Option<Instant> = None;
        // Where reading the log's files stopped, while catching up.
        let mut disk = None;
        loop {
            // A checkpoint held back by the interval is saved once the
            // interval is over even if nothing more comes: a quiet stream
            // must not keep a stale checkpoint until the next event (a
            // longer re-delivery after a crash, a lag in `log inspect`,
            // segments retention could delete).
            let waited = if cursor == saved {
                self.wait_for_records(cursor).await
            } else {
                let due = last_save + self.shared.options.checkpoint_interval;
                match tokio::time::timeout_at(due.into(), self.wait_for_records(cursor)).await {
                    Ok(waited) => waited,
                    Err(_) => {
                        self.save(cursor).await;
                        saved = cursor;
                        last_save = Instant::now();
                        continue;
                    }
                }
            };
            let Some(visible) = waited else {
                break;
            };
            if self.linger(cursor, visible).await.is_err() {
                break;
            }
            let pieces = match self.fetch(cursor, &mut disk).await {
                Ok(Fetched::Pieces(pieces)) => pieces,
                Ok(Fetched::SkipTo(first)) => {
                    self.discard(cursor, first);
                    cursor = first - 1;
                    self.advance(cursor);
                    continue;
                }
                Err(err) => {
                    // The log cannot be read (I/O error, damaged segment):
                    // an operator must look; keep trying.
                    self.note_error(&err);
                    self.set_state(SinkState::Failing);
                    if self.pause(Duration::from_millis(200)).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let Some(last) = pieces.last().map(Piece::last_sequence) else {
                // Nothing readable yet though the log says there is: do
                // not spin.
                if self.pause(Duration::from_millis(10)).await.is_err() {
                    break;
                }
                continue;
            };
            if let Some((first, timestamp)) = pieces.first().map(Piece::first) {
                if first > cursor + 1 {
                    self.discard(cursor, first);
                }
                self.shared.counters().oldest_pending = Some(timestamp);
            }
            let before = cursor;
            match self.deliver(pieces, &mut cursor).await {
                Ok(()) => {}
                Err(Stop::Shutdown) => break,
            }
            cursor = cursor.max(last);
            self.advance(cursor);
            if let Some(per_second) = self.shared.options.max_events_per_second
                && self
                    .pace(&mut paced_until, cursor - before, per_second)
                    .await
                    .is_err()
            {
                break;
            }
            let head = self.stream.log.progress().borrow().visible;
            if cursor >= head {
                self.shared.counters().oldest_pending = None;
            }
            self.shared.update_gauges(head);
            if cursor != saved && last_save.elapsed() >= self.shared.options.checkpoint_interval {
                self.save(cursor).await;
                saved = cursor;
                last_save = Instant::now();
            }
        }
        if cursor != saved {
            self.save(cursor).await;
        }
        self.set_state(SinkState::Stopped);
    }

    fn is_shutdown(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Waits until records past `cursor` are visible; `None` on shutdown
    /// or when the log is gone.
    async fn wait_for_records(&mut self, cursor: u64) -> Option<u64> {
        let mut progress = self.stream.log.progress();
        loop {
            if self.is_shutdown() {
                return None;
            }
            let now = *progress.borrow_and_update();
            if now.visible > cursor {
                return Some(now.visible);
            }
            if now.closed {
                return None;
            }
            tokio::select! {
                changed = progress.changed() => if changed.is_err() { return None },
                _ = self.shutdown.changed() => {}
            }
        }
    }

    /// With a linger time, waits (up to it) for a full batch.
    async fn linger(&mut self, cursor: u64, mut visible: u64) -> Result<(), Stop> {
        let linger = self.shared.options.batch.linger;
        if linger.is_zero() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + linger;
        // After each wake-up the batch is looked at again only this much
        // later, so that appends in between cost one wake-up, not one each
        // (under `none` and `memory` durability every append is visible
        // at once); a full batch waits at most this much more.
        let settle = (linger / 16).clamp(Duration::from_millis(1), Duration::from_millis(10));
        let mut progress = self.stream.log.progress();
        let wanted = self.shared.options.batch.max_events as u64;
        while visible - cursor < wanted {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                changed = progress.changed() => if changed.is_err() { return Ok(()) },
                _ = self.shutdown.changed() => if self.is_shutdown() { return Err(Stop::Shutdown) },
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + settle)) => {}
                _ = self.shutdown.changed() => if self.is_shutdown() { return Err(Stop::Shutdown) },
            }
            visible = progress.borrow_and_update().visible;
        }
        Ok(())
    }

    /// Waits until `delivered` more records fit in the rate limit: each
    /// costs `1 / per_second` seconds, counted from the later of now and
    /// when the earlier ones were paid for (idle time is not saved up).
    async fn pace(
        &mut self,
        until: &mut Option<Instant>,
        delivered: u64,
        per_second: u64,
    ) -> Result<(), Stop> {
        let now = Instant::now();
        let start = until.filter(|t| *t > now).unwrap_or(now);
        let next = start + Duration::from_secs_f64(delivered as f64 / per_second.max(1) as f64);
        *until = Some(next);
        self.pause(next.saturating_duration_since(now)).await
    }

    /// Waits out a retry's backoff: `delay`, or until
    /// [`DriverShared::retry_now`].
    async fn backoff(&mut self, delay: Duration) -> Result<(), Stop> {
        // Subscribed before it says it waits: a wake-up after that is seen.
        let mut wake = self.shared.retry_now.subscribe();
        self.shared.retry_waiting.store(true, Ordering::Release);
        let waited = tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = wake.changed() => {
                tracing::info!(stream = %self.stream.id, sink = %self.shared.sink, "retrying now, as asked");
                Ok(())
            }
            _ = self.shutdown.changed() => if self.is_shutdown() { Err(Stop::Shutdown) } else { Ok(()) },
        };
        self.shared.retry_waiting.store(false, Ordering::Release);
        waited
    }

    async fn pause(&mut self, delay: Duration) -> Result<(), Stop> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.shutdown.changed() => if self.is_shutdown() { Err(Stop::Shutdown) } else { Ok(()) },
        }
    }

    async fn fetch(
        &self,
        cursor: u64,
        disk: &mut Option<BatchReader>,
    ) -> Result<Fetched<E>, Error> {
        let batch = self.shared.options.batch;
        let from = cursor + 1;
        let log = &self.stream.log;
        let older = match log.read_tail(from, batch.max_events, batch.max_bytes) {
            TailRead::Slices(slices) => {
                // Caught up with the memory tail: the place in the files
                // (and its buffer) is no longer needed.
                *disk = None;
                return Ok(Fetched::Pieces(
                    slices.into_iter().map(Piece::Slice).collect(),
                ));
            }
            TailRead::Before(first) => Some(first),
            TailRead::Empty => None,
        };
        let Some(mut reader) = disk.take().or_else(|| log.reader().map(BatchReader::new)) else {
            // The memory ring dropped what this sink had not read.
            return Ok(match older {
                Some(first) => Fetched::SkipTo(first),
                None => Fetched::Pieces(Vec::new()),
            });
        };
        let visible = log.progress().borrow().visible;
        let (reader, stored) = tokio::task::spawn_blocking(move || {
            let stored = reader.read(from, visible, batch.max_events, batch.max_bytes);
            (reader, stored)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, "log read task failed").with_source(e))?;
        *disk = Some(reader);
        let (stored, damaged) = stored?;
        // Consecutive readable records become one event batch.
        let mut pieces = Vec::new();
        let mut run = Vec::new();
        let mut run_encoding = None;
        let flush = |run: &mut Vec<(u64, Timestamp, E, bytes::Bytes)>,
                     encoding: Option<crate::event::Encoding>,
                     pieces: &mut Vec<Piece<E>>| {
            if let (false, Some(encoding)) = (run.is_empty(), encoding) {
                let batch = EventBatch::from_stored(&self.stream.id, std::mem::take(run), encoding);
                let len = batch.len();
                pieces.push(Piece::Slice(TailSlice {
                    batch: Arc::new(batch),
                    range: 0..len,
                }));
            }
        };
        for record in stored {
            if run_encoding.is_some_and(|e| e != record.encoding) {
                flush(&mut run, run_encoding, &mut pieces);
            }
            match self.codec.decode(record.encoding.format, &record.payload) {
                Ok(event) => {
                    run_encoding = Some(record.encoding);
                    run.push((record.sequence, record.timestamp, event, record.payload));
                }
                Err(err) => {
                    flush(&mut run, run_encoding, &mut pieces);
                    pieces.push(Piece::Unreadable(record, err.into()));
                }
            }
        }
        flush(&mut run, run_encoding, &mut pieces);
        if let Some(damaged) = damaged {
            // The time it was found: the records' own are lost with them.
            pieces.push(Piece::Damaged(damaged, Timestamp::now()));
        }
        Ok(Fetched::Pieces(pieces))
    }

    fn discard(&self, cursor: u64, first: u64) {
        // What a log that began after `started_after` never had is not
        // missed (see `DurableReplicator::begin_after`).
        let dropped = first.saturating_sub(cursor.max(self.stream.log.started_after()) + 1);
        if dropped == 0 {
            return;
        }
        self.shared.counters().discarded += dropped;
        self.shared.metrics.discarded_retention.increment(dropped);
        if self.shared.options.is_required() {
            tracing::error!(
                stream = %self.stream.id, sink = %self.shared.sink, dropped,
                "records a required sink had not applied are gone from the log"
            );
        } else {
            tracing::warn!(
                stream = %self.stream.id, sink = %self.shared.sink, dropped,
                "best-effort sink fell behind retention and skipped ahead"
            );
        }
    }

    /// Encodes the batch for the sink and applies it, retrying transient
    /// failures and dead-lettering poison records. Moves `cursor` as far
    /// as the sink durably got.
    async fn deliver(&mut self, pieces: Vec<Piece<E>>, cursor: &mut u64) -> Result<(), Stop> {
        let encoding = self.shared.options.encoding;
        let forms: Vec<_> = pieces
            .iter()
            .map(|piece| match piece {
                Piece::Slice(slice) => Some(slice.batch.form(self.codec.as_ref(), encoding)),
                Piece::Unreadable(..) | Piece::Damaged(..) => None,
            })
            .collect();
        let mut records: Vec<Record<'_>> = Vec::with_capacity(self.shared.options.batch.max_events);
        let mut letters = Vec::new();
        let mut lost = Vec::new();
        for (piece, form) in pieces.iter().zip(&forms) {
            match (piece, form) {
                (Piece::Slice(slice), Some(form)) => {
                    for index in slice.range.clone() {
                        match slice.batch.record(index, form) {
                            Some(Ok(record)) if record.sequence() <= self.conflict_through => {
                                letters.push(self.letter(&record, &self.conflict()));
                            }
                            Some(Ok(record)) if record.sequence() <= self.held_through => {}
                            Some(Ok(record)) => records.push(record),
                            Some(Err(err)) if err.kind() == CodecErrorKind::Unrepresentable => {
                                self.shared.counters().skipped += 1;
                                self.shared.metrics.discarded_unrepresentable.increment(1);
                            }
                            Some(Err(err)) => letters.push(DeadLetter::new(
                                &self.shared.sink,
                                &self.stream.id,
                                &slice.batch.headers()[index],
                                &self.stream.log.encoding().to_string(),
                                slice.batch.payload(index),
                                &err.clone().into(),
                            )),
                            None => {}
                        }
                    }
                }
                (Piece::Unreadable(stored, err), _) => {
                    let header = RecordHeader {
                        sequence: stored.sequence,
                        timestamp: stored.timestamp,
                        kind: EventKind {
                            code: 0,
                            name: "unreadable",
                        },
                        peer: None,
                    };
                    letters.push(DeadLetter::new(
                        &self.shared.sink,
                        &self.stream.id,
                        &header,
                        &stored.encoding.to_string(),
                        &stored.payload,
                        err,
                    ));
                }
                (Piece::Damaged(damaged, _), _) => {
                    tracing::error!(
                        stream = %self.stream.id, sink = %self.shared.sink,
                        first = damaged.first, last = damaged.last, error = %damaged.error,
                        "records lost to damage in the log are dead-lettered"
                    );
                    self.note_error(&damaged.error);
                    lost.push(damaged);
                }
                (Piece::Slice(_), None) => {}
            }
        }
        self.dead_letters(letters).await?;
        // A stretch lost to damage can be a whole segment's records: its
        // letters go in bounded groups.
        let encoding = self.stream.log.encoding().to_string();
        for damaged in lost {
            let mut next = damaged.first;
            while next <= damaged.last {
                let end = damaged.last.min(next + 4095);
                let group = (next..=end)
                    .map(|sequence| {
                        DeadLetter::unreadable(
                            &self.shared.sink,
                            &self.stream.id,
                            sequence,
                            &encoding,
                            &damaged.error,
                        )
                    })
                    .collect();
                self.dead_letters(group).await?;
                next = end + 1;
            }
        }
        let mut backoff = Backoff::new(self.shared.options.retry, self.seed);
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut rest: &[Record<'_>] = &records;
        let mut one_by_one = false;
        while !rest.is_empty() {
            let chunk = if one_by_one { &rest[..1] } else { rest };
            match self.sink.apply_dyn(chunk).await {
                Ok(()) => {
                    if self.applied(chunk, cursor) {
                        // Only a success makes a failing sink healthy
                        // (moving past dead-lettered records does not).
                        self.heal(*cursor);
                    }
                    rest = &rest[chunk.len()..];
                    backoff.reset();
                }
                Err(err) => {
                    if let Some(through) = err.applied_through_sequence() {
                        let done = chunk.iter().take_while(|r| r.sequence() <= through).count();
                        self.applied(&chunk[..done], cursor);
                        rest = &rest[done..];
                    }
                    let error = err.into_error();
                    self.note_error(&error);
                    if rest.is_empty() {
                        break;
                    }
                    self.shared.counters().failed_through = chunk.last().map(Record::sequence);
                    if error.is_retryable() {
                        self.shared.counters().retries += 1;
                        self.shared.metrics.retries.increment(1);
                        match backoff.next_delay() {
                            Some(delay) => {
                                let delay =
                                    error.retry_after().map_or(delay, |after| after.max(delay));
                                self.set_state(if backoff.failures() >= 5 {
                                    SinkState::Failing
                                } else {
                                    SinkState::Retrying
                                });
                                self.backoff(delay).await?;
                            }
                            None => {
                                // Out of attempts: the batch goes to the dead letters.
                                for record in rest {
                                    self.dead_letter(self.letter(record, &error)).await?;
                                    *cursor = record.sequence();
                                }
                                rest = &[];
                                backoff.reset();
                            }
                        }
                    } else if chunk.len() > 1 {
                        // Find the poison record by applying one at a time.
                        one_by_one = true;
                    } else {
                        let record = &rest[0];
                        self.dead_letter(self.letter(record, &error)).await?;
                        *cursor = record.sequence();
                        rest = &rest[1..];
                    }
                }
            }
        }
        Ok(())
    }

    /// Why a record at or below [`Driver::conflict_through`] is not
    /// applied.
    fn conflict(&self) -> Error {
        Error::new(
            ErrorKind::Config,
            format!(
                "sink {} already holds stream {} through sequence {} from another log (this node's data was lost, or another node writes the same stream to it): this record would be taken for the one it holds",
                self.shared.sink, self.stream.id, self.conflict_through
            ),
        )
    }

    /// The dead letter of `record`, refused with `error`.
    fn letter(&self, record: &Record<'_>, error: &Error) -> DeadLetter {
        DeadLetter::new(
            &self.shared.sink,
            record.stream(),
            record.header(),
            &record.encoding().to_string(),
            record.bytes(),
            error,
        )
    }

    /// Counts records the sink applied and moves `cursor` past them;
    /// whether the sink was not healthy until now.
    fn applied(&self, records: &[Record<'_>], cursor: &mut u64) -> bool {
        let Some(last) = records.last() else {
            return false;
        };
        *cursor = last.sequence();
        self.shared.metrics.sent.increment(records.len() as u64);
        let mut c = self.shared.counters();
        c.applied += records.len() as u64;
        c.batches += 1;
        c.last_error = None;
        c.state != SinkState::Healthy
    }

    /// Changes the state, logging the change (one line per change, not
    /// per event or per attempt).
    fn set_state(&self, state: SinkState) {
        self.set_state_at(state, self.shared.cursor());
    }

    /// Marks the sink healthy at `cursor`, then moves it there: the state
    /// first, so whoever sees the cursor move (`wait_caught_up`, a
    /// snapshot) sees a healthy sink, not the failing state it left.
    fn heal(&self, cursor: u64) {
        self.set_state_at(SinkState::Healthy, cursor);
        self.advance(cursor);
    }

    /// [`Self::set_state`] with the checkpoint the change is logged at.
    fn set_state_at(&self, state: SinkState, cursor: u64) {
        let (previous, last_error, kind, failed_through) = {
            let mut c = self.shared.counters();
            let previous = std::mem::replace(&mut c.state, state);
            (
                previous,
                c.last_error.clone(),
                c.last_error_kind,
                c.failed_through.take(),
            )
        };
        if previous == state {
            return;
        }
        let (stream, sink) = (&self.stream.id, &self.shared.sink);
        let error = last_error.as_deref().unwrap_or_default();
        let kind = kind.unwrap_or_default();
        // The records being retried: from the checkpoint to the end of the
        // failed attempt.
        let from_sequence = cursor + 1;
        let to_sequence = failed_through.unwrap_or(from_sequence).max(from_sequence);
        match state {
            SinkState::Healthy => {
                tracing::info!(%stream, %sink, checkpoint = cursor, "sink healthy")
            }
            SinkState::Retrying => {
                tracing::warn!(%stream, %sink, kind, error, from_sequence, to_sequence, "sink failing; retrying");
            }
            SinkState::Failing => {
                tracing::error!(%stream, %sink, kind, error, from_sequence, to_sequence, "sink keeps failing");
            }
            SinkState::Stopped => {
                tracing::debug!(%stream, %sink, checkpoint = cursor, "sink stopped")
            }
        }
    }

    /// Records a failure: the last error (shown in snapshots and the next
    /// state-change line) and the error counter.
    fn note_error(&self, error: &Error) {
        DriverMetrics::error(&self.stream.id, &self.shared.sink, error.kind().as_str());
        let mut c = self.shared.counters();
        c.last_error = Some(error.to_string());
        c.last_error_kind = Some(error.kind().as_str());
    }

    /// Appends to the sink's dead-letter log, retrying until it is written:
    /// moving past a record that is in neither the sink nor the dead
    /// letters would lose it.
    async fn dead_letter(&mut self, letter: DeadLetter) -> Result<(), Stop> {
        self.dead_letters(vec![letter]).await
    }

    /// [`dead_letter`](Self::dead_letter) for several, with one sync.
    async fn dead_letters(&mut self, letters: Vec<DeadLetter>) -> Result<(), Stop> {
        let (Some(first), Some(last)) = (letters.first(), letters.last()) else {
            return Ok(());
        };
        let (first, last, count) = (first.sequence, last.sequence, letters.len() as u64);
        let letters = Arc::new(letters);
        let mut backoff = Backoff::new(self.shared.options.retry, self.seed);
        loop {
            let log = self.dead_letters.clone();
            let entries = letters.clone();
            let written = tokio::task::spawn_blocking(move || {
                log.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .append_all(&entries)
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    // A line each, as each needs an operator; a whole
                    // damaged stretch of the log in one.
                    if letters.len() <= 10 {
                        for letter in letters.iter() {
                            tracing::warn!(stream = %self.stream.id, sink = %self.shared.sink, sequence = letter.sequence, kind = %letter.error_kind, error = %letter.error, "event dead-lettered");
                        }
                    } else {
                        let letter = &letters[0];
                        tracing::warn!(stream = %self.stream.id, sink = %self.shared.sink, first, last, count, kind = %letter.error_kind, error = %letter.error, "events dead-lettered");
                    }
                    self.shared.counters().dead_lettered += count;
                    self.shared.metrics.dead_lettered.increment(count);
                    return Ok(());
                }
                Ok(Err(e)) => self.note_error(
                    &Error::new(ErrorKind::Unavailable, "cannot write the dead-letter log")
                        .with_source(e),
                ),
                Err(e) => self.note_error(
                    &Error::new(ErrorKind::Internal, "dead-letter task failed").with_source(e),
                ),
            }
            let delay = backoff.next_delay().unwrap_or(Duration::from_secs(1));
            self.backoff(delay).await?;
        }
    }

    fn advance(&self, cursor: u64) {
        self.shared.cursor.store(cursor, Ordering::Release);
        self.stream.driver_advanced();
    }

    async fn save(&self, cursor: u64) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let (stream, sink) = (self.stream.id.clone(), self.shared.sink.clone());
        let saved = tokio::task::spawn_blocking(move || store.save(&stream, &sink, cursor)).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(stream = %self.stream.id, sink = %self.shared.sink, error = %e, "cannot save the checkpoint (re-delivery after a restart will be longer)");
        }
    }
}

enum Fetched<E> {
    Pieces(Vec<Piece<E>>),
    /// The records before this sequence are gone (memory ring).
    SkipTo(u64),
}
