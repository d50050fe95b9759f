//! The files of one stream's log: recovery on open, appends, syncs,
//! rotation and retention. Used only by the writer thread.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, ErrorKind};
use crate::event::Encoding;
use crate::log::frame::{SEGMENT_HEADER_LEN, SegmentHeader};
use crate::log::meta::{self, LastCut, StreamMeta};
use crate::log::options::{Durability, LogOptions};
use crate::log::segment::{self, SharedIndex, Tail};
use crate::sink::FileIdentity;
use crate::stream::StreamId;
use crate::time::Timestamp;

/// What opening a log found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The last sequence in the log (0 when empty).
    pub last_sequence: u64,
    /// Bytes cut from a torn or corrupt tail.
    pub cut_bytes: u64,
    /// Why they were cut.
    pub cut_reason: Option<String>,
    /// Files removed because they held nothing readable (a segment whose
    /// creation a crash interrupted).
    pub removed_files: Vec<PathBuf>,
    /// The sequence the log started after ([`crate::log::StreamLog::start_after`], kept in
    /// `stream.json`); 0 for a log that started at 1.
    pub started_after: u64,
    /// Why `stream.json` could not be read, when it was there: it is
    /// written afresh, and what it kept (recovery cuts, where the log
    /// started) starts again.
    pub meta_unreadable: Option<String>,
    /// Damage found inside the newest segment with intact records after
    /// it (a bad sector or a stray write over records already written,
    /// not a torn write): what it is and where. The records after it are
    /// kept and the segment is sealed as it is, so that the damage is
    /// read past as in any sealed segment; `lost` says which sequences
    /// it took. `None` when there was none.
    pub damage: Option<String>,
    /// The stretches of sequences `(first, last)` the damage took (empty
    /// when it only garbled bytes between records).
    pub lost: Vec<(u64, u64)>,
}

struct Sealed {
    first: u64,
    last: u64,
    bytes: u64,
    modified: SystemTime,
}

pub(crate) struct Disk {
    dir: PathBuf,
    stream: StreamId,
    /// Held locked while the log is open.
    lock: File,
    durability: Durability,
    segment_max_bytes: u64,
    index_every: u64,
    encoding: Encoding,
    /// Shared with [`SyncHandle`]s.
    file: Arc<File>,
    header: SegmentHeader,
    len: u64,
    records: u64,
    index: Vec<(u64, u64)>,
    since_index: u64,
    /// `index`, as the readers of this process see it.
    shared_index: SharedIndex,
    sealed: VecDeque<Sealed>,
    /// See [`Recovery::started_after`].
    started_after: u64,
}

fn shared_index(first: u64, entries: Vec<(u64, u64)>) -> SharedIndex {
    std::sync::Arc::new(std::sync::Mutex::new(segment::ActiveIndex {
        first,
        entries,
    }))
}

fn io_error(context: String) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::new(ErrorKind::Unavailable, context).with_source(e)
}

