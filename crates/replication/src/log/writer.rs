//! [`StreamLog`]: the append path of one stream's log, with group commit
//! on a dedicated writer thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::error::{Error, ErrorKind};
use crate::event::Encoding;
use crate::log::LogBatch;
use crate::log::disk::{Disk, Recovery};
use crate::log::frame;
use crate::log::options::{Durability, LogOptions};
use crate::log::reader::LogReader;
use crate::log::tail::{Tail, TailRead, batch_bytes};
use crate::stream::StreamId;
use crate::telemetry;

/// Where a stream's log stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The highest sequence acknowledged under the durability policy.
    pub acked: u64,
    /// The highest sequence readers may see (for `interval`, the highest
    /// synced: sinks never get ahead of what a machine crash keeps).
    pub visible: u64,
    /// The log stopped on an I/O error; see [`StreamLog::failure`].
    pub failed: bool,
    /// The log was closed.
    pub closed: bool,
}

/// Counters of a stream's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Bytes in the log's segments (for `memory`, in the ring).
    pub bytes: u64,
    /// Segment files.
    pub segments: u64,
    /// Write batches (each one `write`, and for `fsync` one `fdatasync`).
    pub batches: u64,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Bytes deleted by retention.
    pub retention_deleted_bytes: u64,
}

/// Records queued together, holding their share of the pending budget.
struct Pending<B> {
    batch: Arc<B>,
    /// Its bytes in the log, framing included.
    bytes: usize,
    _permit: OwnedSemaphorePermit,
}

struct Queue<B> {
    pending: Vec<Pending<B>>,
    last_sequence: u64,
    closing: bool,
    /// Highest sequence every sink has passed / every required sink has.
    consumed_through: u64,
    required_through: u64,
}

struct Shared<B> {
    stream: StreamId,
    /// What [`StreamLog::start_after`] set (0: the log started at 1).
    started_after: AtomicU64,
    dir: Option<PathBuf>,
    /// The writer's index of the active segment (`None` for `memory`).
    active_index: Option<crate::log::segment::SharedIndex>,
    encoding: Encoding,
    options: LogOptions,
    queue: Mutex<Queue<B>>,
    wake: Condvar,
    /// Lock order: `state`, then `queue`, then `tail` or `garbage`.
    state: Mutex<WriterState>,
    /// What publishers writing inline evicted from the tail, for the
    /// writer thread to free.
    garbage: Mutex<Garbage<B>>,
    tail: Mutex<Tail<B>>,
    /// The log's progress for readers: notified when what is visible
    /// changes, or the log fails or closes (a record acknowledged but not
    /// yet visible wakes no reader).
    progress: watch::Sender<Progress>,
    /// The same progress for publishers: notified on every change.
    acked: watch::Sender<Progress>,
    failure: OnceLock<String>,
    pending_bytes: Arc<Semaphore>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    bytes: AtomicU64,
    segments: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    retention_deleted_bytes: AtomicU64,
}

