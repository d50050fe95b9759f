//! Reading a stream's log files: from any sequence, in order, read-only,
//! without a lock, beside a running writer.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{Error, ErrorKind};
use crate::event::Encoding;
use crate::log::frame::{self, SegmentHeader};
use crate::log::segment::{self, FrameReader, SharedIndex, Step, Tail};
use crate::time::Timestamp;

/// One record read from a log file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its sequence.
    pub sequence: u64,
    /// Its timestamp.
    pub timestamp: Timestamp,
    /// The encoding of `payload` (its segment's).
    pub encoding: Encoding,
    /// The encoded event.
    pub payload: Bytes,
}

enum Fill {
    Full,
    Empty,
    Partial,
}

/// Fills `buf`, or reports that the input ended before any byte or part-way.
fn read_or_end(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<Fill> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => return Ok(if got == 0 { Fill::Empty } else { Fill::Partial }),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Fill::Full)
}

/// A record borrowed by [`LogReader::visit_from`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Its sequence.
    pub sequence: u64,
    /// Its timestamp.
    pub timestamp: Timestamp,
    /// The encoding of `payload`.
    pub encoding: Encoding,
    /// The encoded event.
    pub payload: &'a [u8],
}

/// What [`LogReader::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segment files.
    pub segments: u64,
    /// Records.
    pub records: u64,
    /// The first sequence held.
    pub first: Option<u64>,
    /// The last sequence held.
    pub last: Option<u64>,
    /// Bytes of all segments.
    pub bytes: u64,
    /// Bytes at the end of the newest segment that are not yet a whole
    /// record: a write in progress, or a torn write the next open cuts.
    pub incomplete_tail_bytes: u64,
    /// What is wrong: damaged frames, gaps, unreadable headers.
    pub problems: Vec<String>,
    /// Records of sealed segments lost to damage (not counted in
    /// `records`): a reader goes on past them ([`Records`] stops there).
    pub lost: u64,
}

/// How far [`LogReader::verify_with_progress`] got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyProgress {
    /// Segments checked.
    pub checked: usize,
    /// Segments in the log when the check began.
    pub segments: usize,
    /// Bytes of the segments checked.
    pub bytes: u64,
}

/// Reads the log files of one stream.
#[derive(Clone, Debug)]
pub struct LogReader {
    dir: PathBuf,
    /// The writer's index of the active segment, when in its process.
    active: Option<SharedIndex>,
}

fn read_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot read {}", path.display()),
        )
        .with_source(e)
    }
}

