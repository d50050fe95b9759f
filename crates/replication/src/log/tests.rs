//! Tests of the log: appends under every policy, group commit, recovery of
//! damaged tails, reading from any sequence, retention, the memory ring and
//! a stop on fsync failure.

use std::fs::OpenOptions;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::error::ErrorKind;
use crate::event::{Encoding, Format, WireVersion};
use crate::stream::StreamId;
use crate::time::Timestamp;

const ENCODING: Encoding = Encoding::new(Format::Protobuf, WireVersion::V2);

fn options(durability: Durability) -> LogOptions {
    LogOptions {
        durability,
        ..LogOptions::default()
    }
}

/// Segments of about 2 000 bytes with an index entry every 200: many
/// segments and index entries from a few hundred records.
fn small_segments() -> LogOptions {
    LogOptions {
        segment_max_bytes: 2_000,
        index_interval_bytes: 200,
        ..options(Durability::None)
    }
}

fn open(dir: &Path, options: LogOptions) -> (StreamLog<TestBatch>, Recovery) {
    open_stream(dir, &StreamId::default(), options)
}

fn open_stream(
    dir: &Path,
    stream: &StreamId,
    options: LogOptions,
) -> (StreamLog<TestBatch>, Recovery) {
    StreamLog::open(dir, stream.clone(), ENCODING, options).unwrap()
}

/// Consecutive test records: `event-<seq>-<padding>` payloads.
#[derive(Debug)]
pub(crate) struct TestBatch {
    pub(crate) first: u64,
    items: Vec<(Timestamp, Bytes)>,
}

impl TestBatch {
    pub(crate) fn new(first: u64, count: usize) -> Self {
        Self {
            first,
            items: (first..first + count as u64)
                .map(|s| {
                    (
                        Timestamp::from_ticks(s as i64 * 10_000_000).unwrap(),
                        payload(s),
                    )
                })
                .collect(),
        }
    }
}

impl LogBatch for TestBatch {
    fn first_sequence(&self) -> u64 {
        self.first
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn timestamp(&self, index: usize) -> Timestamp {
        self.items[index].0
    }

    fn payload(&self, index: usize) -> &[u8] {
        &self.items[index].1
    }
}

fn payload(sequence: u64) -> Bytes {
    Bytes::from(format!(
        "event-{sequence}-{}",
        "x".repeat((sequence % 7) as usize)
    ))
}

fn append(sequence: u64) -> Arc<TestBatch> {
    Arc::new(TestBatch::new(sequence, 1))
}

async fn publish(log: &StreamLog<TestBatch>, range: std::ops::RangeInclusive<u64>) {
    let last = *range.end();
    for s in range {
        log.append(append(s)).await.map_err(|(e, _)| e).unwrap();
    }
    log.wait_acked(last).await.unwrap();
}

fn sequences(reader: &LogReader, from: u64) -> Vec<u64> {
    reader
        .records_from(from)
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r.payload, payload(r.sequence));
            assert_eq!(r.encoding, ENCODING);
            r.sequence
        })
        .collect()
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    segment::list_segments(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[tokio::test]
async fn appends_are_acknowledged_and_read_back_under_every_file_policy() {
    for durability in [
        Durability::Fsync,
        Durability::Interval(Duration::from_millis(5)),
        Durability::None,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (log, recovery) = open(dir.path(), options(durability));
        assert_eq!(recovery.last_sequence, 0);
        publish(&log, 1..=100).await;
        let mut progress = log.progress();
        while progress.borrow().visible < 100 {
            progress.changed().await.unwrap();
        }
        assert_eq!(
            sequences(&log.reader().unwrap(), 1),
            (1..=100).collect::<Vec<_>>()
        );
        log.close().unwrap();
        let (log, recovery) = open(dir.path(), options(durability));
        assert_eq!(recovery.last_sequence, 100, "{durability}");
        assert_eq!(recovery.cut_bytes, 0);
        assert_eq!(log.last_sequence(), 100);
        assert_eq!(
            read_meta(dir.path()).unwrap().durability,
            durability.to_string()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(Durability::Fsync));
    let log = Arc::new(log);
    let next = Arc::new(tokio::sync::Mutex::new(0u64));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (log, next) = (log.clone(), next.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    let seq = {
                        let mut next = next.lock().await;
                        *next += 1;
                        log.append(append(*next)).await.map_err(|(e, _)| e).unwrap();
                        *next
                    };
                    log.wait_acked(seq).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let stats = log.stats();
    assert_eq!(log.last_sequence(), 800);
    assert!(
        stats.syncs < 800,
        "group commit: {} syncs for 800 events",
        stats.syncs
    );
    assert_eq!(stats.syncs, stats.batches);
}

#[tokio::test]
async fn out_of_order_appends_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(Durability::None));
    let (err, back) = log.append(append(2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert_eq!(back.first, 2, "the batch is handed back");
    log.append(append(1)).await.map_err(|(e, _)| e).unwrap();
}

/// Reads batches of at most `max_events` from `from` on until one comes
/// back empty; checks each payload.
fn read_batches(reader: &mut BatchReader, from: u64, up_to: u64, max_events: usize) -> Vec<u64> {
    let mut read = Vec::new();
    loop {
        let (batch, damaged) = reader
            .read(from + read.len() as u64, up_to, max_events, usize::MAX)
            .unwrap();
        assert!(damaged.is_none(), "{damaged:?}");
        if batch.is_empty() {
            return read;
        }
        assert!(batch.len() <= max_events);
        for r in batch {
            assert_eq!(r.payload, payload(r.sequence));
            read.push(r.sequence);
        }
    }
}

#[tokio::test]
async fn a_batch_reader_keeps_its_place_across_batches_segments_and_appends() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments();
    let (log, _) = open(dir.path(), opts);
    publish(&log, 1..=300).await;
    let mut reader = BatchReader::new(log.reader().unwrap());
    // Never past `up_to`: the record read past it comes first next time.
    assert_eq!(
        read_batches(&mut reader, 1, 100, 7),
        (1..=100).collect::<Vec<_>>()
    );
    assert!(reader.read(101, 100, 7, usize::MAX).unwrap().0.is_empty());
    assert_eq!(
        read_batches(&mut reader, 101, 300, 7),
        (101..=300).collect::<Vec<_>>()
    );
    // Past the end of the log, it finds what was appended since.
    publish(&log, 301..=320).await;
    assert_eq!(
        read_batches(&mut reader, 301, 320, 7),
        (301..=320).collect::<Vec<_>>()
    );
    // Asked for another place, it goes there.
    let (jump, _) = reader.read(50, 320, 5, usize::MAX).unwrap();
    assert_eq!(
        jump.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        vec![50, 51, 52, 53, 54]
    );
    // Its place is the open segment: a segment deleted while it is being
    // read (retention, for a sink that fell behind) is read to its end, and
    // the next one follows.
    let segments = segment::list_segments(dir.path()).unwrap();
    assert!(segments.len() > 5, "{} segments", segments.len());
    for (first, path) in &segments {
        if *first <= 55 {
            std::fs::remove_file(path).unwrap();
        }
    }
    let rest = read_batches(&mut reader, 55, 320, 5);
    assert_eq!(rest, (55..=320).collect::<Vec<_>>());
    // A reader without a place starts at the oldest segment left.
    let (fresh, _) = BatchReader::new(log.reader().unwrap())
        .read(55, 320, 5, usize::MAX)
        .unwrap();
    assert!(fresh[0].sequence > 55, "{:?}", fresh[0].sequence);
    log.close().unwrap();
}

/// The offset of the frame of `sequence` in the segment `path`.
fn frame_offset(path: &Path, sequence: u64) -> u64 {
    let bytes = std::fs::read(path).unwrap();
    let mut at = frame::SEGMENT_HEADER_LEN;
    loop {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let found = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        if found == sequence {
            return at as u64;
        }
        at += frame::FRAME_HEADER_LEN + len;
    }
}

/// Writes `bytes` at `offset` of `path`.
fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom};
    let mut file = OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(bytes).unwrap();
}