impl Disk {
    /// Opens (creating if needed) the log in `dir`, repairing a damaged tail.
    pub(crate) fn open(
        dir: &Path,
        stream: &StreamId,
        encoding: Encoding,
        options: &LogOptions,
    ) -> Result<(Self, Recovery), Error> {
        std::fs::create_dir_all(dir).map_err(io_error(format!(
            "cannot create log directory {}",
            dir.display()
        )))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(io_error(format!(
                "cannot open {}",
                dir.join("LOCK").display()
            )))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!(
                        "the log of stream {stream} in {} is open in another process",
                        dir.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_error(format!("cannot lock {}", dir.display()))(e));
            }
        }
        let mut recovery = Recovery::default();
        let mut segments = segment::list_segments(dir)
            .map_err(io_error(format!("cannot list {}", dir.display())))?;
        // Drop trailing segments a crash left without a readable header
        // (a rotation that did not finish: records are appended only once
        // the header is synced, so such a file holds no more than it).
        while let Some((_, path)) = segments.last() {
            let scan = segment::scan_segment(path, options.index_interval_bytes)
                .map_err(io_error(format!("cannot read {}", path.display())))?;
            let Err(reason) = scan else {
                break;
            };
            let len = std::fs::metadata(path)
                .map_err(io_error(format!("cannot stat {}", path.display())))?
                .len();
            if len > SEGMENT_HEADER_LEN as u64 {
                // Damage, not a crash: its records are not deleted.
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "{}: {reason}, and it holds {} bytes of records after its header: it is \
                         left as it is (a rotation a crash interrupted leaves no more than a \
                         header). Put its header back from a copy of the segment, or move the \
                         file out of {} to go on without its records (docs/operations.md, \
                         \"A damaged log\")",
                        path.display(),
                        len - SEGMENT_HEADER_LEN as u64,
                        dir.display()
                    ),
                ));
            }
            std::fs::remove_file(path)
                .map_err(io_error(format!("cannot remove {}", path.display())))?;
            recovery.removed_files.push(path.clone());
            segments.pop();
        }
        let mut sealed = VecDeque::new();
        for window in segments.windows(2) {
            let (first, path) = &window[0];
            let metadata = std::fs::metadata(path)
                .map_err(io_error(format!("cannot stat {}", path.display())))?;
            sealed.push_back(Sealed {
                first: *first,
                last: window[1].0.saturating_sub(1),
                bytes: metadata.len(),
                modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            });
        }
        let mut disk = match segments.last() {
            None => Self::create_first(dir, lock, encoding, options)?,
            Some((_, path)) => Self::reopen_active(dir, path, lock, options, &mut recovery)?,
        };
        disk.durability = options.durability;
        disk.stream = stream.clone();
        disk.sealed = sealed;
        if recovery.damage.is_some() {
            // New records go to a new segment: the damaged one is read
            // past as sealed segments are.
            disk.rotate()?;
        }
        disk.use_encoding(encoding)?;
        recovery.last_sequence = disk.last_sequence();
        // Kept while the log still starts after it (a crash inside
        // `start_after` can leave it written and the log at 1).
        let first = disk
            .sealed
            .front()
            .map_or(disk.header.first_sequence, |s| s.first);
        let previous = meta::checked_meta(dir).unwrap_or_else(|why| {
            recovery.meta_unreadable = Some(why);
            None
        });
        disk.started_after = previous
            .and_then(|meta| meta.started_after)
            .filter(|&after| after < first)
            .unwrap_or(0);
        recovery.started_after = disk.started_after;
        if !recovery.removed_files.is_empty() {
            meta::sync_dir(dir).map_err(io_error(format!("cannot sync {}", dir.display())))?;
        }
        disk.write_meta(stream, &recovery)?;
        Ok((disk, recovery))
    }

    fn create_first(
        dir: &Path,
        lock: File,
        encoding: Encoding,
        options: &LogOptions,
    ) -> Result<Self, Error> {
        let header = SegmentHeader {
            first_sequence: 1,
            encoding,
            created: Timestamp::now(),
        };
        let file = create_segment(dir, &header)?;
        Ok(Self {
            dir: dir.to_owned(),
            stream: StreamId::default(),
            lock,
            durability: options.durability,
            segment_max_bytes: options.segment_max_bytes,
            index_every: options.index_interval_bytes,
            encoding,
            file: Arc::new(file),
            header,
            len: SEGMENT_HEADER_LEN as u64,
            records: 0,
            index: Vec::new(),
            since_index: u64::MAX,
            shared_index: shared_index(1, Vec::new()),
            sealed: VecDeque::new(),
            started_after: 0,
        })
    }

    fn reopen_active(
        dir: &Path,
        path: &Path,
        lock: File,
        options: &LogOptions,
        recovery: &mut Recovery,
    ) -> Result<Self, Error> {
        let mut scan = segment::scan_segment(path, options.index_interval_bytes)
            .map_err(io_error(format!("cannot read {}", path.display())))?
            .map_err(|reason| {
                Error::new(ErrorKind::Corrupt, format!("{}: {reason}", path.display()))
            })?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io_error(format!("cannot open {}", path.display())))?;
        let kept = match &scan.tail {
            Tail::Corrupt(reason) => Self::kept_past_damage(path, &scan, reason, recovery)?,
            Tail::Clean | Tail::Incomplete => None,
        };
        let reason = match (&kept, &scan.tail) {
            (Some(_), _) => "unreadable bytes after the segment's last record".to_owned(),
            (None, Tail::Incomplete) => "torn write at the end of the segment".to_owned(),
            (None, Tail::Corrupt(reason)) => reason.clone(),
            (None, Tail::Clean) => "unreadable bytes at the end of the segment".to_owned(),
        };
        if let Some(past) = kept {
            // The records after the damage, as if the scan had read them
            // (`records` counts sequences: the lost ones too).
            scan.records = past.next - scan.header.first_sequence;
            scan.last_sequence = past.last_sequence;
            scan.valid_len = past.end;
            scan.index.extend(past.resumed);
        }
        if scan.valid_len < scan.file_len {
            file.set_len(scan.valid_len)
                .and_then(|()| file.sync_all())
                .map_err(io_error(format!("cannot truncate {}", path.display())))?;
            recovery.cut_bytes = scan.file_len - scan.valid_len;
            recovery.cut_reason = Some(reason);
        }
        let since_index = match scan.index.last() {
            Some((_, offset)) => scan.valid_len - offset,
            None => u64::MAX,
        };
        let disk = Self {
            dir: dir.to_owned(),
            stream: StreamId::default(),
            lock,
            durability: options.durability,
            segment_max_bytes: options.segment_max_bytes,
            index_every: options.index_interval_bytes,
            encoding: scan.header.encoding,
            file: Arc::new(file),
            header: scan.header,
            len: scan.valid_len,
            records: scan.records,
            shared_index: shared_index(scan.header.first_sequence, scan.index.clone()),
            index: scan.index,
            since_index,
            sealed: VecDeque::new(),
            started_after: 0,
        };
        Ok(disk)
    }

    /// What follows the damaged record at the end of `scan` in the newest
    /// segment at `path`, when it is kept ([`segment::kept_past_damage`]);
    /// kept, `recovery` says so.
    fn kept_past_damage(
        path: &Path,
        scan: &segment::SegmentScan,
        reason: &str,
        recovery: &mut Recovery,
    ) -> Result<Option<segment::PastDamage>, Error> {
        let due = scan
            .last_sequence
            .map_or(scan.header.first_sequence, |last| last + 1);
        let Some(past) = segment::kept_past_damage(path, scan.valid_len, due)
            .map_err(io_error(format!("cannot read {}", path.display())))?
        else {
            return Ok(None);
        };
        recovery.damage = Some(format!(
            "{}: damaged record at byte {}: {reason}",
            path.display(),
            scan.valid_len
        ));
        recovery.lost = past.lost.iter().map(|l| (l.first, l.last)).collect();
        Ok(Some(past))
    }

    fn write_meta(&self, stream: &StreamId, recovery: &Recovery) -> Result<(), Error> {
        let previous = meta::read_meta(&self.dir).unwrap_or_default();
        let last_cut = match &recovery.cut_reason {
            Some(reason) => Some(LastCut {
                at: Timestamp::now().to_json_string(),
                segment: segment::segment_path(&self.dir, self.header.first_sequence)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                bytes: recovery.cut_bytes,
                reason: reason.clone(),
            }),
            None => previous.last_cut,
        };
        let meta = StreamMeta {
            stream: stream.as_str().to_owned(),
            durability: self.durability.to_string(),
            encoding: self.encoding.to_string(),
            recovery_cut_bytes_total: previous.recovery_cut_bytes_total + recovery.cut_bytes,
            last_cut,
            started_after: (self.started_after != 0).then_some(self.started_after),
        };
        meta::write_meta(&self.dir, &meta).map_err(io_error(format!(
            "cannot write {}",
            self.dir.join("stream.json").display()
        )))
    }

    /// Switches new records to `encoding`, sealing the active segment if it
    /// holds records of another one.
    pub(crate) fn use_encoding(&mut self, encoding: Encoding) -> Result<(), Error> {
        if self.header.encoding == encoding {
            self.encoding = encoding;
            return Ok(());
        }
        self.encoding = encoding;
        if self.records == 0 {
            // Nothing written in the old encoding: recreate the segment.
            let header = SegmentHeader {
                encoding,
                ..self.header
            };
            self.file = Arc::new(create_segment_replacing(&self.dir, &header)?);
            self.header = header;
            self.len = SEGMENT_HEADER_LEN as u64;
            return Ok(());
        }
        self.rotate()
    }

    /// Makes a log that holds nothing (and never numbered anything) start
    /// after `last`: its empty active segment is replaced by one whose
    /// first sequence is `last + 1`, and `stream.json` keeps `last` (so
    /// that, reopened, the log still knows nothing up to it was ever in
    /// it, whatever retention deletes later). The note goes first
    /// (reopening ignores it while the log starts at 1), then the old
    /// file, so a crash in between leaves either segment alone, or none
    /// (a fresh log).
    pub(crate) fn start_after(&mut self, last: u64) -> Result<(), Error> {
        if self.records != 0 || !self.sealed.is_empty() || self.last_sequence() != 0 {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "the log of stream {} holds records: it cannot start after {last}",
                    self.stream
                ),
            ));
        }
        self.started_after = last;
        let replaced = self.replace_first_segment(last + 1);
        if replaced.is_err() {
            self.started_after = 0;
        }
        replaced
    }

    /// [`Disk::start_after`]'s writes: `stream.json`, then the segment.
    fn replace_first_segment(&mut self, first_sequence: u64) -> Result<(), Error> {
        let stream = self.stream.clone();
        self.write_meta(&stream, &Recovery::default())?;
        let old = segment::segment_path(&self.dir, self.header.first_sequence);
        std::fs::remove_file(&old).map_err(io_error(format!("cannot remove {}", old.display())))?;
        let header = SegmentHeader {
            first_sequence,
            ..self.header
        };
        self.file = Arc::new(create_segment(&self.dir, &header)?);
        self.header = header;
        self.len = SEGMENT_HEADER_LEN as u64;
        *segment::lock_index(&self.shared_index) = segment::ActiveIndex {
            first: header.first_sequence,
            entries: Vec::new(),
        };
        Ok(())
    }

    /// The last sequence written.
    pub(crate) fn last_sequence(&self) -> u64 {
        self.header.first_sequence + self.records - 1
    }

    /// Bytes of every segment.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.len + self.sealed.iter().map(|s| s.bytes).sum::<u64>()
    }

    /// Segments on disk.
    pub(crate) fn segment_count(&self) -> usize {
        self.sealed.len() + 1
    }

    /// Appends `frames` (records `first`, `first + 1`, … of the given
    /// sizes), sealing the active segment and starting a new one whenever
    /// it is full.
    pub(crate) fn append(&mut self, frames: &[u8], first: u64, sizes: &[usize]) -> io::Result<()> {
        let mut at = 0;
        let mut i = 0;
        while i < sizes.len() {
            if self.len >= self.segment_max_bytes && self.records > 0 {
                self.rotate().map_err(io::Error::other)?;
            }
            // As many records as fit (at least one).
            let mut bytes = 0;
            let mut n = 0;
            while i + n < sizes.len()
                && (n == 0 || self.len + (bytes + sizes[i + n]) as u64 <= self.segment_max_bytes)
            {
                bytes += sizes[i + n];
                n += 1;
            }
            (&*self.file).write_all(&frames[at..at + bytes])?;
            let mut offset = self.len;
            let indexed = self.index.len();
            for (k, size) in sizes[i..i + n].iter().enumerate() {
                if self.since_index >= self.index_every {
                    self.index.push((first + (i + k) as u64, offset));
                    self.since_index = 0;
                }
                self.since_index += *size as u64;
                offset += *size as u64;
            }
            if self.index.len() > indexed {
                segment::lock_index(&self.shared_index)
                    .entries
                    .extend_from_slice(&self.index[indexed..]);
            }
            self.len = offset;
            self.records += n as u64;
            at += bytes;
            i += n;
        }
        Ok(())
    }

    /// The active segment's index as it grows, for readers in this
    /// process ([`crate::log::LogReader`] from [`crate::log::Log::reader`]).
    pub(crate) fn shared_index(&self) -> SharedIndex {
        self.shared_index.clone()
    }

    /// Whether appending `bytes` would seal the active segment first (a
    /// rotation syncs the sealed segment: not for the publishers' path).
    pub(crate) fn would_rotate(&self, bytes: usize) -> bool {
        self.len + bytes as u64 > self.segment_max_bytes
    }

    /// Why the log's files are no longer where it opened them, if they
    /// are not: its directory removed or replaced (its `LOCK` file gone or
    /// another), or its active segment removed or renamed. Appends would go
    /// on into files no reader finds and the next start does not see.
    ///
    /// # Errors
    ///
    /// A failed `stat`, other than of a missing file.
    pub(crate) fn moved(&self) -> io::Result<Option<String>> {
        let lock = self.dir.join("LOCK");
        if !FileIdentity::of(&self.lock.metadata()?).named_by(&lock)? {
            return Ok(Some(format!(
                "its directory {} was removed or replaced while open",
                self.dir.display()
            )));
        }
        let active = segment::segment_path(&self.dir, self.header.first_sequence);
        if !FileIdentity::of(&self.file.metadata()?).named_by(&active)? {
            return Ok(Some(format!(
                "its active segment {} was removed or renamed while open",
                active.display()
            )));
        }
        Ok(None)
    }

    /// `fdatasync` of the active segment.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.sync_handle().sync()
    }

    /// A handle that syncs the active segment as it is now, without the
    /// `Disk`: appends go on meanwhile (a later rotation syncs the
    /// segment itself).
    pub(crate) fn sync_handle(&self) -> SyncHandle {
        SyncHandle {
            file: Arc::clone(&self.file),
            #[cfg(test)]
            stream: self.stream.clone(),
        }
    }

    /// Seals the active segment and starts the next one.
    fn rotate(&mut self) -> Result<(), Error> {
        let path = segment::segment_path(&self.dir, self.header.first_sequence);
        if self.durability.is_persistent() && self.durability != Durability::None {
            self.file
                .sync_data()
                .map_err(io_error(format!("cannot sync {}", path.display())))?;
        }
        // The index is derived data: a failure to write it only costs a
        // scan later.
        let _ = segment::write_index(
            &segment::index_path(&self.dir, self.header.first_sequence),
            &self.index,
        );
        let last = self.last_sequence();
        self.sealed.push_back(Sealed {
            first: self.header.first_sequence,
            last,
            bytes: self.len,
            modified: SystemTime::now(),
        });
        let header = SegmentHeader {
            first_sequence: last + 1,
            encoding: self.encoding,
            created: Timestamp::now(),
        };
        self.file = Arc::new(create_segment(&self.dir, &header)?);
        self.header = header;
        self.len = SEGMENT_HEADER_LEN as u64;
        self.records = 0;
        self.index.clear();
        self.since_index = u64::MAX;
        // The sealed segment's index file is written (above): readers use it.
        *segment::lock_index(&self.shared_index) = segment::ActiveIndex {
            first: self.header.first_sequence,
            entries: Vec::new(),
        };
        Ok(())
    }

    /// Deletes sealed segments that retention allows: all of whose records
    /// every sink has passed (`consumed_through`, when `delete_consumed`),
    /// or that are too old or over the size limit and no required sink
    /// needs (`required_through`). Returns the bytes deleted.
    pub(crate) fn apply_retention(
        &mut self,
        options: &LogOptions,
        consumed_through: u64,
        required_through: u64,
    ) -> io::Result<u64> {
        let retention = options.retention;
        let mut total = self.total_bytes();
        let mut deleted = 0;
        while let Some(oldest) = self.sealed.front() {
            let consumed = retention.delete_consumed && oldest.last <= consumed_through;
            let unneeded = oldest.last <= required_through;
            let too_old = retention
                .max_age
                .is_some_and(|age| oldest.modified.elapsed().unwrap_or(Duration::ZERO) > age);
            let too_big = retention.max_bytes.is_some_and(|max| total > max);
            if !(consumed || (unneeded && (too_old || too_big))) {
                break;
            }
            let first = oldest.first;
            let bytes = oldest.bytes;
            std::fs::remove_file(segment::segment_path(&self.dir, first))?;
            let _ = std::fs::remove_file(segment::index_path(&self.dir, first));
            self.sealed.pop_front();
            total -= bytes;
            deleted += bytes;
        }
        if deleted > 0 {
            meta::sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }
}