/// The log of one stream: appends go to a writer thread that writes every
/// queued record with one `write` and, under `fsync`, one `fdatasync`
/// (group commit), then acknowledges them all. Under `interval` and `none`
/// a publisher writes the queue on its own thread when nobody else is
/// writing; the thread then only syncs, applies retention and frees what
/// left the tail.
pub struct StreamLog<B> {
    shared: Arc<Shared<B>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B: LogBatch> StreamLog<B> {
    /// Opens the log of `stream` in `dir` (ignored for `memory`
    /// durability), recovering its tail, and starts its writer thread.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] if another process has the log open;
    /// [`ErrorKind::Unavailable`] for I/O errors; [`ErrorKind::Corrupt`] if
    /// the active segment's header is unreadable.
    pub fn open(
        dir: &Path,
        stream: StreamId,
        encoding: Encoding,
        options: LogOptions,
    ) -> Result<(Self, Recovery), Error> {
        let (disk, recovery) = if options.durability.is_persistent() {
            let (disk, recovery) = Disk::open(dir, &stream, encoding, &options)?;
            (Some(disk), recovery)
        } else {
            (None, Recovery::default())
        };
        let stats = Stats::default();
        if let Some(disk) = &disk {
            stats.bytes.store(disk.total_bytes(), Ordering::Relaxed);
            stats
                .segments
                .store(disk.segment_count() as u64, Ordering::Relaxed);
        }
        // Registered even at zero, so that the series exist from the start.
        let labels = [("stream", stream.as_str().to_owned())];
        metrics::counter!(telemetry::LOG_RECOVERY_CUT_BYTES, &labels).increment(recovery.cut_bytes);
        metrics::counter!(telemetry::LOG_RECOVERY_CUTS, &labels)
            .increment(u64::from(recovery.cut_bytes > 0));
        if recovery.cut_bytes > 0 {
            tracing::warn!(
                stream = %stream, bytes = recovery.cut_bytes,
                reason = recovery.cut_reason.as_deref().unwrap_or_default(),
                "cut a damaged tail from the log"
            );
        }
        for path in &recovery.removed_files {
            tracing::warn!(
                stream = %stream, path = %path.display(),
                "removed a segment a crash left without its header (a rotation that did not finish; it held no records)"
            );
        }
        if let Some(damage) = &recovery.damage {
            let lost: Vec<String> = recovery
                .lost
                .iter()
                .map(|(first, last)| format!("{first}..={last}"))
                .collect();
            tracing::error!(
                stream = %stream, damage, lost = lost.join(", "), last = recovery.last_sequence,
                "the log's newest segment is damaged with intact records after the damage: they are kept and the segment sealed; the sequences lost to it go to each sink's dead letters, and rebuilding from the log stops there"
            );
        }
        if let Some(why) = &recovery.meta_unreadable {
            tracing::warn!(
                stream = %stream, error = %why,
                "the log's stream.json is unreadable and was written afresh (its count of recovery cuts starts again)"
            );
        }
        let last = recovery.last_sequence;
        let pending = options.max_pending_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            dir: options.durability.is_persistent().then(|| dir.to_owned()),
            active_index: disk.as_ref().map(Disk::shared_index),
            encoding,
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                last_sequence: last,
                closing: false,
                consumed_through: 0,
                required_through: u64::MAX,
            }),
            wake: Condvar::new(),
            state: Mutex::new(WriterState {
                disk,
                frames: Vec::with_capacity(1024 * 1024),
                sizes: Vec::new(),
                written: last,
                synced: last,
                last_sync: Instant::now(),
                last_retention: Instant::now(),
                last_place_check: Instant::now(),
                stopped: false,
            }),
            garbage: Mutex::new(Garbage {
                batches: Vec::new(),
                events: 0,
            }),
            tail: Mutex::new(Tail::new(options.tail_max_events, options.tail_max_bytes)),
            progress: watch::Sender::new(Progress {
                acked: last,
                visible: last,
                failed: false,
                closed: false,
            }),
            acked: watch::Sender::new(Progress {
                acked: last,
                visible: last,
                failed: false,
                closed: false,
            }),
            failure: OnceLock::new(),
            pending_bytes: Arc::new(Semaphore::new(pending)),
            stats,
            stream,
            started_after: AtomicU64::new(recovery.started_after),
            options,
        });
        let thread_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name(format!("omnirelay-log-{}", shared.stream))
            .spawn(move || run_writer(&thread_shared))
            .map_err(|e| {
                Error::new(ErrorKind::Internal, "cannot start the log writer thread").with_source(e)
            })?;
        Ok((
            Self {
                shared,
                writer: Mutex::new(Some(writer)),
            },
            recovery,
        ))
    }

    /// The stream.
    pub fn stream(&self) -> &StreamId {
        &self.shared.stream
    }

    /// The encoding of new records.
    pub fn encoding(&self) -> Encoding {
        self.shared.encoding
    }

    /// The options the log was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.shared.options
    }

    /// The last sequence appended (acknowledged or not).
    pub fn last_sequence(&self) -> u64 {
        lock(&self.shared.queue).last_sequence
    }

    /// Makes a log that never numbered a record start after `last`: its
    /// first record will be `last + 1`. For a stream whose sinks hold
    /// records this log no longer has (a `memory` log restarted, or its
    /// files lost), so that new records never take their sequences.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Internal`] once the log holds or has queued a record;
    /// [`ErrorKind::Unavailable`] if its segment cannot be replaced.
    pub fn start_after(&self, last: u64) -> Result<(), Error> {
        // The writer's order: its state, then the queue.
        let mut state = lock(&self.shared.state);
        let mut queue = lock(&self.shared.queue);
        if queue.last_sequence != 0 || !queue.pending.is_empty() || state.written != 0 {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "the log of stream {} holds records: it cannot start after {last}",
                    self.shared.stream
                ),
            ));
        }
        if let Some(disk) = state.disk.as_mut() {
            disk.start_after(last)?;
        }
        queue.last_sequence = last;
        state.written = last;
        state.synced = last;
        self.shared.started_after.store(last, Ordering::Release);
        drop(queue);
        drop(state);
        let at = Progress {
            acked: last,
            visible: last,
            failed: false,
            closed: false,
        };
        self.shared.progress.send_replace(at);
        self.shared.acked.send_replace(at);
        Ok(())
    }

    /// The sequence the log started after ([`StreamLog::start_after`],
    /// in this process or, for a log on disk, an earlier one; 0
    /// otherwise): nothing at or below it was ever in the log here.
    pub fn started_after(&self) -> u64 {
        self.shared.started_after.load(Ordering::Acquire)
    }

    /// Why the log stopped, if it did.
    pub fn failure(&self) -> Option<Error> {
        self.shared
            .failure
            .get()
            .map(|message| Error::new(ErrorKind::Closed, message.clone()))
    }

    /// Queues a batch of consecutive records (one lock, one wake-up of an
    /// idle writer), waiting while too many bytes are queued; returns the
    /// bytes it takes in the log, framing included.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] once the log is closed or stopped;
    /// [`ErrorKind::Rejected`] for a record longer than
    /// [`frame::MAX_PAYLOAD_LEN`] (which no reader, recovery included,
    /// would take back); [`ErrorKind::Internal`] if the batch does not
    /// follow the last sequence. The batch is handed back with the error.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled append queued nothing.
    pub async fn append(&self, batch: Arc<B>) -> Result<usize, (Error, Arc<B>)> {
        if let Some(err) = self.failure() {
            return Err((err, batch));
        }
        if batch.is_empty() {
            return Ok(0);
        }
        let bytes = batch_bytes(batch.as_ref());
        // A batch this small holds no record over the limit.
        if bytes > frame::MAX_PAYLOAD_LEN
            && let Some(index) =
                (0..batch.len()).find(|&i| batch.payload(i).len() > frame::MAX_PAYLOAD_LEN)
        {
            let err = Error::new(
                ErrorKind::Rejected,
                format!(
                    "the event for sequence {} is {} bytes encoded, over the log's limit of {} bytes: nothing was appended",
                    batch.first_sequence() + index as u64,
                    batch.payload(index).len(),
                    frame::MAX_PAYLOAD_LEN
                ),
            );
            return Err((err, batch));
        }
        let batch = match self.append_to_ring(batch, bytes) {
            Ok(()) => return Ok(bytes),
            Err(batch) => batch,
        };
        let cost = bytes.clamp(
            1,
            self.shared
                .options
                .max_pending_bytes
                .clamp(1, Semaphore::MAX_PERMITS),
        );
        let permit = match self
            .shared
            .pending_bytes
            .clone()
            .acquire_many_owned(u32::try_from(cost).unwrap_or(u32::MAX))
            .await
        {
            Ok(permit) => permit,
            Err(_) => return Err((self.closed_error(), batch)),
        };
        let mut queue = lock(&self.shared.queue);
        if queue.closing {
            drop(queue);
            return Err((self.closed_error(), batch));
        }
        if batch.first_sequence() != queue.last_sequence + 1 {
            let last = queue.last_sequence;
            drop(queue);
            let err = Error::new(
                ErrorKind::Internal,
                format!(
                    "append of sequence {} to stream {} after {last}",
                    batch.first_sequence(),
                    self.shared.stream
                ),
            );
            return Err((err, batch));
        }
        queue.last_sequence = batch.first_sequence() + batch.len() as u64 - 1;
        let was_idle = queue.pending.is_empty();
        queue.pending.push(Pending {
            batch,
            bytes,
            _permit: permit,
        });
        drop(queue);
        // Without a sync to wait for, a `write` to the page cache takes
        // microseconds: the publisher writes the queue itself when nobody
        // else is writing, sparing two thread hand-offs. Otherwise (or
        // when a segment must be sealed, which syncs) the writer thread
        // does it.
        let inline = matches!(
            self.shared.options.durability,
            Durability::None | Durability::Interval(_)
        );
        if inline {
            if !self.shared.write_inline() {
                self.shared.wake.notify_one();
            }
        } else if was_idle {
            // A busy writer takes everything queued when it is done; only
            // an idle one needs waking.
            self.shared.wake.notify_one();
        }
        Ok(bytes)
    }

    /// For `memory` durability, appends straight into the ring when
    /// nothing is queued ahead and there is room: no hand-off to the writer
    /// thread. Hands the batch back otherwise.
    fn append_to_ring(&self, batch: Arc<B>, bytes: usize) -> Result<(), Arc<B>> {
        if self.shared.options.durability != Durability::Memory {
            return Err(batch);
        }
        let mut queue = lock(&self.shared.queue);
        if queue.closing
            || !queue.pending.is_empty()
            || batch.first_sequence() != queue.last_sequence + 1
        {
            return Err(batch);
        }
        let last = batch.first_sequence() + batch.len() as u64 - 1;
        let count = batch.len();
        let mut evicted = Vec::new();
        let mut tail = lock(&self.shared.tail);
        if !tail.make_room(count, bytes, queue.required_through, &mut evicted) {
            return Err(batch);
        }
        tail.push(batch, bytes);
        self.shared
            .stats
            .bytes
            .store(tail.bytes() as u64, Ordering::Relaxed);
        drop(tail);
        queue.last_sequence = last;
        drop(queue);
        self.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.shared.advance(|p| {
            p.acked = last;
            p.visible = last;
        });
        // Freed outside the locks.
        drop(evicted);
        Ok(())
    }

    fn closed_error(&self) -> Error {
        self.failure().unwrap_or_else(|| {
            Error::new(
                ErrorKind::Closed,
                format!("the log of stream {} is closed", self.shared.stream),
            )
        })
    }

    /// Waits until `sequence` is acknowledged under the durability policy.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] if the log stops or closes first.
    pub async fn wait_acked(&self, sequence: u64) -> Result<(), Error> {
        let mut progress = self.shared.acked.subscribe();
        loop {
            {
                let now = progress.borrow_and_update();
                if now.acked >= sequence {
                    return Ok(());
                }
                if now.failed || now.closed {
                    return Err(self.closed_error());
                }
            }
            if progress.changed().await.is_err() {
                return Err(self.closed_error());
            }
        }
    }

    /// Waits until records beyond `sequence` are visible to readers;
    /// returns the highest visible sequence.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Closed`] if the log stops or closes first.
    pub async fn wait_visible_beyond(&self, sequence: u64) -> Result<u64, Error> {
        let mut progress = self.shared.progress.subscribe();
        loop {
            {
                let now = progress.borrow_and_update();
                if now.visible > sequence {
                    return Ok(now.visible);
                }
                if now.failed || now.closed {
                    return Err(self.closed_error());
                }
            }
            if progress.changed().await.is_err() {
                return Err(self.closed_error());
            }
        }
    }

    /// Follows the log's progress, for readers: a receiver is notified
    /// when the visible sequence changes or the log fails or closes (its
    /// `acked` is current when read, but moving alone notifies no one).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.shared.progress.subscribe()
    }

    /// Reads visible records from the in-memory tail.
    pub fn read_tail(&self, from: u64, max_events: usize, max_bytes: usize) -> TailRead<B> {
        let visible = self.shared.progress.borrow().visible;
        lock(&self.shared.tail).read(from, visible, max_events, max_bytes)
    }

    /// A reader of the log's files (`None` for `memory` durability); it
    /// also finds its way in the active segment by the writer's index.
    pub fn reader(&self) -> Option<LogReader> {
        let dir = self.shared.dir.as_deref()?;
        Some(match &self.shared.active_index {
            Some(index) => LogReader::with_active_index(dir, index.clone()),
            None => LogReader::new(dir),
        })
    }

    /// Tells retention (and, for `memory`, the ring) how far the sinks
    /// are: every sink has passed `consumed_through`; every required sink
    /// has passed `required_through` (`u64::MAX` with none).
    pub fn set_floors(&self, consumed_through: u64, required_through: u64) {
        let mut queue = lock(&self.shared.queue);
        let freed = required_through > queue.required_through;
        queue.consumed_through = consumed_through;
        queue.required_through = required_through;
        drop(queue);
        // Only a full memory ring waits on the floors (retention reads them
        // when it runs): spare the wake-up, a system call, otherwise.
        if freed && self.shared.options.durability == Durability::Memory {
            self.shared.wake.notify_one();
        }
    }

    /// The log's counters.
    pub fn stats(&self) -> LogStats {
        let s = &self.shared.stats;
        LogStats {
            bytes: s.bytes.load(Ordering::Relaxed),
            segments: s.segments.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            retention_deleted_bytes: s.retention_deleted_bytes.load(Ordering::Relaxed),
        }
    }

    /// Writes and syncs everything queued, then stops the writer thread.
    /// Blocks until the writer is done.
    ///
    /// # Errors
    ///
    /// The log's failure, if it stopped on an I/O error.
    pub fn close(&self) -> Result<(), Error> {
        lock(&self.shared.queue).closing = true;
        self.shared.wake.notify_one();
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
        match self.failure() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl<B> Drop for StreamLog<B> {
    fn drop(&mut self) {
        lock(&self.shared.queue).closing = true;
        self.shared.wake.notify_one();
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
    }
}

impl<B> std::fmt::Debug for StreamLog<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLog")
            .field("stream", &self.shared.stream)
            .field("durability", &self.shared.options.durability)
            .finish_non_exhaustive()
    }
}