/// Reads everything from 1 with a [`BatchReader`] in batches of 4: the
/// sequences read, and the ranges reported lost.
fn read_past_damage(reader: &mut BatchReader, up_to: u64) -> (Vec<u64>, Vec<(u64, u64)>) {
    let (mut read, mut lost) = (Vec::new(), Vec::new());
    let mut next = 1;
    while next <= up_to {
        let (batch, damaged) = reader.read(next, up_to, 4, usize::MAX).unwrap();
        for r in &batch {
            assert_eq!(r.payload, payload(r.sequence));
            read.push(r.sequence);
            next = r.sequence + 1;
        }
        if let Some(damaged) = damaged {
            assert_eq!(damaged.error.kind(), ErrorKind::Corrupt);
            lost.push((damaged.first, damaged.last));
            next = damaged.last + 1;
        } else if batch.is_empty() {
            break;
        }
    }
    (read, lost)
}

#[tokio::test]
async fn a_batch_reader_goes_on_past_damaged_records_of_sealed_segments_and_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_segments());
    publish(&log, 1..=300).await;
    log.close().unwrap();
    let segments = segment::list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 6, "{} segments", segments.len());
    let all_but = |lost: &[u64]| -> Vec<u64> { (1..=300).filter(|s| !lost.contains(s)).collect() };

    // A flipped bit in a record's payload: that record is lost, its
    // neighbours are not.
    let (first, path) = &segments[1];
    let hit = first + 3;
    let at = frame_offset(path, hit);
    overwrite(path, at + 30, b"!");
    let mut reader = BatchReader::new(LogReader::new(dir.path()));
    assert_eq!(
        read_past_damage(&mut reader, 300),
        (all_but(&[hit]), vec![(hit, hit)])
    );
    // A plain reader (`log replay`) still stops there.
    let err = LogReader::new(dir.path())
        .records_from(1)
        .find_map(Result::err)
        .unwrap();
    assert!(err.to_string().contains("checksum mismatch"), "{err}");

    // A damaged length: the reader finds the next frame by its checksum.
    let (first, path) = &segments[3];
    let garbled = first + 1;
    overwrite(path, frame_offset(path, garbled), &[0xff, 0xff, 0xff, 0x7f]);
    let mut reader = BatchReader::new(LogReader::new(dir.path()));
    assert_eq!(
        read_past_damage(&mut reader, 300),
        (
            all_but(&[hit, garbled]),
            vec![(hit, hit), (garbled, garbled)]
        )
    );

    // A sealed segment cut short inside a record: the rest of it is lost,
    // reading goes on at the next segment.
    let (first, path) = &segments[4];
    let next_first = segments[5].0;
    let cut = first + 2;
    let file = OpenOptions::new().write(true).open(path).unwrap();
    let cut_at = frame_offset(path, cut);
    file.set_len(cut_at + 5).unwrap();
    let lost_tail: Vec<u64> = (cut..next_first).collect();
    let mut reader = BatchReader::new(LogReader::new(dir.path()));
    let (read, lost) = read_past_damage(&mut reader, 300);
    let mut missing = vec![hit, garbled];
    missing.extend(&lost_tail);
    assert_eq!(read, all_but(&missing));
    assert_eq!(
        lost,
        [(hit, hit), (garbled, garbled), (cut, next_first - 1)]
    );
    // `log verify` names the same losses, and nothing else: the segment
    // after a damaged one is no gap.
    let report = LogReader::new(dir.path()).verify().unwrap();
    let name = |first: u64| format!("{first:020}.seg");
    assert_eq!(
        report.problems,
        [
            format!(
                "{}: damaged record at byte {}: checksum mismatch; sequences {hit}..={hit} cannot be read",
                name(segments[1].0),
                frame_offset(&segments[1].1, hit)
            ),
            format!(
                "{}: damaged record at byte {}: frame length out of range; sequences {garbled}..={garbled} cannot be read",
                name(segments[3].0),
                frame_offset(&segments[3].1, garbled)
            ),
            format!(
                "{}: ends inside a record at byte {} of a sealed segment; sequences {cut}..={} cannot be read",
                name(segments[4].0),
                cut_at,
                next_first - 1
            ),
        ]
    );
    assert_eq!(report.lost, missing.len() as u64);
    assert_eq!(report.records, 300 - report.lost);
    assert_eq!((report.first, report.last), (Some(1), Some(300)));

    // Reading from a sequence after the damage, inside the same segment,
    // loses nothing (the index entry it starts at may lie before it).
    let mut reader = BatchReader::new(LogReader::new(dir.path()));
    let (batch, damaged) = reader.read(hit + 1, 300, 2, usize::MAX).unwrap();
    assert!(damaged.is_none(), "{damaged:?}");
    assert_eq!(batch[0].sequence, hit + 1);

    // A whole sealed segment gone (removed by hand), and one whose header
    // is unreadable (the oldest, where reading starts): their records are
    // lost, reading goes on after them.
    std::fs::remove_file(&segments[2].1).unwrap();
    let gone = (segments[2].0, segments[3].0 - 1);
    overwrite(&segments[0].1, 0, b"garbage!");
    let unreadable = (segments[0].0, segments[1].0 - 1);
    let mut reader = BatchReader::new(LogReader::new(dir.path()));
    let (read, lost) = read_past_damage(&mut reader, 300);
    assert_eq!(
        lost,
        [
            unreadable,
            (hit, hit),
            gone,
            (garbled, garbled),
            (cut, next_first - 1),
        ]
    );
    let lost_count: u64 = lost.iter().map(|(a, b)| b - a + 1).sum();
    assert_eq!(read.len() as u64, 300 - lost_count);
    let report = LogReader::new(dir.path()).verify().unwrap();
    assert_eq!(report.lost, lost_count, "{:?}", report.problems);
    assert!(
        report.problems.contains(&format!(
            "{}: starts at sequence {} where {} was expected; sequences {}..={} are missing",
            name(segments[3].0),
            segments[3].0,
            gone.0,
            gone.0,
            gone.1
        )),
        "{:?}",
        report.problems
    );
}

