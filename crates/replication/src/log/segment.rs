//! Segment files: naming, sequential frame reading, scanning and the sparse
//! index.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use bytes::Bytes;
use std::path::{Path, PathBuf};

use crate::log::frame::{self, FRAME_HEADER_LEN, MAX_BODY_LEN, SEGMENT_HEADER_LEN, SegmentHeader};
use crate::time::Timestamp;

/// The file of the segment whose first record is `first`.
pub(crate) fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// The sparse index of the segment whose first record is `first`.
/// The sparse index of the active segment as the writer builds it, for
/// the readers of the same process: the index file is only written when a
/// segment is sealed, and without this a reader catching up inside the
/// active segment would scan it from its start on every read.
#[derive(Debug, Default)]
pub(crate) struct ActiveIndex {
    /// The first sequence of the segment the entries are of.
    pub(crate) first: u64,
    /// `(sequence, offset)`, ascending.
    pub(crate) entries: Vec<(u64, u64)>,
}

/// An [`ActiveIndex`] shared between the writer and readers.
pub(crate) type SharedIndex = std::sync::Arc<std::sync::Mutex<ActiveIndex>>;

/// Locks `index`, also after a panic elsewhere (it is plain data).
pub(crate) fn lock_index(index: &SharedIndex) -> std::sync::MutexGuard<'_, ActiveIndex> {
    index
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn index_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.idx"))
}

/// The segments in `dir`, by first sequence, oldest first. Other files are
/// ignored.
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        if stem.len() == 20
            && let Ok(first) = stem.parse::<u64>()
        {
            out.push((first, path));
        }
    }
    out.sort_unstable_by_key(|(first, _)| *first);
    Ok(out)
}

/// One step of [`FrameReader::next_frame`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A valid frame at `offset`, `len` bytes long; its payload is in
    /// [`FrameReader::payload`].
    Frame {
        sequence: u64,
        timestamp: Timestamp,
        offset: u64,
        len: u64,
    },
    /// The end of the file, exactly at a frame boundary.
    End,
    /// The file ends inside the frame at `offset`.
    Incomplete { offset: u64 },
    /// The frame at `offset` is damaged.
    Corrupt { offset: u64, reason: &'static str },
}

/// Reads the frames of a segment file in order, in large chunks; each
/// payload is a slice of its chunk (no copy per record).
pub(crate) struct FrameReader {
    file: File,
    chunk: Bytes,
    /// Position of the next frame in `chunk`.
    pos: usize,
    /// File offset of `chunk[pos]`.
    offset: u64,
    payload: Bytes,
}

const CHUNK: usize = 1024 * 1024;

impl FrameReader {
    /// Opens `path` and reads its header.
    pub(crate) fn open(path: &Path) -> io::Result<(Self, Result<SegmentHeader, &'static str>)> {
        let mut reader = Self {
            file: File::open(path)?,
            chunk: Bytes::new(),
            pos: 0,
            offset: 0,
            payload: Bytes::new(),
        };
        let header = if reader.fill(SEGMENT_HEADER_LEN)? {
            SegmentHeader::decode(&reader.chunk[..SEGMENT_HEADER_LEN])
        } else {
            Err("incomplete segment header")
        };
        reader.pos = SEGMENT_HEADER_LEN.min(reader.chunk.len());
        reader.offset = reader.pos as u64;
        Ok((reader, header))
    }