/// What writes the log: the active segment and the write buffers. Held by
/// whoever writes: the writer thread, or a publisher writing the queue on
/// its own thread when nobody else is (see [`StreamLog::append`]).
struct WriterState {
    disk: Option<Disk>,
    frames: Vec<u8>,
    sizes: Vec<usize>,
    written: u64,
    synced: u64,
    last_sync: Instant,
    last_retention: Instant,
    /// When [`Disk::moved`] last looked.
    last_place_check: Instant,
    /// A write or sync failed: nothing more is written.
    stopped: bool,
}

/// The most bytes one write batch takes from the queue.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Batches evicted from the tail and not yet freed.
struct Garbage<B> {
    batches: Vec<Arc<B>>,
    events: usize,
}

/// Evicted events past which a publisher wakes the writer thread to free
/// them (it frees them anyway each time it wakes).
const GARBAGE_EVENTS: usize = 4096;

/// What [`Shared::take_queued`] found.
enum Taken<B> {
    Batch(Vec<Pending<B>>),
    Nothing,
    /// Writing the next batch would seal the active segment, which syncs
    /// it: left to the writer thread.
    Rotation,
}

impl<B> Shared<B> {
    /// Updates the progress, waking publishers, and readers only when
    /// something they wait on changed.
    fn advance(&self, update: impl Fn(&mut Progress)) {
        // Readers' first: a publisher that saw its record acknowledged
        // finds it in `progress` too.
        self.progress.send_if_modified(|p| {
            let before = *p;
            update(p);
            (p.visible, p.failed, p.closed) != (before.visible, before.failed, before.closed)
        });
        self.acked.send_modify(&update);
    }
}