#[tokio::test]
async fn an_unreadable_stream_json_is_reported_and_written_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let (log, recovery) = open(dir.path(), options(Durability::None));
    assert_eq!(recovery.meta_unreadable, None);
    publish(&log, 1..=3).await;
    log.close().unwrap();
    drop(log);
    std::fs::write(dir.path().join("stream.json"), b"garbage{").unwrap();
    let (log, recovery) = open(dir.path(), options(Durability::None));
    let why = recovery.meta_unreadable.expect("reported");
    assert!(why.contains("expected"), "{why}");
    assert_eq!(recovery.last_sequence, 3, "the log itself is untouched");
    assert_eq!(read_meta(dir.path()).unwrap().durability, "none");
    log.close().unwrap();
}

#[tokio::test]
async fn a_missing_segment_is_a_gap_not_an_endless_loop() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_segments());
    publish(&log, 1..=200).await;
    log.close().unwrap();
    let segments = segment::list_segments(dir.path()).unwrap();
    assert!(segments.len() >= 3, "{} segments", segments.len());
    std::fs::remove_file(&segments[1].1).unwrap();
    // Before, the reader went back to the segment before the missing one
    // (the last starting at or before the sequence it wanted) for ever.
    let reader = LogReader::new(dir.path());
    let (done, read) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut records = reader.records_from(1);
        let read: Vec<_> = records.by_ref().take(1_000).collect();
        let _ = done.send(read);
    });
    let read = read
        .recv_timeout(Duration::from_secs(20))
        .expect("the reader is stuck");
    let (ok, errors): (Vec<_>, Vec<_>) = read.into_iter().partition(Result::is_ok);
    assert_eq!(ok.len() as u64, segments[1].0 - 1);
    assert_eq!(errors.len(), 1);
    let err = errors.into_iter().next().unwrap().unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "gap in the log: sequence {} is missing",
            segments[1].0
        )),
        "{err}"
    );
}