    /// Moves to `offset`, which must be a frame boundary.
    pub(crate) fn seek(&mut self, offset: u64) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(offset))?;
        self.chunk = Bytes::new();
        self.pos = 0;
        self.offset = offset;
        Ok(())
    }

    /// Takes the payload of the last frame returned.
    pub(crate) fn take_payload(&mut self) -> Bytes {
        std::mem::take(&mut self.payload)
    }

    /// Makes at least `need` bytes available at `pos`; `false` if the file
    /// ends first.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        let available = self.chunk.len() - self.pos;
        if available >= need {
            return Ok(true);
        }
        let size = need.max(CHUNK);
        // Reuse the old chunk's memory when no payload still points into it
        // (fresh memory costs page faults and zeroing by the kernel).
        let old = std::mem::take(&mut self.chunk);
        let mut next = match old.try_into_mut() {
            Ok(reusable) => {
                let mut buffer = Vec::from(reusable);
                buffer.drain(..self.pos);
                buffer
            }
            Err(old) => {
                let mut buffer = Vec::with_capacity(size);
                buffer.extend_from_slice(&old[self.pos..]);
                buffer
            }
        };
        next.reserve(size.saturating_sub(next.len()));
        // `read_to_end` fills the spare capacity without zeroing it first.
        let want = (size - next.len()) as u64;
        (&mut self.file).take(want).read_to_end(&mut next)?;
        let filled = next.len();
        self.chunk = Bytes::from(next);
        self.pos = 0;
        Ok(filled >= need)
    }

    /// Reads the next frame.
    pub(crate) fn next_frame(&mut self) -> io::Result<Step> {
        let offset = self.offset;
        if !self.fill(FRAME_HEADER_LEN)? {
            return Ok(if self.chunk.len() == self.pos {
                Step::End
            } else {
                Step::Incomplete { offset }
            });
        }
        let at = self.pos;
        let header = &self.chunk[at..at + FRAME_HEADER_LEN];
        let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if !(frame::BODY_HEADER_LEN..=MAX_BODY_LEN).contains(&body_len) {
            return Ok(Step::Corrupt {
                offset,
                reason: "frame length out of range",
            });
        }
        let len = FRAME_HEADER_LEN + body_len;
        if !self.fill(len)? {
            return Ok(Step::Incomplete { offset });
        }
        let at = self.pos;
        match frame::decode_frame(&self.chunk[at..at + len]) {
            frame::Decoded::Frame(f, _) => {
                let (sequence, timestamp) = (f.sequence, f.timestamp);
                let payload_at = at + FRAME_HEADER_LEN + frame::BODY_HEADER_LEN;
                self.payload = self.chunk.slice(payload_at..at + len);
                self.pos += len;
                self.offset += len as u64;
                Ok(Step::Frame {
                    sequence,
                    timestamp,
                    offset,
                    len: len as u64,
                })
            }
            frame::Decoded::Incomplete => Ok(Step::Incomplete { offset }),
            frame::Decoded::Corrupt(reason) => Ok(Step::Corrupt { offset, reason }),
        }
    }
}

/// The first valid frame at or after byte `from` of the segment at `path`
/// whose sequence is in `sequences`, as `(offset, sequence)`: where reading
/// can go on past a damaged frame. Every byte offset is a candidate; one
/// whose length is in range and whose sequence is in `sequences` is checked
/// whole (the checksum of its body), so a chance match is out of the
/// question. Reads the file in chunks.
///
/// # Errors
///
/// I/O errors.
pub(crate) fn find_frame(
    path: &Path,
    from: u64,
    sequences: std::ops::Range<u64>,
) -> io::Result<Option<(u64, u64)>> {
    // A frame's length, checksum and sequence.
    const PEEK: usize = FRAME_HEADER_LEN + 8;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    // The bytes of the file from `base` on.
    let mut window = Vec::new();
    let mut base = from;
    let mut at = from;
    while at + PEEK as u64 <= len {
        if at + PEEK as u64 > base + window.len() as u64 {
            base = at;
            window.clear();
            file.seek(SeekFrom::Start(at))?;
            (&mut file).take(CHUNK as u64).read_to_end(&mut window)?;
            if window.len() < PEEK {
                break;
            }
        }
        let i = usize::try_from(at - base).unwrap_or(usize::MAX);
        let peek = &window[i..i + PEEK];
        let body_len = u32::from_le_bytes([peek[0], peek[1], peek[2], peek[3]]) as usize;
        let mut sequence = [0; 8];
        sequence.copy_from_slice(&peek[FRAME_HEADER_LEN..]);
        let sequence = u64::from_le_bytes(sequence);
        let frame_len = FRAME_HEADER_LEN + body_len;
        if sequences.contains(&sequence)
            && (frame::BODY_HEADER_LEN..=MAX_BODY_LEN).contains(&body_len)
            && at + frame_len as u64 <= len
        {
            let whole = if i + frame_len <= window.len() {
                frame::decode_frame(&window[i..i + frame_len])
            } else {
                let mut bytes = vec![0; frame_len];
                file.seek(SeekFrom::Start(at))?;
                file.read_exact(&mut bytes)?;
                // The next refill seeks again.
                base = at;
                window = bytes;
                frame::decode_frame(&window)
            };
            if matches!(whole, frame::Decoded::Frame(f, _) if f.sequence == sequence) {
                return Ok(Some((at, sequence)));
            }
        }
        at += 1;
    }
    Ok(None)
}

/// A stretch of sequences a damaged sealed segment lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lost {
    pub(crate) first: u64,
    pub(crate) last: u64,
    /// Where the damage starts in the segment.
    pub(crate) offset: u64,
}