impl<B: LogBatch> Shared<B> {
    /// Takes what is queued, up to a write batch; with `inline`, takes
    /// nothing whose write would seal the active segment.
    fn take_queued(&self, state: &WriterState, inline: bool) -> Taken<B> {
        let mut queue = lock(&self.queue);
        if queue.pending.is_empty() {
            return Taken::Nothing;
        }
        let mut bytes = 0;
        let take = queue
            .pending
            .iter()
            .take_while(|p| {
                bytes += p.bytes;
                bytes <= MAX_BATCH_BYTES
            })
            .count()
            .max(1);
        if inline {
            let total = queue.pending[..take].iter().map(|p| p.bytes).sum();
            if state.disk.as_ref().is_some_and(|d| d.would_rotate(total)) {
                return Taken::Rotation;
            }
        }
        let rest = queue.pending.split_off(take);
        Taken::Batch(std::mem::replace(&mut queue.pending, rest))
    }

    /// Writes everything queued on the caller's thread, unless someone
    /// else is writing or a segment must be sealed first; returns whether
    /// nothing is left for the writer thread.
    fn write_inline(&self) -> bool {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        loop {
            if state.stopped {
                // The waiters see the failure.
                return true;
            }
            match self.take_queued(&state, true) {
                Taken::Nothing => return true,
                Taken::Rotation => return false,
                Taken::Batch(batch) => {
                    if let Err(err) = self.write(&mut state, batch, true) {
                        self.fail(&mut state, &err);
                        return true;
                    }
                }
            }
        }
    }