/// `visit_past_damage` visits every record a sink would get and names
/// each stretch lost; it stops where it is told to, and at damage no
/// reader can go past (the newest segment of a running log).
#[tokio::test]
async fn a_visit_past_damage_names_each_stretch_lost_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_segments());
    publish(&log, 1..=300).await;
    let segments = segment::list_segments(dir.path()).unwrap();
    let (first, path) = &segments[1];
    let hit = first + 3;
    overwrite(path, frame_offset(path, hit) + 30, b"!");
    let reader = LogReader::new(dir.path());
    let visit = |from: u64, until: u64| {
        let (mut seen, mut lost) = (Vec::new(), Vec::new());
        let visited = reader.visit_past_damage(
            from,
            |record| {
                assert_eq!(record.payload, payload(record.sequence));
                seen.push(record.sequence);
                if record.sequence == until {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
            |sequences, error| {
                assert_eq!(error.kind(), ErrorKind::Corrupt);
                lost.push(sequences);
            },
        );
        (visited.map(|n| n as usize == seen.len()), seen, lost)
    };
    let (counted, seen, lost) = visit(1, 0);
    assert!(counted.unwrap());
    assert_eq!(seen, (1..=300).filter(|&s| s != hit).collect::<Vec<_>>());
    assert_eq!(lost, [hit..=hit]);
    let (_, seen, lost) = visit(hit - 1, hit + 2);
    assert_eq!(seen, [hit - 1, hit + 1, hit + 2]);
    assert_eq!(lost, [hit..=hit]);
    // Damage in the running log's newest segment stops it.
    let (_, newest) = segments.last().unwrap();
    overwrite(newest, frame_offset(newest, 299) + 30, b"!");
    let (counted, seen, _) = visit(290, 0);
    assert_eq!(seen, (290..=298).collect::<Vec<_>>());
    assert_eq!(counted.unwrap_err().kind(), ErrorKind::Corrupt);
    log.close().unwrap();
}

#[tokio::test]
async fn damage_in_the_active_segment_is_an_error_after_the_records_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(Durability::None));
    publish(&log, 1..=20).await;
    let (_, path) = segment::list_segments(dir.path()).unwrap().pop().unwrap();
    overwrite(&path, frame_offset(&path, 10) + 30, b"!");
    let mut reader = BatchReader::new(LogReader::new(dir.path()));
    let (batch, damaged) = reader.read(1, 20, 100, usize::MAX).unwrap();
    assert!(damaged.is_none(), "not skipped: {damaged:?}");
    assert_eq!(
        batch.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        (1..=9).collect::<Vec<_>>()
    );
    let err = reader.read(10, 20, 100, usize::MAX).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    log.close().unwrap();
}

/// Damage inside the newest segment with intact records after it is not
/// a torn write: the next open keeps those records (before, it cut the
/// segment at the damage, deleting acknowledged, intact records with it)
/// and seals the segment, so that the damage is read past as in any
/// sealed segment, and new records go to a new one.
#[tokio::test]
async fn damage_inside_the_newest_segment_keeps_the_intact_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(Durability::Fsync));
    publish(&log, 1..=20).await;
    log.close().unwrap();
    drop(log);
    let (_, path) = segment::list_segments(dir.path()).unwrap().pop().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    overwrite(&path, frame_offset(&path, 10) + 30, b"!");
    // `log verify` says beforehand what the open will keep.
    let report = LogReader::new(dir.path()).verify().unwrap();
    assert_eq!((report.lost, report.last), (1, Some(20)), "{report:?}");
    assert!(
        report.problems[0].ends_with("sequences 10..=10 cannot be read"),
        "{report:?}"
    );
    let (log, recovery) = open(dir.path(), options(Durability::Fsync));
    assert_eq!(recovery.last_sequence, 20, "{recovery:?}");
    assert_eq!(recovery.lost, [(10, 10)]);
    let damage = recovery.damage.as_deref().unwrap_or_default();
    assert!(damage.contains("checksum"), "{damage}");
    assert_eq!(recovery.cut_bytes, 0);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len, "kept whole");
    publish(&log, 21..=22).await;
    log.close().unwrap();
    drop(log);
    let firsts: Vec<u64> = segment::list_segments(dir.path())
        .unwrap()
        .into_iter()
        .map(|(first, _)| first)
        .collect();
    assert_eq!(firsts, [1, 21], "sealed at the open");
    let all_but_10: Vec<u64> = (1..=22).filter(|&s| s != 10).collect();
    let mut reader = BatchReader::new(LogReader::new(dir.path()));
    assert_eq!(
        read_past_damage(&mut reader, 22),
        (all_but_10, vec![(10, 10)])
    );
    let report = LogReader::new(dir.path()).verify().unwrap();
    assert_eq!(report.lost, 1, "{report:?}");
    assert_eq!(report.last, Some(22), "{report:?}");
    // From after the damage, through the index entry where reading
    // went on.
    assert_eq!(
        sequences(&LogReader::new(dir.path()), 11),
        (11..=22).collect::<Vec<_>>()
    );
    // A second open finds nothing more to do.
    let (_log, again) = open(dir.path(), options(Durability::Fsync));
    assert_eq!((again.damage, again.last_sequence), (None, 22));
}