/// What [`follow_damage`] found past the damage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PastDamage {
    /// Each stretch lost, in order.
    pub(crate) lost: Vec<Lost>,
    /// Records read intact between and after them.
    pub(crate) records: u64,
    /// The last of those.
    pub(crate) last_sequence: Option<u64>,
    /// The sequence due after the segment's last record.
    pub(crate) next: u64,
    /// The byte after the last intact record read (the damage's offset
    /// when there is none).
    pub(crate) end: u64,
    /// Each stretch of unreadable bytes skipped to the next intact
    /// record, as `(from, to)` offsets.
    pub(crate) skipped: Vec<(u64, u64)>,
    /// `(sequence, offset)` of the first intact record after each
    /// skipped stretch: index entries for the records past the damage.
    pub(crate) resumed: Vec<(u64, u64)>,
}

/// Follows the segment at `path` past the damage at byte `offset`, where
/// sequence `expected` was due, to its end: each stretch of sequences
/// lost, found as a reader finds them ([`find_frame`]), and the intact
/// records between them. For a sealed segment the next one starts at
/// `next_first`, and a segment that ends cleanly before it is a gap to
/// the next, not damage here; for the newest segment (`None`) what
/// follows the last intact record is its tail, not a lost stretch.
///
/// # Errors
///
/// I/O errors.
pub(crate) fn follow_damage(
    path: &Path,
    offset: u64,
    expected: u64,
    next_first: Option<u64>,
) -> io::Result<PastDamage> {
    let mut past = PastDamage {
        end: offset,
        ..PastDamage::default()
    };
    let (mut offset, mut expected) = (offset, expected);
    let due = |expected: u64| expected..next_first.unwrap_or(u64::MAX);
    loop {
        let Some((at, sequence)) = find_frame(path, offset + 1, due(expected))? else {
            match next_first {
                Some(next_first) if expected < next_first => past.lost.push(Lost {
                    first: expected,
                    last: next_first - 1,
                    offset,
                }),
                _ => {}
            }
            past.next = next_first.unwrap_or(expected);
            return Ok(past);
        };
        if sequence > expected {
            past.lost.push(Lost {
                first: expected,
                last: sequence - 1,
                offset,
            });
        }
        past.skipped.push((offset, at));
        past.resumed.push((sequence, at));
        let (mut reader, _) = FrameReader::open(path)?;
        reader.seek(at)?;
        expected = sequence;
        // Read on until the segment ends or is damaged again.
        offset = loop {
            match reader.next_frame()? {
                Step::Frame {
                    sequence,
                    offset,
                    len,
                    ..
                } if sequence == expected => {
                    past.records += 1;
                    past.last_sequence = Some(sequence);
                    past.end = offset + len;
                    expected += 1;
                }
                Step::Frame { offset, .. }
                | Step::Incomplete { offset }
                | Step::Corrupt { offset, .. } => break offset,
                Step::End => {
                    past.next = expected;
                    return Ok(past);
                }
            }
        };
    }
}

/// What follows the damage at byte `offset` of the newest segment at
/// `path`, where sequence `expected` was due, when the writer keeps it on
/// its next open: intact records in sequence after it mean the damage
/// struck records already written (a bad sector, a stray write), and
/// cutting there, as for a torn write, would delete acknowledged records
/// that are intact. `None` when nothing intact follows (a torn or garbled
/// tail), or when the damage holds a block a crash left unwritten
/// ([`holds_unwritten_block`]): the records after it never reached the
/// disk in order, so none of them was synced, and cutting them is what
/// the durability policy allows.
///
/// # Errors
///
/// I/O errors.
pub(crate) fn kept_past_damage(
    path: &Path,
    offset: u64,
    expected: u64,
) -> io::Result<Option<PastDamage>> {
    let past = follow_damage(path, offset, expected, None)?;
    if past.records == 0 {
        return Ok(None);
    }
    for &(from, to) in &past.skipped {
        if holds_unwritten_block(path, from, to)? {
            return Ok(None);
        }
    }
    Ok(Some(past))
}

/// Whether the bytes `from..to` of the file at `path` hold a whole 4 KiB
/// block of zeros, aligned in the file: what a machine's crash leaves
/// where a file grew but the data of its new blocks never reached the
/// disk (the file system hands out unwritten blocks as zeros), as
/// opposed to a bad sector or a stray write over data already there.
///
/// # Errors
///
/// I/O errors.
fn holds_unwritten_block(path: &Path, from: u64, to: u64) -> io::Result<bool> {
    const BLOCK: u64 = 4096;
    let mut file = File::open(path)?;
    let mut block = vec![0; BLOCK as usize];
    let mut at = from.div_ceil(BLOCK) * BLOCK;
    while at + BLOCK <= to {
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut block)?;
        if block.iter().all(|&b| b == 0) {
            return Ok(true);
        }
        at += BLOCK;
    }
    Ok(false)
}