    /// Waits until something is queued, the log is closing, garbage piled
    /// up, or (for `interval`) a sync may be due; returns whether it is
    /// closing.
    fn wait_for_work(&self) -> bool {
        let timeout = {
            let state = lock(&self.state);
            match self.options.durability {
                Durability::Interval(every) if state.written > state.synced => {
                    every.saturating_sub(state.last_sync.elapsed())
                }
                // Publishers may write while the thread waits: look again
                // within the interval.
                Durability::Interval(every) => every,
                _ => Duration::from_secs(1),
            }
        };
        let queue = lock(&self.queue);
        if !queue.pending.is_empty()
            || queue.closing
            || timeout.is_zero()
            || lock(&self.garbage).events >= GARBAGE_EVENTS
        {
            return queue.closing;
        }
        self.wake
            .wait_timeout(queue, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .closing
    }

    /// Writes `pending`; `inline` on a publisher's thread.
    fn write(
        &self,
        state: &mut WriterState,
        pending: Vec<Pending<B>>,
        inline: bool,
    ) -> Result<(), String> {
        let Some(first) = pending.first().map(|p| p.batch.first_sequence()) else {
            return Ok(());
        };
        let WriterState {
            disk,
            frames,
            sizes,
            ..
        } = state;
        frames.clear();
        sizes.clear();
        for p in &pending {
            let b = p.batch.as_ref();
            let start = b.first_sequence();
            for i in 0..b.len() {
                let payload = b.payload(i);
                if disk.is_some() {
                    let before = frames.len();
                    frame::encode_frame(start + i as u64, b.timestamp(i), payload, frames);
                    sizes.push(frames.len() - before);
                } else {
                    // The ring only needs the sizes.
                    sizes.push(frame::frame_len(payload.len()));
                }
            }
        }
        if let Some(disk) = disk {
            disk.append(frames, first, sizes)
                .map_err(|e| format!("write failed: {e}"))?;
            self.stats
                .bytes
                .store(disk.total_bytes(), Ordering::Relaxed);
            self.stats
                .segments
                .store(disk.segment_count() as u64, Ordering::Relaxed);
        }
        let last = first + sizes.len() as u64 - 1;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        state.written = last;
        if self.options.durability == Durability::Fsync {
            self.sync(state)?;
        }
        let mut evicted = Vec::new();
        self.push_tail(&state.sizes, pending, &mut evicted);
        let durability = self.options.durability;
        let synced = state.synced;
        self.advance(|p| {
            p.acked = last;
            p.visible = match durability {
                Durability::Fsync | Durability::Interval(_) => synced,
                Durability::None | Durability::Memory => last,
            };
        });
        if durability.is_persistent() {
            lock(&self.tail).trim(&mut evicted);
        }
        // Freeing what fell out of the tail (thousands of events) is not
        // the publishers' wait.
        if inline {
            self.discard(evicted);
        } else {
            drop(evicted);
        }
        Ok(())
    }

    /// Leaves `evicted` for the writer thread to free, waking it when
    /// enough has piled up.
    fn discard(&self, evicted: Vec<Arc<B>>) {
        if evicted.is_empty() {
            return;
        }
        let mut garbage = lock(&self.garbage);
        let was_below = garbage.events < GARBAGE_EVENTS;
        garbage.events += evicted.iter().map(|b| b.len()).sum::<usize>();
        garbage.batches.extend(evicted);
        let wake = was_below && garbage.events >= GARBAGE_EVENTS;
        drop(garbage);
        if wake {
            // Taking the queue's lock orders this wake-up after the
            // thread's look at the garbage or before its wait.
            drop(lock(&self.queue));
            self.wake.notify_one();
        }
    }

    /// Frees what publishers left.
    fn collect_garbage(&self) {
        let batches = {
            let mut garbage = lock(&self.garbage);
            garbage.events = 0;
            std::mem::take(&mut garbage.batches)
        };
        drop(batches);
    }

    fn push_tail(&self, sizes: &[usize], pending: Vec<Pending<B>>, evicted: &mut Vec<Arc<B>>) {
        let memory = self.options.durability == Durability::Memory;
        let mut sizes = sizes.iter().copied();
        for p in pending {
            let count = p.batch.len();
            let bytes: usize = sizes.by_ref().take(count).sum();
            if !memory {
                // A cache: trimmed once the batch is acknowledged.
                lock(&self.tail).push(p.batch, bytes);
                continue;
            }
            // The ring is the log: never drop what a required sink still
            // needs; wait for it instead (publishers then wait on the
            // pending budget).
            loop {
                let required_through = lock(&self.queue).required_through;
                let mut tail = lock(&self.tail);
                if tail.make_room(count, bytes, required_through, evicted) {
                    tail.push(p.batch.clone(), bytes);
                    self.stats
                        .bytes
                        .store(tail.bytes() as u64, Ordering::Relaxed);
                    break;
                }
                drop(tail);
                let queue = lock(&self.queue);
                if queue.closing {
                    return;
                }
                let _ = self
                    .wake
                    .wait_timeout(queue, Duration::from_millis(50))
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    fn sync(&self, state: &mut WriterState) -> Result<(), String> {
        if let Some(disk) = &mut state.disk {
            disk.sync().map_err(|e| format!("fdatasync failed: {e}"))?;
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        state.synced = state.written;
        state.last_sync = Instant::now();
        Ok(())
    }

    /// Syncs what was written when the policy says it is time. The
    /// `fdatasync` runs without the writer's lock: publishers go on
    /// appending meanwhile.
    fn sync_if_due<'a>(
        &'a self,
        state: MutexGuard<'a, WriterState>,
        closing: bool,
    ) -> (MutexGuard<'a, WriterState>, Result<(), String>) {
        if state.written <= state.synced {
            return (state, Ok(()));
        }
        let due = match self.options.durability {
            Durability::Interval(every) => closing || state.last_sync.elapsed() >= every,
            Durability::None => closing,
            Durability::Fsync | Durability::Memory => false,
        };
        if !due {
            return (state, Ok(()));
        }
        let written = state.written;
        let handle = state.disk.as_ref().map(Disk::sync_handle);
        drop(state);
        let started = Instant::now();
        let result = handle.as_ref().map_or(Ok(()), |h| h.sync());
        let mut state = lock(&self.state);
        if let Err(e) = result {
            return (state, Err(format!("fdatasync failed: {e}")));
        }
        if handle.is_some() {
            self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        state.synced = state.synced.max(written);
        state.last_sync = started;
        let synced = state.synced;
        self.advance(|p| p.visible = p.visible.max(synced));
        (state, Ok(()))
    }

    fn retain(&self, state: &mut WriterState) {
        let Some(disk) = &mut state.disk else {
            return;
        };
        if state.last_retention.elapsed() < Duration::from_millis(500) {
            return;
        }
        state.last_retention = Instant::now();
        let (consumed, required) = {
            let queue = lock(&self.queue);
            (queue.consumed_through, queue.required_through)
        };
        match disk.apply_retention(&self.options, consumed, required) {
            Ok(0) => {}
            Ok(deleted) => {
                let stats = &self.stats;
                stats
                    .retention_deleted_bytes
                    .fetch_add(deleted, Ordering::Relaxed);
                stats.bytes.store(disk.total_bytes(), Ordering::Relaxed);
                stats
                    .segments
                    .store(disk.segment_count() as u64, Ordering::Relaxed);
            }
            Err(err) => tracing::warn!(
                stream = %self.stream,
                error = %err,
                "retention could not delete a segment; will retry"
            ),
        }
    }

    /// Once a second, whether the log's files are still where it opened
    /// them (see [`Disk::moved`]): why not, if they are not. The log then
    /// stops, as after a failed write, instead of acknowledging appends to
    /// files the next start does not see.
    fn moved(&self, state: &mut WriterState) -> Option<String> {
        let disk = state.disk.as_ref()?;
        if state.last_place_check.elapsed() < Duration::from_secs(1) {
            return None;
        }
        state.last_place_check = Instant::now();
        disk.moved().unwrap_or_else(|e| {
            // A check, not a write: the next one looks again.
            tracing::warn!(stream = %self.stream, error = %e, "cannot check the log's files");
            None
        })
    }

    /// Stops the log for good: a failed write or sync cannot be retried
    /// safely (the kernel may have dropped the dirty pages).
    fn fail(&self, state: &mut WriterState, reason: &str) {
        state.stopped = true;
        let message = format!(
            "the log of stream {} stopped: {reason}; restart the process to recover from what is on disk",
            self.stream
        );
        tracing::error!(stream = %self.stream, "{message}");
        let _ = self.failure.set(message);
        lock(&self.queue).closing = true;
        self.advance(|p| p.failed = true);
        self.pending_bytes.close();
    }
}

/// The writer thread: writes what publishers left queued, syncs on the
/// durability policy, applies retention, and finishes the queue on close.
fn run_writer<B: LogBatch>(shared: &Shared<B>) {
    write_until_closed(shared);
    // Closes the segment and releases the log's lock file.
    let mut state = lock(&shared.state);
    state.stopped = true;
    state.disk = None;
    drop(state);
    shared.collect_garbage();
}

fn write_until_closed<B: LogBatch>(shared: &Shared<B>) {
    loop {
        let closing = shared.wait_for_work();
        shared.collect_garbage();
        let mut state = lock(&shared.state);
        if state.stopped {
            return;
        }
        while let Taken::Batch(batch) = shared.take_queued(&state, false) {
            if let Err(err) = shared.write(&mut state, batch, false) {
                shared.fail(&mut state, &err);
                return;
            }
        }
        let (mut state, synced) = shared.sync_if_due(state, closing);
        if let Err(err) = synced {
            shared.fail(&mut state, &err);
            return;
        }
        if let Some(why) = shared.moved(&mut state) {
            shared.fail(&mut state, &why);
            return;
        }
        shared.retain(&mut state);
        // Publishers may have written during the sync: closed once all of
        // it is written and synced.
        let unsynced = shared.options.durability.is_persistent() && state.written > state.synced;
        if closing && !unsynced && lock(&shared.queue).pending.is_empty() {
            shared.advance(|p| p.closed = true);
            return;
        }
    }
}