/// A block of zeros inside the newest segment is what a machine's crash
/// leaves where the file grew but its data never reached the disk: the
/// records after it were never synced either (a sync would have written
/// the block), so it is a torn tail, cut with them, as before.
#[tokio::test]
async fn a_block_a_crash_left_unwritten_cuts_the_records_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(Durability::None));
    publish(&log, 1..=600).await;
    log.close().unwrap();
    drop(log);
    let (_, path) = segment::list_segments(dir.path()).unwrap().pop().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 3 * 4096, "{len} bytes");
    overwrite(&path, 4096, &[0; 4096]);
    let report = LogReader::new(dir.path()).verify().unwrap();
    assert_eq!(report.lost, 0, "{report:?}");
    assert!(
        report.problems[0].contains("the writer cuts the segment there"),
        "{report:?}"
    );
    let (_log, recovery) = open(dir.path(), options(Durability::None));
    assert_eq!(recovery.damage, None);
    assert!(recovery.lost.is_empty());
    let kept = recovery.last_sequence;
    assert!(frame_offset(&path, kept) < 4096 && kept < 600, "{kept}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        len - recovery.cut_bytes
    );
    assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
    assert_eq!(
        sequences(&LogReader::new(dir.path()), 1),
        (1..=kept).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn segments_rotate_and_any_sequence_is_found_through_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments();
    let (log, _) = open(dir.path(), opts.clone());
    publish(&log, 1..=500).await;
    log.close().unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() > 5, "{} segments", files.len());
    assert!(segment::index_path(dir.path(), 1).exists());
    let reader = LogReader::new(dir.path());
    for from in [1, 2, 57, 250, 499, 500] {
        assert_eq!(
            sequences(&reader, from),
            (from..=500).collect::<Vec<_>>(),
            "from {from}"
        );
    }
    assert_eq!(sequences(&reader, 501), Vec::<u64>::new());
    let batch = reader.read(100, 120, 1000, usize::MAX).unwrap();
    assert_eq!(
        batch.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        (100..=120).collect::<Vec<_>>()
    );
    // A damaged index only costs a scan.
    std::fs::write(segment::index_path(dir.path(), 1), b"garbage").unwrap();
    assert_eq!(sequences(&reader, 30).len(), 471);
    let mut told = Vec::new();
    let report = reader
        .verify_with_progress(|progress| told.push(progress))
        .unwrap();
    assert_eq!(
        (report.records, report.first, report.last),
        (500, Some(1), Some(500))
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Told before each segment, with the bytes of those before it.
    assert_eq!(told.len(), files.len());
    for (i, progress) in told.iter().enumerate() {
        assert_eq!((progress.checked, progress.segments), (i, files.len()));
        let before: u64 = files[..i]
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert_eq!(progress.bytes, before, "segment {i}");
    }
    // The last sequence, from the newest segment alone, even with a
    // damaged one before it (verify names that).
    assert_eq!(reader.last_sequence().unwrap(), Some(500));
    overwrite(&files[1], 100, b"damage");
    assert_eq!(reader.last_sequence().unwrap(), Some(500));
    assert!(!reader.verify().unwrap().problems.is_empty());
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(LogReader::new(empty.path()).last_sequence().unwrap(), None);
    // Reopening continues the numbering across segments.
    let (log, recovery) = open(dir.path(), opts);
    assert_eq!(recovery.last_sequence, 500);
    publish(&log, 501..=510).await;
    assert_eq!(sequences(&LogReader::new(dir.path()), 495).len(), 16);
}

#[tokio::test]
async fn readers_in_the_writers_process_seek_inside_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_max_bytes: 1 << 20,
        index_interval_bytes: 200,
        ..options(Durability::None)
    };
    let (log, _) = open(dir.path(), opts);
    publish(&log, 1..=300).await;
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "all in the active segment"
    );
    assert!(
        !segment::index_path(dir.path(), 1).exists(),
        "no index file until the segment is sealed"
    );
    let ours = log.reader().unwrap();
    for from in [2, 57, 150, 299, 300] {
        assert_eq!(sequences(&ours, from), (from..=300).collect::<Vec<_>>());
    }
    // Damage the first records: a reader that scans from the segment's
    // start stops there; the writer's index takes ours past them.
    let segment = &segment_files(dir.path())[0];
    let mut file = OpenOptions::new().write(true).open(segment).unwrap();
    std::io::Seek::seek(
        &mut file,
        std::io::SeekFrom::Start(frame::SEGMENT_HEADER_LEN as u64 + 4),
    )
    .unwrap();
    file.write_all(b"damage").unwrap();
    drop(file);
    assert!(
        LogReader::new(dir.path())
            .records_from(250)
            .any(|r| r.is_err()),
        "a reader without the index scans from the start"
    );
    assert_eq!(sequences(&ours, 250), (250..=300).collect::<Vec<_>>());
    // Later appends are indexed too.
    publish(&log, 301..=400).await;
    assert_eq!(sequences(&ours, 390), (390..=400).collect::<Vec<_>>());
    log.close().unwrap();
}