impl LogReader {
    /// A reader of the log in `dir` (the stream's directory).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            active: None,
        }
    }

    /// A reader that also knows the writer's index of the active segment
    /// (which has no index file until it is sealed).
    pub(crate) fn with_active_index(dir: &Path, active: SharedIndex) -> Self {
        Self {
            dir: dir.to_owned(),
            active: Some(active),
        }
    }

    /// The stream's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The records from `from` on (or from the oldest one held, if older
    /// ones were deleted), in order.
    pub fn records_from(&self, from: u64) -> Records {
        Records {
            dir: self.dir.clone(),
            active: self.active.clone(),
            next: from,
            current: None,
            done: false,
            started: false,
            damage: None,
            finished: None,
        }
    }

    /// Calls `visit` with every record from `from` on (or from the oldest
    /// held), in order, until it returns [`ControlFlow::Break`] or the log
    /// ends. The payload is borrowed from one reused buffer: nothing is
    /// allocated per record. Returns how many records were visited.
    ///
    /// # Errors
    ///
    /// I/O errors, damaged records and gaps, after visiting every record
    /// before them.
    pub fn visit_from(
        &self,
        from: u64,
        mut visit: impl FnMut(RecordRef<'_>) -> ControlFlow<()>,
    ) -> Result<u64, Error> {
        let segments = segment::list_segments(&self.dir).map_err(read_error(&self.dir))?;
        let start = segments
            .partition_point(|(first, _)| *first <= from)
            .saturating_sub(1);
        let mut next: Option<u64> = None;
        let mut visited = 0;
        let mut body = Vec::new();
        let newest = segments.len().saturating_sub(1);
        for (position, (first, path)) in segments.iter().enumerate().skip(start) {
            let sealed = position < newest;
            let truncated = || {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("{}: a sealed segment ends inside a record", path.display()),
                )
            };
            if let Some(expected) = next
                && *first != expected
            {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!(
                        "gap in the log: sequence {expected} is missing ({} starts at {first})",
                        path.display()
                    ),
                ));
            }
            let file = match File::open(path) {
                Ok(file) => file,
                // Deleted by retention since the listing: start over after it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && next.is_none() => continue,
                Err(e) => return Err(read_error(path)(e)),
            };
            let mut reader = BufReader::with_capacity(256 * 1024, file);
            let mut header = [0u8; frame::SEGMENT_HEADER_LEN];
            reader.read_exact(&mut header).map_err(read_error(path))?;
            let header = SegmentHeader::decode(&header).map_err(|reason| {
                Error::new(ErrorKind::Corrupt, format!("{}: {reason}", path.display()))
            })?;
            let index = (next.is_none() && from > *first)
                .then(|| segment::read_index(&segment::index_path(&self.dir, *first)))
                .flatten();
            if let Some((_, offset)) = index
                .as_deref()
                .and_then(|index| segment::index_floor(index, from))
            {
                reader
                    .seek(SeekFrom::Start(offset))
                    .map_err(read_error(path))?;
            }
            let mut expected = next.unwrap_or(*first).max(header.first_sequence);
            let mut offset = 0u64;
            loop {
                let mut head = [0u8; frame::FRAME_HEADER_LEN];
                match read_or_end(&mut reader, &mut head).map_err(read_error(path))? {
                    Fill::Full => {}
                    Fill::Empty => break,
                    // A record still being written at the end of the newest
                    // segment; in a sealed one, damage.
                    Fill::Partial if sealed => return Err(truncated()),
                    Fill::Partial => break,
                }
                let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
                let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
                if !(frame::BODY_HEADER_LEN..=frame::MAX_BODY_LEN).contains(&len) {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "{}: frame length out of range near byte {offset}",
                            path.display()
                        ),
                    ));
                }
                body.resize(len, 0);
                match read_or_end(&mut reader, &mut body).map_err(read_error(path))? {
                    Fill::Full => {}
                    Fill::Empty | Fill::Partial if sealed => return Err(truncated()),
                    Fill::Empty | Fill::Partial => break,
                }
                offset += (frame::FRAME_HEADER_LEN + len) as u64;
                if crc32c::crc32c(&body) != crc {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "{}: checksum mismatch at sequence {expected}",
                            path.display()
                        ),
                    ));
                }
                let sequence = u64::from_le_bytes(body[..8].try_into().unwrap_or_default());
                let ticks = i64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
                if sequence < expected {
                    continue;
                }
                if sequence != expected && next.is_some() {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "{}: sequence {sequence} where {expected} was expected",
                            path.display()
                        ),
                    ));
                }
                let timestamp = Timestamp::from_ticks(ticks).ok_or_else(|| {
                    Error::new(
                        ErrorKind::Corrupt,
                        format!(
                            "{}: timestamp out of range at sequence {sequence}",
                            path.display()
                        ),
                    )
                })?;
                if sequence < from {
                    expected = sequence + 1;
                    next = Some(expected);
                    continue;
                }
                visited += 1;
                expected = sequence + 1;
                next = Some(expected);
                let record = RecordRef {
                    sequence,
                    timestamp,
                    encoding: header.encoding,
                    payload: &body[frame::BODY_HEADER_LEN..],
                };
                if visit(record).is_break() {
                    return Ok(visited);
                }
            }
            next = Some(expected);
        }
        Ok(visited)
    }

    /// As [`LogReader::visit_from`], reading past records lost to damage
    /// in sealed segments as a sink's delivery does: `lost` gets each
    /// stretch of sequences lost with the error naming the damage, and
    /// the visit goes on after it. For a reader that only gathers what
    /// the log holds (a receiver's marks), not one that rebuilds state
    /// from every event.
    ///
    /// # Errors
    ///
    /// I/O errors, and damage that cannot be read past (in the newest
    /// segment of a running log, a record out of sequence), after
    /// visiting every record before it.
    pub fn visit_past_damage(
        &self,
        from: u64,
        mut visit: impl FnMut(RecordRef<'_>) -> ControlFlow<()>,
        mut lost: impl FnMut(std::ops::RangeInclusive<u64>, &Error),
    ) -> Result<u64, Error> {
        let mut visited = 0;
        let mut next = from;
        let mut stopped = false;
        let outcome = self.visit_from(from, |record| {
            visited += 1;
            next = record.sequence + 1;
            let flow = visit(record);
            stopped = flow.is_break();
            flow
        });
        let error = match outcome {
            Ok(_) => return Ok(visited),
            Err(error) if error.kind() == ErrorKind::Corrupt && !stopped => error,
            Err(error) => return Err(error),
        };
        // Past the damage, record by record (a rare path): the iterator
        // finds where reading goes on.
        let mut records = self.records_from(next);
        let mut first = true;
        loop {
            match records.next() {
                None => return Ok(visited),
                Some(Ok(record)) if !first => {
                    visited += 1;
                    let flow = visit(RecordRef {
                        sequence: record.sequence,
                        timestamp: record.timestamp,
                        encoding: record.encoding,
                        payload: &record.payload,
                    });
                    if flow.is_break() {
                        return Ok(visited);
                    }
                }
                // Where the plain visit stopped, the iterator must stop.
                Some(Ok(_)) => return Err(error),
                Some(Err(found)) if found.kind() == ErrorKind::Corrupt => {
                    match records.skip_damaged()? {
                        Some(damaged) if damaged.last >= damaged.first => {
                            lost(damaged.first..=damaged.last, &damaged.error);
                        }
                        Some(_) => {}
                        None => return Err(found),
                    }
                }
                Some(Err(found)) => return Err(found),
            }
            first = false;
        }
    }

    /// Up to `max_events` records (and about `max_bytes`; at least one)
    /// from `from` on, none past `up_to`.
    ///
    /// # Errors
    ///
    /// I/O errors and damaged records, when they come first (the records
    /// before one are returned; the next read from there fails).
    pub fn read(
        &self,
        from: u64,
        up_to: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, Error> {
        match BatchReader::new(self.clone()).read(from, up_to, max_events, max_bytes)? {
            (records, Some(damaged)) if records.is_empty() => Err(damaged.error),
            (records, _) => Ok(records),
        }
    }

    /// The last sequence the log holds (`None` when it holds none): the
    /// last whole record of the newest segment that has one, read without
    /// checking the segments before it (see [`LogReader::verify`]).
    ///
    /// # Errors
    ///
    /// I/O errors.
    pub fn last_sequence(&self) -> Result<Option<u64>, Error> {
        let segments = segment::list_segments(&self.dir).map_err(read_error(&self.dir))?;
        for (_, path) in segments.iter().rev() {
            match segment::scan_segment(path, u64::MAX) {
                Ok(Ok(scan)) if scan.last_sequence.is_some() => return Ok(scan.last_sequence),
                // Empty, or a header that does not read: the one before.
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(read_error(path)(e)),
            }
        }
        Ok(None)
    }

    /// Checks framing, checksums and sequence continuity of every segment.
    ///
    /// # Errors
    ///
    /// Only I/O errors; what is wrong with the data is in the report.
    pub fn verify(&self) -> Result<VerifyReport, Error> {
        self.verify_with_progress(|_| {})
    }

    /// As [`LogReader::verify`], telling `progress` before each segment is
    /// read how far it got: a log of many segments takes a while.
    ///
    /// # Errors
    ///
    /// As [`LogReader::verify`].
    pub fn verify_with_progress(
        &self,
        mut progress: impl FnMut(VerifyProgress),
    ) -> Result<VerifyReport, Error> {
        let segments = segment::list_segments(&self.dir).map_err(read_error(&self.dir))?;
        let mut report = VerifyReport::default();
        let mut expected: Option<u64> = None;
        for (i, (first, path)) in segments.iter().enumerate() {
            progress(VerifyProgress {
                checked: i,
                segments: segments.len(),
                bytes: report.bytes,
            });
            let newest = i + 1 == segments.len();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            report.segments += 1;
            let scan = match segment::scan_segment(path, u64::MAX) {
                Ok(Ok(scan)) => scan,
                Ok(Err(reason)) => {
                    report.problems.push(format!("{name}: {reason}"));
                    // Its records are missing: the next segment says how
                    // many.
                    expected = expected.or(Some(*first));
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read_error(path)(e)),
            };
            report.bytes += scan.file_len;
            if scan.header.first_sequence != *first {
                report.problems.push(format!(
                    "{name}: header says the first sequence is {}",
                    scan.header.first_sequence
                ));
            }
            match expected {
                // A segment missing, or one whose header is unreadable:
                // a reader goes on here.
                Some(want) if scan.header.first_sequence > want => {
                    report.problems.push(format!(
                        "{name}: starts at sequence {} where {want} was expected; sequences {want}..={} are missing",
                        scan.header.first_sequence,
                        scan.header.first_sequence - 1
                    ));
                    report.lost += scan.header.first_sequence - want;
                }
                Some(want) if scan.header.first_sequence < want => {
                    report.problems.push(format!(
                        "{name}: starts at sequence {} where {want} was expected (overlap)",
                        scan.header.first_sequence
                    ));
                }
                _ => {}
            }
            let problem = match &scan.tail {
                Tail::Clean => None,
                Tail::Incomplete if newest => {
                    report.incomplete_tail_bytes = scan.file_len - scan.valid_len;
                    None
                }
                Tail::Incomplete => Some(format!(
                    "ends inside a record at byte {} of a sealed segment",
                    scan.valid_len
                )),
                Tail::Corrupt(reason) => Some(format!(
                    "damaged record at byte {}: {reason}",
                    scan.valid_len
                )),
            };
            report.records += scan.records;
            if let Some(last) = scan.last_sequence {
                report.first.get_or_insert(scan.header.first_sequence);
                report.last = Some(last);
            }
            expected = Some(
                scan.last_sequence
                    .map_or(scan.header.first_sequence, |l| l + 1),
            );
            let Some(problem) = problem else {
                continue;
            };
            // In a sealed segment, find what is lost and what is not, as
            // a sink's reader does.
            let past = match (segments.get(i + 1), expected) {
                (Some((next_first, _)), Some(due)) if *next_first >= due => {
                    segment::follow_damage(path, scan.valid_len, due, Some(*next_first))
                        .map_err(read_error(path))?
                }
                // The newest segment: what its writer's next open keeps.
                (None, Some(due)) => {
                    match segment::kept_past_damage(path, scan.valid_len, due)
                        .map_err(read_error(path))?
                    {
                        Some(past) => past,
                        None => {
                            report.problems.push(format!(
                                "{name}: {problem}; the writer cuts the segment there when it next opens the log (nothing intact follows, or what follows was never synced)"
                            ));
                            continue;
                        }
                    }
                }
                _ => {
                    report.problems.push(format!("{name}: {problem}"));
                    continue;
                }
            };
            for (n, lost) in past.lost.iter().enumerate() {
                let what = if n == 0 {
                    problem.clone()
                } else {
                    format!("damaged record at byte {}", lost.offset)
                };
                report.problems.push(format!(
                    "{name}: {what}; sequences {}..={} cannot be read",
                    lost.first, lost.last
                ));
                report.lost += lost.last - lost.first + 1;
            }
            if past.lost.is_empty() {
                report
                    .problems
                    .push(format!("{name}: {problem}; no record was lost"));
            }
            report.records += past.records;
            if past.last_sequence.is_some() {
                report.first.get_or_insert(scan.header.first_sequence);
                report.last = past.last_sequence;
            }
            expected = Some(past.next);
        }
        Ok(report)
    }
}

/// Reads a log in batches of consecutive records, keeping its place (the
/// open segment, its read-ahead buffer, a record read past the last
/// batch's end) from one batch to the next: a reader catching up reads each
/// segment once, front to back, instead of opening it, seeking and filling
/// a fresh buffer for every batch.
#[derive(Debug)]
pub(crate) struct BatchReader {
    reader: LogReader,
    /// Positioned at `records.next`, unless `held` is set.
    records: Option<Records>,
    /// Read, but past the `up_to` of the batch it was read for.
    held: Option<StoredRecord>,
}

impl BatchReader {
    pub(crate) fn new(reader: LogReader) -> Self {
        Self {
            reader,
            records: None,
            held: None,
        }
    }

    /// Up to `max_events` records (and about `max_bytes`; at least one)
    /// from `from` on, none past `up_to`; see [`LogReader::read`]. A
    /// damaged record in a sealed segment ends the batch: the records
    /// before it come with the sequences lost to it
    /// ([`Records::skip_damaged`]), and the next read goes on after them.
    ///
    /// # Errors
    ///
    /// I/O errors, gaps, and damage that cannot be skipped, when they come
    /// first (after records, they end the batch and come on the next
    /// read); the next read starts afresh.
    pub(crate) fn read(
        &mut self,
        from: u64,
        up_to: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StoredRecord>, Option<Damaged>), Error> {
        let next = match &self.held {
            Some(held) => Some(held.sequence),
            None => self.records.as_ref().map(|records| records.next),
        };
        if next != Some(from) {
            self.held = None;
            self.records = Some(self.reader.records_from(from));
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        loop {
            let record = match self.held.take() {
                Some(held) => held,
                None => match self.records.as_mut().and_then(Iterator::next) {
                    Some(Ok(record)) => record,
                    Some(Err(err)) => {
                        let skipped = match self.records.as_mut().map(Records::skip_damaged) {
                            Some(Ok(skipped)) => skipped,
                            Some(Err(skip_err)) => {
                                self.records = None;
                                return Err(skip_err);
                            }
                            None => None,
                        };
                        // Damage before `from` (between the index entry
                        // reading started at and `from`) lost nothing asked.
                        if skipped.as_ref().is_some_and(|d| d.last < d.first) {
                            continue;
                        }
                        if skipped.is_none() {
                            self.records = None;
                            if out.is_empty() {
                                return Err(err);
                            }
                        }
                        return Ok((out, skipped));
                    }
                    // The end of the log as it is now: start afresh next
                    // time, when there may be more.
                    None => {
                        self.records = None;
                        break;
                    }
                },
            };
            if record.sequence > up_to {
                self.held = Some(record);
                break;
            }
            bytes += record.payload.len();
            out.push(record);
            if out.len() >= max_events || bytes >= max_bytes {
                break;
            }
        }
        Ok((out, None))
    }
}

/// An iterator over a log's records; it ends at the current end of the log
/// (a record being written is not returned) or at the first error.
#[derive(Debug)]
pub struct Records {
    dir: PathBuf,
    active: Option<SharedIndex>,
    next: u64,
    current: Option<Open>,
    done: bool,
    started: bool,
    /// Where the last error, a damaged record, was.
    damage: Option<Box<Damage>>,
    /// The segment last read to its end.
    finished: Option<PathBuf>,
}

struct Open {
    reader: FrameReader,
    encoding: Encoding,
    path: PathBuf,
    /// The segment's first sequence.
    first: u64,
}

/// Where [`Records`] stopped at a damaged record.
#[derive(Debug)]
struct Damage {
    path: PathBuf,
    /// Reading goes on, at the latest, at the first segment that starts
    /// after this sequence: the damaged segment's first one (or, for a
    /// gap, the last one read).
    after: u64,
    /// The damaged frame's offset; `None` when the segment ends inside a
    /// record, its header is unreadable, or it is missing.
    offset: Option<u64>,
    /// What [`Records`] reported.
    error: String,
}

/// Records lost to damage in a sealed segment, which
/// [`Records::skip_damaged`] moved past: sequences `first..=last`
/// (none when `last < first`).
#[derive(Debug)]
pub(crate) struct Damaged {
    pub(crate) first: u64,
    pub(crate) last: u64,
    /// What was damaged, where, and what was lost.
    pub(crate) error: Error,
}

impl std::fmt::Debug for Open {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Open")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Records {
    fn corrupt(&mut self, message: String) -> Option<Result<StoredRecord, Error>> {
        self.done = true;
        Some(Err(Error::new(ErrorKind::Corrupt, message)))
    }

    /// After the iterator stopped at a damaged record of a sealed segment
    /// (one a newer segment follows): the sequences lost with it, the
    /// iterator moved on to the first readable record after them — the
    /// next valid frame in sequence in the same segment, else the start of
    /// the next segment. A missing segment, or one whose header is
    /// unreadable, loses its records the same way. `None` when the
    /// iterator did not stop at such damage: an I/O error, a record out of
    /// sequence, or damage in the active segment (which the writer's next
    /// open cuts as a torn tail, or keeps and seals when intact records
    /// follow it).
    ///
    /// # Errors
    ///
    /// I/O errors while looking for where to go on.
    pub(crate) fn skip_damaged(&mut self) -> Result<Option<Damaged>, Error> {
        let Some(damage) = self.damage.take() else {
            return Ok(None);
        };
        let segments = segment::list_segments(&self.dir).map_err(read_error(&self.dir))?;
        let Some(next_first) = segments
            .iter()
            .map(|(first, _)| *first)
            .find(|first| *first > damage.after)
            .filter(|first| *first >= self.next)
        else {
            return Ok(None);
        };
        let lost_from = self.next;
        let found = match (damage.offset, self.current.as_mut()) {
            (Some(offset), Some(open)) if open.path == damage.path => {
                let found = segment::find_frame(&damage.path, offset + 1, lost_from..next_first)
                    .map_err(read_error(&damage.path))?;
                if let Some((at, _)) = found {
                    open.reader.seek(at).map_err(read_error(&damage.path))?;
                }
                found
            }
            _ => None,
        };
        let (resume, resumed_at) = match found {
            Some((at, sequence)) => (sequence, format!("byte {at}")),
            None => {
                self.current = None;
                (
                    next_first,
                    format!("the next segment, at sequence {next_first}"),
                )
            }
        };
        self.next = resume;
        self.done = false;
        let lost = if resume > lost_from {
            format!("sequences {lost_from}..={} cannot be read", resume - 1)
        } else {
            "no record was lost".to_owned()
        };
        Ok(Some(Damaged {
            first: lost_from,
            last: resume - 1,
            error: Error::new(
                ErrorKind::Corrupt,
                format!("{}; {lost} (reading goes on at {resumed_at})", damage.error),
            ),
        }))
    }

    /// Opens the segment holding `self.next` (or the oldest one after it).
    /// `Ok(false)` when there is none yet.
    fn open_next(&mut self) -> Result<bool, Error> {
        let segments = segment::list_segments(&self.dir).map_err(read_error(&self.dir))?;
        let at = segments.partition_point(|(first, _)| *first <= self.next);
        let (first, path) = match at.checked_sub(1) {
            // The segment just read to its end cannot hold `next`: the one
            // that did is missing, and the next held is a gap away.
            // (Before, the reader went back to it for ever.)
            Some(i) if self.finished.as_ref() == Some(&segments[i].1) => match segments.get(at) {
                Some(after) => after.clone(),
                None => return Ok(false),
            },
            Some(i) => segments[i].clone(),
            // Older records were deleted: start at the oldest held.
            None if !self.started => match segments.first() {
                Some(oldest) => oldest.clone(),
                None => return Ok(false),
            },
            None => return Ok(false),
        };
        if self.started && first > self.next {
            let error = format!(
                "gap in the log: sequence {} is missing ({} starts at {first})",
                self.next,
                path.display()
            );
            self.damage = Some(Box::new(Damage {
                path,
                after: self.next - 1,
                offset: None,
                error: error.clone(),
            }));
            return Err(Error::new(ErrorKind::Corrupt, error));
        }
        let (mut reader, header) = match FrameReader::open(&path) {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.open_next(),
            Err(e) => return Err(read_error(&path)(e)),
        };
        let header = match header {
            Ok(header) => header,
            Err(reason) => {
                let error = format!("{}: {reason}", path.display());
                // Damage only if it was sealed before it was opened (a
                // newer segment was listed): the header of a segment
                // being created may not be written yet.
                if segments.iter().any(|(newer, _)| *newer > first) {
                    self.damage = Some(Box::new(Damage {
                        path,
                        after: first,
                        offset: None,
                        error: error.clone(),
                    }));
                }
                return Err(Error::new(ErrorKind::Corrupt, error));
            }
        };
        if self.next > first {
            let floor = match segment::read_index(&segment::index_path(&self.dir, first)) {
                Some(index) => segment::index_floor(&index, self.next),
                // The active segment: the writer's index, if it is ours.
                None => self.active.as_ref().and_then(|active| {
                    let active = segment::lock_index(active);
                    (active.first == first)
                        .then(|| segment::index_floor(&active.entries, self.next))
                        .flatten()
                }),
            };
            if let Some((_, offset)) = floor {
                reader.seek(offset).map_err(read_error(&path))?;
            }
        } else {
            self.next = first;
        }
        self.started = true;
        self.current = Some(Open {
            reader,
            encoding: header.encoding,
            path,
            first,
        });
        Ok(true)
    }
}

impl Iterator for Records {
    type Item = Result<StoredRecord, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            if self.current.is_none() {
                match self.open_next() {
                    Ok(true) => {}
                    Ok(false) => {
                        self.done = true;
                        return None;
                    }
                    Err(err) => {
                        self.done = true;
                        return Some(Err(err));
                    }
                }
            }
            let open = self.current.as_mut()?;
            let step = match open.reader.next_frame() {
                Ok(step) => step,
                Err(e) => {
                    let err = read_error(&open.path)(e);
                    self.done = true;
                    return Some(Err(err));
                }
            };
            match step {
                Step::Frame {
                    sequence,
                    timestamp,
                    offset,
                    ..
                } => {
                    if sequence < self.next {
                        continue;
                    }
                    if sequence != self.next {
                        let path = open.path.display().to_string();
                        return self.corrupt(format!(
                            "{path}: sequence {sequence} at byte {offset} where {} was expected",
                            self.next
                        ));
                    }
                    self.next += 1;
                    return Some(Ok(StoredRecord {
                        sequence,
                        timestamp,
                        encoding: open.encoding,
                        payload: open.reader.take_payload(),
                    }));
                }
                Step::End | Step::Incomplete { .. } => {
                    // The end of this segment: a newer one may follow. An
                    // incomplete record at the very end is a write in
                    // progress (or a torn one recovery will cut).
                    let (path, first) = (open.path.clone(), open.first);
                    self.current = None;
                    let segments = match segment::list_segments(&self.dir) {
                        Ok(segments) => segments,
                        Err(e) => {
                            self.done = true;
                            return Some(Err(read_error(&self.dir)(e)));
                        }
                    };
                    let newer = segments
                        .iter()
                        .any(|(first, p)| *p != path && *first >= self.next);
                    if !newer {
                        self.done = true;
                        return None;
                    }
                    // Sealed: it holds nothing more.
                    self.finished = Some(path.clone());
                    if matches!(step, Step::Incomplete { .. }) {
                        let error =
                            format!("{}: a sealed segment ends inside a record", path.display());
                        self.damage = Some(Box::new(Damage {
                            path,
                            after: first,
                            offset: None,
                            error: error.clone(),
                        }));
                        return self.corrupt(error);
                    }
                }
                Step::Corrupt { offset, reason } => {
                    let error = format!(
                        "{}: damaged record at byte {offset}: {reason}",
                        open.path.display()
                    );
                    self.damage = Some(Box::new(Damage {
                        path: open.path.clone(),
                        after: open.first,
                        offset: Some(offset),
                        error: error.clone(),
                    }));
                    return self.corrupt(error);
                }
            }
        }
    }
}
