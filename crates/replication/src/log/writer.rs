//! [`StreamLog`]: the append path of one stream's log, with group commit
//! on a dedicated writer thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
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
    dir: Option<PathBuf>,
    /// The writer's index of the active segment (`None` for `memory`).
    active_index: Option<crate::log::segment::SharedIndex>,
    encoding: Encoding,
    options: LogOptions,
    queue: Mutex<Queue<B>>,
    wake: Condvar,
    tail: Mutex<Tail<B>>,
    progress: watch::Sender<Progress>,
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
/// (group commit), then acknowledges them all.
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
            tail: Mutex::new(Tail::new(options.tail_max_events, options.tail_max_bytes)),
            progress: watch::Sender::new(Progress {
                acked: last,
                visible: last,
                failed: false,
                closed: false,
            }),
            failure: OnceLock::new(),
            pending_bytes: Arc::new(Semaphore::new(pending)),
            stats: Stats::default(),
            stream,
            options,
        });
        if let Some(disk) = &disk {
            shared
                .stats
                .bytes
                .store(disk.total_bytes(), Ordering::Relaxed);
            shared
                .stats
                .segments
                .store(disk.segment_count() as u64, Ordering::Relaxed);
        }
        let thread_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name(format!("omnirelay-log-{}", shared.stream))
            .spawn(move || Writer::new(thread_shared, disk).run())
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
    /// [`ErrorKind::Internal`] if the batch does not follow the last
    /// sequence. The batch is handed back with the error.
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
        // A busy writer takes everything queued when it is done; only an
        // idle one needs waking.
        if was_idle {
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
        self.shared.progress.send_modify(|p| {
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
        let mut progress = self.shared.progress.subscribe();
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

    /// Follows the log's progress.
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

/// The writer thread's state.
struct Writer<B> {
    shared: Arc<Shared<B>>,
    disk: Option<Disk>,
    frames: Vec<u8>,
    sizes: Vec<usize>,
    written: u64,
    synced: u64,
    last_sync: Instant,
    last_retention: Instant,
}

/// The most bytes one write batch takes from the queue.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

impl<B: LogBatch> Writer<B> {
    fn new(shared: Arc<Shared<B>>, disk: Option<Disk>) -> Self {
        let last = lock(&shared.queue).last_sequence;
        Self {
            shared,
            disk,
            frames: Vec::with_capacity(1024 * 1024),
            sizes: Vec::new(),
            written: last,
            synced: last,
            last_sync: Instant::now(),
            last_retention: Instant::now(),
        }
    }

    fn run(mut self) {
        loop {
            let (batch, closing) = self.next_batch();
            if !batch.is_empty()
                && let Err(err) = self.write(batch)
            {
                self.fail(&err);
                return;
            }
            if let Err(err) = self.sync_if_due(closing) {
                self.fail(&err);
                return;
            }
            self.retain();
            if closing && lock(&self.shared.queue).pending.is_empty() {
                self.shared.progress.send_modify(|p| p.closed = true);
                return;
            }
        }
    }

    /// Takes what is queued (up to a batch), waiting for work; returns an
    /// empty batch when only a sync is due or the log is closing.
    fn next_batch(&mut self) -> (Vec<Pending<B>>, bool) {
        let mut queue = lock(&self.shared.queue);
        loop {
            if !queue.pending.is_empty() {
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
                let rest = queue.pending.split_off(take);
                let batch = std::mem::replace(&mut queue.pending, rest);
                return (batch, queue.closing);
            }
            if queue.closing {
                return (Vec::new(), true);
            }
            let timeout = match self.shared.options.durability {
                Durability::Interval(every) if self.written > self.synced => {
                    let due = every.saturating_sub(self.last_sync.elapsed());
                    if due.is_zero() {
                        return (Vec::new(), false);
                    }
                    due
                }
                _ => Duration::from_secs(1),
            };
            queue = self
                .shared
                .wake
                .wait_timeout(queue, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn write(&mut self, pending: Vec<Pending<B>>) -> Result<(), String> {
        let Some(first) = pending.first().map(|p| p.batch.first_sequence()) else {
            return Ok(());
        };
        self.frames.clear();
        self.sizes.clear();
        for p in &pending {
            let b = p.batch.as_ref();
            let start = b.first_sequence();
            for i in 0..b.len() {
                let payload = b.payload(i);
                if self.disk.is_some() {
                    let before = self.frames.len();
                    frame::encode_frame(
                        start + i as u64,
                        b.timestamp(i),
                        payload,
                        &mut self.frames,
                    );
                    self.sizes.push(self.frames.len() - before);
                } else {
                    // The ring only needs the sizes.
                    self.sizes.push(frame::frame_len(payload.len()));
                }
            }
        }
        if let Some(disk) = &mut self.disk {
            disk.append(&self.frames, first, &self.sizes)
                .map_err(|e| format!("write failed: {e}"))?;
            self.shared
                .stats
                .bytes
                .store(disk.total_bytes(), Ordering::Relaxed);
            self.shared
                .stats
                .segments
                .store(disk.segment_count() as u64, Ordering::Relaxed);
        }
        let last = first + self.sizes.len() as u64 - 1;
        self.shared.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.written = last;
        if self.shared.options.durability == Durability::Fsync {
            self.sync()?;
        }
        let mut evicted = Vec::new();
        self.push_tail(pending, &mut evicted);
        let durability = self.shared.options.durability;
        let synced = self.synced;
        self.shared.progress.send_modify(|p| {
            p.acked = last;
            p.visible = match durability {
                Durability::Fsync | Durability::Interval(_) => synced,
                Durability::None | Durability::Memory => last,
            };
        });
        if durability.is_persistent() {
            lock(&self.shared.tail).trim(&mut evicted);
        }
        // Freeing what fell out of the tail is not the publishers' wait.
        drop(evicted);
        Ok(())
    }

    fn push_tail(&mut self, pending: Vec<Pending<B>>, evicted: &mut Vec<Arc<B>>) {
        let memory = self.shared.options.durability == Durability::Memory;
        let mut sizes = self.sizes.iter().copied();
        for p in pending {
            let count = p.batch.len();
            let bytes: usize = sizes.by_ref().take(count).sum();
            if !memory {
                // A cache: trimmed once the batch is acknowledged.
                lock(&self.shared.tail).push(p.batch, bytes);
                continue;
            }
            // The ring is the log: never drop what a required sink still
            // needs; wait for it instead (publishers then wait on the
            // pending budget).
            loop {
                let required_through = lock(&self.shared.queue).required_through;
                let mut tail = lock(&self.shared.tail);
                if tail.make_room(count, bytes, required_through, evicted) {
                    tail.push(p.batch.clone(), bytes);
                    self.shared
                        .stats
                        .bytes
                        .store(tail.bytes() as u64, Ordering::Relaxed);
                    break;
                }
                drop(tail);
                let queue = lock(&self.shared.queue);
                if queue.closing {
                    return;
                }
                let _ = self
                    .shared
                    .wake
                    .wait_timeout(queue, Duration::from_millis(50))
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    fn sync(&mut self) -> Result<(), String> {
        if let Some(disk) = &mut self.disk {
            disk.sync().map_err(|e| format!("fdatasync failed: {e}"))?;
            self.shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
        }
        self.synced = self.written;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn sync_if_due(&mut self, closing: bool) -> Result<(), String> {
        if self.written <= self.synced {
            return Ok(());
        }
        let due = match self.shared.options.durability {
            Durability::Interval(every) => closing || self.last_sync.elapsed() >= every,
            Durability::None => closing,
            Durability::Fsync | Durability::Memory => false,
        };
        if !due {
            return Ok(());
        }
        self.sync()?;
        let synced = self.synced;
        self.shared
            .progress
            .send_modify(|p| p.visible = p.visible.max(synced));
        Ok(())
    }

    fn retain(&mut self) {
        let Some(disk) = &mut self.disk else {
            return;
        };
        if self.last_retention.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.last_retention = Instant::now();
        let (consumed, required) = {
            let queue = lock(&self.shared.queue);
            (queue.consumed_through, queue.required_through)
        };
        match disk.apply_retention(&self.shared.options, consumed, required) {
            Ok(0) => {}
            Ok(deleted) => {
                let stats = &self.shared.stats;
                stats
                    .retention_deleted_bytes
                    .fetch_add(deleted, Ordering::Relaxed);
                stats.bytes.store(disk.total_bytes(), Ordering::Relaxed);
                stats
                    .segments
                    .store(disk.segment_count() as u64, Ordering::Relaxed);
            }
            Err(err) => tracing::warn!(
                stream = %self.shared.stream,
                error = %err,
                "retention could not delete a segment; will retry"
            ),
        }
    }

    /// Stops the log for good: a failed write or sync cannot be retried
    /// safely (the kernel may have dropped the dirty pages).
    fn fail(&mut self, reason: &str) {
        let message = format!(
            "the log of stream {} stopped: {reason}; restart the process to recover from what is on disk",
            self.shared.stream
        );
        tracing::error!(stream = %self.shared.stream, "{message}");
        let _ = self.shared.failure.set(message);
        lock(&self.shared.queue).closing = true;
        self.shared.progress.send_modify(|p| p.failed = true);
        self.shared.pending_bytes.close();
    }
}