fn visited(reader: &LogReader, from: u64) -> Vec<u64> {
    let mut out = Vec::new();
    reader
        .visit_from(from, |r| {
            assert_eq!(r.payload, &payload(r.sequence)[..]);
            out.push(r.sequence);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    out
}

#[tokio::test]
async fn visiting_borrows_every_record_from_any_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_segments();
    let (log, _) = open(dir.path(), opts);
    publish(&log, 1..=300).await;
    let reader = log.reader().unwrap();
    for from in [1, 2, 99, 150, 300, 301] {
        assert_eq!(
            visited(&reader, from),
            sequences(&reader, from),
            "from {from}"
        );
    }
    let mut seen = 0;
    let count = reader
        .visit_from(1, |_| {
            seen += 1;
            if seen == 7 {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(count, 7);
    log.close().unwrap();
    // A damaged record is an error, after the records before it.
    let path = last_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let mut before = Vec::new();
    let err = reader
        .visit_from(1, |r| {
            before.push(r.sequence);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(before.len() > 250 && before.len() < 300, "{}", before.len());
    assert!(before.windows(2).all(|w| w[1] == w[0] + 1));
}

fn last_segment(dir: &Path) -> std::path::PathBuf {
    segment_files(dir).pop().unwrap()
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_reported_and_earlier_records_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(Durability::Fsync));
    publish(&log, 1..=20).await;
    log.close().unwrap();
    let path = last_segment(dir.path());
    let len = std::fs::metadata(&path).unwrap().len();
    // A torn write: half of the last record.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 5).unwrap();
    drop(file);
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (log, recovery) =
        metrics::with_local_recorder(&recorder, || open(dir.path(), options(Durability::Fsync)));
    let counted: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key.key().name().to_owned(), value))
        .collect();
    assert!(
        counted.contains(&(
            crate::telemetry::LOG_RECOVERY_CUT_BYTES.to_owned(),
            metrics_util::debugging::DebugValue::Counter(recovery.cut_bytes)
        )),
        "{counted:?}"
    );
    assert_eq!(recovery.last_sequence, 19);
    assert!(recovery.cut_bytes > 0);
    assert_eq!(
        recovery.cut_reason.as_deref(),
        Some("torn write at the end of the segment")
    );
    let meta = read_meta(dir.path()).unwrap();
    assert_eq!(meta.recovery_cut_bytes_total, recovery.cut_bytes);
    assert_eq!(meta.last_cut.unwrap().bytes, recovery.cut_bytes);
    // Numbering goes on from the last intact record: no gap.
    publish(&log, 20..=21).await;
    log.close().unwrap();
    assert_eq!(
        sequences(&LogReader::new(dir.path()), 1),
        (1..=21).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_garbled_tail_is_cut_at_the_first_damaged_record() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(Durability::Fsync));
    publish(&log, 1..=20).await;
    log.close().unwrap();
    let path = last_segment(dir.path());
    let bytes = std::fs::read(&path).unwrap();
    // Garble the last three records (each is at least 30 bytes).
    let mut damaged = bytes.clone();
    let from = bytes.len() - 60;
    for b in &mut damaged[from..] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    // ... and append garbage after them.
    damaged.extend_from_slice(&[0xAB; 100]);
    std::fs::write(&path, &damaged).unwrap();
    assert!(
        !LogReader::new(dir.path())
            .verify()
            .unwrap()
            .problems
            .is_empty()
    );
    let (log, recovery) = open(dir.path(), options(Durability::Fsync));
    assert!(
        recovery.last_sequence >= 16 && recovery.last_sequence < 20,
        "{recovery:?}"
    );
    assert!(recovery.cut_bytes >= 100);
    let kept = recovery.last_sequence;
    log.close().unwrap();
    assert_eq!(
        sequences(&LogReader::new(dir.path()), 1),
        (1..=kept).collect::<Vec<_>>()
    );
    assert!(
        LogReader::new(dir.path())
            .verify()
            .unwrap()
            .problems
            .is_empty()
    );
}

#[tokio::test]
async fn a_segment_whose_creation_was_interrupted_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(Durability::Fsync));
    publish(&log, 1..=3).await;
    log.close().unwrap();
    let half = segment::segment_path(dir.path(), 4);
    std::fs::write(
        &half,
        &frame::SegmentHeader {
            first_sequence: 4,
            encoding: ENCODING,
            created: Timestamp::MIN,
        }
        .encode()[..10],
    )
    .unwrap();
    let (_log, recovery) = open(dir.path(), options(Durability::Fsync));
    assert_eq!(recovery.removed_files, std::slice::from_ref(&half));
    assert!(!half.exists());
    assert_eq!(recovery.last_sequence, 3);
}

/// The newest segment's header damaged while it holds records (a bad
/// sector, not a crash: records are appended only once the header is
/// synced) is not taken for a rotation a crash interrupted: the open
/// refuses, naming the file and what to do, and deletes nothing (before,
/// it removed the segment and every record in it).
#[tokio::test]
async fn a_newest_segment_whose_header_is_damaged_is_not_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), small_segments());
    publish(&log, 1..=100).await;
    log.close().unwrap();
    drop(log);
    let (_, path) = segment::list_segments(dir.path()).unwrap().pop().unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    overwrite(&path, 9, b"!");
    let err =
        StreamLog::<TestBatch>::open(dir.path(), StreamId::default(), ENCODING, small_segments())
            .map(|_| ())
            .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let message = err.to_string();
    assert!(
        message.contains("segment header checksum mismatch"),
        "{message}"
    );
    assert!(message.contains("move the file out of"), "{message}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        len,
        "left as it is"
    );
}

/// A log started after its sinks' records keeps that start in
/// `stream.json` across reopens, and retention; a note a crash left while
/// the log still starts at 1 is ignored.
#[tokio::test]
async fn where_a_log_started_after_its_sinks_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, recovery) = open(dir.path(), small_segments());
    assert_eq!((recovery.started_after, log.started_after()), (0, 0));
    log.start_after(20).unwrap();
    assert_eq!(log.started_after(), 20);
    publish(&log, 21..=120).await;
    log.close().unwrap();
    drop(log);
    let (log, recovery) = open(dir.path(), small_segments());
    assert_eq!((recovery.started_after, log.started_after()), (20, 20));
    assert_eq!(read_meta(dir.path()).unwrap().started_after, Some(20));
    log.close().unwrap();
    drop(log);
    // Retention took the oldest segment: the log still started after 20.
    std::fs::remove_file(&segment_files(dir.path())[0]).unwrap();
    let (log, _) = open(dir.path(), small_segments());
    assert_eq!(log.started_after(), 20);
    assert!(LogReader::new(dir.path()).verify().unwrap().first.unwrap() > 21);
    log.close().unwrap();
    drop(log);

    // A crash after the note and before the segment was replaced.
    let crashed = tempfile::tempdir().unwrap();
    let (log, _) = open(crashed.path(), options(Durability::Fsync));
    log.close().unwrap();
    drop(log);
    let mut meta = read_meta(crashed.path()).unwrap();
    meta.started_after = Some(20);
    meta::write_meta(crashed.path(), &meta).unwrap();
    let (log, recovery) = open(crashed.path(), options(Durability::Fsync));
    assert_eq!((recovery.started_after, log.started_after()), (0, 0));
    assert_eq!(read_meta(crashed.path()).unwrap().started_after, None);
    publish(&log, 1..=1).await;
}

#[tokio::test]
async fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _) = open(dir.path(), options(Durability::Fsync));
    let err = StreamLog::<TestBatch>::open(
        dir.path(),
        StreamId::default(),
        ENCODING,
        options(Durability::Fsync),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("open in another process"), "{err}");
}

#[tokio::test]
async fn an_fsync_failure_stops_the_log_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamId::new("sync-fails").unwrap();
    let (log, _) = open_stream(dir.path(), &stream, options(Durability::Fsync));
    publish(&log, 1..=2).await;
    disk::tests::inject_sync_failure(&stream);
    log.append(append(3)).await.map_err(|(e, _)| e).unwrap();
    let err = log.wait_acked(3).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    let message = err.to_string();
    assert!(
        message.contains("fdatasync failed: injected fdatasync failure"),
        "{message}"
    );
    assert!(message.contains("restart the process"), "{message}");
    assert!(log.progress().borrow().failed);
    // Everything after is refused with the same reason.
    let (again, _) = log.append(append(4)).await.unwrap_err();
    assert!(again.to_string().contains("fdatasync failed"), "{again}");
    assert!(log.close().is_err());
}