fn create_segment(dir: &Path, header: &SegmentHeader) -> Result<File, Error> {
    let path = segment::segment_path(dir, header.first_sequence);
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(io_error(format!("cannot create {}", path.display())))?;
    file.write_all(&header.encode())
        .and_then(|()| file.sync_data())
        .and_then(|()| meta::sync_dir(dir))
        .map_err(io_error(format!("cannot initialise {}", path.display())))?;
    Ok(file)
}

fn create_segment_replacing(dir: &Path, header: &SegmentHeader) -> Result<File, Error> {
    let path = segment::segment_path(dir, header.first_sequence);
    std::fs::remove_file(&path).map_err(io_error(format!("cannot replace {}", path.display())))?;
    create_segment(dir, header)
}

/// See [`Disk::sync_handle`].
pub(crate) struct SyncHandle {
    file: Arc<File>,
    #[cfg(test)]
    stream: StreamId,
}

impl SyncHandle {
    /// `fdatasync` of the segment.
    pub(crate) fn sync(&self) -> io::Result<()> {
        #[cfg(test)]
        if tests::fail_next_sync(&self.stream) {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        self.file.sync_data()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use crate::stream::StreamId;

    static FAIL_NEXT_SYNC: Mutex<Vec<StreamId>> = Mutex::new(Vec::new());

    /// Makes the next `fdatasync` of `stream`'s log fail.
    pub(crate) fn inject_sync_failure(stream: &StreamId) {
        FAIL_NEXT_SYNC.lock().unwrap().push(stream.clone());
    }

    pub(super) fn fail_next_sync(stream: &StreamId) -> bool {
        let mut streams = FAIL_NEXT_SYNC.lock().unwrap();
        let before = streams.len();
        streams.retain(|s| s != stream);
        streams.len() != before
    }
}