/// How a scanned segment ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tail {
    /// At a frame boundary.
    Clean,
    /// In the middle of a frame (a torn or in-progress write).
    Incomplete,
    /// At a damaged frame, or a frame out of sequence.
    Corrupt(String),
}

/// What a full scan of a segment found.
#[derive(Clone, Debug)]
pub(crate) struct SegmentScan {
    pub(crate) header: SegmentHeader,
    /// Records in the valid prefix.
    pub(crate) records: u64,
    /// The last sequence in the valid prefix.
    pub(crate) last_sequence: Option<u64>,
    /// The timestamp of the last valid record.
    pub(crate) last_timestamp: Option<Timestamp>,
    /// Bytes of the valid prefix, header included.
    pub(crate) valid_len: u64,
    /// Bytes in the file.
    pub(crate) file_len: u64,
    pub(crate) tail: Tail,
    /// `(sequence, offset)` every `index_every` bytes.
    pub(crate) index: Vec<(u64, u64)>,
}

/// Scans a whole segment, checking framing, checksums and that sequences
/// run on from the header's first sequence without gaps.
///
/// # Errors
///
/// I/O errors; `Ok(Err(reason))` when the header itself is unreadable.
pub(crate) fn scan_segment(
    path: &Path,
    index_every: u64,
) -> io::Result<Result<SegmentScan, &'static str>> {
    let file_len = std::fs::metadata(path)?.len();
    let (mut reader, header) = FrameReader::open(path)?;
    let header = match header {
        Ok(header) => header,
        Err(reason) => return Ok(Err(reason)),
    };
    let mut scan = SegmentScan {
        header,
        records: 0,
        last_sequence: None,
        last_timestamp: None,
        valid_len: SEGMENT_HEADER_LEN as u64,
        file_len,
        tail: Tail::Clean,
        index: Vec::new(),
    };
    let mut since_index = u64::MAX;
    loop {
        match reader.next_frame()? {
            Step::Frame {
                sequence,
                timestamp,
                offset,
                len,
            } => {
                let expected = scan.last_sequence.map_or(header.first_sequence, |s| s + 1);
                if sequence != expected {
                    scan.tail =
                        Tail::Corrupt(format!("sequence {sequence} where {expected} was expected"));
                    break;
                }
                if since_index >= index_every {
                    scan.index.push((sequence, offset));
                    since_index = 0;
                }
                since_index += len;
                scan.records += 1;
                scan.last_sequence = Some(sequence);
                scan.last_timestamp = Some(timestamp);
                scan.valid_len = offset + len;
            }
            Step::End => break,
            Step::Incomplete { .. } => {
                scan.tail = Tail::Incomplete;
                break;
            }
            Step::Corrupt { reason, .. } => {
                scan.tail = Tail::Corrupt(reason.to_owned());
                break;
            }
        }
    }
    Ok(Ok(scan))
}

/// Writes a sealed segment's sparse index: 16-byte `(sequence, offset)`
/// entries and a trailing CRC32C. The index is derived data: it is not
/// synced, and a missing or damaged one is rebuilt by scanning.
pub(crate) fn write_index(path: &Path, index: &[(u64, u64)]) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(index.len() * 16 + 4);
    for (sequence, offset) in index {
        bytes.extend_from_slice(&sequence.to_le_bytes());
        bytes.extend_from_slice(&offset.to_le_bytes());
    }
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let tmp = path.with_extension("idx.tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(&bytes)?;
    drop(file);
    std::fs::rename(tmp, path)
}

/// Reads a sparse index, or `None` if it is missing or damaged.
pub(crate) fn read_index(path: &Path) -> Option<Vec<(u64, u64)>> {
    let bytes = std::fs::read(path).ok()?;
    let (entries, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if entries.len() % 16 != 0 || crc32c::crc32c(entries).to_le_bytes() != crc {
        return None;
    }
    Some(
        entries
            .chunks_exact(16)
            .map(|c| {
                (
                    u64::from_le_bytes(c[..8].try_into().unwrap_or_default()),
                    u64::from_le_bytes(c[8..].try_into().unwrap_or_default()),
                )
            })
            .collect(),
    )
}

/// The entry to start a read of `sequence` from: the last one at or below
/// it.
pub(crate) fn index_floor(index: &[(u64, u64)], sequence: u64) -> Option<(u64, u64)> {
    let at = index.partition_point(|(s, _)| *s <= sequence);
    at.checked_sub(1).map(|i| index[i])
}