#[tokio::test]
async fn without_a_sync_to_wait_for_the_publisher_writes_its_own_record() {
    let dir = tempfile::tempdir().unwrap();
    for durability in [
        Durability::None,
        Durability::Interval(Duration::from_secs(60)),
    ] {
        let dir = dir.path().join(durability.to_string());
        let (log, _) = open(&dir, options(durability));
        let mut inline = 0;
        for s in 1..=3 {
            log.append(append(s)).await.map_err(|(e, _)| e).unwrap();
            // Acknowledged when `append` returns: written on this thread,
            // not handed to the writer thread — unless the writer thread
            // happened to be awake (its once-a-second check of the files),
            // when it takes the record instead.
            if log.progress().borrow().acked == s {
                inline += 1;
            } else {
                log.wait_acked(s).await.unwrap();
            }
        }
        assert!(
            inline >= 2,
            "{durability}: {inline} of 3 written by the publisher"
        );
        let stats = log.stats();
        assert_eq!(stats.batches, 3, "{durability}");
        assert_eq!(stats.syncs, 0, "{durability}: nothing synced yet");
        // Readers see it only once synced (`interval`), or at once (`none`).
        let visible = log.progress().borrow().visible;
        assert_eq!(visible, if durability == Durability::None { 3 } else { 0 });
        // Closing syncs everything written.
        log.close().unwrap();
        assert_eq!(log.stats().syncs, 1, "{durability}");
        drop(log);
        let (_, recovery) = open(&dir, options(durability));
        assert_eq!(recovery.last_sequence, 3, "{durability}");
    }
}

#[tokio::test]
async fn an_interval_sync_failure_stops_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let stream = StreamId::new("interval-sync-fails").unwrap();
    let (log, _) = open_stream(
        dir.path(),
        &stream,
        options(Durability::Interval(Duration::from_millis(5))),
    );
    disk::tests::inject_sync_failure(&stream);
    log.append(append(1)).await.map_err(|(e, _)| e).unwrap();
    let mut progress = log.progress();
    tokio::time::timeout(Duration::from_secs(10), progress.wait_for(|p| p.failed))
        .await
        .expect("the failed sync stops the log")
        .unwrap();
    let (err, _) = log.append(append(2)).await.unwrap_err();
    assert!(err.to_string().contains("fdatasync failed"), "{err}");
    assert_eq!(log.progress().borrow().visible, 0, "never visible unsynced");
}

#[tokio::test]
async fn what_falls_out_of_the_tail_is_freed_off_the_publishers_path() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        tail_max_events: 1,
        ..options(Durability::Interval(Duration::from_millis(10)))
    };
    let (log, _) = open(dir.path(), opts);
    let first = append(1);
    log.append(first.clone()).await.map_err(|(e, _)| e).unwrap();
    assert_eq!(Arc::strong_count(&first), 2, "cached in the tail");
    // Evicts the first batch; the writer thread frees it when it wakes.
    log.append(append(2)).await.map_err(|(e, _)| e).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&first) > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the evicted batch was never freed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_memory_ring_never_drops_what_a_required_sink_needs() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        tail_max_events: 4,
        ..options(Durability::Memory)
    };
    let (log, _) = open(dir.path(), opts);
    assert!(log.reader().is_none());
    // One required sink at sequence 0.
    log.set_floors(0, 0);
    publish(&log, 1..=4).await;
    log.append(append(5)).await.map_err(|(e, _)| e).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(log.progress().borrow().acked, 4, "5 waits for room");
    log.set_floors(2, 2);
    log.wait_acked(5).await.unwrap();
    // Only as much as needed is dropped: 1 makes room for 5.
    assert!(matches!(
        log.read_tail(1, 10, usize::MAX),
        TailRead::Before(2)
    ));
    let TailRead::Slices(slices) = log.read_tail(2, 10, usize::MAX) else {
        panic!()
    };
    let held: Vec<u64> = slices
        .iter()
        .flat_map(|s| s.range.clone().map(|i| s.batch.first + i as u64))
        .collect();
    assert_eq!(held, [2, 3, 4, 5]);
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "no files"
    );
}

#[tokio::test]
async fn retention_deletes_consumed_segments_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_max_bytes: 1_000,
        retention: Retention {
            delete_consumed: true,
            ..Retention::default()
        },
        ..options(Durability::None)
    };
    let (log, _) = open(dir.path(), opts);
    publish(&log, 1..=200).await;
    let before = segment_files(dir.path()).len();
    assert!(before > 3);
    log.set_floors(100, 100);
    // Retention runs on the writer thread at most every 500 ms.
    let mut next = 201;
    while log.stats().retention_deleted_bytes == 0 {
        assert!(next < 300, "retention never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
        publish(&log, next..=next).await;
        next += 1;
    }
    let after = segment::list_segments(dir.path()).unwrap();
    assert!(after.len() < before, "{} -> {}", before, after.len());
    assert!(
        after[0].0 <= 101,
        "a segment with unconsumed records was deleted: {:?}",
        after[0]
    );
    // A reader from 1 starts at the oldest record held.
    let got = sequences(&LogReader::new(dir.path()), 1);
    assert_eq!(got.first().copied(), Some(after[0].0));
    assert_eq!(got.last().copied(), Some(next - 1));
}

#[tokio::test]
async fn the_default_keeps_every_segment() {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_max_bytes: 1_000,
        ..options(Durability::None)
    };
    let (log, _) = open(dir.path(), opts);
    publish(&log, 1..=200).await;
    log.set_floors(200, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    publish(&log, 201..=201).await;
    assert_eq!(sequences(&LogReader::new(dir.path()), 1).len(), 201);
}

fn write_all_at(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random appends, a crash at a random byte of the segment, reopen: the
    /// recovered log is a prefix of what was appended and holds at least
    /// everything acknowledged before the cut point.
    #[test]
    fn recovery_keeps_a_prefix_and_everything_acknowledged(
        count in 1u64..120,
        cut in any::<prop::sample::Index>(),
        garble in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        runtime.block_on(async {
            let (log, _) = open(dir.path(), options(Durability::Fsync));
            publish(&log, 1..=count).await;
            log.close().unwrap();
        });
        let path = last_segment(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let at = frame::SEGMENT_HEADER_LEN + cut.index(bytes.len() - frame::SEGMENT_HEADER_LEN);
        let mut crashed = bytes[..at].to_vec();
        if garble {
            crashed.extend(bytes[at..].iter().map(|b| !b).take(40));
        }
        write_all_at(&path, &crashed);
        // Records wholly before the cut were acknowledged and must survive.
        let whole_before_cut = LogReader::new(dir.path())
            .records_from(1)
            .take_while(Result::is_ok)
            .filter_map(Result::ok)
            .filter(|r| {
                let end = bytes_end_of(&bytes, r.sequence);
                end <= at
            })
            .count() as u64;
        let (log, recovery) = runtime.block_on(async { open(dir.path(), options(Durability::Fsync)) });
        let got = sequences(&LogReader::new(dir.path()), 1);
        prop_assert_eq!(&got, &(1..=recovery.last_sequence).collect::<Vec<_>>());
        prop_assert!(recovery.last_sequence >= whole_before_cut);
        prop_assert!(recovery.last_sequence <= count);
        drop(log);
    }
}

/// The byte offset just after the frame of `sequence` in an intact segment.
fn bytes_end_of(segment: &[u8], sequence: u64) -> usize {
    let mut at = frame::SEGMENT_HEADER_LEN;
    loop {
        match frame::decode_frame(&segment[at..]) {
            frame::Decoded::Frame(f, len) => {
                at += len;
                if f.sequence == sequence {
                    return at;
                }
            }
            _ => return usize::MAX,
        }
    }
}

#[tokio::test]
async fn an_event_too_large_to_read_back_is_refused_and_the_largest_one_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), options(Durability::Fsync));
    let record = |sequence: u64, len: usize| {
        Arc::new(TestBatch {
            first: sequence,
            items: vec![(
                Timestamp::from_ticks(1).unwrap(),
                Bytes::from(vec![b'x'; len]),
            )],
        })
    };
    publish(&log, 1..=1).await;
    // Acknowledged, it would be cut as corruption when the log reopens.
    let (err, returned) = log
        .append(record(2, frame::MAX_PAYLOAD_LEN + 1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    assert!(
        err.to_string()
            .contains("the event for sequence 2 is 67108849 bytes encoded, over the log's limit"),
        "{err}"
    );
    assert_eq!(returned.first, 2, "handed back");
    // Nothing was queued: sequence 2 is still the next.
    log.append(record(2, frame::MAX_PAYLOAD_LEN)).await.unwrap();
    log.wait_acked(2).await.unwrap();
    log.close().unwrap();
    let (_log, recovery) = open(dir.path(), options(Durability::Fsync));
    assert_eq!((recovery.last_sequence, recovery.cut_bytes), (2, 0));
    let read: Vec<(u64, usize)> = LogReader::new(dir.path())
        .records_from(1)
        .map(|r| {
            let r = r.unwrap();
            (r.sequence, r.payload.len())
        })
        .collect();
    assert_eq!(read, [(1, payload(1).len()), (2, frame::MAX_PAYLOAD_LEN)]);
}

#[tokio::test]
async fn a_log_whose_files_are_removed_while_open_stops_saying_so() {
    for removed in ["directory", "segment"] {
        let dir = tempfile::tempdir().unwrap();
        let stream = StreamId::new("removed").unwrap();
        let (log, _) = open_stream(
            dir.path(),
            &stream,
            options(Durability::Interval(Duration::from_millis(5))),
        );
        publish(&log, 1..=2).await;
        let log_dir = dir.path();
        match removed {
            "directory" => std::fs::remove_dir_all(log_dir).unwrap(),
            _ => {
                for entry in std::fs::read_dir(log_dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.extension().is_some_and(|e| e == "seg") {
                        std::fs::remove_file(path).unwrap();
                    }
                }
            }
        }
        // Before, appends went on being acknowledged into files the next
        // start would not see.
        let mut progress = log.progress();
        tokio::time::timeout(Duration::from_secs(10), progress.wait_for(|p| p.failed))
            .await
            .unwrap_or_else(|_| panic!("{removed} removed: the log stops"))
            .unwrap();
        let (err, _) = log.append(append(3)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
        let message = err.to_string();
        assert!(message.contains("removed"), "{message}");
        assert!(message.contains(removed), "{message}");
        assert!(message.contains("restart the process"), "{message}");
    }
}

#[test]
fn a_file_replaced_atomically_is_kept_whole_when_its_writing_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    write_atomically(&path, b"old").unwrap();
    let failed = write_atomically_with(&path, |out| {
        out.write_all(&[b'x'; 100_000])?;
        Err(std::io::Error::other("no space left on device"))
    })
    .unwrap_err();
    assert_eq!(failed.to_string(), "no space left on device");
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["state.json"],
        "what the failed write wrote is removed"
    );
    write_atomically_with(&path, |out| out.write_all(b"new")).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
}
